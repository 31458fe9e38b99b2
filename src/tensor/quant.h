#pragma once
// Group-wise int8 (Q8) and 4-bit (Q4) weight quantisation for the GEMV kernels
// of gemv.h. Both are symmetric, with one fp16 scale d per group of `group`
// consecutive columns of a row.
//
// Q8  data: [rows, cols] bytes, row-major, byte = q + 128 with q in [-127, 127]
//           (unsigned storage: AVX-512 VNNI vpdpbusd takes the weights as its
//           unsigned operand directly); w ≈ d·q, d = absmax/127.
// Q4  data: q in [0, 15], w ≈ d·(q − 8), in panels of 16 rows (the last one
//           padded with zero rows): panel p holds rows 16p…16p+15 as cols/8
//           lines of 64 bytes; line b holds columns 8b…8b+7, byte 4·i + j
//           being row 16p + i's column 8b + j (low nibble) and 8b + 4 + j
//           (high nibble). One 64-byte load is then 16 rows × 4 columns
//           twice over: a row per 32-bit lane, as vpdpbusd sums it, so the
//           decode GEMV accumulates 16 rows per instruction with one
//           broadcast of 4 activations (x86/gemv_avx512.cpp), and the int8 GEMM's
//           repacked panel is the same picture (gemm_int8.h).
//           d: per group the best of a few candidate scales (gemv_impl.h)
//           refitted by least squares.
// aux: Q8 fp16 scales d, [rows, cols/group], row-major; Q4 per panel
//      [cols/group][16]: the 16 rows' scales of a group side by side.
//
// Group sizes: 32, 64 or a multiple of 128, dividing cols. Per weight:
// Q8 group 32 = 8.5 bits, Q4 group 32 = 4.5 bits.
// Accuracy on Gaussian weights, group 32 (rel. RMS of w): Q8 ≈ 0.53 %,
// Q4 ≈ 8.1 % (uniform weights: ≈ 0.39 % / 6.5 %).
#include <cstddef>
#include <cstdint>
#include <vector>

#include "tensor/gemv.h"

namespace md {

struct QuantizedWeights {
  std::vector<uint8_t> data;
  std::vector<uint8_t> aux;
  WeightFormat format = WeightFormat::Q8;
  int rows = 0, cols = 0, group = 0;
  WeightMatrix view() const;
};

// True if `group` is a group size the GEMV kernels read for a matrix with
// `cols` columns: 32, 64 or a multiple of 128, dividing cols.
bool quant_group_ok(int cols, int group);
// True if quantize() makes this layout: a GEMV group as above, or Q8 with one
// scale per row of any width that is a multiple of 16 (only the int8 GEMM
// reads those: the vision MLP's 4304-wide fc2).
bool quant_layout_ok(WeightFormat target, int cols, int group);

// Quantises a [rows, cols] matrix stored as F32/BF16/F16 (src may be only
// 2-byte aligned) to Q8 or Q4. Parallel over rows (md::parallel_for).
// Throws md::Error on an unsupported format or group size.
QuantizedWeights quantize(const void* src, WeightFormat src_format, int rows, int cols, WeightFormat target, int group);

// The same into caller-provided storage (e.g. a cache file mapping): data
// (quant_data_bytes) and scales (quant_aux_bytes, 2-byte aligned).
void quantize_into(const void* src, WeightFormat src_format, int rows, int cols, WeightFormat target, int group,
                   uint8_t* data, uint16_t* scales);

size_t quant_data_bytes(WeightFormat target, int rows, int cols);
size_t quant_aux_bytes(WeightFormat target, int rows, int cols, int group);

// Q4's panel layout (above).
inline constexpr int kQ4PanelRows = 16;
inline int q4_panels(int rows) { return (rows + kQ4PanelRows - 1) / kQ4PanelRows; }
// Byte offset of row r's 4 bytes in line 0 of its panel (line b: + 64·b).
inline size_t q4_row_offset(int cols, int r) {
  return size_t(r / kQ4PanelRows) * size_t(cols / 8) * 64 + size_t(r % kQ4PanelRows) * 4;
}
// Index of row r's scale of group g among the aux's fp16 values.
inline size_t q4_scale_index(int cols, int group, int r, int g) {
  return (size_t(r / kQ4PanelRows) * size_t(cols / group) + size_t(g)) * kQ4PanelRows + size_t(r % kQ4PanelRows);
}
// Row r of a Q4 matrix: its values q [cols] (0…15) and fp16 scales
// d [cols/group].
void q4_row(const WeightMatrix& w, int r, uint8_t* q, uint16_t* d);

// Row r of any weight matrix as fp32 (dequantised for Q8/Q4).
void dequantize_row(const WeightMatrix& w, int r, float* out);

}  // namespace md
