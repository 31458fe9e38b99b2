// Unit tests of the fp32 kernels and the model pieces that are pure functions:
// attention masks, rotary, pooling, crop merge, LayerNorm, GELU, sampling.
#include <gtest/gtest.h>
#if MOONDREAM_HAVE_ONEDNN
#include <oneapi/dnnl/dnnl.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <numeric>
#include <random>
#include <tuple>
#include <vector>

#include "model/config.h"
#include "tensor/error.h"
#include "tensor/attention_int8.h"
#include "tensor/gemm.h"
#include "tensor/gemm_int8.h"
#include "tensor/gemv.h"
#include "tensor/gemv_impl.h"
#include "tensor/isa.h"
#include "tensor/quant.h"
#include "model/region.h"
#include "model/sampling.h"
#include "model/text.h"
#include "model/vision.h"
#include "tensor/buffer_pool.h"
#include "tensor/dtype.h"
#include "tensor/ops.h"
#include "tensor/parallel.h"

namespace md {
namespace {

std::vector<float> random_vec(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

TEST(Mask, PrefixIsBidirectionalAndTheRestCausal) {
  AttentionMask m;
  m.full = false;
  m.prefix = 730;
  m.q_pos0 = 0;
  EXPECT_TRUE(m.allowed(0, 729));    // first prefix position sees the whole prefix
  EXPECT_TRUE(m.allowed(100, 500));  // bidirectional inside the prefix
  EXPECT_FALSE(m.allowed(0, 730));   // but not beyond it
  EXPECT_FALSE(m.allowed(729, 730));
  m.q_pos0 = 730;  // prompt tokens after the prefix are causal
  EXPECT_TRUE(m.allowed(0, 0));
  EXPECT_TRUE(m.allowed(0, 730));
  EXPECT_FALSE(m.allowed(0, 731));
  EXPECT_TRUE(m.allowed(3, 733));
  EXPECT_FALSE(m.allowed(3, 734));
  AttentionMask full;
  EXPECT_TRUE(full.allowed(0, 10000));
}

TEST(Attention, MatchesNaiveWithGroupedHeadsAndMask) {
  AttentionShape s;
  s.n_q = 5;
  s.n_k = 9;
  s.n_heads = 4;
  s.n_kv_heads = 2;
  s.head_dim = 8;
  s.q_stride = 40;   // padded rows
  s.kv_stride = 20;  // padded rows
  const auto q = random_vec(size_t(s.n_q) * s.q_stride, 1);
  const auto k = random_vec(size_t(s.n_k) * s.kv_stride, 2);
  const auto v = random_vec(size_t(s.n_k) * s.kv_stride, 3);
  AttentionMask mask;
  mask.full = false;
  mask.q_pos0 = 4;
  mask.prefix = 6;  // queries at 4, 5 see the whole prefix 0..5; 6..8 causal
  std::vector<float> out(size_t(s.n_q) * s.n_heads * s.head_dim);
  attention(s, mask, q.data(), k.data(), v.data(), out.data());
  for (int h = 0; h < s.n_heads; ++h) {
    const int g = h / 2;
    for (int i = 0; i < s.n_q; ++i) {
      std::vector<double> w(size_t(s.n_k));
      double mx = -1e300;
      for (int j = 0; j < s.n_k; ++j) {
        double dot = 0;
        for (int d = 0; d < s.head_dim; ++d)
          dot += double(q[i * s.q_stride + h * s.head_dim + d]) * k[j * s.kv_stride + g * s.head_dim + d];
        w[j] = mask.allowed(i, j) ? dot / std::sqrt(double(s.head_dim)) : -1e300;
        mx = std::max(mx, w[j]);
      }
      double sum = 0;
      for (double& x : w) sum += (x = x <= -1e299 ? 0 : std::exp(x - mx));
      for (int d = 0; d < s.head_dim; ++d) {
        double acc = 0;
        for (int j = 0; j < s.n_k; ++j) acc += w[j] / sum * v[j * s.kv_stride + g * s.head_dim + d];
        EXPECT_NEAR(out[(i * s.n_heads + h) * s.head_dim + d], acc, 1e-5) << "h" << h << " i" << i;
      }
    }
  }
  // Query 0 sits at position 4 inside the prefix: it must see key 5 (prefix)
  // but not keys 6..8; query 2 (position 6) sees 0..6 only. Check the latter
  // by perturbing key 7's value: output of query 2 must not move.
  auto v2 = v;
  for (int d = 0; d < s.kv_stride; ++d) v2[7 * s.kv_stride + d] += 100.0f;
  std::vector<float> out2(out.size());
  attention(s, mask, q.data(), k.data(), v2.data(), out2.data());
  for (int c = 0; c < s.n_heads * s.head_dim; ++c) {
    EXPECT_EQ(out[2 * s.n_heads * s.head_dim + c], out2[2 * s.n_heads * s.head_dim + c]);
    EXPECT_EQ(out[0 * s.n_heads * s.head_dim + c], out2[0 * s.n_heads * s.head_dim + c]);
  }
}

TEST(Attention, KeysSplitIntoABaseAndOwnRowsGiveTheSameResult) {
  AttentionShape s;
  s.n_q = 3;
  s.n_k = 11;
  s.n_heads = 4;
  s.n_kv_heads = 4;
  s.head_dim = 8;
  s.q_stride = 32;
  s.kv_stride = 32;
  const auto q = random_vec(size_t(s.n_q) * s.q_stride, 4);
  const auto k = random_vec(size_t(s.n_k) * s.kv_stride, 5);
  const auto v = random_vec(size_t(s.n_k) * s.kv_stride, 6);
  AttentionMask mask;
  mask.full = false;
  mask.q_pos0 = 8;
  mask.prefix = 7;
  std::vector<float> whole(size_t(s.n_q) * s.n_heads * s.head_dim), split(whole.size());
  attention(s, mask, q.data(), k.data(), v.data(), whole.data());
  for (int base_rows : {0, 1, 7, 11}) {
    const size_t off = size_t(base_rows) * s.kv_stride;
    attention(s, mask, q.data(), KVRows{k.data(), v.data(), base_rows},
              KVRows{k.data() + off, v.data() + off, s.n_k - base_rows}, split.data());
    for (size_t i = 0; i < whole.size(); ++i) EXPECT_NEAR(split[i], whole[i], 1e-6) << "base " << base_rows;
  }
  EXPECT_THROW(attention(s, mask, q.data(), KVRows{k.data(), v.data(), 2}, KVRows{k.data(), v.data(), 2}, split.data()),
               Error);
}

// The element-wise kernels (softmax, GELU, LayerNorm, quantisation, ...)
// follow the ISA the GEMV dispatch picked, as MOONDREAM_ISA or a test forces
// it: each forced level runs its own copy (counted per thread) and the
// levels agree.
TEST(Isa, ElementwiseKernelsRunAtTheForcedLevel) {
  const int saved = md::num_threads();
  md::set_num_threads(1);  // the calls then run on this thread, where they are counted
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.0f, 3.0f);
  std::vector<float> x(1000);
  for (float& v : x) v = nd(rng);
  LayerNormWeights ln;
  ln.dim = 1000;
  std::vector<float> w(1000, 1.5f), b(1000, -0.25f);
  ln.w = w.data();
  ln.b = b.data();
  std::map<std::string, std::vector<float>> results;
  int levels_run = 0;
  const std::map<std::string, md::IsaLevel> level_of = {{"scalar", md::kIsaGeneric},      {"avx2", md::kIsaAvx2},
                                                        {"avx512", md::kIsaAvx512},       {"neon", md::kIsaNeon},
                                                        {"dotprod", md::kIsaNeonDotprod}, {"i8mm", md::kIsaNeonI8mm}};
  for (const char* isa : detail::gemv_isas()) {
    ASSERT_TRUE(detail::gemv_force_isa(isa));
    ++levels_run;
    const md::IsaLevel level = level_of.at(isa);
    EXPECT_EQ(md::active_isa_level(), level) << isa;
    uint64_t before[md::kNumIsaLevels];
    for (int l = 0; l < md::kNumIsaLevels; ++l) before[l] = md::elementwise_calls_on_this_thread(md::IsaLevel(l));
    std::vector<float> s = x, g = x, y(1000);
    md::softmax(s.data(), int(s.size()));
    md::gelu_tanh(g.data(), g.size());
    md::layer_norm(ln, x.data(), 1, y.data());
    for (int l = 0; l < md::kNumIsaLevels; ++l) {
      const uint64_t ran = md::elementwise_calls_on_this_thread(md::IsaLevel(l)) - before[l];
      if (l == level)
        EXPECT_EQ(ran, 3u) << isa << ": softmax, GELU and LayerNorm each once at this level";
      else
        EXPECT_EQ(ran, 0u) << isa << " ran code of level " << l;
    }
    std::vector<float> all = s;
    all.insert(all.end(), g.begin(), g.end());
    all.insert(all.end(), y.begin(), y.end());
    results[isa] = all;
  }
  detail::gemv_force_isa(nullptr);
  md::set_num_threads(saved);
  EXPECT_GE(levels_run, 2) << "every CPU this engine supports runs a vector level (AVX2 or NEON) and the generic one";
  const std::vector<float>& ref = results.at("scalar");
  for (const auto& [isa, r] : results)
    for (size_t i = 0; i < r.size(); ++i)
      ASSERT_NEAR(r[i], ref[i], 1e-5f * std::max(1.0f, std::fabs(ref[i]))) << isa << " element " << i;
}

#if defined(__x86_64__) && MOONDREAM_HAVE_ONEDNN
// MOONDREAM_ISA caps oneDNN's own dispatch too (the ctest runs ops_test with
// it unset, avx2 and generic).
TEST(Isa, MoondreamIsaCapsOneDnn) {
  const char* env = std::getenv("MOONDREAM_ISA");
  const std::string want = env ? env : "";
  const dnnl_cpu_isa_t isa = dnnl_get_effective_cpu_isa();
  if (want == "avx2") {
    EXPECT_EQ(isa, dnnl_cpu_isa_avx2);
    EXPECT_LE(int(md::active_isa_level()), int(md::kIsaAvx2));
  } else if (want == "generic" || want == "scalar") {
    EXPECT_EQ(isa, dnnl_cpu_isa_sse41);
    EXPECT_EQ(md::active_isa_level(), md::kIsaGeneric);
  } else if (std::string(detail::gemv_best_isa()) == "avx512") {
    EXPECT_NE(isa, dnnl_cpu_isa_avx2);
    EXPECT_NE(isa, dnnl_cpu_isa_sse41);
    EXPECT_EQ(md::active_isa_level(), md::kIsaAvx512);
  }
  if (!want.empty()) {
    // As on a CPU without VNNI: oneDNN's u8×s8 GEMM would saturate, so the
    // int8 weights' prompt products run as fp32 GEMMs on widened rows.
    EXPECT_FALSE(int8_gemm_exact());
    const int in = 256, out = 64, m = 40;
    const auto W = random_vec(size_t(in) * out, 91), x = random_vec(size_t(m) * in, 92);
    const QuantizedWeights q = quantize(W.data(), WeightFormat::F32, out, in, WeightFormat::Q8, in);
    Linear l;
    l.in = in;
    l.out = out;
    l.w = q.view();
    std::vector<float> y(size_t(m) * out);
    const uint64_t fp32 = detail::linear_path_count(LinearPath::Fp32Gemm),
                   int8 = detail::linear_path_count(LinearPath::Int8Gemm);
    linear(l, x.data(), m, y.data());
    EXPECT_EQ(detail::linear_path_count(LinearPath::Fp32Gemm) - fp32, 1u);
    EXPECT_EQ(detail::linear_path_count(LinearPath::Int8Gemm) - int8, 0u);
    std::vector<float> row(static_cast<size_t>(in));
    double worst = 0;
    for (int o = 0; o < out; ++o) {
      dequantize_row(l.w, o, row.data());
      for (int r = 0; r < m; ++r) {
        double acc = 0;
        for (int i = 0; i < in; ++i) acc += double(x[size_t(r) * in + i]) * row[size_t(i)];
        worst = std::max(worst, std::fabs(acc - y[size_t(r) * out + o]));
      }
    }
    EXPECT_LT(worst, 1e-3);
  }
}
#endif

// bf16 KV rows: decoding reads them in place (n_q <= kDirectAttentionRows),
// a prompt widens them first; both equal fp32 attention over the same values
// (the fp32 rows rounded to bf16), with grouped heads, a mask and a base.
TEST(Attention, Bf16RowsEqualFp32AttentionOverTheRoundedValues) {
  // Every ISA this CPU runs: AVX-512 decodes on its own kernels (checked to
  // be the ones that run), the others on the portable loops.
  for (const char* isa : detail::gemv_isas()) {
    ASSERT_TRUE(detail::gemv_force_isa(isa));
    const gemv_detail::AttentionKernels* ak = gemv_detail::attention_kernels();
    const std::string name = isa;
    const std::string kernels = name == "avx512"                                        ? "avx512"
                                : name == "neon" || name == "dotprod" || name == "i8mm" ? "neon"
                                                                                        : "";
    EXPECT_EQ(ak != nullptr, !kernels.empty()) << isa;
    if (ak) {
      EXPECT_EQ(ak->name, kernels);
    }
    // n_q = 1, long: decoding's key-split path with several blocks per
    // thread, a block boundary inside the base rows and one across them;
    // 14 and 32+: the query-lanes path (a partial and full lane groups).
    const std::pair<int, int> cases[] = {{1, 41},
                                         {1, 301},
                                         {3, 43},
                                         {14, 300},
                                         {kDirectAttentionRows, kDirectAttentionRows + 40},
                                         {kDirectAttentionRows + 5, kDirectAttentionRows + 45}};
    for (const auto& [n_q, n_k] : cases) {
      AttentionShape s;
      s.n_q = n_q;
      s.n_k = n_k;
      s.n_heads = 8;
      s.n_kv_heads = 2;
      s.head_dim = 64;
      s.q_stride = 3 * 512;
      s.kv_stride = 128;
      const auto q = random_vec(size_t(s.n_q) * s.q_stride, 14);
      auto k = random_vec(size_t(s.n_k) * s.kv_stride, 15);
      auto v = random_vec(size_t(s.n_k) * s.kv_stride, 16);
      std::vector<uint16_t> k16(k.size()), v16(v.size());
      for (size_t i = 0; i < k.size(); ++i) {
        k16[i] = f32_to_bf16(k[i]);
        v16[i] = f32_to_bf16(v[i]);
        k[i] = bf16_to_f32(k16[i]);
        v[i] = bf16_to_f32(v16[i]);
      }
      AttentionMask mask;
      mask.full = false;
      mask.q_pos0 = s.n_k - s.n_q;
      mask.prefix = 20;
      std::vector<float> ref(size_t(s.n_q) * s.n_heads * s.head_dim), got(ref.size());
      attention(s, mask, q.data(), k.data(), v.data(), ref.data());
      for (int base_rows : {0, 17, 211}) {
        if (base_rows >= s.n_k) continue;
        const size_t off = size_t(base_rows) * s.kv_stride;
        std::fill(got.begin(), got.end(), -1.0f);
        const uint64_t split_before = detail::attention_path_count(AttentionPath::DecodeSplit);
        const uint64_t lanes_before = detail::attention_path_count(AttentionPath::QueryLanes);
        attention(s, mask, q.data(), KVRows{k16.data(), v16.data(), base_rows, KVFormat::BF16},
                  KVRows{k16.data() + off, v16.data() + off, s.n_k - base_rows, KVFormat::BF16}, got.data());
        EXPECT_EQ(detail::attention_path_count(AttentionPath::DecodeSplit) - split_before, n_q == 1 ? 1u : 0u)
            << isa << " n_q " << n_q;
        EXPECT_EQ(detail::attention_path_count(AttentionPath::QueryLanes) - lanes_before,
                  n_q >= 4 && n_q <= kDirectAttentionRows ? 1u : 0u)
            << isa << " n_q " << n_q;
        float worst = 0;
        for (size_t i = 0; i < ref.size(); ++i) worst = std::max(worst, std::abs(got[i] - ref[i]));
        EXPECT_LE(worst, 2e-6f) << isa << " n_q " << n_q << " base " << base_rows;
      }
    }
  }
  detail::gemv_force_isa(nullptr);
  // base and own rows must share a format.
  std::vector<uint16_t> r16(64 * 4);
  std::vector<float> r32(64 * 4), q(64), out(64);
  AttentionShape s;
  s.n_q = 1;
  s.n_k = 4;
  s.n_heads = s.n_kv_heads = 1;
  s.head_dim = 64;
  s.q_stride = s.kv_stride = 64;
  EXPECT_THROW(attention(s, AttentionMask{}, q.data(), KVRows{r32.data(), r32.data(), 2, KVFormat::F32},
                         KVRows{r16.data(), r16.data(), 2, KVFormat::BF16}, out.data()),
               Error);
}

// KV caches are head-major (KVRows' row and head strides): each path —
// decoding's key split, a few query rows, the query lanes, a prompt's
// widening to fp32, the fp32 GEMMs and the int8 prompt attention — gives
// what it gives on the same keys in position-major rows, with the key rows
// split into base and own ranges each with room to spare (as a cache with
// capacity left).
TEST(Attention, HeadMajorRowsGiveTheSameResultAsPositionMajor) {
  struct Case {
    int n_q, n_k, base;
    KVFormat format;
    bool int8;
  };
  const Case cases[] = {{1, 301, 211, KVFormat::BF16, false}, {1, 77, 0, KVFormat::BF16, false},
                        {3, 43, 17, KVFormat::BF16, false},   {14, 300, 211, KVFormat::BF16, false},
                        {40, 90, 17, KVFormat::BF16, false},  {1, 45, 20, KVFormat::F32, false},
                        {40, 90, 17, KVFormat::F32, false},   {96, 96, 0, KVFormat::F32, true}};
  const int n_heads = 8, n_kv = 2, hd = 64, spare = 5;
  for (const Case& c : cases) {
    AttentionShape s;
    s.n_q = c.n_q;
    s.n_k = c.n_k;
    s.n_heads = n_heads;
    s.n_kv_heads = n_kv;
    s.head_dim = hd;
    s.q_stride = 3 * n_heads * hd;
    s.kv_stride = n_kv * hd;
    s.int8_scores = c.int8;
    const auto q = random_vec(size_t(s.n_q) * s.q_stride, 24);
    auto k = random_vec(size_t(s.n_k) * s.kv_stride, 25);
    auto v = random_vec(size_t(s.n_k) * s.kv_stride, 26);
    const bool bf16 = c.format == KVFormat::BF16;
    const size_t elem = bf16 ? 2 : 4;
    // Position-major rows, and the same values head-major in two ranges.
    std::vector<uint8_t> k_pos(k.size() * elem), v_pos(v.size() * elem);
    const int rows[2] = {c.base, c.n_k - c.base}, cap[2] = {c.base + spare, c.n_k - c.base + spare};
    std::vector<uint8_t> k_head[2], v_head[2];
    for (int r = 0; r < 2; ++r) {
      k_head[r].assign(size_t(n_kv) * size_t(cap[r]) * hd * elem, 0);
      v_head[r].assign(k_head[r].size(), 0);
    }
    auto put = [&](const float* src, uint8_t* dst) {
      if (bf16) {
        const uint16_t b = f32_to_bf16(*src);
        std::memcpy(dst, &b, 2);
      } else {
        std::memcpy(dst, src, 4);
      }
    };
    for (int j = 0; j < s.n_k; ++j)
      for (int g = 0; g < n_kv; ++g)
        for (int d = 0; d < hd; ++d) {
          const size_t at = size_t(j) * s.kv_stride + size_t(g) * hd + size_t(d);
          const int r = j < c.base ? 0 : 1, jr = j < c.base ? j : j - c.base;
          const size_t h_at = (size_t(g) * size_t(cap[r]) + size_t(jr)) * hd + size_t(d);
          put(&k[at], k_pos.data() + at * elem);
          put(&v[at], v_pos.data() + at * elem);
          put(&k[at], k_head[r].data() + h_at * elem);
          put(&v[at], v_head[r].data() + h_at * elem);
        }
    AttentionMask mask;
    mask.full = false;
    mask.q_pos0 = s.n_k - s.n_q;
    mask.prefix = 20;
    std::vector<float> ref(size_t(s.n_q) * n_heads * hd), got(ref.size(), -1.0f);
    const size_t off = size_t(c.base) * s.kv_stride * elem;
    attention(s, mask, q.data(), KVRows{k_pos.data(), v_pos.data(), c.base, c.format},
              KVRows{k_pos.data() + off, v_pos.data() + off, c.n_k - c.base, c.format}, ref.data());
    uint64_t before[3];
    for (int p = 0; p < 3; ++p) before[p] = detail::attention_path_count(AttentionPath(p));
    KVRows head[2];
    for (int r = 0; r < 2; ++r)
      head[r] = KVRows{k_head[r].data(), v_head[r].data(), rows[r], c.format, hd, size_t(cap[r]) * hd};
    attention(s, mask, q.data(), head[0], head[1], got.data());
    const std::string what = "n_q " + std::to_string(c.n_q) + " base " + std::to_string(c.base) + " " +
                             kv_format_name(c.format) + (c.int8 ? " int8" : "");
    const bool direct = bf16 && c.n_q <= kDirectAttentionRows;
    EXPECT_EQ(detail::attention_path_count(AttentionPath::DecodeSplit) - before[0], direct && c.n_q == 1 ? 1u : 0u)
        << what;
    EXPECT_EQ(detail::attention_path_count(AttentionPath::QueryLanes) - before[1], direct && c.n_q >= 4 ? 1u : 0u)
        << what;
    if (c.int8 && int8_gemm_exact() && int8_head_kernel()) {
      EXPECT_EQ(detail::attention_path_count(AttentionPath::Int8Fused) - before[2], 1u) << what;
    }
    for (size_t i = 0; i < ref.size(); ++i) ASSERT_NEAR(got[i], ref[i], 1e-6f) << what << " element " << i;
  }
}

// The decode block kernel is one step of an online softmax: two steps over
// consecutive blocks (the second with a larger maximum, so it rescales the
// first's sums, and with a smaller one, so it does not) leave m, l and acc
// equal to the direct computation over both blocks' keys.
TEST(KvInt8, RowsQuantiseSymmetricallyToTheirMaximum) {
  const auto x = random_vec(64, 31);
  std::vector<int8_t> q(64);
  float scale = -1;
  quantize_kv_row(x.data(), 64, q.data(), &scale);
  float amax = 0;
  for (float v : x) amax = std::max(amax, std::abs(v));
  EXPECT_FLOAT_EQ(scale, amax / 127.0f);
  int at_max = 0;
  for (int i = 0; i < 64; ++i) {
    EXPECT_LE(std::abs(float(q[size_t(i)]) * scale - x[size_t(i)]), 0.5f * scale * 1.0001f) << i;
    at_max += std::abs(q[size_t(i)]) == 127;
  }
  EXPECT_GE(at_max, 1);
  const std::vector<float> zero(64, 0.0f);
  quantize_kv_row(zero.data(), 64, q.data(), &scale);
  EXPECT_EQ(scale, 0.0f);
  for (int8_t v : q) EXPECT_EQ(v, 0);
  EXPECT_EQ(kv_head_row_bytes(KVFormat::I8, 64), 68u);
  KVFormat f;
  ASSERT_TRUE(parse_kv_format("int8", &f));
  EXPECT_EQ(f, KVFormat::I8);
  EXPECT_STREQ(kv_format_name(f), "int8");
}

// int8 KV rows (head-major, in a base and an own range with room to spare,
// as caches hold them) give fp32 attention over their dequantised values,
// q·scale, on every path: decoding's key split (the ISA's int8 block kernel
// where it has one, else the portable loops), a few queries in the lanes,
// and a prompt widened to fp32.
TEST(Attention, Int8RowsEqualFp32AttentionOverTheDequantisedValues) {
  for (const char* isa : detail::gemv_isas()) {
    ASSERT_TRUE(detail::gemv_force_isa(isa));
    const gemv_detail::AttentionKernels* ak = gemv_detail::attention_kernels();
    const bool kernel = ak && ak->i8_block;
    if (std::string(isa) == "avx512") {
      EXPECT_TRUE(kernel) << "AVX-512 has an int8 KV block kernel";
    }
    const std::pair<int, int> cases[] = {{1, 41}, {1, 301}, {2, 43}, {14, 300}, {kDirectAttentionRows, 90}, {37, 90}};
    const int n_heads = 8, n_kv = 2, hd = 64, spare = 7;
    for (const auto& [n_q, n_k] : cases)
      for (int base : {0, 17, 211}) {
        if (base >= n_k) continue;
        AttentionShape s;
        s.n_q = n_q;
        s.n_k = n_k;
        s.n_heads = n_heads;
        s.n_kv_heads = n_kv;
        s.head_dim = hd;
        s.q_stride = 3 * n_heads * hd;
        s.kv_stride = n_kv * hd;
        const auto q = random_vec(size_t(n_q) * s.q_stride, 34);
        const auto k = random_vec(size_t(n_k) * s.kv_stride, 35);
        const auto v = random_vec(size_t(n_k) * s.kv_stride, 36, 2.0f);
        const int rows[2] = {base, n_k - base}, cap[2] = {base + spare, n_k - base + spare};
        std::vector<int8_t> k8[2], v8[2];
        std::vector<float> ks[2], vs[2];
        for (int r = 0; r < 2; ++r) {
          k8[r].assign(size_t(n_kv) * size_t(cap[r]) * hd, 0);
          v8[r].assign(k8[r].size(), 0);
          ks[r].assign(size_t(n_kv) * size_t(cap[r]), 0.0f);
          vs[r].assign(ks[r].size(), 0.0f);
        }
        std::vector<float> kd(k.size()), vd(v.size());  // dequantised, position-major
        for (int j = 0; j < n_k; ++j)
          for (int g = 0; g < n_kv; ++g) {
            const int r = j < base ? 0 : 1, jr = j < base ? j : j - base;
            const size_t at = size_t(j) * s.kv_stride + size_t(g) * hd;
            const size_t h_at = size_t(g) * size_t(cap[r]) + size_t(jr);
            quantize_kv_row(&k[at], hd, &k8[r][h_at * hd], &ks[r][h_at]);
            quantize_kv_row(&v[at], hd, &v8[r][h_at * hd], &vs[r][h_at]);
            for (int d = 0; d < hd; ++d) {
              kd[at + size_t(d)] = float(k8[r][h_at * hd + size_t(d)]) * ks[r][h_at];
              vd[at + size_t(d)] = float(v8[r][h_at * hd + size_t(d)]) * vs[r][h_at];
            }
          }
        AttentionMask mask;
        mask.full = false;
        mask.q_pos0 = n_k - n_q;
        mask.prefix = 20;
        std::vector<float> ref(size_t(n_q) * n_heads * hd), got(ref.size(), -1.0f);
        attention(s, mask, q.data(), kd.data(), vd.data(), ref.data());
        KVRows head[2];
        for (int r = 0; r < 2; ++r) {
          head[r] = KVRows{k8[r].data(), v8[r].data(), rows[r], KVFormat::I8, hd, size_t(cap[r]) * hd};
          head[r].k_scale = ks[r].data();
          head[r].v_scale = vs[r].data();
          head[r].scale_head_stride = size_t(cap[r]);
        }
        uint64_t before[4];
        for (int p = 0; p < 4; ++p) before[p] = detail::attention_path_count(AttentionPath(p));
        attention(s, mask, q.data(), head[0], head[1], got.data());
        const std::string what = std::string(isa) + " n_q " + std::to_string(n_q) + " n_k " + std::to_string(n_k) +
                                 " base " + std::to_string(base);
        auto ran = [&](AttentionPath p) { return detail::attention_path_count(p) - before[int(p)]; };
        EXPECT_EQ(ran(AttentionPath::DecodeSplit), n_q == 1 ? 1u : 0u) << what;
        EXPECT_EQ(ran(AttentionPath::Int8KvKernel), n_q == 1 && kernel ? 1u : 0u) << what;
        EXPECT_EQ(ran(AttentionPath::QueryLanes), n_q > 1 && n_q <= kDirectAttentionRows ? 1u : 0u) << what;
        float worst = 0;
        for (size_t i = 0; i < ref.size(); ++i) worst = std::max(worst, std::abs(got[i] - ref[i]));
        EXPECT_LE(worst, 1e-5f) << what;
      }
  }
  detail::gemv_force_isa(nullptr);
  // int8 rows need their scales.
  std::vector<int8_t> r8(64 * 4);
  std::vector<float> q(64), out(64);
  AttentionShape s;
  s.n_q = 1;
  s.n_k = 4;
  s.n_heads = s.n_kv_heads = 1;
  s.head_dim = 64;
  s.q_stride = s.kv_stride = 64;
  EXPECT_THROW(
      attention(s, AttentionMask{}, q.data(), KVRows{}, KVRows{r8.data(), r8.data(), 4, KVFormat::I8}, out.data()),
      Error);
}

// A batched decode step's attention: rows about one image (the same base
// rows) read them once, and every row equals attention() of it alone, bit
// for bit — on every ISA, for bf16 and int8 rows.
TEST(Attention, DecodeRowsSharingABaseEqualEachRowAlone) {
  const int n_heads = 4, n_kv = 2, hd = 64, base_rows = 150, cap = 200;
  AttentionShape s;
  s.n_heads = n_heads;
  s.n_kv_heads = n_kv;
  s.head_dim = hd;
  s.q_stride = 3 * n_heads * hd;
  s.kv_stride = n_kv * hd;
  for (const char* isa : detail::gemv_isas()) {
    ASSERT_TRUE(detail::gemv_force_isa(isa));
    for (KVFormat format : {KVFormat::BF16, KVFormat::I8}) {
      const size_t elem = kv_element_bytes(format);
      // Two bases (image prefixes) and four sequences' own rows: rows 0, 1
      // and 3 extend base 0, row 2 base 1.
      struct Range {
        std::vector<uint8_t> k, v;
        std::vector<float> ks, vs;
      };
      auto make = [&](uint32_t seed) {
        Range r;
        const auto kf = random_vec(size_t(n_kv) * cap * hd, seed), vf = random_vec(size_t(n_kv) * cap * hd, seed + 1);
        r.k.resize(kf.size() * elem);
        r.v.resize(vf.size() * elem);
        r.ks.resize(size_t(n_kv) * cap);
        r.vs.resize(size_t(n_kv) * cap);
        for (size_t row = 0; row < size_t(n_kv) * cap; ++row)
          if (format == KVFormat::I8) {
            quantize_kv_row(&kf[row * hd], hd, reinterpret_cast<int8_t*>(r.k.data()) + row * hd, &r.ks[row]);
            quantize_kv_row(&vf[row * hd], hd, reinterpret_cast<int8_t*>(r.v.data()) + row * hd, &r.vs[row]);
          } else {
            for (int d = 0; d < hd; ++d) {
              reinterpret_cast<uint16_t*>(r.k.data())[row * hd + size_t(d)] = f32_to_bf16(kf[row * hd + size_t(d)]);
              reinterpret_cast<uint16_t*>(r.v.data())[row * hd + size_t(d)] = f32_to_bf16(vf[row * hd + size_t(d)]);
            }
          }
        return r;
      };
      auto rows_of = [&](const Range& r, int n) {
        KVRows out{r.k.data(), r.v.data(), n, format, hd, size_t(cap) * hd};
        if (format == KVFormat::I8) {
          out.k_scale = r.ks.data();
          out.v_scale = r.vs.data();
          out.scale_head_stride = size_t(cap);
        }
        return out;
      };
      const Range b0 = make(51), b1 = make(53), o0 = make(55), o1 = make(57), o2 = make(59), o3 = make(61);
      const KVRows base[4] = {rows_of(b0, base_rows), rows_of(b0, base_rows), rows_of(b1, base_rows - 40),
                              rows_of(b0, base_rows)};
      const KVRows own[4] = {rows_of(o0, 7), rows_of(o1, 33), rows_of(o2, 1), rows_of(o3, 120)};
      const auto q = random_vec(size_t(4) * s.q_stride, 63);
      const size_t out_stride = size_t(n_heads) * hd;
      std::vector<float> together(4 * out_stride, -1.0f);
      const uint64_t shared0 = detail::attention_path_count(AttentionPath::SharedBaseRows);
      const uint64_t multi0 = detail::attention_path_count(AttentionPath::MultiQueryBlock);
      decode_attention(s, 4, q.data(), base, own, together.data());
      EXPECT_EQ(detail::attention_path_count(AttentionPath::SharedBaseRows) - shared0, 2u) << isa;
      // The ISA's several-queries kernel ran over base 0's slices, where it has one.
      const gemv_detail::AttentionKernels* ak = gemv_detail::attention_kernels();
      const bool multi = ak && ak->block_rows;
      EXPECT_EQ(detail::attention_path_count(AttentionPath::MultiQueryBlock) > multi0, multi) << isa;
      for (int i = 0; i < 4; ++i) {
        AttentionShape one = s;
        one.n_q = 1;
        one.n_k = base[i].rows + own[i].rows;
        AttentionMask mask;
        mask.full = false;
        mask.q_pos0 = one.n_k - 1;
        mask.prefix = base[i].rows;
        std::vector<float> alone(out_stride, -2.0f);
        attention(one, mask, q.data() + size_t(i) * s.q_stride, base[i], own[i], alone.data());
        for (size_t d = 0; d < out_stride; ++d)
          ASSERT_EQ(together[size_t(i) * out_stride + d], alone[d])
              << isa << " " << kv_format_name(format) << " row " << i << " element " << d;
      }
    }
  }
  detail::gemv_force_isa(nullptr);
}

TEST(Attention, Bf16BlockKernelIsOneOnlineSoftmaxStep) {
  const char* with_kernels = nullptr;
  for (const char* isa : detail::gemv_isas())
    if (detail::gemv_force_isa(isa) && gemv_detail::attention_kernels()) with_kernels = isa;
  if (!with_kernels) GTEST_SKIP() << "this CPU has no attention kernels of its own (the portable loops run)";
  ASSERT_TRUE(detail::gemv_force_isa(with_kernels));
  const gemv_detail::AttentionKernels* ak = gemv_detail::attention_kernels();
  ASSERT_NE(ak, nullptr);
  ASSERT_EQ(ak->head_dim, 64);
  const int hd = 64, stride = 200, max_n = ak->max_block;
  std::vector<uint16_t> kv(size_t(2) * 2 * max_n * stride);
  for (int n1 : {1, 5, 16, 17, max_n})
    for (float second_scale : {4.0f, 0.25f}) {
      const int n2 = max_n - n1 / 2;
      const auto q = random_vec(hd, 21);
      const auto raw = random_vec(kv.size(), 22);
      for (size_t i = 0; i < kv.size(); ++i) kv[i] = f32_to_bf16(raw[i] * (i >= kv.size() / 2 ? second_scale : 1.0f));
      // Block b: keys at kv + b·(2·max_n·stride), values max_n rows further.
      auto key = [&](int b, int j) { return kv.data() + size_t(b) * 2 * max_n * stride + size_t(j) * stride; };
      auto val = [&](int b, int j) { return key(b, j) + size_t(max_n) * stride; };
      const float scale = 0.125f;
      std::vector<float> ql(hd), acc(hd, 0.0f), out(hd);
      ak->to_lanes(q.data(), ql.data());
      float m = -INFINITY, l = 0.0f;
      const gemv_detail::RowPrefetch pf{reinterpret_cast<const char*>(key(1, 0)),
                                        reinterpret_cast<const char*>(val(1, 0)), 3, size_t(stride) * 2, 128};
      ak->block(ql.data(), key(0, 0), val(0, 0), stride, n1, scale, &m, &l, acc.data(), pf);
      ak->block(ql.data(), key(1, 0), val(1, 0), stride, n2, scale, &m, &l, acc.data(), gemv_detail::RowPrefetch{});
      ak->from_lanes(acc.data(), out.data());
      // Direct: scores of both blocks, their max, Σ e^(s−M) and Σ e^(s−M)·v.
      std::vector<double> sc;
      std::vector<const uint16_t*> vs;
      for (int b = 0; b < 2; ++b)
        for (int j = 0; j < (b ? n2 : n1); ++j) {
          double d = 0;
          for (int c = 0; c < hd; ++c) d += double(q[c]) * bf16_to_f32(key(b, j)[c]);
          sc.push_back(d * scale);
          vs.push_back(val(b, j));
        }
      const double M = *std::max_element(sc.begin(), sc.end());
      double L = 0;
      std::vector<double> o(hd, 0.0);
      for (size_t j = 0; j < sc.size(); ++j) {
        const double p = std::exp(sc[j] - M);
        L += p;
        for (int c = 0; c < hd; ++c) o[c] += p * bf16_to_f32(vs[j][c]);
      }
      EXPECT_NEAR(m, M, 1e-4 * std::max(1.0, std::abs(M))) << n1 << " " << second_scale;
      EXPECT_NEAR(l, L, 1e-4 * L) << n1 << " " << second_scale;
      for (int c = 0; c < hd; ++c) EXPECT_NEAR(out[c], o[c], 1e-4 * L) << n1 << " " << second_scale << " col " << c;
    }
  detail::gemv_force_isa(nullptr);
}

TEST(Rotary, RotatesPairsIAndIPlus16ByPositionTimesFrequency) {
  RotaryTable rt(32, 2048);
  for (int p : {0, 1, 7, 730, 2047}) {
    auto x = random_vec(64, 10 + p);
    auto y = x;
    rt.apply(y.data(), p);
    for (int i = 0; i < 16; ++i) {
      const double f = 1.0 / std::pow(10000.0, 2.0 * i / 32.0);
      const double a = double(p) * f;
      const double r0 = x[i] * std::cos(a) - x[i + 16] * std::sin(a);
      const double r1 = x[i] * std::sin(a) + x[i + 16] * std::cos(a);
      // fp32 angles at position 2047 carry ~1e-4 rad of rounding, as in PyTorch.
      EXPECT_NEAR(y[i], r0, 2e-3 * (1 + std::abs(r0))) << "p" << p << " i" << i;
      EXPECT_NEAR(y[i + 16], r1, 2e-3 * (1 + std::abs(r1)));
    }
    for (int i = 32; i < 64; ++i) EXPECT_EQ(y[i], x[i]);  // dims 32..63 pass through
  }
  auto x = random_vec(64, 99);
  auto y = x;
  rt.apply(y.data(), 0);
  for (int i = 0; i < 64; ++i) EXPECT_FLOAT_EQ(y[i], x[i]);  // position 0 is the identity
}

TEST(Pooling, AdaptiveAveragePoolFollowsPyTorchBins) {
  // 1-channel 5×3 → 2×2: rows [0,3) and [2,5), cols [0,2) and [1,3).
  std::vector<float> in(15);
  for (int i = 0; i < 15; ++i) in[i] = float(i);
  std::vector<float> out(4);
  adaptive_avg_pool(in.data(), 5, 3, 1, 2, 2, out.data());
  auto avg = [&](int r0, int r1, int c0, int c1) {
    double s = 0;
    for (int r = r0; r < r1; ++r)
      for (int c = c0; c < c1; ++c) s += in[r * 3 + c];
    return s / ((r1 - r0) * (c1 - c0));
  };
  EXPECT_FLOAT_EQ(out[0], avg(0, 3, 0, 2));
  EXPECT_FLOAT_EQ(out[1], avg(0, 3, 1, 3));
  EXPECT_FLOAT_EQ(out[2], avg(2, 5, 0, 2));
  EXPECT_FLOAT_EQ(out[3], avg(2, 5, 1, 3));
  // Identity size: a copy.
  std::vector<float> same(15);
  adaptive_avg_pool(in.data(), 5, 3, 1, 5, 3, same.data());
  EXPECT_EQ(same, in);
  // 46×65 → 27×27 (a 2×3 tiling): every output cell averages the PyTorch bin.
  const int h = 46, w = 65, c = 2;
  auto big = random_vec(size_t(h) * w * c, 5);
  std::vector<float> o(27 * 27 * c);
  adaptive_avg_pool(big.data(), h, w, c, 27, 27, o.data());
  for (int oy = 0; oy < 27; ++oy)
    for (int ox = 0; ox < 27; ++ox) {
      const int y0 = int(std::floor(oy * h / 27.0)), y1 = int(std::ceil((oy + 1) * h / 27.0));
      const int x0 = int(std::floor(ox * w / 27.0)), x1 = int(std::ceil((ox + 1) * w / 27.0));
      for (int k = 0; k < c; ++k) {
        double s = 0;
        for (int y = y0; y < y1; ++y)
          for (int x = x0; x < x1; ++x) s += big[(y * w + x) * c + k];
        EXPECT_NEAR(o[(oy * 27 + ox) * c + k], s / ((y1 - y0) * (x1 - x0)), 1e-5);
      }
    }
}

TEST(CropMerge, KeepsInteriorOfEachTileAndOuterMargins) {
  VisionConfig cfg;
  cfg.enc_dim = 1;
  const int grid = 27, m = 4, win = 19;
  for (Tiling t : {Tiling{1, 1}, Tiling{2, 3}, Tiling{3, 2}, Tiling{4, 3}}) {
    // Each tile's feature at (r, c) = tile index * 10000 + r * 100 + c.
    std::vector<float> local(size_t(t.rows) * t.cols * grid * grid);
    for (int i = 0; i < t.rows * t.cols; ++i)
      for (int r = 0; r < grid; ++r)
        for (int c = 0; c < grid; ++c) local[(size_t(i) * grid + r) * grid + c] = float(i * 10000 + r * 100 + c);
    const int out_h = t.rows * win + 2 * m, out_w = t.cols * win + 2 * m;
    // Expected full grid: the owner of output row y is the tile whose kept
    // range contains it (docs/MODEL.md section 6.2).
    std::vector<float> full(size_t(out_h) * out_w, -1);
    for (int i = 0; i < t.rows; ++i)
      for (int j = 0; j < t.cols; ++j) {
        const int r0 = i == 0 ? 0 : m, r1 = i == t.rows - 1 ? grid : grid - m;
        const int c0 = j == 0 ? 0 : m, c1 = j == t.cols - 1 ? grid : grid - m;
        for (int r = r0; r < r1; ++r)
          for (int c = c0; c < c1; ++c) {
            float& cell = full[size_t(i * win + r) * out_w + j * win + c];
            EXPECT_EQ(cell, -1) << "pieces overlap";
            cell = float((i * t.cols + j) * 10000 + r * 100 + c);
          }
      }
    for (float v : full) ASSERT_NE(v, -1) << "pieces leave a hole";
    std::vector<float> pooled_expected(grid * grid);
    adaptive_avg_pool(full.data(), out_h, out_w, 1, grid, grid, pooled_expected.data());
    const PooledVector<float> pooled = merge_local_features(cfg, local.data(), t);
    ASSERT_EQ(pooled.size(), pooled_expected.size());
    for (size_t k = 0; k < pooled.size(); ++k) EXPECT_FLOAT_EQ(pooled[k], pooled_expected[k]);
    if (t.rows == 1 && t.cols == 1) {
      for (size_t k = 0; k < pooled.size(); ++k) EXPECT_EQ(pooled[k], local[k]);  // 1×1: identity
    }
  }
}

TEST(LayerNormGelu, MatchDefinitions) {
  const int d = 37, m = 3;
  auto x = random_vec(size_t(d) * m, 7, 3.0f);
  auto g = random_vec(d, 8), b = random_vec(d, 9);
  std::vector<float> y(x.size());
  layer_norm({d, g.data(), b.data()}, x.data(), m, y.data());
  for (int r = 0; r < m; ++r) {
    double mean = 0, var = 0;
    for (int i = 0; i < d; ++i) mean += x[r * d + i];
    mean /= d;
    for (int i = 0; i < d; ++i) var += (x[r * d + i] - mean) * (x[r * d + i] - mean);
    var /= d;
    for (int i = 0; i < d; ++i)
      EXPECT_NEAR(y[r * d + i], (x[r * d + i] - mean) / std::sqrt(var + 1e-5) * g[i] + b[i], 1e-5);
  }
  std::vector<float> v = {-5.0f, -1.0f, -0.1f, 0.0f, 0.5f, 2.0f, 8.0f};
  auto w = v;
  gelu_tanh(w.data(), w.size());
  for (size_t i = 0; i < v.size(); ++i) {
    const double t = v[i];
    EXPECT_NEAR(w[i], 0.5 * t * (1 + std::tanh(std::sqrt(2 / M_PI) * (t + 0.044715 * t * t * t))), 1e-6);
  }
}

TEST(Linear, MatchesNaiveForOneAndManyRows) {
  const int in = 33, out = 17;
  auto W = random_vec(size_t(in) * out, 11), B = random_vec(out, 12);
  const Linear l = make_linear(in, out, W.data(), B.data());
  for (int m : {1, 4}) {
    auto x = random_vec(size_t(m) * in, 13 + m);
    std::vector<float> y(size_t(m) * out);
    linear(l, x.data(), m, y.data());
    for (int r = 0; r < m; ++r)
      for (int o = 0; o < out; ++o) {
        double acc = B[o];
        for (int i = 0; i < in; ++i) acc += double(x[r * in + i]) * W[o * in + i];
        EXPECT_NEAR(y[r * out + o], acc, 1e-4);
      }
  }
}

// A Linear over per-row Q8 weights (kept alive by `q`), and the same
// weights dequantised to fp32 for the naive reference.
Linear q8_linear(const QuantizedWeights& q, const float* bias, std::vector<float>* dequantised) {
  Linear l;
  l.in = q.cols;
  l.out = q.rows;
  l.w = q.view();
  l.b = bias;
  dequantised->assign(size_t(q.rows) * q.cols, 0.0f);
  for (int r = 0; r < q.rows; ++r) dequantize_row(l.w, r, dequantised->data() + size_t(r) * q.cols);
  return l;
}

// q4 prompts: more than 16 rows of Q4 weights run on the fused int8 GEMM
// (AVX-512 VNNI) with the 4-bit rows widened to int8 per panel — checked to
// be the path taken — and agree with the dequantised weights up to the int8
// roundings; elsewhere they take the fp32 path. Groups 32 and 128; 2048→208
// has a last panel of 16 outputs; 100 rows end in a partial row tile.
TEST(Linear, GroupEqualsTheCallsOneAfterAnother) {
  // Decoding (one row, 3 rows) the group runs as GEMVs in one region; a
  // prompt of 40 rows runs each product on its own path. Both equal the
  // calls one at a time exactly, bias and GELU included.
  const int in = 96, out1 = 130, out2 = 64;
  const auto W1 = random_vec(size_t(in) * out1, 41), B1 = random_vec(out1, 42);
  const auto W2 = random_vec(size_t(in) * out2, 43), B2 = random_vec(out2, 44);
  const Linear l1 = make_linear(in, out1, W1.data(), B1.data()), l2 = make_linear(in, out2, W2.data(), B2.data());
  for (int m : {1, 3, 40}) {
    const auto x1 = random_vec(size_t(m) * in, 45 + m), x2 = random_vec(size_t(m) * in, 46 + m);
    std::vector<float> a1(size_t(m) * out1), a2(size_t(m) * out2), g1(a1.size()), g2(a2.size());
    linear(l1, x1.data(), m, a1.data());
    linear_gelu(l2, x2.data(), m, a2.data());
    const uint64_t gemv_before = detail::linear_path_count(LinearPath::Gemv);
    linear_group({{&l1, x1.data(), g1.data(), false}, {&l2, x2.data(), g2.data(), true}}, m);
    EXPECT_EQ(detail::linear_path_count(LinearPath::Gemv) - gemv_before, m <= 16 ? 2u : 0u) << m;
    EXPECT_EQ(g1, a1) << m;
    EXPECT_EQ(g2, a2) << m;
  }
}

TEST(Linear, Q4PromptsRunOnTheInt8GemmAndMatchTheDequantisedWeights) {
  for (const auto& [in, out, group] : {std::tuple{256, 128, 32}, std::tuple{2048, 208, 32}, std::tuple{512, 64, 128}}) {
    const auto W = random_vec(size_t(in) * out, 31), B = random_vec(out, 32);
    const QuantizedWeights q = quantize(W.data(), WeightFormat::F32, out, in, WeightFormat::Q4, group);
    std::vector<float> wd;
    const Linear l = q8_linear(q, B.data(), &wd);
    for (int m : {17, 40, 100}) {
      const auto x = random_vec(size_t(m) * in, 33 + m);
      for (const char* isa : {"best", "scalar"}) {
        if (std::string(isa) == "scalar") {
          ASSERT_TRUE(detail::gemv_force_isa("scalar"));
        }
        const bool fused = int8_gemm_kernel() != nullptr;
        const uint64_t before = detail::linear_path_count(LinearPath::Q4Int8Gemm);
        const uint64_t fp_before = detail::linear_path_count(LinearPath::Fp32Gemm);
        std::vector<float> y(size_t(m) * out);
        linear(l, x.data(), m, y.data());
        detail::gemv_force_isa(nullptr);
        EXPECT_EQ(detail::linear_path_count(LinearPath::Q4Int8Gemm) - before, fused ? 1u : 0u) << isa;
        EXPECT_EQ(detail::linear_path_count(LinearPath::Fp32Gemm) - fp_before, fused ? 0u : 1u) << isa;
        double worst = 0, scale = 0;
        for (int r = 0; r < m; ++r)
          for (int o = 0; o < out; ++o) {
            double acc = B[o];
            for (int i = 0; i < in; ++i) acc += double(x[r * in + i]) * wd[size_t(o) * in + i];
            worst = std::max(worst, std::fabs(y[r * out + o] - acc));
            scale = std::max(scale, std::fabs(acc));
          }
        EXPECT_GT(scale, 1.0);
        EXPECT_LT(worst, (fused ? 0.03 : 1e-4) * scale) << isa << " " << in << "x" << out << " m=" << m;
      }
    }
  }
}

TEST(Linear, Int8WithPerRowScalesMatchesTheDequantisedWeights) {
  // Q8 with one scale per row: up to 8 rows take the GEMV kernels, more the
  // fused AVX-512 kernel where the shape allows it (outputs a multiple of 16)
  // or oneDNN's u8×s8 GEMM (transposed up to 32 rows), activations quantised
  // per row. All must agree with
  // the dequantised weights up to the int8 rounding of the activations, and
  // linear_gelu with GELU after linear.
  // Shapes: 256→300 (two GEMM blocks, the second partial); 256→16 (one
  // block, which many rows split into row bands); 144→600, a width the GEMV
  // kernels do not take (9·16, like the vision MLP's 4304), so even one row
  // runs a GEMM; for the fused AVX-512 kernel (more than 32 rows, outputs a
  // multiple of 16) 1168→176 and 512→96: panels of 64 outputs and a last one
  // of 48 / 32 (256→16: 16), 1168 = 292 groups of 4 columns, a partial block
  // of 16 groups in the repacking; 35, 40, 100 rows end in partial row tiles.
  ASSERT_FALSE(quant_group_ok(144, 144));
  ASSERT_TRUE(quant_layout_ok(WeightFormat::Q8, 144, 144));
  for (const auto& [in, out] :
       {std::pair{256, 300}, std::pair{256, 16}, std::pair{144, 600}, std::pair{1168, 176}, std::pair{512, 96}}) {
    const auto W = random_vec(size_t(in) * out, 21), B = random_vec(out, 22);
    const QuantizedWeights q = quantize(W.data(), WeightFormat::F32, out, in, WeightFormat::Q8, in);
    std::vector<float> wd;
    const Linear l = q8_linear(q, B.data(), &wd);
    for (int m : {1, 3, 7, 20, 35, 40, 100}) {
      const auto x = random_vec(size_t(m) * in, 23 + m);
      std::vector<float> y_onednn(size_t(m) * out), yg_onednn(size_t(m) * out);
      // Without a fused kernel (as on an AVX2 CPU): oneDNN's GEMM, then
      // the epilogue. The int32 sums are exact either way; the epilogues
      // differ only in float rounding (fused multiply-adds).
      ASSERT_TRUE(detail::gemv_force_isa("scalar"));
      linear(l, x.data(), m, y_onednn.data());
      linear_gelu(l, x.data(), m, yg_onednn.data());
      detail::gemv_force_isa(nullptr);
      std::vector<float> y(size_t(m) * out), yg(size_t(m) * out);
      const uint64_t fused_before = detail::linear_path_count(LinearPath::Int8FusedGemm);
      linear(l, x.data(), m, y.data());
      linear_gelu(l, x.data(), m, yg.data());
      // Past the GEMV's 8 rows, the ISA's fused kernel takes every int8
      // GEMM whose outputs are a multiple of 16.
      if (m > 8) {
        const bool fused = int8_gemm_kernel() != nullptr && out % 16 == 0;
        EXPECT_EQ(detail::linear_path_count(LinearPath::Int8FusedGemm) - fused_before, fused ? 2u : 0u)
            << in << "x" << out << " m=" << m;
      }
      double worst = 0, scale = 0;
      for (int r = 0; r < m; ++r)
        for (int o = 0; o < out; ++o) {
          double acc = B[o];
          for (int i = 0; i < in; ++i) acc += double(x[r * in + i]) * wd[size_t(o) * in + i];
          worst = std::max(worst, std::fabs(y[r * out + o] - acc));
          scale = std::max(scale, std::fabs(acc));
          float g = y[r * out + o];
          gelu_tanh(&g, 1);
          EXPECT_NEAR(yg[r * out + o], g, 1e-5f * (1 + std::fabs(g)));
        }
      EXPECT_LT(worst, 0.02 * scale) << in << "x" << out << " m=" << m;  // Gaussian x: int8 steps of ~3σ/127
      EXPECT_GT(scale, 1.0);
      // Inside a parallel region (a crop per thread) the GEMM runs on this
      // thread alone (the fused kernel over all panels; oneDNN's transposed
      // form in two halves): the same int8 sums and scales, so the same floats.
      std::vector<float> nested(size_t(m) * out);
      bool was_nested = false;
      parallel_for(2, [&](size_t b, size_t) {
        if (b != 0) return;
        was_nested = in_parallel_region();
        linear(l, x.data(), m, nested.data());
      });
      EXPECT_TRUE(was_nested || num_threads() == 1);
      if (int8_gemm_exact()) {
        EXPECT_EQ(nested, y) << in << "x" << out << " m=" << m;
      } else {  // fp32 GEMMs on the widened rows (oneDNN without VNNI): float sums in another order
        for (size_t i = 0; i < y.size(); ++i) ASSERT_NEAR(nested[i], y[i], 1e-4f * (1 + std::fabs(y[i])));
      }
      for (size_t i = 0; m > 32 && i < y.size(); ++i) {  // (fewer rows: the GEMV / transposed paths)
        ASSERT_NEAR(y_onednn[i], y[i], 2e-6f * (1 + std::fabs(y[i]))) << in << "x" << out << " m=" << m;
        ASSERT_NEAR(yg_onednn[i], yg[i], 2e-6f * (1 + std::fabs(yg[i]))) << in << "x" << out << " m=" << m;
      }
    }
    if (in == 144) {
      EXPECT_THROW(quantize(W.data(), WeightFormat::F32, out, in, WeightFormat::Q4, in), Error);
    }
  }
}

// The engine's own library GEMMs (tensor/gemm.h: what runs in a build
// without oneDNN) against double-precision and exact integer products, on
// shapes past every blocking edge (rows not a multiple of the 6-row tile,
// columns of the 16-column one, depths of the 256-deep blocks), strided
// operands, both layouts of B, alpha and beta (beta 0 never reads C: NaN
// there stays out); and the build's choice gives the same (its int8 one
// where the engine relies on it being exact).
TEST(Gemm, OwnGemmsMatchTheDefinition) {
  std::printf("library GEMMs: %s\n", gemm_library());
  for (const auto& [M, N, K] :
       {std::tuple{1, 1, 1}, std::tuple{7, 17, 300}, std::tuple{13, 40, 513}, std::tuple{6, 16, 256}}) {
    for (const bool trans_b : {false, true}) {
      const int lda = K + 3, ldb = (trans_b ? K : N) + 5, ldc = N + 2;
      const auto A = random_vec(size_t(M) * lda, 81), B = random_vec(size_t(trans_b ? N : K) * ldb, 82);
      const auto C0 = random_vec(size_t(M) * ldc, 83);
      for (const auto& [alpha, beta] : {std::pair{1.0f, 0.0f}, std::pair{0.5f, 2.0f}}) {
        std::vector<float> own = C0, lib = C0;
        if (beta == 0.0f)
          for (int i = 0; i < M; ++i)
            for (int j = 0; j < N; ++j) own[size_t(i) * ldc + j] = lib[size_t(i) * ldc + j] = std::nanf("");
        detail::sgemm_own(trans_b, M, N, K, alpha, A.data(), lda, B.data(), ldb, beta, own.data(), ldc);
        sgemm(trans_b, M, N, K, alpha, A.data(), lda, B.data(), ldb, beta, lib.data(), ldc);
        for (int i = 0; i < M; ++i)
          for (int j = 0; j < ldc; ++j) {
            const size_t at = size_t(i) * ldc + j;
            if (j >= N) {
              ASSERT_EQ(own[at], C0[at]) << "column " << j << " past N written";
              continue;
            }
            double want = 0;
            for (int k = 0; k < K; ++k)
              want += double(A[size_t(i) * lda + k]) * (trans_b ? B[size_t(j) * ldb + k] : B[size_t(k) * ldb + j]);
            want = alpha * want + (beta == 0.0f ? 0.0 : double(beta) * C0[at]);
            const double tol = 1e-5 * (1.0 + std::sqrt(double(K)) + std::fabs(want));
            ASSERT_NEAR(own[at], want, tol)
                << M << "x" << N << "x" << K << (trans_b ? " T" : " N") << " " << i << "," << j;
            ASSERT_NEAR(lib[at], want, tol)
                << M << "x" << N << "x" << K << (trans_b ? " T" : " N") << " " << i << "," << j;
          }
      }
      std::mt19937 rng(unsigned(M * 7 + N * 3 + K));
      std::vector<uint8_t> Aq(size_t(M) * lda);
      std::vector<int8_t> Bq(size_t(trans_b ? N : K) * ldb);
      for (auto& a : Aq) a = uint8_t(rng() % 256);
      for (auto& b : Bq) b = int8_t(int(rng() % 256) - 128);
      for (const uint8_t offset : {uint8_t(0), uint8_t(128)}) {
        std::vector<int32_t> own(size_t(M) * ldc, -1), lib(size_t(M) * ldc, -1);
        detail::gemm_u8s8s32_own(trans_b, M, N, K, Aq.data(), lda, offset, Bq.data(), ldb, own.data(), ldc);
        gemm_u8s8s32(trans_b, M, N, K, Aq.data(), lda, offset, Bq.data(), ldb, lib.data(), ldc);
        for (int i = 0; i < M; ++i)
          for (int j = 0; j < N; ++j) {
            int64_t want = 0;
            for (int k = 0; k < K; ++k)
              want += int64_t(int(Aq[size_t(i) * lda + k]) - int(offset)) *
                      (trans_b ? Bq[size_t(j) * ldb + k] : Bq[size_t(k) * ldb + j]);
            ASSERT_EQ(own[size_t(i) * ldc + j], want) << M << "x" << N << "x" << K << " offset " << int(offset);
            // (oneDNN capped below VNNI, MOONDREAM_ISA=avx2 or generic, saturates
            // pairs of products at 16 bits: the engine then takes no int8
            // product from it, int8_gemm_exact() says so.)
            if (int8_gemm_exact()) {
              ASSERT_EQ(lib[size_t(i) * ldc + j], want) << M << "x" << N << "x" << K << " offset " << int(offset);
            }
          }
      }
    }
  }
}

// Each level's fused int8 GEMM kernel (gemm_int8.h) called directly, against
// the exact int32 sums in double precision: every shape the interface allows
// (k a multiple of 4 but not of 8 or 16: 291 groups of 4 columns; 1176, of
// 8 but not of 16; a last panel of 16 outputs; 1, 6 and 13 rows: whole and
// partial row tiles, a row pair with one row), with and
// without bias and GELU. Levels without a kernel of their own are skipped
// by name, and the levels that must have one are checked to have run.
TEST(Int8Gemm, EachLevelsKernelMatchesTheExactSums) {
  int ran = 0;
  for (const char* isa : detail::gemv_isas()) {
    ASSERT_TRUE(detail::gemv_force_isa(isa));
    const Int8GemmKernel kernel = int8_gemm_kernel();
    detail::gemv_force_isa(nullptr);
    const std::string name = isa;
    if (name == "avx512" || name == "dotprod" || name == "i8mm") {
      ASSERT_NE(kernel, nullptr) << isa;
    }
    if (!kernel) continue;
    ++ran;
    for (const auto& [m, k, n] :
         {std::tuple{13, 1164, 80}, std::tuple{13, 1176, 80}, std::tuple{6, 64, 64}, std::tuple{1, 16, 16}}) {
      std::mt19937 rng(unsigned(m * 131 + k + n));
      std::uniform_int_distribution<int> q(-127, 127), wb(0, 255);
      std::vector<int8_t> x(size_t(m) * k);
      std::vector<float> xs(static_cast<size_t>(m)), ws(static_cast<size_t>(n)), bias(static_cast<size_t>(n));
      std::vector<int32_t> xsum(static_cast<size_t>(m), 0);
      std::vector<uint8_t> w(size_t(n) * k);
      for (int i = 0; i < m; ++i) {
        for (int c = 0; c < k; ++c) xsum[i] += x[size_t(i) * k + c] = int8_t(q(rng));
        xs[i] = 1e-3f * float(1 + i % 5);
      }
      for (auto& b : w) b = uint8_t(wb(rng));
      for (int j = 0; j < n; ++j) {
        ws[j] = 2e-3f * float(1 + j % 7);
        bias[j] = 0.25f * float(j % 9) - 1.0f;
      }
      for (const bool with_bias : {false, true})
        for (const bool gelu : {false, true}) {
          std::vector<uint8_t> scratch(int8_gemm_panel_bytes(k) + 64);
          uint8_t* panel = scratch.data() + (64 - reinterpret_cast<uintptr_t>(scratch.data()) % 64) % 64;
          std::vector<float> y(size_t(m) * n, -7.0f);
          Int8GemmArgs a;
          a.x = x.data();
          a.xs = xs.data();
          a.xsum = xsum.data();
          a.m = m;
          a.k = k;
          a.w = w.data();
          a.ws = ws.data();
          a.bias = with_bias ? bias.data() : nullptr;
          a.n = n;
          a.gelu = gelu;
          a.y = y.data();
          a.ldy = size_t(n);
          kernel(a, panel);
          for (int i = 0; i < m; ++i)
            for (int j = 0; j < n; ++j) {
              int64_t c = 0;
              for (int t = 0; t < k; ++t) c += int64_t(int(w[size_t(j) * k + t]) - 128) * x[size_t(i) * k + t];
              float want = float(double(c) * ws[j] * xs[i] + (with_bias ? bias[j] : 0.0));
              if (gelu) gelu_tanh(&want, 1);
              ASSERT_NEAR(y[size_t(i) * n + j], want, 2e-5f * (1.0f + std::fabs(want)))
                  << isa << " m=" << m << " k=" << k << " n=" << n << " row " << i << " output " << j
                  << (with_bias ? " bias" : "") << (gelu ? " gelu" : "");
            }
        }
    }
  }
#if defined(__aarch64__)
  if (std::string(detail::gemv_best_isa()) != "neon") {
    EXPECT_GE(ran, 2) << "dotprod and i8mm";
  }
#endif
  (void)ran;
}

TEST(Linear, Fp32GemmWithFusedGeluMatchesGeluAfterLinear) {
  const int in = 40, out = 300, m = 50;  // many rows: the blocked GEMM path
  const auto W = random_vec(size_t(in) * out, 41), B = random_vec(out, 42);
  const Linear l = make_linear(in, out, W.data(), B.data());
  const auto x = random_vec(size_t(m) * in, 43);
  std::vector<float> y(size_t(m) * out), yg(size_t(m) * out);
  linear(l, x.data(), m, y.data());
  linear_gelu(l, x.data(), m, yg.data());
  gelu_tanh(y.data(), y.size());
  for (size_t i = 0; i < y.size(); ++i) EXPECT_NEAR(yg[i], y[i], 1e-6f * (1 + std::fabs(y[i])));
}

// fp32 and int8 attention (int8_scores) over the same q, k, v, and the
// largest |v| (the scale of the output).
struct Int8AttentionRun {
  std::vector<float> ref, got;
  double vmax = 0;
  uint64_t fused_before = 0;
  bool fused = false;  // the fused int8 head kernel ran (else oneDNN's GEMMs)
};

// Both int8 implementations where the CPU has them: the fused head kernel
// (AVX-512 VNNI) and the oneDNN GEMMs every other ISA runs.
struct Int8AttentionImpl {
  const char* isa;
  bool fused;
};
constexpr Int8AttentionImpl kInt8AttentionImpls[] = {{"avx512", true},  {"avx2", false}, {"i8mm", true},
                                                     {"dotprod", true}, {"neon", false}, {"scalar", false}};
Int8AttentionRun run_attention_both_ways(AttentionShape shape, const AttentionMask& mask,
                                         const std::vector<float>& qkv) {
  const int dim = shape.n_heads * shape.head_dim;
  Int8AttentionRun r;
  r.ref.resize(size_t(shape.n_q) * dim);
  r.got.resize(r.ref.size());
  shape.int8_scores = false;
  attention(shape, mask, qkv.data(), qkv.data() + dim, qkv.data() + 2 * dim, r.ref.data());
  shape.int8_scores = true;
  r.fused_before = detail::attention_path_count(AttentionPath::Int8Fused);
  attention(shape, mask, qkv.data(), qkv.data() + dim, qkv.data() + 2 * dim, r.got.data());
  r.fused = detail::attention_path_count(AttentionPath::Int8Fused) != r.fused_before;
  for (int j = 0; j < shape.n_k; ++j)
    for (int c = 0; c < dim; ++c) r.vmax = std::max(r.vmax, double(std::fabs(qkv[size_t(j) * 3 * dim + 2 * dim + c])));
  return r;
}

TEST(Attention, Int8StaysCloseToFp32WithAndWithoutMask) {
  // The vision tower's shape in miniature (head_dim 72, full mask) and the
  // text prefill's (a bidirectional prefix, causal after it), keys with a
  // common offset (which the int8 path subtracts before quantising).
  const int n = 150, heads = 3, hd = 72, dim = heads * hd;
  auto qkv = random_vec(size_t(n) * 3 * dim, 51, 2.0f);
  for (int j = 0; j < n; ++j)
    for (int c = 0; c < dim; ++c) qkv[size_t(j) * 3 * dim + dim + c] += 1.5f;
  AttentionShape shape;
  shape.n_q = shape.n_k = n;
  shape.n_heads = shape.n_kv_heads = heads;
  shape.head_dim = hd;
  shape.q_stride = shape.kv_stride = 3 * dim;
  AttentionMask prefix;
  prefix.full = false;
  prefix.prefix = 60;
  int ran = 0;
  for (const Int8AttentionImpl& impl : kInt8AttentionImpls) {
    if (!detail::gemv_force_isa(impl.isa)) continue;
    ++ran;
    for (const AttentionMask& mask : {AttentionMask{}, prefix}) {
      const Int8AttentionRun r = run_attention_both_ways(shape, mask, qkv);
      EXPECT_EQ(r.fused, impl.fused) << impl.isa;
      double worst = 0, differ = 0;
      for (size_t i = 0; i < r.ref.size(); ++i) {
        worst = std::max(worst, double(std::fabs(r.got[i] - r.ref[i])));
        differ += r.got[i] != r.ref[i];
      }
      // (With the prefix mask, keys past it seen by a query would be errors
      // of the size of the values themselves.)
      EXPECT_LT(worst, 0.03 * r.vmax) << impl.isa << " full mask: " << mask.full;
      if (int8_gemm_exact())
        EXPECT_GT(differ, 0);  // the int8 path really ran
      else
        EXPECT_EQ(differ, 0);  // no exact int8 GEMM (oneDNN without VNNI): the fp32 path ran
      std::printf("%s, full mask %d: worst %.5f of vmax %.3f\n", impl.isa, int(mask.full), worst, r.vmax);
    }
  }
  detail::gemv_force_isa(nullptr);
  EXPECT_GT(ran, 0);
}

TEST(Attention, Int8FusedHeadKernelMatchesTheGemmPath) {
  // The text model's and the vision tower's head sizes (64, 72: not a whole
  // number of 16-column steps), more than one P·V flush (256 keys), query
  // rows that are not a multiple of the kernel's tile and keys that are not
  // a multiple of its 16-key blocks, a prefix-causal mask, two query heads
  // per kv head: the fused kernel and oneDNN's GEMMs quantise alike, so
  // they agree far closer than either agrees with fp32.
  // The best level with a fused kernel (avx512, dotprod); the GEMM path at
  // the level below it.
  std::string kernel_isa;
  for (const char* isa : detail::gemv_isas()) {
    detail::gemv_force_isa(isa);
    if (int8_head_kernel()) kernel_isa = isa;
  }
  detail::gemv_force_isa(nullptr);
  if (kernel_isa.empty()) GTEST_SKIP() << "this CPU has no fused int8 attention kernel";
  for (const int hd : {64, 72}) {
    const int n = 301, heads = 4, kv_heads = 2, dim = heads * hd, kv_dim = kv_heads * hd;
    const int stride = dim + 2 * kv_dim;
    auto qkv = random_vec(size_t(n) * stride, 71, 2.0f);
    AttentionShape shape;
    shape.n_q = shape.n_k = n;
    shape.n_heads = heads;
    shape.n_kv_heads = kv_heads;
    shape.head_dim = hd;
    shape.q_stride = shape.kv_stride = stride;
    shape.int8_scores = true;
    AttentionMask mask;
    mask.full = false;
    mask.prefix = 120;
    std::vector<float> fused(size_t(n) * dim), gemm(fused.size()), ref(fused.size());
    ASSERT_TRUE(detail::gemv_force_isa(kernel_isa.c_str()));
    const uint64_t fused_before = detail::attention_path_count(AttentionPath::Int8Fused);
    attention(shape, mask, qkv.data(), qkv.data() + dim, qkv.data() + dim + kv_dim, fused.data());
    EXPECT_EQ(detail::attention_path_count(AttentionPath::Int8Fused) - fused_before, 1u);
    ASSERT_TRUE(detail::gemv_force_isa("avx2") || detail::gemv_force_isa("neon") || detail::gemv_force_isa("scalar"));
    ASSERT_EQ(int8_head_kernel(), nullptr);
    // (oneDNN without VNNI, as MOONDREAM_ISA=avx2 caps it: that path is fp32.)
    const bool gemm_int8 = int8_gemm_exact();
    attention(shape, mask, qkv.data(), qkv.data() + dim, qkv.data() + dim + kv_dim, gemm.data());
    EXPECT_EQ(detail::attention_path_count(AttentionPath::Int8Fused) - fused_before, 1u);
    detail::gemv_force_isa(nullptr);
    shape.int8_scores = false;
    attention(shape, mask, qkv.data(), qkv.data() + dim, qkv.data() + dim + kv_dim, ref.data());
    double vs_gemm = 0, vs_ref = 0;
    for (size_t i = 0; i < fused.size(); ++i) {
      vs_gemm = std::max(vs_gemm, double(std::fabs(fused[i] - gemm[i])));
      vs_ref = std::max(vs_ref, double(std::fabs(fused[i] - ref[i])));
    }
    double vmax = 0;
    for (int j = 0; j < n; ++j)
      for (int c = 0; c < kv_dim; ++c)
        vmax = std::max(vmax, double(std::fabs(qkv[size_t(j) * stride + dim + kv_dim + c])));
    std::printf("%s head_dim %d: fused vs GEMM path %.6f, vs fp32 %.5f, of vmax %.3f\n", kernel_isa.c_str(), hd,
                vs_gemm, vs_ref, vmax);
    EXPECT_LT(vs_gemm, (gemm_int8 ? 0.0005 : 0.03) * vmax) << hd;
    EXPECT_LT(vs_ref, 0.03 * vmax) << hd;
  }
}

TEST(Attention, Int8KeepsTheDiffuseMassOfAPeakedRow) {
  // Every query puts e^5 ≈ 148 times more weight on key 0 than on each of
  // the other 199 keys, which together still hold 57 % of the mass, and key
  // 0's values stand out (4.0). One u8 per probability (max → 255) rounds
  // each small one to 1/255 or 2/255 instead of ~1.72/255; P's 16-bit fixed
  // point keeps them.
  const int n = 200, hd = 72;
  auto qkv = random_vec(size_t(n) * 3 * hd, 61, 0.01f);
  for (int i = 0; i < n; ++i) qkv[size_t(i) * 3 * hd] = 5.0f * std::sqrt(float(hd));  // q = (5·√72, ~0…)
  qkv[hd] = 1.0f;                                                                     // key 0 = (1, ~0…)
  const auto values = random_vec(size_t(n) * hd, 62, 1.0f);
  for (int j = 0; j < n; ++j)
    for (int c = 0; c < hd; ++c) qkv[size_t(j) * 3 * hd + 2 * hd + c] = j == 0 ? 4.0f : values[size_t(j) * hd + c];
  AttentionShape shape;
  shape.n_q = shape.n_k = n;
  shape.n_heads = shape.n_kv_heads = 1;
  shape.head_dim = hd;
  shape.q_stride = shape.kv_stride = 3 * hd;
  for (const Int8AttentionImpl& impl : kInt8AttentionImpls) {
    if (!detail::gemv_force_isa(impl.isa)) continue;
    const Int8AttentionRun r = run_attention_both_ways(shape, AttentionMask{}, qkv);
    EXPECT_EQ(r.fused, impl.fused) << impl.isa;
    double worst = 0;
    for (size_t i = 0; i < r.ref.size(); ++i) worst = std::max(worst, double(std::fabs(r.got[i] - r.ref[i])));
    // Measured: 0.0059 (V's int8 steps) with P in two u8 parts (oneDNN),
    // 0.0167 with P as one u8; the fused kernel's 15-bit P: see the output.
    EXPECT_LT(worst, 0.0025 * r.vmax) << impl.isa;
    std::printf("%s: worst %.5f of vmax %.3f\n", impl.isa, worst, r.vmax);
  }
  detail::gemv_force_isa(nullptr);
}

TEST(Softmax, LongRowsWithTheMaximumAnywhere) {
  // The vectorised max must see every element, including the tail.
  for (int n : {1, 15, 16, 17, 729, 730}) {
    for (int at : {0, n / 2, n - 1}) {
      std::vector<float> x(size_t(n), -3.0f);
      x[size_t(at)] = 80.0f;  // exp(80) overflows unless the max is subtracted
      softmax(x.data(), n);
      EXPECT_NEAR(x[size_t(at)], 1.0f, 1e-6f) << n << " " << at;
      double sum = 0;
      for (float v : x) sum += v;
      EXPECT_NEAR(sum, 1.0, 1e-5);
    }
  }
}

TEST(BufferPool, FreedBlocksAreReusedAndIdleMemoryIsBounded) {
  const size_t n = (size_t(3) << 20) / sizeof(float);  // 3 MB: pooled
  const void* first;
  {
    PooledVector<float> a(n, 1.0f);
    first = a.data();
    EXPECT_EQ(a[n - 1], 1.0f);
  }
  {
    PooledVector<float> b(n);  // same size: the same block, zero-filled again
    EXPECT_EQ(b[0], 0.0f);
    EXPECT_EQ(b[n - 1], 0.0f);
    if (pool_enabled()) {
      EXPECT_EQ(static_cast<const void*>(b.data()), first);
    }
  }
  // Reserved blocks (touched in the background) serve later allocations.
  const size_t before = pool_idle_bytes(), block = size_t(6) << 20;  // 5 MB rounds up to 6
  pool_reserve_in_background(size_t(5) << 20, 3);
  pool_wait_for_reservations();
  if (pool_enabled()) {
    EXPECT_EQ(pool_idle_bytes(), before + 3 * block);
    PooledVector<float> kv((size_t(5) << 20) / sizeof(float));
    EXPECT_EQ(pool_idle_bytes(), before + 2 * block);
  }
  {
    // More than the idle limit freed at once: the surplus is unmapped.
    std::vector<PooledVector<float>> many;
    for (size_t got = 0; got < kPoolIdleLimit + (size_t(64) << 20); got += size_t(32) << 20)
      many.emplace_back((size_t(32) << 20) / sizeof(float));
  }
  EXPECT_LE(pool_idle_bytes(), kPoolIdleLimit);
  if (pool_enabled()) {
    EXPECT_GT(pool_idle_bytes(), size_t(0));
  }
  PooledVector<uint8_t> small(100);  // small requests use operator new
  EXPECT_EQ(small.size(), 100u);
}

TEST(Sampling, TopPDropsTokensWhosePrecedingMassExceedsP) {
  // probs after softmax at T=1: construct logits = log(p).
  const std::vector<double> p = {0.5, 0.2, 0.15, 0.1, 0.05};
  std::vector<float> logits;
  for (double v : p) logits.push_back(float(std::log(v)));
  // top_p 0.6: token0 (before 0) kept, token1 (before 0.5) kept, token2 (before 0.7) dropped.
  auto q = top_p_probs(logits.data(), 5, 1.0f, 0.6f);
  EXPECT_NEAR(q[0], 0.5 / 0.7, 1e-6);
  EXPECT_NEAR(q[1], 0.2 / 0.7, 1e-6);
  EXPECT_EQ(q[2], 0.0f);
  EXPECT_EQ(q[4], 0.0f);
  // top_p 0.5 exactly: token1's preceding mass 0.5 does not exceed 0.5 → kept.
  q = top_p_probs(logits.data(), 5, 1.0f, 0.5f);
  EXPECT_GT(q[1], 0.0f);
  EXPECT_EQ(q[2], 0.0f);
  // tiny top_p keeps only the best token.
  q = top_p_probs(logits.data(), 5, 1.0f, 0.01f);
  EXPECT_FLOAT_EQ(q[0], 1.0f);
  // temperature sharpens: T=0.5 squares the ratios.
  q = top_p_probs(logits.data(), 5, 0.5f, 1.0f);
  EXPECT_NEAR(q[0] / q[1], (0.5 / 0.2) * (0.5 / 0.2), 1e-3);
}

// top_p_probs sorts only the head of the order it keeps: the result must be
// the one of a stable sort of the whole vocabulary (the definition), bit for
// bit, whether the kept set ends in the first 64 tokens, after several
// growths of the head, or takes the whole vocabulary — ties included.
TEST(Sampling, TopPOnTheSortedHeadEqualsTheFullStableSort) {
  auto reference = [](const float* logits, int n, float t, float top_p) {
    std::vector<float> p(logits, logits + n);
    const float mx = *std::max_element(p.begin(), p.end());
    double sum = 0;
    for (float& v : p) {
      v = std::exp((v - mx) / t);
      sum += v;
    }
    for (float& v : p) v = float(v / sum);
    std::vector<int> order(static_cast<size_t>(n));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return p[a] > p[b]; });
    double cum = 0, kept = 0;
    std::vector<float> out(static_cast<size_t>(n), 0.0f);
    for (int idx : order) {
      if (cum > top_p) break;
      cum += p[idx];
      out[idx] = p[idx];
      kept += p[idx];
    }
    for (float& v : out) v = float(v / kept);
    return out;
  };
  const int n = 51200;
  for (const float spread : {8.0f, 2.0f, 0.05f}) {  // peaked … nearly flat (thousands kept)
    auto logits = random_vec(n, 77, spread);
    for (int i = 0; i < n; i += 7) logits[size_t(i)] = logits[size_t(i / 2)];  // ties
    for (const float t : {0.5f, 1.0f})
      for (const float top_p : {0.0f, 0.3f, 0.9f, 0.999f, 1.0f}) {
        const auto want = reference(logits.data(), n, t, top_p), got = top_p_probs(logits.data(), n, t, top_p);
        size_t kept = 0;
        for (float v : want) kept += v > 0;
        ASSERT_EQ(got, want) << "spread " << spread << " T " << t << " top_p " << top_p << " (" << kept << " kept)";
      }
  }
}

TEST(Sampling, SeedReproducesAndGreedyIsArgmax) {
  auto logits = random_vec(1000, 21, 2.0f);
  SamplingParams sp{0.8f, 0.9f, 1234};
  Sampler a(sp), b(sp);
  std::vector<int> ra, rb;
  for (int i = 0; i < 50; ++i) {
    ra.push_back(a.next(logits.data(), 1000));
    rb.push_back(b.next(logits.data(), 1000));
  }
  EXPECT_EQ(ra, rb);
  Sampler c({0.8f, 0.9f, 999});
  std::vector<int> rc;
  for (int i = 0; i < 50; ++i) rc.push_back(c.next(logits.data(), 1000));
  EXPECT_NE(ra, rc);
  Sampler g({0.0f, 0.3f, 0});
  EXPECT_EQ(g.next(logits.data(), 1000), argmax_token(logits.data(), 1000));
  // Frequencies follow the filtered distribution.
  std::vector<float> two = {0.0f, float(std::log(3.0))};  // p = 0.25, 0.75
  Sampler s({1.0f, 1.0f, 7});
  int ones = 0;
  for (int i = 0; i < 20000; ++i) ones += s.next(two.data(), 2);
  EXPECT_NEAR(ones / 20000.0, 0.75, 0.015);
}

TEST(Region, FourierFeaturesAreCosThenSinOfTwoPiVF) {
  const float F[6] = {0.1f, -2.0f, 3.5f, 1.0f, 0.25f, -0.75f};  // [2, 3]
  const float v[2] = {0.3f, 0.6f};
  auto f = fourier_features(v, 2, F, 3);
  ASSERT_EQ(f.size(), 6u);
  for (int j = 0; j < 3; ++j) {
    const double a = 2 * M_PI * (0.3 * F[j] + 0.6 * F[3 + j]);
    EXPECT_NEAR(f[j], std::cos(a), 1e-5);
    EXPECT_NEAR(f[3 + j], std::sin(a), 1e-5);
  }
}

TEST(Parallel, CoversEveryIndexOnceAndNests) {
  for (int threads : {1, 2, 3}) {
    set_num_threads(threads);
    std::vector<int> hits(1001, 0);
    parallel_for(hits.size(), [&](size_t b, size_t e) {
      for (size_t i = b; i < e; ++i) {
        hits[i]++;
        parallel_for(3, [](size_t, size_t) {});  // nested: runs serially, no deadlock
      }
    });
    for (int h : hits) EXPECT_EQ(h, 1);
    // parallel_for_each: every index once; `next` is the index the same
    // thread runs after i (or n), so following it visits every index too.
    std::vector<int> each(1001, 0);
    std::vector<size_t> next_of(1001, 0);
    parallel_for_each(each.size(), [&](size_t i, size_t next) {
      each[i]++;
      next_of[i] = next;
      parallel_for_each(3, [](size_t, size_t) {});  // nested: serial
    });
    for (int h : each) EXPECT_EQ(h, 1);
    std::vector<bool> is_next(1001, false);
    for (size_t i = 0; i < next_of.size(); ++i) {
      ASSERT_GT(next_of[i], i);
      if (next_of[i] < next_of.size()) {
        EXPECT_FALSE(is_next[next_of[i]]) << "two indices name the same next";
        is_next[next_of[i]] = true;
      }
    }
    // Exactly one chain start per thread that got work (indices nobody names).
    const long starts = std::count(is_next.begin(), is_next.end(), false);
    EXPECT_GE(starts, 1);
    EXPECT_LE(starts, threads);
  }
  set_num_threads(0);
}

}  // namespace
}  // namespace md
