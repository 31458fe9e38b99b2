#pragma once
// Measures this machine's own limits in the benchmark's run: peak fp32 FMA
// and int8 VNNI throughput (register-only loops on every thread) and memory
// read bandwidth (the best of several streaming patterns over a buffer far
// larger than the caches, see machine_limits.cpp).
#include <string>
#include <utility>
#include <vector>

namespace md::bench {

struct ReadBandwidth {
  double gbps = 0;          // best of every variant and repetition
  std::string variant;      // the streaming pattern that reached it
  bool huge_pages = false;  // the buffer was advised onto transparent huge pages
  std::vector<std::pair<std::string, double>> per_variant;
};

struct MachineLimits {
  std::string isa;  // widest vector ISA measured
  int threads = 0;
  double fp32_gflops = 0;  // FMA peak
  double int8_gops = 0;    // VNNI (vpdpbusd) peak, 0 when absent
  double read_gbps = 0;    // memory read bandwidth (= read.gbps)
  ReadBandwidth read;
};

MachineLimits measure_machine_limits(int threads);
// Only the memory-read probe (part of measure_machine_limits).
ReadBandwidth measure_read_bandwidth(int threads);

}  // namespace md::bench
