#include "server/kv_budget.h"

#include <string>

#include "tensor/buffer_pool.h"
#include "tensor/error.h"

namespace md::server {

size_t kv_block_bytes(const Moondream& model, int positions) {
  return pool_block_bytes(KVCache::cache_bytes(model.config().text, positions, model.kv_format()));
}

size_t kv_budget_floor(const Moondream& model) {
  const TextConfig& t = model.config().text;
  return kv_block_bytes(model, t.prefix_attn) + kv_block_bytes(model, t.max_context - t.prefix_attn);
}

void check_kv_budget(int kv_cache_mb, const Moondream& model) {
  const size_t floor = kv_budget_floor(model);
  if ((size_t(kv_cache_mb) << 20) < floor) {
    const size_t floor_mb = (floor + (size_t(1) << 20) - 1) >> 20;
    throw Error("performance.kv_cache_mb " + std::to_string(kv_cache_mb) +
                " cannot hold one full-context request of this model (" + std::to_string(floor_mb) +
                " MB of KV cache); set it to at least " + std::to_string(floor_mb));
  }
}

}  // namespace md::server
