#pragma once
// <immintrin.h> for the per-ISA kernel files (x86/gemv_avx2.cpp, x86/gemv_avx512.cpp,
// gemm_int8_avx512.cpp), which compile their functions for one target between
// simd_target_*_begin.h and simd_target_end.h.
//
// GCC 12 reports its own _mm*_undefined_* placeholders inside the intrinsic
// headers as uninitialised once inlined (GCC bug 105593); not our code.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
