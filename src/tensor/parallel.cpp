#include "tensor/parallel.h"

#include <omp.h>

#include <algorithm>
#include <atomic>

namespace md {
namespace {

// One thread pool for everything: OpenMP's. oneDNN (the GEMMs) runs on the
// same OpenMP runtime, so the engine's loops and the BLAS never compete for
// cores.
int g_threads = 0;

int threads_now() {
  if (g_threads <= 0) g_threads = std::max(1, omp_get_num_procs());
  return g_threads;
}

}  // namespace

void set_num_threads(int n) {
  g_threads = n > 0 ? n : std::max(1, omp_get_num_procs());
  omp_set_num_threads(g_threads);
}

int num_threads() { return threads_now(); }

bool in_parallel_region() { return omp_in_parallel() != 0; }

void parallel_for(size_t n, const std::function<void(size_t, size_t)>& fn) {
  if (n == 0) return;
  const size_t parts = std::min<size_t>(n, size_t(threads_now()));
  // Nested calls (from inside a parallel region) run serially.
  if (parts <= 1 || in_parallel_region()) {
    fn(0, n);
    return;
  }
#pragma omp parallel num_threads(int(parts))
  {
    const size_t t = size_t(omp_get_thread_num()), p = size_t(omp_get_num_threads());
    fn(n * t / p, n * (t + 1) / p);
  }
}

void parallel_for_each(size_t n, const std::function<void(size_t i, size_t next)>& fn) {
  if (n == 0) return;
  const size_t parts = std::min<size_t>(n, size_t(threads_now()));
  if (parts <= 1 || in_parallel_region()) {
    for (size_t i = 0; i < n; ++i) fn(i, i + 1);
    return;
  }
  std::atomic<size_t> counter{0};
#pragma omp parallel num_threads(int(parts))
  {
    size_t i = counter.fetch_add(1, std::memory_order_relaxed);
    while (i < n) {
      const size_t next = std::min(n, counter.fetch_add(1, std::memory_order_relaxed));
      fn(i, next);
      i = next;
    }
  }
}

}  // namespace md
