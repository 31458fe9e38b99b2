// GEMV front end: run-time CPU dispatch, the per-call activation quantisation
// of the Q8/Q4 paths, threading, and the scalar reference kernels (the
// fallback on CPUs without AVX2, and the column tails of the SIMD kernels).
#include "tensor/gemv.h"

#if defined(__x86_64__) && MOONDREAM_HAVE_ONEDNN
#include <oneapi/dnnl/dnnl.h>
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#if defined(__aarch64__) && defined(__linux__)
#include <asm/hwcap.h>
#include <sys/auxv.h>
#elif defined(__aarch64__) && defined(__APPLE__)
#include <sys/sysctl.h>
#endif

#include "tensor/dtype.h"
#include "tensor/error.h"
#include "tensor/gemv_impl.h"
#include "tensor/isa.h"
#include "tensor/parallel.h"
#include "tensor/quant.h"
#include "tensor/scratch.h"

namespace md {

const char* weight_format_name(WeightFormat f) {
  switch (f) {
    case WeightFormat::F32: return "f32";
    case WeightFormat::BF16: return "bf16";
    case WeightFormat::F16: return "f16";
    case WeightFormat::Q8: return "q8";
    case WeightFormat::Q4: return "q4";
  }
  return "?";
}

size_t weight_bytes(const WeightMatrix& w) {
  const size_t n = size_t(w.rows) * size_t(w.cols);
  const size_t scales = w.group > 0 ? size_t(w.rows) * size_t(w.cols / w.group) * 2 : 0;
  switch (w.format) {
    case WeightFormat::F32: return n * 4;
    case WeightFormat::BF16:
    case WeightFormat::F16: return n * 2;
    case WeightFormat::Q8: return n + scales;
    case WeightFormat::Q4:
      return quant_data_bytes(w.format, w.rows, w.cols) + quant_aux_bytes(w.format, w.rows, w.cols, w.group);
  }
  return 0;
}

namespace gemv_detail {

// ---------------------------------------------------------------------------
// Activation quantisation. Every ISA's version gives the same int8 values
// (max, IEEE multiply, round-to-nearest-even), so the ISAs differ only in the
// order of fp32 additions.

MD_NO_FP_CONTRACT void prep_row_scalar(const float* x, int cols, int group, int zero, int8_t* q, float* s,
                                       int32_t* hc) {
  constexpr float kMagic = 12582912.0f;  // 1.5·2^23: (v + M) - M rounds to nearest even
  const int ng = cols / group;
  for (int g = 0; g < ng; ++g) {
    const float* xg = x + size_t(g) * size_t(group);
    float amax = 0.0f;
    for (int c = 0; c < group; ++c) {
      const float a = std::fabs(xg[c]);
      amax = a > amax ? a : amax;
    }
    const float id = amax > 0.0f ? 127.0f / amax : 0.0f;
    int8_t* qg = q + size_t(g) * size_t(group);
    for (int c = 0; c < group; ++c) {
      float v = (xg[c] * id + kMagic) - kMagic;
      v = v > 127.0f ? 127.0f : (v < -127.0f ? -127.0f : v);
      qg[c] = int8_t(int(v));
    }
    s[g] = amax / 127.0f;
  }
  for (int k = 0; k < cols / 32; ++k) {
    int sum = 0;
    for (int c = 0; c < 32; ++c) sum += q[32 * k + c];
    hc[8 * k] = -zero * sum;
    for (int l = 1; l < 8; ++l) hc[8 * k + l] = 0;
  }
}

void XQuantBuf::prepare(const float* X, int m, int ldx, int cols, int group, int zero) {
  // Rows start on 64-byte boundaries: the kernels' 512-bit loads of x never
  // split a cache line.
  const size_t qstride = (size_t(cols) + 63) / 64 * 64 + 64;
  const size_t sstride = size_t(cols / group) + 16;
  const size_t hstride = size_t(cols / 4) + 16;
  if (q.size() < size_t(m) * qstride + 64) q.resize(size_t(m) * qstride + 64);
  int8_t* q0 = q.data() + (64 - reinterpret_cast<uintptr_t>(q.data()) % 64) % 64;
  if (s.size() < size_t(m) * sstride) s.resize(size_t(m) * sstride);
  if (hc.size() < size_t(m) * hstride) hc.resize(size_t(m) * hstride);
  rows.resize(size_t(m));
  const PrepRow prep = kernels().prep_row;
  for (int i = 0; i < m; ++i) {
    int8_t* qi = q0 + size_t(i) * qstride;
    float* si = s.data() + size_t(i) * sstride;
    int32_t* hi = hc.data() + size_t(i) * hstride;
    prep(X + size_t(i) * size_t(ldx), cols, group, zero, qi, si, hi);
    // Readable padding, zero so that over-reads contribute nothing.
    std::memset(qi + cols, 0, 64);
    std::memset(si + cols / group, 0, 16 * sizeof(float));
    std::memset(hi + cols / 4, 0, 16 * sizeof(int32_t));
    rows[size_t(i)] = XQuant{qi, si, hi};
  }
}

void prepare_bf16_pair_x(const float* X, int m, int ldx, int cols, int chunk, float* out) {
  const int full = cols / chunk * chunk, half = chunk / 2;
  for (int i = 0; i < m; ++i) {
    const float* x = X + size_t(i) * size_t(ldx);
    float* o = out + size_t(i) * size_t(cols);
    for (int c = 0; c < full; c += chunk)
      for (int j = 0; j < half; ++j) {
        o[c + j] = x[c + 2 * j];
        o[c + half + j] = x[c + 2 * j + 1];
      }
    for (int c = full; c < cols; ++c) o[c] = x[c];
  }
}

namespace {

inline float load_f16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return f16_to_f32(h);
}

// Σ over groups [g0, g1) of d_w · s_x · Σ q_w·q_x with signed weights wq
// (indexed from column g0·group); scales: fp16, one per group.
float qdot_groups(const int8_t* wq, const uint8_t* scales, const XQuant& x, int group, int g0, int g1) {
  float acc = 0.0f;
  for (int g = g0; g < g1; ++g) {
    const int8_t* a = wq + size_t(g - g0) * size_t(group);
    const int8_t* b = x.q + size_t(g) * size_t(group);
    int32_t sum = 0;
    for (int c = 0; c < group; ++c) sum += int32_t(a[c]) * int32_t(b[c]);
    acc += float(sum) * (load_f16(scales + 2 * size_t(g)) * x.s[g]);
  }
  return acc;
}

thread_local std::vector<float> t_row;
thread_local std::vector<int8_t> t_qrow;

void fp_scalar(const WeightMatrix& w, const float* X, int m, float* Y, int ldy, int r0, int r1) {
  const int cols = w.cols;
  t_row.resize(size_t(cols));
  float* row = t_row.data();
  const uint8_t* base = static_cast<const uint8_t*>(w.data);
  for (int r = r0; r < r1; ++r) {
    switch (w.format) {
      case WeightFormat::F32: std::memcpy(row, base + 4 * size_t(r) * size_t(cols), 4 * size_t(cols)); break;
      case WeightFormat::BF16:
        convert_to_f32(DType::BF16, base + 2 * size_t(r) * size_t(cols), row, size_t(cols));
        break;
      default: convert_to_f32(DType::F16, base + 2 * size_t(r) * size_t(cols), row, size_t(cols)); break;
    }
    for (int i = 0; i < m; ++i) {
      const float* x = X + size_t(i) * size_t(cols);
      float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      int c = 0;
      for (; c + 8 <= cols; c += 8)
        for (int k = 0; k < 8; ++k) acc[k] += row[c + k] * x[c + k];
      for (; c < cols; ++c) acc[c & 7] += row[c] * x[c];
      Y[size_t(i) * size_t(ldy) + size_t(r)] =
          ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    }
  }
}

void q8_scalar(const WeightMatrix& w, const XQuant* x, int m, float* Y, int ldy, int r0, int r1) {
  const int cols = w.cols, ng = cols / w.group;
  t_qrow.resize(size_t(cols));
  int8_t* wq = t_qrow.data();
  for (int r = r0; r < r1; ++r) {
    const uint8_t* row = static_cast<const uint8_t*>(w.data) + size_t(r) * size_t(cols);
    for (int c = 0; c < cols; ++c) wq[c] = int8_t(int(row[c]) - 128);
    const uint8_t* sc = static_cast<const uint8_t*>(w.aux) + 2 * size_t(r) * size_t(ng);
    for (int i = 0; i < m; ++i) Y[size_t(i) * size_t(ldy) + size_t(r)] = qdot_groups(wq, sc, x[i], w.group, 0, ng);
  }
}

void q4_scalar(const WeightMatrix& w, const XQuant* x, int m, float* Y, int ldy, int r0, int r1) {
  const int cols = w.cols, ng = cols / w.group;
  t_qrow.resize(size_t(cols));
  thread_local std::vector<uint8_t> t_values;
  thread_local std::vector<uint16_t> t_scales;
  t_values.resize(size_t(cols));
  t_scales.resize(size_t(ng));
  int8_t* wq = t_qrow.data();
  for (int r = r0; r < r1; ++r) {
    q4_row(w, r, t_values.data(), t_scales.data());
    for (int c = 0; c < cols; ++c) wq[c] = int8_t(int(t_values[size_t(c)]) - 8);
    const auto* sc = reinterpret_cast<const uint8_t*>(t_scales.data());
    for (int i = 0; i < m; ++i) Y[size_t(i) * size_t(ldy) + size_t(r)] = qdot_groups(wq, sc, x[i], w.group, 0, ng);
  }
}

}  // namespace

float q8_dot_tail(const WeightMatrix& w, int r, const XQuant& x, int c0) {
  const int cols = w.cols, ng = cols / w.group;
  int8_t wq[128];
  const uint8_t* row = static_cast<const uint8_t*>(w.data) + size_t(r) * size_t(cols);
  for (int c = c0; c < cols; ++c) wq[c - c0] = int8_t(int(row[c]) - 128);
  const uint8_t* sc = static_cast<const uint8_t*>(w.aux) + 2 * size_t(r) * size_t(ng);
  return qdot_groups(wq, sc, x, w.group, c0 / w.group, ng);
}

const Kernels kScalar = {"scalar",         fp_scalar,       q8_scalar, q4_scalar,
                         quant_row_scalar, prep_row_scalar, nullptr,   nullptr};

// ---------------------------------------------------------------------------
// Dispatch.

namespace {

// The kernel tables this architecture has, from the plainest (the portable
// loops) to the fastest; a CPU runs the highest whose features it has.
// Each architecture's kernels live in their own folder (src/tensor/x86,
// src/tensor/arm); nothing outside src/tensor knows which one runs.
struct Level {
  const char* name;
  IsaLevel level;
  const Kernels* table;
  const AttentionKernels* attention;
};
#if defined(__x86_64__)
constexpr Level kLevels[] = {{"scalar", kIsaGeneric, &kScalar, nullptr},
                             {"avx2", kIsaAvx2, &kAvx2, nullptr},
                             {"avx512", kIsaAvx512, &kAvx512, &kAttentionAvx512}};

bool cpu_runs(IsaLevel level) {
  __builtin_cpu_init();
  // F16C: CPUID.1:ECX bit 29 (GCC 12's __builtin_cpu_supports has no name for it).
  unsigned a, b, c, d;
  __asm__("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(1), "c"(0));
  const bool f16c = (c >> 29) & 1u;
  // BMI1/2: Highway's AVX2 and AVX-512 targets (hwy/gemv_fp.cpp) compile for them.
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c &&
                    __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2");
  switch (level) {
    case kIsaGeneric: return true;
    case kIsaAvx2: return avx2;
    case kIsaAvx512:
      return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("avx512vnni");
    default: return false;
  }
}
#elif defined(__aarch64__)
constexpr Level kLevels[] = {{"scalar", kIsaGeneric, &kScalar, nullptr},
                             {"neon", kIsaNeon, &kNeon, &kAttentionNeon},
                             {"dotprod", kIsaNeonDotprod, &kNeonDotprod, &kAttentionNeon},
                             {"i8mm", kIsaNeonI8mm, &kNeonI8mm, &kAttentionNeon}};

#if defined(__APPLE__)
// macOS reports CPU features through sysctl (every Apple Silicon CPU has
// NEON and, from the M1 on, dotprod).
bool cpu_has(const char* name) {
  int value = 0;
  size_t size = sizeof value;
  return sysctlbyname(name, &value, &size, nullptr, 0) == 0 && value != 0;
}
bool cpu_runs(IsaLevel level) {
  switch (level) {
    case kIsaGeneric: return true;
    case kIsaNeon: return true;
    case kIsaNeonDotprod: return cpu_has("hw.optional.arm.FEAT_DotProd");
    case kIsaNeonI8mm: return cpu_has("hw.optional.arm.FEAT_DotProd") && cpu_has("hw.optional.arm.FEAT_I8MM");
    default: return false;
  }
}
#else
bool cpu_runs(IsaLevel level) {
  const unsigned long hwcap = getauxval(AT_HWCAP);
  switch (level) {
    case kIsaGeneric: return true;
    case kIsaNeon: return (hwcap & HWCAP_ASIMD) != 0;
    case kIsaNeonDotprod: return (hwcap & HWCAP_ASIMD) != 0 && (hwcap & HWCAP_ASIMDDP) != 0;
    case kIsaNeonI8mm:
      return (hwcap & HWCAP_ASIMD) != 0 && (hwcap & HWCAP_ASIMDDP) != 0 && (getauxval(AT_HWCAP2) & HWCAP2_I8MM) != 0;
    default: return false;
  }
}
#endif
#else
constexpr Level kLevels[] = {{"scalar", kIsaGeneric, &kScalar, nullptr}};
bool cpu_runs(IsaLevel level) { return level == kIsaGeneric; }
#endif
constexpr int kNumLevels = int(sizeof(kLevels) / sizeof(kLevels[0]));

// Index in kLevels of a level's name (MOONDREAM_ISA, gemv_force_isa), or -1.
int level_index(const char* name) {
  if (std::strcmp(name, "generic") == 0) name = "scalar";
  for (int i = 0; i < kNumLevels; ++i)
    if (std::strcmp(name, kLevels[i].name) == 0) return i;
  return -1;
}

int best_index() {
  static const int best = [] {
    int i = kNumLevels - 1;
    while (i > 0 && !cpu_runs(kLevels[i].level)) --i;
    return i;
  }();
  return best;
}

const Level* auto_choice() {
  int i = best_index();
  if (const char* env = std::getenv("MOONDREAM_ISA")) {
    const int e = level_index(env);
    if (e >= 0 && e < i) i = e;
  }
  return &kLevels[i];
}

std::atomic<const Level*> g_active{nullptr};

const Level& active() {
  const Level* l = g_active.load(std::memory_order_acquire);
  if (!l) {
    l = auto_choice();
    g_active.store(l, std::memory_order_release);
  }
  return *l;
}

#if defined(__x86_64__) && MOONDREAM_HAVE_ONEDNN
// oneDNN picks its own kernels by CPU: MOONDREAM_ISA caps it as well, before
// any of them is generated (at start-up), so an AVX2 or generic run executes
// no AVX-512 code anywhere: AVX2 without VNNI (the plainest AVX2 CPU), SSE4.1
// for generic.
const bool g_onednn_capped = [] {
  const char* env = std::getenv("MOONDREAM_ISA");
  const int i = env ? level_index(env) : -1;
  if (i < 0) return false;
  if (kLevels[i].level == kIsaAvx2) return dnnl_set_max_cpu_isa(dnnl_cpu_isa_avx2) == dnnl_success;
  if (kLevels[i].level == kIsaGeneric) return dnnl_set_max_cpu_isa(dnnl_cpu_isa_sse41) == dnnl_success;
  return false;
}();
#endif

}  // namespace

const Kernels& kernels() { return *active().table; }

const AttentionKernels* attention_kernels() { return active().attention; }

std::atomic<uint64_t> g_q8_chunked_calls{0};

}  // namespace gemv_detail

using namespace gemv_detail;

IsaLevel active_isa_level() { return active().level; }

namespace {
thread_local uint64_t t_elementwise_calls[kNumIsaLevels] = {};
}

namespace isa_detail {
void count_elementwise_call(IsaLevel level) { ++t_elementwise_calls[level]; }
}  // namespace isa_detail

uint64_t elementwise_calls_on_this_thread(IsaLevel level) { return t_elementwise_calls[level]; }

namespace detail {

bool gemv_force_isa(const char* name) {
  if (!name) {
    g_active.store(auto_choice(), std::memory_order_release);
    return true;
  }
  const int i = level_index(name);
  if (i < 0 || i > best_index()) return false;
  g_active.store(&kLevels[i], std::memory_order_release);
  return true;
}

const char* gemv_best_isa() { return kLevels[best_index()].name; }

uint64_t gemv_q8_chunked_calls() { return gemv_detail::g_q8_chunked_calls.load(std::memory_order_relaxed); }

std::vector<const char*> gemv_isas() {
  std::vector<const char*> out;
  for (int i = 0; i <= best_index(); ++i) out.push_back(kLevels[i].name);
  return out;
}

}  // namespace detail

const char* gemv_isa() { return kernels().name; }

Int8GemmKernel int8_gemm_kernel() { return kernels().int8_gemm; }

Int8HeadKernel int8_head_kernel() { return kernels().int8_head; }

size_t int8_head_scratch_bytes(int n_q, int n_k, int head_dim) {
  const auto bytes = kernels().int8_head_scratch;
  return bytes ? bytes(n_q, n_k, head_dim) : 0;
}

namespace {

bool is_quant(WeightFormat f) { return f == WeightFormat::Q8 || f == WeightFormat::Q4; }

void check(const WeightMatrix& w, int r0, int r1) {
  if (!w.data || w.rows <= 0 || w.cols <= 0 || r0 < 0 || r1 > w.rows || r0 > r1)
    throw Error("gemv: bad matrix or row range");
  if (is_quant(w.format) &&
      (!w.aux || w.group <= 0 || w.cols % w.group != 0 || !(w.group == 32 || w.group == 64 || w.group % 128 == 0)))
    throw Error("gemv: bad quantised matrix (group size or scales)");
}

thread_local XQuantBuf t_xq;
thread_local std::vector<float> t_xbf16;

void run_rows(const Kernels& k, const WeightMatrix& w, const float* X, const XQuant* xq, int m, float* Y, int ldy,
              int r0, int r1) {
  if (r0 >= r1) return;
  switch (w.format) {
    case WeightFormat::Q8: k.q8(w, xq, m, Y, ldy, r0, r1); break;
    case WeightFormat::Q4: k.q4(w, xq, m, Y, ldy, r0, r1); break;
    default: k.fp(w, X, m, Y, ldy, r0, r1); break;
  }
}

int zero_point(WeightFormat f) { return f == WeightFormat::Q8 ? 128 : 8; }

// The activations as the kernel reads them: quantised (Q8/Q4), re-laid for
// BF16 weights where the kernel asks, or X itself.
const float* prepare_x(const Kernels& k, const WeightMatrix& w, const float* X, int m, const XQuant** xq) {
  *xq = nullptr;
  if (is_quant(w.format)) {
    t_xq.prepare(X, m, w.cols, w.cols, w.group, zero_point(w.format));
    *xq = t_xq.rows.data();
  } else if (w.format == WeightFormat::BF16 && k.bf16_pair_cols) {
    float* out = scratch(t_xbf16, size_t(m) * size_t(w.cols));
    prepare_bf16_pair_x(X, m, w.cols, w.cols, k.bf16_pair_cols(), out);
    return out;
  }
  return X;
}

}  // namespace

void gemm_rows(const WeightMatrix& w, const float* X, int m, float* Y, int ldy, int r0, int r1) {
  check(w, r0, r1);
  if (m <= 0 || r0 == r1) return;
  const Kernels& k = kernels();
  const XQuant* xq = nullptr;
  const float* xk = prepare_x(k, w, X, m, &xq);
  run_rows(k, w, xk, xq, m, Y, ldy, r0, r1);
}

void gemv_rows(const WeightMatrix& w, const float* x, float* y, int r0, int r1) {
  gemm_rows(w, x, 1, y, w.rows, r0, r1);
}

void gemm_chunked(const WeightMatrix& w, const float* X, int m, float* Y, int ldy, int chunk,
                  const std::function<void(int r0, int r1)>& done) {
  gemm_chunked(std::vector<GemmJob>{GemmJob{&w, X, m, Y, ldy, done}}, chunk);
}

namespace {

// A run of chunks [front, back) that one thread walks forward from the front
// while the others, once out of work, take chunks from the back. Both ends in
// one atomic word, so the two never hand out the same chunk.
class ChunkRange {
 public:
  void reset(int front, int back) { fb_.store(pack(front, back), std::memory_order_relaxed); }
  // The next chunk from the front (the owner) or the back (a helper); -1 once
  // the range is empty.
  int take_front() { return take(true); }
  int take_back() { return take(false); }

 private:
  static uint64_t pack(int f, int b) { return uint64_t(uint32_t(f)) | (uint64_t(uint32_t(b)) << 32); }
  int take(bool front) {
    uint64_t v = fb_.load(std::memory_order_relaxed);
    for (;;) {
      const int f = int(uint32_t(v)), b = int(uint32_t(v >> 32));
      if (f >= b) return -1;
      const uint64_t next = front ? pack(f + 1, b) : pack(f, b - 1);
      if (fb_.compare_exchange_weak(v, next, std::memory_order_relaxed)) return front ? f : b - 1;
    }
  }
  // On its own cache line: the owner and the helpers write it.
  alignas(64) std::atomic<uint64_t> fb_{0};
};

}  // namespace

void gemm_chunked(const std::vector<GemmJob>& jobs, int chunk) {
  if (chunk <= 0) throw Error("gemm_chunked: chunk must be positive");
  int max_chunks = 0;
  for (const GemmJob& jb : jobs) {
    check(*jb.w, 0, jb.w->rows);
    if (jb.m > 0) max_chunks = std::max(max_chunks, (jb.w->rows + chunk - 1) / chunk);
  }
  if (max_chunks == 0) return;
  const Kernels& k = kernels();
  // Each job's chunks in one contiguous run per thread: a thread streams its
  // own run front to back (one long read per thread, which the hardware
  // prefetchers follow; 64-row runs handed out in turn reached ~15 % less in
  // the decode steps, bench), and a thread that finishes early takes chunks
  // from the back of the others' runs (a VM's vCPUs do not run at one speed).
  const int T = std::min(num_threads(), max_chunks);
  std::vector<ChunkRange> ranges(jobs.size() * size_t(T));
  for (size_t j = 0; j < jobs.size(); ++j) {
    const int n = jobs[j].m > 0 ? (jobs[j].w->rows + chunk - 1) / chunk : 0;
    for (int t = 0; t < T; ++t) ranges[j * size_t(T) + size_t(t)].reset(n * t / T, n * (t + 1) / T);
  }
  parallel_for(size_t(T), [&](size_t t0, size_t) {
    const int t = int(t0);
    for (size_t j = 0; j < jobs.size(); ++j) {
      const GemmJob& jb = jobs[j];
      if (jb.m <= 0) continue;
      const XQuant* xq = nullptr;
      const float* xk = nullptr;
      bool prepared = false;
      auto run = [&](int c) {
        if (!prepared) {
          xk = prepare_x(k, *jb.w, jb.X, jb.m, &xq);
          prepared = true;
        }
        const int r0 = c * chunk, r1 = std::min(jb.w->rows, r0 + chunk);
        run_rows(k, *jb.w, xk, xq, jb.m, jb.Y, jb.ldy, r0, r1);
        if (jb.done) jb.done(r0, r1);
      };
      ChunkRange* own = &ranges[j * size_t(T)];
      for (int c = own[t].take_front(); c >= 0; c = own[t].take_front()) run(c);
      for (int u = 1; u < T; ++u) {
        ChunkRange& other = own[(t + u) % T];
        for (int c = other.take_back(); c >= 0; c = other.take_back()) run(c);
      }
    }
  });
}

void gemm(const WeightMatrix& w, const float* X, int m, float* Y, int ldy) { gemm_chunked(w, X, m, Y, ldy, 64); }

void gemv(const WeightMatrix& w, const float* x, float* y) { gemm(w, x, 1, y, w.rows); }

}  // namespace md
