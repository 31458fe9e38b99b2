#include "tensor/quant.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "tensor/dtype.h"
#include "tensor/error.h"
#include "tensor/parallel.h"

namespace md {

WeightMatrix QuantizedWeights::view() const {
  WeightMatrix w;
  w.format = format;
  w.rows = rows;
  w.cols = cols;
  w.data = data.data();
  w.scales = scales.data();
  w.group = group;
  return w;
}

static DType dtype_of(WeightFormat f) {
  switch (f) {
    case WeightFormat::F32: return DType::F32;
    case WeightFormat::BF16: return DType::BF16;
    case WeightFormat::F16: return DType::F16;
    default: throw Error("quantize: source must be F32, BF16 or F16");
  }
}

QuantizedWeights quantize(const void* src, WeightFormat src_format, int rows, int cols, WeightFormat target,
                          int group) {
  if (target != WeightFormat::Q8 && target != WeightFormat::Q4) throw Error("quantize: target must be Q8 or Q4");
  if (group <= 0 || cols % group != 0 || (target == WeightFormat::Q4 && group != 32))
    throw Error("quantize: bad group size " + std::to_string(group) + " for " + std::to_string(cols) + " columns");
  const DType dt = dtype_of(src_format);
  QuantizedWeights q;
  q.format = target;
  q.rows = rows;
  q.cols = cols;
  q.group = group;
  const size_t row_bytes = target == WeightFormat::Q8 ? size_t(cols) : size_t(cols) / 2;
  q.data.resize(size_t(rows) * row_bytes);
  const int groups = cols / group;
  q.scales.resize(size_t(rows) * groups);
  const float qmax = target == WeightFormat::Q8 ? 127.0f : 7.0f;
  parallel_for(size_t(rows), [&](size_t rb, size_t re) {
    std::vector<float> row(static_cast<size_t>(cols));
    for (size_t r = rb; r < re; ++r) {
      convert_to_f32(dt, static_cast<const uint8_t*>(src) + r * cols * dtype_size(dt), row.data(), size_t(cols));
      for (int g = 0; g < groups; ++g) {
        const float* v = row.data() + size_t(g) * group;
        float amax = 0;
        for (int i = 0; i < group; ++i) amax = std::max(amax, std::abs(v[i]));
        const float s = amax / qmax, inv = s > 0 ? 1.0f / s : 0.0f;
        q.scales[r * groups + g] = s;
        if (target == WeightFormat::Q8) {
          int8_t* out = reinterpret_cast<int8_t*>(q.data.data()) + r * row_bytes + size_t(g) * group;
          for (int i = 0; i < group; ++i) out[i] = int8_t(std::clamp(std::lround(v[i] * inv), -127L, 127L));
        } else {
          uint8_t* out = q.data.data() + r * row_bytes + size_t(g) * 16;
          for (int i = 0; i < 16; ++i) {
            const long lo = std::clamp(std::lround(v[i] * inv), -7L, 7L) + 8;
            const long hi = std::clamp(std::lround(v[i + 16] * inv), -7L, 7L) + 8;
            out[i] = uint8_t(lo | (hi << 4));
          }
        }
      }
    }
  });
  return q;
}

void dequantize_row(const WeightMatrix& w, int r, float* out) {
  const size_t cols = size_t(w.cols);
  switch (w.format) {
    case WeightFormat::F32:
    case WeightFormat::BF16:
    case WeightFormat::F16: {
      const DType dt = dtype_of(w.format);
      convert_to_f32(dt, static_cast<const uint8_t*>(w.data) + size_t(r) * cols * dtype_size(dt), out, cols);
      return;
    }
    case WeightFormat::Q8: {
      const int8_t* q = static_cast<const int8_t*>(w.data) + size_t(r) * cols;
      const float* sc = w.scales + size_t(r) * (cols / w.group);
      for (size_t c = 0; c < cols; ++c) out[c] = float(q[c]) * sc[c / w.group];
      return;
    }
    case WeightFormat::Q4: {
      const uint8_t* q = static_cast<const uint8_t*>(w.data) + size_t(r) * cols / 2;
      const float* sc = w.scales + size_t(r) * (cols / 32);
      for (size_t g = 0; g < cols / 32; ++g)
        for (int i = 0; i < 16; ++i) {
          out[g * 32 + i] = float(int(q[g * 16 + i] & 15) - 8) * sc[g];
          out[g * 32 + i + 16] = float(int(q[g * 16 + i] >> 4) - 8) * sc[g];
        }
      return;
    }
  }
}

}  // namespace md
