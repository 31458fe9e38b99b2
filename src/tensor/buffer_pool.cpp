#include "tensor/buffer_pool.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstring>
#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>
#include <new>
#include <unordered_map>

namespace md {
namespace {

#if defined(__SANITIZE_ADDRESS__)
constexpr bool kPoolEnabled = false;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool kPoolEnabled = false;
#else
constexpr bool kPoolEnabled = true;
#endif
#else
constexpr bool kPoolEnabled = true;
#endif

constexpr size_t kHugePage = size_t(2) << 20;

struct Pool {
  std::mutex mu;
  std::multimap<size_t, void*> idle;       // size → block
  std::unordered_map<void*, size_t> live;  // block → mapped size
  size_t idle_bytes = 0;
  int reserving = 0;  // background reservations running
  std::condition_variable reserved;
};

Pool& pool() {
  static Pool* p = new Pool;  // never destroyed: buffers may be freed during static destruction
  return *p;
}

void* map_block(size_t size) {
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
#if defined(MADV_HUGEPAGE)
  madvise(p, size, MADV_HUGEPAGE);  // advisory: fewer, larger faults where the kernel allows
#endif
  return p;
}

// Mapped sizes are whole huge pages.
size_t block_size(size_t bytes) { return (bytes + kHugePage - 1) / kHugePage * kHugePage; }

}  // namespace

size_t pool_block_bytes(size_t bytes) { return bytes < kPoolMinBytes ? bytes : block_size(bytes); }

void* pool_allocate(size_t bytes) {
  if (!kPoolEnabled || bytes < kPoolMinBytes) return ::operator new(bytes);
  const size_t size = block_size(bytes);
  Pool& p = pool();
  {
    std::lock_guard<std::mutex> lock(p.mu);
    // The smallest idle block that fits without wasting more than half again.
    auto it = p.idle.lower_bound(size);
    if (it != p.idle.end() && it->first <= size + size / 2) {
      void* block = it->second;
      p.live[block] = it->first;
      p.idle_bytes -= it->first;
      p.idle.erase(it);
      return block;
    }
  }
  void* block = map_block(size);
  std::lock_guard<std::mutex> lock(p.mu);
  p.live[block] = size;
  return block;
}

void pool_release(void* ptr, size_t bytes) {
  if (!ptr) return;
  if (!kPoolEnabled || bytes < kPoolMinBytes) {
    ::operator delete(ptr);
    return;
  }
  Pool& p = pool();
  std::vector<std::pair<void*, size_t>> unmap;
  {
    std::lock_guard<std::mutex> lock(p.mu);
    auto live = p.live.find(ptr);
    if (live == p.live.end()) return;  // not ours: cannot happen through PoolAllocator
    const size_t size = live->second;
    p.live.erase(live);
    if (size > kPoolIdleLimit) {
      unmap.emplace_back(ptr, size);
    } else {
      p.idle.emplace(size, ptr);
      p.idle_bytes += size;
      // Over the limit: give back the largest idle blocks first.
      while (p.idle_bytes > kPoolIdleLimit) {
        auto big = std::prev(p.idle.end());
        unmap.emplace_back(big->second, big->first);
        p.idle_bytes -= big->first;
        p.idle.erase(big);
      }
    }
  }
  for (const auto& [block, size] : unmap) munmap(block, size);
}

void pool_reserve_in_background(size_t bytes, int count) {
  if (!kPoolEnabled || bytes < kPoolMinBytes || count <= 0) return;
  std::lock_guard<std::mutex> lock(pool().mu);
  ++pool().reserving;
  std::thread([bytes, count] {
    struct Done {
      ~Done() {
        Pool& p = pool();
        std::lock_guard<std::mutex> lock(p.mu);
        --p.reserving;
        p.reserved.notify_all();
      }
    } done;
    const size_t size = block_size(bytes);
    for (int i = 0; i < count; ++i) {
      Pool& p = pool();
      {
        std::lock_guard<std::mutex> lock(p.mu);
        if (p.idle_bytes + size > kPoolIdleLimit) return;
      }
      void* block = map_block(size);
      std::memset(block, 0, size);
      std::lock_guard<std::mutex> lock(p.mu);
      p.idle.emplace(size, block);
      p.idle_bytes += size;
    }
  }).detach();
}

void pool_wait_for_reservations() {
  Pool& p = pool();
  std::unique_lock<std::mutex> lock(p.mu);
  p.reserved.wait(lock, [&] { return p.reserving == 0; });
}

bool pool_enabled() { return kPoolEnabled; }

size_t pool_idle_bytes() {
  Pool& p = pool();
  std::lock_guard<std::mutex> lock(p.mu);
  return p.idle_bytes;
}

}  // namespace md
