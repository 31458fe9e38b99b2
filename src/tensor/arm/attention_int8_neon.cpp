// The fused int8 attention head of attention_int8.h on Armv8.2 dotprod: the
// same quantisation as the x86 kernel and ops.cpp's GEMM path (queries s8
// per row, keys minus their mean s8 per row, P in 15-bit fixed point, V s8
// per column), so all three agree to the int32 sums. Reached only through
// the run-time dispatch of gemv.cpp, at the "dotprod" level.
//
// Keys are stored signed in blocks of 16 keys, 4 columns × 16 keys per
// 64-byte line (4 vectors of 4 keys × 4 columns, SDOT's operand); scores of
// 4 query rows × 8 keys per call in 8 accumulators, the query rows read in
// place 16 columns at a time and taken 4 at a time by SDOT-by-element.
// Softmax per row in fp32 (the tile's rows stay in L1). P·V: V widened to
// int16 rows, SMLAL by element (vmlal_lane_s16: a p value times 4 value
// columns, exact in int32) for 4 query rows × 16 columns in 16 accumulators,
// the int32 sums flushed to fp32 every 256 keys (256 · 32767 · 127 < 2³¹).

#if defined(__aarch64__)

#include <arm_neon.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "tensor/arm/neon_common.h"
#include "tensor/attention_int8.h"
#include "tensor/gemv_impl.h"

namespace md::gemv_detail {
namespace {

using neon::exp4;
using neon::sdot;
using neon::sdot_lane;

constexpr int kTileRows = 4;
constexpr float kPScale = 32767.0f;
constexpr int kPvChunk = 256;  // keys between flushes of the int32 P·V sums

inline size_t align64(size_t n) { return (n + 63) / 64 * 64; }

// Offsets into the scratch block (all 64-byte aligned).
struct Layout {
  int nkp = 0;  // keys padded to 16
  int vd = 0;   // value columns padded to 8
  size_t qq, sq, kp, sk, vq, sv, s, p, o, total;
  Layout(int n_q, int n_k, int hd) {
    nkp = (n_k + 15) / 16 * 16;
    vd = (hd + 7) / 8 * 8;
    size_t at = 0;
    auto take = [&at](size_t bytes) {
      const size_t here = at;
      at += align64(bytes);
      return here;
    };
    qq = take(size_t(n_q) * size_t(hd) + 16);  // (+16: a row's last 16-byte load may pass its end)
    sq = take(size_t(n_q) * 4);
    kp = take(size_t(nkp) * size_t(hd));
    sk = take(size_t(nkp) * 4);
    vq = take(size_t(nkp) * size_t(vd) * 2);
    sv = take(size_t(vd) * 4);
    s = take(size_t(kTileRows) * size_t(nkp) * 4);
    p = take(size_t(kTileRows) * size_t(nkp) * 2);
    o = take(size_t(kTileRows) * size_t(vd) * 4);
    total = at;
  }
};

// round(x · inv) to nearest even, 4 lanes, as int32.
inline int32x4_t quantize4(float32x4_t x, float32x4_t inv) { return vcvtnq_s32_f32(vmulq_f32(x, inv)); }

inline float max_abs(const float* x, int n) {
  float32x4_t m = vdupq_n_f32(0.0f);
  for (int d = 0; d < n; d += 4) m = vmaxq_f32(m, vabsq_f32(vld1q_f32(x + d)));
  return vmaxvq_f32(m);
}

// A row of n (a multiple of 4) int32 values → int8.
inline void narrow_row(const int32_t* w, int n, int8_t* out) {
  for (int d = 0; d < n; ++d) out[d] = int8_t(w[d]);
}

// Queries as s8 per row; sq = scale × the softmax scale.
void pack_queries(const Int8HeadAttention& a, int8_t* qq, float* sq) {
  const int hd = a.head_dim;
  int32_t w[kInt8HeadMaxDim];
  for (int i = 0; i < a.n_q; ++i) {
    const float* x = a.q + size_t(i) * size_t(a.q_stride);
    const float amax = max_abs(x, hd);
    const float32x4_t inv = vdupq_n_f32(amax > 0 ? 127.0f / amax : 0.0f);
    for (int d = 0; d < hd; d += 4) vst1q_s32(w + d, quantize4(vld1q_f32(x + d), inv));
    narrow_row(w, hd, qq + size_t(i) * size_t(hd));
    sq[i] = amax / 127.0f * a.scale;
  }
}

// Keys minus their mean as s8 per row in 16-key blocks: byte (j, d) at block
// j / 16, line d / 4, key j % 16, byte d % 4. Padding keys are 0, scale 0.
void pack_keys(const Int8HeadAttention& a, const Layout& L, int8_t* kp, float* sk) {
  const int hd = a.head_dim, groups = hd / 4;
  float mean[kInt8HeadMaxDim] = {};
  for (int j = 0; j < a.n_k; ++j) {
    const float* k = a.k + size_t(j) * size_t(a.kv_stride);
    for (int d = 0; d < hd; d += 4) vst1q_f32(mean + d, vaddq_f32(vld1q_f32(mean + d), vld1q_f32(k + d)));
  }
  const float32x4_t inv_n = vdupq_n_f32(1.0f / float(a.n_k));
  for (int d = 0; d < hd; d += 4) vst1q_f32(mean + d, vmulq_f32(vld1q_f32(mean + d), inv_n));
  float row[kInt8HeadMaxDim];
  int32_t w[kInt8HeadMaxDim];
  int8_t q[kInt8HeadMaxDim];
  for (int j = 0; j < L.nkp; ++j) {
    if (j < a.n_k) {
      const float* k = a.k + size_t(j) * size_t(a.kv_stride);
      for (int d = 0; d < hd; d += 4) vst1q_f32(row + d, vsubq_f32(vld1q_f32(k + d), vld1q_f32(mean + d)));
      const float am = max_abs(row, hd);
      const float32x4_t inv = vdupq_n_f32(am > 0 ? 127.0f / am : 0.0f);
      for (int d = 0; d < hd; d += 4) vst1q_s32(w + d, quantize4(vld1q_f32(row + d), inv));
      narrow_row(w, hd, q);
      sk[j] = am / 127.0f;
    } else {
      std::memset(q, 0, size_t(hd));
      sk[j] = 0.0f;
    }
    int8_t* base = kp + size_t(j / 16) * size_t(groups) * 64 + size_t(j % 16) * 4;
    for (int g = 0; g < groups; ++g) std::memcpy(base + size_t(g) * 64, q + 4 * g, 4);
  }
}

// V as s8 per column (scale sv[d]) widened to int16, rows of vd; padding 0.
void pack_values(const Int8HeadAttention& a, const Layout& L, int16_t* vq, float* sv) {
  const int hd = a.head_dim;
  float vmax[kInt8HeadMaxDim] = {}, inv[kInt8HeadMaxDim];
  for (int j = 0; j < a.n_k; ++j) {
    const float* v = a.v + size_t(j) * size_t(a.kv_stride);
    for (int d = 0; d < hd; d += 4) vst1q_f32(vmax + d, vmaxq_f32(vld1q_f32(vmax + d), vabsq_f32(vld1q_f32(v + d))));
  }
  for (int d = 0; d < L.vd; ++d) {
    const float m = d < hd ? vmax[d] : 0.0f;
    inv[d] = m > 0 ? 127.0f / m : 0.0f;
    sv[d] = m / 127.0f;
  }
  for (int j = 0; j < L.nkp; ++j) {
    int16_t* out = vq + size_t(j) * size_t(L.vd);
    if (j >= a.n_k) {
      std::memset(out, 0, size_t(L.vd) * 2);
      continue;
    }
    const float* v = a.v + size_t(j) * size_t(a.kv_stride);
    for (int d = 0; d < hd; d += 4) vst1_s16(out + d, vmovn_s32(quantize4(vld1q_f32(v + d), vld1q_f32(inv + d))));
    for (int d = hd; d < L.vd; ++d) out[d] = 0;
  }
}

// One group of 4 columns of a 16-column step: keys' half line (2 vectors of
// 4 keys) with lane L of each query row's 16 bytes.
template <int R, int L>
MD_TARGET_DOTPROD __attribute__((always_inline)) inline void score_step(int32x4_t (&acc)[R][2], const int8x16_t (&q)[R],
                                                                        const int8_t* line) {
  const int8x16_t k0 = vld1q_s8(line + 64 * L), k1 = vld1q_s8(line + 64 * L + 16);
  for (int r = 0; r < R; ++r) {
    acc[r][0] = sdot_lane<L>(acc[r][0], k0, q[r]);
    acc[r][1] = sdot_lane<L>(acc[r][1], k1, q[r]);
  }
}

// Scores of R query rows against keys 8h…8h+7 of 16-key block b, in fp32
// into s (row r at s + r·lds): c · (sk · sq).
template <int R>
MD_TARGET_DOTPROD void score_half(const int8_t* qq, int hd, const float* sq, const int8_t* kp, const float* sk, int b,
                                  int h, float* s, size_t lds) {
  const int groups = hd / 4;
  int32x4_t acc[R][2];
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = vdupq_n_s32(0);
  const int8_t* half = kp + size_t(b) * size_t(groups) * 64 + 32 * h;
  int g = 0;
  for (; g + 4 <= groups; g += 4) {
    int8x16_t q[R];
    for (int r = 0; r < R; ++r) q[r] = vld1q_s8(qq + size_t(r) * size_t(hd) + 4 * size_t(g));
    const int8_t* line = half + size_t(g) * 64;
    score_step<R, 0>(acc, q, line);
    score_step<R, 1>(acc, q, line);
    score_step<R, 2>(acc, q, line);
    score_step<R, 3>(acc, q, line);
  }
  for (; g < groups; ++g) {  // head_dim 72: 18 groups
    const int8_t* line = half + size_t(g) * 64;
    const int8x16_t k0 = vld1q_s8(line), k1 = vld1q_s8(line + 16);
    for (int r = 0; r < R; ++r) {
      int32_t q4;
      std::memcpy(&q4, qq + size_t(r) * size_t(hd) + 4 * size_t(g), 4);
      const int8x16_t q = vreinterpretq_s8_s32(vdupq_n_s32(q4));
      acc[r][0] = sdot(acc[r][0], k0, q);
      acc[r][1] = sdot(acc[r][1], k1, q);
    }
  }
  const int j0 = 16 * b + 8 * h;
  for (int r = 0; r < R; ++r) {
    const float32x4_t rs = vdupq_n_f32(sq[r]);
    for (int c = 0; c < 2; ++c) {
      const float32x4_t scale = vmulq_f32(vld1q_f32(sk + j0 + 4 * c), rs);
      vst1q_f32(s + size_t(r) * lds + size_t(j0 + 4 * c), vmulq_f32(vcvtq_f32_s32(acc[r][c]), scale));
    }
  }
}

// One row's softmax over its `visible` keys: p = round(e^(s − max) · 32767)
// as int16 for keys [0, n) (zero from `visible` on); returns Σ e.
float softmax_row(const float* s, int visible, int n, int16_t* p) {
  float mx = s[0];
  for (int j = 1; j < visible; ++j) mx = s[j] > mx ? s[j] : mx;
  const float32x4_t vmax = vdupq_n_f32(mx), to_fixed = vdupq_n_f32(kPScale);
  float32x4_t sum = vdupq_n_f32(0.0f);
  int j = 0;
  for (; j + 4 <= visible; j += 4) {
    const float32x4_t e = exp4(vsubq_f32(vld1q_f32(s + j), vmax));
    sum = vaddq_f32(sum, e);
    vst1_s16(p + j, vmovn_s32(vcvtnq_s32_f32(vmulq_f32(e, to_fixed))));
  }
  float total = vaddvq_f32(sum);
  for (; j < visible; ++j) {
    const float e = vgetq_lane_f32(exp4(vdupq_n_f32(s[j] - mx)), 0);
    total += e;
    p[j] = int16_t(vcvtns_s32_f32(e * kPScale));
  }
  for (; j < n; ++j) p[j] = 0;
  return total;
}

// o[r][c0…c0+W) += Σ_j p[r][j] · v[j][c0…] over keys [j0, j1) (j1 − j0 a
// multiple of 4, ≤ kPvChunk), W = 16 or 8 columns.
template <int R, int W>
void pv_chunk(const int16_t* p, size_t ldp, const int16_t* vq, int vd, int c0, int j0, int j1, float* o) {
  constexpr int A = W / 4;  // int32x4 accumulators per row
  int32x4_t acc[R][A];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < A; ++c) acc[r][c] = vdupq_n_s32(0);
  for (int j = j0; j < j1; j += 4) {
    int16x4_t pr[R];
    for (int r = 0; r < R; ++r) pr[r] = vld1_s16(p + size_t(r) * ldp + size_t(j));
#define MD_PV_KEY(L)                                                      \
  {                                                                       \
    const int16_t* vrow = vq + size_t(j + L) * size_t(vd) + c0;           \
    for (int c = 0; c < A; c += 2) {                                      \
      const int16x8_t v = vld1q_s16(vrow + 4 * c);                        \
      for (int r = 0; r < R; ++r) {                                       \
        acc[r][c] = vmlal_lane_s16(acc[r][c], vget_low_s16(v), pr[r], L); \
        acc[r][c + 1] = vmlal_high_lane_s16(acc[r][c + 1], v, pr[r], L);  \
      }                                                                   \
    }                                                                     \
  }
    MD_PV_KEY(0)
    MD_PV_KEY(1)
    MD_PV_KEY(2)
    MD_PV_KEY(3)
#undef MD_PV_KEY
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < A; ++c) {
      float* dst = o + size_t(r) * size_t(vd) + size_t(c0 + 4 * c);
      vst1q_f32(dst, vaddq_f32(vld1q_f32(dst), vcvtq_f32_s32(acc[r][c])));
    }
}

template <int R>
void run_tile(const Int8HeadAttention& a, const Layout& L, char* base, int i0) {
  const int hd = a.head_dim;
  const auto* qq = reinterpret_cast<const int8_t*>(base + L.qq) + size_t(i0) * size_t(hd);
  const auto* sq = reinterpret_cast<const float*>(base + L.sq) + i0;
  const auto* kp = reinterpret_cast<const int8_t*>(base + L.kp);
  const auto* sk = reinterpret_cast<const float*>(base + L.sk);
  const auto* vq = reinterpret_cast<const int16_t*>(base + L.vq);
  const auto* sv = reinterpret_cast<const float*>(base + L.sv);
  auto* s = reinterpret_cast<float*>(base + L.s);
  auto* p = reinterpret_cast<int16_t*>(base + L.p);
  auto* o = reinterpret_cast<float*>(base + L.o);
  const size_t lds = size_t(L.nkp);
  int visible = 1;
  for (int r = 0; r < R; ++r) visible = a.visible[i0 + r] > visible ? a.visible[i0 + r] : visible;
  const int n_blocks = (visible + 15) / 16, n = 16 * n_blocks;
  for (int b = 0; b < n_blocks; ++b)
    for (int h = 0; h < 2; ++h) score_half<R>(qq, hd, sq, kp, sk, b, h, s, lds);
  float sum[R];
  for (int r = 0; r < R; ++r) sum[r] = softmax_row(s + size_t(r) * lds, a.visible[i0 + r], n, p + size_t(r) * lds);
  for (int x = 0; x < R * L.vd; x += 4) vst1q_f32(o + x, vdupq_n_f32(0.0f));
  for (int j0 = 0; j0 < n; j0 += kPvChunk) {
    const int j1 = j0 + kPvChunk < n ? j0 + kPvChunk : n;
    int c0 = 0;
    for (; c0 + 16 <= L.vd; c0 += 16) pv_chunk<R, 16>(p, lds, vq, L.vd, c0, j0, j1, o);
    if (c0 < L.vd) pv_chunk<R, 8>(p, lds, vq, L.vd, c0, j0, j1, o);
  }
  for (int r = 0; r < R; ++r) {
    const float inv = 1.0f / (sum[r] * kPScale);
    float* dst = a.out + size_t(i0 + r) * size_t(a.out_stride);
    const float* src = o + size_t(r) * size_t(L.vd);
    for (int d = 0; d < hd; ++d) dst[d] = src[d] * sv[d] * inv;
  }
}

}  // namespace

size_t int8_head_scratch_dotprod(int n_q, int n_k, int head_dim) { return Layout(n_q, n_k, head_dim).total; }

void int8_head_dotprod(const Int8HeadAttention& a, void* scratch) {
  const Layout L(a.n_q, a.n_k, a.head_dim);
  char* base = static_cast<char*>(scratch);
  pack_queries(a, reinterpret_cast<int8_t*>(base + L.qq), reinterpret_cast<float*>(base + L.sq));
  pack_keys(a, L, reinterpret_cast<int8_t*>(base + L.kp), reinterpret_cast<float*>(base + L.sk));
  pack_values(a, L, reinterpret_cast<int16_t*>(base + L.vq), reinterpret_cast<float*>(base + L.sv));
  int i = 0;
  for (; i + kTileRows <= a.n_q; i += kTileRows) run_tile<kTileRows>(a, L, base, i);
  for (; i < a.n_q; ++i) run_tile<1>(a, L, base, i);
}

}  // namespace md::gemv_detail

#endif  // __aarch64__
