#pragma once
// The model's parameters ready for the kernels. Matrix weights are used in
// place from the memory map in their stored dtype (no copy at load), or
// quantised once to int8 / 4-bit when asked; small vectors (biases, norms,
// position embeddings) are widened to fp32.
#include <memory>
#include <string>
#include <vector>

#include "model/config.h"
#include "tensor/ops.h"
#include "model/quant_cache.h"
#include "tensor/quant.h"
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
  const TensorView* wte = nullptr;  // [vocab, dim] as stored; rows widened on lookup
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
  std::vector<QuantizedWeights> quantized;
  std::shared_ptr<QuantCache> quant_cache;  // mapped quantised weights, when loaded from the cache file
  size_t weight_bytes = 0;                  // bytes of all weights as the kernels read them
  // Quantised modes: the cache file, whether it was used, and why it could not be written.
  std::string quant_cache_path;
  bool quant_cache_hit = false;
  std::string quant_cache_error;
};

// Precision of the large matrices: as stored (BF16/F16/F32), or quantised at
// load with group-wise scales.
enum class Quantization { None, Int8, Q4 };
bool parse_quantization(const std::string& s, Quantization* out);  // "none", "int8", "q4"

// Loads and checks every tensor of docs/MODEL.md section 3 against the config's shapes.
std::unique_ptr<ModelWeights> load_weights(const std::string& model_dir, const ModelConfig& cfg,
                                           Quantization quantization = Quantization::None);

}  // namespace md
