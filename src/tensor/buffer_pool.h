#pragma once
// Large activation and KV-cache buffers from a process-wide pool of mapped
// blocks that are kept, not unmapped, when freed.
//
// Why: touching fresh anonymous memory costs a page fault per 4 KiB page. On
// the virtual machines this engine targets that is ~3 ms per MB (0.9 s for
// the 287 MB KV cache of a 730-token image prefix, more than the prefill's
// int8 GEMMs), while re-touching memory already mapped costs ~0.05 ms per MB
// (measured with bench/moondream_bench and a first-touch loop). Requests
// repeat the same shapes, so freed blocks are reused as they are.
//
// Blocks of at least kPoolMinBytes are rounded up to 2 MiB (transparent huge
// page size) and asked for huge pages; smaller requests use operator new.
// Idle blocks beyond kPoolIdleLimit are unmapped. Sanitizer builds bypass the
// pool so that ASan still sees every buffer overflow.
#include <cstddef>
#include <vector>

namespace md {

inline constexpr size_t kPoolMinBytes = size_t(1) << 20;
inline constexpr size_t kPoolIdleLimit = size_t(768) << 20;

void* pool_allocate(size_t bytes);
// The size of the block the pool's rule gives a request of `bytes` (rounded
// up to whole 2 MiB pages from kPoolMinBytes): what that memory costs.
size_t pool_block_bytes(size_t bytes);
void pool_release(void* p, size_t bytes);
// Maps `count` idle blocks that later allocations of `bytes` each will take
// and touches their pages, on a background thread, one block at a time
// (returns at once; stays within kPoolIdleLimit): startup stays short, and
// the pages are ready by the time a first request needs them (a request that
// comes sooner maps its own).
void pool_reserve_in_background(size_t bytes, int count);
// Blocks until background reservations are done (benchmarks: measure the
// stages without one running beside them).
void pool_wait_for_reservations();
// Bytes held idle in the pool now (tests, metrics).
size_t pool_idle_bytes();
// False in sanitizer builds, where every buffer comes from operator new.
bool pool_enabled();

template <class T>
struct PoolAllocator {
  using value_type = T;
  PoolAllocator() = default;
  template <class U>
  PoolAllocator(const PoolAllocator<U>&) {}
  T* allocate(size_t n) { return static_cast<T*>(pool_allocate(n * sizeof(T))); }
  void deallocate(T* p, size_t n) { pool_release(p, n * sizeof(T)); }
  template <class U>
  bool operator==(const PoolAllocator<U>&) const {
    return true;
  }
};

// A std::vector whose storage comes from the pool.
template <class T>
using PooledVector = std::vector<T, PoolAllocator<T>>;

}  // namespace md
