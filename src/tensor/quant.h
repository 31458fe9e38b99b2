#pragma once
// Group-wise int8 (Q8) and 4-bit (Q4) weight quantisation for the GEMV kernels
// of gemv.h. Both are symmetric, with one fp16 scale d per group of `group`
// consecutive columns of a row.
//
// Q8  data: [rows, cols] bytes, row-major, byte = q + 128 with q in [-127, 127]
//           (unsigned storage: AVX-512 VNNI vpdpbusd takes the weights as its
//           unsigned operand directly); w ≈ d·q, d = absmax/127.
// Q4  data: [rows, cols/2] bytes, row-major; q in [0, 15], w ≈ d·(q − 8).
//           Each row is cut into blocks of 128 columns (the last block may be
//           32, 64 or 96 columns); a block of n columns is n/2 bytes, byte j
//           holding column j in its low nibble and column j + n/2 in its high
//           nibble (one 64-byte load unpacks into two runs of 64 consecutive
//           columns). d: per group the best of a few candidate scales
//           (gemv_impl.h) refitted by least squares.
// aux (both): fp16 scales d, [rows, cols/group], row-major.
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
size_t quant_aux_bytes(int rows, int cols, int group);

// Row r of any weight matrix as fp32 (dequantised for Q8/Q4).
void dequantize_row(const WeightMatrix& w, int r, float* out);

}  // namespace md
