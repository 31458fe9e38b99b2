// (No include guard: opens a target region, once per kernel file.)
// Every function from here to simd_target_end.h is compiled for AVX2 + FMA +
// F16C; no global -march. Reached only through run-time dispatch. No
// standard-library templates may be instantiated inside.
#if defined(__clang__)
// clang has no GCC target pragma: the same target on every function.
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif
