#include "model/text.h"

#include <cmath>
#include <cstring>

#include "model/decode_batcher.h"
#include "tensor/dtype.h"
#include "tensor/error.h"
#include "tensor/ops.h"
#include "tensor/parallel.h"

namespace md {

constexpr int kMinInt8AttentionRows = 64;

namespace {
// fp32 → bf16, round to nearest even (as PyTorch's .to(torch.bfloat16)).
void store_bf16(const float* x, int n, uint16_t* out) {
  for (int i = 0; i < n; ++i) out[i] = f32_to_bf16(x[i]);
}
}  // namespace

KVCache::KVCache(const TextConfig& cfg, int cap, KVFormat f)
    : n_layers(cfg.n_layers),
      n_kv_heads(cfg.n_kv_heads),
      head_dim(cfg.dim / cfg.n_heads),
      kv_dim(cfg.n_kv_heads * (cfg.dim / cfg.n_heads)),
      format(f),
      capacity(cap) {
  if (format == KVFormat::I8 && head_dim % 4 != 0) throw Error("KV cache: int8 rows need a head size divisible by 4");
  storage.resize(bytes());
}

KVCache KVCache::same_shape(int cap, int base_len) const {
  KVCache out;
  out.n_layers = n_layers;
  out.n_kv_heads = n_kv_heads;
  out.head_dim = head_dim;
  out.kv_dim = kv_dim;
  out.format = format;
  out.capacity = cap;
  out.base_length = base_len;
  out.storage.resize(out.bytes());
  return out;
}

namespace {
// Layer l's first n rows of a (head-major) cache as attention reads them.
KVRows rows_of(const KVCache& c, int l, int n) {
  KVRows r{c.k(l), c.v(l), n, c.format, c.head_dim, size_t(c.rows()) * size_t(c.head_dim)};
  if (c.format == KVFormat::I8) {
    r.k_scale = c.k_scale(l);
    r.v_scale = c.v_scale(l);
    r.scale_head_stride = size_t(c.rows());
  }
  return r;
}
}  // namespace

KVRows KVCache::base_rows(int l) const {
  if (!base) return KVRows{nullptr, nullptr, 0, format};
  return rows_of(*base, l, base_length);
}

KVRows KVCache::own_rows(int l, int n) const { return rows_of(*this, l, n); }

KVCache KVCache::extending(const KVCache& b, int cap) {
  if (b.base) throw Error("KV cache: a cache that extends another cannot be a base itself");
  if (cap < b.length) throw Error("KV cache: capacity below the base's length");
  KVCache out = b.same_shape(cap, b.length);
  out.length = b.length;
  out.base = &b;
  out.prefix = b.prefix;
  return out;
}

KVCache KVCache::copy_with_capacity(int cap) const {
  if (base) throw Error("KV cache: copy_with_capacity of a cache with a base");
  if (cap < length) throw Error("KV cache: capacity below the length");
  KVCache out = same_shape(cap, 0);
  out.length = length;
  out.prefix = prefix;
  const size_t elem = kv_element_bytes(format);
  const size_t used = size_t(length) * size_t(head_dim) * elem;
  for (int l = 0; l < n_layers; ++l) {
    // Head by head: each head's run starts at its own place in either.
    for (int g = 0; g < n_kv_heads; ++g) {
      std::memcpy(out.k(l) + out.element_at(g, 0) * elem, k(l) + element_at(g, 0) * elem, used);
      std::memcpy(out.v(l) + out.element_at(g, 0) * elem, v(l) + element_at(g, 0) * elem, used);
      if (format == KVFormat::I8) {
        const size_t scales = size_t(length) * sizeof(float);
        std::memcpy(out.k_scale(l) + size_t(g) * size_t(out.rows()), k_scale(l) + size_t(g) * size_t(rows()), scales);
        std::memcpy(out.v_scale(l) + size_t(g) * size_t(out.rows()), v_scale(l) + size_t(g) * size_t(rows()), scales);
      }
    }
  }
  return out;
}

RotaryTable::RotaryTable(int rot_dim, int max_positions, float theta) : pairs(rot_dim / 2) {
  cos.resize(size_t(max_positions) * pairs);
  sin.resize(size_t(max_positions) * pairs);
  std::vector<float> freq(static_cast<size_t>(pairs));
  for (int i = 0; i < pairs; ++i) freq[i] = 1.0f / std::pow(theta, float(2 * i) / float(rot_dim));
  for (int p = 0; p < max_positions; ++p)
    for (int i = 0; i < pairs; ++i) {
      const float angle = float(p) * freq[i];
      cos[size_t(p) * pairs + i] = std::cos(angle);
      sin[size_t(p) * pairs + i] = std::sin(angle);
    }
}

void RotaryTable::apply(float* head, int p) const {
  const float* c = cos.data() + size_t(p) * pairs;
  const float* s = sin.data() + size_t(p) * pairs;
  for (int i = 0; i < pairs; ++i) {
    const float a = head[i], b = head[i + pairs];
    head[i] = a * c[i] - b * s[i];
    head[i + pairs] = a * s[i] + b * c[i];
  }
}

// Rotary covers half of each head (32 of 64 dims in Moondream2).
TextModel::TextModel(const ModelWeights& w, const TextConfig& cfg)
    : w_(w), cfg_(cfg), head_dim_(cfg.dim / cfg.n_heads), rotary_(head_dim_ / 2, cfg.max_context) {}

void TextModel::embed(const int* ids, int n, float* out) const {
  for (int i = 0; i < n; ++i) {
    if (ids[i] < 0 || ids[i] >= cfg_.vocab_size)
      throw Error("token id " + std::to_string(ids[i]) + " is outside the vocabulary");
    const TensorView& wte = *w_.wte;
    const size_t row_bytes = wte.nbytes / size_t(cfg_.vocab_size);
    convert_to_f32(wte.dtype, wte.data + size_t(ids[i]) * row_bytes, out + size_t(i) * cfg_.dim, size_t(cfg_.dim));
  }
}

PooledVector<float> TextModel::forward(const float* embeddings, int n, KVCache& cache) const {
  return run_layers(embeddings, n, {&cache});
}

PooledVector<float> TextModel::decode_step(const float* embeddings, const std::vector<KVCache*>& caches) const {
  const int n = int(caches.size());
  if (n < 1 || n > kMaxBatchRows)
    throw Error("decode step: " + std::to_string(n) + " sequences (1 to " + std::to_string(kMaxBatchRows) + ")");
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < i; ++j)
      if (caches[size_t(i)] == caches[size_t(j)]) throw Error("decode step: a cache appears twice in one batch");
  return run_layers(embeddings, n, caches);
}

PooledVector<float> TextModel::run_layers(const float* embeddings, int n, const std::vector<KVCache*>& caches) const {
  const int D = cfg_.dim, hd = head_dim_;
  const int q_dim = cfg_.n_heads * hd, kv_dim = cfg_.n_kv_heads * hd;
  const int qkv_dim = q_dim + 2 * kv_dim;
  // One cache for all rows (a prompt), or one per row (a batched step).
  const bool one_cache = caches.size() == 1;
  auto cache_of = [&](int i) -> KVCache& { return *caches[one_cache ? 0 : size_t(i)]; };
  auto position_of = [&](int i) { return one_cache ? caches[0]->length + i : caches[size_t(i)]->length; };
  for (const KVCache* c : caches) {
    const int need = c->length + (one_cache ? n : 1);
    if (need > c->capacity || need > cfg_.max_context)
      throw Error("context full: " + std::to_string(need) + " positions exceed the limit of " +
                  std::to_string(std::min(c->capacity, cfg_.max_context)));
    if (c->base && c->base->format != c->format) throw Error("KV cache: a cache extends a base of another format");
  }

  PooledVector<float> x(embeddings, embeddings + size_t(n) * D);
  PooledVector<float> h(size_t(n) * D), qkv(size_t(n) * qkv_dim), att(size_t(n) * q_dim), ff(size_t(n) * cfg_.ff_dim),
      tmp(size_t(n) * D);

  // A prompt's attention: all rows against one cache.
  AttentionShape shape;
  shape.n_q = n;
  shape.n_k = position_of(0) + n;
  shape.n_heads = cfg_.n_heads;
  shape.n_kv_heads = cfg_.n_kv_heads;
  shape.head_dim = hd;
  shape.q_stride = qkv_dim;
  shape.kv_stride = kv_dim;
  // The int8 and q4 modes run a long prompt's attention (the image prefix)
  // in int8 too (its linears are int8 GEMMs in both): 0.29 s instead of 0.44
  // for the 730-token prefix (bench). Short prompts and decoding stay fp32,
  // where these products are not the cost.
  const WeightFormat text_format = w_.text_blocks.front().qkv.w.format;
  shape.int8_scores =
      n >= kMinInt8AttentionRows && (text_format == WeightFormat::Q8 || text_format == WeightFormat::Q4);
  AttentionMask mask;
  mask.full = false;

  for (int l = 0; l < cfg_.n_layers; ++l) {
    // A prompt lets the batched decode steps of other tasks run between its
    // layers (a 730-position prefix is ~0.1 s a layer at full size).
    if (one_cache && n > 1 && l > 0) DecodeBatcher::yield_point();
    const TextBlock& blk = w_.text_blocks[l];
    layer_norm(blk.ln, x.data(), n, h.data());
    // Parallel residual: the attention and the MLP both read h, and both add
    // to x. Decoding, each pair of products runs in one parallel region.
    linear_group({{&blk.qkv, h.data(), qkv.data(), false}, {&blk.fc1, h.data(), ff.data(), true}}, n);
    parallel_for(size_t(n), [&](size_t b, size_t e) {
      for (size_t i = b; i < e; ++i) {
        KVCache& cache = cache_of(int(i));
        // This cache's own rows start at position base_length.
        uint8_t* kc = cache.k(l);
        uint8_t* vc = cache.v(l);
        const size_t elem = kv_element_bytes(cache.format);
        float* row = qkv.data() + i * qkv_dim;
        const int p = position_of(int(i));
        for (int hh = 0; hh < cfg_.n_heads; ++hh) rotary_.apply(row + hh * hd, p);
        for (int g = 0; g < cfg_.n_kv_heads; ++g) {
          float* kr = row + q_dim + g * hd;
          const float* vr = kr + kv_dim;
          rotary_.apply(kr, p);
          uint8_t* kd = kc + cache.element_at(g, p) * elem;
          uint8_t* vd = vc + cache.element_at(g, p) * elem;
          if (cache.format == KVFormat::BF16) {
            store_bf16(kr, hd, reinterpret_cast<uint16_t*>(kd));
            store_bf16(vr, hd, reinterpret_cast<uint16_t*>(vd));
          } else if (cache.format == KVFormat::I8) {
            const size_t at = size_t(g) * size_t(cache.rows()) + size_t(p - cache.base_length);
            quantize_kv_row(kr, hd, reinterpret_cast<int8_t*>(kd), cache.k_scale(l) + at);
            quantize_kv_row(vr, hd, reinterpret_cast<int8_t*>(vd), cache.v_scale(l) + at);
          } else {
            std::memcpy(kd, kr, size_t(hd) * elem);
            std::memcpy(vd, vr, size_t(hd) * elem);
          }
        }
      }
    });
    if (one_cache) {
      const KVCache& cache = *caches[0];
      mask.q_pos0 = cache.length;
      mask.prefix = cache.prefix >= 0 ? cache.prefix : cfg_.prefix_attn;
      attention(shape, mask, qkv.data(), cache.base_rows(l), cache.own_rows(l, cache.length + n - cache.base_length),
                att.data());
    } else {
      // Each sequence's query row over its own cache, in one pass:
      // sequences about the same cached image read its prefix once.
      std::vector<KVRows> bases(static_cast<size_t>(n)), owns(static_cast<size_t>(n));
      for (int i = 0; i < n; ++i) {
        const KVCache& cache = cache_of(i);
        bases[size_t(i)] = cache.base_rows(l);
        owns[size_t(i)] = cache.own_rows(l, cache.length + 1 - cache.base_length);
      }
      decode_attention(shape, n, qkv.data(), bases.data(), owns.data(), att.data());
    }
    if (one_cache && n > 1) DecodeBatcher::yield_point();  // and half-way through a layer
    linear_group({{&blk.proj, att.data(), tmp.data(), false}, {&blk.fc2, ff.data(), h.data(), false}}, n);
    for (size_t i = 0; i < size_t(n) * D; ++i) x[i] = (x[i] + tmp[i]) + h[i];
  }
  if (one_cache)
    caches[0]->length += n;
  else
    for (KVCache* c : caches) c->length += 1;
  return x;
}

std::vector<float> TextModel::logits(const float* hidden) const { return logits_rows(hidden, 1); }

std::vector<float> TextModel::logits_rows(const float* hidden, int n) const {
  std::vector<float> normed(size_t(n) * size_t(cfg_.dim));
  layer_norm(w_.text_post_ln, hidden, n, normed.data());
  std::vector<float> out(size_t(n) * size_t(cfg_.vocab_size));
  linear(w_.lm_head, normed.data(), n, out.data());
  return out;
}

}  // namespace md
