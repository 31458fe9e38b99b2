#pragma once
// The int8 GEMM of the int8 modes with its epilogue fused (one pass, no int32
// result): Y[i, j] = (Σ_c (W[j, c] − 128)·X[i, c]) · (ws[j]·xs[i]) + bias[j],
// then GELU when asked, for i < m, j < n. X: activations quantised to int8 per
// row (scale xs[i], row sums xsum[i] = Σ_c X[i, c]); W: Q8 weight rows as
// stored (q + 128, quant.h) with their scales widened to fp32.
// Runs where the active ISA has it (AVX-512 VNNI: x86/gemm_int8_avx512.cpp;
// Armv8.2 dotprod: arm/gemm_int8_neon.cpp); elsewhere ops.cpp uses oneDNN's
// u8×s8 GEMM and a separate epilogue.
#include <cstddef>
#include <cstdint>

namespace md {

struct Int8GemmArgs {
  const int8_t* x = nullptr;      // [m, k] row-major
  const float* xs = nullptr;      // [m]
  const int32_t* xsum = nullptr;  // [m]
  int m = 0, k = 0;               // k % 4 == 0
  const uint8_t* w = nullptr;     // [n, k] row-major, q + 128
  const float* ws = nullptr;      // [n]
  // Instead of w and ws: Q4 weights in 16-row panels (quant.h) starting at
  // this call's first output, with their fp16 scales and group size (n ≤ 64:
  // one repacked panel). The kernel widens them straight into its repacked
  // panel, each row on its own int8 grid: s = max |d| · 8/127 over the row's
  // groups, byte = round((q − 8) · d / s) + 128 (a rounding of ≤ s/2 per
  // weight on top of Q4's own step, which is d).
  const uint8_t* w_q4 = nullptr;
  const uint16_t* w_q4_scales = nullptr;
  int q4_group = 0;
  const float* bias = nullptr;  // [n] or null
  int n = 0;                    // n % 16 == 0
  bool gelu = false;
  float* y = nullptr;  // y[i·ldy + j]
  size_t ldy = 0;
  // Bytes to bring into L2 while this call computes: the stored weight rows
  // of this thread's next call, so that its repacking reads from cache.
  const uint8_t* prefetch = nullptr;
  size_t prefetch_bytes = 0;
};

// Outputs per repacked weight panel: the kernel's unit of work, and the
// size callers split the outputs in between threads.
inline constexpr int kInt8GemmPanel = 64;

// Scratch the kernel repacks weights into: 64-byte aligned, this many bytes.
inline size_t int8_gemm_panel_bytes(int k) { return size_t(kInt8GemmPanel) * size_t(k); }

// Single-threaded; the caller splits the outputs (n) between threads.
using Int8GemmKernel = void (*)(const Int8GemmArgs& args, uint8_t* panel);

// The kernel for the active ISA (gemv.h's dispatch and MOONDREAM_ISA), or
// null when there is none.
Int8GemmKernel int8_gemm_kernel();

}  // namespace md
