#include "tensor/gemv.h"

// GCC 12's AVX-512 headers trip -Wmaybe-uninitialized on their own
// _mm512_undefined_* helpers (GCC bug 105593).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include <immintrin.h>

#include <algorithm>
#include <bit>
#include <cstdlib>
#include <cstring>
#include <string>

#include "tensor/dtype.h"
#include "tensor/parallel.h"

namespace md {
namespace {

// ---- generic kernels: plain loops the compiler vectorises; compiled for
// AVX2+FMA and for baseline x86-64, picked at load time (ifunc). ----------

inline float bf16f(uint16_t v) { return std::bit_cast<float>(uint32_t(v) << 16); }

#define MD_GENERIC __attribute__((target_clones("arch=haswell", "default")))

MD_GENERIC void dense_rows_generic(WeightFormat f, const void* data, int cols, const float* x, float* y, int r0,
                                   int r1) {
  for (int r = r0; r < r1; ++r) {
    float acc = 0;
    if (f == WeightFormat::F32) {
      const float* w = static_cast<const float*>(data) + size_t(r) * cols;
#pragma omp simd reduction(+ : acc)
      for (int c = 0; c < cols; ++c) acc += w[c] * x[c];
    } else if (f == WeightFormat::BF16) {
      const uint16_t* w = static_cast<const uint16_t*>(data) + size_t(r) * cols;
#pragma omp simd reduction(+ : acc)
      for (int c = 0; c < cols; ++c) acc += bf16f(w[c]) * x[c];
    } else {
      const uint16_t* w = static_cast<const uint16_t*>(data) + size_t(r) * cols;
      for (int c = 0; c < cols; ++c) acc += f16_to_f32(w[c]) * x[c];
    }
    y[r] = acc;
  }
}

MD_GENERIC void quant_rows_generic(const WeightMatrix& w, const float* x, float* y, int r0, int r1) {
  const int G = w.group, groups = w.cols / G;
  for (int r = r0; r < r1; ++r) {
    const float* sc = w.scales + size_t(r) * groups;
    float acc = 0;
    for (int g = 0; g < groups; ++g) {
      const float* xg = x + g * G;
      float s = 0;
      if (w.format == WeightFormat::Q8) {
        const int8_t* q = static_cast<const int8_t*>(w.data) + size_t(r) * w.cols + g * G;
#pragma omp simd reduction(+ : s)
        for (int c = 0; c < G; ++c) s += float(q[c]) * xg[c];
      } else {
        const uint8_t* q = static_cast<const uint8_t*>(w.data) + (size_t(r) * w.cols + g * G) / 2;
#pragma omp simd reduction(+ : s)
        for (int c = 0; c < 16; ++c) s += float(int(q[c] & 15) - 8) * xg[c] + float(int(q[c] >> 4) - 8) * xg[c + 16];
      }
      acc += sc[g] * s;
    }
    y[r] = acc;
  }
}

// ---- AVX-512 kernels: four rows per pass share each load of x. ----------

__attribute__((target("avx512f"))) inline __m512 load16(WeightFormat f, const void* base, size_t off) {
  if (f == WeightFormat::F32) return _mm512_loadu_ps(static_cast<const float*>(base) + off);
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(base) + off));
  if (f == WeightFormat::BF16) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  return _mm512_cvtph_ps(h);
}

__attribute__((target("avx512f"))) void dense_rows_avx512(WeightFormat f, const void* data, int cols,
                                                          const float* x, float* y, int r0, int r1) {
  const int vec_cols = cols & ~15;
  int r = r0;
  for (; r + 4 <= r1; r += 4) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    const size_t o0 = size_t(r) * cols, o1 = o0 + cols, o2 = o1 + cols, o3 = o2 + cols;
    for (int c = 0; c < vec_cols; c += 16) {
      const __m512 xv = _mm512_loadu_ps(x + c);
      a0 = _mm512_fmadd_ps(load16(f, data, o0 + c), xv, a0);
      a1 = _mm512_fmadd_ps(load16(f, data, o1 + c), xv, a1);
      a2 = _mm512_fmadd_ps(load16(f, data, o2 + c), xv, a2);
      a3 = _mm512_fmadd_ps(load16(f, data, o3 + c), xv, a3);
    }
    float t[4] = {_mm512_reduce_add_ps(a0), _mm512_reduce_add_ps(a1), _mm512_reduce_add_ps(a2),
                  _mm512_reduce_add_ps(a3)};
    for (int c = vec_cols; c < cols; ++c)
      for (int j = 0; j < 4; ++j) {
        const size_t i = size_t(r + j) * cols + c;
        const float wv = f == WeightFormat::F32    ? static_cast<const float*>(data)[i]
                         : f == WeightFormat::BF16 ? bf16f(static_cast<const uint16_t*>(data)[i])
                                                   : f16_to_f32(static_cast<const uint16_t*>(data)[i]);
        t[j] += wv * x[c];
      }
    for (int j = 0; j < 4; ++j) y[r + j] = t[j];
  }
  if (r < r1) dense_rows_generic(f, data, cols, x, y, r, r1);
}

// 32 quantised weights of one group → two vectors of 16 fp32 values (unscaled).
__attribute__((target("avx512f"))) inline void load_group32(WeightFormat f, const uint8_t* q, __m512* lo,
                                                            __m512* hi) {
  if (f == WeightFormat::Q8) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q));
    *lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(v)));
    *hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(v, 1)));
  } else {
    const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q)));
    const __m512i eight = _mm512_set1_epi32(8), mask = _mm512_set1_epi32(15);
    *lo = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_and_si512(b, mask), eight));
    *hi = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_srli_epi32(b, 4), eight));
  }
}

__attribute__((target("avx512f"))) void quant_rows_avx512(const WeightMatrix& w, const float* x, float* y, int r0,
                                                          int r1) {
  const int groups = w.cols / 32;
  const size_t row_bytes = w.format == WeightFormat::Q8 ? size_t(w.cols) : size_t(w.cols) / 2;
  const size_t group_bytes = w.format == WeightFormat::Q8 ? 32 : 16;
  const uint8_t* base = static_cast<const uint8_t*>(w.data);
  int r = r0;
  for (; r + 4 <= r1; r += 4) {
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    for (int g = 0; g < groups; ++g) {
      const __m512 x0 = _mm512_loadu_ps(x + g * 32), x1 = _mm512_loadu_ps(x + g * 32 + 16);
      for (int j = 0; j < 4; ++j) {
        __m512 lo, hi;
        load_group32(w.format, base + size_t(r + j) * row_bytes + g * group_bytes, &lo, &hi);
        const __m512 t = _mm512_fmadd_ps(lo, x0, _mm512_mul_ps(hi, x1));
        acc[j] = _mm512_fmadd_ps(t, _mm512_set1_ps(w.scales[size_t(r + j) * groups + g]), acc[j]);
      }
    }
    for (int j = 0; j < 4; ++j) y[r + j] = _mm512_reduce_add_ps(acc[j]);
  }
  if (r < r1) quant_rows_generic(w, x, y, r, r1);
}

// MOONDREAM_ISA=generic forces the portable kernels (tests, comparisons).
bool has_avx512() {
  static const bool yes = [] {
    const char* isa = std::getenv("MOONDREAM_ISA");
    if (isa && std::string(isa) == "generic") return false;
    return bool(__builtin_cpu_supports("avx512f"));
  }();
  return yes;
}

void rows(const WeightMatrix& w, const float* x, float* y, int r0, int r1) {
  const bool quant = w.format == WeightFormat::Q8 || w.format == WeightFormat::Q4;
  if (quant) {
    if (has_avx512() && w.group == 32) quant_rows_avx512(w, x, y, r0, r1);
    else quant_rows_generic(w, x, y, r0, r1);
  } else {
    if (has_avx512()) dense_rows_avx512(w.format, w.data, w.cols, x, y, r0, r1);
    else dense_rows_generic(w.format, w.data, w.cols, x, y, r0, r1);
  }
}

}  // namespace

void gemm_rows(const WeightMatrix& w, const float* X, int m, float* Y, int ldy, int r0, int r1) {
  // Blocks of 16 rows: their weights stay in L1/L2 while every input row
  // passes over them.
  for (int b = r0; b < r1; b += 16) {
    const int e = std::min(r1, b + 16);
    for (int i = 0; i < m; ++i) rows(w, X + size_t(i) * w.cols, Y + size_t(i) * ldy, b, e);
  }
}

void gemv(const WeightMatrix& w, const float* x, float* y) {
  const int chunks = (w.rows + 63) / 64;
  parallel_for(size_t(chunks), [&](size_t b, size_t e) {
    gemm_rows(w, x, 1, y, w.rows, int(b) * 64, std::min(w.rows, int(e) * 64));
  });
}

size_t weight_bytes(const WeightMatrix& w) {
  const size_t n = size_t(w.rows) * w.cols;
  switch (w.format) {
    case WeightFormat::F32: return n * 4;
    case WeightFormat::BF16:
    case WeightFormat::F16: return n * 2;
    case WeightFormat::Q8: return n + n / w.group * 4;
    case WeightFormat::Q4: return n / 2 + n / w.group * 4;
  }
  return 0;
}

}  // namespace md
