#pragma once
// KV memory as one budget (performance.kv_cache_mb), shared by the
// encoded-image cache and the jobs in flight.
//
// Before a job runs it reserves the KV bytes it may write: its own rows (the
// prompt and all it may generate, model/tasks.h task_kv_positions) and, when
// its image is not encoded yet, the image prefix. Reserving evicts cached
// images that no job holds; when even that cannot make room the job waits at
// the head of the queue (engine.h) until running jobs release theirs. So the
// KV memory in use — cached prefixes plus reservations — never exceeds the
// budget, and no request meets an allocation failure.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <mutex>

#include "model/moondream.h"
#include "server/cache.h"

namespace md::server {

class KvBudget {
 public:
  explicit KvBudget(LruCache<EncodedImage>* images) : images_(images) {}

  void set_max_bytes(size_t bytes) {
    std::lock_guard<std::mutex> lock(m_);
    max_bytes_ = bytes;
  }
  size_t max_bytes() const {
    std::lock_guard<std::mutex> lock(m_);
    return max_bytes_;
  }

  // Reserves `bytes` if they fit beside the cached images and the other
  // reservations, evicting images no job holds to make room; false when they
  // do not fit now.
  bool try_reserve(size_t bytes) {
    std::lock_guard<std::mutex> lock(m_);
    const size_t cached = images_->stats().bytes;
    if (reserved_ + cached + bytes > max_bytes_) {
      const size_t over = reserved_ + cached + bytes - max_bytes_;
      images_->evict_unused(over);
      if (reserved_ + images_->stats().bytes + bytes > max_bytes_) return false;
    }
    reserved_ += bytes;
    note_locked();
    return true;
  }
  void release(size_t bytes) {
    std::lock_guard<std::mutex> lock(m_);
    reserved_ -= std::min(bytes, reserved_);
  }
  // After a cached image changed hands (a job's prefix reservation became a
  // cache entry): keeps the peak true.
  void note() {
    std::lock_guard<std::mutex> lock(m_);
    note_locked();
  }

  size_t reserved() const {
    std::lock_guard<std::mutex> lock(m_);
    return reserved_;
  }
  // Cached image prefixes plus reservations.
  size_t used() const {
    std::lock_guard<std::mutex> lock(m_);
    return reserved_ + images_->stats().bytes;
  }
  size_t peak() const {
    std::lock_guard<std::mutex> lock(m_);
    return peak_;
  }

 private:
  void note_locked() { peak_ = std::max(peak_, reserved_ + images_->stats().bytes); }

  LruCache<EncodedImage>* images_;
  mutable std::mutex m_;
  size_t max_bytes_ = SIZE_MAX;  // until the configuration sets it
  size_t reserved_ = 0;
  size_t peak_ = 0;
};

// What a cache of `positions` rows costs, with the buffer pool's rounding to
// whole 2 MiB pages (model/text.h: one block per cache).
size_t kv_block_bytes(const Moondream& model, int positions);

// The least budget that runs any one request of `model`: a full-context
// sequence (its image prefix and own rows).
size_t kv_budget_floor(const Moondream& model);
// Throws md::Error when performance.kv_cache_mb is below kv_budget_floor.
void check_kv_budget(int kv_cache_mb, const Moondream& model);

}  // namespace md::server
