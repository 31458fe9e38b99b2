// The int8 GEMM of the int8 modes on Armv8.2 dotprod (SDOT), with its
// epilogue fused as on x86 (gemm_int8.h): Y = dequant(X_s8 · W_q8ᵀ) (+ bias,
// GELU) in one pass, no int32 result matrix and no oneDNN. Only the functions
// marked MD_TARGET_DOTPROD execute SDOT; the "neon" level has no fused kernel
// (ops.cpp then uses oneDNN's GEMM where it is built in). Reached through the
// kernel table (gemv.cpp).
//
// Layout: per panel of 64 weight rows, the stored rows (q + 128) are repacked
// as signed bytes (q, the top bit flipped: SDOT is signed × signed, so no
// row-sum correction is needed) in 4 strips of 16 rows; a strip is k/4
// 64-byte lines, line g holding columns 4g…4g+3 of its 16 rows, 4 bytes per
// row in row order: one 16-byte load is 4 rows × 4 columns, SDOT's operand.
// A strip (16 · k bytes) is contiguous, so the microkernel reads it as one
// sequential stream.
// Microkernel: 6 rows of X × half a strip (8 outputs), 12 int32x4
// accumulators; per 16 columns one 16-byte load per row of X, whose four
// 4-byte lanes SDOT-by-element takes one after the other (vdotq_laneq_s32),
// and 8 loads of the strip: 48 SDOTs per 14 loads, X read in place. (With
// a whole strip per call, 24 accumulators, GCC 12 hoists the 16 strip loads
// of a 16-column step ahead of the SDOTs and spills accumulators to the
// stack in the inner loop; half a strip needs at most 12 + 6 + 8 registers.)
// Q4 panels are widened straight into the strips on each row's own int8 grid
// with x86's arithmetic (gemm_int8.h), so both produce the same bytes.

#if defined(__aarch64__)

#include <arm_neon.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "tensor/arm/neon_common.h"
#include "tensor/fast_math.h"
#include "tensor/gemv_impl.h"

namespace md::gemv_detail {
namespace {

using neon::gelu4;
using neon::sdot;
using neon::sdot_lane;

constexpr int kTileM = 6;                          // rows of X per microkernel call
constexpr int kPanelStrips = kInt8GemmPanel / 16;  // 16-row strips per panel

// Line g of strip v (64 bytes).
inline int8_t* strip_line(int8_t* panel, int groups, int v, int g) {
  return panel + (size_t(v) * size_t(groups) + size_t(g)) * 64;
}

// Stored rows (q + 128) of `strips` × 16 outputs → the strips, signed.
void pack_panel(const uint8_t* w, int k, int strips, int8_t* panel) {
  const int groups = k / 4;
  const uint8x16_t flip = vdupq_n_u8(0x80);
  for (int v = 0; v < strips; ++v)
    for (int r4 = 0; r4 < 4; ++r4) {  // 4 rows: one 16-byte quarter of each line
      const uint8_t* r0 = w + size_t(16 * v + 4 * r4) * size_t(k);
      int g = 0;
      for (; g + 4 <= groups; g += 4) {
        // 4 rows × 16 columns: a 4×4 transpose of 4-byte elements.
        const uint32x4_t a = vreinterpretq_u32_u8(vld1q_u8(r0 + 4 * size_t(g)));
        const uint32x4_t b = vreinterpretq_u32_u8(vld1q_u8(r0 + size_t(k) + 4 * size_t(g)));
        const uint32x4_t c = vreinterpretq_u32_u8(vld1q_u8(r0 + 2 * size_t(k) + 4 * size_t(g)));
        const uint32x4_t d = vreinterpretq_u32_u8(vld1q_u8(r0 + 3 * size_t(k) + 4 * size_t(g)));
        const uint32x4x2_t ab = vtrnq_u32(a, b), cd = vtrnq_u32(c, d);
        const uint32x4_t t[4] = {vcombine_u32(vget_low_u32(ab.val[0]), vget_low_u32(cd.val[0])),
                                 vcombine_u32(vget_low_u32(ab.val[1]), vget_low_u32(cd.val[1])),
                                 vcombine_u32(vget_high_u32(ab.val[0]), vget_high_u32(cd.val[0])),
                                 vcombine_u32(vget_high_u32(ab.val[1]), vget_high_u32(cd.val[1]))};
        for (int q = 0; q < 4; ++q)
          vst1q_s8(strip_line(panel, groups, v, g + q) + 16 * r4,
                   vreinterpretq_s8_u8(veorq_u8(vreinterpretq_u8_u32(t[q]), flip)));
      }
      for (; g < groups; ++g)
        for (int j = 0; j < 4; ++j)
          for (int b = 0; b < 4; ++b)
            strip_line(panel, groups, v, g)[16 * r4 + 4 * j + b] =
                int8_t(r0[size_t(j) * size_t(k) + 4 * size_t(g) + size_t(b)] ^ 0x80u);
    }
}

// Q4 panels (quant.h) → the strips, widened on each row's own grid:
// s = max |d| · 8/127 over the row's groups, byte = round((q − 8) · d/s).
// Line L of Q4 panel v holds, per 16-byte quarter t, rows 4t…4t+3 × 4
// columns twice: low nibbles are columns 8L…8L+3 (strip line 2L), high
// nibbles 8L+4…8L+7 (line 2L+1), in the strips' byte order already.
void widen_q4_panel(const Int8GemmArgs& a, int strips, int8_t* panel, float* ws) {
  const int k = a.k, groups = k / 4, qlines = k / 8, ng = k / a.q4_group, lpg = a.q4_group / 8;
  const float32x4_t to_s = vdupq_n_f32(8.0f / 127.0f);
  for (int v = 0; v < strips; ++v) {
    const uint8_t* src = a.w_q4 + size_t(v) * size_t(qlines) * 64;
    const uint16_t* sc = a.w_q4_scales + size_t(v) * size_t(ng) * 16;
    auto d4 = [&](int g, int q) { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(sc + size_t(g) * 16 + 4 * q))); };
    float32x4_t s[4];
    for (int q = 0; q < 4; ++q) {
      float32x4_t dmax = vdupq_n_f32(0.0f);
      for (int g = 0; g < ng; ++g) dmax = vmaxq_f32(dmax, vabsq_f32(d4(g, q)));
      s[q] = vmulq_f32(dmax, to_s);
      vst1q_f32(ws + 16 * v + 4 * q, s[q]);
    }
    for (int g = 0; g < ng; ++g) {
      float f[16];  // d/s per row (0 for a row whose scales are all 0)
      for (int q = 0; q < 4; ++q) {
        const uint32x4_t live = vcgtq_f32(s[q], vdupq_n_f32(0.0f));
        const float32x4_t r = vdivq_f32(d4(g, q), vbslq_f32(live, s[q], vdupq_n_f32(1.0f)));
        vst1q_f32(f + 4 * q, vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(r), live)));
      }
      for (int b = g * lpg; b < (g + 1) * lpg; ++b)
        for (int t = 0; t < 4; ++t) {
          const uint8x16_t raw = vld1q_u8(src + size_t(b) * 64 + 16 * t);
          for (int nib = 0; nib < 2; ++nib) {
            const uint8x16_t qn = nib == 0 ? vandq_u8(raw, vdupq_n_u8(0x0f)) : vshrq_n_u8(raw, 4);
            const int8x16_t qs = vsubq_s8(vreinterpretq_s8_u8(qn), vdupq_n_s8(8));
            const int16x8_t h[2] = {vmovl_s8(vget_low_s8(qs)), vmovl_s8(vget_high_s8(qs))};
            int32x4_t r[4];
            for (int j = 0; j < 4; ++j) {  // row 4t + j: its 4 columns
              const int32x4_t qi = vmovl_s16(j % 2 == 0 ? vget_low_s16(h[j / 2]) : vget_high_s16(h[j / 2]));
              r[j] = vcvtnq_s32_f32(vmulq_f32(vcvtq_f32_s32(qi), vdupq_n_f32(f[4 * t + j])));
            }
            const int16x8_t lo = vcombine_s16(vmovn_s32(r[0]), vmovn_s32(r[1]));
            const int16x8_t hi = vcombine_s16(vmovn_s32(r[2]), vmovn_s32(r[3]));
            vst1q_s8(strip_line(panel, groups, v, 2 * b + nib) + 16 * t, vcombine_s8(vmovn_s16(lo), vmovn_s16(hi)));
          }
        }
    }
  }
}

struct Epilogue {
  const float* xs;    // per row of X
  const float* ws;    // per output of this half strip
  const float* bias;  // per output of this half strip, or null
  bool gelu;
};

constexpr int kHalf = 2;  // 4-output vectors per microkernel call: half a strip

// One group of 4 columns of a 16-column step: SDOT of the half line (2
// vectors of 4 rows × 4 columns) of group L with lane L of each row's bytes.
template <int M, int L>
MD_TARGET_DOTPROD __attribute__((always_inline)) inline void step4(int32x4_t (&acc)[M][kHalf], const int8x16_t (&a)[M],
                                                                   const int8_t* half) {
  int8x16_t w[kHalf];
  for (int q = 0; q < kHalf; ++q) w[q] = vld1q_s8(half + 64 * L + 16 * q);
#pragma GCC unroll 6
  for (int i = 0; i < M; ++i)
#pragma GCC unroll 2
    for (int q = 0; q < kHalf; ++q) acc[i][q] = sdot_lane<L>(acc[i][q], w[q], a[i]);
}

// Rows [0, M) of X (row stride k) against outputs 8h…8h+7 of one strip
// (`half`: the strip + 32·h); y[i·ldy + j], j < 8.
template <int M>
MD_TARGET_DOTPROD void tile(const int8_t* x, int k, const int8_t* half, const Epilogue& ep, float* y, size_t ldy) {
  int32x4_t acc[M][kHalf];
#pragma GCC unroll 6
  for (int i = 0; i < M; ++i)
#pragma GCC unroll 2
    for (int q = 0; q < kHalf; ++q) acc[i][q] = vdupq_n_s32(0);
  const int groups = k / 4;
  int g = 0;
  for (; g + 4 <= groups; g += 4) {
    int8x16_t a[M];
#pragma GCC unroll 6
    for (int i = 0; i < M; ++i) a[i] = vld1q_s8(x + size_t(i) * size_t(k) + 4 * size_t(g));
    const int8_t* line = half + size_t(g) * 64;
    step4<M, 0>(acc, a, line);
    step4<M, 1>(acc, a, line);
    step4<M, 2>(acc, a, line);
    step4<M, 3>(acc, a, line);
  }
  for (; g < groups; ++g) {  // k not a multiple of 16: a group of 4 columns at a time
    int8x16_t a[M];
#pragma GCC unroll 6
    for (int i = 0; i < M; ++i) {
      int32_t a4;
      std::memcpy(&a4, x + size_t(i) * size_t(k) + 4 * size_t(g), 4);
      a[i] = vreinterpretq_s8_s32(vdupq_n_s32(a4));
    }
    const int8_t* line = half + size_t(g) * 64;
#pragma GCC unroll 6
    for (int i = 0; i < M; ++i)
#pragma GCC unroll 2
      for (int q = 0; q < kHalf; ++q) acc[i][q] = sdot(acc[i][q], vld1q_s8(line + 16 * q), a[i]);
  }
#pragma GCC unroll 6
  for (int i = 0; i < M; ++i) {
    const float32x4_t sx = vdupq_n_f32(ep.xs[i]);
    float* yi = y + size_t(i) * ldy;
#pragma GCC unroll 2
    for (int q = 0; q < kHalf; ++q) {
      // y = c · (ws · sx) + bias, as ops.cpp's dequant_row.
      float32x4_t out = vmulq_f32(vcvtq_f32_s32(acc[i][q]), vmulq_f32(vld1q_f32(ep.ws + 4 * q), sx));
      if (ep.bias) out = vaddq_f32(out, vld1q_f32(ep.bias + 4 * q));
      if (ep.gelu) out = gelu4(out);
      vst1q_f32(yi + 4 * q, out);
    }
  }
}

// tile<rows> for rows = 1 .. M.
template <int M>
void tail_tile(int rows, const int8_t* x, int k, const int8_t* half, const Epilogue& ep, float* y, size_t ldy) {
  if constexpr (M >= 1) {
    if (rows == M) return tile<M>(x, k, half, ep, y, ldy);
    tail_tile<M - 1>(rows, x, k, half, ep, y, ldy);
  }
}

}  // namespace

void int8_gemm_dotprod(const Int8GemmArgs& a, uint8_t* panel_bytes) {
  int8_t* panel = reinterpret_cast<int8_t*>(panel_bytes);
  const int panel_cols = 16 * kPanelStrips, groups = a.k / 4;
  const int panels = (a.n + panel_cols - 1) / panel_cols;
  for (int p = 0; p < panels; ++p) {
    const int j0 = p * panel_cols;
    const int strips = (a.n - j0) / 16 < kPanelStrips ? (a.n - j0) / 16 : kPanelStrips;
    float q4_ws[kInt8GemmPanel];
    const float* ws = q4_ws;
    if (a.w_q4) {  // (one panel per call, gemm_int8.h)
      widen_q4_panel(a, strips, panel, q4_ws);
    } else {
      ws = a.ws + j0;
      pack_panel(a.w + size_t(j0) * size_t(a.k), a.k, strips, panel);
    }
    // The caller's range (the next call's stored rows) towards L2 while this
    // panel computes, a share per strip.
    neon::PrefetchShares prefetch(a.prefetch, a.prefetch_bytes, strips);
    for (int v = 0; v < strips; ++v) {
      prefetch.share(v);
      for (int h = 0; h < 2; ++h) {
        const int8_t* half = panel + size_t(v) * size_t(groups) * 64 + 32 * h;
        const int j = j0 + 16 * v + 8 * h;  // its first output
        Epilogue ep{a.xs, ws + 16 * v + 8 * h, a.bias ? a.bias + j : nullptr, a.gelu};
        float* y = a.y + j;
        int i = 0;
        for (; i + kTileM <= a.m; i += kTileM) {
          tile<kTileM>(a.x + size_t(i) * size_t(a.k), a.k, half, ep, y + size_t(i) * a.ldy, a.ldy);
          ep.xs += kTileM;
        }
        if (i < a.m)
          tail_tile<kTileM - 1>(a.m - i, a.x + size_t(i) * size_t(a.k), a.k, half, ep, y + size_t(i) * a.ldy, a.ldy);
      }
    }
  }
}

}  // namespace md::gemv_detail

#endif  // __aarch64__
