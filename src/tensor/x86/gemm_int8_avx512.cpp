// The int8 GEMM of the int8 modes on AVX-512 VNNI, with its epilogue fused
// into the microkernel: Y = dequant(X_s8 · W_q8ᵀ) (+ bias, GELU) in one pass,
// no int32 result matrix. Compiled for that target only inside this file
// (target pragma, as gemv_avx512.cpp); reached through the kernel table.
//
// Why not oneDNN here: its u8×s8→s32 GEMM reaches ~85 % of the VNNI peak, but
// it writes int32 C that a second pass must dequantise (per-row × per-column
// scales, bias, GELU) and it cannot take those scales itself (oneDNN 2.6's
// matmul falls back to reference code with per-row scales). Doing the
// epilogue on the accumulators while they are in registers removes that pass
// (bench/moondream_bench prints both side by side).
//
// Layout: the weights are stored row-major as q + 128 (u8), which is
// vpdpbusd's unsigned operand; the activations are signed, broadcast 4 bytes
// at a time. Per panel of 64 weight rows the stored rows are repacked so that
// one 64-byte load holds 4 consecutive columns of 16 rows (a 16×16 dword
// transpose per 64 columns); the panel (64 × k bytes) stays in L1/L2 while
// every row tile of X passes over it. Microkernel: 6 rows × 64 outputs, 24
// zmm accumulators, per 4 columns 4 loads + 6 broadcasts for 24 vpdpbusd.
// (Measured on the vision and text shapes: 6×64 beat 8×48 by ~3 % and 12×32
// by ~5 %; blocking k so the panel's slice stays in L1 did not help.)
// The weights come from memory (a layer's matrices do not stay in cache), so
// while a panel computes, the stored rows of the next one are prefetched
// into L2: the repacking then took 21-30 k TSC cycles per panel against
// 34-44 k without (vision tower, a crop per thread).
// Σ (q_w + 128)·x = Σ q_w·x + 128·Σ x: the caller's row sums of X remove the
// offset exactly, so the int32 sums equal oneDNN's.

#include "tensor/x86/simd_intrinsics.h"

#include <cstddef>
#include <cstdint>

#include "tensor/fast_math.h"
#include "tensor/gemv_impl.h"

#include "tensor/x86/simd_target_avx512_begin.h"

#include "tensor/x86/exp_avx512.h"

namespace md::gemv_detail {
namespace {

constexpr int kTileM = 6;                        // rows of X per microkernel call
constexpr int kPanelVecs = kInt8GemmPanel / 16;  // 16-row weight vectors per panel

// r[i] (16 dwords each) := the transpose: r[j] lane i = old r[i] lane j.
inline void transpose16x16(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  // Per 128-bit lane L, u[4a + c] = rows 4a..4a+3 of column 4L + c.
  __m512i u[16];
  for (int i = 0; i < 16; i += 4) {
    u[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    u[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    u[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    u[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  for (int c = 0; c < 4; ++c) {
    const __m512i ab_lo = _mm512_shuffle_i32x4(u[c], u[4 + c], 0x44);
    const __m512i ab_hi = _mm512_shuffle_i32x4(u[c], u[4 + c], 0xEE);
    const __m512i cd_lo = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0x44);
    const __m512i cd_hi = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0xEE);
    r[c] = _mm512_shuffle_i32x4(ab_lo, cd_lo, 0x88);
    r[4 + c] = _mm512_shuffle_i32x4(ab_lo, cd_lo, 0xDD);
    r[8 + c] = _mm512_shuffle_i32x4(ab_hi, cd_hi, 0x88);
    r[12 + c] = _mm512_shuffle_i32x4(ab_hi, cd_hi, 0xDD);
  }
}

// panel[(g·vecs + v)·64 + 4·j + b] = w[(16v + j)·k + 4g + b]: for each group
// of 4 columns, the vecs × 16 rows' 4 bytes side by side.
void pack_panel(const uint8_t* w, int k, int vecs, uint8_t* panel) {
  const int groups = k / 4;
  for (int v = 0; v < vecs; ++v) {
    const uint8_t* rows = w + size_t(16 * v) * size_t(k);
    for (int g0 = 0; g0 < groups; g0 += 16) {
      const int n = groups - g0 < 16 ? groups - g0 : 16;
      const __mmask16 mask = __mmask16((1u << n) - 1u);
      __m512i r[16];
      for (int j = 0; j < 16; ++j) r[j] = _mm512_maskz_loadu_epi32(mask, rows + size_t(j) * size_t(k) + 4 * size_t(g0));
      transpose16x16(r);
      for (int g = 0; g < n; ++g) _mm512_store_si512(panel + (size_t(g0 + g) * vecs + v) * 64, r[g]);
    }
  }
}

// Q4 panels (quant.h) → the repacked panel, widened to int8 on each row's
// own grid (gemm_int8.h): line (g·vecs + v) of the repacked panel, columns
// 4g…4g+3 of rows 16v…16v+15, is exactly the low (g even) or high (g odd)
// nibbles of line g/2 of Q4 panel v, so no transpose is needed: per 16-byte
// quarter (4 rows × 4 columns) the nibbles are widened to fp32, scaled by
// their row's d/s and rounded. Row scales s go to ws (16·vecs floats).
// 16-byte quarter t of v (an immediate each: unoptimised builds do not
// unroll the caller's loop into constants).
inline __m128i quarter(__m512i v, int t) {
  switch (t) {
    case 0: return _mm512_castsi512_si128(v);
    case 1: return _mm512_extracti32x4_epi32(v, 1);
    case 2: return _mm512_extracti32x4_epi32(v, 2);
    default: return _mm512_extracti32x4_epi32(v, 3);
  }
}

void widen_q4_panel(const Int8GemmArgs& a, int vecs, uint8_t* panel, float* ws) {
  const int k = a.k, lines = k / 8, group = a.q4_group, ng = k / group, lpg = group / 8;
  const __m512i low4 = _mm512_set1_epi8(0x0f), eight = _mm512_set1_epi32(8), offset = _mm512_set1_epi32(128);
  for (int v = 0; v < vecs; ++v) {
    const uint8_t* src = a.w_q4 + size_t(v) * size_t(lines) * 64;
    const uint16_t* sc = a.w_q4_scales + size_t(v) * size_t(ng) * 16;
    __m512 dmax = _mm512_setzero_ps();
    for (int g = 0; g < ng; ++g)
      dmax = _mm512_max_ps(
          dmax,
          _mm512_abs_ps(_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sc + size_t(g) * 16)))));
    const __m512 s = _mm512_mul_ps(dmax, _mm512_set1_ps(8.0f / 127.0f));
    _mm512_storeu_ps(ws + 16 * v, s);
    const __mmask16 live = _mm512_cmp_ps_mask(s, _mm512_setzero_ps(), _CMP_GT_OQ);
    for (int g = 0; g < ng; ++g) {
      const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sc + size_t(g) * 16)));
      const __m512 f = _mm512_maskz_div_ps(live, d, s);
      __m512 fq[4];  // quarter t: lane i is row 4t + i/4
      for (int t = 0; t < 4; ++t) {
        const __m512i idx = _mm512_add_epi32(
            _mm512_set1_epi32(4 * t),
            _mm512_srli_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0), 2));
        fq[t] = _mm512_permutexvar_ps(idx, f);
      }
      for (int b = g * lpg; b < (g + 1) * lpg; ++b) {
        const __m512i raw = _mm512_loadu_si512(src + size_t(b) * 64);
        for (int nib = 0; nib < 2; ++nib) {
          const __m512i q = nib == 0 ? _mm512_and_si512(raw, low4) : _mm512_and_si512(_mm512_srli_epi16(raw, 4), low4);
          uint8_t* out = panel + (size_t(2 * b + nib) * size_t(vecs) + size_t(v)) * 64;
          for (int t = 0; t < 4; ++t) {
            const __m512i qi = _mm512_sub_epi32(_mm512_cvtepu8_epi32(quarter(q, t)), eight);
            const __m512i r = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_cvtepi32_ps(qi), fq[t]));
            _mm_store_si128(reinterpret_cast<__m128i*>(out + 16 * t),
                            _mm512_cvtepi32_epi8(_mm512_add_epi32(r, offset)));
          }
        }
      }
    }
  }
}

// GELU as ops.cpp's gelu_body (the constants of fast_math.h, the same
// operations in the same order), on 16 lanes.
inline __m512 gelu16(__m512 v) {
  using namespace fast_math;
  const __m512 v3 = _mm512_mul_ps(_mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(kGeluCubic), v), v), v);
  const __m512 u = _mm512_mul_ps(_mm512_set1_ps(kGeluScale), _mm512_add_ps(v, v3));
  const __m512 e = exp16(_mm512_mul_ps(_mm512_set1_ps(-2.0f), u));
  return _mm512_div_ps(v, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
}

struct Epilogue {
  const float* xs;      // per row of X
  const int32_t* xsum;  // per row of X: Σ x (removes the +128 of the weights)
  const float* ws;      // per output, this panel
  const float* bias;    // per output, this panel, or null
  bool gelu;
};

// acc += Σ4 w_u8 · a_s8 per dword lane. As inline asm: GCC 12 compiles the
// intrinsic's non-destructive form into a copy per product and keeps the
// accumulators on the stack.
__attribute__((always_inline)) inline void dpbusd(__m512i& acc, __m512i w, __m512i a) {
  __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(w), "v"(a));
}

// Rows [0, M) of X (row stride k) against one packed panel of V vectors;
// y[i·ldy + j] for j < 16·V.
template <int M, int V>
void tile(const int8_t* x, int k, const uint8_t* panel, const Epilogue& ep, float* y, size_t ldy) {
  __m512i acc[M][V];
#pragma GCC unroll 6
  for (int i = 0; i < M; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) acc[i][v] = _mm512_setzero_si512();
  const int groups = k / 4;
  for (int g = 0; g < groups; ++g) {
    __m512i b[V];
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) b[v] = _mm512_load_si512(panel + (size_t(g) * V + v) * 64);
#pragma GCC unroll 6
    for (int i = 0; i < M; ++i) {
      int32_t a4;
      __builtin_memcpy(&a4, x + size_t(i) * size_t(k) + 4 * size_t(g), 4);
      const __m512i a = _mm512_set1_epi32(a4);
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) dpbusd(acc[i][v], b[v], a);
    }
  }
#pragma GCC unroll 6
  for (int i = 0; i < M; ++i) {
    const __m512i corr = _mm512_set1_epi32(128 * ep.xsum[i]);
    const __m512 sx = _mm512_set1_ps(ep.xs[i]);
    float* yi = y + size_t(i) * ldy;
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) {
      // y = c · (ws · sx) + bias, as ops.cpp's dequant_row.
      const __m512 c = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[i][v], corr));
      __m512 out = _mm512_mul_ps(c, _mm512_mul_ps(_mm512_loadu_ps(ep.ws + 16 * v), sx));
      if (ep.bias) out = _mm512_add_ps(out, _mm512_loadu_ps(ep.bias + 16 * v));
      if (ep.gelu) out = gelu16(out);
      _mm512_storeu_ps(yi + 16 * v, out);
    }
  }
}

// tile<rows, V> for rows = 1 .. M.
template <int M, int V>
void tail_tile(int rows, const int8_t* x, int k, const uint8_t* panel, const Epilogue& ep, float* y, size_t ldy) {
  if constexpr (M >= 1) {
    if (rows == M) return tile<M, V>(x, k, panel, ep, y, ldy);
    tail_tile<M - 1, V>(rows, x, k, panel, ep, y, ldy);
  }
}

// All rows of X against one panel; between row tiles, a share of the
// prefetch range (spread evenly so it never competes with the tiles' own
// loads in a burst).
template <int V>
void row_tiles(const int8_t* x, int m, int k, const uint8_t* panel, Epilogue ep, float* y, size_t ldy,
               const uint8_t* prefetch, size_t prefetch_lines) {
  const size_t tiles = size_t(m + kTileM - 1) / kTileM;
  size_t line = 0, t = 0;
  int i = 0;
  for (; i + kTileM <= m; i += kTileM) {
    for (const size_t end = prefetch_lines * ++t / tiles; line < end; ++line)
      _mm_prefetch(reinterpret_cast<const char*>(prefetch + 64 * line), _MM_HINT_T1);
    tile<kTileM, V>(x + size_t(i) * size_t(k), k, panel, ep, y + size_t(i) * ldy, ldy);
    ep.xs += kTileM;
    ep.xsum += kTileM;
  }
  for (; line < prefetch_lines; ++line) _mm_prefetch(reinterpret_cast<const char*>(prefetch + 64 * line), _MM_HINT_T1);
  if (i < m) tail_tile<kTileM - 1, V>(m - i, x + size_t(i) * size_t(k), k, panel, ep, y + size_t(i) * ldy, ldy);
}

}  // namespace

void int8_gemm_avx512(const Int8GemmArgs& a, uint8_t* panel) {
  const int panel_cols = 16 * kPanelVecs;
  const int panels = (a.n + panel_cols - 1) / panel_cols;
  for (int p = 0; p < panels; ++p) {
    const int j0 = p * panel_cols;
    const int vecs = (a.n - j0) / 16 < kPanelVecs ? (a.n - j0) / 16 : kPanelVecs;
    alignas(64) float q4_ws[kInt8GemmPanel];
    const float* ws = q4_ws;
    if (a.w_q4) {  // (one panel per call, gemm_int8.h)
      widen_q4_panel(a, vecs, panel, q4_ws);
    } else {
      ws = a.ws + j0;
      pack_panel(a.w + size_t(j0) * size_t(a.k), a.k, vecs, panel);
    }
    // While this panel computes: the next one's rows, or the caller's range.
    const uint8_t* pf = a.prefetch;
    size_t pf_bytes = a.prefetch_bytes;
    if (p + 1 < panels && !a.w_q4) {
      const int j1 = j0 + panel_cols;
      pf = a.w + size_t(j1) * size_t(a.k);
      pf_bytes = size_t(a.n - j1 < panel_cols ? a.n - j1 : panel_cols) * size_t(a.k);
    }
    const size_t pf_lines = pf ? (pf_bytes + 63) / 64 : 0;
    const Epilogue ep{a.xs, a.xsum, ws, a.bias ? a.bias + j0 : nullptr, a.gelu};
    float* y = a.y + j0;
    if (vecs == 4)
      row_tiles<4>(a.x, a.m, a.k, panel, ep, y, a.ldy, pf, pf_lines);
    else if (vecs == 3)
      row_tiles<3>(a.x, a.m, a.k, panel, ep, y, a.ldy, pf, pf_lines);
    else if (vecs == 2)
      row_tiles<2>(a.x, a.m, a.k, panel, ep, y, a.ldy, pf, pf_lines);
    else
      row_tiles<1>(a.x, a.m, a.k, panel, ep, y, a.ldy, pf, pf_lines);
  }
}

}  // namespace md::gemv_detail

#include "tensor/x86/simd_target_end.h"
