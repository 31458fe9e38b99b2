#pragma once
// Thread-safe LRU caches with a byte budget, and the 128-bit keys they use.
#include <cstddef>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>

namespace md::server {

struct Key128 {
  uint64_t lo = 0, hi = 0;
  bool operator==(const Key128& o) const { return lo == o.lo && hi == o.hi; }
  std::string hex() const;
};
struct Key128Hash {
  size_t operator()(const Key128& k) const { return size_t(k.lo ^ (k.hi * 0x9E3779B97F4A7C15ull)); }
};

// xxh3-128 of a byte range, and a streaming variant for composite keys.
Key128 hash128(const void* data, size_t n);
class Hasher {
 public:
  Hasher();
  ~Hasher();
  Hasher(const Hasher&) = delete;
  Hasher& operator=(const Hasher&) = delete;
  Hasher& add(const void* data, size_t n);
  Hasher& add(std::string_view s);  // length-prefixed, so fields never run together
  Hasher& add_int(int64_t v) { return add(&v, sizeof v); }
  Hasher& add_double(double v) { return add(&v, sizeof v); }
  Key128 finish() const;

 private:
  void* state_;
};

struct CacheStats {
  uint64_t hits = 0, misses = 0, evictions = 0;
  size_t entries = 0, bytes = 0, max_bytes = 0;
};

// Values are shared_ptr<const V>, so a value handed out stays valid after its
// entry is cleared. An entry larger than the whole budget is not stored.
// Eviction passes over entries whose value is still held elsewhere (a running
// job's encoded image): dropping them would free nothing, and the KV budget
// (kv_budget.h) counts their bytes until they can go; the cache may run over
// its budget by such entries until the next put.
template <typename V>
class LruCache {
 public:
  explicit LruCache(size_t max_bytes = 0) : max_bytes_(max_bytes) {}

  std::shared_ptr<const V> get(const Key128& k, bool count = true) {
    std::lock_guard<std::mutex> lock(m_);
    auto it = map_.find(k);
    if (it == map_.end()) {
      if (count) ++stats_.misses;
      return nullptr;
    }
    order_.splice(order_.begin(), order_, it->second);
    if (count) ++stats_.hits;
    return it->second->value;
  }
  void count_miss() {
    std::lock_guard<std::mutex> lock(m_);
    ++stats_.misses;
  }
  void count_hit() {
    std::lock_guard<std::mutex> lock(m_);
    ++stats_.hits;
  }

  bool put(const Key128& k, std::shared_ptr<const V> v, size_t bytes) {
    std::lock_guard<std::mutex> lock(m_);
    if (bytes > max_bytes_) return false;
    auto it = map_.find(k);
    if (it != map_.end()) {
      stats_.bytes -= it->second->bytes;
      order_.erase(it->second);
      map_.erase(it);
    }
    order_.push_front(Entry{k, std::move(v), bytes});
    map_[k] = order_.begin();
    stats_.bytes += bytes;
    evict_locked();
    return true;
  }

  // Evicts least recently used entries no one else holds until `bytes` are
  // freed or none is left to evict; returns the bytes freed.
  size_t evict_unused(size_t bytes) {
    std::lock_guard<std::mutex> lock(m_);
    return evict_locked(bytes);
  }

  void set_max_bytes(size_t max_bytes) {
    std::lock_guard<std::mutex> lock(m_);
    max_bytes_ = max_bytes;
    evict_locked();
  }
  void clear() {
    std::lock_guard<std::mutex> lock(m_);
    stats_.evictions += map_.size();
    map_.clear();
    order_.clear();
    stats_.bytes = 0;
  }
  CacheStats stats() const {
    std::lock_guard<std::mutex> lock(m_);
    CacheStats s = stats_;
    s.entries = map_.size();
    s.max_bytes = max_bytes_;
    return s;
  }

 private:
  struct Entry {
    Key128 key;
    std::shared_ptr<const V> value;
    size_t bytes;
  };
  // Evicts unused entries, oldest first, until the cache fits its budget
  // (and, with `free_at_least`, that many bytes are freed).
  size_t evict_locked(size_t free_at_least = 0) {
    size_t freed = 0;
    for (auto it = order_.end(); it != order_.begin() && (stats_.bytes > max_bytes_ || freed < free_at_least);) {
      --it;
      if (it->value.use_count() > 1) continue;  // held by a job: dropping it frees nothing
      freed += it->bytes;
      stats_.bytes -= it->bytes;
      map_.erase(it->key);
      it = order_.erase(it);
      ++stats_.evictions;
    }
    return freed;
  }

  mutable std::mutex m_;
  size_t max_bytes_;
  std::list<Entry> order_;
  std::unordered_map<Key128, typename std::list<Entry>::iterator, Key128Hash> map_;
  CacheStats stats_;
};

}  // namespace md::server
