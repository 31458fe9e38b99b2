#pragma once
// Region head (docs/MODEL.md section 8): coordinates and sizes in and out of the
// text model's hidden space.
#include <vector>

#include "model/config.h"
#include "model/weights.h"

namespace md {

class RegionModel {
 public:
  RegionModel(const ModelWeights& w, const RegionConfig& cfg) : w_(w), cfg_(cfg) {}

  // argmax(coord_decoder(h)) / coord_out_dim, in [0, 1).
  float decode_coordinate(const float* hidden) const;
  // coord_encoder(fourier(c, coord_features)) → [dim].
  std::vector<float> encode_coordinate(float c) const;
  // size_decoder(h) viewed [2, size_out_dim/2]; each argmax bin b → 2^(b/(bins−1)·10 − 10).
  void decode_size(const float* hidden, float* w, float* h) const;
  // size_encoder(fourier([w, h], size_features)) → [dim].
  std::vector<float> encode_size(float w, float h) const;

 private:
  std::vector<float> mlp(const Linear& fc1, const Linear& fc2, const float* hidden) const;
  const ModelWeights& w_;
  RegionConfig cfg_;
};

// concat(cos(2π·v·F), sin(2π·v·F)) where v·F is the product of the row
// vector v [k] and F [k, m] → [2m].
std::vector<float> fourier_features(const float* v, int k, const float* F, int m);

}  // namespace md
