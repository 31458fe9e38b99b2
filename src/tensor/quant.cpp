// Group-wise Q8 / Q4 quantisation (layouts in quant.h). The per-row work is
// done by the dispatched kernel table (AVX-512 or the scalar version below),
// rows in parallel.
#include "tensor/quant.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "tensor/dtype.h"
#include "tensor/error.h"
#include "tensor/gemv_impl.h"
#include "tensor/isa.h"
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
  if (target == WeightFormat::Q4) return size_t(q4_panels(rows)) * kQ4PanelRows * size_t(cols) / 2;
  return size_t(rows) * size_t(cols);
}

size_t quant_aux_bytes(WeightFormat target, int rows, int cols, int group) {
  if (group <= 0) return 0;
  const size_t stored_rows = target == WeightFormat::Q4 ? size_t(q4_panels(rows)) * kQ4PanelRows : size_t(rows);
  return stored_rows * size_t(cols / group) * 2;
}

void q4_row(const WeightMatrix& w, int r, uint8_t* q, uint16_t* d) {
  const int cols = w.cols, lines = cols / 8, ng = cols / w.group;
  const uint8_t* line = static_cast<const uint8_t*>(w.data) + q4_row_offset(cols, r);
  for (int b = 0; b < lines; ++b, line += 64)
    for (int j = 0; j < 4; ++j) {
      q[8 * b + j] = line[j] & 0x0f;
      q[8 * b + 4 + j] = line[j] >> 4;
    }
  const auto* scales = static_cast<const uint16_t*>(w.aux);
  for (int g = 0; g < ng; ++g) d[g] = scales[q4_scale_index(cols, w.group, r, g)];
}

namespace gemv_detail {

namespace {
inline float rne(float v) {
  constexpr float kMagic = 12582912.0f;  // valid for |v| < 2^22
  return (v + kMagic) - kMagic;
}
}  // namespace

MD_NO_FP_CONTRACT void quant_row_scalar(WeightFormat target, const float* w, int cols, int group, uint8_t* out,
                                        uint16_t* scales) {
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
  uint8_t* qrow = out;
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
}

}  // namespace gemv_detail

namespace {

thread_local std::vector<float> t_f32;
thread_local std::vector<uint8_t> t_row_values;

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

namespace {

// Rows [r0, r1) of the Q4 panel that starts at r0, quantised to values (one
// byte per column) and plain scales, into the panel layout of quant.h; the
// panel's rows past r1 (the last panel's padding) as value 8 (zero), scale 0.
void store_q4_panel(const uint8_t* values, const uint16_t* d, int r0, int r1, int cols, int group, uint8_t* data,
                    uint16_t* scales) {
  const int lines = cols / 8, ng = cols / group;
  for (int r = r0; r < r0 + kQ4PanelRows; ++r) {
    const bool pad = r >= r1;
    const uint8_t* q = values + size_t(r - r0) * size_t(cols);
    uint8_t* line = data + q4_row_offset(cols, r);
    for (int b = 0; b < lines; ++b, line += 64)
      for (int j = 0; j < 4; ++j) line[j] = pad ? 0x88 : uint8_t(q[8 * b + j] | (q[8 * b + 4 + j] << 4));
    for (int g = 0; g < ng; ++g)
      scales[q4_scale_index(cols, group, r, g)] = pad ? 0 : d[size_t(r - r0) * size_t(ng) + size_t(g)];
  }
}

thread_local std::vector<uint8_t> t_values;
thread_local std::vector<uint16_t> t_scales;

}  // namespace

void quantize_into(const void* src, WeightFormat src_format, int rows, int cols, WeightFormat target, int group,
                   uint8_t* data, uint16_t* scales) {
  check_args(src_format, rows, cols, target, group);
  const gemv_detail::QuantRow fn = gemv_detail::kernels().quant_row;
  const size_t ng = size_t(cols / group);
  const bool q4 = target == WeightFormat::Q4;
  constexpr size_t kChunk = kQ4PanelRows;  // Q4: one panel per chunk
  const size_t nchunks = (size_t(rows) + kChunk - 1) / kChunk;
  parallel_for(nchunks, [&](size_t b, size_t e) {
    t_f32.resize(size_t(cols));
    if (q4) {
      t_values.resize(kChunk * size_t(cols));
      t_scales.resize(kChunk * ng);
    }
    for (size_t chunk = b; chunk < e; ++chunk) {
      const size_t r0 = chunk * kChunk, r1 = std::min(r0 + kChunk, size_t(rows));
      for (size_t r = r0; r < r1; ++r) {
        const float* row = source_row(src, src_format, cols, int(r), t_f32.data());
        if (q4)
          fn(target, row, cols, group, t_values.data() + (r - r0) * size_t(cols), t_scales.data() + (r - r0) * ng);
        else
          fn(target, row, cols, group, data + r * size_t(cols), scales + r * ng);
      }
      if (q4) store_q4_panel(t_values.data(), t_scales.data(), int(r0), int(r1), cols, group, data, scales);
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
  q.aux.resize(quant_aux_bytes(target, rows, cols, group));
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
  if (w.format == WeightFormat::Q4) {
    t_row_values.resize(cols);
    t_scales.resize(ng);
    q4_row(w, r, t_row_values.data(), t_scales.data());
    for (size_t c = 0; c < cols; ++c) out[c] = f16_to_f32(t_scales[c / G]) * float(int(t_row_values[c]) - 8);
    return;
  }
  const uint8_t* sp = static_cast<const uint8_t*>(w.aux) + 2 * ng * size_t(r);
  const uint8_t* row = base + cols * size_t(r);
  for (size_t c = 0; c < cols; ++c) {
    uint16_t h;
    std::memcpy(&h, sp + 2 * (c / G), 2);
    out[c] = f16_to_f32(h) * float(int(row[c]) - 128);
  }
}

}  // namespace md
