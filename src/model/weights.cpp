#include "model/weights.h"

#include <cstdint>
#include <string>

#include "tensor/error.h"

namespace md {
namespace {

WeightFormat format_of(DType t) {
  switch (t) {
    case DType::BF16: return WeightFormat::BF16;
    case DType::F16: return WeightFormat::F16;
    default: return WeightFormat::F32;
  }
}

// Which matrices are quantised, and how:
//  - int8: every text matrix whose width is a multiple of 128 as Q8 with one
//    scale per row, the layout both the decode GEMV and the int8 GEMM
//    (prefill: u8×s8 VNNI) read; vision matrices the same for any width that
//    is a multiple of 16 (they only ever meet the GEMM: 729 rows a crop);
//  - q4: text matrices as Q4 in groups of 32 (decode streams 4.5 bits per
//    weight); the vision tower as int8 does.
// The region head and the patch embedding (588 wide) stay as stored.
constexpr int kQ4Group = 32;
constexpr int kPolicyVersion = 3;  // cache key: bump when the choices above change

enum class Part { Text, Vision };

struct QuantChoice {
  WeightFormat format;
  int group;
};

bool choose(Quantization q, Part part, int cols, QuantChoice* out) {
  if (q == Quantization::None) return false;
  if (q == Quantization::Q4 && part == Part::Text && cols % kQ4Group == 0) {
    *out = {WeightFormat::Q4, kQ4Group};
    return true;
  }
  if (cols % 128 == 0 || (part == Part::Vision && cols % 16 == 0)) {
    *out = {WeightFormat::Q8, cols};
    return true;
  }
  return false;
}

class Loader {
 public:
  Loader(ModelWeights& w, Quantization q, const QuantCache* cache) : w_(w), q_(q), cache_(cache) {}
  // Names of the matrices quantised now (not found in the cache), in order.
  std::vector<std::pair<std::string, size_t>> fresh;  // name → index in w_.quantized

  // Small tensors: fp32 (a view when stored F32 and aligned, else widened).
  const float* tensor(const std::string& name, const std::vector<int64_t>& shape) {
    const TensorView& t = w_.store->get(name, shape);
    const size_t n = t.numel();
    w_.weight_bytes += n * sizeof(float);
    const bool aligned = reinterpret_cast<uintptr_t>(t.data) % alignof(float) == 0;
    if (t.dtype == DType::F32 && aligned) return reinterpret_cast<const float*>(t.data);
    std::vector<float> buf(n);
    convert_to_f32(t.dtype, t.data, buf.data(), n);
    w_.owned.push_back(std::move(buf));
    return w_.owned.back().data();
  }

  // Matrices of a model part: quantised as choose() says (from the cache
  // file when it has them), else the stored bytes in place. Quantised views
  // point into the cache mapping or into the heap buffers of `quantized`,
  // which stay put when the vector grows.
  Linear linear(const std::string& name, int in, int out, Part part) {
    QuantChoice qc{};
    const bool quantize = choose(q_, part, in, &qc);
    return linear_as(name, in, out, quantize ? &qc : nullptr);
  }
  // Kept as stored.
  Linear linear(const std::string& name, int in, int out) { return linear_as(name, in, out, nullptr); }

  LayerNormWeights norm(const std::string& name, int dim) {
    LayerNormWeights ln;
    ln.dim = dim;
    ln.w = tensor(name + ".weight", {dim});
    ln.b = tensor(name + ".bias", {dim});
    return ln;
  }

 private:
  Linear linear_as(const std::string& name, int in, int out, const QuantChoice* qc) {
    Linear l;
    l.in = in;
    l.out = out;
    const TensorView& t = w_.store->get(name + ".weight", {out, in});
    if (qc) {
      if (!cache_ || !cache_->find(name, out, in, &l.w) || l.w.format != qc->format || l.w.group != qc->group) {
        w_.quantized.push_back(md::quantize(t.data, format_of(t.dtype), out, in, qc->format, qc->group));
        fresh.emplace_back(name, w_.quantized.size() - 1);
        l.w = w_.quantized.back().view();
      }
      w_.weight_bytes += weight_bytes(l.w);
      // The 16-bit original is not read again: keep RSS at the quantised size.
      WeightStore::release_pages(t);
    } else {
      l.w.format = format_of(t.dtype);
      l.w.rows = out;
      l.w.cols = in;
      l.w.data = t.data;
      w_.weight_bytes += t.nbytes;
    }
    l.b = tensor(name + ".bias", {out});
    return l;
  }

  ModelWeights& w_;
  Quantization q_;
  const QuantCache* cache_;
};

}  // namespace

bool parse_quantization(const std::string& s, Quantization* out) {
  if (s == "none")
    *out = Quantization::None;
  else if (s == "int8")
    *out = Quantization::Int8;
  else if (s == "q4")
    *out = Quantization::Q4;
  else
    return false;
  return true;
}

std::unique_ptr<ModelWeights> load_weights(const std::string& model_dir, const ModelConfig& cfg,
                                           Quantization quantization) {
  auto w = std::make_unique<ModelWeights>();
  w->store = std::make_shared<WeightStore>(WeightStore::open(model_dir));
  QuantCacheKey key;
  if (quantization != Quantization::None) {
    key.format = quantization == Quantization::Int8 ? WeightFormat::Q8 : WeightFormat::Q4;
    key.policy = kPolicyVersion;
    key.source = QuantCacheKey::source_of(model_dir);
    w->quant_cache_path = QuantCache::path_for(model_dir, key.format);
    w->quant_cache = QuantCache::open(w->quant_cache_path, key);
  }
  Loader L(*w, quantization, w->quant_cache.get());

  const VisionConfig& v = cfg.vision;
  const int grid = v.crop_size / v.enc_patch_size;
  const int patch_dim = v.enc_patch_size * v.enc_patch_size * v.in_channels;
  // Quantised modes: the vision tower's GEMMs run in int8 (see choose()).
  w->patch_emb = L.linear("vision.patch_emb", patch_dim, v.enc_dim);
  w->pos_emb = L.tensor("vision.pos_emb", {1, grid * grid, v.enc_dim});
  for (int i = 0; i < v.enc_n_layers; ++i) {
    const std::string p = "vision.blocks." + std::to_string(i);
    VisionBlock b;
    b.ln1 = L.norm(p + ".ln1", v.enc_dim);
    b.ln2 = L.norm(p + ".ln2", v.enc_dim);
    b.qkv = L.linear(p + ".attn.qkv", v.enc_dim, 3 * v.enc_dim, Part::Vision);
    b.proj = L.linear(p + ".attn.proj", v.enc_dim, v.enc_dim, Part::Vision);
    b.fc1 = L.linear(p + ".mlp.fc1", v.enc_dim, v.enc_ff_dim, Part::Vision);
    b.fc2 = L.linear(p + ".mlp.fc2", v.enc_ff_dim, v.enc_dim, Part::Vision);
    w->vision_blocks.push_back(b);
  }
  w->vision_post_ln = L.norm("vision.post_ln", v.enc_dim);
  w->proj_fc1 = L.linear("vision.proj_mlp.fc1", 2 * v.enc_dim, v.proj_inner_dim, Part::Vision);
  w->proj_fc2 = L.linear("vision.proj_mlp.fc2", v.proj_inner_dim, v.proj_out_dim, Part::Vision);

  const TextConfig& t = cfg.text;
  const int head_dim = t.dim / t.n_heads;
  const int qkv_out = (t.n_heads + 2 * t.n_kv_heads) * head_dim;
  w->wte = &w->store->get("text.wte", {t.vocab_size, t.dim});
  w->weight_bytes += w->wte->nbytes;
  for (int i = 0; i < t.n_layers; ++i) {
    const std::string p = "text.blocks." + std::to_string(i);
    TextBlock b;
    b.ln = L.norm(p + ".ln", t.dim);
    b.qkv = L.linear(p + ".attn.qkv", t.dim, qkv_out, Part::Text);
    b.proj = L.linear(p + ".attn.proj", t.dim, t.dim, Part::Text);
    b.fc1 = L.linear(p + ".mlp.fc1", t.dim, t.ff_dim, Part::Text);
    b.fc2 = L.linear(p + ".mlp.fc2", t.ff_dim, t.dim, Part::Text);
    w->text_blocks.push_back(b);
  }
  w->text_post_ln = L.norm("text.post_ln", t.dim);
  w->lm_head = L.linear("text.lm_head", t.dim, t.vocab_size, Part::Text);

  const RegionConfig& r = cfg.region;
  w->coord_features = L.tensor("region.coord_features", {1, r.coord_feat_dim / 2});
  w->coord_encoder = L.linear("region.coord_encoder", r.coord_feat_dim, r.dim);
  w->coord_fc1 = L.linear("region.coord_decoder.fc1", r.dim, r.inner_dim);
  w->coord_fc2 = L.linear("region.coord_decoder.fc2", r.inner_dim, r.coord_out_dim);
  w->size_features = L.tensor("region.size_features", {2, r.size_feat_dim / 2});
  w->size_encoder = L.linear("region.size_encoder", r.size_feat_dim, r.dim);
  w->size_fc1 = L.linear("region.size_decoder.fc1", r.dim, r.inner_dim);
  w->size_fc2 = L.linear("region.size_decoder.fc2", r.inner_dim, r.size_out_dim);

  if (quantization != Quantization::None) {
    w->quant_cache_hit = w->quant_cache && L.fresh.empty();
    if (w->quant_cache && !w->quant_cache_hit) {
      // Some matrices came from the file, some not: keep the mapping (views
      // point into it) and leave the file alone.
      w->quant_cache_error = "the cache file lacks some matrices; not rewritten";
    } else if (!w->quant_cache_hit) {
      std::vector<std::pair<std::string, const QuantizedWeights*>> all;
      for (const auto& [name, i] : L.fresh) all.emplace_back(name, &w->quantized[i]);
      w->quant_cache_error = QuantCache::write(w->quant_cache_path, key, all);
    }
  }
  return w;
}

}  // namespace md
