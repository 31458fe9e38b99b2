#pragma once
// Pieces the AArch64 kernel files share: the dotprod and i8mm target
// attributes, SDOT (plain and by element), e^x and GELU on 4 lanes. Included only by files under
// src/tensor/arm/, each compiled for aarch64 only.
#include <arm_neon.h>

#include <cstddef>
#include <cstdint>

#include "tensor/fast_math.h"

// GCC's arm_neon.h declares the SDOT intrinsics under arch=armv8.2-a+dotprod
// (SMMLA under +i8mm), and a function only inlines them with (at least) that
// target.
#if defined(__clang__)
#define MD_TARGET_DOTPROD __attribute__((target("dotprod")))
#define MD_TARGET_I8MM __attribute__((target("i8mm")))
#else
#define MD_TARGET_DOTPROD __attribute__((target("arch=armv8.2-a+dotprod")))
#define MD_TARGET_I8MM __attribute__((target("arch=armv8.2-a+i8mm")))
#endif

namespace md::gemv_detail::neon {

// SDOT: acc lane i += Σ_k a[4i+k]·b[4i+k]; sdot_lane<L> takes b's 4 bytes
// 4L…4L+3 for every lane. Clang before 16 declares the intrinsics only
// when the whole file targets dotprod, so there they are spelled in asm.
#if defined(__clang__) && __clang_major__ < 16
MD_TARGET_DOTPROD inline int32x4_t sdot(int32x4_t acc, int8x16_t a, int8x16_t b) {
  __asm__("sdot %0.4s, %1.16b, %2.16b" : "+w"(acc) : "w"(a), "w"(b));
  return acc;
}
template <int L>
MD_TARGET_DOTPROD inline int32x4_t sdot_lane(int32x4_t acc, int8x16_t a, int8x16_t b) {
  __asm__("sdot %0.4s, %1.16b, %2.4b[%3]" : "+w"(acc) : "w"(a), "w"(b), "i"(L));
  return acc;
}
#else
MD_TARGET_DOTPROD inline int32x4_t sdot(int32x4_t acc, int8x16_t a, int8x16_t b) { return vdotq_s32(acc, a, b); }
template <int L>
MD_TARGET_DOTPROD inline int32x4_t sdot_lane(int32x4_t acc, int8x16_t a, int8x16_t b) {
  return vdotq_laneq_s32(acc, a, b, L);
}
#endif

// The portable fast_exp (ops.cpp, fast_math.h) on 4 lanes, with its
// constants and order of operations.
inline float32x4_t exp4(float32x4_t x) {
  using namespace fast_math;
  x = vminq_f32(vdupq_n_f32(kExpMax), vmaxq_f32(vdupq_n_f32(kExpMin), x));
  const float32x4_t n = vrndnq_f32(vmulq_f32(x, vdupq_n_f32(kLog2e)));
  const float32x4_t r = vsubq_f32(vsubq_f32(x, vmulq_f32(n, vdupq_n_f32(kLn2Hi))), vmulq_f32(n, vdupq_n_f32(kLn2Lo)));
  float32x4_t p = vdupq_n_f32(kExpPoly[0]);
  for (int i = 1; i < 7; ++i) p = vaddq_f32(vmulq_f32(p, r), vdupq_n_f32(kExpPoly[i]));
  const int32x4_t bits = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)), 23);
  return vmulq_f32(p, vreinterpretq_f32_s32(bits));
}

// A prefetch range (the int8 GEMM's next call's weight rows) brought towards
// L2 in `parts` equal shares while the current call computes: share(i)
// issues the lines of shares up to i.
class PrefetchShares {
 public:
  PrefetchShares(const uint8_t* p, size_t bytes, int parts) : p_(p), lines_(p ? (bytes + 63) / 64 : 0), parts_(parts) {}
  void share(int i) {
    for (const size_t end = lines_ * size_t(i + 1) / size_t(parts_); done_ < end; ++done_)
      __builtin_prefetch(p_ + 64 * done_, 0, 2);
  }

 private:
  const uint8_t* p_;
  size_t lines_, done_ = 0;
  int parts_;
};

// GELU as ops.cpp's gelu_body (fast_math.h's constants, the same operations
// in the same order), on 4 lanes.
inline float32x4_t gelu4(float32x4_t v) {
  using namespace fast_math;
  const float32x4_t v3 = vmulq_f32(vmulq_f32(vmulq_f32(vdupq_n_f32(kGeluCubic), v), v), v);
  const float32x4_t u = vmulq_f32(vdupq_n_f32(kGeluScale), vaddq_f32(v, v3));
  const float32x4_t e = exp4(vmulq_f32(vdupq_n_f32(-2.0f), u));
  return vdivq_f32(v, vaddq_f32(vdupq_n_f32(1.0f), e));
}

}  // namespace md::gemv_detail::neon
