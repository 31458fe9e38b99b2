#pragma once
// Measures this machine's own limits in the benchmark's run: peak fp32 FMA
// and int8 VNNI throughput (register-only loops on every thread) and memory
// read bandwidth (the best of several streaming patterns over a buffer far
// larger than the caches, see machine_limits.cpp).
#include <cstddef>
#include <cstdint>
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

// The memory-read probe with its 1 GiB buffer kept between measurements, so
// that a stage can be bracketed by probes taken right beside it (this VM's
// bandwidth moves by up to 2x within a run) without paying for fresh pages
// each time.
class ReadProbe {
 public:
  explicit ReadProbe(int threads);
  ~ReadProbe();
  ReadProbe(const ReadProbe&) = delete;
  ReadProbe& operator=(const ReadProbe&) = delete;
  // Every streaming variant, best of several: sets the best variant.
  ReadBandwidth measure();
  // The best variant only, best of `reps` passes (~30 ms each).
  double quick(int reps = 3) const;
  // The best variant reading `steps` times the sequence `pieces` (bytes),
  // each piece one parallel region over all threads, consecutive pieces at
  // consecutive addresses of the buffer (wrapping): the memory system's rate
  // for a computation that must read in dependent pieces, as a decode step
  // reads each product's weights after the one before. GB/s, best of `reps`.
  double in_pieces(const std::vector<size_t>& pieces, int steps, int reps = 3) const;

 private:
  double run(int variant) const;
  static constexpr size_t kBytes = size_t(1) << 30;
  int threads_;
  void* map_ = nullptr;
  uint8_t* buf_ = nullptr;
  bool huge_pages_ = false;
  int best_ = 0;
};
// Only the memory-read probe (part of measure_machine_limits).
ReadBandwidth measure_read_bandwidth(int threads);

}  // namespace md::bench
