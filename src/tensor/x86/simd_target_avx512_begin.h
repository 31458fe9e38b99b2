// (No include guard: opens a target region, once per kernel file.)
// Every function from here to simd_target_end.h is compiled for AVX-512
// F/BW/VL/DQ + VNNI (with AVX2/FMA/F16C); no global -march. Reached only
// through run-time dispatch. No standard-library templates may be
// instantiated inside (they could leak AVX-512 code into shared inline
// definitions).
#if defined(__clang__)
// clang has no GCC target pragma: the same target on every function.
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni"))), \
                             apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")
#endif
