// AArch64 Advanced SIMD kernels of decode-time attention over bf16 KV rows
// (ops.cpp's attention), head_dim 64: the two products of one query row
// against one head's keys and values, read in place, and the fused online
// softmax step. Reached only through the run-time dispatch of gemv.cpp, for
// both the "neon" and "dotprod" levels (plain NEON throughout).
//
// A 64-dim bf16 row is eight 16-byte loads; vshll_n_u16(·, 16) widens each
// half to fp32 exactly and in column order, so q, acc and the outputs stay
// in natural order (to_lanes / from_lanes are copies).
// scores: 4 keys at a time, the query held in 16 registers, the 4 dot
//   products reduced together by pairwise adds.
// p·V:    16 accumulators (the whole 64-float row): 16 independent FMA
//   chains per key hide the latency.
// e^x:    exp4, the portable fast_exp (ops.cpp, fast_math.h) on 4 lanes with
//   its constants and order of operations.

#if defined(__aarch64__)

#include <arm_neon.h>

#include <cstddef>
#include <cstdint>

#include "tensor/arm/neon_common.h"
#include "tensor/gemv_impl.h"

namespace md::gemv_detail {
namespace {

constexpr int kHeadDim = 64;
constexpr int kMaxBlock = 32;

using neon::exp4;

inline float exp1(float x) { return vgetq_lane_f32(exp4(vdupq_n_f32(x)), 0); }

// Columns 8i…8i+7 of a bf16 row as fp32.
inline void widen8(const uint16_t* row, int i, float32x4_t& a, float32x4_t& b) {
  const uint16x8_t h = vld1q_u16(row + 8 * i);
  a = vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(h), 16));
  b = vreinterpretq_f32_u32(vshll_high_n_u16(h, 16));
}

struct Query {
  float32x4_t v[16];
  explicit Query(const float* q) {
    for (int i = 0; i < 16; ++i) v[i] = vld1q_f32(q + 4 * i);
  }
};

// q·k for one key row, as 4 partial lanes (two chains of 8 FMAs).
__attribute__((always_inline)) inline float32x4_t dot_row(const Query& q, const uint16_t* row) {
  float32x4_t s0 = vdupq_n_f32(0.0f), s1 = vdupq_n_f32(0.0f);
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {
    float32x4_t a, b;
    widen8(row, i, a, b);
    s0 = vfmaq_f32(s0, a, q.v[2 * i]);
    s1 = vfmaq_f32(s1, b, q.v[2 * i + 1]);
  }
  return vaddq_f32(s0, s1);
}

// scale·q·k_j for keys j0…j0+m−1 (m ≤ 4) as the first m lanes; rows past m
// are not read.
__attribute__((always_inline)) inline float32x4_t dot4(const Query& q, const uint16_t* k, int stride, int j0, int m,
                                                       float scale) {
  float32x4_t d[4];
  for (int i = 0; i < 4; ++i) d[i] = i < m ? dot_row(q, k + size_t(j0 + i) * size_t(stride)) : vdupq_n_f32(0.0f);
  return vmulq_n_f32(vpaddq_f32(vpaddq_f32(d[0], d[1]), vpaddq_f32(d[2], d[3])), scale);
}

// acc += p·row for one value row (16 accumulators, natural order).
__attribute__((always_inline)) inline void axpy_row(float32x4_t (&acc)[16], float p, const uint16_t* row) {
  const float32x4_t pv = vdupq_n_f32(p);
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {
    float32x4_t a, b;
    widen8(row, i, a, b);
    acc[2 * i] = vfmaq_f32(acc[2 * i], a, pv);
    acc[2 * i + 1] = vfmaq_f32(acc[2 * i + 1], b, pv);
  }
}

void to_lanes_neon(const float* row, float* lanes) {
  for (int d = 0; d < kHeadDim; ++d) lanes[d] = row[d];
}
void from_lanes_neon(const float* lanes, float* row) {
  for (int d = 0; d < kHeadDim; ++d) row[d] = lanes[d];
}

void bf16_scores_neon(const float* q, const uint16_t* k, int stride, int n, float scale, float* scores) {
  const Query qv(q);
  int j = 0;
  for (; j + 4 <= n; j += 4) vst1q_f32(scores + j, dot4(qv, k, stride, j, 4, scale));
  if (j < n) {
    float t[4];
    vst1q_f32(t, dot4(qv, k, stride, j, n - j, scale));
    for (int i = 0; j + i < n; ++i) scores[j + i] = t[i];
  }
}

void bf16_pv_neon(const float* p, const uint16_t* v, int stride, int n, float* out) {
  float32x4_t acc[16];
  for (int i = 0; i < 16; ++i) acc[i] = vdupq_n_f32(0.0f);
  for (int j = 0; j < n; ++j) axpy_row(acc, p[j], v + size_t(j) * size_t(stride));
  for (int i = 0; i < 16; ++i) vst1q_f32(out + 4 * i, acc[i]);
}

// Decode attention's per-head step (gemv_impl.h): the block's scores in a
// local array (≤ 32), max, rescale, exponentials and their sum 4 lanes at a
// time, then p·V into fresh accumulators added to acc. The prefetch lines
// are spread over the key loops (a burst of them stalls the loads behind).
void bf16_block_neon(const float* q, const uint16_t* k, const uint16_t* v, int stride, int n, float scale, float* m,
                     float* l, float* acc, const RowPrefetch& pf) {
  PrefetchCursor prefetch(pf);
  if (n <= 0) {
    prefetch.issue_rest();
    return;
  }
  const int per_key = (prefetch.lines() + 2 * n - 1) / (2 * n);
  alignas(16) float s[kMaxBlock];
  {
    const Query qv(q);
    for (int j = 0; j < n; j += 4) {
      const int c = n - j < 4 ? n - j : 4;
      prefetch.issue(per_key * c);
      vst1q_f32(s + j, dot4(qv, k, stride, j, c, scale));
    }
  }
  float mx = s[0];
  for (int j = 1; j < n; ++j) mx = s[j] > mx ? s[j] : mx;
  if (mx > *m) {
    // Rescale what the earlier blocks accumulated (nothing on the first).
    const float f = *m == -__builtin_inff() ? 0.0f : exp1(*m - mx);
    const float32x4_t vf = vdupq_n_f32(f);
    for (int i = 0; i < 16; ++i) vst1q_f32(acc + 4 * i, vmulq_f32(vld1q_f32(acc + 4 * i), vf));
    *l *= f;
    *m = mx;
  }
  const float32x4_t vm = vdupq_n_f32(*m);
  float32x4_t sum = vdupq_n_f32(0.0f);
  int j = 0;
  for (; j + 4 <= n; j += 4) {
    const float32x4_t p = exp4(vsubq_f32(vld1q_f32(s + j), vm));
    vst1q_f32(s + j, p);
    sum = vaddq_f32(sum, p);
  }
  float tail = 0.0f;
  if (j < n) {
    // The last 1-3 scores: lanes past n are not written back or summed.
    alignas(16) float t[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int i = 0; j + i < n; ++i) t[i] = s[j + i];
    vst1q_f32(t, exp4(vsubq_f32(vld1q_f32(t), vm)));
    for (int i = 0; j + i < n; ++i) {
      s[j + i] = t[i];
      tail += t[i];
    }
  }
  *l += vaddvq_f32(sum) + tail;
  float32x4_t b[16];
  for (int i = 0; i < 16; ++i) b[i] = vdupq_n_f32(0.0f);
  for (j = 0; j < n; ++j) {
    prefetch.issue(per_key);
    axpy_row(b, s[j], v + size_t(j) * size_t(stride));
  }
  for (int i = 0; i < 16; ++i) vst1q_f32(acc + 4 * i, vaddq_f32(vld1q_f32(acc + 4 * i), b[i]));
  prefetch.issue_rest();
}

}  // namespace

// int8 rows: ops.cpp's portable loops (compiled for NEON).
const AttentionKernels kAttentionNeon = {"neon",          kHeadDim,      bf16_scores_neon, bf16_pv_neon, kMaxBlock,
                                         bf16_block_neon, to_lanes_neon, from_lanes_neon,  nullptr,      nullptr};

}  // namespace md::gemv_detail

#endif  // __aarch64__
