#pragma once
// The instruction-set level the engine's kernels run at, chosen once for all
// of them: the GEMV/GEMM kernel tables (gemv_impl.h, one folder of kernels
// per architecture: x86/, arm/) and the element-wise loops below follow the
// same choice — the CPU's best level, lowered by MOONDREAM_ISA (x86-64:
// avx512, avx2; aarch64: i8mm, dotprod, neon; generic) or by a test (gemv.h
// detail::gemv_force_isa). A new CPU kind is a level here, a table in its
// folder and a row in gemv.cpp's kLevels.
#include <cstdint>

namespace md {

enum IsaLevel : int {
  kIsaGeneric = 0,      // portable loops, no vector code of our own
  kIsaAvx2 = 1,         // x86-64-v3: AVX2 + FMA + F16C + BMI1/2
  kIsaAvx512 = 2,       // x86-64-v4 + VNNI
  kIsaNeon = 3,         // aarch64 Advanced SIMD (every aarch64 CPU)
  kIsaNeonDotprod = 4,  // + SDOT/UDOT (Armv8.2 dotprod: Cortex-A55/A76 on, Apple M1 on, Graviton 2 on)
  kIsaNeonI8mm = 5,     // + SMMLA (Armv8.6 i8mm: Neoverse V1/N2 (Graviton 3/4), Cortex-A510/A710 on, Apple M2 on)
  kNumIsaLevels = 6
};

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

// For code whose rounding is specified step by step (quantisation's
// round-half-even of x·(127/amax), which every ISA must reproduce bit for
// bit): no fusing of a multiply and an add into one FMA, which GCC does by
// default wherever the target has FMA (aarch64 always, x86-64-v3 and up).
#if defined(__GNUC__) && !defined(__clang__)
#define MD_NO_FP_CONTRACT __attribute__((optimize("fp-contract=off")))
#else
#define MD_NO_FP_CONTRACT  // clang contracts only with -ffp-contract=fast (the default is on: not across statements)
#endif

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
#elif defined(__aarch64__)
// NEON is every aarch64 CPU's baseline (as SSE2 is x86-64's), so these loops
// have one copy, vectorised for it, at every level; the call is counted at
// the active level. (A scalar copy would only be slower: GCC vectorises the
// `omp simd` loops even where auto-vectorisation is switched off.)
#define MD_ISA_DISPATCH(ret, name, params, args)                        \
  ret name params {                                                     \
    ::md::isa_detail::count_elementwise_call(::md::active_isa_level()); \
    return name##_body args;                                            \
  }
#else
#define MD_ISA_DISPATCH(ret, name, params, args)                 \
  ret name params {                                              \
    ::md::isa_detail::count_elementwise_call(::md::kIsaGeneric); \
    return name##_body args;                                     \
  }
#endif
