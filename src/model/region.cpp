#include "model/region.h"

#include <algorithm>
#include <cmath>

#include "tensor/ops.h"

namespace md {

std::vector<float> fourier_features(const float* v, int k, const float* F, int m) {
  std::vector<float> out(size_t(2) * m);
  constexpr float two_pi = 6.283185307179586f;
  for (int j = 0; j < m; ++j) {
    // (2π·v)·F, in fp32 as the reference evaluates 2·π·x @ w.
    float f = 0.0f;
    for (int i = 0; i < k; ++i) f += (two_pi * v[i]) * F[size_t(i) * m + j];
    out[j] = std::cos(f);
    out[m + j] = std::sin(f);
  }
  return out;
}

std::vector<float> RegionModel::mlp(const Linear& fc1, const Linear& fc2, const float* hidden) const {
  std::vector<float> inner(size_t(fc1.out));
  linear(fc1, hidden, 1, inner.data());
  gelu_tanh(inner.data(), inner.size());
  std::vector<float> out(size_t(fc2.out));
  linear(fc2, inner.data(), 1, out.data());
  return out;
}

static int argmax(const float* x, int n) { return int(std::max_element(x, x + n) - x); }

float RegionModel::decode_coordinate(const float* hidden) const {
  const std::vector<float> logits = mlp(w_.coord_fc1, w_.coord_fc2, hidden);
  return float(argmax(logits.data(), int(logits.size()))) / float(logits.size());
}

std::vector<float> RegionModel::encode_coordinate(float c) const {
  const std::vector<float> f = fourier_features(&c, 1, w_.coord_features, cfg_.coord_feat_dim / 2);
  std::vector<float> out(size_t(cfg_.dim));
  linear(w_.coord_encoder, f.data(), 1, out.data());
  return out;
}

void RegionModel::decode_size(const float* hidden, float* w, float* h) const {
  const std::vector<float> logits = mlp(w_.size_fc1, w_.size_fc2, hidden);
  const int bins = int(logits.size()) / 2;
  const int wb = argmax(logits.data(), bins), hb = argmax(logits.data() + bins, bins);
  *w = std::pow(2.0f, (float(wb) / float(bins - 1)) * 10.0f - 10.0f);
  *h = std::pow(2.0f, (float(hb) / float(bins - 1)) * 10.0f - 10.0f);
}

std::vector<float> RegionModel::encode_size(float w, float h) const {
  const float v[2] = {w, h};
  const std::vector<float> f = fourier_features(v, 2, w_.size_features, cfg_.size_feat_dim / 2);
  std::vector<float> out(size_t(cfg_.dim));
  linear(w_.size_encoder, f.data(), 1, out.data());
  return out;
}

}  // namespace md
