#pragma once
// Measures this machine's own limits in the benchmark's run: peak fp32 FMA
// and int8 VNNI throughput (register-only loops on every thread) and memory
// read bandwidth (a parallel sum over a buffer far larger than the caches).
#include <string>

namespace md::bench {

struct MachineLimits {
  std::string isa;  // widest vector ISA measured
  int threads = 0;
  double fp32_gflops = 0;  // FMA peak
  double int8_gops = 0;    // VNNI (vpdpbusd) peak, 0 when absent
  double read_gbps = 0;    // memory read bandwidth
};

MachineLimits measure_machine_limits(int threads);

}  // namespace md::bench
