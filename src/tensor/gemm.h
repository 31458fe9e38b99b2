#pragma once
// The general matrix products the engine takes from a library where it has
// no fused kernel of its own (fp32 prompts on weights as stored, fp32
// attention, int8 prompts on CPUs without a fused int8 kernel): oneDNN where
// the build has it (CMake MOONDREAM_ONEDNN), else the engine's own, portable
// implementations below (aarch64 builds need no oneDNN; macOS has none in
// its base system; there Accelerate's SGEMM takes the fp32 ones). All are
// single-threaded (Accelerate's may use threads of its own): callers run them inside their
// own parallel regions.
#include <cstddef>
#include <cstdint>

namespace md {

// Row-major C[M,N] = alpha·A[M,K]·B + beta·C, B given as [K,N] or, with
// trans_b, as [N,K]. beta == 0: C is only written.
void sgemm(bool trans_b, int M, int N, int K, float alpha, const float* A, int lda, const float* B, int ldb, float beta,
           float* C, int ldc);

// Row-major int32 C[M,N] = Σ_k (A[i,k] − a_offset)·B[k,j], exact: A u8
// [M,K], B s8 as [K,N] or, with trans_b, [N,K].
void gemm_u8s8s32(bool trans_b, int M, int N, int K, const uint8_t* A, int lda, uint8_t a_offset, const int8_t* B,
                  int ldb, int32_t* C, int ldc);

// "oneDNN" or "own": which implementation the two above run.
const char* gemm_library();

namespace detail {
// The engine's own implementations, whichever the build uses (tests).
void sgemm_own(bool trans_b, int M, int N, int K, float alpha, const float* A, int lda, const float* B, int ldb,
               float beta, float* C, int ldc);
void gemm_u8s8s32_own(bool trans_b, int M, int N, int K, const uint8_t* A, int lda, uint8_t a_offset, const int8_t* B,
                      int ldb, int32_t* C, int ldc);
}  // namespace detail

}  // namespace md
