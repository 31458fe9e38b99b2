#include "model/config.h"

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#include "tensor/error.h"
#include "tensor/json_text.h"

namespace md {

using json = nlohmann::json;

namespace {

// Upper bound for any hyper-parameter: keeps every product the engine forms
// from them well inside 64-bit (and most inside 32-bit) arithmetic.
constexpr int64_t kMaxValue = 1 << 24;

class Reader {
 public:
  explicit Reader(const std::string& source) : src_(source) {}

  [[noreturn]] void fail(const std::string& msg) const { throw Error(src_ + ": " + msg); }

  // Returns the sub-object `key` of `obj` (path `path`), or nullptr when
  // absent or null.
  const json* section(const json& obj, const char* key, const std::string& path) const {
    auto it = obj.find(key);
    if (it == obj.end() || it->is_null()) return nullptr;
    if (!it->is_object()) fail(path + " must be an object, got " + json_text::brief(*it));
    return &*it;
  }

  // Reads an integer field if present. `min` is 1 for dimensions, 0 for ids
  // and margins.
  void get_int(const json& obj, const char* key, const std::string& path, int* out, int64_t min = 1) const {
    auto it = obj.find(key);
    if (it == obj.end()) return;
    const std::string p = path + "." + key;
    const char* what = min >= 1 ? "a positive integer" : "a non-negative integer";
    if (!it->is_number_integer()) fail(p + " must be " + std::string(what) + ", got " + json_text::brief(*it));
    if (it->is_number_unsigned()) {
      uint64_t u = it->get<uint64_t>();
      if (int64_t(std::min<uint64_t>(u, uint64_t(kMaxValue))) < min)
        fail(p + " must be " + std::string(what) + ", got " + json_text::brief(*it));
      if (u > uint64_t(kMaxValue))
        fail(p + " must be " + std::string(what) + " at most " + std::to_string(kMaxValue) + ", got " +
             json_text::brief(*it));
      *out = int(u);
      return;
    }
    int64_t v = it->get<int64_t>();
    if (v < min) fail(p + " must be " + std::string(what) + ", got " + json_text::brief(*it));
    if (v > kMaxValue)
      fail(p + " must be " + std::string(what) + " at most " + std::to_string(kMaxValue) + ", got " +
           json_text::brief(*it));
    *out = int(v);
  }

  // A token template: array of non-negative integers; null keeps the default.
  void get_ids(const json& obj, const char* key, const std::string& path, std::vector<int>* out) const {
    auto it = obj.find(key);
    if (it == obj.end() || it->is_null()) return;
    const std::string p = path + "." + key;
    if (!it->is_array()) fail(p + " must be an array of token ids, got " + json_text::brief(*it));
    std::vector<int> ids;
    for (const json& v : *it) {
      const bool ok = v.is_number_unsigned()  ? v.get<uint64_t>() <= uint64_t(INT_MAX)
                      : v.is_number_integer() ? v.get<int64_t>() >= 0 && v.get<int64_t>() <= INT_MAX
                                              : false;
      if (!ok) fail(p + " must be an array of non-negative integer token ids, got " + json_text::brief(v));
      ids.push_back(int(v.get<int64_t>()));
    }
    *out = std::move(ids);
  }

 private:
  std::string src_;
};

void validate(const ModelConfig& c, const Reader& R, const std::string& pre) {
  const TextConfig& t = c.text;
  const VisionConfig& v = c.vision;
  const RegionConfig& r = c.region;
  const TokenizerConfig& k = c.tokenizer;
  auto need = [&](bool ok, const std::string& msg) {
    if (!ok) R.fail(msg);
  };
  auto n = [&](const std::string& key, int64_t val) { return pre + key + " (" + std::to_string(val) + ")"; };

  need(t.dim % t.n_heads == 0, n("text.dim", t.dim) + " must be divisible by " + n("text.n_heads", t.n_heads));
  const int head_dim = t.dim / t.n_heads;
  need(head_dim % 2 == 0 && head_dim >= 32, "text head dimension " + n("text.dim", t.dim) + " / " +
                                                n("text.n_heads", t.n_heads) + " = " + std::to_string(head_dim) +
                                                " must be even and at least 32 (rotary embedding uses 32 dims)");
  need(t.n_heads % t.n_kv_heads == 0,
       n("text.n_heads", t.n_heads) + " must be a multiple of " + n("text.n_kv_heads", t.n_kv_heads));

  need(v.enc_dim % v.enc_n_heads == 0,
       n("vision.enc_dim", v.enc_dim) + " must be divisible by " + n("vision.enc_n_heads", v.enc_n_heads));
  need(v.crop_size % v.enc_patch_size == 0,
       n("vision.crop_size", v.crop_size) + " must be divisible by " + n("vision.enc_patch_size", v.enc_patch_size));
  const int64_t grid = v.crop_size / v.enc_patch_size;
  need(grid > 2 * int64_t(v.overlap_margin), "patch grid " + std::to_string(grid) + " (" + pre + "vision.crop_size / " +
                                                 pre + "vision.enc_patch_size) must exceed twice " +
                                                 n("vision.overlap_margin", v.overlap_margin));
  need(int64_t(t.prefix_attn) == 1 + grid * grid,
       n("text.prefix_attn", t.prefix_attn) +
           " must be 1 + (crop_size / enc_patch_size)^2 = " + std::to_string(1 + grid * grid));
  need(t.max_context > t.prefix_attn,
       n("text.max_context", t.max_context) + " must exceed " + n("text.prefix_attn", t.prefix_attn));
  need(v.proj_out_dim == t.dim, n("vision.proj_out_dim", v.proj_out_dim) + " must equal " + n("text.dim", t.dim));
  need(r.dim == t.dim, n("region.dim", r.dim) + " must equal " + n("text.dim", t.dim));
  need(r.coord_feat_dim % 2 == 0, n("region.coord_feat_dim", r.coord_feat_dim) + " must be even");
  need(r.size_feat_dim % 2 == 0, n("region.size_feat_dim", r.size_feat_dim) + " must be even");

  need(k.bos_id < t.vocab_size,
       n("tokenizer.bos_id", k.bos_id) + " must be below " + n("text.vocab_size", t.vocab_size));
  need(k.eos_id < t.vocab_size,
       n("tokenizer.eos_id", k.eos_id) + " must be below " + n("text.vocab_size", t.vocab_size));
  for (const auto& [name, id] : {std::pair<const char*, int>{"tokenizer.answer_id", k.answer_id},
                                 {"tokenizer.thinking_id", k.thinking_id},
                                 {"tokenizer.coord_id", k.coord_id},
                                 {"tokenizer.size_id", k.size_id},
                                 {"tokenizer.start_ground_points_id", k.start_ground_points_id},
                                 {"tokenizer.end_ground_id", k.end_ground_id}})
    need(id < t.vocab_size, n(name, id) + " must be below " + n("text.vocab_size", t.vocab_size));
  const std::pair<const char*, const std::vector<int>*> templates[] = {
      {"caption.short", &k.caption_short}, {"caption.normal", &k.caption_normal}, {"caption.long", &k.caption_long},
      {"query.prefix", &k.query_prefix},   {"query.suffix", &k.query_suffix},     {"detect.prefix", &k.detect_prefix},
      {"detect.suffix", &k.detect_suffix}, {"point.prefix", &k.point_prefix},     {"point.suffix", &k.point_suffix},
  };
  for (const auto& [name, ids] : templates)
    for (int id : *ids)
      need(id < t.vocab_size, pre + "tokenizer.templates." + name + " contains token id " + std::to_string(id) +
                                  ", not below " + n("text.vocab_size", t.vocab_size));
}

}  // namespace

ModelConfig parse_model_config(const std::string& json_text, const std::string& source, RevisionChoice choice,
                               const std::string& model_dir) {
  json root;
  try {
    root = json::parse(json_text);
  } catch (const std::exception& e) {
    throw Error(source + ": invalid JSON: " + json_text::error_text(e));
  }
  Reader R(source);
  if (!root.is_object()) R.fail("not a JSON object");

  ModelConfig c;
  const json* cfg = &root;
  std::string pre;
  auto inner = root.find("config");
  bool null_inner = false;
  if (inner != root.end()) {
    if (!inner->is_null() && !inner->is_object()) R.fail("config must be an object, got " + json_text::brief(*inner));
    null_inner = inner->is_null();
    cfg = &*inner;
    pre = "config.";
  }
  // The revision first: it decides the tokenizer defaults the config overrides.
  std::optional<int> bos;
  if (!null_inner) {
    auto k = cfg->find("tokenizer");
    if (k != cfg->end() && k->is_object()) {
      auto b = k->find("bos_id");
      if (b != k->end() && b->is_number_integer()) bos = b->get<int64_t>() == 0 ? 0 : 1;
    }
  }
  c.revision = detect_revision(model_dir, bos, choice);
  c.tokenizer = RevisionProfile::default_tokens(c.revision.family);
  if (null_inner) return c;

  if (const json* t = R.section(*cfg, "text", pre + "text")) {
    const std::string p = pre + "text";
    R.get_int(*t, "dim", p, &c.text.dim);
    R.get_int(*t, "ff_dim", p, &c.text.ff_dim);
    R.get_int(*t, "n_layers", p, &c.text.n_layers);
    R.get_int(*t, "vocab_size", p, &c.text.vocab_size);
    R.get_int(*t, "max_context", p, &c.text.max_context);
    R.get_int(*t, "n_heads", p, &c.text.n_heads);
    R.get_int(*t, "n_kv_heads", p, &c.text.n_kv_heads);
    R.get_int(*t, "prefix_attn", p, &c.text.prefix_attn);
  }
  if (const json* v = R.section(*cfg, "vision", pre + "vision")) {
    const std::string p = pre + "vision";
    R.get_int(*v, "enc_dim", p, &c.vision.enc_dim);
    R.get_int(*v, "enc_patch_size", p, &c.vision.enc_patch_size);
    R.get_int(*v, "enc_n_layers", p, &c.vision.enc_n_layers);
    R.get_int(*v, "enc_ff_dim", p, &c.vision.enc_ff_dim);
    R.get_int(*v, "enc_n_heads", p, &c.vision.enc_n_heads);
    R.get_int(*v, "proj_out_dim", p, &c.vision.proj_out_dim);
    R.get_int(*v, "crop_size", p, &c.vision.crop_size);
    R.get_int(*v, "in_channels", p, &c.vision.in_channels);
    R.get_int(*v, "max_crops", p, &c.vision.max_crops);
    R.get_int(*v, "overlap_margin", p, &c.vision.overlap_margin, 0);
    R.get_int(*v, "proj_inner_dim", p, &c.vision.proj_inner_dim);
  }
  if (const json* r = R.section(*cfg, "region", pre + "region")) {
    const std::string p = pre + "region";
    R.get_int(*r, "dim", p, &c.region.dim);
    R.get_int(*r, "coord_feat_dim", p, &c.region.coord_feat_dim);
    R.get_int(*r, "coord_out_dim", p, &c.region.coord_out_dim);
    R.get_int(*r, "size_feat_dim", p, &c.region.size_feat_dim);
    R.get_int(*r, "size_out_dim", p, &c.region.size_out_dim);
    R.get_int(*r, "inner_dim", p, &c.region.inner_dim);
  }
  if (const json* k = R.section(*cfg, "tokenizer", pre + "tokenizer")) {
    const std::string p = pre + "tokenizer";
    R.get_int(*k, "bos_id", p, &c.tokenizer.bos_id, 0);
    R.get_int(*k, "eos_id", p, &c.tokenizer.eos_id, 0);
    R.get_int(*k, "answer_id", p, &c.tokenizer.answer_id, 0);
    R.get_int(*k, "thinking_id", p, &c.tokenizer.thinking_id, 0);
    R.get_int(*k, "coord_id", p, &c.tokenizer.coord_id, 0);
    R.get_int(*k, "size_id", p, &c.tokenizer.size_id, 0);
    R.get_int(*k, "start_ground_points_id", p, &c.tokenizer.start_ground_points_id, 0);
    R.get_int(*k, "end_ground_id", p, &c.tokenizer.end_ground_id, 0);
    if (const json* tm = R.section(*k, "templates", p + ".templates")) {
      const std::string tp = p + ".templates";
      if (const json* s = R.section(*tm, "caption", tp + ".caption")) {
        R.get_ids(*s, "short", tp + ".caption", &c.tokenizer.caption_short);
        R.get_ids(*s, "normal", tp + ".caption", &c.tokenizer.caption_normal);
        R.get_ids(*s, "long", tp + ".caption", &c.tokenizer.caption_long);
      }
      if (const json* s = R.section(*tm, "query", tp + ".query")) {
        R.get_ids(*s, "prefix", tp + ".query", &c.tokenizer.query_prefix);
        R.get_ids(*s, "suffix", tp + ".query", &c.tokenizer.query_suffix);
      }
      if (const json* s = R.section(*tm, "detect", tp + ".detect")) {
        R.get_ids(*s, "prefix", tp + ".detect", &c.tokenizer.detect_prefix);
        R.get_ids(*s, "suffix", tp + ".detect", &c.tokenizer.detect_suffix);
      }
      if (const json* s = R.section(*tm, "point", tp + ".point")) {
        R.get_ids(*s, "prefix", tp + ".point", &c.tokenizer.point_prefix);
        R.get_ids(*s, "suffix", tp + ".point", &c.tokenizer.point_suffix);
      }
    }
  }

  validate(c, R, pre);
  return c;
}

ModelConfig load_model_config(const std::string& model_dir, RevisionChoice choice) {
  const std::string path = (std::filesystem::path(model_dir) / "config.json").string();
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) {
    if (ec) throw Error(path + ": cannot access: " + ec.message());
    return parse_model_config("{}", path, choice, model_dir);
  }
  if (!std::filesystem::is_regular_file(path, ec)) throw Error(path + ": not a regular file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open: " + std::strerror(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw Error(path + ": read error");
  return parse_model_config(ss.str(), path, choice, model_dir);
}

}  // namespace md
