#pragma once
// Matrix × vector(s) for decode: y = W·x with W [rows, cols] in its stored
// format (F32/BF16/F16, used in place from the memory map) or quantised
// (Q8: int8, Q4: 4-bit, group-wise fp32 scales). Memory-bound: the kernels
// stream each weight once per call and widen to fp32 in registers.
// CPU-specific versions (AVX-512, AVX2, generic) are picked at run time.
#include <cstddef>
#include <cstdint>

namespace md {

enum class WeightFormat { F32, BF16, F16, Q8, Q4 };

struct WeightMatrix {  // a view; owns nothing
  WeightFormat format = WeightFormat::F32;
  int rows = 0, cols = 0;
  const void* data = nullptr;  // F32/BF16/F16: [rows, cols] row-major; Q8: int8 [rows, cols];
                               // Q4: [rows, cols/2] bytes (see quant.h)
  const float* scales = nullptr;  // Q8/Q4: [rows, cols/group]
  int group = 0;
};

// Y[i, r] = Σ_c W[r,c]·X[i,c] for i < m, r in [r0, r1). X row stride cols, Y row stride ldy.
// Single-threaded; callers split rows across threads.
void gemm_rows(const WeightMatrix& w, const float* X, int m, float* Y, int ldy, int r0, int r1);
// y = W·x over all rows, in parallel.
void gemv(const WeightMatrix& w, const float* x, float* y);
// Bytes of weights (and scales) one product streams.
size_t weight_bytes(const WeightMatrix& w);

}  // namespace md
