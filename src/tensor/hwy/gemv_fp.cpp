// The fp GEMV kernels (fp32 / bf16 / fp16 weights × fp32 activations), one
// source for every architecture: written with Highway and compiled once per
// target (foreach_target: AVX-512 and AVX2 on x86, NEON on Arm). The x86 and
// Arm kernel tables (x86/gemv_avx512.cpp, x86/gemv_avx2.cpp,
// arm/gemv_neon.cpp) name their target's copy; nothing else calls them.
// Why Highway here and intrinsics for the int8 kernels: this loop streams
// memory, and written in Highway it decodes as fast as the hand-written
// kernels it replaced on two threads (one thread: 3-4 % below them on
// AVX-512, 13-16 % above on AVX2; docs/BENCHMARKS.md, "Highway or
// hand-written intrinsics"); the int8 kernels are tiled by hand for each
// register file.
//
// One weight row at a time (a single sequential stream per thread), up to 4
// input rows per pass sharing each weight load, four accumulators per input
// row (the FMA latency); rows of 4096 columns or more with one input row go
// two weight rows per pass, so each x load (x no longer fits L1) serves two
// rows. Every row's summation order is the same in every pass shape, so the
// result of a row does not depend on the input-row count, the thread split
// or the pass: bit-identical.

// Targets compiled: the ones the tables use, plus Highway's static fallback.
// SVE is left out (see README, "ARM"): these loops stream memory, and the SVE
// cores in service have no more load or FMA width than their NEON units.
#ifndef HWY_DISABLED_TARGETS
#define HWY_DISABLED_TARGETS (HWY_SSSE3 | HWY_SSE4 | HWY_AVX3_DL | HWY_SVE | HWY_SVE2 | HWY_SVE_256 | HWY_SVE2_128)
#endif
// No AES/PCLMUL in the target strings: these kernels never use them, and the
// tables' CPU checks do not ask for them.
#define HWY_DISABLE_PCLMUL_AES 1

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "tensor/hwy/gemv_fp.cpp"
#include <hwy/foreach_target.h>  // (re-includes this file once per target)

#include <hwy/highway.h>

#include <cstddef>
#include <cstdint>

#include "tensor/dtype.h"
#include "tensor/gemv_impl.h"

HWY_BEFORE_NAMESPACE();
namespace md::gemv_detail {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

using DF = hn::ScalableTag<float>;
using VF = hn::Vec<DF>;

// A vector of f32 or f16 weights from element c of a row, widened to fp32
// (bf16 rows are read as pairs: load_pair).
template <WeightFormat F>
HWY_INLINE VF load_weights(DF df, const uint8_t* row, size_t c) {
  static_assert(F != WeightFormat::BF16);
  if constexpr (F == WeightFormat::F32) {
    return hn::LoadU(df, reinterpret_cast<const float*>(row) + c);
  } else {
    const hn::Rebind<hwy::float16_t, DF> dh;
    return hn::PromoteTo(df, hn::LoadU(dh, reinterpret_cast<const hwy::float16_t*>(row) + c));
  }
}

// One weight element as fp32 (the columns past the last full vector).
template <WeightFormat F>
HWY_INLINE float weight_at(const uint8_t* row, size_t c) {
  if constexpr (F == WeightFormat::F32) {
    float v;
    __builtin_memcpy(&v, row + 4 * c, 4);
    return v;
  } else {
    uint16_t h;
    __builtin_memcpy(&h, row + 2 * c, 2);
    return F == WeightFormat::BF16 ? bf16_to_f32(h) : f16_to_f32(h);
  }
}

// bf16 weights are read as pairs: one vector of 32-bit lanes holds 2N
// columns; a 16-bit shift left widens the even ones to fp32, masking the low
// half the odd ones (exact) — half the instructions per weight byte of a
// widening load, which is what lets one thread's loop keep up with memory.
// So x comes de-interleaved per 2N columns (N even, then N odd), prepared
// once per call by the front end (bf16_pair_cols); columns past the last
// full 2N as given.
HWY_INLINE void load_pair(DF df, const uint8_t* row, size_t c, VF& even, VF& odd) {
  const hn::Repartition<uint32_t, DF> du;
  const auto u = hn::LoadU(du, reinterpret_cast<const uint32_t*>(row + 2 * c));
  even = hn::BitCast(df, hn::ShiftLeft<16>(u));
  odd = hn::BitCast(df, hn::And(u, hn::Set(du, 0xFFFF0000u)));
}

// R weight rows (stride bytes apart) × M input rows of X (ldx apart):
// y[m·ldy + i] = Σ_c w[i][c] · X[m][c]. Per (row, input row): four vector
// accumulators over 4-vector steps, then the remaining whole vectors (bf16:
// pairs) into the first (two), the lanes summed, then the scalar tail.
template <WeightFormat F, int R, int M>
HWY_INLINE void rows_tile(const uint8_t* w, size_t stride, size_t cols, const float* X, size_t ldx, float* y,
                          size_t ldy) {
  const DF df;
  const size_t N = hn::Lanes(df);
  VF acc[R][M][4];
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 16
    for (int m = 0; m < M; ++m)
#pragma GCC unroll 16
      for (int u = 0; u < 4; ++u) acc[i][m][u] = hn::Zero(df);
  size_t c = 0;
  if constexpr (F == WeightFormat::BF16) {
    for (; c + 4 * N <= cols; c += 4 * N)
#pragma GCC unroll 16
      for (int h = 0; h < 2; ++h) {
        const size_t ch = c + 2 * size_t(h) * N;
        VF xe[M], xo[M];
#pragma GCC unroll 16
        for (int m = 0; m < M; ++m) {
          xe[m] = hn::LoadU(df, X + size_t(m) * ldx + ch);
          xo[m] = hn::LoadU(df, X + size_t(m) * ldx + ch + N);
        }
#pragma GCC unroll 16
        for (int i = 0; i < R; ++i) {
          VF even, odd;
          load_pair(df, w + size_t(i) * stride, ch, even, odd);
#pragma GCC unroll 16
          for (int m = 0; m < M; ++m) {
            acc[i][m][2 * h] = hn::MulAdd(even, xe[m], acc[i][m][2 * h]);
            acc[i][m][2 * h + 1] = hn::MulAdd(odd, xo[m], acc[i][m][2 * h + 1]);
          }
        }
      }
    for (; c + 2 * N <= cols; c += 2 * N)
#pragma GCC unroll 16
      for (int i = 0; i < R; ++i) {
        VF even, odd;
        load_pair(df, w + size_t(i) * stride, c, even, odd);
#pragma GCC unroll 16
        for (int m = 0; m < M; ++m) {
          acc[i][m][0] = hn::MulAdd(even, hn::LoadU(df, X + size_t(m) * ldx + c), acc[i][m][0]);
          acc[i][m][1] = hn::MulAdd(odd, hn::LoadU(df, X + size_t(m) * ldx + c + N), acc[i][m][1]);
        }
      }
  } else {
    for (; c + 4 * N <= cols; c += 4 * N)
#pragma GCC unroll 16
      for (int u = 0; u < 4; ++u) {
        VF xv[M];
#pragma GCC unroll 16
        for (int m = 0; m < M; ++m) xv[m] = hn::LoadU(df, X + size_t(m) * ldx + c + size_t(u) * N);
#pragma GCC unroll 16
        for (int i = 0; i < R; ++i) {
          const VF wv = load_weights<F>(df, w + size_t(i) * stride, c + size_t(u) * N);
#pragma GCC unroll 16
          for (int m = 0; m < M; ++m) acc[i][m][u] = hn::MulAdd(wv, xv[m], acc[i][m][u]);
        }
      }
    for (; c + N <= cols; c += N)
#pragma GCC unroll 16
      for (int i = 0; i < R; ++i) {
        const VF wv = load_weights<F>(df, w + size_t(i) * stride, c);
#pragma GCC unroll 16
        for (int m = 0; m < M; ++m) acc[i][m][0] = hn::MulAdd(wv, hn::LoadU(df, X + size_t(m) * ldx + c), acc[i][m][0]);
      }
  }
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 16
    for (int m = 0; m < M; ++m) {
      const VF sum = hn::Add(hn::Add(acc[i][m][0], acc[i][m][1]), hn::Add(acc[i][m][2], acc[i][m][3]));
      float s = hn::GetLane(hn::SumOfLanes(df, sum));
      for (size_t t = c; t < cols; ++t) s += weight_at<F>(w + size_t(i) * stride, t) * X[size_t(m) * ldx + t];
      y[size_t(m) * ldy + size_t(i)] = s;
    }
}

template <WeightFormat F>
void fp_format(const WeightMatrix& w, const float* X, int m, float* Y, int ldy, int r0, int r1) {
  const uint8_t* W = static_cast<const uint8_t*>(w.data);
  const size_t cols = size_t(w.cols), ld = size_t(ldy);
  const size_t stride = cols * (F == WeightFormat::F32 ? 4 : 2);
  int r = r0;
  if (m == 1 && cols >= 4096)
    for (; r + 2 <= r1; r += 2) rows_tile<F, 2, 1>(W + size_t(r) * stride, stride, cols, X, cols, Y + r, ld);
  for (; r < r1; ++r) {
    const uint8_t* wr = W + size_t(r) * stride;
    // Blocks of up to 4 input rows; the weight row stays in L1 between them.
    for (int mb = 0; mb < m; mb += 4) {
      const float* Xb = X + size_t(mb) * cols;
      float* y = Y + size_t(mb) * ld + size_t(r);
      switch (m - mb < 4 ? m - mb : 4) {
        case 1: rows_tile<F, 1, 1>(wr, stride, cols, Xb, cols, y, ld); break;
        case 2: rows_tile<F, 1, 2>(wr, stride, cols, Xb, cols, y, ld); break;
        case 3: rows_tile<F, 1, 3>(wr, stride, cols, Xb, cols, y, ld); break;
        default: rows_tile<F, 1, 4>(wr, stride, cols, Xb, cols, y, ld); break;
      }
    }
  }
}

// The columns per de-interleaved chunk of x this target's bf16 loop reads.
int bf16_pair_cols() { return int(2 * hn::Lanes(DF())); }

// The FpKernel of gemv_impl.h for this target.
void fp_rows(const WeightMatrix& w, const float* X, int m, float* Y, int ldy, int r0, int r1) {
  switch (w.format) {
    case WeightFormat::F32: fp_format<WeightFormat::F32>(w, X, m, Y, ldy, r0, r1); break;
    case WeightFormat::BF16: fp_format<WeightFormat::BF16>(w, X, m, Y, ldy, r0, r1); break;
    case WeightFormat::F16: fp_format<WeightFormat::F16>(w, X, m, Y, ldy, r0, r1); break;
    default: break;
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace md::gemv_detail
HWY_AFTER_NAMESPACE();
