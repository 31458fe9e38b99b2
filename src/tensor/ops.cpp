#include "tensor/ops.h"

#include <oneapi/dnnl/dnnl.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "tensor/dtype.h"
#include "tensor/error.h"
#include "tensor/parallel.h"
#include "tensor/quant.h"

namespace md {
namespace {

// Row-major C[M,N] = alpha·A[M,K]·B (B given as [N,K] when trans_b) + beta·C.
// Called from inside parallel regions, where oneDNN runs single-threaded.
void sgemm(bool trans_b, int M, int N, int K, float alpha, const float* A, int lda, const float* B,
           int ldb, float beta, float* C, int ldc) {
  if (dnnl_sgemm('N', trans_b ? 'T' : 'N', M, N, K, alpha, A, lda, B, ldb, beta, C, ldc) != dnnl_success)
    throw Error("oneDNN sgemm failed");
}

// Rows handled by the GEMV kernels instead of a GEMM.
constexpr int kMaxGemvRows = 16;
// The same for int8 (Q8 per-row) weights: the GEMV kernels stream the weights
// once per 4 input rows, the int8 GEMM once for all rows — a follow-up
// question's prompt (~10-20 tokens) reads them once.
constexpr int kMaxInt8GemvRows = 4;
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

// Q8 with one scale per row (group == cols): the layout the int8 GEMM reads.
bool is_q8_per_row(const WeightMatrix& w) { return w.format == WeightFormat::Q8 && w.group == w.cols; }

// Activations as int8, one symmetric scale per row: q = round(x / s),
// s = max|x| / 127, stored as u8 = q + 128 (the GEMM's A operand, offset 128).
// All-zero rows get s = 0.
void quantize_rows_u8(const float* x, int m, int k, uint8_t* xq, float* scale) {
  parallel_for(size_t(m), [&](size_t b, size_t e) {
    for (size_t r = b; r < e; ++r) {
      const float* xr = x + r * size_t(k);
      float amax = 0.0f;
      for (int c = 0; c < k; ++c) amax = std::max(amax, std::fabs(xr[c]));
      const float inv = amax > 0 ? 127.0f / amax : 0.0f;
      scale[r] = amax / 127.0f;
      uint8_t* qr = xq + r * size_t(k);
      for (int c = 0; c < k; ++c) qr[c] = uint8_t(int(std::lrintf(xr[c] * inv)) + 128);
    }
  });
}

// y[m, out] = x · Wᵀ with W Q8 per row (bytes q + 128) and x quantised to
// int8 per row: oneDNN's u8×s8→s32 GEMM (VNNI) per block of weight rows,
// C = (x_u8 − 128) · W_s8ᵀ, then y = C · s_x[m] · s_w[row]. int8 products and
// int32 sums are exact; the only errors are the two roundings to int8.
void linear_int8(const WeightMatrix& w, const float* x, int m, float* y) {
  const int k = w.cols, out = w.rows;
  std::vector<uint8_t> xq(size_t(m) * k);
  std::vector<float> xs(static_cast<size_t>(m));
  quantize_rows_u8(x, m, k, xq.data(), xs.data());
  const auto* wq = static_cast<const uint8_t*>(w.data);
  const auto* wscale = static_cast<const uint16_t*>(w.aux);  // fp16, one per row
  const int blocks = (out + kGemmBlock - 1) / kGemmBlock;
  parallel_for(size_t(blocks), [&](size_t b, size_t e) {
    std::vector<int32_t> c;
    std::vector<int8_t> wblock;
    std::vector<float> ws(kGemmBlock);
    const int32_t co = 0;
    for (size_t blk = b; blk < e; ++blk) {
      const int r0 = int(blk) * kGemmBlock, n = std::min(kGemmBlock, out - r0);
      // Stored bytes are q + 128; flipping the top bit gives q as int8.
      wblock.resize(size_t(n) * k);
      const uint8_t* src = wq + size_t(r0) * k;
      for (size_t i = 0; i < wblock.size(); ++i) wblock[i] = int8_t(src[i] ^ 0x80u);
      c.resize(size_t(m) * n);
      if (dnnl_gemm_u8s8s32('N', 'T', 'F', m, n, k, 1.0f, xq.data(), k, 128, wblock.data(), k, 0, 0.0f, c.data(),
                            n, &co) != dnnl_success)
        throw Error("oneDNN u8s8s32 gemm failed");
      convert_to_f32(DType::F16, wscale + r0, ws.data(), size_t(n));
      for (int i = 0; i < m; ++i) {
        float* yr = y + size_t(i) * out + r0;
        const int32_t* cr = c.data() + size_t(i) * n;
        const float sx = xs[size_t(i)];
        for (int j = 0; j < n; ++j) yr[j] = float(cr[j]) * (ws[size_t(j)] * sx);
      }
    }
  });
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

void linear(const Linear& l, const float* x, int m, float* y) {
  const WeightMatrix& w = l.w;
  if (is_q8_per_row(w) && m > kMaxInt8GemvRows) {
    linear_int8(w, x, m, y);
  } else if (m <= kMaxGemvRows) {
    const int chunks = (l.out + 63) / 64;
    parallel_for(size_t(chunks), [&](size_t b, size_t e) {
      gemm_rows(w, x, m, y, l.out, int(b) * 64, std::min(l.out, int(e) * 64));
    });
  } else {
    const int blocks = (l.out + kGemmBlock - 1) / kGemmBlock;
    const bool direct = is_f32_aligned(w);
    parallel_for(size_t(blocks), [&](size_t b, size_t e) {
      std::vector<float> scratch;
      for (size_t blk = b; blk < e; ++blk) {
        const int r0 = int(blk) * kGemmBlock, n = std::min(kGemmBlock, l.out - r0);
        const float* wb;
        if (direct) {
          wb = static_cast<const float*>(w.data) + size_t(r0) * l.in;
        } else {
          scratch.resize(size_t(n) * l.in);
          widen_rows(w, r0, n, scratch.data());
          wb = scratch.data();
        }
        sgemm(true, m, n, l.in, 1.0f, x, l.in, wb, l.in, 0.0f, y + r0, l.out);
      }
    });
  }
  if (l.b) {
    parallel_for(size_t(m), [&](size_t b, size_t e) {
      for (size_t r = b; r < e; ++r) {
        float* row = y + r * l.out;
        for (int c = 0; c < l.out; ++c) row[c] += l.b[c];
      }
    });
  }
}

void layer_norm(const LayerNormWeights& ln, const float* x, int m, float* y) {
  const int d = ln.dim;
  parallel_for(size_t(m), [&](size_t b, size_t e) {
    for (size_t r = b; r < e; ++r) {
      const float* xr = x + r * d;
      float* yr = y + r * d;
      // Two-pass mean/variance in double: stable and close to PyTorch's result.
      double mean = 0;
      for (int i = 0; i < d; ++i) mean += xr[i];
      mean /= d;
      double var = 0;
      for (int i = 0; i < d; ++i) {
        const double t = xr[i] - mean;
        var += t * t;
      }
      var /= d;
      const float inv = float(1.0 / std::sqrt(var + 1e-5));
      const float fmean = float(mean);
      for (int i = 0; i < d; ++i) yr[i] = (xr[i] - fmean) * inv * ln.w[i] + ln.b[i];
    }
  });
}

// exp(x) for x in [-87, 88] to ~1 ulp, in a form the compiler vectorises
// (glibc's expf is a scalar call here): x = n·ln2 + r, e^r by a degree-6
// polynomial, 2^n by building the float's exponent bits.
__attribute__((always_inline)) static inline float fast_exp(float x) {
  x = std::min(88.0f, std::max(-87.0f, x));
  // Round to nearest by the 1.5·2^23 trick (vectorises without SSE4.1).
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = (x - n * 0.693145751953125f) - n * 1.428606765330187045e-06f;
  float p = 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (int32_t(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, 4);
  return p * scale;
}

// Element-wise loops compiled for AVX-512, AVX2 and baseline x86-64, picked
// at load time.
#define MD_VECTOR_CLONES __attribute__((target_clones("arch=skylake-avx512", "arch=haswell", "default")))

MD_VECTOR_CLONES static void gelu_range(float* x, size_t n) {
  constexpr float k = 0.7978845608028654f;  // sqrt(2/pi)
  // 0.5·v·(1 + tanh(u)) = v / (1 + e^(−2u)).
#pragma omp simd
  for (size_t i = 0; i < n; ++i) {
    const float v = x[i];
    const float u = k * (v + 0.044715f * v * v * v);
    x[i] = v / (1.0f + fast_exp(-2.0f * u));
  }
}

void gelu_tanh(float* x, size_t n) {
  parallel_for((n + 4095) / 4096, [&](size_t b, size_t e) {
    const size_t end = std::min(n, e * 4096);
    gelu_range(x + b * 4096, end - b * 4096);
  });
}

MD_VECTOR_CLONES void softmax(float* x, int n) {
  float mx = x[0];
  for (int i = 1; i < n; ++i) mx = std::max(mx, x[i]);
  float sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int i = 0; i < n; ++i) {
    const float e = fast_exp(x[i] - mx);
    x[i] = e;
    sum += e;
  }
  const float inv = 1.0f / sum;
#pragma omp simd
  for (int i = 0; i < n; ++i) x[i] *= inv;
}

void attention(const AttentionShape& s, const AttentionMask& mask, const float* q, const float* k,
               const float* v, float* out) {
  attention(s, mask, q, KVRows{}, KVRows{k, v, s.n_k}, out);
}

void attention(const AttentionShape& s, const AttentionMask& mask, const float* q, KVRows base, KVRows own,
               float* out) {
  if (base.rows + own.rows != s.n_k) throw Error("attention: key rows do not add up to n_k");
  const int group = s.n_heads / s.n_kv_heads;
  const float scale = 1.0f / std::sqrt(float(s.head_dim));
  const int out_stride = s.n_heads * s.head_dim;
  // Heads in parallel, each with single-threaded GEMMs and its own scores.
  parallel_for(size_t(s.n_heads), [&](size_t hb, size_t he) {
    std::vector<float> scores(size_t(s.n_q) * s.n_k);
    for (size_t h = hb; h < he; ++h) {
      const size_t col = h / size_t(group) * size_t(s.head_dim);
      const float* qh = q + h * s.head_dim;
      float* oh = out + h * s.head_dim;
      // Scores against each key range, side by side in one row per query.
      if (base.rows > 0)
        sgemm(true, s.n_q, base.rows, s.head_dim, scale, qh, s.q_stride, base.k + col, s.kv_stride, 0.0f,
              scores.data(), s.n_k);
      if (own.rows > 0)
        sgemm(true, s.n_q, own.rows, s.head_dim, scale, qh, s.q_stride, own.k + col, s.kv_stride, 0.0f,
              scores.data() + base.rows, s.n_k);
      for (int i = 0; i < s.n_q; ++i) {
        float* row = scores.data() + size_t(i) * s.n_k;
        const int visible = mask.visible_keys(i, s.n_k);
        softmax(row, visible);
        std::fill(row + visible, row + s.n_k, 0.0f);
      }
      float beta = 0.0f;
      if (base.rows > 0) {
        sgemm(false, s.n_q, s.head_dim, base.rows, 1.0f, scores.data(), s.n_k, base.v + col, s.kv_stride, 0.0f,
              oh, out_stride);
        beta = 1.0f;
      }
      if (own.rows > 0)
        sgemm(false, s.n_q, s.head_dim, own.rows, 1.0f, scores.data() + base.rows, s.n_k, own.v + col,
              s.kv_stride, beta, oh, out_stride);
    }
  });
}

}  // namespace md
