// GEMV kernels of every weight format against a double-precision product, and
// the quantisers' error bounds. Run twice by ctest: with the CPU's best
// kernels and with MOONDREAM_ISA=generic (the portable ones).
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "tensor/dtype.h"
#include "tensor/error.h"
#include "tensor/gemv.h"
#include "tensor/ops.h"
#include "tensor/quant.h"

namespace md {
namespace {

struct Data {
  int rows, cols;
  std::vector<float> f32;
  std::vector<uint16_t> bf16, f16;
  std::vector<float> x;
};

Data make(int rows, int cols, uint32_t seed) {
  Data d{rows, cols, {}, {}, {}, {}};
  std::mt19937 rng(seed);
  std::normal_distribution<float> n(0.0f, 1.0f);
  d.f32.resize(size_t(rows) * cols);
  for (float& v : d.f32) v = n(rng) / std::sqrt(float(cols));
  for (float v : d.f32) {
    d.bf16.push_back(f32_to_bf16(v));
    d.f16.push_back(f32_to_f16(v));
  }
  d.x.resize(size_t(cols));
  for (float& v : d.x) v = n(rng);
  return d;
}

// Reference: Σ widen(W[r,c])·x[c] in double, from the row as the kernel sees it.
std::vector<double> reference(const WeightMatrix& w, const float* x) {
  std::vector<double> y(size_t(w.rows));
  std::vector<float> row(size_t(w.cols));
  for (int r = 0; r < w.rows; ++r) {
    dequantize_row(w, r, row.data());
    double acc = 0;
    for (int c = 0; c < w.cols; ++c) acc += double(row[c]) * x[c];
    y[r] = acc;
  }
  return y;
}

TEST(Gemv, EveryFormatMatchesTheDoubleProductOfItsOwnWeights) {
  for (auto [rows, cols] : {std::pair{1, 32}, {7, 64}, {37, 160}, {130, 2048}}) {
    const Data d = make(rows, cols, uint32_t(rows * 31 + cols));
    std::vector<WeightMatrix> ms;
    WeightMatrix m;
    m.rows = rows;
    m.cols = cols;
    m.format = WeightFormat::F32, m.data = d.f32.data(), ms.push_back(m);
    m.format = WeightFormat::BF16, m.data = d.bf16.data(), ms.push_back(m);
    m.format = WeightFormat::F16, m.data = d.f16.data(), ms.push_back(m);
    const QuantizedWeights q8 = quantize(d.bf16.data(), WeightFormat::BF16, rows, cols, WeightFormat::Q8, 32);
    const QuantizedWeights q4 = quantize(d.bf16.data(), WeightFormat::BF16, rows, cols, WeightFormat::Q4, 32);
    ms.push_back(q8.view());
    ms.push_back(q4.view());
    for (const WeightMatrix& w : ms) {
      std::vector<float> y(static_cast<size_t>(rows));
      gemv(w, d.x.data(), y.data());
      const auto ref = reference(w, d.x.data());
      for (int r = 0; r < rows; ++r)
        ASSERT_NEAR(y[r], ref[r], 1e-4 * (1 + std::abs(ref[r]))) << "format " << int(w.format) << " " << rows
                                                                 << "x" << cols << " row " << r;
      // Several input rows at once equal one at a time.
      std::vector<float> X(3 * size_t(cols)), Y(3 * size_t(rows));
      for (int i = 0; i < 3; ++i)
        for (int c = 0; c < cols; ++c) X[size_t(i) * cols + c] = d.x[c] * float(i + 1);
      gemm_rows(w, X.data(), 3, Y.data(), rows, 0, rows);
      for (int i = 0; i < 3; ++i)
        for (int r = 0; r < rows; ++r) ASSERT_NEAR(Y[size_t(i) * rows + r], y[r] * float(i + 1), 1e-4 * (1 + std::abs(y[r] * (i + 1))));
    }
  }
}

TEST(Gemv, UnalignedSixteenBitWeights) {
  const Data d = make(9, 96, 5);
  std::vector<uint16_t> shifted(d.bf16.size() + 1);
  std::copy(d.bf16.begin(), d.bf16.end(), shifted.begin() + 1);
  // A 2-byte-aligned (not 4-byte-aligned) view, as safetensors offsets allow.
  WeightMatrix w;
  w.format = WeightFormat::BF16;
  w.rows = 9;
  w.cols = 96;
  w.data = shifted.data() + 1;
  std::vector<float> y(9);
  gemv(w, d.x.data(), y.data());
  const auto ref = reference(w, d.x.data());
  for (int r = 0; r < 9; ++r) EXPECT_NEAR(y[r], ref[r], 1e-4 * (1 + std::abs(ref[r])));
}

TEST(Quant, ErrorBoundsAgainstTheFp32Weights) {
  const Data d = make(64, 1024, 9);
  for (auto [fmt, bound] : {std::pair{WeightFormat::Q8, 0.01}, std::pair{WeightFormat::Q4, 0.12}}) {
    const QuantizedWeights q = quantize(d.f32.data(), WeightFormat::F32, 64, 1024, fmt, 32);
    std::vector<float> row(1024);
    double err = 0, ref = 0;
    for (int r = 0; r < 64; ++r) {
      dequantize_row(q.view(), r, row.data());
      for (int c = 0; c < 1024; ++c) {
        const double e = row[c] - d.f32[size_t(r) * 1024 + c];
        err += e * e;
        ref += double(d.f32[size_t(r) * 1024 + c]) * d.f32[size_t(r) * 1024 + c];
      }
    }
    const double rel = std::sqrt(err / ref);
    std::printf("  %s relative RMS error %.4f (bound %.2f)\n", fmt == WeightFormat::Q8 ? "Q8" : "Q4", rel, bound);
    EXPECT_LT(rel, bound);
    EXPECT_GT(rel, 0.0);  // really quantised
    EXPECT_EQ(weight_bytes(q.view()), fmt == WeightFormat::Q8 ? 64 * 1024 + 64 * 32 * 4 : 64 * 512 + 64 * 32 * 4);
  }
  EXPECT_THROW(quantize(d.f32.data(), WeightFormat::F32, 64, 1024, WeightFormat::Q4, 64), Error);
}

TEST(Linear, ManyRowsUseTheGemmPathAndAgreeWithGemv) {
  const Data d = make(300, 64, 13);
  WeightMatrix w;
  w.format = WeightFormat::BF16;
  w.rows = 300;
  w.cols = 64;
  w.data = d.bf16.data();
  Linear l;
  l.in = 64;
  l.out = 300;
  l.w = w;
  const int m = 40;  // above the GEMV row limit: blocked GEMM with widened weights
  std::vector<float> X(size_t(m) * 64), Y(size_t(m) * 300), y(300);
  for (size_t i = 0; i < X.size(); ++i) X[i] = d.x[i % 64] * float(1 + i / 64);
  linear(l, X.data(), m, Y.data());
  for (int i = 0; i < m; i += 13) {
    gemv(w, X.data() + size_t(i) * 64, y.data());
    for (int r = 0; r < 300; ++r) ASSERT_NEAR(Y[size_t(i) * 300 + r], y[r], 1e-4 * (1 + std::abs(y[r])));
  }
}

}  // namespace
}  // namespace md
