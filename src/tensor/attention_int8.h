#pragma once
// One head of a prompt's attention in the int8 modes (the vision tower's 729
// patches, the text model's 730-position image prefix) as one fused kernel
// per tile of query rows, instead of three GEMMs with an int32 score matrix
// and a softmax pass between them:
//   scores  q·k with q as s8 per row, k − mean(k) as s8 per row (VNNI);
//   softmax exact per row in fp32 (the row's scores stay in L1);
//   P·V     p in 15-bit fixed point (round(p · 32767)) × V as s8 per column,
//           widened to int16 (vpdpwssd), int32 sums flushed to fp32 every
//           256 keys (they cannot overflow: 256 · 32767 · 127 < 2³¹).
// Subtracting the mean key moves all of a query's scores by one amount,
// which softmax ignores, and centres the keys for int8.
// Runs where the active ISA has it (AVX-512 VNNI: x86/attention_int8_avx512.cpp;
// Armv8.2 dotprod: arm/attention_int8_neon.cpp, P·V there by 16-bit
// multiply-accumulates into int32); elsewhere ops.cpp runs the same head on
// oneDNN GEMMs.
#include <cstddef>
#include <cstdint>

namespace md {

struct Int8HeadAttention {
  int n_q = 0, n_k = 0, head_dim = 0;  // head_dim % 4 == 0, ≤ kInt8HeadMaxDim
  const float* q = nullptr;            // row i at q + i·q_stride
  int q_stride = 0;
  const float* k = nullptr;  // row j at k + j·kv_stride (and v)
  const float* v = nullptr;
  int kv_stride = 0;
  float scale = 1.0f;            // of the scores (1/√head_dim)
  const int* visible = nullptr;  // [n_q]: query row i sees keys [0, visible[i]), ≥ 1
  float* out = nullptr;          // row i at out + i·out_stride
  int out_stride = 0;
};

inline constexpr int kInt8HeadMaxDim = 80;

// Scratch bytes the active kernel needs for one head (its packed operands and one
// tile's scores), 64-byte aligned by the caller.
size_t int8_head_scratch_bytes(int n_q, int n_k, int head_dim);

// Single-threaded; the caller runs heads in parallel.
using Int8HeadKernel = void (*)(const Int8HeadAttention& a, void* scratch);

// The kernel for the active ISA (gemv.h's dispatch and MOONDREAM_ISA), or
// null when there is none.
Int8HeadKernel int8_head_kernel();

}  // namespace md
