#pragma once
// Text decoder (docs/MODEL.md section 7): Phi-1.5-shaped blocks with parallel
// residual, partial rotary, grouped KV heads and the bidirectional image prefix.
#include <cstdint>
#include <vector>

#include "model/config.h"
#include "model/weights.h"
#include "tensor/buffer_pool.h"
#include "tensor/ops.h"

namespace md {

// k (after rotary) and v per layer, kv head and position, head-major: in
// k(l), kv head g's rows are one run of rows() · head_dim elements, position
// p at row p − base_length of it (KVRows in ops.h: decoding reads each head's
// keys as one stream). fp32, bf16 or int8 as `format` says (rounded once
// when written; every later read sees the stored value). int8 rows have one
// fp32 scale per kv head and position, after the layer's k (and v) rows:
// k_scale(l)[g · rows() + p − base_length].
struct KVCache {
  int n_layers = 0;
  int n_kv_heads = 0, head_dim = 0;
  int kv_dim = 0;  // n_kv_heads · head_dim
  KVFormat format = KVFormat::F32;
  int capacity = 0;  // positions it can hold, base included
  int length = 0;    // positions filled, base included
  // Positions below this attend bidirectionally among themselves (the image
  // prefix); -1: the config's prefix_attn, 0: none (a text-only prompt).
  int prefix = -1;
  // Positions [0, base_length) live in `base` (read-only, owned elsewhere and
  // outliving this cache); k/v hold positions [base_length, capacity).
  const KVCache* base = nullptr;
  int base_length = 0;
  // One block for all layers (a block per layer rounded each 3 MB layer up
  // to the pool's 2 MiB pages: a third more memory at full size).
  PooledVector<uint8_t> storage;  // [layer][k, v]([kv head][position - base_length][head_dim], int8: scales)

  // Rows per head this cache owns (its base's are not among them).
  int rows() const { return capacity - base_length; }
  // Where position p (>= base_length) of kv head g starts in k(l) / v(l), in elements.
  size_t element_at(int g, int p) const {
    return (size_t(g) * size_t(rows()) + size_t(p - base_length)) * size_t(head_dim);
  }
  // Layer l's own key and value rows.
  uint8_t* k(int l) { return storage.data() + size_t(2 * l) * own_layer_bytes(); }
  uint8_t* v(int l) { return storage.data() + size_t(2 * l + 1) * own_layer_bytes(); }
  const uint8_t* k(int l) const { return storage.data() + size_t(2 * l) * own_layer_bytes(); }
  const uint8_t* v(int l) const { return storage.data() + size_t(2 * l + 1) * own_layer_bytes(); }
  // int8 rows' scales of layer l: [kv head][position - base_length].
  float* k_scale(int l) { return reinterpret_cast<float*>(k(l) + scales_offset()); }
  float* v_scale(int l) { return reinterpret_cast<float*>(v(l) + scales_offset()); }
  const float* k_scale(int l) const { return reinterpret_cast<const float*>(k(l) + scales_offset()); }
  const float* v_scale(int l) const { return reinterpret_cast<const float*>(v(l) + scales_offset()); }

  KVCache() = default;
  KVCache(const TextConfig& cfg, int capacity, KVFormat format = KVFormat::F32);
  // A cache that continues `base` (which must outlive it) without copying it:
  // room for `capacity` positions in all, the first base.length shared.
  static KVCache extending(const KVCache& base, int capacity);
  // A standalone cache of `capacity` positions holding a copy of this one.
  KVCache copy_with_capacity(int capacity) const;
  // Bytes of one layer's k (or v) rows for `capacity` positions.
  static size_t layer_bytes(const TextConfig& cfg, int capacity, KVFormat format) {
    return size_t(capacity) * size_t(cfg.n_kv_heads) * kv_head_row_bytes(format, cfg.dim / cfg.n_heads);
  }
  // Bytes of a standalone cache of `capacity` positions (its one block).
  static size_t cache_bytes(const TextConfig& cfg, int capacity, KVFormat format) {
    return size_t(cfg.n_layers) * 2 * layer_bytes(cfg, capacity, format);
  }
  // Bytes this cache owns (not its base).
  size_t bytes() const { return size_t(n_layers) * 2 * own_layer_bytes(); }
  // Bytes one decode step at `positions` reads from the k and v rows.
  static size_t read_bytes(const TextConfig& cfg, int positions, KVFormat format) {
    return cache_bytes(cfg, positions, format);
  }
  // Layer l's rows as the attention reads them (the base's, then this one's).
  KVRows base_rows(int l) const;
  KVRows own_rows(int l, int rows) const;

 private:
  size_t own_layer_bytes() const { return size_t(rows()) * size_t(n_kv_heads) * kv_head_row_bytes(format, head_dim); }
  // Where a layer's k (or v) scales start: after its rows.
  size_t scales_offset() const { return size_t(rows()) * size_t(kv_dim) * kv_element_bytes(format); }
  // An empty cache of this one's shape and format for positions [base_length, capacity).
  KVCache same_shape(int capacity, int base_length) const;
};

// cos/sin of position p for the 16 rotary frequency pairs, computed in fp32
// as the reference does: f_i = 1 / 10000^(2i/32), angle = p·f_i.
struct RotaryTable {
  int pairs = 0;
  std::vector<float> cos, sin;  // [max_positions, pairs]
  RotaryTable() = default;
  RotaryTable(int rot_dim, int max_positions, float theta = 10000.0f);
  // Rotates dims (i, i+pairs) of one head vector at position p.
  void apply(float* head, int p) const;
};

class TextModel {
 public:
  TextModel(const ModelWeights& w, const TextConfig& cfg);

  // Embedding rows of token ids → out [n, dim].
  void embed(const int* ids, int n, float* out) const;
  // Runs n new positions (embeddings [n, dim]) starting at cache.length,
  // appending to the cache. Returns the hidden states [n, dim] before post-LN.
  PooledVector<float> forward(const float* embeddings, int n, KVCache& cache) const;
  // One decode step of several sequences at once: row i of embeddings
  // [caches.size(), dim] is the next position of caches[i] (distinct caches,
  // each at its own length). Every product reads its weights once for all
  // the rows; attention runs per sequence over its own cache. Row i's hidden
  // state equals forward() of that row alone, bit for bit, up to
  // kMaxBatchRows rows (the GEMV kernels' sums do not depend on the row
  // count; more rows would take the prompt GEMMs).
  PooledVector<float> decode_step(const float* embeddings, const std::vector<KVCache*>& caches) const;
  static constexpr int kMaxBatchRows = kMaxInt8GemvRows;
  // lm_head(post_ln(hidden)) for one hidden row → logits [vocab].
  std::vector<float> logits(const float* hidden) const;
  // The same for n rows in one pass over lm_head → [n, vocab]; row i equals
  // logits(hidden + i·dim) for n ≤ kMaxBatchRows.
  std::vector<float> logits_rows(const float* hidden, int n) const;

  const TextConfig& config() const { return cfg_; }

 private:
  // The layers over n rows: caches.size() == 1 — consecutive positions of
  // that cache from its length (a prompt); caches.size() == n — row i the
  // next position of caches[i] (a batched decode step).
  PooledVector<float> run_layers(const float* embeddings, int n, const std::vector<KVCache*>& caches) const;

  const ModelWeights& w_;
  TextConfig cfg_;
  int head_dim_;
  RotaryTable rotary_;
};

}  // namespace md
