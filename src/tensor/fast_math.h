#pragma once
// The constants of the engine's vectorisable e^x and tanh-form GELU, shared
// by the portable loops (ops.cpp: fast_exp, gelu_body) and the AVX-512 fused
// GEMM's epilogue (x86/gemm_int8_avx512.cpp: gelu16), so that both compute the
// same function. e^x = 2^n · e^r, n = round(x·log2 e), r = x − n·ln 2 (ln 2
// split in two for precision), e^r by a degree-6 Horner polynomial;
// GELU(v) = v / (1 + e^(−2u)), u = √(2/π)·(v + 0.044715·v³).
namespace md::fast_math {

inline constexpr float kExpMin = -87.0f, kExpMax = 88.0f;  // e^x stays a normal float
inline constexpr float kLog2e = 1.44269504088896341f;
inline constexpr float kLn2Hi = 0.693145751953125f, kLn2Lo = 1.428606765330187045e-06f;
// Horner coefficients of e^r, highest degree first: 1/6!, 1/5!, ..., 1, 1.
inline constexpr float kExpPoly[7] = {1.0f / 720, 1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f};
inline constexpr float kGeluScale = 0.7978845608028654f;  // √(2/π)
inline constexpr float kGeluCubic = 0.044715f;

}  // namespace md::fast_math
