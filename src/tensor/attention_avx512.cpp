// AVX-512 kernels of decode-time attention over bf16 KV rows (ops.cpp's
// attention for up to kDirectAttentionRows queries), head_dim 64: the two
// products of one query row against one head's keys and values, read in
// place. Reached only through the run-time dispatch of gemv.cpp (the
// Kernels table), like the GEMV kernels: these are GEMVs over the cache.
//
// A 64-dim bf16 row is two 64-byte loads; each splits into its even and odd
// columns by a 16-bit shift and a mask (exact bf16 → fp32), so q is held
// de-interleaved to match and the values' products come out de-interleaved
// (put back in order once per row).
// scores: 16 keys' dot products at a time, reduced together by one
//   transpose-and-add tree instead of 16 horizontal sums.
// p·V:    two sets of four accumulators (even / odd keys) hide the FMA latency.

#include "tensor/simd_intrinsics.h"

#include <cstddef>
#include <cstdint>

#include "tensor/gemv_impl.h"

#include "tensor/simd_target_avx512_begin.h"

#include "tensor/sum16_avx512.h"

namespace md::gemv_detail {
namespace {

inline __m512 even_cols(__m512i w) { return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)); }
inline __m512 odd_cols(__m512i w) {
  return _mm512_castsi512_ps(_mm512_and_si512(w, _mm512_set1_epi32(int(0xffff0000u))));
}

void bf16_scores_avx512(const float* q, const uint16_t* k, int stride, int n, float scale, float* scores) {
  // q de-interleaved: even / odd columns of each 32-column half.
  alignas(64) float qd[64];
  for (int h = 0; h < 2; ++h)
    for (int j = 0; j < 16; ++j) {
      qd[32 * h + j] = q[32 * h + 2 * j];
      qd[32 * h + 16 + j] = q[32 * h + 2 * j + 1];
    }
  const __m512 qe0 = _mm512_load_ps(qd), qo0 = _mm512_load_ps(qd + 16);
  const __m512 qe1 = _mm512_load_ps(qd + 32), qo1 = _mm512_load_ps(qd + 48);
  const __m512 vscale = _mm512_set1_ps(scale);
  for (int j0 = 0; j0 < n; j0 += 16) {
    const int m = n - j0 < 16 ? n - j0 : 16;
    __m512 acc[16];
    for (int i = 0; i < 16; ++i) {
      if (i >= m) {
        acc[i] = _mm512_setzero_ps();
        continue;
      }
      const uint16_t* row = k + size_t(j0 + i) * size_t(stride);
      const __m512i w0 = _mm512_loadu_si512(row), w1 = _mm512_loadu_si512(row + 32);
      const __m512 a = _mm512_fmadd_ps(even_cols(w0), qe0, _mm512_mul_ps(odd_cols(w0), qo0));
      const __m512 b = _mm512_fmadd_ps(even_cols(w1), qe1, _mm512_mul_ps(odd_cols(w1), qo1));
      acc[i] = _mm512_add_ps(a, b);
    }
    _mm512_mask_storeu_ps(scores + j0, __mmask16((1u << m) - 1u), _mm512_mul_ps(sum16(acc), vscale));
  }
}

void bf16_pv_avx512(const float* p, const uint16_t* v, int stride, int n, float* out) {
  __m512 acc[2][4];
  for (int s = 0; s < 2; ++s)
    for (int u = 0; u < 4; ++u) acc[s][u] = _mm512_setzero_ps();
  int j = 0;
  for (; j + 2 <= n; j += 2)
    for (int s = 0; s < 2; ++s) {
      const uint16_t* row = v + size_t(j + s) * size_t(stride);
      const __m512 pj = _mm512_set1_ps(p[j + s]);
      const __m512i w0 = _mm512_loadu_si512(row), w1 = _mm512_loadu_si512(row + 32);
      acc[s][0] = _mm512_fmadd_ps(even_cols(w0), pj, acc[s][0]);
      acc[s][1] = _mm512_fmadd_ps(odd_cols(w0), pj, acc[s][1]);
      acc[s][2] = _mm512_fmadd_ps(even_cols(w1), pj, acc[s][2]);
      acc[s][3] = _mm512_fmadd_ps(odd_cols(w1), pj, acc[s][3]);
    }
  if (j < n) {
    const uint16_t* row = v + size_t(j) * size_t(stride);
    const __m512 pj = _mm512_set1_ps(p[j]);
    const __m512i w0 = _mm512_loadu_si512(row), w1 = _mm512_loadu_si512(row + 32);
    acc[0][0] = _mm512_fmadd_ps(even_cols(w0), pj, acc[0][0]);
    acc[0][1] = _mm512_fmadd_ps(odd_cols(w0), pj, acc[0][1]);
    acc[0][2] = _mm512_fmadd_ps(even_cols(w1), pj, acc[0][2]);
    acc[0][3] = _mm512_fmadd_ps(odd_cols(w1), pj, acc[0][3]);
  }
  alignas(64) float d[64];
  for (int u = 0; u < 4; ++u) _mm512_store_ps(d + 16 * u, _mm512_add_ps(acc[0][u], acc[1][u]));
  for (int h = 0; h < 2; ++h)
    for (int i = 0; i < 16; ++i) {
      out[32 * h + 2 * i] = d[32 * h + i];
      out[32 * h + 2 * i + 1] = d[32 * h + 16 + i];
    }
}

}  // namespace

const AttentionKernels kAttentionAvx512 = {"avx512", 64, bf16_scores_avx512, bf16_pv_avx512};

}  // namespace md::gemv_detail

#include "tensor/simd_target_end.h"
