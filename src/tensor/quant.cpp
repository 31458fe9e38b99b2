// Group-wise Q8 / Q4 quantisation (layouts in quant.h). The per-row work is
// done by the dispatched kernel table (AVX-512 or the scalar version below),
// rows in parallel.
#include "tensor/quant.h"

#include <cmath>
#include <cstring>
#include <string>

#include "tensor/dtype.h"
#include "tensor/error.h"
#include "tensor/gemv_impl.h"
#include "tensor/parallel.h"

namespace md {

WeightMatrix QuantizedWeights::view() const {
  WeightMatrix w;
  w.format = format;
  w.rows = rows;
  w.cols = cols;
  w.data = data.data();
  w.aux = aux.data();
  w.group = group;
  return w;
}

bool quant_group_ok(int cols, int group) {
  if (group <= 0 || cols <= 0 || cols % group != 0) return false;
  return group == 32 || group == 64 || group % 128 == 0;
}

bool quant_layout_ok(WeightFormat target, int cols, int group) {
  if (quant_group_ok(cols, group)) return true;
  return target == WeightFormat::Q8 && cols > 0 && group == cols && cols % 16 == 0;
}

size_t quant_data_bytes(WeightFormat target, int rows, int cols) {
  const size_t n = size_t(rows) * size_t(cols);
  return target == WeightFormat::Q4 ? n / 2 : n;
}

size_t quant_aux_bytes(int rows, int cols, int group) {
  return group > 0 ? size_t(rows) * size_t(cols / group) * 2 : 0;
}

namespace gemv_detail {

namespace {
inline float rne(float v) {
  constexpr float kMagic = 12582912.0f;  // valid for |v| < 2^22
  return (v + kMagic) - kMagic;
}
}  // namespace

void quant_row_scalar(WeightFormat target, const float* w, int cols, int group, uint8_t* out, uint16_t* scales,
                      uint8_t* scratch) {
  const int ng = cols / group;
  if (target == WeightFormat::Q8) {
    for (int g = 0; g < ng; ++g) {
      const float* wg = w + size_t(g) * size_t(group);
      float amax = 0.0f;
      for (int c = 0; c < group; ++c) {
        const float a = std::fabs(wg[c]);
        amax = a > amax ? a : amax;
      }
      const uint16_t h = f32_to_f16(amax / 127.0f);
      scales[g] = h;
      const float d = f16_to_f32(h);
      const float id = d != 0.0f ? 1.0f / d : 0.0f;
      uint8_t* og = out + size_t(g) * size_t(group);
      for (int c = 0; c < group; ++c) {
        float q = rne(wg[c] * id);
        q = q > 127.0f ? 127.0f : (q < -127.0f ? -127.0f : q);
        og[c] = uint8_t(int(q) + 128);
      }
    }
    return;
  }
  uint8_t* qrow = scratch;
  for (int g = 0; g < ng; ++g) {
    const float* wg = w + size_t(g) * size_t(group);
    float mx = -INFINITY, mn = INFINITY;
    for (int c = 0; c < group; ++c) {
      mx = wg[c] > mx ? wg[c] : mx;
      mn = wg[c] < mn ? wg[c] : mn;
    }
    const float mref = mx >= -mn ? mx : mn;
    uint8_t* qg = qrow + size_t(g) * size_t(group);
    if (mref == 0.0f) {
      scales[g] = 0;
      std::memset(qg, 8, size_t(group));
      continue;
    }
    float best_score = -1.0f, best_d = 0.0f, best_t = kQ4Candidates[0];
    for (float t : kQ4Candidates) {
      const float id = t / mref;
      float swq = 0.0f, sqq = 0.0f;
      for (int c = 0; c < group; ++c) {
        float q = rne(wg[c] * id);
        q = q > 7.0f ? 7.0f : (q < -8.0f ? -8.0f : q);
        swq += wg[c] * q;
        sqq += q * q;
      }
      if (sqq <= 0.0f) continue;
      const float score = swq * swq / sqq;
      if (score > best_score) {
        best_score = score;
        best_d = swq / sqq;
        best_t = t;
      }
    }
    scales[g] = f32_to_f16(best_d);
    const float id = best_t / mref;
    for (int c = 0; c < group; ++c) {
      float q = rne(wg[c] * id);
      q = q > 7.0f ? 7.0f : (q < -8.0f ? -8.0f : q);
      qg[c] = uint8_t(int(q) + 8);
    }
  }
  for (int b = 0; b < cols; b += 128) {
    const int n = cols - b < 128 ? cols - b : 128, half = n / 2;
    for (int j = 0; j < half; ++j) out[b / 2 + j] = uint8_t(qrow[b + j] | (qrow[b + j + half] << 4));
  }
}

}  // namespace gemv_detail

namespace {

thread_local std::vector<float> t_f32;
thread_local std::vector<uint8_t> t_scratch;

// Row r of a stored F32/BF16/F16 matrix as fp32 (a pointer into src when it
// is already aligned fp32).
const float* source_row(const void* src, WeightFormat fmt, int cols, int r, float* buf) {
  const size_t n = size_t(cols);
  const uint8_t* base = static_cast<const uint8_t*>(src);
  switch (fmt) {
    case WeightFormat::F32: {
      const uint8_t* p = base + 4 * n * size_t(r);
      if (reinterpret_cast<uintptr_t>(p) % alignof(float) == 0) return reinterpret_cast<const float*>(p);
      std::memcpy(buf, p, 4 * n);
      return buf;
    }
    case WeightFormat::BF16: convert_to_f32(DType::BF16, base + 2 * n * size_t(r), buf, n); return buf;
    case WeightFormat::F16: convert_to_f32(DType::F16, base + 2 * n * size_t(r), buf, n); return buf;
    default: break;
  }
  throw Error("quantize: source must be F32, BF16 or F16");
}

void check_args(WeightFormat src_format, int rows, int cols, WeightFormat target, int group) {
  if (target != WeightFormat::Q8 && target != WeightFormat::Q4) throw Error("quantize: target must be Q8 or Q4");
  if (src_format != WeightFormat::F32 && src_format != WeightFormat::BF16 && src_format != WeightFormat::F16)
    throw Error("quantize: source must be F32, BF16 or F16");
  if (rows <= 0 || !quant_layout_ok(target, cols, group))
    throw Error("quantize: bad group size " + std::to_string(group) + " for " + std::to_string(cols) +
                " columns (32, 64 or a multiple of 128, dividing the columns; Q8 also one group per row of "
                "a multiple of 16)");
}

}  // namespace

void quantize_into(const void* src, WeightFormat src_format, int rows, int cols, WeightFormat target, int group,
                   uint8_t* data, uint16_t* scales) {
  check_args(src_format, rows, cols, target, group);
  const gemv_detail::QuantRow fn = gemv_detail::kernels().quant_row;
  const size_t row_bytes = quant_data_bytes(target, 1, cols);
  const size_t ng = size_t(cols / group);
  constexpr size_t kChunk = 16;
  const size_t nchunks = (size_t(rows) + kChunk - 1) / kChunk;
  parallel_for(nchunks, [&](size_t b, size_t e) {
    t_f32.resize(size_t(cols));
    t_scratch.resize(size_t(cols));
    const size_t r1 = e * kChunk < size_t(rows) ? e * kChunk : size_t(rows);
    for (size_t r = b * kChunk; r < r1; ++r) {
      const float* row = source_row(src, src_format, cols, int(r), t_f32.data());
      fn(target, row, cols, group, data + r * row_bytes, scales + r * ng, t_scratch.data());
    }
  });
}

QuantizedWeights quantize(const void* src, WeightFormat src_format, int rows, int cols, WeightFormat target,
                          int group) {
  check_args(src_format, rows, cols, target, group);
  QuantizedWeights q;
  q.format = target;
  q.rows = rows;
  q.cols = cols;
  q.group = group;
  q.data.resize(quant_data_bytes(target, rows, cols));
  q.aux.resize(quant_aux_bytes(rows, cols, group));
  quantize_into(src, src_format, rows, cols, target, group, q.data.data(), reinterpret_cast<uint16_t*>(q.aux.data()));
  return q;
}

void dequantize_row(const WeightMatrix& w, int r, float* out) {
  const size_t cols = size_t(w.cols);
  const uint8_t* base = static_cast<const uint8_t*>(w.data);
  switch (w.format) {
    case WeightFormat::F32: std::memcpy(out, base + 4 * cols * size_t(r), 4 * cols); return;
    case WeightFormat::BF16: convert_to_f32(DType::BF16, base + 2 * cols * size_t(r), out, cols); return;
    case WeightFormat::F16: convert_to_f32(DType::F16, base + 2 * cols * size_t(r), out, cols); return;
    case WeightFormat::Q8:
    case WeightFormat::Q4: break;
  }
  const size_t G = size_t(w.group), ng = cols / G;
  const uint8_t* sp = static_cast<const uint8_t*>(w.aux) + 2 * ng * size_t(r);
  auto scale = [&](size_t c) {
    uint16_t h;
    std::memcpy(&h, sp + 2 * (c / G), 2);
    return f16_to_f32(h);
  };
  if (w.format == WeightFormat::Q8) {
    const uint8_t* row = base + cols * size_t(r);
    for (size_t c = 0; c < cols; ++c) out[c] = scale(c) * float(int(row[c]) - 128);
    return;
  }
  const uint8_t* row = base + cols / 2 * size_t(r);
  for (size_t b = 0; b < cols; b += 128) {
    const size_t n = cols - b < 128 ? cols - b : 128, half = n / 2;
    for (size_t j = 0; j < half; ++j) {
      const uint8_t v = row[b / 2 + j];
      out[b + j] = scale(b + j) * float(int(v & 0x0f) - 8);
      out[b + j + half] = scale(b + j + half) * float(int(v >> 4) - 8);
    }
  }
}

}  // namespace md
