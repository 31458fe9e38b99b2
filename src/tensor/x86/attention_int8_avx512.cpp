// The fused int8 attention head of attention_int8.h on AVX-512 VNNI.
// Reached only through the run-time dispatch of gemv.cpp (the Kernels table).
//
// Per head: the keys are centred, quantised per row and stored as u8
// (q + 128: vpdpbusd's unsigned operand) in blocks of 16 keys, 4 columns of
// 16 keys per 64-byte line, as the int8 GEMM packs its weights; queries are
// s8 per row, broadcast 4 columns at a time, and Σ (k + 128)·q = Σ k·q +
// 128·Σ q is corrected per query row. V is s8 per column, widened to int16
// and stored as pairs of keys (16 columns × 2 keys per line) for vpdpwssd,
// whose other operand is a broadcast pair of p values.
// Per tile of 4 query rows: scores of 4 rows × 64 keys in 16 accumulators
// (4 loads + 4 broadcasts per 16 vpdpbusd), scaled to fp32 into the tile's
// rows (L1); softmax per row; P·V in 4 × head_dim/16 accumulators.
// Why 16-bit p: one u8 per probability (max → 255) drops the diffuse mass
// of a peaked row (ops_test: Int8KeepsTheDiffuseMassOfAPeakedRow); P·V then
// does 32 multiply-adds per instruction where the scores do 64.

#include "tensor/x86/simd_intrinsics.h"

#include <cstddef>
#include <cstdint>

#include "tensor/attention_int8.h"
#include "tensor/fast_math.h"
#include "tensor/gemv_impl.h"

namespace md::gemv_detail {
namespace {

constexpr int kTileRows = 4;
constexpr float kPScale = 32767.0f;
constexpr int kPvChunk = 256;  // keys between flushes of the int32 P·V sums

inline size_t align64(size_t n) { return (n + 63) / 64 * 64; }

// Offsets into the scratch block (all 64-byte aligned).
struct Int8HeadLayout {
  int nkp = 0;  // keys padded to 16
  int vd = 0;   // value columns padded to 16
  size_t qq, qbias, sq, kp, sk, vp, sv, vinv, mean, s, p, o, total;
  Int8HeadLayout(int n_q, int n_k, int hd) {
    nkp = (n_k + 15) / 16 * 16;
    vd = (hd + 15) / 16 * 16;
    size_t at = 0;
    auto take = [&at](size_t bytes) {
      const size_t here = at;
      at += align64(bytes);
      return here;
    };
    qq = take(size_t(n_q) * size_t(hd));
    qbias = take(size_t(n_q) * 4);
    sq = take(size_t(n_q) * 4);
    kp = take(size_t(nkp) * size_t(hd));
    sk = take(size_t(nkp) * 4);
    vp = take(size_t(nkp) * size_t(vd) * 2);
    sv = take(size_t(vd) * 4);
    vinv = take(size_t(vd) * 4);
    mean = take(size_t(vd) * 4);
    s = take(size_t(kTileRows) * size_t(nkp) * 4);
    p = take(size_t(kTileRows) * size_t(nkp) * 2);
    o = take(size_t(kTileRows) * size_t(vd) * 4);
    total = at;
  }
};

}  // namespace

size_t int8_head_scratch_avx512(int n_q, int n_k, int head_dim) { return Int8HeadLayout(n_q, n_k, head_dim).total; }

}  // namespace md::gemv_detail

#include "tensor/x86/simd_target_avx512_begin.h"

namespace md::gemv_detail {
namespace {

// Lanes of vector c (columns 16c…16c+15) that lie inside a row of hd.
inline __mmask16 cols_mask(int hd, int c) {
  const int left = hd - 16 * c;
  return left >= 16 ? __mmask16(0xffff) : __mmask16((1u << left) - 1);
}

// Row x (hd ≤ 80 columns) into up to 5 vectors, zero past hd; returns max |x|.
inline float load_row(const float* x, int hd, __m512* v) {
  __m512 m = _mm512_setzero_ps();
  for (int c = 0; c < (hd + 15) / 16; ++c) {
    v[c] = _mm512_maskz_loadu_ps(cols_mask(hd, c), x + 16 * c);
    m = _mm512_max_ps(m, _mm512_abs_ps(v[c]));
  }
  return _mm512_reduce_max_ps(m);
}

// round(v · inv) as int32 (round to nearest even).
inline __m512i quantize16(__m512 v, float inv) { return _mm512_cvtps_epi32(_mm512_mul_ps(v, _mm512_set1_ps(inv))); }

// Queries as s8 per row (scale × softmax scale), with 128·Σ q per row.
void pack_queries(const Int8HeadAttention& a, int8_t* qq, int32_t* qbias, float* sq) {
  const int hd = a.head_dim;
  __m512 v[5];
  for (int i = 0; i < a.n_q; ++i) {
    const float amax = load_row(a.q + size_t(i) * size_t(a.q_stride), hd, v);
    const float inv = amax > 0 ? 127.0f / amax : 0.0f;
    int8_t* qi = qq + size_t(i) * size_t(hd);
    __m512i sum = _mm512_setzero_si512();
    for (int c = 0; c < (hd + 15) / 16; ++c) {
      const __m512i q = quantize16(v[c], inv);
      sum = _mm512_add_epi32(sum, q);
      _mm_mask_storeu_epi8(qi + 16 * c, cols_mask(hd, c), _mm512_cvtepi32_epi8(q));
    }
    qbias[i] = 128 * _mm512_reduce_add_epi32(sum);
    sq[i] = amax / 127.0f * a.scale;
  }
}

// Keys minus their mean as s8 per row, stored + 128 in 16-key blocks: byte
// (j, d) at block j / 16, line d / 4, lane j % 16, byte d % 4. Padding keys
// are 128 (zero) with scale 0.
void pack_keys(const Int8HeadAttention& a, const Int8HeadLayout& L, uint8_t* kp, float* sk, float* mean) {
  const int hd = a.head_dim, groups = hd / 4, nv = (hd + 15) / 16;
  __m512 m[5], v[5];
  for (int c = 0; c < nv; ++c) m[c] = _mm512_setzero_ps();
  for (int j = 0; j < a.n_k; ++j) {
    load_row(a.k + size_t(j) * size_t(a.kv_stride), hd, v);
    for (int c = 0; c < nv; ++c) m[c] = _mm512_add_ps(m[c], v[c]);
  }
  const __m512 inv_n = _mm512_set1_ps(1.0f / float(a.n_k));
  for (int c = 0; c < nv; ++c) {
    m[c] = _mm512_mul_ps(m[c], inv_n);
    _mm512_storeu_ps(mean + 16 * c, m[c]);
  }
  alignas(64) int32_t words[20];  // a row's 4-byte groups
  for (int j = 0; j < L.nkp; ++j) {
    uint8_t* base = kp + size_t(j / 16) * size_t(groups) * 64 + size_t(j % 16) * 4;
    float inv = 0.0f;
    if (j < a.n_k) {
      load_row(a.k + size_t(j) * size_t(a.kv_stride), hd, v);
      __m512 amax = _mm512_setzero_ps();
      for (int c = 0; c < nv; ++c) {
        v[c] = _mm512_maskz_sub_ps(cols_mask(hd, c), v[c], m[c]);
        amax = _mm512_max_ps(amax, _mm512_abs_ps(v[c]));
      }
      const float am = _mm512_reduce_max_ps(amax);
      inv = am > 0 ? 127.0f / am : 0.0f;
      sk[j] = am / 127.0f;
    } else {
      for (int c = 0; c < nv; ++c) v[c] = _mm512_setzero_ps();
      sk[j] = 0.0f;
    }
    for (int c = 0; c < nv; ++c) {
      const __m512i q = _mm512_add_epi32(quantize16(v[c], inv), _mm512_set1_epi32(128));
      _mm_store_si128(reinterpret_cast<__m128i*>(words + 4 * c), _mm512_cvtepi32_epi8(q));
    }
    for (int g = 0; g < groups; ++g) __builtin_memcpy(base + size_t(g) * 64, words + g, 4);
  }
}

// V as s8 per column (scale sv[d]) widened to int16, two keys per column:
// element (j, d) at pair j / 2, index 2·d + j % 2. Padding is zero.
void pack_values(const Int8HeadAttention& a, const Int8HeadLayout& L, int16_t* vp, float* sv, float* vinv) {
  const int hd = a.head_dim, nv = L.vd / 16;
  __m512 m[5], v[5];
  for (int c = 0; c < nv; ++c) m[c] = _mm512_setzero_ps();
  for (int j = 0; j < a.n_k; ++j) {
    load_row(a.v + size_t(j) * size_t(a.kv_stride), hd, v);
    for (int c = 0; c < nv; ++c) m[c] = _mm512_max_ps(m[c], _mm512_abs_ps(v[c]));
  }
  __m512 inv[5];
  for (int c = 0; c < nv; ++c) {
    const __mmask16 live = _mm512_cmp_ps_mask(m[c], _mm512_setzero_ps(), _CMP_GT_OQ);
    inv[c] = _mm512_maskz_div_ps(live, _mm512_set1_ps(127.0f), m[c]);
    _mm512_storeu_ps(vinv + 16 * c, inv[c]);
    _mm512_storeu_ps(sv + 16 * c, _mm512_div_ps(m[c], _mm512_set1_ps(127.0f)));
  }
  __m512i q[2][5];
  for (int j = 0; j < L.nkp; j += 2) {
    for (int t = 0; t < 2; ++t) {
      if (j + t < a.n_k) {
        load_row(a.v + size_t(j + t) * size_t(a.kv_stride), hd, v);
        for (int c = 0; c < nv; ++c) q[t][c] = _mm512_cvtps_epi32(_mm512_mul_ps(v[c], inv[c]));
      } else {
        for (int c = 0; c < nv; ++c) q[t][c] = _mm512_setzero_si512();
      }
    }
    int16_t* pair = vp + size_t(j / 2) * size_t(L.vd) * 2;
    for (int c = 0; c < nv; ++c) {
      const __m512i lo = _mm512_and_si512(q[0][c], _mm512_set1_epi32(0xffff));
      _mm512_store_si512(pair + 32 * c, _mm512_or_si512(lo, _mm512_slli_epi32(q[1][c], 16)));
    }
  }
}

// acc += the products as one instruction on the accumulator in place. As
// intrinsics GCC 12 copies each accumulator before every product (their
// non-destructive form) and spills the rest (gemm_int8_avx512.cpp has the
// same helpers for its tile).
__attribute__((always_inline)) inline void dpbusd(__m512i& acc, __m512i u8, __m512i s8) {
  __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(u8), "v"(s8));
}
__attribute__((always_inline)) inline void dpwssd(__m512i& acc, __m512i a, __m512i b) {
  __asm__("vpdpwssd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b));
}
__attribute__((always_inline)) inline void dpwssd(__m256i& acc, __m256i a, __m256i b) {
  __asm__("vpdpwssd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b));
}

inline int32_t load4(const int8_t* p) {
  int32_t v;
  __builtin_memcpy(&v, p, 4);
  return v;
}

// Scores of R query rows against NB 16-key blocks from key j0, in fp32 into
// s (row r at s + r·lds): (Σ (k + 128)·q − 128·Σ q) · sk · sq.
template <int R, int NB>
inline void score_blocks(const int8_t* qq, int hd, const int32_t* qbias, const float* sq, const uint8_t* kp,
                         const float* sk, int j0, float* s, size_t lds) {
  const int groups = hd / 4;
  __m512i acc[R][NB];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int b = 0; b < NB; ++b) acc[r][b] = _mm512_setzero_si512();
  const uint8_t* kb = kp + size_t(j0) * size_t(hd);
  for (int g = 0; g < groups; ++g) {
    __m512i kv[NB];
#pragma GCC unroll 8
    for (int b = 0; b < NB; ++b) kv[b] = _mm512_load_si512(kb + (size_t(b) * size_t(groups) + size_t(g)) * 64);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512i qb = _mm512_set1_epi32(load4(qq + size_t(r) * size_t(hd) + 4 * g));
#pragma GCC unroll 8
      for (int b = 0; b < NB; ++b) dpbusd(acc[r][b], kv[b], qb);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    const __m512i bias = _mm512_set1_epi32(qbias[r]);
    const __m512 rs = _mm512_set1_ps(sq[r]);
#pragma GCC unroll 8
    for (int b = 0; b < NB; ++b) {
      const __m512 scale = _mm512_mul_ps(_mm512_loadu_ps(sk + j0 + 16 * b), rs);
      const __m512 v = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[r][b], bias));
      _mm512_storeu_ps(s + size_t(r) * lds + j0 + 16 * b, _mm512_mul_ps(v, scale));
    }
  }
}

template <int R>
inline void scores_tile(const int8_t* qq, int hd, const int32_t* qbias, const float* sq, const uint8_t* kp,
                        const float* sk, int n_blocks, float* s, size_t lds) {
  int b = 0;
  for (; b + 4 <= n_blocks; b += 4) score_blocks<R, 4>(qq, hd, qbias, sq, kp, sk, 16 * b, s, lds);
  for (; b < n_blocks; ++b) score_blocks<R, 1>(qq, hd, qbias, sq, kp, sk, 16 * b, s, lds);
}

// e^x for x ≤ 0 (scores minus their row's max) with fused multiply-adds
// and vscalefps: half the operations of exp16, whose order of operations
// matches the portable code's bit for bit (this kernel has no portable twin
// to match: its P is quantised to 15 bits right after). Same constants; the
// clamp keeps e^x a normal float or exactly 0 below kExpMin.
inline __m512 exp16_fma(__m512 x) {
  using namespace fast_math;
  x = _mm512_max_ps(_mm512_set1_ps(kExpMin), x);
  const __m512 n =
      _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(kLog2e)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Hi), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Lo), r);
  __m512 p = _mm512_set1_ps(kExpPoly[0]);
  for (int i = 1; i < 7; ++i) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kExpPoly[i]));
  return _mm512_scalef_ps(p, n);
}

// One row's softmax over its `visible` keys: p = round(e^(s − max) · 32767)
// as int16 for keys [0, n) (zero from `visible` on); returns Σ e.
inline float softmax_row(const float* s, int visible, int n, int16_t* p) {
  __m512 m = _mm512_set1_ps(-3.0e38f);
  for (int j = 0; j < visible; j += 16) {
    const __mmask16 live = visible - j >= 16 ? __mmask16(0xffff) : __mmask16((1u << (visible - j)) - 1);
    m = _mm512_mask_max_ps(m, live, m, _mm512_loadu_ps(s + j));
  }
  const __m512 vmax = _mm512_set1_ps(_mm512_reduce_max_ps(m));
  const __m512 to_fixed = _mm512_set1_ps(kPScale);
  __m512 sum = _mm512_setzero_ps();
  for (int j = 0; j < n; j += 16) {
    const int left = visible - j;
    const __mmask16 live = left >= 16 ? __mmask16(0xffff) : left <= 0 ? __mmask16(0) : __mmask16((1u << left) - 1);
    const __m512 e = _mm512_maskz_mov_ps(live, exp16_fma(_mm512_sub_ps(_mm512_loadu_ps(s + j), vmax)));
    sum = _mm512_add_ps(sum, e);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p + j),
                        _mm512_cvtepi32_epi16(_mm512_cvtps_epi32(_mm512_mul_ps(e, to_fixed))));
  }
  return _mm512_reduce_add_ps(sum);
}

// o[r] += Σ_j p[r][j] · v_j over keys [0, n) (n even), int32 sums flushed
// to fp32 every kPvChunk keys. NV value vectors of 16 columns; with kHalf
// the last one holds 8 (head_dim 72) and runs on 256-bit registers, which
// on CPUs that split 512-bit operations in two is half the work.
template <int R, int NV, bool kHalf>
inline void pv_tile(const int16_t* p, size_t ldp, const int16_t* vp, int n, float* o) {
  constexpr int vd = NV * 16, nf = kHalf ? NV - 1 : NV;
  for (int j0 = 0; j0 < n; j0 += kPvChunk) {
    const int j1 = j0 + kPvChunk < n ? j0 + kPvChunk : n;
    __m512i acc[R][nf > 0 ? nf : 1];
    __m256i half[R];
    for (int r = 0; r < R; ++r) {
      for (int c = 0; c < nf; ++c) acc[r][c] = _mm512_setzero_si512();
      half[r] = _mm256_setzero_si256();
    }
    // (The p broadcasts first, then one value vector at a time: 25 live
    // registers. Loading all value vectors first made GCC spill.)
    for (int j = j0; j < j1; j += 2) {
      const int16_t* pair = vp + size_t(j / 2) * vd * 2;
      __m512i pb[R];
      for (int r = 0; r < R; ++r) {
        int32_t two;
        __builtin_memcpy(&two, p + size_t(r) * ldp + j, 4);
        pb[r] = _mm512_set1_epi32(two);
      }
      for (int c = 0; c < nf; ++c) {
        const __m512i vv = _mm512_load_si512(pair + 32 * c);
        for (int r = 0; r < R; ++r) dpwssd(acc[r][c], vv, pb[r]);
      }
      if constexpr (kHalf) {
        const __m256i vv = _mm256_load_si256(reinterpret_cast<const __m256i*>(pair + 32 * nf));
        for (int r = 0; r < R; ++r) dpwssd(half[r], vv, _mm512_castsi512_si256(pb[r]));
      }
    }
    for (int r = 0; r < R; ++r) {
      for (int c = 0; c < nf; ++c) {
        float* dst = o + size_t(r) * vd + 16 * c;
        _mm512_store_ps(dst, _mm512_add_ps(_mm512_load_ps(dst), _mm512_cvtepi32_ps(acc[r][c])));
      }
      if constexpr (kHalf) {
        float* dst = o + size_t(r) * vd + 16 * nf;
        _mm256_store_ps(dst, _mm256_add_ps(_mm256_load_ps(dst), _mm256_cvtepi32_ps(half[r])));
      }
    }
  }
}

template <int R, int NV, bool kHalf>
void run_tile(const Int8HeadAttention& a, const Int8HeadLayout& L, char* base, int i0) {
  const int hd = a.head_dim;
  const auto* qq = reinterpret_cast<const int8_t*>(base + L.qq) + size_t(i0) * size_t(hd);
  const auto* qbias = reinterpret_cast<const int32_t*>(base + L.qbias) + i0;
  const auto* sq = reinterpret_cast<const float*>(base + L.sq) + i0;
  const auto* kp = reinterpret_cast<const uint8_t*>(base + L.kp);
  const auto* sk = reinterpret_cast<const float*>(base + L.sk);
  const auto* vp = reinterpret_cast<const int16_t*>(base + L.vp);
  const auto* sv = reinterpret_cast<const float*>(base + L.sv);
  auto* s = reinterpret_cast<float*>(base + L.s);
  auto* p = reinterpret_cast<int16_t*>(base + L.p);
  auto* o = reinterpret_cast<float*>(base + L.o);
  const size_t lds = size_t(L.nkp);
  int visible = 1;
  for (int r = 0; r < R; ++r) visible = a.visible[i0 + r] > visible ? a.visible[i0 + r] : visible;
  const int n_blocks = (visible + 15) / 16;
  scores_tile<R>(qq, hd, qbias, sq, kp, sk, n_blocks, s, lds);
  float sum[R];
  for (int r = 0; r < R; ++r) sum[r] = softmax_row(s + size_t(r) * lds, a.visible[i0 + r], 16 * n_blocks, p + r * lds);
  for (int x = 0; x < R * L.vd; x += 16) _mm512_store_ps(o + x, _mm512_setzero_ps());
  pv_tile<R, NV, kHalf>(p, lds, vp, 16 * n_blocks, o);
  for (int r = 0; r < R; ++r) {
    const float inv = 1.0f / (sum[r] * kPScale);
    float* dst = a.out + size_t(i0 + r) * size_t(a.out_stride);
    const float* src = o + size_t(r) * size_t(L.vd);
    for (int d = 0; d < hd; ++d) dst[d] = src[d] * sv[d] * inv;
  }
}

template <int NV, bool kHalf = false>
void run_tiles(const Int8HeadAttention& a, const Int8HeadLayout& L, char* base) {
  int i = 0;
  for (; i + kTileRows <= a.n_q; i += kTileRows) run_tile<kTileRows, NV, kHalf>(a, L, base, i);
  for (; i < a.n_q; ++i) run_tile<1, NV, kHalf>(a, L, base, i);
}

}  // namespace

void int8_head_avx512(const Int8HeadAttention& a, void* scratch) {
  const Int8HeadLayout L(a.n_q, a.n_k, a.head_dim);
  char* base = static_cast<char*>(scratch);
  pack_queries(a, reinterpret_cast<int8_t*>(base + L.qq), reinterpret_cast<int32_t*>(base + L.qbias),
               reinterpret_cast<float*>(base + L.sq));
  pack_keys(a, L, reinterpret_cast<uint8_t*>(base + L.kp), reinterpret_cast<float*>(base + L.sk),
            reinterpret_cast<float*>(base + L.mean));
  pack_values(a, L, reinterpret_cast<int16_t*>(base + L.vp), reinterpret_cast<float*>(base + L.sv),
              reinterpret_cast<float*>(base + L.vinv));
  const bool half = a.head_dim % 16 != 0 && a.head_dim % 16 <= 8;
  if (half && L.vd == 80) return run_tiles<5, true>(a, L, base);  // the vision tower's 72
  switch (L.vd / 16) {
    case 1: return run_tiles<1>(a, L, base);
    case 2: return run_tiles<2>(a, L, base);
    case 3: return run_tiles<3>(a, L, base);
    case 4: return run_tiles<4>(a, L, base);
    default: return run_tiles<5>(a, L, base);
  }
}

}  // namespace md::gemv_detail

#include "tensor/x86/simd_target_end.h"
