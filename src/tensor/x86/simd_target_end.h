// (No include guard.) Closes the target region of simd_target_*_begin.h.
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
