#pragma once
// A small persistent thread pool for the engine's own loops (attention heads,
// row-wise norms). The BLAS library keeps its own threads for GEMMs; the two
// never run at the same time, so the cores are not oversubscribed.
#include <cstddef>
#include <functional>

namespace md {

// Number of threads used by parallel_for and the BLAS (default: all cores).
void set_num_threads(int n);
int num_threads();

// Calls fn(begin, end) on disjoint chunks covering [0, n), in parallel, and
// returns when all are done. Nested calls run serially.
void parallel_for(size_t n, const std::function<void(size_t, size_t)>& fn);

}  // namespace md
