#pragma once
// The instruction-set level the engine's kernels run at, chosen once for all
// of them: the GEMV/GEMM kernel tables (gemv_impl.h) and the element-wise
// loops below follow the same choice — the CPU's best level, lowered by
// MOONDREAM_ISA (avx512, avx2, generic) or by a test (gemv.h
// detail::gemv_force_isa).
#include <cstdint>

namespace md {

enum IsaLevel : int { kIsaGeneric = 0, kIsaAvx2 = 1, kIsaAvx512 = 2 };

IsaLevel active_isa_level();

// How many element-wise kernel calls ran at `level` on this thread so far:
// tests check that a forced level really runs its own code.
uint64_t elementwise_calls_on_this_thread(IsaLevel level);

namespace isa_detail {
// Counts one element-wise call at `level` on this thread. (A function, not an
// extern thread_local array: the sanitizer build read such an array through
// a null TLS wrapper pointer from the multiversioned callers.)
void count_elementwise_call(IsaLevel level);
}  // namespace isa_detail

}  // namespace md

// Element-wise loops (portable C++ the compiler vectorises) are written once
// as `MD_ISA_BODY ret name_body(params)` and compiled per level by
// MD_ISA_DISPATCH(ret, name, (params), (args)), which defines `name` to run
// the active level's copy: x86-64-v4 (AVX-512), x86-64-v3 (AVX2 + FMA) or the
// baseline. (Not target_clones: its resolver picks by CPU alone, so
// MOONDREAM_ISA and the AVX2/generic test runs still executed AVX-512 code.)
#define MD_ISA_BODY __attribute__((always_inline)) inline
#if defined(__x86_64__)
#define MD_ISA_DISPATCH(ret, name, params, args)                                                            \
  __attribute__((target("arch=x86-64-v4"))) static ret name##_x86_64_v4 params { return name##_body args; } \
  __attribute__((target("arch=x86-64-v3"))) static ret name##_x86_64_v3 params { return name##_body args; } \
  static ret name##_baseline params { return name##_body args; }                                            \
  ret name params {                                                                                         \
    const ::md::IsaLevel level = ::md::active_isa_level();                                                  \
    ::md::isa_detail::count_elementwise_call(level);                                                        \
    return level == ::md::kIsaAvx512 ? name##_x86_64_v4 args                                                \
           : level == ::md::kIsaAvx2 ? name##_x86_64_v3 args                                                \
                                     : name##_baseline args;                                                \
  }
#else
#define MD_ISA_DISPATCH(ret, name, params, args)                 \
  ret name params {                                              \
    ::md::isa_detail::count_elementwise_call(::md::kIsaGeneric); \
    return name##_body args;                                     \
  }
#endif
