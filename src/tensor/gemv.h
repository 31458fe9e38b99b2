#pragma once
// Decode-time matrix-vector products y = W·x over weights stored as fp32,
// bf16, fp16 (used in place, straight from safetensors) or quantised to int8 /
// 4 bits (src/tensor/quant.h). Memory-bandwidth-bound: the kernels stream each
// weight byte once, several rows per pass, activations and accumulation in
// fp32; the Q8/Q4 kernels quantise x per group to int8 once per call and use
// integer dot products (VNNI vpdpbusd / AVX2 maddubs), see quant.h.
//
// CPU dispatch at run time (src/tensor/isa.h): on x86-64 "avx512" (AVX-512
// F/BW/VL/DQ + VNNI), "avx2" (AVX2 + FMA + F16C + BMI1/2); on aarch64 "i8mm" (+ SMMLA), "dotprod"
// (NEON + SDOT/UDOT), "neon"; everywhere "scalar" (portable loops). The
// environment variable MOONDREAM_ISA (one of those names, or generic =
// scalar) forces a lower one.
#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

namespace md {

enum class WeightFormat { F32, BF16, F16, Q8, Q4 };

const char* weight_format_name(WeightFormat f);  // "f32", "bf16", "f16", "q8", "q4"

// A view of a weight matrix [rows = out features, cols = in features]; owns
// nothing.
struct WeightMatrix {
  WeightFormat format = WeightFormat::F32;
  int rows = 0, cols = 0;
  // F32/BF16/F16: [rows, cols] row-major exactly as stored (BF16/F16 may be
  // only 2-byte aligned). Q8/Q4: the packed layout of quant.h.
  const void* data = nullptr;
  // Q8/Q4: fp16 group scales [rows, cols / group] (quant.h); null otherwise.
  const void* aux = nullptr;
  int group = 0;  // Q8/Q4 group size along cols
};

// Bytes of weight data (plus scales) one full product streams.
size_t weight_bytes(const WeightMatrix& w);

// y[r] = Σ_c W[r,c]·x[c] for r in [r0, r1). Single-threaded; the caller splits
// rows across threads. y is indexed by the absolute row (y[r0] .. y[r1-1]).
void gemv_rows(const WeightMatrix& w, const float* x, float* y, int r0, int r1);

// The same for m input rows at once (m small, e.g. 1..16): X [m, cols] with row
// stride cols, Y [m, rows] with row stride ldy; Y[i*ldy + r] for r in [r0, r1).
// Row i of Y equals gemv_rows on row i of X exactly.
void gemm_rows(const WeightMatrix& w, const float* X, int m, float* Y, int ldy, int r0, int r1);

// Whole product, parallel over rows (as gemm_chunked).
void gemv(const WeightMatrix& w, const float* x, float* y);
// Whole product for m input rows, parallel over rows (as gemm_chunked).
void gemm(const WeightMatrix& w, const float* X, int m, float* Y, int ldy);
// The whole product on all threads, each preparing X once. The rows are cut
// into chunks of `chunk` rows and every thread owns one contiguous run of
// them, which it reads front to back (one long stream per thread: the
// hardware prefetchers follow it); a thread done with its run takes chunks
// from the back of the others' (a fixed split left the faster thread of a
// shared VM waiting for the slower one). done(r0, r1), if given, runs on the
// thread that computed rows [r0, r1) (an epilogue).
void gemm_chunked(const WeightMatrix& w, const float* X, int m, float* Y, int ldy, int chunk,
                  const std::function<void(int r0, int r1)>& done = {});
// Several such products in one parallel region, job after job, each split as
// above (a thread prepares a job's X when it first computes one of its
// chunks). One team and one barrier instead of one per product: a decode
// step's products that share an input or an output.
struct GemmJob {
  const WeightMatrix* w = nullptr;
  const float* X = nullptr;
  int m = 0;
  float* Y = nullptr;
  int ldy = 0;
  std::function<void(int r0, int r1)> done;
};
void gemm_chunked(const std::vector<GemmJob>& jobs, int chunk);

// What dispatch picked: "avx512", "avx2", "neon", "dotprod", "i8mm" or "scalar".
const char* gemv_isa();

namespace detail {
// Forces an ISA (a name gemv_isas() lists; "generic" = "scalar"); returns false (and changes
// nothing) if the name is unknown or this CPU cannot run it. nullptr restores
// the automatic choice (which honours MOONDREAM_ISA). For tests and
// benchmarks; not thread-safe against concurrent products.
bool gemv_force_isa(const char* name);
// Highest ISA this CPU supports, ignoring MOONDREAM_ISA.
const char* gemv_best_isa();
// Every ISA this CPU runs, from "scalar" (the portable loops) up.
std::vector<const char*> gemv_isas();
// Calls so far of the AVX-512 q8 kernel that ran its column-chunked pass
// (several input rows of activations wider than L1's share), process-wide.
uint64_t gemv_q8_chunked_calls();
}  // namespace detail

}  // namespace md
