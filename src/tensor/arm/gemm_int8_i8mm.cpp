// The fused int8 GEMM of gemm_int8.h on Armv8.6 i8mm (SMMLA): each
// instruction multiplies a 2×8 block of X by an 8×2 block of Wᵀ into a 2×2
// block of int32 sums — 32 multiply-adds, twice SDOT's 16. Reached through
// the kernel table's "i8mm" level (gemv.cpp); the same epilogue as the
// dotprod kernel (arm/gemm_int8_neon.cpp), whose int32 sums it equals.
//
// Layout: per panel of 64 weight rows, 8 strips of 8 rows; a strip is k/8
// blocks of 64 bytes, block c holding 4 output pairs × (2 rows × 8 columns
// 8c…8c+7), signed (the stored byte − 128). X is read in place: a row
// pair's 8 columns are two 8-byte loads.
// Microkernel: 4 row pairs (8 rows of X) × one strip (8 outputs): 16
// accumulators of 2×2 sums; per 8 columns 8 loads of X (64 bits each) and 4
// of the strip for 16 SMMLAs (512 multiply-adds).
// k not a multiple of 8, and Q4 panels, go to the dotprod kernel (every
// i8mm CPU has dotprod).

#if defined(__aarch64__)

#include <arm_neon.h>

#include <cstddef>
#include <cstdint>

#include "tensor/arm/neon_common.h"
#include "tensor/gemv_impl.h"

namespace md::gemv_detail {
namespace {

using neon::gelu4;

constexpr int kTilePairs = 4;                         // row pairs of X per microkernel call
constexpr int kStripRows = 8;                         // outputs per strip
constexpr int kStrips = kInt8GemmPanel / kStripRows;  // strips per panel

// Stored rows (q + 128) of `strips` × 8 outputs → the strips, signed.
void pack_panel(const uint8_t* w, int k, int strips, int8_t* panel) {
  const int blocks = k / 8;
  const uint8x16_t flip = vdupq_n_u8(0x80);
  for (int s = 0; s < strips; ++s)
    for (int q = 0; q < 4; ++q) {
      const uint8_t* r0 = w + size_t(kStripRows * s + 2 * q) * size_t(k);
      const uint8_t* r1 = r0 + k;
      int8_t* dst = panel + size_t(s) * size_t(blocks) * 64 + 16 * q;
      for (int c = 0; c < blocks; ++c)
        vst1q_s8(dst + size_t(c) * 64,
                 vreinterpretq_s8_u8(veorq_u8(vcombine_u8(vld1_u8(r0 + 8 * c), vld1_u8(r1 + 8 * c)), flip)));
    }
}

struct Epilogue {
  const float* xs;    // per row of X
  const float* ws;    // per output of this strip
  const float* bias;  // per output of this strip, or null
  bool gelu;
};

// Row r's 4 outputs of one pair of accumulators (lanes 0-1 of each: the
// pair's first row; lanes 2-3: its second) scaled and stored.
inline void store4(int32x4_t first, int32x4_t second, bool upper, const float* ws, const float* bias, float sx,
                   bool gelu, float* y) {
  const int64x2_t a = vreinterpretq_s64_s32(first), b = vreinterpretq_s64_s32(second);
  const int32x4_t c = vreinterpretq_s32_s64(upper ? vzip2q_s64(a, b) : vzip1q_s64(a, b));
  // y = c · (ws · sx) + bias, as ops.cpp's dequant_row.
  float32x4_t out = vmulq_f32(vcvtq_f32_s32(c), vmulq_f32(vld1q_f32(ws), vdupq_n_f32(sx)));
  if (bias) out = vaddq_f32(out, vld1q_f32(bias));
  if (gelu) out = gelu4(out);
  vst1q_f32(y, out);
}

// Rows [0, rows) of X (row stride k; rows ≤ 2P, P pairs) against one strip;
// y[i·ldy + j], j < 8. A pair's missing second row reads the first again
// and is not stored.
template <int P>
MD_TARGET_I8MM void tile(const int8_t* x, int k, int rows, const int8_t* strip, const Epilogue& ep, float* y,
                         size_t ldy) {
  const int8_t* xr[2 * P];
  for (int r = 0; r < 2 * P; ++r) xr[r] = x + size_t(r < rows ? r : rows - 1) * size_t(k);
  int32x4_t acc[P][4];
  for (int p = 0; p < P; ++p)
    for (int q = 0; q < 4; ++q) acc[p][q] = vdupq_n_s32(0);
  const int blocks = k / 8;
  for (int c = 0; c < blocks; ++c) {
    int8x16_t a[P];
    for (int p = 0; p < P; ++p) a[p] = vcombine_s8(vld1_s8(xr[2 * p] + 8 * c), vld1_s8(xr[2 * p + 1] + 8 * c));
    const int8_t* block = strip + size_t(c) * 64;
    for (int q = 0; q < 4; ++q) {
      const int8x16_t b = vld1q_s8(block + 16 * q);
      for (int p = 0; p < P; ++p) acc[p][q] = vmmlaq_s32(acc[p][q], a[p], b);
    }
  }
  for (int p = 0; p < P; ++p)
    for (int h = 0; h < 2; ++h) {
      const int r = 2 * p + h;
      if (r >= rows) break;
      float* yr = y + size_t(r) * ldy;
      store4(acc[p][0], acc[p][1], h == 1, ep.ws, ep.bias, ep.xs[r], ep.gelu, yr);
      store4(acc[p][2], acc[p][3], h == 1, ep.ws + 4, ep.bias ? ep.bias + 4 : nullptr, ep.xs[r], ep.gelu, yr + 4);
    }
}

// tile<pairs> for pairs = 1 .. P.
template <int P>
void tail_tile(int rows, const int8_t* x, int k, const int8_t* strip, const Epilogue& ep, float* y, size_t ldy) {
  if constexpr (P >= 1) {
    if ((rows + 1) / 2 == P) return tile<P>(x, k, rows, strip, ep, y, ldy);
    tail_tile<P - 1>(rows, x, k, strip, ep, y, ldy);
  }
}

}  // namespace

void int8_gemm_i8mm(const Int8GemmArgs& a, uint8_t* panel_bytes) {
  if (a.k % 8 != 0 || a.w_q4) return int8_gemm_dotprod(a, panel_bytes);
  int8_t* panel = reinterpret_cast<int8_t*>(panel_bytes);
  const int blocks = a.k / 8, rows_per_tile = 2 * kTilePairs;
  const int panels = (a.n + kInt8GemmPanel - 1) / kInt8GemmPanel;
  for (int p = 0; p < panels; ++p) {
    const int j0 = p * kInt8GemmPanel;
    const int strips = (a.n - j0) / kStripRows < kStrips ? (a.n - j0) / kStripRows : kStrips;
    pack_panel(a.w + size_t(j0) * size_t(a.k), a.k, strips, panel);
    // The caller's range (the next call's stored rows) towards L2 while this
    // panel computes, a share per strip.
    neon::PrefetchShares prefetch(a.prefetch, a.prefetch_bytes, strips);
    for (int s = 0; s < strips; ++s) {
      prefetch.share(s);
      const int8_t* strip = panel + size_t(s) * size_t(blocks) * 64;
      const int j = j0 + kStripRows * s;  // the strip's first output
      Epilogue ep{a.xs, a.ws + j, a.bias ? a.bias + j : nullptr, a.gelu};
      float* y = a.y + j;
      int i = 0;
      for (; i + rows_per_tile <= a.m; i += rows_per_tile) {
        tile<kTilePairs>(a.x + size_t(i) * size_t(a.k), a.k, rows_per_tile, strip, ep, y + size_t(i) * a.ldy, a.ldy);
        ep.xs += rows_per_tile;
      }
      if (i < a.m)
        tail_tile<kTilePairs>(a.m - i, a.x + size_t(i) * size_t(a.k), a.k, strip, ep, y + size_t(i) * a.ldy, a.ldy);
    }
  }
}

}  // namespace md::gemv_detail

#endif  // __aarch64__
