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
// Calls fn(i, next) for every i in [0, n), each thread taking indices from
// a shared counter one at a time: for tasks a thread at a time (GEMM panels,
// attention heads), where a fixed split would leave the faster thread
// waiting for the slower (cores of a shared VM do not run at the same
// speed). A thread claims its next index before it runs fn on the current
// one; `next` is that index (n when there is none), so fn can prefetch its
// data. Nested calls run serially, in order.
void parallel_for_each(size_t n, const std::function<void(size_t i, size_t next)>& fn);
// True inside a parallel_for body (where nested loops and oneDNN run serially).
bool in_parallel_region();

}  // namespace md
