// AVX2 + FMA + F16C GEMV kernels (CPUs without AVX-512 VNNI). Compiled for
// that target only inside this file; reached through gemv.cpp's dispatch. No
// standard-library templates are instantiated under the target pragma.
//
// Q8: one weight row at a time (a single sequential stream per thread), up
// to 2 input rows per pass sharing each weight load.
// fp kernels: Highway's AVX2 target (hwy/gemv_fp.cpp).
// Q8: per 32 columns (one group or part of one) the signed int8 dot via the
// sign trick: maddubs(|x|, sign(w, x)) — |x|, |w| ≤ 127, so the int16 pair
// sums cannot saturate — then madd(·, 1) to int32.
// Q4: maddubs(q, x) with the unsigned nibbles q ≤ 15 directly, 16 rows of a
// panel at a time (q4_panel), plus the zero-point correction -8·Σx per group.

#include "tensor/x86/simd_intrinsics.h"

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "tensor/dtype.h"
#include "tensor/gemv_impl.h"

#include "tensor/x86/simd_target_avx2_begin.h"

namespace md::gemv_detail {
namespace {

inline float hsum(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)));
}

// ---------------------------------------------------------------------------
// Q8: one weight row × input rows [0, M), two accumulators per input row
// (alternating 32-column chunks).

template <int M>
inline void q8_row(const WeightMatrix& w, const XQuant* x, float* y, size_t ldy, int r) {
  const int cols = w.cols, G = w.group, ng = cols / G;
  const uint8_t* wr = static_cast<const uint8_t*>(w.data) + size_t(r) * size_t(cols);
  const uint16_t* sr = static_cast<const uint16_t*>(w.aux) + size_t(r) * size_t(ng);
  const __m256i ones = _mm256_set1_epi16(1), flip = _mm256_set1_epi8(char(0x80));
  __m256 acc[M][2];
#pragma GCC unroll 16
  for (int m = 0; m < M; ++m) acc[m][0] = acc[m][1] = _mm256_setzero_ps();
  auto chunk = [&](int c, int a) {
    const __m256i wv = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wr + size_t(c))), flip);
    const float sw = _cvtsh_ss(sr[c / G]);
#pragma GCC unroll 16
    for (int m = 0; m < M; ++m) {
      const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[m].q + c));
      const __m256i p = _mm256_maddubs_epi16(_mm256_abs_epi8(xv), _mm256_sign_epi8(wv, xv));
      const __m256 f = _mm256_cvtepi32_ps(_mm256_madd_epi16(p, ones));
      acc[m][a] = _mm256_fmadd_ps(f, _mm256_set1_ps(sw * x[m].s[c / G]), acc[m][a]);
    }
  };
  int c = 0;
  for (; c + 64 <= cols; c += 64) {
    chunk(c, 0);
    chunk(c + 32, 1);
  }
  if (c < cols) chunk(c, 0);
#pragma GCC unroll 16
  for (int m = 0; m < M; ++m) y[size_t(m) * ldy] = hsum(_mm256_add_ps(acc[m][0], acc[m][1]));
}

// Q8 with one scale per row: the scales are constant along the row, so the
// int32 pair sums accumulate over the whole row (exact) and convert once.
template <int M>
inline void q8_row_scale_row(const WeightMatrix& w, const XQuant* x, float* y, size_t ldy, int r) {
  const int cols = w.cols;
  const uint8_t* wr = static_cast<const uint8_t*>(w.data) + size_t(r) * size_t(cols);
  const __m256i ones = _mm256_set1_epi16(1), flip = _mm256_set1_epi8(char(0x80));
  __m256i acc[M][2];
#pragma GCC unroll 16
  for (int m = 0; m < M; ++m) acc[m][0] = acc[m][1] = _mm256_setzero_si256();
  auto chunk = [&](int c, int a) {
    const __m256i wv = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wr + size_t(c))), flip);
#pragma GCC unroll 16
    for (int m = 0; m < M; ++m) {
      const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[m].q + c));
      const __m256i p = _mm256_maddubs_epi16(_mm256_abs_epi8(xv), _mm256_sign_epi8(wv, xv));
      acc[m][a] = _mm256_add_epi32(acc[m][a], _mm256_madd_epi16(p, ones));
    }
  };
  int c = 0;
  for (; c + 64 <= cols; c += 64) {
    chunk(c, 0);
    chunk(c + 32, 1);
  }
  if (c < cols) chunk(c, 0);
  const float dw = _cvtsh_ss(static_cast<const uint16_t*>(w.aux)[r]);
#pragma GCC unroll 16
  for (int m = 0; m < M; ++m) {
    const __m256i t = _mm256_add_epi32(acc[m][0], acc[m][1]);
    __m128i h = _mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
    h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0x4e));
    h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0xb1));
    y[size_t(m) * ldy] = float(_mm_cvtsi128_si32(h)) * (dw * x[m].s[0]);
  }
}

// Q4 in 16-row panels (quant.h): a 64-byte line is rows 0–7 (first 32
// bytes) and rows 8–15 (last 32), a row's 4 bytes in one 32-bit lane.
// maddubs of the nibbles (unsigned, ≤ 15) with 4 activations broadcast gives
// two int16 per row; the low- and high-nibble products and up to 4 lines add
// in int16 (≤ 16·15·127 = 30480 < 2^15), then madd(·, 1) to int32. Per group
// one conversion and one multiply-add with the rows' scales × x's scale.
inline void q4_panel(const WeightMatrix& w, const XQuant& x, int panel, float* out) {
  const int cols = w.cols, group = w.group, ng = cols / group, lines = cols / 8, lpg = group / 8;
  const uint8_t* base = static_cast<const uint8_t*>(w.data) + size_t(panel) * size_t(lines) * 64;
  const uint16_t* sc = static_cast<const uint16_t*>(w.aux) + size_t(panel) * size_t(ng) * 16;
  const __m256i ones = _mm256_set1_epi16(1), low4 = _mm256_set1_epi8(0x0f);
  __m256 acc[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
  for (int g = 0; g < ng; ++g) {
    const __m256i z = _mm256_set1_epi32(q4_group_correction(x, g, group));
    __m256i sum[2] = {z, z};
    const uint8_t* line = base + size_t(g) * size_t(lpg) * 64;
    const int8_t* xg = x.q + size_t(g) * size_t(group);
    for (int b0 = 0; b0 < lpg; b0 += 4) {
      __m256i s16[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
      const int b1 = b0 + 4 < lpg ? b0 + 4 : lpg;
      for (int b = b0; b < b1; ++b, line += 64, xg += 8) {
        int32_t x4[2];
        std::memcpy(x4, xg, 8);
        const __m256i xl = _mm256_set1_epi32(x4[0]), xh = _mm256_set1_epi32(x4[1]);
        for (int h = 0; h < 2; ++h) {
          const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(line + 32 * h));
          const __m256i pl = _mm256_maddubs_epi16(_mm256_and_si256(raw, low4), xl);
          const __m256i ph = _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(raw, 4), low4), xh);
          s16[h] = _mm256_add_epi16(s16[h], _mm256_add_epi16(pl, ph));
        }
      }
      for (int h = 0; h < 2; ++h) sum[h] = _mm256_add_epi32(sum[h], _mm256_madd_epi16(s16[h], ones));
    }
    const __m256 sx = _mm256_set1_ps(x.s[g]);
    for (int h = 0; h < 2; ++h) {
      const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sc + size_t(g) * 16 + 8 * h)));
      acc[h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum[h]), _mm256_mul_ps(d, sx), acc[h]);
    }
  }
  _mm256_storeu_ps(out, acc[0]);
  _mm256_storeu_ps(out + 8, acc[1]);
}

void q4_avx2(const WeightMatrix& w, const XQuant* x, int m, float* Y, int ldy, int r0, int r1) {
  for (int p = r0 / 16; p < (r1 + 15) / 16; ++p) {
    const int first = 16 * p, lo = r0 > first ? r0 : first, hi = r1 < first + 16 ? r1 : first + 16;
    for (int i = 0; i < m; ++i) {
      alignas(32) float v[16];
      q4_panel(w, x[i], p, v);
      for (int r = lo; r < hi; ++r) Y[size_t(i) * size_t(ldy) + size_t(r)] = v[r - first];
    }
  }
}

void q8_avx2(const WeightMatrix& w, const XQuant* x, int m, float* Y, int ldy, int r0, int r1) {
  if (w.group == w.cols && w.cols % 32 == 0) {
    for (int r = r0; r < r1; ++r)
      for (int mb = 0; mb < m; mb += 2) {
        float* y = Y + size_t(mb) * size_t(ldy) + size_t(r);
        if (m - mb >= 2)
          q8_row_scale_row<2>(w, x + mb, y, size_t(ldy), r);
        else
          q8_row_scale_row<1>(w, x + mb, y, size_t(ldy), r);
      }
    return;
  }
  for (int r = r0; r < r1; ++r)
    for (int mb = 0; mb < m; mb += 2) {
      float* y = Y + size_t(mb) * size_t(ldy) + size_t(r);
      if (m - mb >= 2)
        q8_row<2>(w, x + mb, y, size_t(ldy), r);
      else
        q8_row<1>(w, x + mb, y, size_t(ldy), r);
    }
}

// ---------------------------------------------------------------------------
// Activation quantisation, bit-identical to prep_row_scalar.

void prep_row_avx2(const float* x, int cols, int group, int zero, int8_t* q, float* s, int32_t* hc) {
  const int ng = cols / group;
  const __m256 sign = _mm256_set1_ps(-0.0f);
  const __m256i lo = _mm256_set1_epi32(-127), hi = _mm256_set1_epi32(127);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (int g = 0; g < ng; ++g) {
    const float* xg = x + size_t(g) * size_t(group);
    __m256 mx = _mm256_setzero_ps();
    for (int c = 0; c < group; c += 8) mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, _mm256_loadu_ps(xg + c)));
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    const float amax = _mm_cvtss_f32(m4);
    const __m256 id = _mm256_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
    s[g] = amax / 127.0f;
    for (int c = 0; c < group; c += 32) {
      __m256i v[4];
      for (int k = 0; k < 4; ++k)
        v[k] = _mm256_min_epi32(
            _mm256_max_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xg + c + 8 * k), id)), lo), hi);
      const __m256i p16 = _mm256_packs_epi16(_mm256_packs_epi32(v[0], v[1]), _mm256_packs_epi32(v[2], v[3]));
      const size_t col = size_t(g) * size_t(group) + size_t(c);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + col), _mm256_permutevar8x32_epi32(p16, order));
      const __m256i t = _mm256_add_epi32(_mm256_add_epi32(v[0], v[1]), _mm256_add_epi32(v[2], v[3]));
      __m128i u = _mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
      u = _mm_add_epi32(u, _mm_shuffle_epi32(u, 0x4e));
      u = _mm_add_epi32(u, _mm_shuffle_epi32(u, 0xb1));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(hc + col / 4),
                          _mm256_setr_epi32(-zero * _mm_cvtsi128_si32(u), 0, 0, 0, 0, 0, 0, 0));
    }
  }
}

}  // namespace

const Kernels kAvx2 = {"avx2",           N_AVX2::fp_rows, q8_avx2, q4_avx2,
                       quant_row_scalar, prep_row_avx2,   nullptr, N_AVX2::bf16_pair_cols};

}  // namespace md::gemv_detail

#include "tensor/x86/simd_target_end.h"
