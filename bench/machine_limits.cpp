#include "machine_limits.h"

// GCC 12's AVX-512 headers trip these on their own _mm512_undefined_*
// helpers (GCC bug 105593).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <immintrin.h>
#include <omp.h>

#include <chrono>
#include <cstdint>
#include <vector>

namespace md::bench {
namespace {

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// 12 independent accumulators hide the FMA latency (4 cycles × 2 ports + slack).
__attribute__((target("avx512f"))) double fma_avx512(long iters) {
  __m512 a[12];
  for (int i = 0; i < 12; ++i) a[i] = _mm512_set1_ps(float(i) * 1e-3f);
  const __m512 b = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
  for (long it = 0; it < iters; ++it)
    for (int i = 0; i < 12; ++i) a[i] = _mm512_fmadd_ps(a[i], b, c);
  __m512 s = a[0];
  for (int i = 1; i < 12; ++i) s = _mm512_add_ps(s, a[i]);
  volatile float sink = _mm512_reduce_add_ps(s);
  (void)sink;
  return double(iters) * 12 * 16 * 2;
}

__attribute__((target("avx2,fma"))) double fma_avx2(long iters) {
  __m256 a[12];
  for (int i = 0; i < 12; ++i) a[i] = _mm256_set1_ps(float(i) * 1e-3f);
  const __m256 b = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
  for (long it = 0; it < iters; ++it)
    for (int i = 0; i < 12; ++i) a[i] = _mm256_fmadd_ps(a[i], b, c);
  __m256 s = a[0];
  for (int i = 1; i < 12; ++i) s = _mm256_add_ps(s, a[i]);
  float out[8];
  _mm256_storeu_ps(out, s);
  volatile float sink = out[0];
  (void)sink;
  return double(iters) * 12 * 8 * 2;
}

__attribute__((target("avx512f,avx512bw,avx512vnni"))) double vnni_avx512(long iters) {
  __m512i a[12];
  for (int i = 0; i < 12; ++i) a[i] = _mm512_set1_epi32(i);
  const __m512i b = _mm512_set1_epi8(3), c = _mm512_set1_epi8(-2);
  for (long it = 0; it < iters; ++it)
    for (int i = 0; i < 12; ++i) a[i] = _mm512_dpbusd_epi32(a[i], b, c);
  __m512i s = a[0];
  for (int i = 1; i < 12; ++i) s = _mm512_add_epi32(s, a[i]);
  volatile int sink = _mm512_reduce_add_epi32(s);
  (void)sink;
  return double(iters) * 12 * 64 * 2;  // 64 multiply-adds per instruction
}

template <typename F>
double parallel_rate(int threads, F kernel, long iters) {
  double best = 0;
  for (int rep = 0; rep < 3; ++rep) {
    double ops = 0;
    const double t0 = now();
#pragma omp parallel num_threads(threads) reduction(+ : ops)
    ops += kernel(iters);
    const double dt = now() - t0;
    best = std::max(best, ops / dt);
  }
  return best;
}

double read_bandwidth(int threads) {
  const size_t n = size_t(1) << 28;  // 1 GiB of floats
  std::vector<float> buf(n);
#pragma omp parallel for num_threads(threads)
  for (size_t i = 0; i < n; ++i) buf[i] = float(i & 1023);
  double best = 0;
  for (int rep = 0; rep < 4; ++rep) {
    double sum = 0;
    const double t0 = now();
#pragma omp parallel for num_threads(threads) reduction(+ : sum)
    for (size_t i = 0; i < n; i += 16) {
      float s = 0;
      for (int k = 0; k < 16; ++k) s += buf[i + k];
      sum += s;
    }
    const double dt = now() - t0;
    volatile double sink = sum;
    (void)sink;
    best = std::max(best, double(n) * sizeof(float) / dt);
  }
  return best / 1e9;
}

}  // namespace

MachineLimits measure_machine_limits(int threads) {
  MachineLimits m;
  m.threads = threads;
  const long iters = 20'000'000;
  if (__builtin_cpu_supports("avx512f")) {
    m.isa = "avx512";
    m.fp32_gflops = parallel_rate(threads, fma_avx512, iters) / 1e9;
    if (__builtin_cpu_supports("avx512vnni")) m.int8_gops = parallel_rate(threads, vnni_avx512, iters) / 1e9;
  } else if (__builtin_cpu_supports("avx2")) {
    m.isa = "avx2";
    m.fp32_gflops = parallel_rate(threads, fma_avx2, iters) / 1e9;
  } else {
    m.isa = "scalar";
  }
  m.read_gbps = read_bandwidth(threads);
  return m;
}

}  // namespace md::bench
