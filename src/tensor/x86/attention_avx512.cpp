// AVX-512 kernels of decode-time attention over bf16 (and int8) KV rows (ops.cpp's
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

#include "tensor/x86/simd_intrinsics.h"

#include <cstddef>
#include <cstdint>

#include "tensor/gemv_impl.h"

#include "tensor/x86/simd_target_avx512_begin.h"

#include "tensor/x86/exp_avx512.h"
#include "tensor/x86/sum16_avx512.h"

namespace md::gemv_detail {
namespace {

inline __m512 even_cols(__m512i w) { return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)); }
inline __m512 odd_cols(__m512i w) {
  return _mm512_castsi512_ps(_mm512_and_si512(w, _mm512_set1_epi32(int(0xffff0000u))));
}

// The kernels' element order of a 64-float row: per 32-column half,
// its 16 even columns, then its 16 odd ones (as even_cols / odd_cols split
// a bf16 row).
void to_lanes_avx512(const float* row, float* lanes) {
  for (int h = 0; h < 2; ++h)
    for (int j = 0; j < 16; ++j) {
      lanes[32 * h + j] = row[32 * h + 2 * j];
      lanes[32 * h + 16 + j] = row[32 * h + 2 * j + 1];
    }
}
void from_lanes_avx512(const float* lanes, float* row) {
  for (int h = 0; h < 2; ++h)
    for (int j = 0; j < 16; ++j) {
      row[32 * h + 2 * j] = lanes[32 * h + j];
      row[32 * h + 2 * j + 1] = lanes[32 * h + 16 + j];
    }
}

void bf16_scores_avx512(const float* q, const uint16_t* k, int stride, int n, float scale, float* scores) {
  // q de-interleaved: even / odd columns of each 32-column half.
  alignas(64) float qd[64];
  to_lanes_avx512(q, qd);
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
  from_lanes_avx512(d, out);
}

constexpr int kMaxBlock = 32;

// Decode attention's per-head step in one pass (gemv_impl.h): the block's
// scores stay in two registers, max, rescale, exponentials and their sum
// are vector operations, and p·V accumulates into acc in the kernel's
// order, so nothing is reordered or spilled per call. The prefetch lines
// are spread over the key loops (a burst of them stalled the loads behind
// it). One body for both row formats: dot(row) gives a key's 16 partial
// products (sum16 adds them up), key_scale(g, live) the factor of group g's
// 16 scores, value_scale(g, live) that of its 16 probabilities before p·V,
// add_value(c, j, pj) adds value row j times pj to c[4].
template <class Row, class Dot, class KeyScale, class ValueScale, class AddValue>
__attribute__((always_inline)) inline void online_block(const Row* k, int stride, int n, float* m, float* l, float* acc,
                                                        const RowPrefetch& pf, Dot&& dot, KeyScale&& key_scale,
                                                        ValueScale&& value_scale, AddValue&& add_value) {
  PrefetchCursor prefetch(pf);
  const int per_key = (prefetch.lines() + 2 * n - 1) / (2 * n);
  const __m512 minus_inf = _mm512_set1_ps(-__builtin_inff());
  __m512 s[2];
  __mmask16 live[2];
  for (int g = 0; g < 2; ++g) {
    const int j0 = 16 * g, m16 = n - j0 < 16 ? (n - j0 > 0 ? n - j0 : 0) : 16;
    live[g] = __mmask16((1u << m16) - 1u);
    if (m16 == 0) {
      s[g] = minus_inf;
      continue;
    }
    __m512 d[16];
    if (m16 == 16) {
      // A full group: a fixed trip count the compiler unrolls, so the 16
      // dot products stay in registers (the general loop below kept them
      // on the stack); the prefetches go out four keys' worth at a time.
#pragma GCC unroll 4
      for (int i0 = 0; i0 < 16; i0 += 4) {
        prefetch.issue(4 * per_key);
#pragma GCC unroll 4
        for (int i = i0; i < i0 + 4; ++i) d[i] = dot(k + size_t(j0 + i) * size_t(stride));
      }
    } else {
      for (int i = 0; i < 16; ++i) {
        if (i >= m16) {
          d[i] = _mm512_setzero_ps();
          continue;
        }
        prefetch.issue(per_key);
        d[i] = dot(k + size_t(j0 + i) * size_t(stride));
      }
    }
    s[g] = _mm512_mask_mov_ps(minus_inf, live[g], _mm512_mul_ps(sum16(d), key_scale(g, live[g])));
  }
  const float mx = _mm512_reduce_max_ps(_mm512_max_ps(s[0], s[1]));
  __m512 a[4];
  for (int u = 0; u < 4; ++u) a[u] = _mm512_loadu_ps(acc + 16 * u);
  if (mx > *m) {
    // Rescale what the earlier blocks accumulated (nothing on the first).
    const float f = *m == -__builtin_inff() ? 0.0f : _mm512_cvtss_f32(exp16(_mm512_set1_ps(*m - mx)));
    const __m512 vf = _mm512_set1_ps(f);
    for (int u = 0; u < 4; ++u) a[u] = _mm512_mul_ps(a[u], vf);
    *l *= f;
    *m = mx;
  }
  const __m512 vm = _mm512_set1_ps(*m);
  alignas(64) float p[kMaxBlock];
  const __m512 p0 = _mm512_maskz_mov_ps(live[0], exp16(_mm512_sub_ps(s[0], vm)));
  const __m512 p1 = _mm512_maskz_mov_ps(live[1], exp16(_mm512_sub_ps(s[1], vm)));
  *l += _mm512_reduce_add_ps(_mm512_add_ps(p0, p1));
  _mm512_store_ps(p, _mm512_mul_ps(p0, value_scale(0, live[0])));
  _mm512_store_ps(p + 16, _mm512_mul_ps(p1, value_scale(1, live[1])));
  // p·V: two sets of accumulators (even / odd keys) hide the FMA latency.
  __m512 b[2][4];
  for (int t = 0; t < 2; ++t)
    for (int u = 0; u < 4; ++u) b[t][u] = _mm512_setzero_ps();
  auto key = [&](__m512 * c, int j) __attribute__((always_inline)) {
    prefetch.issue(per_key);
    add_value(c, j, _mm512_set1_ps(p[j]));
  };
  int j = 0;
  for (; j + 2 <= n; j += 2) {
    key(b[0], j);
    key(b[1], j + 1);
  }
  if (j < n) key(b[0], j);
  for (int u = 0; u < 4; ++u) _mm512_storeu_ps(acc + 16 * u, _mm512_add_ps(a[u], _mm512_add_ps(b[0][u], b[1][u])));
  prefetch.issue_rest();
}

// bf16 rows: q and acc in the lanes order (even / odd columns per half).
void bf16_block_avx512(const float* q, const uint16_t* k, const uint16_t* v, int stride, int n, float scale, float* m,
                       float* l, float* acc, const RowPrefetch& pf) {
  const __m512 qe0 = _mm512_loadu_ps(q), qo0 = _mm512_loadu_ps(q + 16);
  const __m512 qe1 = _mm512_loadu_ps(q + 32), qo1 = _mm512_loadu_ps(q + 48);
  const __m512 vscale = _mm512_set1_ps(scale), one = _mm512_set1_ps(1.0f);
  online_block(
      k, stride, n, m, l, acc, pf,
      [&](const uint16_t* row) __attribute__((always_inline)) {
        const __m512i w0 = _mm512_loadu_si512(row), w1 = _mm512_loadu_si512(row + 32);
        return _mm512_fmadd_ps(
            even_cols(w0), qe0,
            _mm512_fmadd_ps(odd_cols(w0), qo0, _mm512_fmadd_ps(even_cols(w1), qe1, _mm512_mul_ps(odd_cols(w1), qo1))));
      },
      [&](int, __mmask16) __attribute__((always_inline)) { return vscale; },
      [&](int, __mmask16) __attribute__((always_inline)) { return one; },  // p·1 is p exactly
      [&](__m512 * c, int j, __m512 pj) __attribute__((always_inline)) {
        const uint16_t* row = v + size_t(j) * size_t(stride);
        const __m512i w0 = _mm512_loadu_si512(row), w1 = _mm512_loadu_si512(row + 32);
        c[0] = _mm512_fmadd_ps(even_cols(w0), pj, c[0]);
        c[1] = _mm512_fmadd_ps(odd_cols(w0), pj, c[1]);
        c[2] = _mm512_fmadd_ps(even_cols(w1), pj, c[2]);
        c[3] = _mm512_fmadd_ps(odd_cols(w1), pj, c[3]);
      });
}

// 16 int8 values → fp32 (one vpmovsxbd from memory and a conversion).
inline __m512 widen_i8x16(const int8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}

// int8 rows (a 64-dim row is one cache line), q and acc in the row's order:
// the keys' scales multiply a group's 16 summed dot products at once, the
// values' scales fold into p before p·V. The block's scales come first
// (pf.scales(): fetched on demand they stalled every block).
void i8_block_avx512(const float* q, const int8_t* k, const float* ks, const int8_t* v, const float* vs, int stride,
                     int n, float scale, float* m, float* l, float* acc, const RowPrefetch& pf) {
  pf.scales();
  __m512 qv[4];
  for (int u = 0; u < 4; ++u) qv[u] = _mm512_loadu_ps(q + 16 * u);
  const __m512 vscale = _mm512_set1_ps(scale);
  online_block(
      k, stride, n, m, l, acc, pf,
      [&](const int8_t* row) __attribute__((always_inline)) {
        return _mm512_fmadd_ps(widen_i8x16(row), qv[0],
                               _mm512_fmadd_ps(widen_i8x16(row + 16), qv[1],
                                               _mm512_fmadd_ps(widen_i8x16(row + 32), qv[2],
                                                               _mm512_mul_ps(widen_i8x16(row + 48), qv[3]))));
      },
      [&](int g, __mmask16 live)
          __attribute__((always_inline)) { return _mm512_mul_ps(_mm512_maskz_loadu_ps(live, ks + 16 * g), vscale); },
      [&](int g, __mmask16 live) __attribute__((always_inline)) { return _mm512_maskz_loadu_ps(live, vs + 16 * g); },
      [&](__m512 * c, int j, __m512 pj) __attribute__((always_inline)) {
        const int8_t* row = v + size_t(j) * size_t(stride);
        for (int u = 0; u < 4; ++u) c[u] = _mm512_fmadd_ps(widen_i8x16(row + 16 * u), pj, c[u]);
      });
}

// Several queries over one block they all see: its rows widened to fp32
// once (4 vectors a row, in the order the one-query kernels use: bf16 split
// into even / odd columns, int8 as stored), then per query the online
// step over them from L1. The one-query kernels widened every row again
// for each query (gemv_bench: ~1.7 ms a step per extra sequence over one
// shared 730-row prefix).
void block_rows_avx512(int nq, const float* const* q, size_t q_offset, const void* k, const float* ks, const void* v,
                       const float* vs, bool i8, int stride, int n, float scale, float* m, float* l, float* acc,
                       size_t state_stride, const RowPrefetch& pf) {
  alignas(64) float kf[kMaxBlock * 64], vf[kMaxBlock * 64];
  // The next block's lines spread over the widening loop.
  PrefetchCursor prefetch(pf);
  const int per_row = (prefetch.lines() + n - 1) / n;
  pf.scales();
  for (int j = 0; j < n; ++j) {
    prefetch.issue(per_row);
    float* kd = kf + 64 * j;
    float* vd = vf + 64 * j;
    if (i8) {
      const int8_t* kr = static_cast<const int8_t*>(k) + size_t(j) * size_t(stride);
      const int8_t* vr = static_cast<const int8_t*>(v) + size_t(j) * size_t(stride);
      for (int u = 0; u < 4; ++u) {
        _mm512_store_ps(kd + 16 * u, widen_i8x16(kr + 16 * u));
        _mm512_store_ps(vd + 16 * u, widen_i8x16(vr + 16 * u));
      }
    } else {
      const uint16_t* kr = static_cast<const uint16_t*>(k) + size_t(j) * size_t(stride);
      const uint16_t* vr = static_cast<const uint16_t*>(v) + size_t(j) * size_t(stride);
      for (int h = 0; h < 2; ++h) {
        const __m512i kw = _mm512_loadu_si512(kr + 32 * h), vw = _mm512_loadu_si512(vr + 32 * h);
        _mm512_store_ps(kd + 32 * h, even_cols(kw));
        _mm512_store_ps(kd + 32 * h + 16, odd_cols(kw));
        _mm512_store_ps(vd + 32 * h, even_cols(vw));
        _mm512_store_ps(vd + 32 * h + 16, odd_cols(vw));
      }
    }
  }
  prefetch.issue_rest();
  const RowPrefetch none;
  const __m512 vscale = _mm512_set1_ps(scale), one = _mm512_set1_ps(1.0f);
  for (int i = 0; i < nq; ++i) {
    const float* qi = q[i] + q_offset;
    __m512 qv[4];
    for (int u = 0; u < 4; ++u) qv[u] = _mm512_loadu_ps(qi + 16 * u);
    const size_t at = size_t(i) * state_stride;
    online_block(
        static_cast<const float*>(kf), 64, n, m + at, l + at, acc + at, none,
        [&](const float* row) __attribute__((always_inline)) {
          return _mm512_fmadd_ps(_mm512_load_ps(row), qv[0],
                                 _mm512_fmadd_ps(_mm512_load_ps(row + 16), qv[1],
                                                 _mm512_fmadd_ps(_mm512_load_ps(row + 32), qv[2],
                                                                 _mm512_mul_ps(_mm512_load_ps(row + 48), qv[3]))));
        },
        [&](int g, __mmask16 live) __attribute__((always_inline)) {
          return i8 ? _mm512_mul_ps(_mm512_maskz_loadu_ps(live, ks + 16 * g), vscale) : vscale;
        },
        [&](int g, __mmask16 live)
            __attribute__((always_inline)) { return i8 ? _mm512_maskz_loadu_ps(live, vs + 16 * g) : one; },
        [&](__m512 * c, int j, __m512 pj) __attribute__((always_inline)) {
          const float* row = vf + 64 * j;
          for (int u = 0; u < 4; ++u) c[u] = _mm512_fmadd_ps(_mm512_load_ps(row + 16 * u), pj, c[u]);
        });
  }
}

}  // namespace

const AttentionKernels kAttentionAvx512 = {"avx512",           64,
                                           bf16_scores_avx512, bf16_pv_avx512,
                                           kMaxBlock,          bf16_block_avx512,
                                           to_lanes_avx512,    from_lanes_avx512,
                                           i8_block_avx512,    block_rows_avx512};

}  // namespace md::gemv_detail

#include "tensor/x86/simd_target_end.h"
