#pragma once
// The model's parameters as fp32 arrays ready for the kernels. F32 tensors are
// used in place from the memory map; BF16/F16 tensors are widened once at load.
#include <memory>
#include <string>
#include <vector>

#include "model/config.h"
#include "tensor/ops.h"
#include "tensor/safetensors.h"

namespace md {

struct VisionBlock {
  LayerNormWeights ln1, ln2;
  Linear qkv, proj, fc1, fc2;
};

struct TextBlock {
  LayerNormWeights ln;
  Linear qkv, proj, fc1, fc2;
};

struct ModelWeights {
  // vision
  Linear patch_emb;
  const float* pos_emb = nullptr;  // [729, enc_dim]
  std::vector<VisionBlock> vision_blocks;
  LayerNormWeights vision_post_ln;
  Linear proj_fc1, proj_fc2;
  // text
  const float* wte = nullptr;  // [vocab, dim]
  std::vector<TextBlock> text_blocks;
  LayerNormWeights text_post_ln;
  Linear lm_head;
  // region
  const float* coord_features = nullptr;  // [1, coord_feat_dim/2]
  Linear coord_encoder, coord_fc1, coord_fc2;
  const float* size_features = nullptr;  // [2, size_feat_dim/2]
  Linear size_encoder, size_fc1, size_fc2;

  // Keeps the weight files mapped and owns widened copies.
  std::shared_ptr<WeightStore> store;
  std::vector<std::vector<float>> owned;
  size_t bytes_in_use = 0;  // fp32 bytes the kernels read
};

// Loads and checks every tensor of contract section 3 against the config's shapes.
std::unique_ptr<ModelWeights> load_weights(const std::string& model_dir, const ModelConfig& cfg);

}  // namespace md
