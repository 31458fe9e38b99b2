#include "model/vision.h"

#include <cstring>

#include "model/decode_batcher.h"
#include "tensor/buffer_pool.h"
#include "tensor/ops.h"
#include "tensor/parallel.h"

namespace md {

namespace {

// One crop through the whole tower: a crop's 729 rows already keep the GEMMs
// efficient, and the activations stay small (~35 MB) and come from the pool.
void encode_crop(const ModelWeights& w, const VisionConfig& cfg, const float* crop_chw, float* x) {
  const int P = cfg.enc_patch_size, C = cfg.in_channels, S = cfg.crop_size;
  const int grid = S / P, T = grid * grid, D = cfg.enc_dim;
  const int patch_dim = C * P * P;
  PooledVector<float> patches(size_t(T) * patch_dim), h(size_t(T) * D), qkv(size_t(T) * 3 * D), att(size_t(T) * D),
      ff(size_t(T) * cfg.enc_ff_dim);
  AttentionShape shape;
  shape.n_q = shape.n_k = T;
  shape.n_heads = shape.n_kv_heads = cfg.enc_n_heads;
  shape.head_dim = D / cfg.enc_n_heads;
  shape.q_stride = shape.kv_stride = 3 * D;
  // The int8 modes quantise the vision tower: its attention scores too.
  shape.int8_scores = !w.vision_blocks.empty() && w.vision_blocks.front().qkv.w.format == WeightFormat::Q8;
  // Patches laid out [channel][row][col], ordered row-major over the grid.
  parallel_for(size_t(T), [&](size_t b, size_t e) {
    for (size_t idx = b; idx < e; ++idx) {
      const int py = int(idx) / grid, px = int(idx) % grid;
      float* dst = patches.data() + idx * patch_dim;
      for (int c = 0; c < C; ++c)
        for (int r = 0; r < P; ++r)
          std::memcpy(dst + (c * P + r) * P, crop_chw + (size_t(c) * S + py * P + r) * S + px * P, sizeof(float) * P);
    }
  });
  // x: the residual stream, finally the features.
  linear(w.patch_emb, patches.data(), T, x);
  for (size_t i = 0; i < size_t(T) * D; ++i) x[i] += w.pos_emb[i];

  for (const VisionBlock& blk : w.vision_blocks) {
    // Batched decode steps of other tasks may run between layers.
    DecodeBatcher::yield_point();
    layer_norm(blk.ln1, x, T, h.data());
    linear(blk.qkv, h.data(), T, qkv.data());
    attention(shape, AttentionMask{}, qkv.data(), qkv.data() + D, qkv.data() + 2 * D, att.data());
    linear(blk.proj, att.data(), T, h.data());
    for (size_t i = 0; i < size_t(T) * D; ++i) x[i] += h[i];
    DecodeBatcher::yield_point();  // and half-way through a layer
    layer_norm(blk.ln2, x, T, h.data());
    linear_gelu(blk.fc1, h.data(), T, ff.data());
    linear(blk.fc2, ff.data(), T, h.data());
    for (size_t i = 0; i < size_t(T) * D; ++i) x[i] += h[i];
  }
  layer_norm(w.vision_post_ln, x, T, x);
}

}  // namespace

PooledVector<float> run_vision_encoder(const ModelWeights& w, const VisionConfig& cfg, const float* crops_chw, int n) {
  const int S = cfg.crop_size, grid = S / cfg.enc_patch_size;
  const size_t crop_floats = size_t(cfg.in_channels) * S * S, feature_floats = size_t(grid) * grid * cfg.enc_dim;
  PooledVector<float> out(size_t(n) * feature_floats);
  // Whole rounds of one crop per thread, then the rest one at a time on all
  // threads. A crop per thread has no barrier between its ops (each op's
  // slowest thread sets the pace otherwise): two crops in 1.43 s against
  // 1.46 s one after the other on both threads (best of 8 runs each).
  // Results are the same either way (ops_test checks the int8 GEMM).
  const int threads = num_threads();
  int crop = 0;
  for (; threads > 1 && n - crop >= threads; crop += threads)
    parallel_for(size_t(threads), [&](size_t b, size_t e) {
      for (size_t i = b; i < e; ++i)
        encode_crop(w, cfg, crops_chw + (crop + i) * crop_floats, out.data() + (crop + i) * feature_floats);
    });
  for (; crop < n; ++crop)
    encode_crop(w, cfg, crops_chw + size_t(crop) * crop_floats, out.data() + size_t(crop) * feature_floats);
  return out;
}

void adaptive_avg_pool(const float* in, int h, int w, int c, int oh, int ow, float* out) {
  for (int oy = 0; oy < oh; ++oy) {
    const int y0 = (oy * h) / oh, y1 = ((oy + 1) * h + oh - 1) / oh;
    for (int ox = 0; ox < ow; ++ox) {
      const int x0 = (ox * w) / ow, x1 = ((ox + 1) * w + ow - 1) / ow;
      float* o = out + (size_t(oy) * ow + ox) * c;
      std::vector<double> acc(size_t(c), 0.0);
      for (int y = y0; y < y1; ++y)
        for (int x = x0; x < x1; ++x) {
          const float* p = in + (size_t(y) * w + x) * c;
          for (int k = 0; k < c; ++k) acc[k] += p[k];
        }
      const double inv = 1.0 / double((y1 - y0) * (x1 - x0));
      for (int k = 0; k < c; ++k) o[k] = float(acc[k] * inv);
    }
  }
}

PooledVector<float> merge_local_features(const VisionConfig& cfg, const float* local_features, Tiling tiling) {
  const int grid = cfg.crop_size / cfg.enc_patch_size, D = cfg.enc_dim;
  const int m = cfg.overlap_margin, win = grid - 2 * m;
  const int out_h = tiling.rows * win + 2 * m, out_w = tiling.cols * win + 2 * m;
  PooledVector<float> full(size_t(out_h) * out_w * D, 0.0f);
  for (int i = 0; i < tiling.rows; ++i)
    for (int j = 0; j < tiling.cols; ++j) {
      const float* tile = local_features + size_t(i * tiling.cols + j) * grid * grid * D;
      const int r0 = i == 0 ? 0 : m, r1 = i == tiling.rows - 1 ? grid : grid - m;
      const int c0 = j == 0 ? 0 : m, c1 = j == tiling.cols - 1 ? grid : grid - m;
      for (int r = r0; r < r1; ++r)
        std::memcpy(full.data() + (size_t(i * win + r) * out_w + j * win + c0) * D, tile + (size_t(r) * grid + c0) * D,
                    sizeof(float) * (c1 - c0) * D);
    }
  PooledVector<float> pooled(size_t(grid) * grid * D);
  adaptive_avg_pool(full.data(), out_h, out_w, D, grid, grid, pooled.data());
  return pooled;
}

PooledVector<float> project_features(const ModelWeights& w, const VisionConfig& cfg, const float* features,
                                     Tiling tiling) {
  const int grid = cfg.crop_size / cfg.enc_patch_size, T = grid * grid, D = cfg.enc_dim;
  const PooledVector<float> pooled = merge_local_features(cfg, features + size_t(T) * D, tiling);
  PooledVector<float> cat(size_t(T) * 2 * D);
  for (int t = 0; t < T; ++t) {
    std::memcpy(cat.data() + size_t(t) * 2 * D, features + size_t(t) * D, sizeof(float) * D);
    std::memcpy(cat.data() + size_t(t) * 2 * D + D, pooled.data() + size_t(t) * D, sizeof(float) * D);
  }
  PooledVector<float> inner(size_t(T) * cfg.proj_inner_dim);
  linear_gelu(w.proj_fc1, cat.data(), T, inner.data());
  PooledVector<float> out(size_t(T) * cfg.proj_out_dim);
  linear(w.proj_fc2, inner.data(), T, out.data());
  return out;
}

}  // namespace md
