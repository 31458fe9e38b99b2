// AArch64 Advanced SIMD GEMV kernels: two tables, "neon" (every aarch64 CPU)
// and "dotprod" (+ SDOT, Armv8.2 dotprod). Only the SDOT functions are
// compiled for the dotprod target (MD_TARGET_DOTPROD), so the file builds for
// plain armv8-a and the "neon" table never executes SDOT. No
// standard-library templates are instantiated in those functions. Reached
// through gemv.cpp's dispatch.
//
// fp kernels: Highway's NEON target (hwy/gemv_fp.cpp), in every table.
// Q8: one weight row × up to 2 input rows, per group an exact int32 dot
//   (weights made signed by flipping the top bit: byte − 128), converted
//   once per group and scaled by d_w·s_x into fp32 accumulators.
//   neon:    vmull_s8 + vmlal_s8 to int16 (two products, |w| ≤ 128,
//            |x| ≤ 127: ≤ 32512, no overflow), vpadalq_s16 to int32.
//   dotprod: vdotq_s32 straight to int32.
// Q4: 16-row panels (quant.h); a 16-byte quarter of a 64-byte line is 4 rows
//   × 4 columns twice over (low / high nibbles), a row per 32-bit lane.
//   dotprod: SDOT by element (vdotq_laneq_s32) of the nibbles with the 4
//            activations of one lane gives each row's 4-column sum in its
//            lane directly; 2 input rows share each nibble decode.
//   neon:    vmull_s8 of the nibbles with the 4 activations repeated, low
//            and high nibbles summed and pairs folded in int16, 4 lines
//            (32 columns) accumulated in int16 (≤ 16·15·127 = 30480),
//            then vpadalq_s16 to one int32 lane per row.
//   The nibbles q ∈ [0, 15] are used as they are; the zero point is the
//   correction −8·Σx per group (XQuant::hc) the int32 sums start from.
// prep_row: bit-identical to prep_row_scalar's definition (IEEE multiply,
//   FCVTNS rounds to nearest even like the scalar's magic-number trick,
//   clamp to ±127).

#if defined(__aarch64__)

#include <arm_neon.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "tensor/arm/neon_common.h"
#include "tensor/gemv_impl.h"

namespace md::gemv_detail {
namespace {

using neon::sdot;
using neon::sdot_lane;

inline float f16_scalar(uint16_t h) { return vgetq_lane_f32(vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(h))), 0); }

// ---------------------------------------------------------------------------
// Q8: one weight row × input rows [0, M). Groups are 32, 64 or multiples of
// 128 columns (gemv.cpp's check), so every group is whole 32-column steps.

inline int8x16_t q8_signed(const uint8_t* p) { return vreinterpretq_s8_u8(veorq_u8(vld1q_u8(p), vdupq_n_u8(0x80))); }

template <int M>
inline void q8_row_neon(const WeightMatrix& w, const XQuant* x, float* y, size_t ldy, int r) {
  const int cols = w.cols, G = w.group, ng = cols / G;
  const uint8_t* wr = static_cast<const uint8_t*>(w.data) + size_t(r) * size_t(cols);
  const uint16_t* sr = static_cast<const uint16_t*>(w.aux) + size_t(r) * size_t(ng);
  float32x4_t acc[M];
#pragma GCC unroll 16
  for (int m = 0; m < M; ++m) acc[m] = vdupq_n_f32(0.0f);
  for (int g = 0; g < ng; ++g) {
    int32x4_t s[M][2];
#pragma GCC unroll 16
    for (int m = 0; m < M; ++m) s[m][0] = s[m][1] = vdupq_n_s32(0);
    for (int c = g * G; c < (g + 1) * G; c += 32) {
      const int8x16_t w0 = q8_signed(wr + c), w1 = q8_signed(wr + c + 16);
#pragma GCC unroll 16
      for (int m = 0; m < M; ++m) {
        const int8x16_t x0 = vld1q_s8(x[m].q + c), x1 = vld1q_s8(x[m].q + c + 16);
        s[m][0] = vpadalq_s16(s[m][0], vmlal_high_s8(vmull_s8(vget_low_s8(w0), vget_low_s8(x0)), w0, x0));
        s[m][1] = vpadalq_s16(s[m][1], vmlal_high_s8(vmull_s8(vget_low_s8(w1), vget_low_s8(x1)), w1, x1));
      }
    }
    const float dw = f16_scalar(sr[g]);
#pragma GCC unroll 16
    for (int m = 0; m < M; ++m)
      acc[m] = vfmaq_n_f32(acc[m], vcvtq_f32_s32(vaddq_s32(s[m][0], s[m][1])), dw * x[m].s[g]);
  }
#pragma GCC unroll 16
  for (int m = 0; m < M; ++m) y[size_t(m) * ldy] = vaddvq_f32(acc[m]);
}

template <int M>
MD_TARGET_DOTPROD inline void q8_row_sdot(const WeightMatrix& w, const XQuant* x, float* y, size_t ldy, int r) {
  const int cols = w.cols, G = w.group, ng = cols / G;
  const uint8_t* wr = static_cast<const uint8_t*>(w.data) + size_t(r) * size_t(cols);
  const uint16_t* sr = static_cast<const uint16_t*>(w.aux) + size_t(r) * size_t(ng);
  float32x4_t acc[M];
#pragma GCC unroll 16
  for (int m = 0; m < M; ++m) acc[m] = vdupq_n_f32(0.0f);
  for (int g = 0; g < ng; ++g) {
    int32x4_t s[M][2];
#pragma GCC unroll 16
    for (int m = 0; m < M; ++m) s[m][0] = s[m][1] = vdupq_n_s32(0);
    for (int c = g * G; c < (g + 1) * G; c += 32) {
      const int8x16_t w0 = q8_signed(wr + c), w1 = q8_signed(wr + c + 16);
#pragma GCC unroll 16
      for (int m = 0; m < M; ++m) {
        s[m][0] = sdot(s[m][0], w0, vld1q_s8(x[m].q + c));
        s[m][1] = sdot(s[m][1], w1, vld1q_s8(x[m].q + c + 16));
      }
    }
    const float dw = f16_scalar(sr[g]);
#pragma GCC unroll 16
    for (int m = 0; m < M; ++m)
      acc[m] = vfmaq_n_f32(acc[m], vcvtq_f32_s32(vaddq_s32(s[m][0], s[m][1])), dw * x[m].s[g]);
  }
#pragma GCC unroll 16
  for (int m = 0; m < M; ++m) y[size_t(m) * ldy] = vaddvq_f32(acc[m]);
}

void q8_neon(const WeightMatrix& w, const XQuant* x, int m, float* Y, int ldy, int r0, int r1) {
  for (int r = r0; r < r1; ++r)
    for (int mb = 0; mb < m; mb += 2) {
      float* y = Y + size_t(mb) * size_t(ldy) + size_t(r);
      if (m - mb >= 2)
        q8_row_neon<2>(w, x + mb, y, size_t(ldy), r);
      else
        q8_row_neon<1>(w, x + mb, y, size_t(ldy), r);
    }
}

MD_TARGET_DOTPROD void q8_dotprod(const WeightMatrix& w, const XQuant* x, int m, float* Y, int ldy, int r0, int r1) {
  for (int r = r0; r < r1; ++r)
    for (int mb = 0; mb < m; mb += 2) {
      float* y = Y + size_t(mb) * size_t(ldy) + size_t(r);
      if (m - mb >= 2)
        q8_row_sdot<2>(w, x + mb, y, size_t(ldy), r);
      else
        q8_row_sdot<1>(w, x + mb, y, size_t(ldy), r);
    }
}

// ---------------------------------------------------------------------------
// Q4: one 16-row panel × input rows [0, M) → out[m·16 + row]. acc[k] holds
// rows 4k…4k+3 (the k-th 16 bytes of each line).

// Per group: Σ over the group's columns as int32 per row (from the zero-point
// correction), times the rows' scales d and x's scale, into fp32.
template <int M>
inline void q4_scale_group(const uint16_t* d16, const XQuant* x, int g, const int32x4_t (&sum)[M][4],
                           float32x4_t (&acc)[M][4]) {
#pragma GCC unroll 4
  for (int k = 0; k < 4; ++k) {
    const float32x4_t d = vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(d16 + 4 * k)));
#pragma GCC unroll 16
    for (int m = 0; m < M; ++m) acc[m][k] = vfmaq_f32(acc[m][k], vcvtq_f32_s32(sum[m][k]), vmulq_n_f32(d, x[m].s[g]));
  }
}

template <int M>
inline void q4_store(const float32x4_t (&acc)[M][4], float* out) {
#pragma GCC unroll 16
  for (int m = 0; m < M; ++m)
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k) vst1q_f32(out + 16 * m + 4 * k, acc[m][k]);
}

template <int M>
MD_TARGET_DOTPROD inline void q4_panel_sdot(const WeightMatrix& w, const XQuant* x, int panel, float* out) {
  const int cols = w.cols, group = w.group, ng = cols / group, lines = cols / 8, lpg = group / 8;
  const uint8_t* base = static_cast<const uint8_t*>(w.data) + size_t(panel) * size_t(lines) * 64;
  const uint16_t* sc = static_cast<const uint16_t*>(w.aux) + size_t(panel) * size_t(ng) * 16;
  const uint8x16_t low4 = vdupq_n_u8(0x0f);
  float32x4_t acc[M][4];
#pragma GCC unroll 16
  for (int m = 0; m < M; ++m)
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k) acc[m][k] = vdupq_n_f32(0.0f);
  for (int g = 0; g < ng; ++g) {
    int32x4_t sum[M][4];
#pragma GCC unroll 16
    for (int m = 0; m < M; ++m) {
      const int32x4_t z = vdupq_n_s32(q4_group_correction(x[m], g, group));
#pragma GCC unroll 4
      for (int k = 0; k < 4; ++k) sum[m][k] = z;
    }
    const uint8_t* line = base + size_t(g) * size_t(lpg) * 64;
    // Two lines per step: 16 activations, lanes 0/1 the first line's low /
    // high nibbles' columns, 2/3 the second's (lpg is a multiple of 4).
    for (int b = 0; b < lpg; b += 2, line += 128) {
      int8x16_t xv[M];
#pragma GCC unroll 16
      for (int m = 0; m < M; ++m) xv[m] = vld1q_s8(x[m].q + size_t(g) * size_t(group) + size_t(8 * b));
#pragma GCC unroll 4
      for (int k = 0; k < 4; ++k) {
        const uint8x16_t r0 = vld1q_u8(line + 16 * k), r1 = vld1q_u8(line + 64 + 16 * k);
        const int8x16_t l0 = vreinterpretq_s8_u8(vandq_u8(r0, low4)), h0 = vreinterpretq_s8_u8(vshrq_n_u8(r0, 4));
        const int8x16_t l1 = vreinterpretq_s8_u8(vandq_u8(r1, low4)), h1 = vreinterpretq_s8_u8(vshrq_n_u8(r1, 4));
#pragma GCC unroll 16
        for (int m = 0; m < M; ++m) {
          sum[m][k] = sdot_lane<0>(sum[m][k], l0, xv[m]);
          sum[m][k] = sdot_lane<1>(sum[m][k], h0, xv[m]);
          sum[m][k] = sdot_lane<2>(sum[m][k], l1, xv[m]);
          sum[m][k] = sdot_lane<3>(sum[m][k], h1, xv[m]);
        }
      }
    }
    q4_scale_group<M>(sc + size_t(g) * 16, x, g, sum, acc);
  }
  q4_store<M>(acc, out);
}

inline void q4_panel_neon(const WeightMatrix& w, const XQuant& x, int panel, float* out) {
  const int cols = w.cols, group = w.group, ng = cols / group, lines = cols / 8, lpg = group / 8;
  const uint8_t* base = static_cast<const uint8_t*>(w.data) + size_t(panel) * size_t(lines) * 64;
  const uint16_t* sc = static_cast<const uint16_t*>(w.aux) + size_t(panel) * size_t(ng) * 16;
  const uint8x16_t low4 = vdupq_n_u8(0x0f);
  float32x4_t acc[1][4];
#pragma GCC unroll 4
  for (int k = 0; k < 4; ++k) acc[0][k] = vdupq_n_f32(0.0f);
  for (int g = 0; g < ng; ++g) {
    int32x4_t sum[1][4];
    const int32x4_t z = vdupq_n_s32(q4_group_correction(x, g, group));
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k) sum[0][k] = z;
    const uint8_t* line = base + size_t(g) * size_t(lpg) * 64;
    const int8_t* xg = x.q + size_t(g) * size_t(group);
    // 4 lines (32 columns) per int16 block: per lane 8 products ≤ 15·127
    // from the lines, pairs folded once more: ≤ 30480.
    for (int b0 = 0; b0 < lpg; b0 += 4) {
      int16x8_t s16[4];
#pragma GCC unroll 4
      for (int k = 0; k < 4; ++k) s16[k] = vdupq_n_s16(0);
#pragma GCC unroll 4
      for (int b = 0; b < 4; ++b, line += 64, xg += 8) {
        uint32_t x4[2];
        std::memcpy(x4, xg, 8);
        // The 4 activations of the low / high nibbles, in both halves.
        const int8x16_t xl = vreinterpretq_s8_u32(vdupq_n_u32(x4[0]));
        const int8x16_t xh = vreinterpretq_s8_u32(vdupq_n_u32(x4[1]));
#pragma GCC unroll 4
        for (int k = 0; k < 4; ++k) {
          const uint8x16_t raw = vld1q_u8(line + 16 * k);
          const int8x16_t lo = vreinterpretq_s8_u8(vandq_u8(raw, low4)), hi = vreinterpretq_s8_u8(vshrq_n_u8(raw, 4));
          // Rows 4k, 4k+1 (a) and 4k+2, 4k+3 (b): per row its 4 column sums
          // of low + high products (≤ 2·1905).
          const int16x8_t a = vmlal_s8(vmull_s8(vget_low_s8(lo), vget_low_s8(xl)), vget_low_s8(hi), vget_low_s8(xh));
          const int16x8_t bb = vmlal_high_s8(vmull_high_s8(lo, xl), hi, xh);
          // Pairs folded: per row 2 lanes, the 4 rows in order.
          s16[k] = vaddq_s16(s16[k], vpaddq_s16(a, bb));
        }
      }
      // Each row's 2 lanes summed into its int32 lane.
#pragma GCC unroll 4
      for (int k = 0; k < 4; ++k) sum[0][k] = vaddq_s32(sum[0][k], vpaddlq_s16(s16[k]));
    }
    q4_scale_group<1>(sc + size_t(g) * 16, &x, g, sum, acc);
  }
  q4_store<1>(acc, out);
}

void q4_neon(const WeightMatrix& w, const XQuant* x, int m, float* Y, int ldy, int r0, int r1) {
  for (int p = r0 / 16; p < (r1 + 15) / 16; ++p) {
    const int first = 16 * p, lo = r0 > first ? r0 : first, hi = r1 < first + 16 ? r1 : first + 16;
    for (int i = 0; i < m; ++i) {
      alignas(16) float v[16];
      q4_panel_neon(w, x[i], p, v);
      for (int r = lo; r < hi; ++r) Y[size_t(i) * size_t(ldy) + size_t(r)] = v[r - first];
    }
  }
}

MD_TARGET_DOTPROD void q4_dotprod(const WeightMatrix& w, const XQuant* x, int m, float* Y, int ldy, int r0, int r1) {
  for (int p = r0 / 16; p < (r1 + 15) / 16; ++p) {
    const int first = 16 * p, lo = r0 > first ? r0 : first, hi = r1 < first + 16 ? r1 : first + 16;
    for (int mb = 0; mb < m; mb += 2) {
      const int mm = m - mb >= 2 ? 2 : 1;
      alignas(16) float v[32];
      if (mm == 2)
        q4_panel_sdot<2>(w, x + mb, p, v);
      else
        q4_panel_sdot<1>(w, x + mb, p, v);
      for (int i = 0; i < mm; ++i)
        for (int r = lo; r < hi; ++r) Y[size_t(mb + i) * size_t(ldy) + size_t(r)] = v[16 * i + r - first];
    }
  }
}

// ---------------------------------------------------------------------------
// Activation quantisation, bit-identical to prep_row_scalar.

void prep_row_neon(const float* x, int cols, int group, int zero, int8_t* q, float* s, int32_t* hc) {
  const int ng = cols / group;
  const int32x4_t lo = vdupq_n_s32(-127), hi = vdupq_n_s32(127);
  for (int g = 0; g < ng; ++g) {
    const float* xg = x + size_t(g) * size_t(group);
    int8_t* qg = q + size_t(g) * size_t(group);
    // vmaxnm skips a NaN like the scalar's `a > amax` does.
    float32x4_t mx = vdupq_n_f32(0.0f);
    int c = 0;
    for (; c + 4 <= group; c += 4) mx = vmaxnmq_f32(mx, vabsq_f32(vld1q_f32(xg + c)));
    float amax = vmaxnmvq_f32(mx);
    for (; c < group; ++c) {
      const float a = __builtin_fabsf(xg[c]);
      amax = a > amax ? a : amax;
    }
    const float id = amax > 0.0f ? 127.0f / amax : 0.0f;
    const float32x4_t vid = vdupq_n_f32(id);
    auto quant4 = [&](int at) {
      return vminq_s32(vmaxq_s32(vcvtnq_s32_f32(vmulq_f32(vld1q_f32(xg + at), vid)), lo), hi);
    };
    c = 0;
    for (; c + 16 <= group; c += 16) {
      const int16x8_t a = vcombine_s16(vmovn_s32(quant4(c)), vmovn_s32(quant4(c + 4)));
      const int16x8_t b = vcombine_s16(vmovn_s32(quant4(c + 8)), vmovn_s32(quant4(c + 12)));
      vst1q_s8(qg + c, vcombine_s8(vmovn_s16(a), vmovn_s16(b)));
    }
    // (FCVTNS here too: written as the scalar's (x·id + M) − M, GCC would
    // fuse the multiply into an FMA and round once, not twice.)
    for (; c < group; ++c) {
      const int v = vcvtns_s32_f32(xg[c] * id);
      qg[c] = int8_t(v > 127 ? 127 : (v < -127 ? -127 : v));
    }
    s[g] = amax / 127.0f;
  }
  for (int k = 0; k < cols / 32; ++k) {
    const int sum = vaddlvq_s8(vld1q_s8(q + 32 * k)) + vaddlvq_s8(vld1q_s8(q + 32 * k + 16));
    vst1q_s32(hc + 8 * k, vsetq_lane_s32(-zero * sum, vdupq_n_s32(0), 0));
    vst1q_s32(hc + 8 * k + 4, vdupq_n_s32(0));
  }
}

}  // namespace

const Kernels kNeon = {"neon",  N_NEON::fp_rows,        q8_neon, q4_neon, quant_row_scalar, prep_row_neon,
                       nullptr, N_NEON::bf16_pair_cols, nullptr};
const Kernels kNeonDotprod = {"dotprod",         N_NEON::fp_rows,
                              q8_dotprod,        q4_dotprod,
                              quant_row_scalar,  prep_row_neon,
                              int8_gemm_dotprod, N_NEON::bf16_pair_cols,
                              int8_head_dotprod, int8_head_scratch_dotprod};
const Kernels kNeonI8mm = {"i8mm",
                           N_NEON::fp_rows,
                           q8_dotprod,
                           q4_dotprod,
                           quant_row_scalar,
                           prep_row_neon,
                           int8_gemm_i8mm,
                           N_NEON::bf16_pair_cols,
                           int8_head_dotprod,
                           int8_head_scratch_dotprod};

}  // namespace md::gemv_detail

#endif  // __aarch64__
