#pragma once
// Hyper-parameters of a Moondream2 model directory (config.json). Every field
// has the contract's default; config.json's inner "config" dict overrides.
#include <string>
#include <vector>

namespace md {

struct TextConfig {
  int dim = 2048;
  int ff_dim = 8192;
  int n_layers = 24;
  int vocab_size = 51200;
  int max_context = 2048;
  int n_heads = 32;
  int n_kv_heads = 32;
  int prefix_attn = 730;
};

struct VisionConfig {
  int enc_dim = 1152;
  int enc_patch_size = 14;
  int enc_n_layers = 27;
  int enc_ff_dim = 4304;
  int enc_n_heads = 16;
  int proj_out_dim = 2048;
  int crop_size = 378;
  int in_channels = 3;
  int max_crops = 12;
  int overlap_margin = 4;
  int proj_inner_dim = 8192;
};

struct RegionConfig {
  int dim = 2048;
  int coord_feat_dim = 256;
  int coord_out_dim = 1024;
  int size_feat_dim = 512;
  int size_out_dim = 2048;
  int inner_dim = 8192;
};

struct TokenizerConfig {
  int bos_id = 50256;
  int eos_id = 50256;
  std::vector<int> caption_short{198, 198, 16438, 8305, 25};
  std::vector<int> caption_normal{198, 198, 24334, 1159, 25};
  std::vector<int> caption_long{198, 198, 14617, 8305, 25};
  std::vector<int> query_prefix{198, 198, 24361, 25};
  std::vector<int> query_suffix{198, 198, 33706, 25};
  std::vector<int> detect_prefix{198, 198, 47504, 25};
  std::vector<int> detect_suffix{628};
  std::vector<int> point_prefix{198, 198, 12727, 25};
  std::vector<int> point_suffix{628};
};

struct ModelConfig {
  TextConfig text;
  VisionConfig vision;
  RegionConfig region;
  TokenizerConfig tokenizer;
};

// Parses config.json text. `source` names the file in error messages.
// Accepts {"config": {...}} (HF layout) or a bare {"text":…, "vision":…} dict.
// Throws md::Error on bad JSON, wrong types, non-positive or inconsistent values
// (e.g. dim not divisible by n_heads, n_heads not a multiple of n_kv_heads).
ModelConfig parse_model_config(const std::string& json_text, const std::string& source);
// Reads <dir>/config.json; a missing file means all defaults.
ModelConfig load_model_config(const std::string& model_dir);

}  // namespace md
