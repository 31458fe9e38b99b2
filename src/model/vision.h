#pragma once
// Vision encoder (docs/MODEL.md section 5) and crop merge + projection (section 6).
#include <vector>

#include "model/config.h"
#include "model/image.h"
#include "model/weights.h"
#include "tensor/buffer_pool.h"

namespace md {

// crops_chw: [n, 3, crop, crop] normalised. Returns [n, grid², enc_dim] after post-LN.
PooledVector<float> run_vision_encoder(const ModelWeights& w, const VisionConfig& cfg, const float* crops_chw, int n);

// Rebuilds the local feature grid from the local crops' features (all crops
// after the global one) and average-pools it to grid×grid. Returns
// [grid², enc_dim].
PooledVector<float> merge_local_features(const VisionConfig& cfg, const float* local_features, Tiling tiling);

// features: [1 + rows·cols, grid², enc_dim] → image embeddings [grid², proj_out_dim].
PooledVector<float> project_features(const ModelWeights& w, const VisionConfig& cfg, const float* features,
                                     Tiling tiling);

// PyTorch adaptive_avg_pool2d on one channel-last grid: in [h, w, c] → out [oh, ow, c].
void adaptive_avg_pool(const float* in, int h, int w, int c, int oh, int ow, float* out);

}  // namespace md
