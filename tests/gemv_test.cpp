// GEMV kernels (src/tensor/gemv.h) and weight quantisation (quant.h): every
// weight format on every ISA this CPU runs (forced one by one), against
// double-precision naive products; odd shapes; unaligned 16-bit weights;
// gemm_rows vs gemv_rows; threads; quantisation error bounds. ctest also runs
// the binary with MOONDREAM_ISA=generic (the default dispatch then picks the
// scalar kernels).
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "tensor/dtype.h"
#include "tensor/error.h"
#include "tensor/gemv.h"
#include "tensor/parallel.h"
#include "tensor/gemv_impl.h"
#include "tensor/quant.h"

namespace {

using md::WeightFormat;
using md::WeightMatrix;

// Every kernel table this CPU runs (x86-64: scalar, avx2, avx512; aarch64:
// scalar, neon, dotprod).
std::vector<std::string> isas() {
  std::vector<std::string> out;
  for (const char* n : md::detail::gemv_isas()) out.push_back(n);
  return out;
}

struct IsaGuard {
  explicit IsaGuard(const std::string& n) { ok = md::detail::gemv_force_isa(n.c_str()); }
  ~IsaGuard() { md::detail::gemv_force_isa(nullptr); }
  bool ok;
};

std::vector<float> gaussian(size_t n, uint32_t seed, float sigma = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, sigma);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

bool is_quant(WeightFormat f) { return f == WeightFormat::Q8 || f == WeightFormat::Q4; }

// A weight matrix in any format built from Gaussian fp32 values, with its
// storage and the stored weights widened to fp32.
struct TestMatrix {
  std::vector<float> f32;
  std::vector<uint16_t> half;  // BF16/F16 storage (+1 element to misalign)
  md::QuantizedWeights q;
  WeightMatrix w;
  std::vector<float> deq;

  TestMatrix(WeightFormat fmt, int rows, int cols, uint32_t seed, int group = 32, bool misalign = false) {
    f32 = gaussian(size_t(rows) * size_t(cols), seed, 0.05f);
    w.format = fmt;
    w.rows = rows;
    w.cols = cols;
    switch (fmt) {
      case WeightFormat::F32: w.data = f32.data(); break;
      case WeightFormat::BF16:
      case WeightFormat::F16: {
        half.resize(f32.size() + 1);
        uint16_t* p = half.data() + (misalign ? 1 : 0);
        for (size_t i = 0; i < f32.size(); ++i)
          p[i] = fmt == WeightFormat::BF16 ? md::f32_to_bf16(f32[i]) : md::f32_to_f16(f32[i]);
        w.data = p;
        break;
      }
      case WeightFormat::Q8:
      case WeightFormat::Q4:
        q = md::quantize(f32.data(), WeightFormat::F32, rows, cols, fmt, group);
        w = q.view();
        break;
    }
    deq.resize(f32.size());
    for (int r = 0; r < rows; ++r) md::dequantize_row(w, r, deq.data() + size_t(r) * size_t(cols));
  }
};

// x as the Q8/Q4 kernels see it: per group q = RNE(x·127/amax), x ≈ q·amax/127.
std::vector<double> quantised_x(const float* x, int cols, int group) {
  std::vector<double> out(static_cast<size_t>(cols));
  for (int g = 0; g < cols / group; ++g) {
    float amax = 0;
    for (int c = 0; c < group; ++c) amax = std::max(amax, std::fabs(x[g * group + c]));
    const float s = amax / 127.0f, id = amax > 0 ? 127.0f / amax : 0.0f;
    for (int c = 0; c < group; ++c) {
      const float q = std::nearbyint(x[g * group + c] * id);
      out[size_t(g * group + c)] = double(q) * double(s);
    }
  }
  return out;
}

// Naive double products y[r] = Σ W[r,c]·x[c], and Σ|W[r,c]·x[c]| for tolerances.
void naive(const std::vector<float>& W, int rows, int cols, const std::vector<double>& x, std::vector<double>* y,
           std::vector<double>* mag) {
  y->assign(size_t(rows), 0.0);
  mag->assign(size_t(rows), 0.0);
  for (int r = 0; r < rows; ++r) {
    double s = 0, a = 0;
    for (int c = 0; c < cols; ++c) {
      const double t = double(W[size_t(r) * size_t(cols) + size_t(c)]) * x[size_t(c)];
      s += t;
      a += std::fabs(t);
    }
    (*y)[size_t(r)] = s;
    (*mag)[size_t(r)] = a;
  }
}

// gemv_rows against the naive product of exactly what the kernel multiplies
// (stored weights × x, or × the int8 x for Q8/Q4): only fp32 rounding differs.
void check_exact(const TestMatrix& t, const std::vector<float>& x, const std::vector<float>& y,
                 const std::string& what) {
  const WeightMatrix& w = t.w;
  std::vector<double> xs(x.begin(), x.end());
  if (is_quant(w.format)) xs = quantised_x(x.data(), w.cols, w.group);
  std::vector<double> ref, mag;
  naive(t.deq, w.rows, w.cols, xs, &ref, &mag);
  for (int r = 0; r < w.rows; ++r) {
    const double tol = 2e-6 * mag[size_t(r)] * std::sqrt(double(w.cols)) + 1e-30;
    ASSERT_NEAR(y[size_t(r)], ref[size_t(r)], tol) << what << " row " << r;
  }
}

struct Shape {
  int rows, cols, group;
};

const WeightFormat kFormats[] = {WeightFormat::F32, WeightFormat::BF16, WeightFormat::F16, WeightFormat::Q8,
                                 WeightFormat::Q4};

std::vector<Shape> shapes_for(WeightFormat f) {
  if (!is_quant(f))
    return {{1, 1, 0},     {3, 5, 0},    {7, 17, 0},    {9, 31, 0},  {13, 100, 0},
            {16, 2048, 0}, {33, 257, 0}, {70, 2048, 0}, {5, 8192, 0}};
  // cols: multiples of the group only, with 32/64/96-column tails after the
  // 128-column blocks; rows: not multiples of the kernels' row tiles.
  return {{1, 32, 32},
          {7, 96, 32},
          {9, 160, 32},
          {13, 224, 32},
          {33, 2080, 32},
          {70, 2048, 32},
          {5, 8192, 32},
          {3, 64, 64},
          {11, 192, 64},
          {17, 2048, 64},
          {6, 128, 128},
          {10, 384, 128},
          {19, 2048, 128},
          {4, 768, 256},
          {9, 2048, 256},
          {5, 1152, 384},
          // One scale per row (the int8 mode's layout; AVX-512 keeps int32
          // sums over the row): a 4-chunk unroll with and without a tail.
          {7, 2048, 2048},
          {5, 640, 640},
          {3, 8192, 8192}};
}

// Each vector level runs kernels of its own, not the portable ones under
// its name: were a table's entry the scalar kernel, the other tests (which
// compare every level with a double-precision product) would pass anyway.
TEST(Gemv, EveryVectorLevelRunsItsOwnKernels) {
  using md::gemv_detail::kernels;
  using md::gemv_detail::kScalar;
  int vector_levels = 0;
  for (const char* isa : md::detail::gemv_isas()) {
    ASSERT_TRUE(md::detail::gemv_force_isa(isa));
    EXPECT_STREQ(kernels().name, isa);
    if (std::string(isa) == "scalar") continue;
    ++vector_levels;
    EXPECT_NE(kernels().fp, kScalar.fp) << isa;
    EXPECT_NE(kernels().q8, kScalar.q8) << isa;
    EXPECT_NE(kernels().q4, kScalar.q4) << isa;
    EXPECT_NE(kernels().prep_row, kScalar.prep_row) << isa;
    // The fp kernel is Highway's copy for this level's target: its bf16 loop
    // reads x in chunks of two vectors of fp32 lanes (hwy/gemv_fp.cpp), so
    // another target's copy in the table would show another width.
    ASSERT_NE(kernels().bf16_pair_cols, nullptr) << isa;
    const std::string level = isa;
    const int vector_bytes = level == "avx512" ? 64 : level == "avx2" ? 32 : 16;
    EXPECT_EQ(kernels().bf16_pair_cols(), 2 * vector_bytes / 4) << isa;
    // The levels with a fused int8 GEMM and attention head of their own
    // (gemm_int8.h, attention_int8.h).
    const std::string name = isa;
    if (name == "avx512" || name == "dotprod" || name == "i8mm") {
      EXPECT_NE(kernels().int8_gemm, nullptr) << isa;
      EXPECT_NE(kernels().int8_head, nullptr) << isa;
      EXPECT_NE(kernels().int8_head_scratch, nullptr) << isa;
    }
  }
  md::detail::gemv_force_isa(nullptr);
#if defined(__aarch64__)
  EXPECT_GE(vector_levels, 1) << "every aarch64 CPU has NEON";
#else
  (void)vector_levels;
#endif
}

TEST(Gemv, DispatchNames) {
  const std::string best = md::detail::gemv_best_isa();
#if defined(__x86_64__)
  EXPECT_TRUE(best == "avx512" || best == "avx2" || best == "scalar");
#elif defined(__aarch64__)
  EXPECT_TRUE(best == "i8mm" || best == "dotprod" || best == "neon") << "every aarch64 CPU has NEON";
#endif
  // The level the CPU should get, where the runner knows it (the aarch64
  // suite under qemu: -cpu cortex-a72 is plain NEON, -cpu max has i8mm).
  if (const char* want = std::getenv("MOONDREAM_EXPECT_BEST_ISA")) {
    EXPECT_EQ(best, want);
  }
  EXPECT_EQ(md::detail::gemv_isas().back(), best);
  EXPECT_TRUE(md::detail::gemv_force_isa("scalar"));
  EXPECT_STREQ(md::gemv_isa(), "scalar");
  EXPECT_FALSE(md::detail::gemv_force_isa("sse9"));
  EXPECT_STREQ(md::gemv_isa(), "scalar");
  const char* env = std::getenv("MOONDREAM_ISA");
  const std::string saved = env ? env : "";
  unsetenv("MOONDREAM_ISA");
  md::detail::gemv_force_isa(nullptr);
  EXPECT_EQ(std::string(md::gemv_isa()), best);
  // The environment variable can only lower the choice.
  setenv("MOONDREAM_ISA", "scalar", 1);
  md::detail::gemv_force_isa(nullptr);
  EXPECT_STREQ(md::gemv_isa(), "scalar");
  setenv("MOONDREAM_ISA", "generic", 1);
  md::detail::gemv_force_isa(nullptr);
  EXPECT_STREQ(md::gemv_isa(), "scalar");
  setenv("MOONDREAM_ISA", "avx9000", 1);
  md::detail::gemv_force_isa(nullptr);
  EXPECT_EQ(std::string(md::gemv_isa()), best);
  if (env) {
    setenv("MOONDREAM_ISA", saved.c_str(), 1);
  } else {
    unsetenv("MOONDREAM_ISA");
  }
  md::detail::gemv_force_isa(nullptr);
}

TEST(Gemv, AllFormatsAllIsasMatchNaive) {
  uint32_t seed = 1;
  for (const std::string& isa : isas()) {
    IsaGuard guard(isa);
    ASSERT_TRUE(guard.ok);
    for (WeightFormat f : kFormats) {
      for (const Shape& s : shapes_for(f)) {
        const TestMatrix t(f, s.rows, s.cols, ++seed, s.group);
        const std::vector<float> x = gaussian(size_t(s.cols), ++seed);
        std::vector<float> y(size_t(s.rows), NAN);
        md::gemv_rows(t.w, x.data(), y.data(), 0, s.rows);
        check_exact(t, x, y,
                    isa + " " + md::weight_format_name(f) + " " + std::to_string(s.rows) + "x" +
                        std::to_string(s.cols) + " g" + std::to_string(s.group));
        if (HasFatalFailure()) return;
      }
    }
  }
}

TEST(Gemv, SubrangeOfRowsTouchesOnlyThoseRows) {
  for (const std::string& isa : isas()) {
    IsaGuard guard(isa);
    for (WeightFormat f : kFormats) {
      const TestMatrix t(f, 37, 256, 77, 64);
      const std::vector<float> x = gaussian(256, 78);
      std::vector<float> full(37), part(37, -123.0f);
      md::gemv_rows(t.w, x.data(), full.data(), 0, 37);
      md::gemv_rows(t.w, x.data(), part.data(), 5, 30);
      for (int r = 0; r < 37; ++r) {
        if (r < 5 || r >= 30) {
          EXPECT_EQ(part[size_t(r)], -123.0f);
        } else {
          EXPECT_EQ(part[size_t(r)], full[size_t(r)]) << isa << " " << md::weight_format_name(f) << " row " << r;
        }
      }
    }
  }
}

TEST(Gemv, UnalignedHalfPrecisionWeights) {
  for (const std::string& isa : isas()) {
    IsaGuard guard(isa);
    for (WeightFormat f : {WeightFormat::BF16, WeightFormat::F16}) {
      for (const Shape& s : {Shape{13, 2048, 0}, Shape{9, 37, 0}, Shape{64, 512, 0}}) {
        const TestMatrix t(f, s.rows, s.cols, 500 + uint32_t(s.cols), 0, /*misalign=*/true);
        ASSERT_EQ(reinterpret_cast<uintptr_t>(t.w.data) % 4, 2u);
        const std::vector<float> x = gaussian(size_t(s.cols), 9);
        std::vector<float> y(static_cast<size_t>(s.rows));
        md::gemv_rows(t.w, x.data(), y.data(), 0, s.rows);
        check_exact(t, x, y, isa + " unaligned " + md::weight_format_name(f));
      }
    }
  }
}

TEST(Gemv, ScalarEqualsSimdUpToReassociation) {
  const std::vector<std::string> all = isas();
  for (WeightFormat f : kFormats) {
    const int rows = 45, cols = is_quant(f) ? 2080 : 2051;
    const TestMatrix t(f, rows, cols, 31, 32);
    const std::vector<float> x = gaussian(size_t(cols), 32);
    std::vector<std::vector<float>> ys;
    for (const std::string& isa : all) {
      IsaGuard guard(isa);
      ys.emplace_back(static_cast<size_t>(rows));
      md::gemv_rows(t.w, x.data(), ys.back().data(), 0, rows);
    }
    std::vector<double> xs(x.begin(), x.end());
    if (is_quant(f)) xs = quantised_x(x.data(), cols, 32);
    std::vector<double> ref, mag;
    naive(t.deq, rows, cols, xs, &ref, &mag);
    for (size_t k = 1; k < ys.size(); ++k)
      for (int r = 0; r < rows; ++r)
        EXPECT_NEAR(ys[k][size_t(r)], ys[0][size_t(r)], 4e-6 * mag[size_t(r)] * std::sqrt(double(cols)))
            << all[k] << " vs scalar, " << md::weight_format_name(f) << " row " << r;
  }
}

TEST(Gemv, GemmRowsEqualsRepeatedGemvRows) {
  for (const std::string& isa : isas()) {
    IsaGuard guard(isa);
    for (const auto& [f, per_row] : {std::pair{WeightFormat::F32, false}, std::pair{WeightFormat::BF16, false},
                                     std::pair{WeightFormat::F16, false}, std::pair{WeightFormat::Q8, false},
                                     std::pair{WeightFormat::Q8, true}, std::pair{WeightFormat::Q4, false}}) {
      const int rows = 23, cols = per_row ? 640 : is_quant(f) ? 416 : 419;
      const TestMatrix t(f, rows, cols, 41, per_row ? cols : 32);
      for (int m : {1, 2, 3, 4, 5, 7, 8, 16}) {
        const std::vector<float> X = gaussian(size_t(m) * size_t(cols), 100 + uint32_t(m));
        const int ldy = rows + 3;
        std::vector<float> Y(size_t(m) * size_t(ldy), -7.0f);
        md::gemm_rows(t.w, X.data(), m, Y.data(), ldy, 2, rows);
        for (int i = 0; i < m; ++i) {
          std::vector<float> y(static_cast<size_t>(rows));
          md::gemv_rows(t.w, X.data() + size_t(i) * size_t(cols), y.data(), 2, rows);
          for (int r = 0; r < ldy; ++r) {
            const float got = Y[size_t(i) * size_t(ldy) + size_t(r)];
            if (r < 2 || r >= rows) {
              EXPECT_EQ(got, -7.0f);
            } else {
              EXPECT_EQ(got, y[size_t(r)])
                  << isa << " " << md::weight_format_name(f) << " m=" << m << " i=" << i << " r=" << r;
            }
          }
        }
      }
    }
  }
}

// Q8 rows with one scale each, activations wider than L1's share (5 to 16
// rows of 8192 columns: the AVX-512 kernel's column-chunked pass, counted):
// still each input row's gemv, bit for bit (int32 sums).
TEST(Gemv, WideQ8RowsInChunksEqualRepeatedGemvRows) {
  for (const std::string& isa : isas()) {
    IsaGuard guard(isa);
    // 37 rows from 2: two full tiles of 16 weight rows and a partial one.
    const int rows = 37, cols = 8192;
    const TestMatrix t(WeightFormat::Q8, rows, cols, 43, cols);
    for (int m : {4, 5, 8, 13, 16}) {
      const std::vector<float> X = gaussian(size_t(m) * size_t(cols), 200 + uint32_t(m));
      std::vector<float> Y(size_t(m) * size_t(rows), -7.0f);
      const uint64_t chunked = md::detail::gemv_q8_chunked_calls();
      md::gemm_rows(t.w, X.data(), m, Y.data(), rows, 2, rows);
      if (isa == "avx512") {
        EXPECT_EQ(md::detail::gemv_q8_chunked_calls() - chunked, m > 4 ? 1u : 0u) << "m=" << m;
      }
      for (int i = 0; i < m; ++i) {
        std::vector<float> y(static_cast<size_t>(rows));
        md::gemv_rows(t.w, X.data() + size_t(i) * size_t(cols), y.data(), 2, rows);
        for (int r = 0; r < rows; ++r)
          EXPECT_EQ(Y[size_t(i) * size_t(rows) + size_t(r)], r < 2 ? -7.0f : y[size_t(r)])
              << isa << " m=" << m << " i=" << i << " r=" << r;
      }
    }
  }
}

TEST(Gemv, ThreadedEqualsSingleThreaded) {
  const int saved = md::num_threads();
  for (const std::string& isa : isas()) {
    IsaGuard guard(isa);
    for (WeightFormat f : kFormats) {
      const int rows = 301, cols = 512;
      const TestMatrix t(f, rows, cols, 55, 64);
      const std::vector<float> x = gaussian(size_t(cols), 56);
      std::vector<float> single(static_cast<size_t>(rows)), threaded(static_cast<size_t>(rows));
      md::gemv_rows(t.w, x.data(), single.data(), 0, rows);
      for (int n : {1, 2, 3}) {
        md::set_num_threads(n);
        md::gemv(t.w, x.data(), threaded.data());
        for (int r = 0; r < rows; ++r)
          ASSERT_EQ(threaded[size_t(r)], single[size_t(r)]) << isa << " threads " << n << " row " << r;
      }
      const int m = 5;
      const std::vector<float> X = gaussian(size_t(m) * size_t(cols), 57);
      std::vector<float> Y1(size_t(m) * size_t(rows)), Y2(size_t(m) * size_t(rows));
      md::gemm_rows(t.w, X.data(), m, Y1.data(), rows, 0, rows);
      md::set_num_threads(2);
      md::gemm(t.w, X.data(), m, Y2.data(), rows);
      EXPECT_EQ(Y1, Y2) << isa << " " << md::weight_format_name(f);
    }
  }
  md::set_num_threads(saved);
}

// gemm_chunked: every chunk computed once (its epilogue sees exactly the
// rows it covers, each row once) and the result equal to the serial rows,
// for chunk sizes that do and do not divide the rows, on 1-3 threads.
TEST(Gemv, ChunkedJobsInOneRegionEqualEachProductAlone) {
  // Three products of different formats, shapes and inputs from one counter:
  // each equals gemm_rows exactly and every chunk of every job runs once.
  const int saved = md::num_threads();
  const int m = 2;
  const TestMatrix a(WeightFormat::Q8, 301, 512, 61, 64), b(WeightFormat::Q4, 77, 256, 62, 32),
      c(WeightFormat::BF16, 130, 96, 63);
  const std::vector<float> xa = gaussian(size_t(m) * 512, 64), xb = gaussian(size_t(m) * 256, 65),
                           xc = gaussian(size_t(m) * 96, 66);
  std::vector<float> wa(size_t(m) * 301), wb(size_t(m) * 77), wc(size_t(m) * 130);
  md::gemm_rows(a.w, xa.data(), m, wa.data(), 301, 0, 301);
  md::gemm_rows(b.w, xb.data(), m, wb.data(), 77, 0, 77);
  md::gemm_rows(c.w, xc.data(), m, wc.data(), 130, 0, 130);
  for (int threads : {1, 2, 3})
    for (int chunk : {16, 64}) {
      md::set_num_threads(threads);
      std::vector<float> ya(wa.size(), -1.0f), yb(wb.size(), -1.0f), yc(wc.size(), -1.0f);
      std::atomic<int> calls[3] = {0, 0, 0};
      std::vector<md::GemmJob> jobs;
      jobs.push_back({&a.w, xa.data(), m, ya.data(), 301, [&](int, int) { calls[0].fetch_add(1); }});
      jobs.push_back({&b.w, xb.data(), m, yb.data(), 77, [&](int, int) { calls[1].fetch_add(1); }});
      jobs.push_back({&c.w, xc.data(), m, yc.data(), 130, [&](int, int) { calls[2].fetch_add(1); }});
      md::gemm_chunked(jobs, chunk);
      EXPECT_EQ(ya, wa) << threads << " threads, chunk " << chunk;
      EXPECT_EQ(yb, wb) << threads << " threads, chunk " << chunk;
      EXPECT_EQ(yc, wc) << threads << " threads, chunk " << chunk;
      EXPECT_EQ(calls[0].load(), (301 + chunk - 1) / chunk);
      EXPECT_EQ(calls[1].load(), (77 + chunk - 1) / chunk);
      EXPECT_EQ(calls[2].load(), (130 + chunk - 1) / chunk);
    }
  md::set_num_threads(saved);
}

TEST(Gemv, ChunkedEqualsRowsAndRunsEachChunkOnce) {
  const int saved = md::num_threads();
  const int rows = 301, cols = 512, m = 3;
  for (WeightFormat f : {WeightFormat::Q8, WeightFormat::BF16}) {
    const TestMatrix t(f, rows, cols, 58, 64);
    const std::vector<float> X = gaussian(size_t(m) * size_t(cols), 59);
    std::vector<float> want(size_t(m) * size_t(rows));
    md::gemm_rows(t.w, X.data(), m, want.data(), rows, 0, rows);
    for (int threads : {1, 2, 3})
      for (int chunk : {1, 7, 64, 400}) {
        md::set_num_threads(threads);
        std::vector<float> Y(size_t(m) * size_t(rows), -1.0f);
        std::vector<std::atomic<int>> seen(static_cast<size_t>(rows));
        std::atomic<int> calls{0};
        md::gemm_chunked(t.w, X.data(), m, Y.data(), rows, chunk, [&](int r0, int r1) {
          calls.fetch_add(1);
          EXPECT_EQ(r0 % chunk, 0);
          EXPECT_EQ(r1, std::min(rows, r0 + chunk));
          for (int r = r0; r < r1; ++r) seen[size_t(r)].fetch_add(1);
        });
        EXPECT_EQ(calls.load(), (rows + chunk - 1) / chunk) << threads << " threads, chunk " << chunk;
        for (int r = 0; r < rows; ++r) ASSERT_EQ(seen[size_t(r)].load(), 1) << "row " << r;
        EXPECT_EQ(Y, want) << md::weight_format_name(f) << " " << threads << " threads, chunk " << chunk;
      }
  }
  md::set_num_threads(saved);
  const TestMatrix t(WeightFormat::Q8, 4, 64, 3, 32);
  std::vector<float> x(64), y(4);
  EXPECT_THROW(md::gemm_chunked(t.w, x.data(), 1, y.data(), 4, 0), md::Error);
}

// The split gemm_chunked documents: thread t owns the contiguous run of
// chunks [n·t/T, n·(t+1)/T) and computes a prefix of it front to back; the
// rest of the run, if any, went to the other threads from the back. Holds
// whatever the threads' timing (a thread may even take a whole other run).
TEST(Gemv, ChunkedThreadsStreamTheirOwnRunFrontToBack) {
  const int saved = md::num_threads();
  const int rows = 1000, cols = 256, chunk = 10, n = rows / chunk;
  const TestMatrix t(WeightFormat::Q8, rows, cols, 71, 64);
  const std::vector<float> x = gaussian(size_t(cols), 72);
  for (int threads : {2, 3})
    for (int rep = 0; rep < 5; ++rep) {
      md::set_num_threads(threads);
      std::mutex mu;
      std::vector<std::pair<int, int>> order;  // (thread, chunk) as computed
      std::vector<float> y(static_cast<size_t>(rows));
      md::gemm_chunked(t.w, x.data(), 1, y.data(), rows, chunk, [&](int r0, int) {
        std::lock_guard<std::mutex> lock(mu);
        order.emplace_back(omp_get_thread_num(), r0 / chunk);
      });
      ASSERT_EQ(order.size(), size_t(n));
      for (int run = 0; run < threads; ++run) {
        const int front = n * run / threads, back = n * (run + 1) / threads;
        std::vector<int> by_owner, by_others;
        for (const auto& [thread, c] : order)
          if (c >= front && c < back) (thread == run ? by_owner : by_others).push_back(c);
        for (size_t i = 0; i < by_owner.size(); ++i)
          EXPECT_EQ(by_owner[i], front + int(i)) << threads << " threads, run " << run;
        // The others' chunks: the run's tail, each helper from the back.
        std::vector<int> tail = by_others;
        std::sort(tail.begin(), tail.end());
        for (size_t i = 0; i < tail.size(); ++i)
          EXPECT_EQ(tail[i], front + int(by_owner.size() + i)) << threads << " threads, run " << run;
        for (int helper = 0; helper < threads; ++helper) {
          int last = back;
          for (const auto& [thread, c] : order)
            if (thread == helper && helper != run && c >= front && c < back) {
              EXPECT_LT(c, last) << "helper " << helper << " took run " << run << "'s chunks front to back";
              last = c;
            }
        }
      }
    }
  md::set_num_threads(saved);
}

TEST(Gemv, RejectsBadArguments) {
  const TestMatrix t(WeightFormat::Q8, 4, 64, 3, 32);
  std::vector<float> x(64), y(4);
  EXPECT_THROW(md::gemv_rows(t.w, x.data(), y.data(), 0, 5), md::Error);
  WeightMatrix bad = t.w;
  bad.group = 48;
  EXPECT_THROW(md::gemv_rows(bad, x.data(), y.data(), 0, 4), md::Error);
  bad = t.w;
  bad.aux = nullptr;
  EXPECT_THROW(md::gemv(bad, x.data(), y.data()), md::Error);
}

// Relative RMS error of the dequantised weights, overall and per group.
struct QErr {
  double overall = 0, worst_group = 0, mean_group = 0;
};

QErr quant_error(const std::vector<float>& orig, const std::vector<float>& deq, int group) {
  QErr e;
  double num = 0, den = 0;
  const size_t ng = orig.size() / size_t(group);
  for (size_t g = 0; g < ng; ++g) {
    double n = 0, d = 0;
    for (int c = 0; c < group; ++c) {
      const double o = orig[g * size_t(group) + size_t(c)], q = deq[g * size_t(group) + size_t(c)];
      n += (o - q) * (o - q);
      d += o * o;
    }
    num += n;
    den += d;
    const double rel = d > 0 ? std::sqrt(n / d) : 0.0;
    e.worst_group = std::max(e.worst_group, rel);
    e.mean_group += rel / double(ng);
  }
  e.overall = std::sqrt(num / den);
  return e;
}

// Bounds, measured on Gaussian weights (the harder case: for group 32 the
// absmax grid of symmetric int8 gives ≈ 0.53 %, symmetric 4-bit with the scale
// search ≈ 8.1 %, about the floor for 16 uniform levels) and on uniform
// weights (≈ 0.39 % / ≈ 6.5 %: Q8 ≤ 0.5 %, Q4 ≤ 8 %).
TEST(Quant, ErrorBounds) {
  for (const std::string& isa : isas()) {
    IsaGuard guard(isa);
    for (int group : {32, 64, 128}) {
      const int rows = 64, cols = 2048;
      const TestMatrix q8(WeightFormat::Q8, rows, cols, 900 + uint32_t(group), group);
      const QErr e8 = quant_error(q8.f32, q8.deq, group);
      const double b8 = group == 32 ? 0.0055 : group == 64 ? 0.0061 : 0.0066;
      EXPECT_LE(e8.overall, b8) << isa << " Q8 g" << group;
      EXPECT_LE(e8.mean_group, b8) << isa << " Q8 g" << group;
      EXPECT_LE(e8.worst_group, 0.012) << isa << " Q8 g" << group;
      const TestMatrix q4(WeightFormat::Q4, rows, cols, 900 + uint32_t(group), group);
      const QErr e4 = quant_error(q4.f32, q4.deq, group);
      const double b4 = group == 32 ? 0.083 : group == 64 ? 0.092 : 0.099;
      EXPECT_LE(e4.overall, b4) << isa << " Q4 g" << group;
      EXPECT_LE(e4.mean_group, b4) << isa << " Q4 g" << group;
      EXPECT_LE(e4.worst_group, 0.16) << isa << " Q4 g" << group;
      if (group == 32)
        std::printf(
            "[%s] gaussian g32 rel RMS: Q8 %.3f%% (worst group %.3f%%), Q4 %.2f%% (mean group %.2f%%, "
            "worst %.2f%%)\n",
            isa.c_str(), 100 * e8.overall, 100 * e8.worst_group, 100 * e4.overall, 100 * e4.mean_group,
            100 * e4.worst_group);
    }
    std::mt19937 rng(3);
    std::uniform_real_distribution<float> u(-0.1f, 0.1f);
    const int rows = 32, cols = 2048;
    std::vector<float> f(size_t(rows) * size_t(cols));
    for (auto& v : f) v = u(rng);
    for (WeightFormat t : {WeightFormat::Q8, WeightFormat::Q4}) {
      const auto q = md::quantize(f.data(), WeightFormat::F32, rows, cols, t, 32);
      std::vector<float> deq(f.size());
      for (int r = 0; r < rows; ++r) md::dequantize_row(q.view(), r, deq.data() + size_t(r) * size_t(cols));
      const QErr e = quant_error(f, deq, 32);
      const double bound = t == WeightFormat::Q8 ? 0.005 : 0.08;
      EXPECT_LE(e.mean_group, bound) << isa << " uniform " << md::weight_format_name(t);
      EXPECT_LE(e.overall, bound) << isa << " uniform " << md::weight_format_name(t);
    }
  }
}

TEST(Quant, ProductErrorVsFp32) {
  // y of the quantised kernels (int8 activations included) vs the fp32
  // product with the original weights, and vs the dequantised weights (the
  // error of the int8 activations alone).
  const int rows = 256, cols = 2048;
  for (const std::string& isa : isas()) {
    IsaGuard guard(isa);
    for (WeightFormat f : {WeightFormat::Q8, WeightFormat::Q4}) {
      const TestMatrix t(f, rows, cols, 71, 32);
      const std::vector<float> x = gaussian(size_t(cols), 72);
      std::vector<float> y(static_cast<size_t>(rows));
      md::gemv_rows(t.w, x.data(), y.data(), 0, rows);
      std::vector<double> xd(x.begin(), x.end()), ref, mag, refq;
      naive(t.f32, rows, cols, xd, &ref, &mag);
      naive(t.deq, rows, cols, xd, &refq, &mag);
      double num = 0, den = 0, numq = 0;
      for (int r = 0; r < rows; ++r) {
        num += (y[size_t(r)] - ref[size_t(r)]) * (y[size_t(r)] - ref[size_t(r)]);
        numq += (y[size_t(r)] - refq[size_t(r)]) * (y[size_t(r)] - refq[size_t(r)]);
        den += ref[size_t(r)] * ref[size_t(r)];
      }
      const double rel = std::sqrt(num / den), relq = std::sqrt(numq / den);
      EXPECT_LE(relq, 0.01) << isa << " " << md::weight_format_name(f);
      EXPECT_LE(rel, f == WeightFormat::Q8 ? 0.01 : 0.09) << isa << " " << md::weight_format_name(f);
      std::printf("[%s] %s: rel error of y vs fp32 weights %.3f%%, vs dequantised weights %.3f%%\n", isa.c_str(),
                  md::weight_format_name(f), 100 * rel, 100 * relq);
    }
  }
}

TEST(Quant, SourceFormatsAgree) {
  // Quantising BF16/F16 storage (misaligned) equals quantising its fp32 widening.
  const int rows = 17, cols = 384;
  const std::vector<float> f = gaussian(size_t(rows) * size_t(cols), 5, 0.1f);
  for (WeightFormat src : {WeightFormat::BF16, WeightFormat::F16}) {
    std::vector<uint16_t> h(f.size() + 1);
    std::vector<float> widened(f.size());
    for (size_t i = 0; i < f.size(); ++i) {
      h[i + 1] = src == WeightFormat::BF16 ? md::f32_to_bf16(f[i]) : md::f32_to_f16(f[i]);
      widened[i] = src == WeightFormat::BF16 ? md::bf16_to_f32(h[i + 1]) : md::f16_to_f32(h[i + 1]);
    }
    for (WeightFormat target : {WeightFormat::Q8, WeightFormat::Q4}) {
      const auto a = md::quantize(h.data() + 1, src, rows, cols, target, 64);
      const auto b = md::quantize(widened.data(), WeightFormat::F32, rows, cols, target, 64);
      EXPECT_EQ(a.data, b.data);
      EXPECT_EQ(a.aux, b.aux);
    }
  }
}

TEST(Quant, Q8IdenticalOnEveryIsa) {
  const int rows = 20, cols = 4096;
  const std::vector<float> f = gaussian(size_t(rows) * size_t(cols), 6);
  std::vector<md::QuantizedWeights> qs;
  for (const std::string& isa : isas()) {
    IsaGuard guard(isa);
    qs.push_back(md::quantize(f.data(), WeightFormat::F32, rows, cols, WeightFormat::Q8, 32));
  }
  for (size_t k = 1; k < qs.size(); ++k) {
    EXPECT_EQ(qs[k].data, qs[0].data);
    EXPECT_EQ(qs[k].aux, qs[0].aux);
  }
}

TEST(Quant, SpecialValuesAndLayout) {
  // Zero groups, a lone value, and the documented layouts.
  const int rows = 2, cols = 224;  // one 128-column block + a 96-column tail
  std::vector<float> f(size_t(rows) * size_t(cols), 0.0f);
  for (int c = 0; c < cols; ++c) f[size_t(cols + c)] = float(c % 16) - 8.0f;  // row 1: exact Q4 values
  f[5] = 3.0f;
  for (WeightFormat target : {WeightFormat::Q8, WeightFormat::Q4}) {
    const auto q = md::quantize(f.data(), WeightFormat::F32, rows, cols, target, 32);
    std::vector<float> row(static_cast<size_t>(cols));
    md::dequantize_row(q.view(), 0, row.data());
    for (int c = 0; c < cols; ++c) EXPECT_NEAR(row[size_t(c)], c == 5 ? 3.0f : 0.0f, 3e-3f) << c;
    md::dequantize_row(q.view(), 1, row.data());
    for (int c = 0; c < cols; ++c) EXPECT_NEAR(row[size_t(c)], float(c % 16) - 8.0f, 0.04f) << c;
  }
  const auto q4 = md::quantize(f.data(), WeightFormat::F32, rows, cols, WeightFormat::Q4, 32);
  // One 16-row panel (rows 2…15 padding): 28 lines of 64 bytes, scales
  // [7 groups][16 rows].
  ASSERT_EQ(q4.data.size(), size_t(16 * cols / 2));
  ASSERT_EQ(q4.aux.size(), size_t(16 * cols / 32 * 2));
  ASSERT_EQ(md::weight_bytes(q4.view()), q4.data.size() + q4.aux.size());
  // Row 1: scale 1, q = value + 8 = column % 16; line b byte 4·1 + j holds
  // column 8b + j (low nibble) and 8b + 4 + j (high).
  EXPECT_EQ(q4.data[4 + 3], uint8_t(3 | (7 << 4)));
  EXPECT_EQ(q4.data[17 * 64 + 4 + 2], uint8_t((138 % 16) | ((142 % 16) << 4)));
  const auto* d = reinterpret_cast<const uint16_t*>(q4.aux.data());
  EXPECT_NEAR(md::f16_to_f32(d[md::q4_scale_index(cols, 32, 1, 2)]), 1.0f, 0.01f);
  EXPECT_EQ(d[2 * 16 + 1], d[md::q4_scale_index(cols, 32, 1, 2)]);
  // Padding rows: q = 8 (zero), scale 0.
  EXPECT_EQ(q4.data[5 * 64 + 4 * 9 + 1], 0x88);
  EXPECT_EQ(d[md::q4_scale_index(cols, 32, 9, 6)], 0);
  const auto q8 = md::quantize(f.data(), WeightFormat::F32, rows, cols, WeightFormat::Q8, 32);
  EXPECT_EQ(q8.data[5], uint8_t(127 + 128));
  EXPECT_EQ(q8.data[6], uint8_t(128));
}

TEST(Quant, RejectsBadGroups) {
  std::vector<float> f(96 * 2, 1.0f);
  EXPECT_THROW(md::quantize(f.data(), WeightFormat::F32, 2, 96, WeightFormat::Q8, 64), md::Error);
  EXPECT_THROW(md::quantize(f.data(), WeightFormat::F32, 2, 96, WeightFormat::Q4, 48), md::Error);
  EXPECT_THROW(md::quantize(f.data(), WeightFormat::F32, 2, 96, WeightFormat::BF16, 32), md::Error);
  EXPECT_NO_THROW(md::quantize(f.data(), WeightFormat::F32, 2, 96, WeightFormat::Q4, 32));
}

}  // namespace
