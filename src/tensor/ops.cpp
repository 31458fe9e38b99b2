#include "tensor/ops.h"

#if defined(__x86_64__) && MOONDREAM_HAVE_ONEDNN
#include <oneapi/dnnl/dnnl.h>
#endif

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <tuple>
#include <vector>

#include "tensor/attention_int8.h"
#include "tensor/dtype.h"
#include "tensor/error.h"
#include "tensor/fast_math.h"
#include "tensor/gemm.h"
#include "tensor/gemm_int8.h"
#include "tensor/gemv_impl.h"
#include "tensor/isa.h"
#include "tensor/parallel.h"
#include "tensor/scratch.h"
#include "tensor/quant.h"

namespace md {
namespace {

// x rounded to the nearest integer (ties to even) by adding and removing
// 1.5·2^23, for |x| < 2^22: vectorises without SSE4.1's round instruction.
// On aarch64 (FMA everywhere, and a vector round instruction) rint instead:
// GCC would fuse the caller's product into the add (round_nearest(x·inv)
// rounded once, not twice), and the quantised values would differ at ties
// from the fused kernels', which round the product first.
__attribute__((always_inline)) static inline float round_nearest(float x) {
#if defined(__aarch64__)
  return __builtin_rintf(x);
#else
  return (x + 12582912.0f) - 12582912.0f;
#endif
}

// exp(x) for x in [-87, 88] to ~1 ulp, in a form the compiler vectorises
// (glibc's expf is a scalar call here): x = n·ln2 + r, e^r by a degree-6
// polynomial, 2^n by building the float's exponent bits.
__attribute__((always_inline)) static inline float fast_exp(float x) {
  using namespace fast_math;
  x = std::min(kExpMax, std::max(kExpMin, x));
  const float n = round_nearest(x * kLog2e);
  const float r = (x - n * kLn2Hi) - n * kLn2Lo;
  float p = kExpPoly[0];
  for (int i = 1; i < 7; ++i) p = p * r + kExpPoly[i];
  const int32_t bits = (int32_t(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, 4);
  return p * scale;
}

// Element-wise loops: each compiled for AVX-512, AVX2 and the baseline, the
// copy run picked with the other kernels (tensor/isa.h).

__attribute__((always_inline)) inline void gelu_body(float* x, size_t n) {
  using fast_math::kGeluCubic, fast_math::kGeluScale;
  // 0.5·v·(1 + tanh(u)) = v / (1 + e^(−2u)).
#pragma omp simd
  for (size_t i = 0; i < n; ++i) {
    const float v = x[i];
    const float u = kGeluScale * (v + kGeluCubic * v * v * v);
    x[i] = v / (1.0f + fast_exp(-2.0f * u));
  }
}

MD_ISA_BODY void gelu_range_body(float* x, size_t n) { gelu_body(x, n); }
MD_ISA_DISPATCH(void, gelu_range, (float* x, size_t n), (x, n))

// x[i] = e^(x[i] − max x) in place (n ≥ 1); returns their sum. Inlined into
// each caller's vector clones.
__attribute__((always_inline)) inline float exp_minus_max(float* x, int n) {
  float mx = x[0];
#pragma omp simd reduction(max : mx)
  for (int i = 1; i < n; ++i) mx = x[i] > mx ? x[i] : mx;
  float sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int i = 0; i < n; ++i) {
    const float e = fast_exp(x[i] - mx);
    x[i] = e;
    sum += e;
  }
  return sum;
}

// Rows handled by the GEMV kernels instead of a GEMM (int8: kMaxInt8GemvRows,
// ops.h).
constexpr int kMaxGemvRows = 16;
// Output columns per GEMM block: one widened weight block per thread (256 ×
// in floats), large enough for an efficient single-threaded SGEMM.
constexpr int kGemmBlock = 256;

bool is_f32_aligned(const WeightMatrix& w) {
  return w.format == WeightFormat::F32 && reinterpret_cast<uintptr_t>(w.data) % alignof(float) == 0;
}

// Widens rows [r0, r0+n) of W to fp32.
void widen_rows(const WeightMatrix& w, int r0, int n, float* out) {
  const size_t cols = size_t(w.cols);
  switch (w.format) {
    case WeightFormat::F32:
      convert_to_f32(DType::F32, static_cast<const float*>(w.data) + r0 * cols, out, n * cols);
      break;
    case WeightFormat::BF16:
      convert_to_f32(DType::BF16, static_cast<const uint16_t*>(w.data) + r0 * cols, out, n * cols);
      break;
    case WeightFormat::F16:
      convert_to_f32(DType::F16, static_cast<const uint16_t*>(w.data) + r0 * cols, out, n * cols);
      break;
    default:
      for (int r = 0; r < n; ++r) dequantize_row(w, r0 + r, out + r * cols);
  }
}

}  // namespace

bool int8_gemm_exact() {
  if (int8_gemm_kernel()) return true;  // the engine's own fused kernels (AVX-512 VNNI, dotprod)
#if defined(__x86_64__) && MOONDREAM_HAVE_ONEDNN
  // oneDNN's dispatch is fixed for the process (MOONDREAM_ISA may cap it at
  // start-up): exact where it has VNNI, whose bits every VNNI level carries.
  static const bool vnni = [] {
    const unsigned isa = unsigned(dnnl_get_effective_cpu_isa());
    return (isa & unsigned(dnnl_cpu_isa_avx512_core_vnni & ~dnnl_cpu_isa_avx512_core)) != 0 ||
           (isa & unsigned(dnnl_cpu_isa_avx2_vnni & ~dnnl_cpu_isa_avx2)) != 0;
  }();
  return vnni;
#else
  // Elsewhere oneDNN's integer GEMM accumulates in int32 without an int16
  // stage (its reference and aarch64 paths), and so does the engine's own
  // (tensor/gemm.h): exact.
  return true;
#endif
}

namespace {

std::atomic<uint64_t> g_linear_paths[5];
std::atomic<uint64_t> g_attention_paths[6];

// Q8 with one scale per row (group == cols): the layout the int8 GEMM reads.
bool is_q8_per_row(const WeightMatrix& w) { return w.format == WeightFormat::Q8 && w.group == w.cols; }

// Activations as int8, one symmetric scale per row: q = round(x / s),
// s = max|x| / 127, stored as q + kOffset (u8 with offset 128: the GEMM's A
// operand; s8 without). All-zero rows get s = 0.
template <class T, int kOffset>
__attribute__((always_inline)) inline float quantize_row_body(const float* x, int k, T* q) {
  float amax = 0.0f;
#pragma omp simd reduction(max : amax)
  for (int c = 0; c < k; ++c) amax = std::max(amax, std::fabs(x[c]));
  const float inv = amax > 0 ? 127.0f / amax : 0.0f;
#pragma omp simd
  for (int c = 0; c < k; ++c) q[c] = T(int(round_nearest(x[c] * inv)) + kOffset);
  return amax / 127.0f;
}

MD_ISA_BODY float quantize_row_u8_body(const float* x, int k, uint8_t* q) {
  return quantize_row_body<uint8_t, 128>(x, k, q);
}
MD_ISA_DISPATCH(float, quantize_row_u8, (const float* x, int k, uint8_t* q), (x, k, q))

MD_ISA_BODY float quantize_row_s8_body(const float* x, int k, int8_t* q) {
  return quantize_row_body<int8_t, 0>(x, k, q);
}
MD_ISA_DISPATCH(float, quantize_row_s8, (const float* x, int k, int8_t* q), (x, k, q))

// The same with the row's sum Σ q (the fused GEMM's offset correction).
MD_ISA_BODY float quantize_row_s8_sum_body(const float* x, int k, int8_t* q, int32_t* sum) {
  const float s = quantize_row_body<int8_t, 0>(x, k, q);
  int32_t total = 0;
#pragma omp simd reduction(+ : total)
  for (int c = 0; c < k; ++c) total += q[c];
  *sum = total;
  return s;
}
MD_ISA_DISPATCH(float, quantize_row_s8_sum, (const float* x, int k, int8_t* q, int32_t* sum), (x, k, q, sum))

void quantize_rows_u8(const float* x, int m, int k, uint8_t* xq, float* scale) {
  parallel_for(size_t(m), [&](size_t b, size_t e) {
    for (size_t r = b; r < e; ++r) scale[r] = quantize_row_u8(x + r * size_t(k), k, xq + r * size_t(k));
  });
}

// Stored bytes are q + 128; flipping the top bit gives q as int8.
MD_ISA_BODY void to_s8_body(const uint8_t* src, size_t n, int8_t* dst) {
#pragma omp simd
  for (size_t i = 0; i < n; ++i) dst[i] = int8_t(src[i] ^ 0x80u);
}
MD_ISA_DISPATCH(void, to_s8, (const uint8_t* src, size_t n, int8_t* dst), (src, n, dst))

// y[j] = c[j]·(ws[j]·sx) + bias[j], then GELU when asked.
MD_ISA_BODY void dequant_row_body(const int32_t* c, const float* ws, float sx, const float* bias, int n, bool gelu,
                                  float* y) {
  if (bias) {
#pragma omp simd
    for (int j = 0; j < n; ++j) y[j] = float(c[j]) * (ws[j] * sx) + bias[j];
  } else {
#pragma omp simd
    for (int j = 0; j < n; ++j) y[j] = float(c[j]) * (ws[j] * sx);
  }
  if (gelu) gelu_body(y, size_t(n));
}
MD_ISA_DISPATCH(void, dequant_row,
                (const int32_t* c, const float* ws, float sx, const float* bias, int n, bool gelu, float* y),
                (c, ws, sx, bias, n, gelu, y))

MD_ISA_BODY void add_bias_row_body(const float* bias, int n, float* y) {
#pragma omp simd
  for (int j = 0; j < n; ++j) y[j] += bias[j];
}
MD_ISA_DISPATCH(void, add_bias_row, (const float* bias, int n, float* y), (bias, n, y))

// y[m, out] = x · Wᵀ (+ b, GELU) with W Q8 per row (bytes q + 128) and x
// quantised to int8 per row: oneDNN's u8×s8→s32 GEMM (VNNI) per tile of
// rows × weight rows, C = (x_u8 − 128) · W_s8ᵀ, then y = C · s_x[m] · s_w[row]
// in the same tile while C is in cache. int8 products and int32 sums are
// exact; the only errors are the two roundings to int8.
// The transposed form, for few rows (a prompt) and for a crop per thread:
// the weights as the GEMM's u8 A operand as stored (offset 128), the
// activations as s8 B, so the weights need no conversion; C comes out
// transposed, Cᵀ[weight rows, m], and each tile of 16 rows × 64 outputs is
// transposed back in L1 before the same epilogue.
constexpr int kMaxTransposedInt8Rows = 32;
constexpr int kTileRows = 16, kTileCols = 64;

// tile[i][j] = c[j·ldc + i] for i < 16, j < n.
MD_ISA_BODY void transpose_tile_body(const int32_t* c, int ldc, int n, int32_t (*tile)[kTileCols]) {
  for (int i = 0; i < kTileRows; ++i) {
    int32_t* row = tile[i];
#pragma omp simd
    for (int j = 0; j < n; ++j) row[j] = c[size_t(j) * size_t(ldc) + size_t(i)];
  }
}
MD_ISA_DISPATCH(void, transpose_tile, (const int32_t* c, int ldc, int n, int32_t (*tile)[kTileCols]), (c, ldc, n, tile))

// Weight rows in blocks of `width`, one single-threaded GEMM per block.
void linear_int8_transposed(const WeightMatrix& w, const float* x, int m, const float* bias, bool gelu, int width,
                            float* y) {
  const int k = w.cols, out = w.rows;
  static thread_local std::vector<int8_t> t_xq;
  static thread_local std::vector<float> t_xs;
  // oneDNN's kernels want the B side's rows in multiples of 16 (14 rows ran
  // 4x slower than 16 in bench measurements): pad with zero rows.
  const int mp = (m + kTileRows - 1) / kTileRows * kTileRows;
  int8_t* xq = scratch(t_xq, size_t(mp) * k);
  float* xs = scratch(t_xs, size_t(m));
  for (int i = 0; i < m; ++i) xs[i] = quantize_row_s8(x + size_t(i) * k, k, xq + size_t(i) * k);
  std::fill(xq + size_t(m) * k, xq + size_t(mp) * k, int8_t(0));
  const auto* wq = static_cast<const uint8_t*>(w.data);
  const auto* wscale = static_cast<const uint16_t*>(w.aux);
  const int blocks = (out + width - 1) / width;
  parallel_for(size_t(blocks), [&](size_t b, size_t e) {
    static thread_local std::vector<int32_t> t_c;
    static thread_local std::vector<float> t_ws;
    float* ws = scratch(t_ws, size_t(width));
    int32_t* c = scratch(t_c, size_t(width) * mp);
    alignas(64) int32_t tile[kTileRows][kTileCols];
    for (size_t blk = b; blk < e; ++blk) {
      const int r0 = int(blk) * width, n = std::min(width, out - r0);
      gemm_u8s8s32(true, n, mp, k, wq + size_t(r0) * k, k, 128, xq, k, c, mp);
      convert_to_f32(DType::F16, wscale + r0, ws, size_t(n));
      for (int i0 = 0; i0 < m; i0 += kTileRows)
        for (int j0 = 0; j0 < n; j0 += kTileCols) {
          const int cols = std::min(kTileCols, n - j0), rows = std::min(kTileRows, m - i0);
          transpose_tile(c + size_t(j0) * mp + i0, mp, cols, tile);
          for (int i = 0; i < rows; ++i)
            dequant_row(tile[i], ws + j0, xs[i0 + i], bias ? bias + r0 + j0 : nullptr, cols, gelu,
                        y + size_t(i0 + i) * out + r0 + j0);
        }
    }
  });
}

// The fused kernel of gemm_int8.h: activations quantised per row with their
// sums; the threads take the 64-output panels (the kernel's unit) one at a
// time, or this thread does all of them inside a parallel region. Q8 rows
// go in as stored; Q4 panels are widened to int8 by the kernel as it
// repacks them (Int8GemmArgs::w_q4).
void linear_int8_fused(Int8GemmKernel kernel, const WeightMatrix& w, const float* x, int m, const float* bias,
                       bool gelu, float* y) {
  const int k = w.cols, out = w.rows;
  static thread_local std::vector<int8_t> t_xq;
  static thread_local std::vector<float> t_xs, t_ws;
  static thread_local std::vector<int32_t> t_xsum;
  int8_t* xq = scratch(t_xq, size_t(m) * k);
  float* xs = scratch(t_xs, size_t(m));
  int32_t* xsum = scratch(t_xsum, size_t(m));
  parallel_for(size_t(m), [&](size_t b, size_t e) {
    for (size_t r = b; r < e; ++r) xs[r] = quantize_row_s8_sum(x + r * size_t(k), k, xq + r * size_t(k), xsum + r);
  });
  const bool q4 = w.format == WeightFormat::Q4;
  float* ws = q4 ? nullptr : scratch(t_ws, size_t(out));  // (Q4: the kernel derives its row scales)
  if (!q4) convert_to_f32(DType::F16, w.aux, ws, size_t(out));
  const auto* wq = static_cast<const uint8_t*>(w.data);
  constexpr int kPanel = kInt8GemmPanel;
  static_assert(kPanel % kQ4PanelRows == 0);
  // Bytes per stored row (Q4's 16-row panels are contiguous: rows j0… start
  // at byte j0 · k/2).
  const size_t stored_row = q4 ? size_t(k) / 2 : size_t(k);
  const size_t panels = size_t((out + kPanel - 1) / kPanel);
  parallel_for_each(panels, [&](size_t p, size_t next) {
    static thread_local std::vector<uint8_t> t_panel;
    // 64-byte aligned inside the buffer: the kernel's aligned loads.
    uint8_t* raw = scratch(t_panel, int8_gemm_panel_bytes(k) + 64);
    uint8_t* panel = raw + (64 - reinterpret_cast<uintptr_t>(raw) % 64) % 64;
    const int j0 = int(p) * kPanel, j1 = std::min(out, j0 + kPanel);
    Int8GemmArgs a;
    a.x = xq;
    a.xs = xs;
    a.xsum = xsum;
    a.m = m;
    a.k = k;
    if (q4) {
      a.w_q4 = wq + size_t(j0) * stored_row;
      a.w_q4_scales = static_cast<const uint16_t*>(w.aux) + q4_scale_index(k, w.group, j0, 0);
      a.q4_group = w.group;
    } else {
      a.w = wq + size_t(j0) * k;
      a.ws = ws + j0;
    }
    a.bias = bias ? bias + j0 : nullptr;
    a.n = j1 - j0;
    a.gelu = gelu;
    a.y = y + j0;
    a.ldy = size_t(out);
    if (next < panels) {
      const int n0 = int(next) * kPanel;
      a.prefetch = wq + size_t(n0) * stored_row;
      a.prefetch_bytes = size_t(std::min(out, n0 + kPanel) - n0) * stored_row;
    }
    kernel(a, panel);
  });
}

void linear_int8(const WeightMatrix& w, const float* x, int m, const float* bias, bool gelu, float* y) {
  // The fused kernel for every row count it takes: a follow-up question's
  // ~14-token prompt ran 15 % faster on it than on oneDNN's transposed GEMM
  // (0.17-0.18 s vs 0.21 s to the first token, int8, Zen 4).
  if (Int8GemmKernel kernel = int8_gemm_kernel(); kernel && w.cols % 4 == 0 && w.rows % 16 == 0) {
    g_linear_paths[int(LinearPath::Int8FusedGemm)].fetch_add(1, std::memory_order_relaxed);
    return linear_int8_fused(kernel, w, x, m, bias, gelu, y);
  }
  if (m <= kMaxTransposedInt8Rows) return linear_int8_transposed(w, x, m, bias, gelu, kGemmBlock, y);
  // Without the fused kernel (AVX2 CPUs), oneDNN: for a crop per thread
  // (vision tower) two blocks, one after the other. Per thread that ran 5-8 %
  // faster than the row-major blocks below (bench).
  if (in_parallel_region())
    return linear_int8_transposed(w, x, m, bias, gelu, (w.rows / 2 + kTileCols - 1) / kTileCols * kTileCols, y);
  const int k = w.cols, out = w.rows;
  static thread_local std::vector<uint8_t> t_xq;
  static thread_local std::vector<float> t_xs;
  uint8_t* xq = scratch(t_xq, size_t(m) * k);
  float* xs = scratch(t_xs, size_t(m));
  quantize_rows_u8(x, m, k, xq, xs);
  const auto* wq = static_cast<const uint8_t*>(w.data);
  const auto* wscale = static_cast<const uint16_t*>(w.aux);  // fp16, one per row
  // Tiles: column blocks of up to 256 weight rows, as many as a multiple of
  // the threads (1152 outputs: 6 blocks of 192, not 4.5 of 256), each
  // converted once; row bands only when there are fewer blocks than threads.
  const int threads = num_threads();
  int col_blocks = (out + kGemmBlock - 1) / kGemmBlock;
  col_blocks = (col_blocks + threads - 1) / threads * threads;
  const int width = std::min(kGemmBlock, ((out + col_blocks - 1) / col_blocks + 15) / 16 * 16);
  col_blocks = (out + width - 1) / width;
  const int bands = (col_blocks >= threads || m < 64) ? 1 : threads;
  const int band_rows = (m + bands - 1) / bands;
  parallel_for(size_t(col_blocks) * bands, [&](size_t b, size_t e) {
    static thread_local std::vector<int32_t> t_c;
    static thread_local std::vector<int8_t> t_w;
    static thread_local std::vector<float> t_ws;
    float* ws = scratch(t_ws, kGemmBlock);
    int prev_block = -1;
    for (size_t task = b; task < e; ++task) {
      const int blk = int(task) / bands, band = int(task) % bands;
      const int r0 = blk * width, n = std::min(width, out - r0);
      const int m0 = band * band_rows, mn = std::min(band_rows, m - m0);
      if (mn <= 0) continue;
      int8_t* wblock = scratch(t_w, size_t(n) * k);
      if (blk != prev_block) {
        to_s8(wq + size_t(r0) * k, size_t(n) * k, wblock);
        convert_to_f32(DType::F16, wscale + r0, ws, size_t(n));
        prev_block = blk;
      }
      int32_t* c = scratch(t_c, size_t(mn) * n);
      gemm_u8s8s32(true, mn, n, k, xq + size_t(m0) * k, k, 128, wblock, k, c, n);
      for (int i = 0; i < mn; ++i)
        dequant_row(c + size_t(i) * n, ws, xs[size_t(m0 + i)], bias ? bias + r0 : nullptr, n, gelu,
                    y + size_t(m0 + i) * out + r0);
    }
  });
}

// Softmax of one row of int8 scores, v_j = c_j · sk_j · sq, written as
// 16-bit fixed point in two u8 parts: e_j = exp(v_j − max) ∈ (0, 1] is
// hi_j / 255 + (lo_j − 128) / kProbLoInv, within 0.5 / kProbLoInv = 7.7e-6.
// (One u8 alone, e ≈ hi/255, drops every key under 1/510 of the row's
// largest: the diffuse mass of a peaked row.) Keys from `visible` on get
// zero. Returns 1 / Σ e, the normalisation left for after P·V.
constexpr float kProbLoInv = 510.0f * 127.0f;

MD_ISA_BODY float softmax_row_fixed16_body(const int32_t* c, const float* sk, float sq, int visible, int n, float* v,
                                           uint8_t* hi, uint8_t* lo) {
#pragma omp simd
  for (int j = 0; j < visible; ++j) v[j] = float(c[j]) * (sk[j] * sq);
  const float sum = exp_minus_max(v, visible);
  // (Not one loop with the exponentials: GCC then vectorises for the u8
  // stores and the softmax ran 40 % slower.)
#pragma omp simd
  for (int j = 0; j < visible; ++j) {
    const float h = round_nearest(v[j] * 255.0f);
    const float l = round_nearest((v[j] - h * (1.0f / 255.0f)) * kProbLoInv);
    hi[j] = uint8_t(int(h));
    lo[j] = uint8_t(int(l) + 128);
  }
  for (int j = visible; j < n; ++j) {
    hi[j] = 0;
    lo[j] = 128;
  }
  return 1.0f / sum;
}
MD_ISA_DISPATCH(float, softmax_row_fixed16,
                (const int32_t* c, const float* sk, float sq, int visible, int n, float* v, uint8_t* hi, uint8_t* lo),
                (c, sk, sq, visible, n, v, hi, lo))

// Row x − mean (into scratch `row`) as s8; returns its scale.
MD_ISA_BODY float quantize_centred_row_s8_body(const float* x, const float* mean, int n, float* row, int8_t* q) {
#pragma omp simd
  for (int d = 0; d < n; ++d) row[d] = x[d] - mean[d];
  return quantize_row_body<int8_t, 0>(row, n, q);
}
MD_ISA_DISPATCH(float, quantize_centred_row_s8, (const float* x, const float* mean, int n, float* row, int8_t* q),
                (x, mean, n, row, q))

// One output row of P·V from the two fixed-point parts' int32 sums:
// (hi/255 + lo/kProbLoInv) · s_v / Σ e.
MD_ISA_BODY void pv_row_out_body(const int32_t* hi, const int32_t* lo, float inv_sum, const float* sv, int n,
                                 float* out) {
  const float a = inv_sum / 255.0f, b = inv_sum / kProbLoInv;
#pragma omp simd
  for (int d = 0; d < n; ++d) out[d] = (float(hi[d]) * a + float(lo[d]) * b) * sv[d];
}
MD_ISA_DISPATCH(void, pv_row_out,
                (const int32_t* hi, const int32_t* lo, float inv_sum, const float* sv, int n, float* out),
                (hi, lo, inv_sum, sv, n, out))

// V's columns as s8, one scale per column (= per output channel of P·V).
MD_ISA_BODY void quantize_columns_s8_body(const float* v, int ld, int rows, int cols, float* amax, float* scale,
                                          int8_t* q) {
  std::fill(amax, amax + cols, 0.0f);
  for (int j = 0; j < rows; ++j) {
    const float* vj = v + size_t(j) * ld;
#pragma omp simd
    for (int d = 0; d < cols; ++d) {
      // (std::max of the array element would not vectorise: it returns a reference.)
      const float a = std::fabs(vj[d]);
      amax[d] = a > amax[d] ? a : amax[d];
    }
  }
  for (int d = 0; d < cols; ++d) {
    scale[d] = amax[d] / 127.0f;
    amax[d] = amax[d] > 0 ? 127.0f / amax[d] : 0.0f;  // now the inverse scale
  }
  for (int j = 0; j < rows; ++j) {
    const float* vj = v + size_t(j) * ld;
    int8_t* qj = q + size_t(j) * cols;
#pragma omp simd
    for (int d = 0; d < cols; ++d) qj[d] = int8_t(int(round_nearest(vj[d] * amax[d])));
  }
}
MD_ISA_DISPATCH(void, quantize_columns_s8,
                (const float* v, int ld, int rows, int cols, float* amax, float* scale, int8_t* q),
                (v, ld, rows, cols, amax, scale, q))

// One head of attention, all on int8 GEMMs (the int8 modes' vision tower
// and long text prompts):
// scores = scale · Q·Kᵀ with query rows as u8 (offset 128) and key rows as
// s8, one scale per row, the mean key subtracted first (that moves all of a
// query's scores by the same amount, which softmax ignores, and centres the
// keys for int8); then P·V as two u8×s8 GEMMs, P's 16-bit fixed point
// parts against V as s8 per column. out = P·V / Σ e, rows out_stride apart.
void head_attention_int8(const AttentionShape& s, const AttentionMask& mask, float scale, const float* q,
                         const float* k, const float* v, float* out, int out_stride) {
  const int n_q = s.n_q, n_k = s.n_k, hd = s.head_dim;
  static thread_local std::vector<uint8_t> t_q, t_hi, t_lo;
  static thread_local std::vector<int8_t> t_k, t_v;
  static thread_local std::vector<float> t_sq, t_inv_sum, t_sk, t_row_v, t_mean, t_row, t_sv, t_tmp;
  static thread_local std::vector<int32_t> t_c, t_o;
  uint8_t* qq = scratch(t_q, size_t(n_q) * hd);
  int8_t* kq = scratch(t_k, size_t(n_k) * hd);
  int8_t* vq = scratch(t_v, size_t(n_k) * hd);
  uint8_t* p_hi = scratch(t_hi, size_t(n_q) * n_k);
  uint8_t* p_lo = scratch(t_lo, size_t(n_q) * n_k);
  int32_t* c = scratch(t_c, size_t(n_q) * n_k);
  int32_t* o = scratch(t_o, size_t(2) * n_q * hd);
  float* sq = scratch(t_sq, size_t(n_q));
  float* inv_sum = scratch(t_inv_sum, size_t(n_q));
  float* sk = scratch(t_sk, size_t(n_k));
  float* row_v = scratch(t_row_v, size_t(n_k));
  float* mean = scratch(t_mean, size_t(hd));
  float* row = scratch(t_row, size_t(hd));
  float* sv = scratch(t_sv, size_t(hd));
  float* tmp = scratch(t_tmp, size_t(hd));
  std::fill(mean, mean + hd, 0.0f);
  for (int j = 0; j < n_k; ++j) add_bias_row(k + size_t(j) * s.kv_stride, hd, mean);
  for (int d = 0; d < hd; ++d) mean[d] /= float(n_k);
  for (int j = 0; j < n_k; ++j)
    sk[j] = quantize_centred_row_s8(k + size_t(j) * s.kv_stride, mean, hd, row, kq + size_t(j) * hd);
  for (int i = 0; i < n_q; ++i) sq[i] = quantize_row_u8(q + size_t(i) * s.q_stride, hd, qq + size_t(i) * hd) * scale;
  gemm_u8s8s32(true, n_q, n_k, hd, qq, hd, 128, kq, hd, c, n_k);
  for (int i = 0; i < n_q; ++i)
    inv_sum[i] = softmax_row_fixed16(c + size_t(i) * n_k, sk, sq[i], mask.visible_keys(i, n_k), n_k, row_v,
                                     p_hi + size_t(i) * n_k, p_lo + size_t(i) * n_k);
  quantize_columns_s8(v, s.kv_stride, n_k, hd, tmp, sv, vq);
  int32_t *o_hi = o, *o_lo = o + size_t(n_q) * hd;
  gemm_u8s8s32(false, n_q, hd, n_k, p_hi, n_k, 0, vq, hd, o_hi, hd);
  gemm_u8s8s32(false, n_q, hd, n_k, p_lo, n_k, 128, vq, hd, o_lo, hd);
  for (int i = 0; i < n_q; ++i) {
    const int32_t* hi = o_hi + size_t(i) * hd;
    const int32_t* lo = o_lo + size_t(i) * hd;
    pv_row_out(hi, lo, inv_sum[i], sv, hd, out + size_t(i) * out_stride);
  }
}

}  // namespace

Linear make_linear(int in, int out, const float* w, const float* b) {
  Linear l;
  l.in = in;
  l.out = out;
  l.w.format = WeightFormat::F32;
  l.w.rows = out;
  l.w.cols = in;
  l.w.data = w;
  l.b = b;
  return l;
}

namespace {

// Bias and GELU over rows [0, m) of columns [c0, c0 + n) of y (row stride ld).
void finish_tile(const float* bias, bool gelu, int m, int n, float* y, size_t ld) {
  if (!bias && !gelu) return;
  for (int i = 0; i < m; ++i) {
    float* row = y + size_t(i) * ld;
    if (bias) add_bias_row(bias, n, row);
    if (gelu) gelu_range(row, size_t(n));
  }
}

// The int8 GEMM on Q4 weights, where it takes these rows (else null).
Int8GemmKernel q4_gemm_kernel(const WeightMatrix& w, int m) {
  return w.format == WeightFormat::Q4 && m > kMaxGemvRows && w.rows % 16 == 0 ? int8_gemm_kernel() : nullptr;
}

bool takes_int8_gemm(const WeightMatrix& w, int m) {
  return is_q8_per_row(w) && (m > kMaxInt8GemvRows || !quant_group_ok(w.cols, w.group)) && int8_gemm_exact();
}

// The GEMV kernels read every format but Q8 groups they have no kernel for
// (one scale per 4304-wide row: those go to the GEMMs).
bool gemv_reads(const WeightMatrix& w) {
  return (w.format != WeightFormat::Q8 && w.format != WeightFormat::Q4) || quant_group_ok(w.cols, w.group);
}

bool takes_gemv(const WeightMatrix& w, int m) {
  return !takes_int8_gemm(w, m) && !q4_gemm_kernel(w, m) && m <= kMaxGemvRows && gemv_reads(w);
}

void linear_impl(const Linear& l, const float* x, int m, bool gelu, float* y) {
  const WeightMatrix& w = l.w;
  Int8GemmKernel q4_kernel = q4_gemm_kernel(w, m);
  if (takes_int8_gemm(w, m)) {
    g_linear_paths[int(LinearPath::Int8Gemm)].fetch_add(1, std::memory_order_relaxed);
    linear_int8(w, x, m, l.b, gelu, y);
  } else if (q4_kernel) {
    // q4 prompts (the image prefix) on the int8 GEMM, the 4-bit rows widened
    // to int8 per panel; CPUs without the fused kernel widen to fp32 below.
    g_linear_paths[int(LinearPath::Q4Int8Gemm)].fetch_add(1, std::memory_order_relaxed);
    linear_int8_fused(q4_kernel, w, x, m, l.b, gelu, y);
  } else if (m <= kMaxGemvRows && gemv_reads(w)) {
    g_linear_paths[int(LinearPath::Gemv)].fetch_add(1, std::memory_order_relaxed);
    gemm_chunked(w, x, m, y, l.out, 64, [&](int c0, int c1) {
      finish_tile(l.b ? l.b + c0 : nullptr, gelu, m, c1 - c0, y + c0, size_t(l.out));
    });
  } else {
    g_linear_paths[int(LinearPath::Fp32Gemm)].fetch_add(1, std::memory_order_relaxed);
    const int blocks = (l.out + kGemmBlock - 1) / kGemmBlock;
    const bool direct = is_f32_aligned(w);
    parallel_for(size_t(blocks), [&](size_t b, size_t e) {
      static thread_local std::vector<float> t_w;
      for (size_t blk = b; blk < e; ++blk) {
        const int r0 = int(blk) * kGemmBlock, n = std::min(kGemmBlock, l.out - r0);
        const float* wb;
        if (direct) {
          wb = static_cast<const float*>(w.data) + size_t(r0) * l.in;
        } else {
          float* buf = scratch(t_w, size_t(n) * l.in);
          widen_rows(w, r0, n, buf);
          wb = buf;
        }
        sgemm(true, m, n, l.in, 1.0f, x, l.in, wb, l.in, 0.0f, y + r0, l.out);
        finish_tile(l.b ? l.b + r0 : nullptr, gelu, m, n, y + r0, size_t(l.out));
      }
    });
  }
}

}  // namespace

void linear(const Linear& l, const float* x, int m, float* y) { linear_impl(l, x, m, false, y); }

uint64_t detail::linear_path_count(LinearPath p) { return g_linear_paths[int(p)].load(std::memory_order_relaxed); }
uint64_t detail::attention_path_count(AttentionPath p) {
  return g_attention_paths[int(p)].load(std::memory_order_relaxed);
}

void linear_gelu(const Linear& l, const float* x, int m, float* y) { linear_impl(l, x, m, true, y); }

void linear_group(const std::vector<LinearJob>& jobs, int m) {
  bool gemv = m > 0;
  for (const LinearJob& j : jobs) gemv = gemv && takes_gemv(j.l->w, m);
  if (!gemv) {
    for (const LinearJob& j : jobs) linear_impl(*j.l, j.x, m, j.gelu, j.y);
    return;
  }
  std::vector<GemmJob> products;
  products.reserve(jobs.size());
  for (const LinearJob& j : jobs) {
    g_linear_paths[int(LinearPath::Gemv)].fetch_add(1, std::memory_order_relaxed);
    const Linear& l = *j.l;
    products.push_back(GemmJob{&l.w, j.x, m, j.y, l.out, [&l, &j, m](int c0, int c1) {
                                 finish_tile(l.b ? l.b + c0 : nullptr, j.gelu, m, c1 - c0, j.y + c0, size_t(l.out));
                               }});
  }
  gemm_chunked(products, 64);
}

namespace {

MD_ISA_BODY void layer_norm_row_body(const float* x, int d, const float* w, const float* b, float* y) {
  // Two-pass mean/variance in double: stable and close to PyTorch's result.
  double mean = 0;
#pragma omp simd reduction(+ : mean)
  for (int i = 0; i < d; ++i) mean += x[i];
  mean /= d;
  double var = 0;
#pragma omp simd reduction(+ : var)
  for (int i = 0; i < d; ++i) {
    const double t = x[i] - mean;
    var += t * t;
  }
  var /= d;
  const float inv = float(1.0 / std::sqrt(var + 1e-5));
  const float fmean = float(mean);
#pragma omp simd
  for (int i = 0; i < d; ++i) y[i] = (x[i] - fmean) * inv * w[i] + b[i];
}
MD_ISA_DISPATCH(void, layer_norm_row, (const float* x, int d, const float* w, const float* b, float* y),
                (x, d, w, b, y))

}  // namespace

void layer_norm(const LayerNormWeights& ln, const float* x, int m, float* y) {
  const int d = ln.dim;
  parallel_for(size_t(m), [&](size_t b, size_t e) {
    for (size_t r = b; r < e; ++r) layer_norm_row(x + r * d, d, ln.w, ln.b, y + r * d);
  });
}

void gelu_tanh(float* x, size_t n) {
  parallel_for((n + 4095) / 4096, [&](size_t b, size_t e) {
    const size_t end = std::min(n, e * 4096);
    gelu_range(x + b * 4096, end - b * 4096);
  });
}

MD_ISA_BODY void softmax_body(float* x, int n) {
  const float inv = 1.0f / exp_minus_max(x, n);
#pragma omp simd
  for (int i = 0; i < n; ++i) x[i] *= inv;
}
MD_ISA_DISPATCH(void, softmax, (float* x, int n), (x, n))

void attention(const AttentionShape& s, const AttentionMask& mask, const float* q, const float* k, const float* v,
               float* out) {
  attention(s, mask, q, KVRows{}, KVRows{k, v, s.n_k}, out);
}

const char* kv_format_name(KVFormat f) { return f == KVFormat::BF16 ? "bf16" : f == KVFormat::I8 ? "int8" : "f32"; }

bool parse_kv_format(const std::string& s, KVFormat* out) {
  if (s == "f32" || s == "fp32") {
    *out = KVFormat::F32;
    return true;
  }
  if (s == "bf16") {
    *out = KVFormat::BF16;
    return true;
  }
  if (s == "int8") {
    *out = KVFormat::I8;
    return true;
  }
  return false;
}

void quantize_kv_row(const float* x, int n, int8_t* q, float* scale) { *scale = quantize_row_s8(x, n, q); }

namespace {

// One query row of one head against bf16 keys/values read in place: scores
// in fp32 (the widened bf16 is exact), softmax, then Σ p_j·v_j. `rows` key
// ranges (base, own) side by side; `visible` keys in all. The two products
// run on the ISA's kernels where it has them (gemv_impl.h), else on these
// loops.
MD_ISA_BODY void bf16_scores_portable_body(const float* q, const uint16_t* k, int stride, int n, int head_dim,
                                           float scale, float* scores) {
  for (int j = 0; j < n; ++j) {
    const uint16_t* kj = k + size_t(j) * size_t(stride);
    float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
    for (int d = 0; d < head_dim; ++d) dot += q[d] * std::bit_cast<float>(uint32_t(kj[d]) << 16);
    scores[j] = dot * scale;
  }
}
MD_ISA_DISPATCH(void, bf16_scores_portable,
                (const float* q, const uint16_t* k, int stride, int n, int head_dim, float scale, float* scores),
                (q, k, stride, n, head_dim, scale, scores))

MD_ISA_BODY void bf16_pv_portable_body(const float* p, const uint16_t* v, int stride, int n, int head_dim, float* out) {
  for (int d = 0; d < head_dim; ++d) out[d] = 0.0f;
  for (int j = 0; j < n; ++j) {
    const uint16_t* vj = v + size_t(j) * size_t(stride);
    const float pj = p[j];
#pragma omp simd
    for (int d = 0; d < head_dim; ++d) out[d] += pj * std::bit_cast<float>(uint32_t(vj[d]) << 16);
  }
}
MD_ISA_DISPATCH(void, bf16_pv_portable,
                (const float* p, const uint16_t* v, int stride, int n, int head_dim, float* out),
                (p, v, stride, n, head_dim, out))

// The same two products over int8 rows with one scale per key:
// s_j = scale·ks_j·Σ_d q_d·k_jd, out = Σ_j (p_j·vs_j)·v_j.
MD_ISA_BODY void i8_scores_portable_body(const float* q, const int8_t* k, const float* ks, int stride, int n,
                                         int head_dim, float scale, float* scores) {
  for (int j = 0; j < n; ++j) {
    const int8_t* kj = k + size_t(j) * size_t(stride);
    float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
    for (int d = 0; d < head_dim; ++d) dot += q[d] * float(kj[d]);
    scores[j] = dot * ks[j] * scale;
  }
}
MD_ISA_DISPATCH(void, i8_scores_portable,
                (const float* q, const int8_t* k, const float* ks, int stride, int n, int head_dim, float scale,
                 float* scores),
                (q, k, ks, stride, n, head_dim, scale, scores))

MD_ISA_BODY void i8_pv_portable_body(const float* p, const int8_t* v, const float* vs, int stride, int n, int head_dim,
                                     float* out) {
  for (int d = 0; d < head_dim; ++d) out[d] = 0.0f;
  for (int j = 0; j < n; ++j) {
    const int8_t* vj = v + size_t(j) * size_t(stride);
    const float pj = p[j] * vs[j];
#pragma omp simd
    for (int d = 0; d < head_dim; ++d) out[d] += pj * float(vj[d]);
  }
}
MD_ISA_DISPATCH(void, i8_pv_portable,
                (const float* p, const int8_t* v, const float* vs, int stride, int n, int head_dim, float* out),
                (p, v, vs, stride, n, head_dim, out))

void bf16_query_row(const gemv_detail::AttentionKernels* ak, const float* q, int head_dim, float scale,
                    const uint16_t* const* k, const uint16_t* const* v, const int* rows, const int* strides, int ranges,
                    int visible, float* scores, float* part, float* out) {
  const bool fast = ak && ak->head_dim == head_dim;
  int j0 = 0;
  for (int r = 0; r < ranges && j0 < visible; ++r) {
    const int n = std::min(rows[r], visible - j0);
    if (fast)
      ak->scores(q, k[r], strides[r], n, scale, scores + j0);
    else
      bf16_scores_portable(q, k[r], strides[r], n, head_dim, scale, scores + j0);
    j0 += n;
  }
  const float inv = 1.0f / exp_minus_max(scores, visible);
  for (int d = 0; d < head_dim; ++d) out[d] = 0.0f;
  j0 = 0;
  for (int r = 0; r < ranges && j0 < visible; ++r) {
    const int n = std::min(rows[r], visible - j0);
    if (fast)
      ak->pv(scores + j0, v[r], strides[r], n, part);
    else
      bf16_pv_portable(scores + j0, v[r], strides[r], n, head_dim, part);
    for (int d = 0; d < head_dim; ++d) out[d] += part[d];
    j0 += n;
  }
  for (int d = 0; d < head_dim; ++d) out[d] *= inv;
}

// The block of one kv head's bf16 or int8 keys that starts at key j0: at
// most max_rows keys, before j_end and inside one of the two row ranges
// (base, then own), with that range's row stride (and, int8, the keys'
// scales).
struct KVBlock {
  int n = 0;
  int stride = 0;
  const void* k = nullptr;
  const void* v = nullptr;
  const float* ks = nullptr;
  const float* vs = nullptr;
  const uint16_t* k16() const { return static_cast<const uint16_t*>(k); }
  const uint16_t* v16() const { return static_cast<const uint16_t*>(v); }
  const int8_t* k8() const { return static_cast<const int8_t*>(k); }
  const int8_t* v8() const { return static_cast<const int8_t*>(v); }
};
__attribute__((always_inline)) inline KVBlock kv_block(const KVRows& base, const KVRows& own, int g, int j0, int j_end,
                                                       int max_rows) {
  KVBlock b;
  if (j0 >= j_end) return b;
  const bool in_base = j0 < base.rows;
  const KVRows& r = in_base ? base : own;
  const int jr = in_base ? j0 : j0 - base.rows;
  b.n = std::min(max_rows, (in_base ? std::min(j_end, base.rows) : j_end) - j0);
  b.stride = r.row_stride;
  const size_t at = r.at(g, jr) * kv_element_bytes(r.format);
  b.k = static_cast<const uint8_t*>(r.k) + at;
  b.v = static_cast<const uint8_t*>(r.v) + at;
  if (r.format == KVFormat::I8) {
    b.ks = r.k_scale + r.scale_at(g, jr);
    b.vs = r.v_scale + r.scale_at(g, jr);
  }
  return b;
}

// A block's rows (their first used_bytes) as a prefetch for the step
// before it: the kernel spreads them over its loops, so the block is in L2
// when its step starts (an int8 block's scales too).
__attribute__((always_inline)) inline gemv_detail::RowPrefetch block_prefetch(const KVBlock& b, size_t elem,
                                                                              size_t used_bytes) {
  return {static_cast<const char*>(b.k),
          static_cast<const char*>(b.v),
          b.n,
          size_t(b.stride) * elem,
          used_bytes,
          b.ks,
          b.vs};
}

// Key slices of an attention pass: a few per thread, taken from a shared
// counter, so a thread slowed by its VM neighbours does not hold the others
// at the end of every layer's attention.
constexpr int kKeySlicesPerThread = 2;
inline int key_slices(int visible, int block) {
  return std::max(1, std::min(kKeySlicesPerThread * num_threads(), (visible + block - 1) / block));
}
inline int slice_begin(int visible, int sl, int slices) { return int(int64_t(visible) * sl / slices); }

// Runs fn(sl, claim_next) for every slice on all threads. A thread takes its
// next slice when fn calls claim_next() — at its slice's last block, whose
// prefetch then fetches the next slice's first rows — or after fn returns.
// Claimed that late (not on starting a slice, as parallel_for_each does),
// the slices stay balanced across threads.
template <class Fn>
void for_each_key_slice(int slices, Fn&& fn) {
  std::atomic<int> counter{0};
  parallel_for(size_t(std::min(slices, num_threads())), [&](size_t, size_t) {
    for (int sl = counter.fetch_add(1, std::memory_order_relaxed); sl < slices;) {
      int next = -1;
      auto claim_next = [&] {
        if (next < 0) next = counter.fetch_add(1, std::memory_order_relaxed);
        return next;
      };
      fn(sl, claim_next);
      sl = claim_next();
    }
  });
}

// Walks slice `sl` of `slices` of the visible keys head by head and, per
// head, in blocks of at most `block` keys: fn(h, j0, blk, next) with the
// head's keys and values of the block (KVBlock) and the next step's block,
// which fn prefetches — after the slice's last head,
// the first block of the slice claim_next() hands this thread. Head by head,
// a head-major cache (KVRows) is read as two sequential streams per slice.
// (Both helpers forced inline: as calls, gemv_bench's attention rows ran
// 20-30 % slower.)
template <class Claim, class Fn>
__attribute__((always_inline)) inline void for_each_head_and_block(const AttentionShape& s, const KVRows& base,
                                                                   const KVRows& own, int visible, int sl, int slices,
                                                                   int block, Claim&& claim_next, Fn&& fn) {
  const int H = s.n_heads, group = s.n_heads / s.n_kv_heads;
  const size_t elem = kv_element_bytes(own.format), used_bytes = size_t(s.head_dim) * elem;
  const int j_begin = slice_begin(visible, sl, slices), j_end = slice_begin(visible, sl + 1, slices);
  for (int h = 0; h < H; ++h) {
    const int g = h / group;
    for (int j0 = j_begin; j0 < j_end;) {
      const KVBlock blk = kv_block(base, own, g, j0, j_end, block);
      KVBlock next = kv_block(base, own, g, j0 + blk.n, j_end, block);
      if (next.n == 0 && h + 1 < H) {
        next = kv_block(base, own, (h + 1) / group, j_begin, j_end, block);
      } else if (next.n == 0) {
        const int ns = claim_next();
        if (ns < slices)
          next = kv_block(base, own, 0, slice_begin(visible, ns, slices), slice_begin(visible, ns + 1, slices), block);
      }
      fn(h, j0, blk, block_prefetch(next, elem, used_bytes));
      j0 += blk.n;
    }
  }
}

// Merges the partial results of an online softmax for one output row, one
// state per slice: from p = states[i], its running max p[0], its sum
// p[l_off] and Σ p·v at p[acc_off + d·step] (d < hd);
// o = Σ e^(m−M)·acc / Σ e^(m−M)·l. A slice that saw none of the row's keys
// (max −∞) adds nothing.
void merge_softmax_states(const float* const* states, int count, size_t l_off, size_t acc_off, size_t step, int hd,
                          float* o) {
  float M = -INFINITY;
  for (int i = 0; i < count; ++i) M = std::max(M, states[i][0]);
  float L = 0.0f;
  std::fill(o, o + hd, 0.0f);
  for (int i = 0; i < count; ++i) {
    const float* p = states[i];
    if (p[0] == -INFINITY) continue;
    const float f = fast_exp(p[0] - M);
    L += f * p[l_off];
    for (int d = 0; d < hd; ++d) o[d] += f * p[acc_off + size_t(d) * step];
  }
  const float inv = 1.0f / L;
  for (int d = 0; d < hd; ++d) o[d] *= inv;
}

// bf16 prompts of this many rows or more (up to kDirectAttentionRows) run
// with the queries in vector lanes (kv_few_queries: its cost barely grows
// up to 16 queries); fewer run the per-query kernels.
constexpr int kFewQueryMinRows = 4;

// One decode step's attention for n query rows (one position each) over
// bf16 or int8 keys, split by key range instead of by head: each thread
// streams a contiguous run of cache rows (a head-by-head walk of
// position-major rows touched 128 bytes of each 4 KB row per pass, which
// memory serves at a quarter of its streaming rate — bench/gemv_bench
// "decode attention"). Per slice and head, an online softmax over blocks of
// keys (running max m, sum l, Σ p·v); a row's slices are merged at the end.
//
// Row r sees the first `visible` of its keys: its base rows, then its own.
// The two ranges are sliced separately, the base's slices set by its row
// count alone, so rows whose base is the same rows (one cached image
// prefix) share its slices: each block is read from memory once and every
// such row's query runs over it while it is in L1. A row's arithmetic is
// the same whichever rows run beside it: a batched step equals its rows'
// steps alone, bit for bit.
struct DecodeQuery {
  const float* q = nullptr;  // n_heads · head_dim
  KVRows base, own;
  int visible = 0;
  float* out = nullptr;
};

void kv_decode_rows(const gemv_detail::AttentionKernels* ak, const AttentionShape& s, const DecodeQuery* rows, int n) {
  g_attention_paths[int(AttentionPath::DecodeSplit)].fetch_add(1, std::memory_order_relaxed);
  const bool i8 = rows[0].own.format == KVFormat::I8;
  // The ISA's block kernel for this format: bf16 keeps q and the sums in
  // its lanes order (to_lanes / from_lanes), int8 in the row's own order.
  const bool fast_bf16 = !i8 && ak && ak->head_dim == s.head_dim;
  const bool fast_i8 = i8 && ak && ak->head_dim == s.head_dim && ak->i8_block;
  if (fast_i8) g_attention_paths[int(AttentionPath::Int8KvKernel)].fetch_add(1, std::memory_order_relaxed);
  const int block = fast_bf16 || fast_i8 ? ak->max_block : 32;
  const int H = s.n_heads, hd = s.head_dim;
  const float scale = 1.0f / std::sqrt(float(hd));
  const size_t per = size_t(H) * (2 + size_t(hd));  // one row's state: m[H], l[H], acc[H * hd]

  // Rows sharing base rows (the same rows seen in full), in first-seen order.
  struct Group {
    const KVRows* base;
    int visible;
    std::vector<int> members;
  };
  std::vector<Group> groups;
  std::vector<int> group_of(size_t(n), -1);
  for (int r = 0; r < n; ++r) {
    const KVRows& b = rows[r].base;
    const int vis = std::min(b.rows, rows[r].visible);
    if (vis <= 0) continue;
    int gi = 0;
    for (; gi < int(groups.size()); ++gi) {
      const KVRows& o = *groups[size_t(gi)].base;
      if (o.k == b.k && o.v == b.v && o.k_scale == b.k_scale && o.row_stride == b.row_stride &&
          o.head_stride == b.head_stride && groups[size_t(gi)].visible == vis)
        break;
    }
    if (gi == int(groups.size())) groups.push_back({&b, vis, {}});
    groups[size_t(gi)].members.push_back(r);
    group_of[size_t(r)] = gi;
  }
  // The slices: each group's base slices, then each row's own slices.
  struct Slice {
    const KVRows* rows;
    int j0, j1;
    const int* members;  // the rows whose queries run over it
    int count;
    size_t state;  // first of its `count` states
  };
  std::vector<Slice> slices;
  size_t states = 0;
  std::vector<int> self(static_cast<size_t>(n));
  auto add_slices = [&](const KVRows* r, int vis, const int* members, int count) {
    const int k = key_slices(vis, block);
    for (int i = 0; i < k; ++i) {
      slices.push_back({r, slice_begin(vis, i, k), slice_begin(vis, i + 1, k), members, count, states});
      states += size_t(count) * per;
    }
  };
  for (const Group& g : groups) {
    add_slices(g.base, g.visible, g.members.data(), int(g.members.size()));
    g_attention_paths[int(AttentionPath::SharedBaseRows)].fetch_add(g.members.size() - 1, std::memory_order_relaxed);
  }
  for (int r = 0; r < n; ++r) {
    self[size_t(r)] = r;
    const int vis = rows[r].visible - std::min(rows[r].base.rows, rows[r].visible);
    if (vis > 0) add_slices(&rows[r].own, vis, &self[size_t(r)], 1);
  }
  static thread_local std::vector<float> t_parts, t_q, t_merged;
  float* parts = scratch(t_parts, states);
  // The query rows in the kernel's order, once for all the slices.
  std::vector<const float*> qk(static_cast<size_t>(n));
  float* ql = fast_bf16 ? scratch(t_q, size_t(n) * size_t(H) * size_t(hd)) : nullptr;
  for (int r = 0; r < n; ++r) {
    qk[size_t(r)] = rows[r].q;
    if (!fast_bf16) continue;
    float* dst = ql + size_t(r) * size_t(H) * size_t(hd);
    for (int h = 0; h < H; ++h) ak->to_lanes(rows[r].q + size_t(h) * size_t(hd), dst + size_t(h) * size_t(hd));
    qk[size_t(r)] = dst;
  }

  const int group_size = s.n_heads / s.n_kv_heads;
  const size_t elem = kv_element_bytes(rows[0].own.format), used_bytes = size_t(hd) * elem;
  const int n_slices = int(slices.size());
  for_each_key_slice(n_slices, [&](int si, auto& claim_next) {
    static thread_local std::vector<float> t_sc, t_part;
    float* sc = scratch(t_sc, size_t(block));
    float* part = scratch(t_part, size_t(hd));
    const Slice& sl = slices[size_t(si)];
    for (int k = 0; k < sl.count; ++k) {
      float* m = parts + sl.state + size_t(k) * per;
      std::fill(m, m + H, -INFINITY);
      std::fill(m + H, m + per, 0.0f);
    }
    // One row's step over one block of head h (its state k of the slice).
    auto step = [&](int k, int h, const KVBlock& blk, const gemv_detail::RowPrefetch& share) {
      float* m = parts + sl.state + size_t(k) * per + size_t(h);
      float* l = m + H;
      float* ah = parts + sl.state + size_t(k) * per + 2 * size_t(H) + size_t(h) * size_t(hd);
      const float* qh = qk[size_t(sl.members[k])] + size_t(h) * size_t(hd);
      const int nb = blk.n;
      if (fast_bf16) return ak->block(qh, blk.k16(), blk.v16(), blk.stride, nb, scale, m, l, ah, share);
      if (fast_i8) return ak->i8_block(qh, blk.k8(), blk.ks, blk.v8(), blk.vs, blk.stride, nb, scale, m, l, ah, share);
      // The next block's share in two parts, before the scores and before
      // p·V (one burst made the first loads queue behind it).
      gemv_detail::PrefetchCursor pf(share);
      share.scales();
      pf.issue((pf.lines() + 1) / 2);
      if (i8)
        i8_scores_portable(qh, blk.k8(), blk.ks, blk.stride, nb, hd, scale, sc);
      else
        bf16_scores_portable(qh, blk.k16(), blk.stride, nb, hd, scale, sc);
      float mx = sc[0];
      for (int j = 1; j < nb; ++j) mx = std::max(mx, sc[j]);
      if (mx > *m) {
        const float f = *m == -INFINITY ? 0.0f : fast_exp(*m - mx);
        for (int d = 0; d < hd; ++d) ah[d] *= f;
        *l *= f;
        *m = mx;
      }
      float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
      for (int j = 0; j < nb; ++j) {
        sc[j] = fast_exp(sc[j] - *m);
        sum += sc[j];
      }
      *l += sum;
      pf.issue_rest();
      if (i8)
        i8_pv_portable(sc, blk.v8(), blk.vs, blk.stride, nb, hd, part);
      else
        bf16_pv_portable(sc, blk.v16(), blk.stride, nb, hd, part);
#pragma omp simd
      for (int d = 0; d < hd; ++d) ah[d] += part[d];
    };
    // Head by head, block by block; the next block (or, after the last
    // head, the first block of the slice this thread takes next) prefetched
    // during the first row's step. Several rows over a shared block: the
    // ISA's kernel for several queries, where it has one.
    const bool multi = sl.count > 1 && (fast_bf16 || fast_i8) && ak->block_rows;
    static thread_local std::vector<const float*> t_members_q;
    const float** members_q = nullptr;
    if (multi) {
      g_attention_paths[int(AttentionPath::MultiQueryBlock)].fetch_add(1, std::memory_order_relaxed);
      t_members_q.resize(size_t(sl.count));
      for (int k = 0; k < sl.count; ++k) t_members_q[size_t(k)] = qk[size_t(sl.members[k])];
      members_q = t_members_q.data();
    }
    const KVRows none;
    for (int h = 0; h < H; ++h) {
      const int g = h / group_size;
      for (int j0 = sl.j0; j0 < sl.j1;) {
        const KVBlock blk = kv_block(none, *sl.rows, g, j0, sl.j1, block);
        KVBlock next = kv_block(none, *sl.rows, g, j0 + blk.n, sl.j1, block);
        if (next.n == 0 && h + 1 < H) {
          next = kv_block(none, *sl.rows, (h + 1) / group_size, sl.j0, sl.j1, block);
        } else if (next.n == 0) {
          const int ns = claim_next();
          if (ns < n_slices) {
            const Slice& o = slices[size_t(ns)];
            next = kv_block(none, *o.rows, 0, o.j0, o.j1, block);
          }
        }
        if (multi) {
          // Every member's query over the block, widened once.
          // (The first member's state: m[H], l[H], acc[H · hd]; the others' `per` apart.)
          float* st = parts + sl.state;
          ak->block_rows(sl.count, members_q, size_t(h) * size_t(hd), blk.k, blk.ks, blk.v, blk.vs, i8, blk.stride,
                         blk.n, scale, st + h, st + H + h, st + 2 * size_t(H) + size_t(h) * size_t(hd), per,
                         block_prefetch(next, elem, used_bytes));
        } else {
          step(0, h, blk, block_prefetch(next, elem, used_bytes));
          for (int k = 1; k < sl.count; ++k) step(k, h, blk, gemv_detail::RowPrefetch{});
        }
        j0 += blk.n;
      }
    }
  });

  // Each row's slices merged (its base group's, then its own, in order):
  // o = Σ e^(m−M)·acc / Σ e^(m−M)·l.
  std::vector<const float*> mine, heads;
  float* merged = scratch(t_merged, size_t(hd));
  for (int r = 0; r < n; ++r) {
    mine.clear();
    for (const Slice& sl : slices)
      for (int k = 0; k < sl.count; ++k)
        if (sl.members[k] == r) mine.push_back(parts + sl.state + size_t(k) * per);
    for (int h = 0; h < H; ++h) {
      // Head h of each state: m[h], l[h] at + H, acc[h] at + 2H + h·hd.
      heads.resize(mine.size());
      for (size_t i = 0; i < mine.size(); ++i) heads[i] = mine[i] + h;
      merge_softmax_states(heads.data(), int(heads.size()), size_t(H), 2 * size_t(H) + size_t(h) * size_t(hd - 1), 1,
                           hd, merged);
      float* oh = rows[r].out + size_t(h) * size_t(hd);
      if (fast_bf16)
        ak->from_lanes(merged, oh);
      else
        std::copy(merged, merged + hd, oh);
    }
  }
}

// A few bf16 or int8 query rows (a short prompt over a cached image), up to
// 16 at a time with the queries in the vector lanes: per head and block of
// keys the block's keys and values widened to fp32 (from L2), then S^T[j] = Σ_d
// K[j][d]·Q^T[d] and O^T[d] = Σ_j V[j][d]·P^T[j] — one broadcast and one
// FMA per key, dimension and 16 queries; no horizontal sums, and each key is
// unpacked once for all the queries instead of once per query.
constexpr int kLanes = 16;

MD_ISA_BODY void lanes_scores_body(const float* qT, const float* kf, int n, int hd, float scale, float* sT) {
  int j = 0;
  for (; j + 4 <= n; j += 4) {
    float acc[4][kLanes] = {};
    for (int d = 0; d < hd; ++d) {
      const float* qd = qT + size_t(d) * kLanes;
#pragma GCC unroll 4
      for (int u = 0; u < 4; ++u) {
        const float kv = kf[size_t(j + u) * size_t(hd) + size_t(d)];
#pragma omp simd
        for (int i = 0; i < kLanes; ++i) acc[u][i] += kv * qd[i];
      }
    }
    for (int u = 0; u < 4; ++u)
#pragma omp simd
      for (int i = 0; i < kLanes; ++i) sT[size_t(j + u) * kLanes + size_t(i)] = acc[u][i] * scale;
  }
  for (; j < n; ++j) {
    float acc[kLanes] = {};
    for (int d = 0; d < hd; ++d) {
      const float kv = kf[size_t(j) * size_t(hd) + size_t(d)];
#pragma omp simd
      for (int i = 0; i < kLanes; ++i) acc[i] += kv * qT[size_t(d) * kLanes + size_t(i)];
    }
#pragma omp simd
    for (int i = 0; i < kLanes; ++i) sT[size_t(j) * kLanes + size_t(i)] = acc[i] * scale;
  }
}
MD_ISA_DISPATCH(void, lanes_scores, (const float* qT, const float* kf, int n, int hd, float scale, float* sT),
                (qT, kf, n, hd, scale, sT))

// One block of keys of the online softmax down the columns of S^T [n][16]
// (lane i sees keys j < vis[i], j counted from the block's first key j0):
// updates the running max m and sum l, rescales O^T [hd][16] when a lane's
// max grows, and leaves P^T in sT.
MD_ISA_BODY void lanes_online_softmax_body(float* sT, int n, int j0, const int* vis, float* m, float* l, float* oT,
                                           int hd) {
  float mx[kLanes];
#pragma omp simd
  for (int i = 0; i < kLanes; ++i) mx[i] = m[i];
  for (int j = 0; j < n; ++j)
#pragma omp simd
    for (int i = 0; i < kLanes; ++i) {
      const float v = j0 + j < vis[i] ? sT[size_t(j) * kLanes + size_t(i)] : -INFINITY;
      mx[i] = v > mx[i] ? v : mx[i];
    }
  float f[kLanes];
#pragma omp simd
  for (int i = 0; i < kLanes; ++i) {
    f[i] = mx[i] == m[i] ? 1.0f : fast_exp(m[i] - mx[i]);  // m = -inf: e^-inf = 0 (clamped input)
    m[i] = mx[i];
  }
  for (int d = 0; d < hd; ++d)
#pragma omp simd
    for (int i = 0; i < kLanes; ++i) oT[size_t(d) * kLanes + size_t(i)] *= f[i];
  float sum[kLanes];
#pragma omp simd
  for (int i = 0; i < kLanes; ++i) sum[i] = l[i] * f[i];
  for (int j = 0; j < n; ++j)
#pragma omp simd
    for (int i = 0; i < kLanes; ++i) {
      float& v = sT[size_t(j) * kLanes + size_t(i)];
      v = j0 + j < vis[i] ? fast_exp(v - m[i]) : 0.0f;
      sum[i] += v;
    }
#pragma omp simd
  for (int i = 0; i < kLanes; ++i) l[i] = sum[i];
}
MD_ISA_DISPATCH(void, lanes_online_softmax,
                (float* sT, int n, int j0, const int* vis, float* m, float* l, float* oT, int hd),
                (sT, n, j0, vis, m, l, oT, hd))

// O^T [hd][16] += Σ_j V[j][d]·P^T[j].
MD_ISA_BODY void lanes_pv_body(const float* pT, const float* vf, int n, int hd, float* oT) {
  for (int d0 = 0; d0 < hd; d0 += 8) {
    float acc[8][kLanes];
    for (int u = 0; u < 8; ++u)
#pragma omp simd
      for (int i = 0; i < kLanes; ++i) acc[u][i] = oT[size_t(d0 + u) * kLanes + size_t(i)];
    for (int j = 0; j < n; ++j) {
      const float* pj = pT + size_t(j) * kLanes;
      const float* vj = vf + size_t(j) * size_t(hd) + size_t(d0);
#pragma GCC unroll 8
      for (int u = 0; u < 8; ++u) {
        const float vv = vj[u];
#pragma omp simd
        for (int i = 0; i < kLanes; ++i) acc[u][i] += vv * pj[i];
      }
    }
    for (int u = 0; u < 8; ++u)
#pragma omp simd
      for (int i = 0; i < kLanes; ++i) oT[size_t(d0 + u) * kLanes + size_t(i)] = acc[u][i];
  }
}
MD_ISA_DISPATCH(void, lanes_pv, (const float* pT, const float* vf, int n, int hd, float* oT), (pT, vf, n, hd, oT))

// bf16 → fp32 of n rows of hd values at a row stride (exact).
MD_ISA_BODY void widen_bf16_rows_body(const uint16_t* src, int n, int stride, int hd, float* dst) {
  for (int j = 0; j < n; ++j)
#pragma omp simd
    for (int d = 0; d < hd; ++d)
      dst[size_t(j) * size_t(hd) + size_t(d)] =
          std::bit_cast<float>(uint32_t(src[size_t(j) * size_t(stride) + size_t(d)]) << 16);
}
MD_ISA_DISPATCH(void, widen_bf16_rows, (const uint16_t* src, int n, int stride, int hd, float* dst),
                (src, n, stride, hd, dst))

// int8 → fp32 of n rows, row j times scale[j] (the values reads see).
MD_ISA_BODY void widen_i8_rows_body(const int8_t* src, const float* scale, int n, int stride, int hd, float* dst) {
  for (int j = 0; j < n; ++j) {
    const float sj = scale[j];
#pragma omp simd
    for (int d = 0; d < hd; ++d)
      dst[size_t(j) * size_t(hd) + size_t(d)] = float(src[size_t(j) * size_t(stride) + size_t(d)]) * sj;
  }
}
MD_ISA_DISPATCH(void, widen_i8_rows, (const int8_t* src, const float* scale, int n, int stride, int hd, float* dst),
                (src, scale, n, stride, hd, dst))

// A block's keys (or values) as fp32 rows of hd.
__attribute__((always_inline)) inline void widen_block(const KVBlock& b, bool values, int hd, float* dst) {
  if (b.ks)
    widen_i8_rows(values ? b.v8() : b.k8(), values ? b.vs : b.ks, b.n, b.stride, hd, dst);
  else
    widen_bf16_rows(values ? b.v16() : b.k16(), b.n, b.stride, hd, dst);
}

// Up to 16 query rows (lanes) of every head; keys split across threads by
// range as in kv_decode_rows (contiguous rows per thread, the next block
// prefetched into L2), per head and block an online softmax.
void kv_lane_group(const AttentionShape& s, const AttentionMask& mask, const float* q, int i0, int nq, KVRows base,
                   KVRows own, float* out) {
  constexpr int kBlock = 32;
  const int H = s.n_heads, hd = s.head_dim;
  const float scale = 1.0f / std::sqrt(float(hd));
  const int out_stride = H * hd;
  int vis[kLanes];
  for (int i = 0; i < kLanes; ++i) vis[i] = i < nq ? mask.visible_keys(i0 + i, s.n_k) : 0;
  const int visible = *std::max_element(vis, vis + nq);
  // Q^T per head: [hd][16].
  static thread_local std::vector<float> t_qT, t_parts;
  float* qT = scratch(t_qT, size_t(H) * size_t(hd) * kLanes);
  for (int h = 0; h < H; ++h)
    for (int d = 0; d < hd; ++d)
      for (int i = 0; i < kLanes; ++i)
        qT[(size_t(h) * size_t(hd) + size_t(d)) * kLanes + size_t(i)] =
            i < nq ? q[size_t(i0 + i) * size_t(s.q_stride) + size_t(h) * size_t(hd) + size_t(d)] : 0.0f;
  const int slices = key_slices(visible, kBlock);
  // Per slice and head: m[16], l[16], O^T[hd][16].
  const size_t per_head = size_t(2 + hd) * kLanes, per = size_t(H) * per_head;
  float* parts = scratch(t_parts, per * size_t(slices));
  for_each_key_slice(slices, [&](int sl, auto& claim_next) {
    static thread_local std::vector<float> t_kf, t_sT;
    float* kf = scratch(t_kf, size_t(2) * kBlock * size_t(hd));
    float* vf = kf + size_t(kBlock) * size_t(hd);
    float* sT = scratch(t_sT, size_t(kBlock) * kLanes);
    float* P = parts + size_t(sl) * per;
    for (int h = 0; h < H; ++h) {
      float* st = P + size_t(h) * per_head;
      std::fill(st, st + kLanes, -INFINITY);
      std::fill(st + kLanes, st + per_head, 0.0f);
    }
    auto head_block = [&](int h, int j0, const KVBlock& blk, const gemv_detail::RowPrefetch& share) {
      // The next block's share in four parts between the steps, not in one
      // burst that the first loads would queue behind.
      gemv_detail::PrefetchCursor pf(share);
      share.scales();
      const int quarter = (pf.lines() + 3) / 4;
      const int n = blk.n;
      float* st = P + size_t(h) * per_head;
      pf.issue(quarter);
      widen_block(blk, false, hd, kf);
      pf.issue(quarter);
      widen_block(blk, true, hd, vf);
      pf.issue(quarter);
      lanes_scores(qT + size_t(h) * size_t(hd) * kLanes, kf, n, hd, scale, sT);
      lanes_online_softmax(sT, n, j0, vis, st, st + kLanes, st + 2 * kLanes, hd);
      pf.issue_rest();
      lanes_pv(sT, vf, n, hd, st + 2 * kLanes);
    };
    for_each_head_and_block(s, base, own, visible, sl, slices, kBlock, claim_next, head_block);
  });
  // Query i of head h in slice sl: m at st, l at st + kLanes, acc[d] at
  // st + (2 + d)·kLanes, st = parts + h·per_head + sl·per + i.
  std::vector<const float*> states(static_cast<size_t>(slices));
  for (int h = 0; h < H; ++h)
    for (int i = 0; i < nq; ++i) {
      for (int sl = 0; sl < slices; ++sl)
        states[size_t(sl)] = parts + size_t(h) * per_head + size_t(sl) * per + size_t(i);
      merge_softmax_states(states.data(), slices, kLanes, 2 * kLanes, kLanes, hd,
                           out + size_t(i0 + i) * size_t(out_stride) + size_t(h) * size_t(hd));
    }
}

void kv_few_queries(const AttentionShape& s, const AttentionMask& mask, const float* q, KVRows base, KVRows own,
                    float* out) {
  g_attention_paths[int(AttentionPath::QueryLanes)].fetch_add(1, std::memory_order_relaxed);
  for (int i0 = 0; i0 < s.n_q; i0 += kLanes)
    kv_lane_group(s, mask, q, i0, std::min(kLanes, s.n_q - i0), base, own, out);
}

// int8 rows are read with their scales: rows without them are an error.
void check_scales(const KVRows& r) {
  if (r.rows > 0 && r.format == KVFormat::I8 && (!r.k_scale || !r.v_scale))
    throw Error("attention: int8 KV rows without their scales");
}

// The layout KVRows left to the shape (row_stride 0) spelled out.
KVRows with_strides(KVRows r, const AttentionShape& s) {
  if (r.row_stride == 0) {
    r.row_stride = s.kv_stride;
    r.head_stride = size_t(s.head_dim);
  }
  return r;
}

// bf16 rows → fp32 (exact) in k_dst / v_dst, in the same layout when the
// rows are interleaved (position-major), else one head after another; int8
// rows → q·scale, one head after another.
KVRows widen_kv(const KVRows& r, const AttentionShape& s, std::vector<float>& k_dst, std::vector<float>& v_dst) {
  KVRows out = r;
  out.format = KVFormat::F32;
  const size_t hd = size_t(s.head_dim);
  if (r.format == KVFormat::I8) {
    const size_t per_head = size_t(r.rows) * hd;
    out.row_stride = s.head_dim;
    out.head_stride = per_head;
    out.k_scale = out.v_scale = nullptr;
    for (auto [src_rows, src_scales, dst_rows] :
         {std::tuple{r.k, r.k_scale, &k_dst}, std::tuple{r.v, r.v_scale, &v_dst}}) {
      // (Plain copies: a lambda may not capture structured bindings before C++20's P1091, which clang 14 lacks.)
      const int8_t* src = static_cast<const int8_t*>(src_rows);
      const float* sc = src_scales;
      std::vector<float>* dst = dst_rows;
      if (dst->size() < size_t(s.n_kv_heads) * per_head) dst->resize(size_t(s.n_kv_heads) * per_head);
      parallel_for(size_t(s.n_kv_heads), [&](size_t gb, size_t ge) {
        for (size_t g = gb; g < ge; ++g)
          widen_i8_rows(src + r.at(int(g), 0), sc + r.scale_at(int(g), 0), r.rows, r.row_stride, s.head_dim,
                        dst->data() + g * per_head);
      });
    }
    out.k = k_dst.data();
    out.v = v_dst.data();
    return out;
  }
  const bool head_major = r.row_stride == s.head_dim;
  if (!head_major && r.head_stride != hd) throw Error("attention: unsupported KV row layout");
  const size_t per_head = size_t(r.rows) * (head_major ? hd : size_t(r.row_stride));
  const size_t heads = head_major ? size_t(s.n_kv_heads) : 1;
  if (head_major) {
    out.row_stride = s.head_dim;
    out.head_stride = per_head;
  }
  for (auto [src, dst] : {std::pair{r.k, &k_dst}, std::pair{r.v, &v_dst}}) {
    if (dst->size() < heads * per_head) dst->resize(heads * per_head);
    for (size_t g = 0; g < heads; ++g)
      convert_to_f32(DType::BF16, static_cast<const uint8_t*>(src) + g * r.head_stride * 2, dst->data() + g * per_head,
                     per_head);
  }
  out.k = k_dst.data();
  out.v = v_dst.data();
  return out;
}

}  // namespace

void decode_attention(const AttentionShape& s, int n, const float* q, const KVRows* base, const KVRows* own,
                      float* out) {
  if (n <= 0) return;
  const size_t out_stride = size_t(s.n_heads) * size_t(s.head_dim);
  const KVFormat format = own[0].format;
  bool direct = format != KVFormat::F32;
  for (int i = 0; i < n; ++i)
    if (own[i].format != format || (base[i].rows > 0 && base[i].format != format)) direct = false;
  if (!direct) {
    // fp32 rows (or a mix of formats): row by row on attention()'s paths.
    for (int i = 0; i < n; ++i) {
      AttentionShape one = s;
      one.n_q = 1;
      one.n_k = base[i].rows + own[i].rows;
      one.int8_scores = false;
      attention(one, AttentionMask{}, q + size_t(i) * size_t(s.q_stride), base[i], own[i],
                out + size_t(i) * out_stride);
    }
    return;
  }
  std::vector<DecodeQuery> rows(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    DecodeQuery& r = rows[size_t(i)];
    r.q = q + size_t(i) * size_t(s.q_stride);
    r.base = with_strides(base[i], s);
    r.own = with_strides(own[i], s);
    check_scales(r.base);
    check_scales(r.own);
    r.visible = r.base.rows + r.own.rows;
    r.out = out + size_t(i) * out_stride;
  }
  kv_decode_rows(gemv_detail::attention_kernels(), s, rows.data(), n);
}

void attention(const AttentionShape& s, const AttentionMask& mask, const float* q, KVRows base, KVRows own,
               float* out) {
  if (base.rows + own.rows != s.n_k) throw Error("attention: key rows do not add up to n_k");
  if (base.rows > 0 && base.format != own.format) throw Error("attention: base and own KV rows differ in format");
  base = with_strides(base, s);
  own = with_strides(own, s);
  check_scales(base);
  check_scales(own);
  if (own.format == KVFormat::BF16 || own.format == KVFormat::I8) {
    if (s.n_q > kDirectAttentionRows) {
      // A prompt: widen once, then the GEMM path (the widening is a small
      // fraction of the GEMMs' work at these sizes).
      static thread_local std::vector<float> t_kb, t_vb, t_ko, t_vo;
      KVRows b32 = base, o32 = own;
      if (base.rows > 0) b32 = widen_kv(base, s, t_kb, t_vb);
      if (own.rows > 0) o32 = widen_kv(own, s, t_ko, t_vo);
      b32.format = o32.format = KVFormat::F32;
      attention(s, mask, q, b32, o32, out);
      return;
    }
    const int group = s.n_heads / s.n_kv_heads;
    const float scale = 1.0f / std::sqrt(float(s.head_dim));
    const int out_stride = s.n_heads * s.head_dim;
    const gemv_detail::AttentionKernels* ak = gemv_detail::attention_kernels();
    if (s.n_q == 1) {
      DecodeQuery row;
      row.q = q;
      row.base = base;
      row.own = own;
      row.visible = mask.visible_keys(0, s.n_k);
      row.out = out;
      kv_decode_rows(ak, s, &row, 1);
      return;
    }
    // int8 rows: every few-query prompt in the lanes (no per-query kernels).
    if (s.n_q >= kFewQueryMinRows || own.format == KVFormat::I8) {
      kv_few_queries(s, mask, q, base, own, out);
      return;
    }
    parallel_for(size_t(s.n_heads) * size_t(s.n_q), [&](size_t b, size_t e) {
      static thread_local std::vector<float> t_scores, t_part;
      float* scores = scratch(t_scores, size_t(s.n_k));
      float* part = scratch(t_part, size_t(s.head_dim));
      for (size_t t = b; t < e; ++t) {
        const size_t h = t / size_t(s.n_q);
        const int i = int(t % size_t(s.n_q));
        const int g = int(h) / group;
        const uint16_t* k[2] = {static_cast<const uint16_t*>(base.k) + base.at(g, 0),
                                static_cast<const uint16_t*>(own.k) + own.at(g, 0)};
        const uint16_t* v[2] = {static_cast<const uint16_t*>(base.v) + base.at(g, 0),
                                static_cast<const uint16_t*>(own.v) + own.at(g, 0)};
        const int rows[2] = {base.rows, own.rows}, strides[2] = {base.row_stride, own.row_stride};
        bf16_query_row(ak, q + size_t(i) * size_t(s.q_stride) + h * size_t(s.head_dim), s.head_dim, scale, k, v, rows,
                       strides, 2, mask.visible_keys(i, s.n_k), scores, part,
                       out + size_t(i) * size_t(out_stride) + h * size_t(s.head_dim));
      }
    });
    return;
  }
  const int group = s.n_heads / s.n_kv_heads;
  const float scale = 1.0f / std::sqrt(float(s.head_dim));
  const int out_stride = s.n_heads * s.head_dim;
  const float* bk = static_cast<const float*>(base.k);
  const float* bv = static_cast<const float*>(base.v);
  const float* ok = static_cast<const float*>(own.k);
  const float* ov = static_cast<const float*>(own.v);
  // Heads in parallel, each with single-threaded GEMMs and its own scores.
  if (s.int8_scores && base.rows == 0 && int8_gemm_exact()) {
    const Int8HeadKernel fused =
        s.head_dim % 4 == 0 && s.head_dim <= kInt8HeadMaxDim && s.n_k > 0 ? int8_head_kernel() : nullptr;
    if (fused) {
      g_attention_paths[int(AttentionPath::Int8Fused)].fetch_add(1, std::memory_order_relaxed);
      std::vector<int> visible(size_t(s.n_q));
      for (int i = 0; i < s.n_q; ++i) visible[size_t(i)] = mask.visible_keys(i, s.n_k);
      const size_t bytes = int8_head_scratch_bytes(s.n_q, s.n_k, s.head_dim);
      parallel_for_each(size_t(s.n_heads), [&](size_t h, size_t) {
        static thread_local std::vector<uint8_t> t_scratch;
        uint8_t* raw = scratch(t_scratch, bytes + 64);
        Int8HeadAttention a;
        a.n_q = s.n_q;
        a.n_k = s.n_k;
        a.head_dim = s.head_dim;
        a.q = q + h * s.head_dim;
        a.q_stride = s.q_stride;
        a.k = ok + own.at(int(h) / group, 0);
        a.v = ov + own.at(int(h) / group, 0);
        a.kv_stride = own.row_stride;
        a.scale = scale;
        a.visible = visible.data();
        a.out = out + h * s.head_dim;
        a.out_stride = out_stride;
        fused(a, raw + (64 - reinterpret_cast<uintptr_t>(raw) % 64) % 64);
      });
      return;
    }
    AttentionShape rows = s;
    rows.kv_stride = own.row_stride;
    parallel_for_each(size_t(s.n_heads), [&](size_t h, size_t) {
      head_attention_int8(rows, mask, scale, q + h * s.head_dim, ok + own.at(int(h) / group, 0),
                          ov + own.at(int(h) / group, 0), out + h * s.head_dim, out_stride);
    });
    return;
  }
  parallel_for(size_t(s.n_heads), [&](size_t hb, size_t he) {
    // Kept per thread: a fresh 2 MB block each call cost its page faults and
    // zeroing (a tenth of the vision tower's attention time).
    static thread_local std::vector<float> t_scores;
    float* scores = scratch(t_scores, size_t(s.n_q) * s.n_k);
    for (size_t h = hb; h < he; ++h) {
      const size_t bcol = base.at(int(h) / group, 0), ocol = own.at(int(h) / group, 0);
      const float* qh = q + h * s.head_dim;
      float* oh = out + h * s.head_dim;
      // Scores against each key range, side by side in one row per query.
      if (base.rows > 0)
        sgemm(true, s.n_q, base.rows, s.head_dim, scale, qh, s.q_stride, bk + bcol, base.row_stride, 0.0f, scores,
              s.n_k);
      if (own.rows > 0)
        sgemm(true, s.n_q, own.rows, s.head_dim, scale, qh, s.q_stride, ok + ocol, own.row_stride, 0.0f,
              scores + base.rows, s.n_k);
      for (int i = 0; i < s.n_q; ++i) {
        float* row = scores + size_t(i) * s.n_k;
        const int visible = mask.visible_keys(i, s.n_k);
        softmax(row, visible);
        std::fill(row + visible, row + s.n_k, 0.0f);
      }
      float beta = 0.0f;
      if (base.rows > 0) {
        sgemm(false, s.n_q, s.head_dim, base.rows, 1.0f, scores, s.n_k, bv + bcol, base.row_stride, 0.0f, oh,
              out_stride);
        beta = 1.0f;
      }
      if (own.rows > 0)
        sgemm(false, s.n_q, s.head_dim, own.rows, 1.0f, scores + base.rows, s.n_k, ov + ocol, own.row_stride, beta, oh,
              out_stride);
    }
  });
}

}  // namespace md
