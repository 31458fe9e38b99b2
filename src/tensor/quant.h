#pragma once
// Group-wise symmetric quantisation of weight matrices, done once at load.
// Q8: q = round(w / s), s = max|w| / 127 per group of `group` columns.
// Q4: q = round(w / s) + 8 in 0..15, s = max|w| / 7; a group of 32 is stored
// as 16 bytes, byte j holding q[j] (low nibble) and q[j + 16] (high nibble).
#include <cstdint>
#include <vector>

#include "tensor/gemv.h"

namespace md {

struct QuantizedWeights {
  WeightFormat format = WeightFormat::Q8;
  int rows = 0, cols = 0, group = 0;
  std::vector<uint8_t> data;
  std::vector<float> scales;
  WeightMatrix view() const;
};

// src: [rows, cols] in F32/BF16/F16. cols % group == 0; Q4 needs group == 32.
QuantizedWeights quantize(const void* src, WeightFormat src_format, int rows, int cols, WeightFormat target,
                          int group);
// One row of any format widened to fp32.
void dequantize_row(const WeightMatrix& w, int r, float* out);

}  // namespace md
