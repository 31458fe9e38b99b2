#include "tensor/ops.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "tensor/parallel.h"

namespace md {

void linear(const Linear& l, const float* x, int m, float* y) {
  if (m == 1) {
    cblas_sgemv(CblasRowMajor, CblasNoTrans, l.out, l.in, 1.0f, l.w, l.in, x, 1, 0.0f, y, 1);
  } else {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, l.out, l.in, 1.0f, x, l.in, l.w, l.in,
                0.0f, y, l.out);
  }
  if (l.b) {
    for (int r = 0; r < m; ++r) {
      float* row = y + size_t(r) * l.out;
      for (int c = 0; c < l.out; ++c) row[c] += l.b[c];
    }
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

void gelu_tanh(float* x, size_t n) {
  constexpr float k = 0.7978845608028654f;  // sqrt(2/pi)
  parallel_for((n + 4095) / 4096, [&](size_t b, size_t e) {
    const size_t end = std::min(n, e * 4096);
    for (size_t i = b * 4096; i < end; ++i) {
      const float v = x[i];
      x[i] = 0.5f * v * (1.0f + std::tanh(k * (v + 0.044715f * v * v * v)));
    }
  });
}

void softmax(float* x, int n) {
  float mx = -std::numeric_limits<float>::infinity();
  for (int i = 0; i < n; ++i) mx = std::max(mx, x[i]);
  double sum = 0;
  for (int i = 0; i < n; ++i) {
    const float e = (x[i] == -std::numeric_limits<float>::infinity()) ? 0.0f : std::exp(x[i] - mx);
    x[i] = e;
    sum += e;
  }
  const float inv = float(1.0 / sum);
  for (int i = 0; i < n; ++i) x[i] *= inv;
}

void attention(const AttentionShape& s, const AttentionMask& mask, const float* q, const float* k,
               const float* v, float* out) {
  const int group = s.n_heads / s.n_kv_heads;
  const float scale = 1.0f / std::sqrt(float(s.head_dim));
  const int out_stride = s.n_heads * s.head_dim;
  const float neg_inf = -std::numeric_limits<float>::infinity();
  // One head at a time; the GEMMs inside use the BLAS threads, the softmax
  // rows use ours.
  std::vector<float> scores(size_t(s.n_q) * s.n_k);
  for (int h = 0; h < s.n_heads; ++h) {
    const int g = h / group;
    const float* qh = q + size_t(h) * s.head_dim;
    const float* kh = k + size_t(g) * s.head_dim;
    const float* vh = v + size_t(g) * s.head_dim;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, s.n_q, s.n_k, s.head_dim, scale, qh,
                s.q_stride, kh, s.kv_stride, 0.0f, scores.data(), s.n_k);
    parallel_for(size_t(s.n_q), [&](size_t b, size_t e) {
      for (size_t i = b; i < e; ++i) {
        float* row = scores.data() + i * s.n_k;
        if (!mask.full)
          for (int j = 0; j < s.n_k; ++j)
            if (!mask.allowed(int(i), j)) row[j] = neg_inf;
        softmax(row, s.n_k);
      }
    });
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, s.n_q, s.head_dim, s.n_k, 1.0f,
                scores.data(), s.n_k, vh, s.kv_stride, 0.0f, out + size_t(h) * s.head_dim,
                out_stride);
  }
}

}  // namespace md
