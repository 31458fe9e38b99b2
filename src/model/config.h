#pragma once
// Hyper-parameters of a Moondream2 model directory (config.json). Every field
// has its docs/MODEL.md section 2 default; config.json's inner "config" dict overrides.
#include <string>
#include <vector>

#include "model/revision.h"

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

struct ModelConfig {
  TextConfig text;
  VisionConfig vision;
  RegionConfig region;
  TokenizerConfig tokenizer;  // the revision's defaults, then config.json's overrides
  RevisionProfile revision;
};

// Parses config.json text. `source` names the file in error messages.
// Accepts {"config": {...}} (HF layout) or a bare {"text":…, "vision":…} dict.
// Throws md::Error on bad JSON, wrong types, non-positive or inconsistent values
// (e.g. dim not divisible by n_heads, n_heads not a multiple of n_kv_heads).
// The revision is detected as revision.h says (`model_dir`, if given, is
// searched for the remote code that names the starmie tokenizer).
ModelConfig parse_model_config(const std::string& json_text, const std::string& source,
                               RevisionChoice choice = RevisionChoice::kAuto, const std::string& model_dir = "");
// Reads <dir>/config.json; a missing file means all defaults.
ModelConfig load_model_config(const std::string& model_dir, RevisionChoice choice = RevisionChoice::kAuto);

}  // namespace md
