#include "tensor/gemm.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "tensor/error.h"
#include "tensor/scratch.h"

#if MOONDREAM_HAVE_ONEDNN
#include <oneapi/dnnl/dnnl.h>
#elif MOONDREAM_HAVE_ACCELERATE
#include <Accelerate/Accelerate.h>
#endif

namespace md {
namespace {

// The own fp32 GEMM: B packed per block of kNr columns × kKc rows into
// [k][kNr] (zero past N), then a kMr × kNr register tile of C per step with
// A's rows read in place, one broadcast per row per k. Written with GCC's
// vector extensions, which compile to NEON on aarch64 (6 × 16 floats: 24
// accumulators, 4 B vectors, a broadcast: within its 32 registers) and to
// SSE/AVX elsewhere. The packed block (kKc · kNr · 4 = 16 KiB) stays in L1.
typedef float v4f __attribute__((vector_size(16)));
constexpr int kMr = 6, kNr = 16, kKc = 256, kNv = kNr / 4;

inline v4f load4(const float* p) {
  v4f v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store4(float* p, v4f v) { std::memcpy(p, &v, sizeof v); }

// acc[r][·] = Σ_k A[r, k] · Bp[k][·] for k < kc, rows r < MR.
template <int MR>
void micro(const float* A, int lda, const float* Bp, int kc, v4f (&acc)[kMr][kNv]) {
  for (int r = 0; r < MR; ++r)
    for (int c = 0; c < kNv; ++c) acc[r][c] = v4f{0, 0, 0, 0};
  for (int k = 0; k < kc; ++k) {
    v4f b[kNv];
    for (int c = 0; c < kNv; ++c) b[c] = load4(Bp + size_t(k) * kNr + 4 * c);
    for (int r = 0; r < MR; ++r) {
      const float a = A[size_t(r) * size_t(lda) + size_t(k)];
      const v4f av = {a, a, a, a};
      for (int c = 0; c < kNv; ++c) acc[r][c] += av * b[c];
    }
  }
}

// C's tile (rows < mr, columns < nr) = alpha·acc + (first ? beta·C : C).
void store_tile(const v4f (&acc)[kMr][kNv], int mr, int nr, float alpha, float beta, bool first, float* C, int ldc) {
  for (int r = 0; r < mr; ++r) {
    alignas(16) float row[kNr];
    for (int c = 0; c < kNv; ++c) store4(row + 4 * c, acc[r][c]);
    float* cr = C + size_t(r) * size_t(ldc);
    for (int j = 0; j < nr; ++j) {
      const float base = first ? (beta == 0.0f ? 0.0f : beta * cr[j]) : cr[j];
      cr[j] = base + alpha * row[j];
    }
  }
}

template <int MR>
void micro_rows(int mr, const float* A, int lda, const float* Bp, int kc, v4f (&acc)[kMr][kNv]) {
  if constexpr (MR >= 1) {
    if (mr == MR) return micro<MR>(A, lda, Bp, kc, acc);
    micro_rows<MR - 1>(mr, A, lda, Bp, kc, acc);
  }
}

}  // namespace

namespace detail {

void sgemm_own(bool trans_b, int M, int N, int K, float alpha, const float* A, int lda, const float* B, int ldb,
               float beta, float* C, int ldc) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {  // C = beta·C
    for (int i = 0; i < M; ++i)
      for (int j = 0; j < N; ++j) {
        float& c = C[size_t(i) * size_t(ldc) + size_t(j)];
        c = beta == 0.0f ? 0.0f : beta * c;
      }
    return;
  }
  static thread_local std::vector<float> t_packed;
  float* Bp = scratch(t_packed, size_t(kKc) * kNr);
  for (int j0 = 0; j0 < N; j0 += kNr) {
    const int nr = std::min(kNr, N - j0);
    for (int k0 = 0; k0 < K; k0 += kKc) {
      const int kc = std::min(kKc, K - k0);
      for (int k = 0; k < kc; ++k) {
        float* dst = Bp + size_t(k) * kNr;
        for (int j = 0; j < kNr; ++j)
          dst[j] = j >= nr   ? 0.0f
                   : trans_b ? B[size_t(j0 + j) * size_t(ldb) + size_t(k0 + k)]
                             : B[size_t(k0 + k) * size_t(ldb) + size_t(j0 + j)];
      }
      for (int i0 = 0; i0 < M; i0 += kMr) {
        const int mr = std::min(kMr, M - i0);
        v4f acc[kMr][kNv];
        micro_rows<kMr>(mr, A + size_t(i0) * size_t(lda) + size_t(k0), lda, Bp, kc, acc);
        store_tile(acc, mr, nr, alpha, beta, k0 == 0, C + size_t(i0) * size_t(ldc) + size_t(j0), ldc);
      }
    }
  }
}

void gemm_u8s8s32_own(bool trans_b, int M, int N, int K, const uint8_t* A, int lda, uint8_t a_offset, const int8_t* B,
                      int ldb, int32_t* C, int ldc) {
  static thread_local std::vector<int16_t> t_row;
  int16_t* a = scratch(t_row, size_t(K));
  for (int i = 0; i < M; ++i) {
    const uint8_t* ai = A + size_t(i) * size_t(lda);
    for (int k = 0; k < K; ++k) a[k] = int16_t(int(ai[k]) - int(a_offset));
    int32_t* ci = C + size_t(i) * size_t(ldc);
    if (trans_b) {
      // Dot products of contiguous rows: |a·b| ≤ 255·128 fits int16·int8 → int32.
      for (int j = 0; j < N; ++j) {
        const int8_t* bj = B + size_t(j) * size_t(ldb);
        int32_t sum = 0;
#pragma omp simd reduction(+ : sum)
        for (int k = 0; k < K; ++k) sum += int32_t(a[k]) * int32_t(bj[k]);
        ci[j] = sum;
      }
    } else {
      std::fill(ci, ci + N, 0);
      for (int k = 0; k < K; ++k) {
        const int32_t ak = a[k];
        if (ak == 0) continue;  // (P·V: most probabilities of a peaked row round to 0)
        const int8_t* bk = B + size_t(k) * size_t(ldb);
#pragma omp simd
        for (int j = 0; j < N; ++j) ci[j] += ak * int32_t(bk[j]);
      }
    }
  }
}

}  // namespace detail

#if MOONDREAM_HAVE_ONEDNN

void sgemm(bool trans_b, int M, int N, int K, float alpha, const float* A, int lda, const float* B, int ldb, float beta,
           float* C, int ldc) {
  if (dnnl_sgemm('N', trans_b ? 'T' : 'N', M, N, K, alpha, A, lda, B, ldb, beta, C, ldc) != dnnl_success)
    throw Error("oneDNN sgemm failed");
}

void gemm_u8s8s32(bool trans_b, int M, int N, int K, const uint8_t* A, int lda, uint8_t a_offset, const int8_t* B,
                  int ldb, int32_t* C, int ldc) {
  const int32_t co = 0;
  if (dnnl_gemm_u8s8s32('N', trans_b ? 'T' : 'N', 'F', M, N, K, 1.0f, A, lda, a_offset, B, ldb, 0, 0.0f, C, ldc, &co) !=
      dnnl_success)
    throw Error("oneDNN u8s8s32 gemm failed");
}

const char* gemm_library() { return "oneDNN"; }

#else

void sgemm(bool trans_b, int M, int N, int K, float alpha, const float* A, int lda, const float* B, int ldb, float beta,
           float* C, int ldc) {
#if MOONDREAM_HAVE_ACCELERATE
  cblas_sgemm(CblasRowMajor, CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda, B, ldb, beta, C,
              ldc);
#else
  detail::sgemm_own(trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
#endif
}

void gemm_u8s8s32(bool trans_b, int M, int N, int K, const uint8_t* A, int lda, uint8_t a_offset, const int8_t* B,
                  int ldb, int32_t* C, int ldc) {
  detail::gemm_u8s8s32_own(trans_b, M, N, K, A, lda, a_offset, B, ldb, C, ldc);
}

const char* gemm_library() { return MOONDREAM_HAVE_ACCELERATE ? "Accelerate (fp32), own (int8)" : "own"; }

#endif

}  // namespace md
