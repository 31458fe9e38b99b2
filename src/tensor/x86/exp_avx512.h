// (Include inside an AVX-512 target region: after simd_target_avx512_begin.h.)
// e^x on 16 lanes with the constants and the order of operations of the
// portable fast_exp (ops.cpp, fast_math.h), so that the vector and scalar
// paths compute the same function. Used by the fused int8 GEMM's GELU and
// the decode attention's softmax.
#pragma once

#include "tensor/fast_math.h"

namespace md::gemv_detail {

inline __m512 exp16(__m512 x) {
  using namespace fast_math;
  x = _mm512_min_ps(_mm512_set1_ps(kExpMax), _mm512_max_ps(_mm512_set1_ps(kExpMin), x));
  const __m512 n =
      _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(kLog2e)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 r = _mm512_sub_ps(_mm512_sub_ps(x, _mm512_mul_ps(n, _mm512_set1_ps(kLn2Hi))),
                                 _mm512_mul_ps(n, _mm512_set1_ps(kLn2Lo)));
  __m512 p = _mm512_set1_ps(kExpPoly[0]);
  for (int i = 1; i < 7; ++i) p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(kExpPoly[i]));
  const __m512i bits = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  return _mm512_mul_ps(p, _mm512_castsi512_ps(bits));
}

}  // namespace md::gemv_detail
