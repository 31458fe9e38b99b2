#pragma once
// Parallel loops over the engine's work (GEMM blocks, attention heads, rows),
// on OpenMP's thread pool, which oneDNN's GEMMs share: one pool, no
// oversubscription.
#include <cstddef>
#include <functional>

namespace md {

// Number of threads used by parallel_for and the GEMMs (default: all cores).
void set_num_threads(int n);
int num_threads();

// Calls fn(begin, end) on disjoint chunks covering [0, n), in parallel, and
// returns when all are done. Nested calls run serially.
void parallel_for(size_t n, const std::function<void(size_t, size_t)>& fn);
// True inside a parallel_for body (where nested loops and oneDNN run serially).
bool in_parallel_region();

}  // namespace md
