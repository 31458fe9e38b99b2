#pragma once
// fp32 building blocks of the transformer: linear layers, LayerNorm,
// tanh-GELU, softmax and multi-head attention. Activations are fp32; weights
// stay in their stored or quantised format (see gemv.h).
#include <cstddef>
#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "tensor/gemv.h"

namespace md {

// y = x·Wᵀ + b with W stored [out, in] row-major (PyTorch layout).
struct Linear {
  int in = 0;
  int out = 0;
  WeightMatrix w;            // [out, in], F32/BF16/F16 as stored or Q8/Q4
  const float* b = nullptr;  // [out] or null
};

// A Linear over fp32 weights (tests, small helpers).
Linear make_linear(int in, int out, const float* w, const float* b);

struct LayerNormWeights {
  int dim = 0;
  const float* w = nullptr;
  const float* b = nullptr;
};

// The most rows an int8 (Q8 per-row) linear() runs on the GEMV kernels (the
// other formats: 16): they stream the weights once per 8 input rows, the
// int8 GEMM once for all rows — a follow-up question's prompt (~10-20
// tokens) reads them once. Batched decoding stays within it (text.h).
inline constexpr int kMaxInt8GemvRows = 8;

// x: [m, in] with row stride in; y: [m, out]. Few rows (decode, short
// prompts) stream the weights through the GEMV kernels; many rows (vision,
// image prefix) run blocked oneDNN SGEMMs, widening one weight block at a time.
void linear(const Linear& l, const float* x, int m, float* y);
// gelu_tanh(linear(x)), applied to each output tile while it is in cache.
void linear_gelu(const Linear& l, const float* x, int m, float* y);
// Several linear() / linear_gelu() calls of m rows each, with results equal
// to the calls one after another. Where all of them take the GEMV path (a
// decode step) they run in one parallel region: one barrier, and the faster
// thread goes on to the next product's rows instead of waiting.
struct LinearJob {
  const Linear* l = nullptr;
  const float* x = nullptr;
  float* y = nullptr;
  bool gelu = false;
};
void linear_group(const std::vector<LinearJob>& jobs, int m);

// True where the int8 GEMMs are exact: the engine's own AVX-512 VNNI kernels,
// or oneDNN's u8×s8 GEMM on a CPU with VNNI. Without VNNI (AVX2 CPUs before
// Ice Lake and Zen 4) oneDNN's vpmaddubsw step saturates each pair of
// products at int16 (int8 mode's top-1 agreement fell to 0.55), so the int8
// and q4 modes' prompt products and attention run as fp32 GEMMs on weights
// widened per block there; decode's own GEMV kernels are exact everywhere.
bool int8_gemm_exact();

// Which path a linear() call took: GEMV kernels (few rows), the int8 GEMM
// (Q8 per-row weights), the int8 GEMM on Q4 weights widened to int8 per
// panel, or fp32 SGEMMs on widened weights.
// (Int8FusedGemm: those of Int8Gemm that ran the ISA's fused kernel, gemm_int8.h.)
enum class LinearPath { Gemv, Int8Gemm, Q4Int8Gemm, Fp32Gemm, Int8FusedGemm };
namespace detail {
// Calls so far that took path p, process-wide (tests: the fast path ran).
uint64_t linear_path_count(LinearPath p);
}  // namespace detail
// LayerNorm with eps 1e-5 over rows of length dim; x and y may alias.
void layer_norm(const LayerNormWeights& ln, const float* x, int m, float* y);
// 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), in place.
void gelu_tanh(float* x, size_t n);
// Numerically stable softmax of one row, in place.
void softmax(float* x, int n);

// Multi-head attention over a block of queries against keys/values.
// q: [n_q, *] with row stride q_stride, head h at column h·head_dim.
// k, v: [n_k, *] with row stride kv_stride, kv head g at column g·head_dim.
// Query head h reads kv head h / (n_heads / n_kv_heads).
// allowed(i, j) is the mask: query row i may attend key row j.
// out: [n_q, n_heads·head_dim] (row stride n_heads·head_dim).
struct AttentionShape {
  int n_q = 0, n_k = 0;
  int n_heads = 0, n_kv_heads = 0, head_dim = 0;
  int q_stride = 0, kv_stride = 0;
  // Attention on int8 GEMMs, as the int8 modes do for the vision tower and
  // long text prompts: Q·Kᵀ with query and key rows quantised per row, P·V
  // with P in 16-bit fixed point (two u8 GEMMs) and V per column; softmax
  // in fp32. Only for keys in one range (no base rows).
  bool int8_scores = false;
};
// Mask kinds: full (every key visible) or "prefix-causal": query at absolute
// position q_pos0 + i sees key j if j <= q_pos0 + i, or if both lie inside
// the first `prefix` positions.
struct AttentionMask {
  bool full = true;
  int q_pos0 = 0;
  int prefix = 0;
  bool allowed(int i, int j) const { return j < visible_keys(i, 1 << 30); }
  // The keys query row i sees are always a prefix [0, n) of the keys.
  int visible_keys(int i, int n_k) const {
    if (full) return n_k;
    const int p = q_pos0 + i;
    return std::min(n_k, p < prefix ? std::max(prefix, p + 1) : p + 1);
  }
};
void attention(const AttentionShape& s, const AttentionMask& mask, const float* q, const float* k, const float* v,
               float* out);

// How a KV cache stores its rows: fp32, bf16 (round to nearest even, as
// the official model holds them on its bf16 weights: half the bytes every
// decode step reads), or int8 (each head's row of a position as int8 with
// one fp32 scale, max|x|/127, round to nearest: 0.53 of bf16's bytes).
// docs/BENCHMARKS.md has each one's measured accuracy.
enum class KVFormat { F32, BF16, I8 };
const char* kv_format_name(KVFormat f);  // "f32", "bf16", "int8"
// Parses "f32" / "fp32" / "bf16" / "int8"; false for anything else.
bool parse_kv_format(const std::string& s, KVFormat* out);
inline size_t kv_element_bytes(KVFormat f) { return f == KVFormat::BF16 ? 2 : f == KVFormat::I8 ? 1 : 4; }
// Bytes of one kv head's row of one position (its int8 scale included).
inline size_t kv_head_row_bytes(KVFormat f, int head_dim) {
  return size_t(head_dim) * kv_element_bytes(f) + (f == KVFormat::I8 ? sizeof(float) : 0);
}
// One head row as int8: scale = max|x|/127 (0 for an all-zero row), q =
// round-to-nearest(x / scale). Reads see q·scale.
void quantize_kv_row(const float* x, int n, int8_t* q, float* scale);

// Keys/values held in two places: `base` rows are keys [0, base.rows) (a
// shared, read-only image prefix), `own` rows the keys after them; together
// they are the s.n_k keys. Lets every question about one image attend to the
// same prefix without copying it. k/v point at float, uint16_t (bf16) or
// int8_t elements as `format` says; base and own must share it. int8 rows
// have one scale per head and key: key j of kv head g has k_scale[g ·
// scale_head_stride + j] (v_scale likewise).
//
// Key j of kv head g starts g·head_stride + j·row_stride elements into k
// (and v). Left 0, they are the AttentionShape's row layout (row_stride =
// kv_stride, head_stride = head_dim: the rows of a qkv buffer). KV caches
// are head-major (row_stride = head_dim, head_stride = rows held ·
// head_dim): one head's keys are one sequential run, which decoding
// streams at the memory's rate, where a walk over position-major rows reads
// 128 bytes of every 4 KB row per head (docs/BENCHMARKS.md, issue 15).
struct KVRows {
  const void* k = nullptr;
  const void* v = nullptr;
  int rows = 0;
  KVFormat format = KVFormat::F32;
  int row_stride = 0;
  size_t head_stride = 0;
  const float* k_scale = nullptr;  // int8 only
  const float* v_scale = nullptr;
  size_t scale_head_stride = 0;
  // Elements from k (or v) to key j of kv head g (strides spelled out).
  size_t at(int g, int j) const { return size_t(g) * head_stride + size_t(j) * size_t(row_stride); }
  // Scales from k_scale (or v_scale) to key j of kv head g.
  size_t scale_at(int g, int j) const { return size_t(g) * scale_head_stride + size_t(j); }
};
// fp32 rows: oneDNN SGEMMs (or the int8 path). bf16 and int8 rows: up to
// kDirectAttentionRows queries (decoding) read them in place, widening as
// they go; more (a prompt) widen the rows to fp32 once and take the fp32
// path.
void attention(const AttentionShape& s, const AttentionMask& mask, const float* q, KVRows base, KVRows own, float* out);
// One batched decode step's attention: row i (its query at q + i·s.q_stride,
// n_heads·head_dim wide) is the next position of its own sequence, whose
// keys are base[i] then own[i], all visible; out row i at out +
// i·n_heads·head_dim. Rows whose base are the same rows (one cached image
// prefix) read them once for all of them. Each row's result equals
// attention() of that row alone, bit for bit. (s.n_q, s.n_k are unused.)
void decode_attention(const AttentionShape& s, int n, const float* q, const KVRows* base, const KVRows* own,
                      float* out);
// bf16 / int8 KV paths of attention() for up to kDirectAttentionRows
// queries: one query split by key range (decoding), several queries in
// vector lanes; and int8_scores prompts on the fused int8 head kernel
// (attention_int8.h).
// (Int8KvKernel: those of DecodeSplit over int8 rows that ran the ISA's
// block kernel, gemv_impl.h. SharedBaseRows: decode rows that read their
// base rows in another row's pass, decode_attention. MultiQueryBlock:
// slices of shared base rows whose rows' queries ran in the ISA's kernel
// for several queries, gemv_impl.h.)
enum class AttentionPath { DecodeSplit, QueryLanes, Int8Fused, Int8KvKernel, SharedBaseRows, MultiQueryBlock };
namespace detail {
// Calls so far that took path p, process-wide (tests: the fast path ran).
uint64_t attention_path_count(AttentionPath p);
}  // namespace detail
inline constexpr int kDirectAttentionRows = 32;

}  // namespace md
