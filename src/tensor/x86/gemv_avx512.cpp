// AVX-512 (F/BW/VL/DQ + VNNI) GEMV kernels. Compiled for that target only
// inside this file (target pragma, no global -march); reached only through
// the run-time dispatch of gemv.cpp. No standard-library templates are
// instantiated under the pragma (they could leak AVX-512 code into shared
// inline definitions).
//
// One weight row at a time (a single sequential stream per thread), up to 4
// input rows per pass sharing each weight load.
// fp kernels: Highway's AVX-512 target (hwy/gemv_fp.cpp).
// Q8 kernels: activations quantised per group to int8 once per call; per
// 64 columns one vpdpbusd of the unsigned weights (q+128) with the signed
// activations into an accumulator preloaded with the zero-point correction
// -128·Σx, then fp32: acc += float(dot)·s_x·d_w, the per-lane weight scales
// spread from the row's fp16 group scales by vpermps. Q4 (16-row panels):
// 16 rows per vpdpbusd, see q4_avx512.

#include "tensor/x86/simd_intrinsics.h"

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "tensor/dtype.h"
#include "tensor/gemv_impl.h"

#include "tensor/x86/simd_target_avx512_begin.h"

#include "tensor/x86/sum16_avx512.h"

namespace md::gemv_detail {
namespace {

// ---------------------------------------------------------------------------
// Q8 weights.

// Per-matrix constants of the scale expansion: a 128-column block holds
// `gpb` groups (4 for group 32, 2 for 64, 1 for ≥ 128, then spanning `bpg`
// blocks); idx0/idx1 spread them over the 16 int32 lanes of the block's two
// 64-column chunks.
struct QCtx {
  int cols, group, ng, nb, gpb, bpg;
  __mmask8 kspb;
  __m512i idx0, idx1;
};

inline QCtx make_ctx(const WeightMatrix& w) {
  QCtx q;
  q.cols = w.cols;
  q.group = w.group;
  q.ng = w.cols / w.group;
  q.nb = w.cols / 128;
  if (w.group == 32) {
    q.gpb = 4;
    q.bpg = 1;
    q.kspb = 0x0f;
    q.idx0 = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    q.idx1 = _mm512_set_epi32(3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2);
  } else if (w.group == 64) {
    q.gpb = 2;
    q.bpg = 1;
    q.kspb = 0x03;
    q.idx0 = _mm512_setzero_si512();
    q.idx1 = _mm512_set1_epi32(1);
  } else {
    q.gpb = 1;
    q.bpg = w.group / 128;
    q.kspb = 0x01;
    q.idx0 = _mm512_setzero_si512();
    q.idx1 = _mm512_setzero_si512();
  }
  return q;
}

// Q8 (group scales): one weight row × input rows [0, M). Per 128-column
// block: the row's fp16 scales of the block's groups (one masked load) times
// the x scales, spread over the lanes of each 64-column chunk by vpermps; the
// zero-point corrections (one int32 per 32 columns) go into lanes 0 and 8 of
// the vpdpbusd accumulator. Two accumulators per input row (one per chunk);
// the summation order does not depend on M.
template <int R, int M>
inline void q_rows(const QCtx& q, const WeightMatrix& w, const XQuant* x, float* y, size_t ldy, int r) {
  const size_t wstride = size_t(q.cols);
  const uint8_t* wr = static_cast<const uint8_t*>(w.data) + size_t(r) * wstride;
  const uint16_t* sr = static_cast<const uint16_t*>(w.aux) + size_t(r) * size_t(q.ng);
  __m512 acc[R][M][2];
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 16
    for (int m = 0; m < M; ++m) acc[i][m][0] = acc[i][m][1] = _mm512_setzero_ps();
  int gb = 0, left = q.bpg;  // first group of block b; blocks left in it (group > 128)
  for (int b = 0; b < q.nb; ++b) {
    __m512 sx[M];
#pragma GCC unroll 16
    for (int m = 0; m < M; ++m) sx[m] = _mm512_castps128_ps512(_mm_maskz_loadu_ps(q.kspb, x[m].s + gb));
    __m512 sw[R];
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) {
      sw[i] = _mm512_castps128_ps512(_mm_cvtph_ps(_mm_maskz_loadu_epi16(q.kspb, sr + size_t(i) * size_t(q.ng) + gb)));
      if (M == 1) sw[i] = _mm512_mul_ps(sw[i], sx[0]);
    }
#pragma GCC unroll 16
    for (int k = 0; k < 2; ++k) {
      const size_t c = size_t(b) * 128 + size_t(k) * 64;
      const __m512i idx = k == 0 ? q.idx0 : q.idx1;
      __m512i wv[R];
      __m512 swk[R];
#pragma GCC unroll 16
      for (int i = 0; i < R; ++i) {
        wv[i] = _mm512_loadu_si512(wr + size_t(i) * wstride + c);
        swk[i] = _mm512_permutexvar_ps(idx, sw[i]);
      }
#pragma GCC unroll 16
      for (int m = 0; m < M; ++m) {
        const __m512i cv = _mm512_loadu_si512(x[m].hc + c / 4);
        const __m512i xv = _mm512_loadu_si512(x[m].q + c);
        const __m512 sxk = M == 1 ? swk[0] : _mm512_permutexvar_ps(idx, sx[m]);
#pragma GCC unroll 16
        for (int i = 0; i < R; ++i) {
          const __m512 f = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(cv, wv[i], xv));
          // M > 1: the product of the spread scales equals the spread of the
          // product (lane moves only): bit-identical to the M = 1 result.
          const __m512 scale = M == 1 ? swk[i] : _mm512_mul_ps(swk[i], sxk);
          acc[i][m][k] = _mm512_fmadd_ps(f, scale, acc[i][m][k]);
        }
      }
    }
    if (q.bpg == 1) {
      gb += q.gpb;
    } else if (--left == 0) {
      ++gb;
      left = q.bpg;
    }
  }
  const int ctail = q.nb * 128;
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 16
    for (int m = 0; m < M; ++m) {
      float v = _mm512_reduce_add_ps(_mm512_add_ps(acc[i][m][0], acc[i][m][1]));
      if (ctail < q.cols) v += q8_dot_tail(w, r + i, x[m], ctail);
      y[size_t(m) * ldy + size_t(i)] = v;
    }
}

// fn(std::integral_constant<int, rows>{}) for 1 <= rows <= 8: a run-time
// count of input rows to the kernels' compile-time M.
template <class Fn>
__attribute__((always_inline)) inline void with_input_rows(int rows, Fn&& fn) {
  switch (rows) {
    case 1: fn(std::integral_constant<int, 1>{}); break;
    case 2: fn(std::integral_constant<int, 2>{}); break;
    case 3: fn(std::integral_constant<int, 3>{}); break;
    case 4: fn(std::integral_constant<int, 4>{}); break;
    case 5: fn(std::integral_constant<int, 5>{}); break;
    case 6: fn(std::integral_constant<int, 6>{}); break;
    case 7: fn(std::integral_constant<int, 7>{}); break;
    default: fn(std::integral_constant<int, 8>{}); break;
  }
}

// Weight rows per tile of the column-chunked q8 pass below.
constexpr int kQ8ChunkTile = 16;

// acc[m][u] += weight row wr · input row m over columns [c0, c1): 64·U
// columns a round (u: which 64 of them), the rest into acc[m][0]; with
// kAhead > 0 a software prefetch that many bytes past each weight line.
template <int M, int U, size_t kAhead>
__attribute__((always_inline)) inline void q8_dot_cols(const uint8_t* wr, const XQuant* x, size_t c0, size_t c1,
                                                       __m512i (&acc)[M][U]) {
  size_t c = c0;
  for (; c + 64 * U <= c1; c += 64 * U)
#pragma GCC unroll 4
    for (int u = 0; u < U; ++u) {
      if constexpr (kAhead > 0) _mm_prefetch(reinterpret_cast<const char*>(wr + c + 64 * u + kAhead), _MM_HINT_T0);
      const __m512i wv = _mm512_loadu_si512(wr + c + 64 * u);
#pragma GCC unroll 16
      for (int m = 0; m < M; ++m)
        acc[m][u] = _mm512_dpbusd_epi32(acc[m][u], wv, _mm512_loadu_si512(x[m].q + c + 64 * u));
    }
  for (; c < c1; c += 64) {
    const __m512i wv = _mm512_loadu_si512(wr + c);
#pragma GCC unroll 16
    for (int m = 0; m < M; ++m) acc[m][0] = _mm512_dpbusd_epi32(acc[m][0], wv, _mm512_loadu_si512(x[m].q + c));
  }
}

// Q8 with one scale per row (the int8 mode's text matrices), input rows
// [0, M): weight and activation scales are constant along the row, so the
// whole dot product stays in int32 (exact: ≤ 255·127 per product, < 2^31
// for any row width read here) and converts once. Per 64 columns one weight
// load, one activation load and one vpdpbusd per input row; U independent
// accumulators per input row hide its latency. The zero-point correction is
// the row total `corr` (−128·Σ q_x, the sum of x.hc).
template <int M>
inline void q8_row_scale_rows(const WeightMatrix& w, const XQuant* x, const int32_t* corr, float* y, size_t ldy,
                              int r) {
  // Independent accumulation chains: M·U of them, enough to cover
  // vpdpbusd's latency at two per cycle (Zen 5) without running out of the
  // 32 vector registers (M = 8: 16 accumulators).
  constexpr int U = M == 1 ? 4 : 2;
  const size_t cols = size_t(w.cols);
  const uint8_t* wr = static_cast<const uint8_t*>(w.data) + size_t(r) * cols;
  __m512i acc[M][U];
#pragma GCC unroll 16
  for (int m = 0; m < M; ++m)
#pragma GCC unroll 4
    for (int u = 0; u < U; ++u) acc[m][u] = _mm512_setzero_si512();
  // With 2+ input rows each weight line takes long enough that the
  // hardware prefetcher falls behind and the loads stall on memory: a
  // software prefetch 8 KB ahead (into the next rows) keeps DRAM streaming.
  // gemv_bench q8row 8192x2048 at m = 8, Zen 5 VM, 2 threads: 646-672 ->
  // 372-389 us, ~1.1x the m = 1 time.
  q8_dot_cols<M, U, M >= 2 ? 8192 : 0>(wr, x, 0, cols, acc);
  const float dw = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(static_cast<const uint16_t*>(w.aux)[r])));
#pragma GCC unroll 16
  for (int m = 0; m < M; ++m) {
    __m512i t = acc[m][0];
#pragma GCC unroll 4
    for (int u = 1; u < U; ++u) t = _mm512_add_epi32(t, acc[m][u]);
    y[size_t(m) * ldy] = float(_mm512_reduce_add_epi32(t) + corr[m]) * (dw * x[m].s[0]);
  }
}

// The same for M input rows whose activations (M · cols bytes) do not fit
// L1 beside the weight stream (8 rows of fc2's 8192 columns: 64 KB, which
// the row-at-a-time pass re-reads from L2 for every weight row: 2.3x the
// one-row time). kTile weight rows at a time, their columns in chunks of
// kChunk, so one chunk of the M activation rows (M · kChunk bytes) stays in
// L1 for all the tile's rows; each (weight row, input row) pair keeps its
// int32 sums in memory between chunks. Integer sums: the result equals
// q8_row_scale_rows' exactly. gemv_bench q8row 2048x8192 at m = 8, 2
// threads, Zen 5 VM: 784-863 -> 459-512 us (m = 1: 355-400); tiles of
// 4 x 2048 gave 535-605, 8 x 1024 405-531, 32 x 512 478-526.
template <int M>
inline void q8_row_scale_rows_chunked(const WeightMatrix& w, const XQuant* x, const int32_t* corr, float* Y, size_t ldy,
                                      int r, int rows) {
  constexpr int kTile = kQ8ChunkTile;
  constexpr size_t kChunk = 1024;
  const size_t cols = size_t(w.cols);
  alignas(64) __m512i part[kTile][M];
  for (int t = 0; t < rows; ++t)
    for (int m = 0; m < M; ++m) part[t][m] = _mm512_setzero_si512();
  for (size_t c0 = 0; c0 < cols; c0 += kChunk) {
    const size_t c1 = c0 + kChunk < cols ? c0 + kChunk : cols;
    for (int t = 0; t < rows; ++t) {
      const uint8_t* wr = static_cast<const uint8_t*>(w.data) + size_t(r + t) * cols;
      __m512i acc[M][2];
#pragma GCC unroll 16
      for (int m = 0; m < M; ++m) {
        acc[m][0] = part[t][m];
        acc[m][1] = _mm512_setzero_si512();
      }
      // This row's next chunk prefetched kTile chunks (16 KB) ahead in the
      // order the lines are read.
      q8_dot_cols<M, 2, kChunk>(wr, x, c0, c1, acc);
#pragma GCC unroll 16
      for (int m = 0; m < M; ++m) part[t][m] = _mm512_add_epi32(acc[m][0], acc[m][1]);
    }
  }
  for (int t = 0; t < rows; ++t) {
    const float dw = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(static_cast<const uint16_t*>(w.aux)[r + t])));
    for (int m = 0; m < M; ++m)
      Y[size_t(m) * ldy + size_t(r + t)] = float(_mm512_reduce_add_epi32(part[t][m]) + corr[m]) * (dw * x[m].s[0]);
  }
}

void q8_avx512(const WeightMatrix& w, const XQuant* x, int m, float* Y, int ldy, int r0, int r1) {
  if (w.group == w.cols && w.cols % 64 == 0) {
    // Row totals of the zero-point corrections, once per call and thread,
    // for up to 64 input rows at a time (GEMV callers pass at most 16).
    constexpr int kRowsPerPass = 64;
    for (int m0 = 0; m0 < m; m0 += kRowsPerPass) {
      const int mc = m - m0 < kRowsPerPass ? m - m0 : kRowsPerPass;
      int32_t corr[kRowsPerPass];
      for (int i = 0; i < mc; ++i) {
        __m512i t = _mm512_setzero_si512();
        for (int c = 0; c < w.cols / 4; c += 16) t = _mm512_add_epi32(t, _mm512_loadu_si512(x[m0 + i].hc + c));
        corr[i] = _mm512_reduce_add_epi32(t);
      }
      // Up to 8 input rows per pass over a weight row: one weight load feeds
      // 8 vpdpbusd (a decode step of 8 sequences reads each line once).
      // Activations beyond L1's share: the column-chunked pass.
      if (size_t(mc < 8 ? mc : 8) * size_t(w.cols) > 32 * 1024) {
        gemv_detail::g_q8_chunked_calls.fetch_add(1, std::memory_order_relaxed);
        for (int mb = 0; mb < mc; mb += 8) {
          const XQuant* xb = x + m0 + mb;
          float* Yb = Y + size_t(m0 + mb) * size_t(ldy);
          for (int r = r0; r < r1; r += kQ8ChunkTile) {
            const int rows = r1 - r < kQ8ChunkTile ? r1 - r : kQ8ChunkTile;
            with_input_rows(mc - mb, [&](auto M) {
              q8_row_scale_rows_chunked<decltype(M)::value>(w, xb, corr + mb, Yb, size_t(ldy), r, rows);
            });
          }
        }
        continue;
      }
      for (int r = r0; r < r1; ++r)
        for (int mb = 0; mb < mc; mb += 8) {
          float* y = Y + size_t(m0 + mb) * size_t(ldy) + size_t(r);
          const XQuant* xb = x + m0 + mb;
          with_input_rows(mc - mb,
                          [&](auto M) { q8_row_scale_rows<decltype(M)::value>(w, xb, corr + mb, y, size_t(ldy), r); });
        }
    }
    return;
  }
  const QCtx q = make_ctx(w);
  for (int r = r0; r < r1; ++r)
    for (int mb = 0; mb < m; mb += 4) {
      float* y = Y + size_t(mb) * size_t(ldy) + size_t(r);
      switch (m - mb < 4 ? m - mb : 4) {
        case 1: q_rows<1, 1>(q, w, x + mb, y, size_t(ldy), r); break;
        case 2: q_rows<1, 2>(q, w, x + mb, y, size_t(ldy), r); break;
        case 3: q_rows<1, 3>(q, w, x + mb, y, size_t(ldy), r); break;
        default: q_rows<1, 4>(q, w, x + mb, y, size_t(ldy), r); break;
      }
    }
}

// Q4 in 16-row panels (quant.h): one 64-byte line is 16 rows × columns
// 8b…8b+3 (low nibbles) and 8b+4…8b+7 (high nibbles), so one vpdpbusd per
// nibble half sums 4 columns of 16 rows against 4 activations broadcast, and
// a row's int32 sum stays in its lane for the whole group: per group one
// conversion and one multiply-add with the 16 rows' scales (one 32-byte
// load) times the activation scale. The sums start at the group's zero-point
// correction −8·Σq_x. P panels (a thread's 64-row chunk: 4) at once: 2P
// independent accumulation chains, each broadcast used by P panels. About 6
// vector operations per 64 weight bytes, against ~20 for the same weights
// stored row by row.
template <int P>
inline void q4_panels(const WeightMatrix& w, const XQuant& x, int panel, __m512* out) {
  const int cols = w.cols, group = w.group, ng = cols / group, lines = cols / 8, lpg = group / 8;
  const size_t pstride = size_t(lines) * 64;
  const uint8_t* base = static_cast<const uint8_t*>(w.data) + size_t(panel) * pstride;
  const uint16_t* sc = static_cast<const uint16_t*>(w.aux) + size_t(panel) * size_t(ng) * 16;
  const __m512i low4 = _mm512_set1_epi8(0x0f);
  __m512 acc[P];
#pragma GCC unroll 4
  for (int p = 0; p < P; ++p) acc[p] = _mm512_setzero_ps();
  for (int g = 0; g < ng; ++g) {
    __m512i lo[P], hi[P];
    const __m512i z = _mm512_set1_epi32(q4_group_correction(x, g, group));
#pragma GCC unroll 4
    for (int p = 0; p < P; ++p) {
      lo[p] = z;
      hi[p] = _mm512_setzero_si512();
    }
    const uint8_t* line = base + size_t(g) * size_t(lpg) * 64;
    const int8_t* xg = x.q + size_t(g) * size_t(group);
    for (int b = 0; b < lpg; ++b, line += 64, xg += 8) {
      int32_t x4[2];
      __builtin_memcpy(x4, xg, 8);
      const __m512i xl = _mm512_set1_epi32(x4[0]), xh = _mm512_set1_epi32(x4[1]);
#pragma GCC unroll 4
      for (int p = 0; p < P; ++p) {
        const __m512i raw = _mm512_loadu_si512(line + size_t(p) * pstride);
        lo[p] = _mm512_dpbusd_epi32(lo[p], _mm512_and_si512(raw, low4), xl);
        hi[p] = _mm512_dpbusd_epi32(hi[p], _mm512_and_si512(_mm512_srli_epi16(raw, 4), low4), xh);
      }
    }
    const __m512 sx = _mm512_set1_ps(x.s[g]);
#pragma GCC unroll 4
    for (int p = 0; p < P; ++p) {
      const __m512 d = _mm512_cvtph_ps(
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(sc + (size_t(p) * size_t(ng) + size_t(g)) * 16)));
      acc[p] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(lo[p], hi[p])), _mm512_mul_ps(d, sx), acc[p]);
    }
  }
#pragma GCC unroll 4
  for (int p = 0; p < P; ++p) out[p] = acc[p];
}

void q4_avx512(const WeightMatrix& w, const XQuant* x, int m, float* Y, int ldy, int r0, int r1) {
  const int p1 = (r1 + 15) / 16;
  for (int p = r0 / 16; p < p1;) {
    const int n = p1 - p < 4 ? p1 - p : 4;
    for (int i = 0; i < m; ++i) {
      __m512 v[4];
      switch (n) {
        case 1: q4_panels<1>(w, x[i], p, v); break;
        case 2: q4_panels<2>(w, x[i], p, v); break;
        case 3: q4_panels<3>(w, x[i], p, v); break;
        default: q4_panels<4>(w, x[i], p, v); break;
      }
      for (int k = 0; k < n; ++k) {
        // Rows of panel p + k inside [r0, r1).
        const int first = 16 * (p + k), lo = r0 > first ? r0 - first : 0, hi = r1 - first < 16 ? r1 - first : 16;
        const __mmask16 keep = __mmask16(((1u << hi) - 1u) & ~((1u << lo) - 1u));
        _mm512_mask_storeu_ps(Y + size_t(i) * size_t(ldy) + size_t(first), keep, v[k]);
      }
    }
    p += n;
  }
}

// ---------------------------------------------------------------------------
// Activation quantisation (bit-identical to prep_row_scalar: the same max,
// the same IEEE multiply, round to nearest even by vcvtps2dq).

void prep_row_avx512(const float* x, int cols, int group, int zero, int8_t* q, float* s, int32_t* hc) {
  const int ng = cols / group;
  const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127);
  for (int g = 0; g < ng; ++g) {
    const float* xg = x + size_t(g) * size_t(group);
    __m512 mx = _mm512_setzero_ps();
    for (int c = 0; c < group; c += 16) mx = _mm512_max_ps(mx, _mm512_abs_ps(_mm512_loadu_ps(xg + c)));
    const float amax = _mm512_reduce_max_ps(mx);
    const __m512 id = _mm512_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
    s[g] = amax / 127.0f;
    for (int c = 0; c < group; c += 32) {
      const __m512i a =
          _mm512_min_epi32(_mm512_max_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xg + c), id)), lo), hi);
      const __m512i b = _mm512_min_epi32(
          _mm512_max_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xg + c + 16), id)), lo), hi);
      const __m256i qb =
          _mm256_inserti128_si256(_mm256_castsi128_si256(_mm512_cvtepi32_epi8(a)), _mm512_cvtepi32_epi8(b), 1);
      const size_t col = size_t(g) * size_t(group) + size_t(c);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + col), qb);
      _mm256_storeu_si256(
          reinterpret_cast<__m256i*>(hc + col / 4),
          _mm256_setr_epi32(-zero * _mm512_reduce_add_epi32(_mm512_add_epi32(a, b)), 0, 0, 0, 0, 0, 0, 0));
    }
  }
}

// ---------------------------------------------------------------------------
// Quantisation of one fp32 row (same algorithm as quant_row_scalar in
// quant.cpp; see quant.h).

void quant_row_avx512(WeightFormat target, const float* w, int cols, int group, uint8_t* out, uint16_t* scales) {
  const int ng = cols / group;
  if (target == WeightFormat::Q8) {
    const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127);
    const __m512i off = _mm512_set1_epi32(128);
    for (int g = 0; g < ng; ++g) {
      const float* wg = w + size_t(g) * size_t(group);
      __m512 mx = _mm512_setzero_ps();
      for (int c = 0; c < group; c += 16) mx = _mm512_max_ps(mx, _mm512_abs_ps(_mm512_loadu_ps(wg + c)));
      const uint16_t h = f32_to_f16(_mm512_reduce_max_ps(mx) / 127.0f);
      scales[g] = h;
      const float d = f16_to_f32(h);
      const __m512 id = _mm512_set1_ps(d != 0.0f ? 1.0f / d : 0.0f);
      uint8_t* og = out + size_t(g) * size_t(group);
      for (int c = 0; c < group; c += 16) {
        __m512i qi = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(wg + c), id));
        qi = _mm512_add_epi32(_mm512_min_epi32(_mm512_max_epi32(qi, lo), hi), off);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(og + c), _mm512_cvtepi32_epi8(qi));
      }
    }
    return;
  }
  // Q4: candidate scales (gemv_impl.h), least-squares refit, best wins.
  uint8_t* qrow = out;
  const __m512 qlo = _mm512_set1_ps(-8.0f), qhi = _mm512_set1_ps(7.0f);
  const __m512i even = _mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 14, 12, 10, 8, 6, 4, 2, 0);
  const __m512i odd = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 15, 13, 11, 9, 7, 5, 3, 1);
  constexpr int kRound = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  for (int g = 0; g < ng; ++g) {
    const float* wg = w + size_t(g) * size_t(group);
    __m512 vmax = _mm512_set1_ps(-__builtin_inff()), vmin = _mm512_set1_ps(__builtin_inff());
    for (int c = 0; c < group; c += 16) {
      const __m512 a = _mm512_loadu_ps(wg + c);
      vmax = _mm512_max_ps(vmax, a);
      vmin = _mm512_min_ps(vmin, a);
    }
    const float mxv = _mm512_reduce_max_ps(vmax), mnv = _mm512_reduce_min_ps(vmin);
    const float mref = mxv >= -mnv ? mxv : mnv;
    uint8_t* qg = qrow + size_t(g) * size_t(group);
    if (mref == 0.0f) {
      scales[g] = 0;
      for (int c = 0; c < group; ++c) qg[c] = 8;
      continue;
    }
    // Σw·q and Σq² of the 8 candidates as 16 vectors, reduced together; the
    // best score Σwq²/Σq² (first one on ties) picked in-register.
    __m512 acc[2 * kNumQ4Candidates];
    for (int k = 0; k < kNumQ4Candidates; ++k) {
      const __m512 id = _mm512_set1_ps(kQ4Candidates[k] / mref);
      __m512 swq = _mm512_setzero_ps(), sqq = _mm512_setzero_ps();
      for (int c = 0; c < group; c += 16) {
        const __m512 a = _mm512_loadu_ps(wg + c);
        __m512 qv = _mm512_roundscale_ps(_mm512_mul_ps(a, id), kRound);
        qv = _mm512_min_ps(_mm512_max_ps(qv, qlo), qhi);
        swq = _mm512_fmadd_ps(a, qv, swq);
        sqq = _mm512_fmadd_ps(qv, qv, sqq);
      }
      acc[2 * k] = swq;
      acc[2 * k + 1] = sqq;
    }
    const __m512 sums = sum16(acc);
    const __m512 swq = _mm512_permutexvar_ps(even, sums), sqq = _mm512_permutexvar_ps(odd, sums);
    const __mmask16 valid = _mm512_cmp_ps_mask(sqq, _mm512_setzero_ps(), _CMP_GT_OQ) & 0xff;
    const __m512 score = _mm512_mask_div_ps(_mm512_set1_ps(-1.0f), valid, _mm512_mul_ps(swq, swq), sqq);
    const float top = _mm512_mask_reduce_max_ps(0xff, score);
    const unsigned k =
        unsigned(__builtin_ctz(unsigned(_mm512_cmp_ps_mask(score, _mm512_set1_ps(top), _CMP_EQ_OQ)) | 0x100u));
    float best_d = 0.0f, best_t = kQ4Candidates[0];
    if (k < unsigned(kNumQ4Candidates) && top >= 0.0f) {
      alignas(64) float a[16], b[16];
      _mm512_store_ps(a, swq);
      _mm512_store_ps(b, sqq);
      best_d = a[k] / b[k];
      best_t = kQ4Candidates[k];
    }
    scales[g] = f32_to_f16(best_d);
    const __m512 id = _mm512_set1_ps(best_t / mref);
    for (int c = 0; c < group; c += 16) {
      __m512 qv = _mm512_roundscale_ps(_mm512_mul_ps(_mm512_loadu_ps(wg + c), id), kRound);
      qv = _mm512_min_ps(_mm512_max_ps(qv, qlo), qhi);
      const __m512i qi = _mm512_add_epi32(_mm512_cvtps_epi32(qv), _mm512_set1_epi32(8));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(qg + c), _mm512_cvtepi32_epi8(qi));
    }
  }
}

}  // namespace

const Kernels kAvx512 = {"avx512",         N_AVX3::fp_rows,         q8_avx512,        q4_avx512,
                         quant_row_avx512, prep_row_avx512,         int8_gemm_avx512, N_AVX3::bf16_pair_cols,
                         int8_head_avx512, int8_head_scratch_avx512};

}  // namespace md::gemv_detail

#include "tensor/x86/simd_target_end.h"
