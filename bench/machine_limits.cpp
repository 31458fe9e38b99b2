#include "machine_limits.h"

// GCC 12's AVX-512 headers trip these on their own _mm512_undefined_*
// helpers (GCC bug 105593).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#if defined(__x86_64__)
#include <immintrin.h>
#elif defined(__aarch64__)
#include <arm_neon.h>
#include <sys/auxv.h>
#include <asm/hwcap.h>
#endif
#include <omp.h>

#include <chrono>
#include <sys/mman.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

namespace md::bench {
namespace {

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

#if defined(__x86_64__)
// 12 independent accumulators hide the FMA latency (4 cycles × 2 ports + slack).
__attribute__((target("avx512f"))) double fma_avx512(long iters) {
  __m512 a[12];
  for (int i = 0; i < 12; ++i) a[i] = _mm512_set1_ps(float(i) * 1e-3f);
  const __m512 b = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
  for (long it = 0; it < iters; ++it)
    for (int i = 0; i < 12; ++i) a[i] = _mm512_fmadd_ps(a[i], b, c);
  __m512 s = a[0];
  for (int i = 1; i < 12; ++i) s = _mm512_add_ps(s, a[i]);
  volatile float sink = _mm512_reduce_add_ps(s);
  (void)sink;
  return double(iters) * 12 * 16 * 2;
}

__attribute__((target("avx2,fma"))) double fma_avx2(long iters) {
  __m256 a[12];
  for (int i = 0; i < 12; ++i) a[i] = _mm256_set1_ps(float(i) * 1e-3f);
  const __m256 b = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
  for (long it = 0; it < iters; ++it)
    for (int i = 0; i < 12; ++i) a[i] = _mm256_fmadd_ps(a[i], b, c);
  __m256 s = a[0];
  for (int i = 1; i < 12; ++i) s = _mm256_add_ps(s, a[i]);
  float out[8];
  _mm256_storeu_ps(out, s);
  volatile float sink = out[0];
  (void)sink;
  return double(iters) * 12 * 8 * 2;
}

__attribute__((target("avx512f,avx512bw,avx512vnni"))) double vnni_avx512(long iters) {
  __m512i a[12];
  for (int i = 0; i < 12; ++i) a[i] = _mm512_set1_epi32(i);
  const __m512i b = _mm512_set1_epi8(3), c = _mm512_set1_epi8(-2);
  for (long it = 0; it < iters; ++it)
    for (int i = 0; i < 12; ++i) a[i] = _mm512_dpbusd_epi32(a[i], b, c);
  __m512i s = a[0];
  for (int i = 1; i < 12; ++i) s = _mm512_add_epi32(s, a[i]);
  volatile int sink = _mm512_reduce_add_epi32(s);
  (void)sink;
  return double(iters) * 12 * 64 * 2;  // 64 multiply-adds per instruction
}

#elif defined(__aarch64__)
// 12 independent accumulators hide the FMA latency (NEON: 4 floats each).
double fma_neon(long iters) {
  float32x4_t a[12];
  for (int i = 0; i < 12; ++i) a[i] = vdupq_n_f32(float(i) * 1e-3f);
  const float32x4_t b = vdupq_n_f32(0.999999f), c = vdupq_n_f32(1e-7f);
  for (long it = 0; it < iters; ++it)
    for (int i = 0; i < 12; ++i) a[i] = vfmaq_f32(c, a[i], b);
  float32x4_t s = a[0];
  for (int i = 1; i < 12; ++i) s = vaddq_f32(s, a[i]);
  volatile float sink = vaddvq_f32(s);
  (void)sink;
  return double(iters) * 12 * 4 * 2;
}

// SDOT: 16 int8 multiply-adds per instruction (Armv8.2 dotprod).
__attribute__((target("arch=armv8.2-a+dotprod"))) double sdot_neon(long iters) {
  int32x4_t a[12];
  for (int i = 0; i < 12; ++i) a[i] = vdupq_n_s32(i);
  const int8x16_t b = vdupq_n_s8(3), c = vdupq_n_s8(-2);
  for (long it = 0; it < iters; ++it)
    for (int i = 0; i < 12; ++i) a[i] = vdotq_s32(a[i], b, c);
  int32x4_t s = a[0];
  for (int i = 1; i < 12; ++i) s = vaddq_s32(s, a[i]);
  volatile int sink = vaddvq_s32(s);
  (void)sink;
  return double(iters) * 12 * 16 * 2;
}
#endif

template <typename F>
double parallel_rate(int threads, F kernel, long iters) {
  double best = 0;
  for (int rep = 0; rep < 3; ++rep) {
    double ops = 0;
    const double t0 = now();
#pragma omp parallel num_threads(threads) reduction(+ : ops)
    ops += kernel(iters);
    const double dt = now() - t0;
    best = std::max(best, ops / dt);
  }
  return best;
}

// Memory read bandwidth as the best streaming code reaches it: a 1 GiB
// buffer on huge pages where the kernel grants them, each thread reading its
// own contiguous share with 64-byte vector loads, in several variants (one
// stream or four interleaved streams per thread, with or without software
// prefetch ahead of the loads, temporal or non-temporal); best of several
// repetitions of the best variant. Decode ratios divide by this, so it must
// not be beaten by the engine's own kernels.
struct ReadVariant {
  const char* name;
  int streams;       // concurrent sequential streams per thread
  int prefetch;      // bytes ahead of each stream, 0 = hardware prefetch only
  bool nontemporal;  // prefetchnta instead of prefetcht0
};
constexpr ReadVariant kReadVariants[] = {
    {"1 stream", 1, 0, false},
    {"1 stream, prefetch 1 KiB", 1, 1024, false},
    {"1 stream, nta 2 KiB", 1, 2048, true},
    {"4 streams", 4, 0, false},
    {"4 streams, prefetch 512 B", 4, 512, false},
    {"2 streams, prefetch 1 KiB", 2, 1024, false},
};

#if defined(__x86_64__)
__attribute__((target("avx512f"))) uint64_t read_share_avx512(const uint8_t* p, size_t bytes, const ReadVariant& v) {
  __m512i acc0 = _mm512_setzero_si512(), acc1 = _mm512_setzero_si512();
  const size_t per = bytes / size_t(v.streams) / 128 * 128;
  for (size_t off = 0; off < per; off += 128)
    for (int s = 0; s < v.streams; ++s) {
      const uint8_t* q = p + size_t(s) * per + off;
      if (v.prefetch) {
        if (v.nontemporal)
          _mm_prefetch(reinterpret_cast<const char*>(q + v.prefetch), _MM_HINT_NTA);
        else
          _mm_prefetch(reinterpret_cast<const char*>(q + v.prefetch), _MM_HINT_T0);
      }
      acc0 = _mm512_xor_si512(acc0, _mm512_load_si512(q));
      acc1 = _mm512_xor_si512(acc1, _mm512_load_si512(q + 64));
    }
  return uint64_t(_mm512_reduce_add_epi64(_mm512_xor_si512(acc0, acc1)));
}

__attribute__((target("avx2"))) uint64_t read_share_avx2(const uint8_t* p, size_t bytes, const ReadVariant& v) {
  __m256i a[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256()};
  const size_t per = bytes / size_t(v.streams) / 128 * 128;
  for (size_t off = 0; off < per; off += 128)
    for (int s = 0; s < v.streams; ++s) {
      const uint8_t* q = p + size_t(s) * per + off;
      if (v.prefetch) {
        if (v.nontemporal)
          _mm_prefetch(reinterpret_cast<const char*>(q + v.prefetch), _MM_HINT_NTA);
        else
          _mm_prefetch(reinterpret_cast<const char*>(q + v.prefetch), _MM_HINT_T0);
      }
      for (int k = 0; k < 4; ++k)
        a[k] = _mm256_xor_si256(a[k], _mm256_load_si256(reinterpret_cast<const __m256i*>(q + 32 * k)));
    }
  const __m256i x = _mm256_xor_si256(_mm256_xor_si256(a[0], a[1]), _mm256_xor_si256(a[2], a[3]));
  return uint64_t(_mm256_extract_epi64(x, 0) ^ _mm256_extract_epi64(x, 3));
}

#elif defined(__aarch64__)
uint64_t read_share_neon(const uint8_t* p, size_t bytes, const ReadVariant& v) {
  uint64x2_t a[4] = {vdupq_n_u64(0), vdupq_n_u64(0), vdupq_n_u64(0), vdupq_n_u64(0)};
  const size_t per = bytes / size_t(v.streams) / 64 * 64;
  for (size_t i = 0; i < per; i += 64)
    for (int st = 0; st < v.streams; ++st) {
      const uint8_t* q = p + size_t(st) * per + i;
      if (v.prefetch && v.nontemporal)
        __builtin_prefetch(q + v.prefetch, 0, 0);
      else if (v.prefetch)
        __builtin_prefetch(q + v.prefetch, 0, 3);
      for (int k = 0; k < 4; ++k) a[k] = veorq_u64(a[k], vld1q_u64(reinterpret_cast<const uint64_t*>(q + 16 * k)));
    }
  const uint64x2_t x = veorq_u64(veorq_u64(a[0], a[1]), veorq_u64(a[2], a[3]));
  return vgetq_lane_u64(x, 0) ^ vgetq_lane_u64(x, 1);
}
#endif

[[maybe_unused]] uint64_t read_share_scalar(const uint8_t* p, size_t bytes, const ReadVariant&) {
  uint64_t s = 0;
  for (size_t i = 0; i + 8 <= bytes; i += 8) {
    uint64_t w;
    std::memcpy(&w, p + i, 8);
    s += w;
  }
  return s;
}

// One thread's read of [p, p + bytes) with the widest loop this CPU has.
uint64_t read_share(const uint8_t* p, size_t bytes, const ReadVariant& v) {
#if defined(__x86_64__)
  static const bool avx512 = __builtin_cpu_supports("avx512f"), avx2 = __builtin_cpu_supports("avx2");
  return avx512 ? read_share_avx512(p, bytes, v) : avx2 ? read_share_avx2(p, bytes, v) : read_share_scalar(p, bytes, v);
#elif defined(__aarch64__)
  return read_share_neon(p, bytes, v);
#else
  return read_share_scalar(p, bytes, v);
#endif
}

}  // namespace

ReadProbe::ReadProbe(int threads) : threads_(threads) {
  const size_t align = size_t(2) << 20;
  void* m = mmap(nullptr, kBytes + align, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) return;
  map_ = m;
  buf_ = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(m) + align - 1) & ~(uintptr_t(align) - 1));
  huge_pages_ = madvise(buf_, kBytes, MADV_HUGEPAGE) == 0;
  // Every 8 bytes different: pages of equal content could be merged behind
  // the VM's back (one host page read over and over from cache).
#pragma omp parallel for num_threads(threads) schedule(static)
  for (size_t i = 0; i < kBytes; i += 4096) {
    uint64_t* w = reinterpret_cast<uint64_t*>(buf_ + i);
    for (size_t j = 0; j < 512; ++j) w[j] = (uint64_t(i) + 8 * j) * 0x9E3779B97F4A7C15ull;
  }
}

ReadProbe::~ReadProbe() {
  if (map_) munmap(map_, kBytes + (size_t(2) << 20));
}

double ReadProbe::run(int variant) const {
  if (!buf_) return 0;
  const ReadVariant& v = kReadVariants[variant];
  const uint8_t* buf = buf_;
  uint64_t sink = 0;
  const double t0 = now();
#pragma omp parallel num_threads(threads_) reduction(^ : sink)
  {
    const int t = omp_get_thread_num(), n = omp_get_num_threads();
    const size_t share = kBytes / size_t(n) / 4096 * 4096;
    sink ^= read_share(buf + size_t(t) * share, share, v);
  }
  const double dt = now() - t0;
  volatile uint64_t keep = sink;
  (void)keep;
  return double(kBytes) / dt / 1e9;
}

double ReadProbe::in_pieces(const std::vector<size_t>& pieces, int steps, int reps) const {
  if (!buf_ || pieces.empty()) return 0;
  double total = 0;
  for (size_t b : pieces) total += double(b / 4096 * 4096);
  double best = 0;
  uint64_t sink = 0;
  for (int rep = 0; rep < reps; ++rep) {
    size_t at = 0;
    const double t0 = now();
    for (int s = 0; s < steps; ++s)
      for (size_t b : pieces) {
        b = b / 4096 * 4096;
        if (at + b > kBytes) at = 0;
        const uint8_t* base = buf_ + at;
        at += b;
#pragma omp parallel num_threads(threads_) reduction(^ : sink)
        {
          // Each thread one contiguous share of the piece, as the GEMVs split
          // their rows.
          const size_t t = size_t(omp_get_thread_num()), n = size_t(omp_get_num_threads());
          const size_t b0 = b * t / n / 128 * 128, b1 = t + 1 == n ? b : b * (t + 1) / n / 128 * 128;
          sink ^= read_share(base + b0, b1 - b0, kReadVariants[best_]);
        }
      }
    best = std::max(best, total * steps / (now() - t0) / 1e9);
  }
  volatile uint64_t keep = sink;
  (void)keep;
  return best;
}

ReadBandwidth ReadProbe::measure() {
  ReadBandwidth out;
  out.huge_pages = huge_pages_;
  // Each variant a few times (the VM is noisy), then the best one again.
  const int variants = int(sizeof(kReadVariants) / sizeof(kReadVariants[0]));
  for (int v = 0; v < variants; ++v) {
    double b = 0;
    for (int rep = 0; rep < 3; ++rep) b = std::max(b, run(v));
    out.per_variant.push_back({kReadVariants[v].name, b});
    if (b > out.gbps) {
      out.gbps = b;
      best_ = v;
    }
  }
  for (int rep = 0; rep < 4; ++rep) out.gbps = std::max(out.gbps, run(best_));
  out.variant = kReadVariants[best_].name;
  return out;
}

double ReadProbe::quick(int reps) const {
  double b = 0;
  for (int rep = 0; rep < reps; ++rep) b = std::max(b, run(best_));
  return b;
}

ReadBandwidth measure_read_bandwidth(int threads) { return ReadProbe(threads).measure(); }

MachineLimits measure_machine_limits(int threads) {
  MachineLimits m;
  m.threads = threads;
  const long iters = 20'000'000;
#if defined(__x86_64__)
  if (__builtin_cpu_supports("avx512f")) {
    m.isa = "avx512";
    m.fp32_gflops = parallel_rate(threads, fma_avx512, iters) / 1e9;
    if (__builtin_cpu_supports("avx512vnni")) m.int8_gops = parallel_rate(threads, vnni_avx512, iters) / 1e9;
  } else if (__builtin_cpu_supports("avx2")) {
    m.isa = "avx2";
    m.fp32_gflops = parallel_rate(threads, fma_avx2, iters) / 1e9;
  } else {
    m.isa = "scalar";
  }
#elif defined(__aarch64__)
  m.isa = "neon";
  m.fp32_gflops = parallel_rate(threads, fma_neon, iters) / 1e9;
  if (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) {
    m.isa = "dotprod";
    m.int8_gops = parallel_rate(threads, sdot_neon, iters) / 1e9;
  }
#else
  m.isa = "scalar";
#endif
  m.read = measure_read_bandwidth(threads);
  m.read_gbps = m.read.gbps;
  return m;
}

}  // namespace md::bench
