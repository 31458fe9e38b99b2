#pragma once
// Internal to the GEMV kernels (gemv*.cpp, quant.cpp): the per-ISA kernel
// table and the per-call quantised activations.
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "tensor/attention_int8.h"
#include "tensor/gemm_int8.h"
#include "tensor/gemv.h"

namespace md::gemv_detail {

// Calls of the AVX-512 q8 kernel that took its column-chunked pass (wide
// activations for several rows; detail::gemv_q8_chunked_calls).
extern std::atomic<uint64_t> g_q8_chunked_calls;

// One input row quantised per weight group for the Q8/Q4 kernels:
// q = RNE(x · 127/amax) in [-127, 127], s = amax / 127 (amax over the group).
struct XQuant {
  const int8_t* q = nullptr;  // [cols] (+64 readable bytes)
  const float* s = nullptr;   // [cols / group] (+16 readable floats)
  // The zero-point correction for unsigned weights stored with zero point Z
  // (Q8: 128, Q4: 8), laid out as the kernels' int32 accumulator lanes: per
  // 32 columns 8 int32, the first -Z · Σ q over those columns, the others 0
  // (a 64-column chunk's 16 lanes load straight into vpdpbusd's accumulator).
  // [cols / 4] (+16 readable)
  const int32_t* hc = nullptr;
};

// Owns the buffers behind XQuant for m rows.
struct XQuantBuf {
  std::vector<int8_t> q;
  std::vector<float> s;
  std::vector<int32_t> hc;
  std::vector<XQuant> rows;
  // Quantises X [m, cols] (row stride ldx) for groups of `group` columns and
  // zero point `zero`. Identical results on every ISA (plain IEEE ops).
  void prepare(const float* X, int m, int ldx, int cols, int group, int zero);
};

using FpKernel = void (*)(const WeightMatrix& w, const float* X, int m, float* Y, int ldy, int r0, int r1);
using QKernel = void (*)(const WeightMatrix& w, const XQuant* x, int m, float* Y, int ldy, int r0, int r1);

// Q4: group g's zero-point correction −8·Σq_x over its columns (from x.hc).
inline int32_t q4_group_correction(const XQuant& x, int g, int group) {
  int32_t t = 0;
  for (int c = g * group; c < (g + 1) * group; c += 32) t += x.hc[c / 4];
  return t;
}

// Quantises one fp32 row: Q8 writes cols bytes (q + 128), Q4 cols bytes of
// values 0…15 (quantize_into packs them into Q4's panels); scales:
// cols/group fp16.
using QuantRow = void (*)(WeightFormat target, const float* w, int cols, int group, uint8_t* q, uint16_t* scales);
// Quantises one input row x [cols] per group (see XQuant): q [cols],
// s [cols/group], hc [cols/4]. Every implementation gives bit-identical
// results.
using PrepRow = void (*)(const float* x, int cols, int group, int zero, int8_t* q, float* s, int32_t* hc);

// X [m, cols] (row stride ldx) → out [m, cols] with each full chunk of
// `chunk` columns de-interleaved: its even columns, then its odd ones
// (columns past the last full chunk as given) — how the fp kernels read x
// for bf16 weights (Kernels::bf16_pair_cols).
void prepare_bf16_pair_x(const float* X, int m, int ldx, int cols, int chunk, float* out);

// The fp kernel of each Highway target (hwy/gemv_fp.cpp), named by the
// tables of the levels that run it, and its x chunk for bf16 weights.
#define MD_HWY_FP_KERNEL                                                                         \
  void fp_rows(const WeightMatrix& w, const float* X, int m, float* Y, int ldy, int r0, int r1); \
  int bf16_pair_cols();
#if defined(__x86_64__)
namespace N_AVX3 {
MD_HWY_FP_KERNEL
}
namespace N_AVX2 {
MD_HWY_FP_KERNEL
}
#elif defined(__aarch64__)
namespace N_NEON {
MD_HWY_FP_KERNEL
}
#endif
#undef MD_HWY_FP_KERNEL

struct Kernels {
  const char* name;
  FpKernel fp;  // F32, BF16, F16
  QKernel q8;
  QKernel q4;
  QuantRow quant_row;
  PrepRow prep_row;
  Int8GemmKernel int8_gemm;  // null where the ISA has no fused int8 GEMM (oneDNN's is used)
  int (*bf16_pair_cols)();   // fp with BF16 weights reads x de-interleaved per this many columns; null: as given
  Int8HeadKernel int8_head = nullptr;                                     // null: ops.cpp runs the head on oneDNN GEMMs
  size_t (*int8_head_scratch)(int n_q, int n_k, int head_dim) = nullptr;  // int8_head's scratch bytes
};

void int8_gemm_avx512(const Int8GemmArgs& a, uint8_t* panel);      // x86/gemm_int8_avx512.cpp
void int8_gemm_dotprod(const Int8GemmArgs& a, uint8_t* panel);     // arm/gemm_int8_neon.cpp
void int8_gemm_i8mm(const Int8GemmArgs& a, uint8_t* panel);        // arm/gemm_int8_i8mm.cpp
void int8_head_avx512(const Int8HeadAttention& a, void* scratch);  // x86/attention_int8_avx512.cpp
size_t int8_head_scratch_avx512(int n_q, int n_k, int head_dim);
void int8_head_dotprod(const Int8HeadAttention& a, void* scratch);  // arm/attention_int8_neon.cpp
size_t int8_head_scratch_dotprod(int n_q, int n_k, int head_dim);

// Decode attention over bf16 KV rows, one query row × one head
// (x86/attention_avx512.cpp; ops.cpp has the portable loops):
// scores[j] = scale · q·k_j for j < n; out = Σ_j p[j]·v_j (unnormalised).
// Rows are head_dim elements, `stride` elements apart.
using Bf16ScoresKernel = void (*)(const float* q, const uint16_t* k, int stride, int n, float scale, float* scores);
using Bf16PvKernel = void (*)(const float* p, const uint16_t* v, int stride, int n, float* out);

// Cache lines to bring into L2 while a kernel computes: the first used_bytes
// of `rows` key rows and as many value rows, row_bytes apart.
struct RowPrefetch {
  const char* k = nullptr;
  const char* v = nullptr;
  int rows = 0;
  size_t row_bytes = 0, used_bytes = 0;
  // int8 rows: the rows' scales (4 bytes a row, one run each), which a
  // kernel fetches first: a block's scales arriving late stalled every
  // block (int8 KV ran at half the bf16 rate).
  const float* k_scales = nullptr;
  const float* v_scales = nullptr;
  // Prefetches the scales' lines.
  __attribute__((always_inline)) void scales() const {
    if (!k_scales) return;
    for (int j = 0; j < rows; j += 16) {
      __builtin_prefetch(k_scales + j, 0, 2);
      __builtin_prefetch(v_scales + j, 0, 2);
    }
  }
};

// Walks a RowPrefetch line by line in address order (per row: K and V line
// 0, K and V line 1, ...), so a kernel can spread its prefetches over its
// loop instead of issuing them in one burst the memory system cannot take.
class PrefetchCursor {
 public:
  explicit PrefetchCursor(const RowPrefetch& p) : p_(p) {}
  int lines() const { return p_.rows * 2 * int((p_.used_bytes + 63) / 64); }
  __attribute__((always_inline)) void issue(int count) {
    for (; count > 0 && row_ < p_.rows; --count) {
      __builtin_prefetch((v_ ? p_.v : p_.k) + size_t(row_) * p_.row_bytes + off_, 0, 2);
      v_ = !v_;
      if (!v_ && (off_ += 64) >= p_.used_bytes) {
        off_ = 0;
        ++row_;
      }
    }
  }
  void issue_rest() { issue(lines()); }

 private:
  const RowPrefetch& p_;
  int row_ = 0;
  size_t off_ = 0;
  bool v_ = false;
};

// One head's step of decode's online softmax over a block of n <= max_block
// keys: s_j = scale·q·k_j; M = max(m, max_j s_j); acc = acc·e^(m−M) +
// Σ_j e^(s_j−M)·v_j; l = l·e^(m−M) + Σ_j e^(s_j−M); m = M — issuing the
// prefetches of pf spread over its loops. q and acc are in the kernel's
// element order: to_lanes puts a query row (head_dim) into it, from_lanes
// puts an accumulator back.
using Bf16BlockKernel = void (*)(const float* q, const uint16_t* k, const uint16_t* v, int stride, int n, float scale,
                                 float* m, float* l, float* acc, const RowPrefetch& pf);
// The same step over int8 rows with one scale per key (ks, vs): s_j =
// scale·ks_j·q·k_j, acc += Σ_j e^(s_j−M)·vs_j·v_j. q and acc in the row's
// own order.
using Int8BlockKernel = void (*)(const float* q, const int8_t* k, const float* ks, const int8_t* v, const float* vs,
                                 int stride, int n, float scale, float* m, float* l, float* acc, const RowPrefetch& pf);
// The step of nq queries over one block of bf16 (i8 false) or int8 rows
// that they all see (rows of one cached image prefix): the rows are widened
// to fp32 once, then each query's step runs over them from L1 with the
// arithmetic of Bf16BlockKernel / Int8BlockKernel, so each query's result
// equals that kernel's alone, bit for bit. Query i: q[i] + q_offset (the
// order of its format's kernel), its state at m, l, acc + i · state_stride.
using BlockRowsKernel = void (*)(int nq, const float* const* q, size_t q_offset, const void* k, const float* ks,
                                 const void* v, const float* vs, bool i8, int stride, int n, float scale, float* m,
                                 float* l, float* acc, size_t state_stride, const RowPrefetch& pf);
struct AttentionKernels {
  const char* name;
  int head_dim;  // the only head size these kernels take
  Bf16ScoresKernel scores;
  Bf16PvKernel pv;
  int max_block;  // of both block kernels
  Bf16BlockKernel block;
  void (*to_lanes)(const float* row, float* lanes);
  void (*from_lanes)(const float* lanes, float* row);
  Int8BlockKernel i8_block;              // null: the portable loops run
  BlockRowsKernel block_rows = nullptr;  // null: one query at a time
};
extern const AttentionKernels kAttentionAvx512;  // x86/attention_avx512.cpp
extern const AttentionKernels kAttentionNeon;    // arm/attention_neon.cpp
// The table for the active ISA (gemv_force_isa / MOONDREAM_ISA), or null
// where none has such kernels (the portable loops run).
const AttentionKernels* attention_kernels();

extern const Kernels kScalar;
extern const Kernels kAvx2;         // x86/gemv_avx2.cpp
extern const Kernels kAvx512;       // x86/gemv_avx512.cpp
extern const Kernels kNeon;         // arm/gemv_neon.cpp
extern const Kernels kNeonDotprod;  // arm/gemv_neon.cpp
extern const Kernels kNeonI8mm;     // arm/gemv_neon.cpp: dotprod's, the int8 GEMM on SMMLA

// The active table (dispatch, MOONDREAM_ISA, gemv_force_isa).
const Kernels& kernels();

// Scalar piece shared by the SIMD Q8 kernels for column tails
// (cols % 128 != 0): Σ over columns [c0, cols) of row r, c0 a multiple of 128.
float q8_dot_tail(const WeightMatrix& w, int r, const XQuant& x, int c0);

void prep_row_scalar(const float* x, int cols, int group, int zero, int8_t* q, float* s, int32_t* hc);

// Q4 candidate scales: the group's largest-magnitude value maps to t (the
// others round into [-8, 7]); each candidate's scale is refitted by least
// squares for its rounding and the one with the smallest squared error wins.
inline constexpr float kQ4Candidates[] = {-8.0f, -8.5f, -9.0f, -9.5f, -10.0f, -7.5f, 7.0f, 7.5f};
inline constexpr int kNumQ4Candidates = 8;
static_assert(sizeof(kQ4Candidates) == kNumQ4Candidates * sizeof(float));

// Scalar quantisation of one row (quant.cpp).
void quant_row_scalar(WeightFormat target, const float* w, int cols, int group, uint8_t* q, uint16_t* scales);

}  // namespace md::gemv_detail
