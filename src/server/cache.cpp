#include "server/cache.h"

#include <cstdio>
#include <new>

#include <xxhash.h>

namespace md::server {

std::string Key128::hex() const {
  char buf[33];
  std::snprintf(buf, sizeof buf, "%016llx%016llx", (unsigned long long)hi, (unsigned long long)lo);
  return buf;
}

Key128 hash128(const void* data, size_t n) {
  const XXH128_hash_t h = XXH3_128bits(data, n);
  return Key128{h.low64, h.high64};
}

Hasher::Hasher() : state_(XXH3_createState()) {
  if (!state_) throw std::bad_alloc();
  XXH3_128bits_reset(static_cast<XXH3_state_t*>(state_));
}
Hasher::~Hasher() { XXH3_freeState(static_cast<XXH3_state_t*>(state_)); }

Hasher& Hasher::add(const void* data, size_t n) {
  XXH3_128bits_update(static_cast<XXH3_state_t*>(state_), data, n);
  return *this;
}
Hasher& Hasher::add(std::string_view s) {
  const uint64_t n = s.size();
  add(&n, sizeof n);
  return add(s.data(), s.size());
}
Key128 Hasher::finish() const {
  const XXH128_hash_t h = XXH3_128bits_digest(static_cast<XXH3_state_t*>(state_));
  return Key128{h.low64, h.high64};
}

}  // namespace md::server
