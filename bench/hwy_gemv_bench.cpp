// Highway or hand-written intrinsics? The bf16 decode GEMV (the kernel that
// streams the weights as stored: `--quantization none`) written once with
// Highway (libhwy, dynamic dispatch over the targets it compiles for) beside
// the engine's own kernels (src/tensor/x86/, src/tensor/arm/) on the same
// shapes, one thread and all threads, in GB/s of weights streamed. Prints
// one row per shape; the choice it supports is recorded in docs/BENCHMARKS.md.
//
//   build/hwy_gemv_bench [--reps N]

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "bench/hwy_gemv_bench.cpp"
#include <hwy/foreach_target.h>  // (re-includes this file once per target)

#include <hwy/highway.h>

#include <cstdint>

HWY_BEFORE_NAMESPACE();
namespace md_hwy {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// y[r] = Σ_c bf16(w[r, c]) · x[c] for r in [r0, r1); cols a multiple of 4
// vectors. Four accumulators per row (the FMA latency), the bf16 halves
// widened by PromoteTo (a 16-bit shift).
void GemvBf16(const uint16_t* w, const float* x, int cols, int r0, int r1, float* y) {
  const hn::ScalableTag<float> df;
  const hn::Rebind<hwy::bfloat16_t, decltype(df)> dbf;
  const size_t n = hn::Lanes(df);
  for (int r = r0; r < r1; ++r) {
    const auto* row = reinterpret_cast<const hwy::bfloat16_t*>(w + size_t(r) * size_t(cols));
    auto a0 = hn::Zero(df), a1 = hn::Zero(df), a2 = hn::Zero(df), a3 = hn::Zero(df);
    for (size_t c = 0; c + 4 * n <= size_t(cols); c += 4 * n) {
      a0 = hn::MulAdd(hn::PromoteTo(df, hn::LoadU(dbf, row + c)), hn::LoadU(df, x + c), a0);
      a1 = hn::MulAdd(hn::PromoteTo(df, hn::LoadU(dbf, row + c + n)), hn::LoadU(df, x + c + n), a1);
      a2 = hn::MulAdd(hn::PromoteTo(df, hn::LoadU(dbf, row + c + 2 * n)), hn::LoadU(df, x + c + 2 * n), a2);
      a3 = hn::MulAdd(hn::PromoteTo(df, hn::LoadU(dbf, row + c + 3 * n)), hn::LoadU(df, x + c + 3 * n), a3);
    }
    y[r] = hn::GetLane(hn::SumOfLanes(df, hn::Add(hn::Add(a0, a1), hn::Add(a2, a3))));
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace md_hwy
HWY_AFTER_NAMESPACE();

#if HWY_ONCE

#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "tensor/dtype.h"
#include "tensor/gemv.h"
#include "tensor/parallel.h"

namespace md_hwy {
HWY_EXPORT(GemvBf16);
}  // namespace md_hwy

namespace {

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"bf16 GEMV: Highway against the engine's intrinsics"};
  int reps = 7;
  app.add_option("--reps", reps, "Timed repetitions per row (best counts)");
  CLI11_PARSE(app, argc, argv);
  const int threads = md::num_threads();
  // Highway dispatches to the best target both compiled and supported (the
  // lowest bit).
  const int64_t targets = hwy::SupportedTargets() & HWY_TARGETS;
  std::printf("engine kernels: %s; Highway target: %s\n\n", md::gemv_isa(), hwy::TargetName(targets & -targets));
  std::printf("| %-28s | %-7s | %16s | %16s | %8s |\n", "shape (rows x cols, bf16)", "threads", "engine GB/s",
              "Highway GB/s", "Hwy/eng");
  std::printf("|%s|%s|%s|%s|%s|\n", std::string(30, '-').c_str(), std::string(9, '-').c_str(),
              std::string(18, '-').c_str(), std::string(18, '-').c_str(), std::string(10, '-').c_str());
  // The text model's products: qkv 6144x2048, fc1 8192x2048, fc2 2048x8192;
  // several matrices cycled so that each call streams from memory.
  for (const auto& [rows, cols] : {std::pair{6144, 2048}, std::pair{8192, 2048}, std::pair{2048, 8192}}) {
    const int copies = 4;
    const size_t n = size_t(rows) * size_t(cols);
    std::vector<uint16_t> w(n * copies);
    std::mt19937 rng(7);
    std::normal_distribution<float> dist(0.0f, 0.05f);
    for (auto& v : w) v = md::f32_to_bf16(dist(rng));
    std::vector<float> x(static_cast<size_t>(cols)), y_eng(static_cast<size_t>(rows)), y_hwy(static_cast<size_t>(rows));
    for (auto& v : x) v = dist(rng);
    for (const int t : {1, threads}) {
      auto run = [&](bool hwy_kernel, int copy, std::vector<float>& y) {
        md::WeightMatrix m;
        m.format = md::WeightFormat::BF16;
        m.rows = rows;
        m.cols = cols;
        m.data = w.data() + size_t(copy) * n;
        md::parallel_for(size_t(t), [&](size_t b, size_t e) {
          for (size_t i = b; i < e; ++i) {
            const int r0 = int(size_t(rows) * i / size_t(t)), r1 = int(size_t(rows) * (i + 1) / size_t(t));
            if (hwy_kernel) HWY_DYNAMIC_DISPATCH(md_hwy::GemvBf16)
            (static_cast<const uint16_t*>(m.data), x.data(), cols, r0, r1, y.data());
            else md::gemv_rows(m, x.data(), y.data(), r0, r1);
          }
        });
      };
      double best[2] = {1e9, 1e9};
      for (int rep = 0; rep < reps; ++rep)
        for (int k = 0; k < 2; ++k) {  // alternating, so that drift hits both alike
          const double t0 = now();
          run(k == 1, rep % copies, k == 1 ? y_hwy : y_eng);
          best[k] = std::min(best[k], now() - t0);
        }
      run(false, 0, y_eng);
      run(true, 0, y_hwy);
      double worst = 0, scale = 0;
      for (int r = 0; r < rows; ++r) {
        worst = std::max(worst, double(std::fabs(y_eng[r] - y_hwy[r])));
        scale = std::max(scale, double(std::fabs(y_eng[r])));
      }
      if (worst > 1e-4 * (1 + scale)) {
        std::fprintf(stderr, "the two kernels disagree: %g (of %g)\n", worst, scale);
        return 1;
      }
      const double bytes = double(n) * 2;
      std::printf("| %-28s | %7d | %16.1f | %16.1f | %7.2fx |\n",
                  (std::to_string(rows) + " x " + std::to_string(cols)).c_str(), t, bytes / best[0] / 1e9,
                  bytes / best[1] / 1e9, best[0] / best[1]);
    }
  }
  return 0;
}

#endif  // HWY_ONCE
