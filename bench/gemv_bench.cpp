// Decode-GEMV benchmark (and the attention kernels, see the sections below): for each weight format, the five
// Moondream2 text decoder shapes (y = W·x, W [out, in]) with 2 threads and 1, timed on cold weights (enough copies of
// each matrix are cycled that nothing is reused from the caches, as in a real decode step). Prints time per call,
// weight GB/s, the ratio to this machine's memory-read bandwidth measured in the same run, and the decode tokens/s the
// GEMVs alone would allow for the full model.
//
//   gemv_bench [--threads 2,1] [--formats f32,bf16,f16,q8,q8row,q4] [--rounds 5]
//              [--pool-mb 768] [--hugepages] [--no-quant] [--no-gemm] [--no-attention] [--isa avx512|avx2|scalar]
//              [--shapes 0,4]  (a subset of the five shapes: no projection)
//              [--attention-layers 24]  (1: one layer's cache, from L3 — the
//              kernels' compute floor instead of the cold, memory-bound step)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "machine_limits.h"
#include "tensor/dtype.h"
#include "tensor/gemv.h"
#include "tensor/ops.h"
#include "tensor/parallel.h"
#include "tensor/quant.h"

namespace {

using Clock = std::chrono::steady_clock;
using md::WeightFormat;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// 2 MB-aligned buffer, optionally backed by transparent huge pages.
struct Buffer {
  uint8_t* p = nullptr;
  size_t n = 0;
  Buffer(size_t bytes, bool huge) : n(bytes) {
    const size_t align = size_t(2) << 20;
    p = static_cast<uint8_t*>(std::aligned_alloc(align, (bytes + align - 1) / align * align));
    if (!p) {
      std::fprintf(stderr, "out of memory (%zu MB)\n", bytes >> 20);
      std::exit(1);
    }
    if (huge) madvise(p, bytes, MADV_HUGEPAGE);
  }
  ~Buffer() { std::free(p); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
};

// Fills a buffer in parallel: random values of the format (small magnitudes,
// no denormals), random bytes for quantised data.
void fill(uint8_t* p, size_t bytes, WeightFormat f, uint64_t seed) {
  const size_t chunk = size_t(1) << 20;
  md::parallel_for((bytes + chunk - 1) / chunk, [&](size_t b, size_t e) {
    for (size_t k = b; k < e; ++k) {
      uint64_t s = (seed + 1) * 0x9E3779B97F4A7C15ull ^ (k + 1) * 0xD1B54A32D192ED03ull;
      const size_t lo = k * chunk, hi = std::min(bytes, lo + chunk);
      auto next = [&s] {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        return s;
      };
      auto val = [&] { return float(int(next() % 2001) - 1000) * 1e-4f; };
      switch (f) {
        case WeightFormat::F32:
          for (size_t i = lo; i + 4 <= hi; i += 4) {
            const float v = val();
            std::memcpy(p + i, &v, 4);
          }
          break;
        case WeightFormat::BF16:
        case WeightFormat::F16:
          for (size_t i = lo; i + 2 <= hi; i += 2) {
            const uint16_t h = f == WeightFormat::BF16 ? md::f32_to_bf16(val()) : md::f32_to_f16(val());
            std::memcpy(p + i, &h, 2);
          }
          break;
        default:
          for (size_t i = lo; i < hi; ++i) p[i] = uint8_t(next());
          break;
      }
    }
  });
}

struct Shape {
  int rows, cols;
  int per_token;  // calls per decode step
};
// Moondream2 text decoder (Phi-1.5 shape): per layer qkv 6144×2048, out proj
// 2048×2048, fc1 8192×2048, fc2 2048×8192, 24 layers; lm_head 51200×2048.
const Shape kShapes[] = {{6144, 2048, 24}, {2048, 2048, 24}, {8192, 2048, 24}, {2048, 8192, 24}, {51200, 2048, 1}};

struct Matrices {
  std::unique_ptr<Buffer> data, aux;
  std::vector<md::WeightMatrix> views;
};

// group: Q8/Q4 scale group (0: the format's default, 32); q8row = Q8 with
// one scale per row, the int8 mode's layout.
Matrices make(WeightFormat f, const Shape& s, size_t pool_bytes, bool huge, uint64_t seed, int group = 32) {
  md::WeightMatrix proto;
  proto.format = f;
  proto.rows = s.rows;
  proto.cols = s.cols;
  size_t dbytes = 0, abytes = 0;
  switch (f) {
    case WeightFormat::F32: dbytes = size_t(s.rows) * size_t(s.cols) * 4; break;
    case WeightFormat::BF16:
    case WeightFormat::F16: dbytes = size_t(s.rows) * size_t(s.cols) * 2; break;
    case WeightFormat::Q8:
    case WeightFormat::Q4:
      proto.group = group > 0 ? group : s.cols;
      dbytes = md::quant_data_bytes(f, s.rows, s.cols);
      abytes = md::quant_aux_bytes(f, s.rows, s.cols, proto.group);
      break;
  }
  const size_t one = dbytes + abytes;
  const size_t copies = std::max<size_t>(2, (pool_bytes + one - 1) / one);
  Matrices m;
  m.data = std::make_unique<Buffer>(dbytes * copies, huge);
  fill(m.data->p, dbytes * copies, f, seed);
  if (abytes) {
    m.aux = std::make_unique<Buffer>(abytes * copies, huge);
    uint16_t* sc = reinterpret_cast<uint16_t*>(m.aux->p);
    for (size_t i = 0; i < abytes * copies / 2; ++i) sc[i] = md::f32_to_f16(0.01f + 1e-5f * float(i % 97));
  }
  for (size_t c = 0; c < copies; ++c) {
    md::WeightMatrix w = proto;
    w.data = m.data->p + c * dbytes;
    w.aux = abytes ? m.aux->p + c * abytes : nullptr;
    m.views.push_back(w);
  }
  return m;
}

// Per-call times, cycling through the copies so that every call reads cold
// weights: the best call is the figure for a quiet machine (other jobs
// preempt our threads), the median shows the noise.
struct Timing {
  double best, median;
};

Timing time_gemv(const Matrices& m, const float* x, float* y, int rounds) {
  for (const auto& w : m.views) md::gemv(w, x, y);  // warm-up
  std::vector<double> t;
  const auto start = Clock::now();
  do {
    for (const auto& w : m.views) {
      const auto t0 = Clock::now();
      md::gemv(w, x, y);
      t.push_back(seconds_since(t0));
    }
  } while (seconds_since(start) < 0.06 * rounds || t.size() < 20);
  std::sort(t.begin(), t.end());
  return {t.front(), t[t.size() / 2]};
}

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  size_t b = 0;
  for (;;) {
    const size_t e = s.find(',', b);
    out.push_back(s.substr(b, e == std::string::npos ? std::string::npos : e - b));
    if (e == std::string::npos) break;
    b = e + 1;
  }
  return out;
}

bool parse_format(const std::string& s, WeightFormat* f) {
  if (s == "q8row") {
    *f = WeightFormat::Q8;
    return true;
  }
  for (WeightFormat g : {WeightFormat::F32, WeightFormat::BF16, WeightFormat::F16, WeightFormat::Q8, WeightFormat::Q4})
    if (s == md::weight_format_name(g)) {
      *f = g;
      return true;
    }
  return false;
}

// Decode attention over a bf16 or int8 KV cache laid out as the model's
// (head-major, KVCache; int8 with a scale per head row after each range's
// rows): one query row, 32 heads of 64, the image prefix (730 rows, a base
// cache) plus the rows decoded since, `layers` layers' caches cycled (24:
// cold, as in a decode step). GB/s of K and V read (scales included).
void time_decode_attention(const std::vector<int>& threads, int rounds, bool huge, int layers) {
  const int n_heads = 32, hd = 64, kv_dim = n_heads * hd, prefix = 730;
  for (int nt : threads)
    for (md::KVFormat format : {md::KVFormat::BF16, md::KVFormat::I8}) {
      md::set_num_threads(nt);
      const double bw = md::bench::measure_read_bandwidth(nt).gbps;
      std::printf(
          "\n== decode attention, %s KV, %d heads x %d, %d thread%s (%d layers' caches cycled; probe %.1f GB/s)\n",
          md::kv_format_name(format), n_heads, hd, nt, nt == 1 ? "" : "s", layers, bw);
      const size_t elem = md::kv_element_bytes(format), row = md::kv_head_row_bytes(format, hd) * n_heads;
      for (const auto& [n_q, n_k] : {std::pair{1, 745}, std::pair{1, 1500}, std::pair{14, 745}}) {
        const size_t base_bytes = size_t(prefix) * row, own_bytes = size_t(n_k - prefix) * row;
        Buffer kv(size_t(layers) * 2 * (base_bytes + own_bytes), huge);
        fill(kv.p, kv.n, WeightFormat::BF16, 5);
        std::vector<float> q(size_t(n_q) * 3 * kv_dim), out(size_t(n_q) * kv_dim);
        for (size_t i = 0; i < q.size(); ++i) q[i] = float(int(i * 7919 % 2001) - 1000) * 1e-3f;
        md::AttentionShape sh;
        sh.n_q = n_q;
        sh.n_k = n_k;
        sh.n_heads = sh.n_kv_heads = n_heads;
        sh.head_dim = hd;
        sh.q_stride = 3 * kv_dim;
        sh.kv_stride = kv_dim;
        md::AttentionMask mask;
        mask.full = false;
        mask.q_pos0 = n_k - n_q;
        mask.prefix = prefix;
        // One range (k or v of base or own) of `rows` rows at p.
        auto range = [&](uint8_t* p, int rows) {
          float* scales = reinterpret_cast<float*>(p + size_t(rows) * kv_dim * elem);
          if (format == md::KVFormat::I8)
            for (size_t i = 0; i < size_t(rows) * n_heads; ++i) scales[i] = 0.01f;
          return std::pair{p, scales};
        };
        std::vector<std::pair<md::KVRows, md::KVRows>> rows_of_layer;
        for (int l = 0; l < layers; ++l) {
          uint8_t* b = kv.p + size_t(l) * 2 * (base_bytes + own_bytes);
          const auto [bk, bks] = range(b, prefix);
          const auto [bv, bvs] = range(b + base_bytes, prefix);
          const auto [ok, oks] = range(b + 2 * base_bytes, n_k - prefix);
          const auto [ov, ovs] = range(b + 2 * base_bytes + own_bytes, n_k - prefix);
          md::KVRows base{bk, bv, prefix, format, hd, size_t(prefix) * hd};
          md::KVRows own{ok, ov, n_k - prefix, format, hd, size_t(n_k - prefix) * hd};
          if (format == md::KVFormat::I8) {
            base.k_scale = bks, base.v_scale = bvs, base.scale_head_stride = size_t(prefix);
            own.k_scale = oks, own.v_scale = ovs, own.scale_head_stride = size_t(n_k - prefix);
          }
          rows_of_layer.emplace_back(base, own);
        }
        auto layer = [&](int l) {
          md::attention(sh, mask, q.data(), rows_of_layer[size_t(l)].first, rows_of_layer[size_t(l)].second,
                        out.data());
        };
        for (int l = 0; l < layers; ++l) layer(l);
        std::vector<double> t;
        const auto start = Clock::now();
        do {
          const auto t0 = Clock::now();
          for (int l = 0; l < layers; ++l) layer(l);
          t.push_back(seconds_since(t0));
        } while (seconds_since(start) < 0.1 * rounds || t.size() < 10);
        std::sort(t.begin(), t.end());
        const double bytes = double(layers) * 2.0 * double(n_k) * double(row);
        std::printf(
            "attention %2d quer%s, n_k %5d: %.2f MB per step, best %.2f ms (median %.2f) = %.1f GB/s, %.1f%% of BW\n",
            n_q, n_q == 1 ? "y" : "ies", n_k, bytes / 1e6, t.front() * 1e3, t[t.size() / 2] * 1e3,
            bytes / t.front() / 1e9, 100.0 * bytes / t.front() / 1e9 / bw);
      }
    }
}

// A batched decode step's attention (decode_attention) for 1, 2, 4 and 8
// sequences about one image: one shared 730-row prefix per layer plus each
// sequence's own 15 rows, `layers` layers cycled. The prefix is read once
// for all the rows; the bytes counted are those read (prefix once, own rows
// per sequence).
void time_shared_prefix_attention(int nt, int rounds, bool huge, int layers) {
  const int n_heads = 32, hd = 64, kv_dim = n_heads * hd, prefix = 730, own_n = 15;
  md::set_num_threads(nt);
  for (md::KVFormat format : {md::KVFormat::BF16, md::KVFormat::I8})
    for (const bool shared : {true, false}) {
      std::printf("\n== batched decode attention over %s, %s KV, %d thread%s (%d layers)\n",
                  shared ? "one shared prefix" : "a prefix each (different images)", md::kv_format_name(format), nt,
                  nt == 1 ? "" : "s", layers);
      const size_t elem = md::kv_element_bytes(format), row = md::kv_head_row_bytes(format, hd) * n_heads;
      const int max_rows = 8, prefixes = shared ? 1 : max_rows;
      const size_t base_bytes = size_t(prefix) * row, own_bytes = size_t(own_n) * row;
      const size_t layer_bytes = size_t(prefixes) * 2 * base_bytes + size_t(max_rows) * 2 * own_bytes;
      Buffer kv(size_t(layers) * layer_bytes, huge);
      fill(kv.p, kv.n, WeightFormat::BF16, 7);
      auto range = [&](uint8_t* p, int rows) {
        float* scales = reinterpret_cast<float*>(p + size_t(rows) * kv_dim * elem);
        if (format == md::KVFormat::I8)
          for (size_t i = 0; i < size_t(rows) * n_heads; ++i) scales[i] = 0.01f;
        md::KVRows r{p, nullptr, rows, format, hd, size_t(rows) * hd};
        if (format == md::KVFormat::I8) r.k_scale = scales, r.scale_head_stride = size_t(rows);
        return r;
      };
      auto pair = [&](uint8_t* p, size_t bytes, int rows) {
        md::KVRows k = range(p, rows), v = range(p + bytes, rows);
        k.v = v.k;
        k.v_scale = v.k_scale;
        return k;
      };
      std::vector<md::KVRows> base(static_cast<size_t>(layers) * max_rows), own(static_cast<size_t>(layers) * max_rows);
      for (int l = 0; l < layers; ++l) {
        uint8_t* b = kv.p + size_t(l) * layer_bytes;
        for (int r = 0; r < max_rows; ++r) {
          base[size_t(l) * max_rows + size_t(r)] = pair(b + size_t(r % prefixes) * 2 * base_bytes, base_bytes, prefix);
          own[size_t(l) * max_rows + size_t(r)] =
              pair(b + size_t(prefixes) * 2 * base_bytes + size_t(r) * 2 * own_bytes, own_bytes, own_n);
        }
      }
      std::vector<float> q(size_t(max_rows) * 3 * kv_dim), out(size_t(max_rows) * kv_dim);
      for (size_t i = 0; i < q.size(); ++i) q[i] = float(int(i * 7919 % 2001) - 1000) * 1e-3f;
      md::AttentionShape sh;
      sh.n_heads = sh.n_kv_heads = n_heads;
      sh.head_dim = hd;
      sh.q_stride = 3 * kv_dim;
      sh.kv_stride = kv_dim;
      double one = 0;
      for (int n : {1, 2, 4, 8}) {
        auto step = [&] {
          for (int l = 0; l < layers; ++l)
            md::decode_attention(sh, n, q.data(), base.data() + size_t(l) * max_rows, own.data() + size_t(l) * max_rows,
                                 out.data());
        };
        step();
        std::vector<double> t;
        const auto start = Clock::now();
        do {
          const auto t0 = Clock::now();
          step();
          t.push_back(seconds_since(t0));
        } while (seconds_since(start) < 0.1 * rounds || t.size() < 10);
        std::sort(t.begin(), t.end());
        if (n == 1) one = t.front();
        const double bytes =
            double(layers) * 2.0 * (double(base_bytes) * (shared ? 1 : n) + double(n) * double(own_bytes));
        std::printf(
            "%d sequence%s: best %.2f ms (median %.2f) = %.1f GB/s read; %.2fx the time of one for %dx the rows\n", n,
            n == 1 ? " " : "s", t.front() * 1e3, t[t.size() / 2] * 1e3, bytes / t.front() / 1e9, t.front() / one, n);
      }
    }
}

// A prompt's attention in the int8 modes, one layer (all heads, activations
// in cache as in the model): the vision tower's 729 patches (16 heads of 72,
// full mask) and the text model's 730-position image prefix (32 of 64,
// bidirectional), on the fused int8 head kernel where the ISA has it and on
// oneDNN's GEMMs (the path of the other ISAs), interleaved. GOP/s of the two
// products (4 · n² · head_dim per head) against the int8 VNNI peak.
void time_prompt_attention(int nt, int rounds) {
  md::set_num_threads(nt);
  const double peak = md::bench::measure_machine_limits(nt).int8_gops;
  std::printf("\n== prompt attention, int8 modes, one layer, %d thread%s (int8 peak %.0f GOP/s)\n", nt,
              nt == 1 ? "" : "s", peak);
  struct Case {
    const char* name;
    int n, heads, hd;
    bool full;
  };
  for (const Case& c : {Case{"vision 729, 16x72", 729, 16, 72, true}, Case{"prefix 730, 32x64", 730, 32, 64, false}}) {
    const int dim = c.heads * c.hd;
    std::vector<float> qkv(size_t(c.n) * 3 * dim), out(size_t(c.n) * dim);
    for (size_t i = 0; i < qkv.size(); ++i) qkv[i] = float(int(i * 7919 % 2001) - 1000) * 2e-3f;
    md::AttentionShape sh;
    sh.n_q = sh.n_k = c.n;
    sh.n_heads = sh.n_kv_heads = c.heads;
    sh.head_dim = c.hd;
    sh.q_stride = sh.kv_stride = 3 * dim;
    sh.int8_scores = true;
    md::AttentionMask mask;
    mask.full = c.full;
    mask.prefix = c.full ? 0 : c.n;
    const double ops = 4.0 * double(c.n) * c.n * c.hd * c.heads;
    const char* isas[2] = {md::detail::gemv_best_isa(), "avx2"};
    double best[2] = {1e30, 1e30};
    const auto start = Clock::now();
    int reps = 0;
    do {
      for (int v = 0; v < 2; ++v) {
        if (!md::detail::gemv_force_isa(isas[v])) continue;
        const auto t0 = Clock::now();
        md::attention(sh, mask, qkv.data(), qkv.data() + dim, qkv.data() + 2 * dim, out.data());
        if (reps > 0) best[v] = std::min(best[v], seconds_since(t0));
      }
      ++reps;
    } while (seconds_since(start) < 0.2 * rounds || reps < 4);
    md::detail::gemv_force_isa(nullptr);
    const bool fused = std::string(isas[0]) == "avx512";
    std::printf("%-18s %s %.2f ms = %.0f GOP/s, %.1f%% of int8 peak | oneDNN GEMMs %.2f ms = %.0f GOP/s (%.2fx)\n",
                c.name, fused ? "fused kernel" : "(no fused kernel)", best[0] * 1e3, ops / best[0] / 1e9,
                100.0 * ops / best[0] / 1e9 / peak, best[1] * 1e3, ops / best[1] / 1e9, best[1] / best[0]);
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int> threads = {2, 1};
  std::vector<std::string> formats = {"f32", "bf16", "f16", "q8", "q8row", "q4"};
  int rounds = 5;
  size_t pool_mb = 768;
  bool huge = false, quant_speed = true, gemm_section = true, attention_section = true;
  int attention_layers = 24;
  std::vector<int> only;  // --shapes: indices into kShapes (the projection needs all five)
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--threads") {
      threads.clear();
      for (const auto& t : split(next())) threads.push_back(std::atoi(t.c_str()));
    } else if (a == "--formats") {
      formats = split(next());
    } else if (a == "--rounds") {
      rounds = std::max(1, std::atoi(next().c_str()));
    } else if (a == "--pool-mb") {
      pool_mb = size_t(std::max(16, std::atoi(next().c_str())));
    } else if (a == "--shapes") {
      for (const auto& t : split(next())) only.push_back(std::atoi(t.c_str()));
    } else if (a == "--hugepages") {
      huge = true;
    } else if (a == "--no-quant") {
      quant_speed = false;
    } else if (a == "--no-gemm") {
      gemm_section = false;
    } else if (a == "--no-attention") {
      attention_section = false;
    } else if (a == "--attention-layers") {
      attention_layers = std::max(1, std::atoi(next().c_str()));
    } else if (a == "--isa") {
      const std::string isa = next();
      if (!md::detail::gemv_force_isa(isa.c_str())) {
        std::fprintf(stderr, "this CPU cannot run --isa %s\n", isa.c_str());
        return 2;
      }
    } else {
      std::fprintf(stderr,
                   "usage: gemv_bench [--threads 2,1] [--formats f32,bf16,f16,q8,q8row,q4] [--rounds N]\n"
                   "                  [--pool-mb MB] [--hugepages] [--no-quant] [--no-gemm] [--no-attention] [--isa "
                   "avx512|avx2|scalar]\n"
                   "                  [--shapes i,j (0..4)] [--attention-layers N]\n");
      return 2;
    }
  }
  for (const std::string& fs : formats) {
    WeightFormat f;
    if (!parse_format(fs, &f)) {
      std::fprintf(stderr, "unknown format %s\n", fs.c_str());
      return 2;
    }
  }

  std::printf("gemv_bench: ISA %s, >= %zu MB of copies per shape cycled (cold weights)%s; Q8/Q4 group 32\n",
              md::gemv_isa(), pool_mb, huge ? ", huge pages" : "");
  std::vector<float> x(8192), y(51200);
  for (size_t i = 0; i < x.size(); ++i) x[i] = float(int(i * 7919 % 2001) - 1000) * 1e-3f;

  for (int nt : threads) {
    md::set_num_threads(nt);
    const md::bench::ReadBandwidth probe = md::bench::measure_read_bandwidth(nt);
    const double bw = probe.gbps;
    std::printf(
        "\n== %d thread%s; memory read bandwidth (bench/machine_limits probe, best of its variants: %s%s): %.1f GB/s\n",
        nt, nt == 1 ? "" : "s", probe.variant.c_str(), probe.huge_pages ? ", huge pages" : "", bw);
    std::printf("%-5s %-12s %9s %9s %9s %8s %7s\n", "fmt", "shape", "MB", "best us", "median us", "GB/s", "of BW");
    for (const std::string& fs : formats) {
      WeightFormat f;
      parse_format(fs, &f);
      double token_s = 0, token_med = 0, token_bytes = 0;
      uint64_t seed = 1;
      int si = -1;
      for (const Shape& s : kShapes) {
        ++si;
        if (!only.empty() && std::find(only.begin(), only.end(), si) == only.end()) continue;
        const Matrices m = make(f, s, pool_mb << 20, huge, ++seed, fs == "q8row" ? 0 : 32);
        const Timing tm = time_gemv(m, x.data(), y.data(), rounds);
        const double t = tm.best;
        const double bytes = double(md::weight_bytes(m.views[0]));
        token_s += t * s.per_token;
        token_med += tm.median * s.per_token;
        token_bytes += bytes * s.per_token;
        std::printf("%-5s %5dx%-6d %9.1f %9.1f %9.1f %8.2f %6.1f%%\n", fs.c_str(), s.rows, s.cols, bytes / 1e6, t * 1e6,
                    tm.median * 1e6, bytes / t / 1e9, 100.0 * bytes / t / 1e9 / bw);
      }
      if (!only.empty()) continue;
      std::printf(
          "%-5s decode-step GEMVs (%.2f GB): %.1f ms = %.2f GB/s, %.1f%% of BW -> %.1f tokens/s "
          "(median calls: %.1f; at the measured BW: %.1f)\n",
          fs.c_str(), token_bytes / 1e9, token_s * 1e3, token_bytes / token_s / 1e9,
          100.0 * token_bytes / token_s / 1e9 / bw, 1.0 / token_s, 1.0 / token_med, bw * 1e9 / token_bytes);
    }
  }

  if (attention_section) {
    time_decode_attention(threads, rounds, huge, attention_layers);
    for (int nt : threads) time_shared_prefix_attention(nt, rounds, huge, attention_layers);
    for (int nt : threads) time_prompt_attention(nt, rounds);
  }

  if (gemm_section) {
    // A few input rows at once (short prompts, batched decode steps):
    // gemm_rows through md::gemm, fc1's 8192×2048 and fc2's 2048×8192 (8
    // rows of 8192 int8 activations are 64 KB: more than L1), cold weights,
    // against m separate gemv calls.
    md::set_num_threads(threads.empty() ? 0 : threads[0]);
    for (const Shape& s : {kShapes[2], kShapes[3]}) {
      std::printf("\n== gemm: %d input rows at once, %dx%d, %d threads (time per call; vs m gemv calls)\n", 16, s.rows,
                  s.cols, md::num_threads());
      std::vector<float> X(size_t(16) * size_t(s.cols)), Y(size_t(16) * size_t(s.rows));
      std::vector<float> x1(static_cast<size_t>(s.cols)), y1(static_cast<size_t>(s.rows));
      for (size_t i = 0; i < X.size(); ++i) X[i] = float(int(i * 7919 % 2001) - 1000) * 1e-3f;
      for (size_t i = 0; i < x1.size(); ++i) x1[i] = X[i];
      for (const std::string& fs : formats) {
        WeightFormat f;
        parse_format(fs, &f);
        const Matrices m = make(f, s, pool_mb << 20, huge, 77, fs == "q8row" ? 0 : 32);
        const double t1 = time_gemv(m, x1.data(), y1.data(), rounds).best;
        std::printf("%-5s m=1 %8.1f us", fs.c_str(), t1 * 1e6);
        for (int mm : {2, 4, 8, 16}) {
          for (const auto& w : m.views) md::gemm(w, X.data(), mm, Y.data(), s.rows);
          double best = 1e30;
          const auto start = Clock::now();
          do {
            for (const auto& w : m.views) {
              const auto t0 = Clock::now();
              md::gemm(w, X.data(), mm, Y.data(), s.rows);
              best = std::min(best, seconds_since(t0));
            }
          } while (seconds_since(start) < 0.03 * rounds);
          std::printf(" | m=%-2d %8.1f us (%.1fx faster than %d gemv)", mm, best * 1e6, t1 * mm / best, mm);
        }
        std::printf("\n");
      }
    }
  }

  if (quant_speed) {
    // Quantisation at load: a bf16 8192×2048 matrix to Q8 and Q4 (group 32),
    // projected to the full model's ≈ 1.9 G weights.
    md::set_num_threads(threads.empty() ? 0 : threads[0]);
    const int rows = 8192, cols = 2048;
    Buffer src(size_t(rows) * cols * 2, false);
    fill(src.p, size_t(rows) * cols * 2, WeightFormat::BF16, 99);
    std::printf("\n== quantize(), %d threads, bf16 %dx%d, group 32\n", md::num_threads(), rows, cols);
    for (WeightFormat t : {WeightFormat::Q8, WeightFormat::Q4}) {
      double best = 1e30;
      for (int r = 0; r < 3; ++r) {
        const auto t0 = Clock::now();
        const auto q = md::quantize(src.p, WeightFormat::BF16, rows, cols, t, 32);
        best = std::min(best, seconds_since(t0));
      }
      const double wps = double(rows) * cols / best;
      std::printf("%s: %.1f ms, %.2f G weights/s -> 1.9 G weights in %.2f s\n", md::weight_format_name(t), best * 1e3,
                  wps / 1e9, 1.9e9 / wps);
    }
  }
  return 0;
}
