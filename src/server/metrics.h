#pragma once
// Counters and histograms for GET /metrics (Prometheus text format 0.0.4).
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace md::server {

class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)), counts_(bounds_.size() + 1) {}
  void observe(double v) { observe(v, 1); }
  // `times` observations of v at once (counts kept elsewhere, rendered here).
  void observe(double v, uint64_t times);
  // Appends the _bucket/_sum/_count lines; `labels` is "" or `a="b",`.
  void render(std::string* out, const std::string& name, const std::string& labels) const;

 private:
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;
  double sum_ = 0;
  uint64_t count_ = 0;
};

class Metrics {
 public:
  void request(const std::string& endpoint, int status, double seconds);
  void generation(const std::string& task, int prompt_tokens, int completion_tokens, double decode_s, double queue_s,
                  const std::string& finish_reason);
  // A streamed generation's time to its first piece and the gaps between pieces.
  void token_latency(double first_token_s, const std::vector<double>& inter_token_s);
  // Gauges read at scrape time are appended by the caller.
  std::string render() const;

 private:
  mutable std::mutex m_;
  std::map<std::pair<std::string, int>, uint64_t> requests_;
  std::map<std::string, Histogram> latency_;
  std::map<std::string, uint64_t> prompt_tokens_, completion_tokens_;
  std::map<std::string, uint64_t> finish_;
  Histogram queue_wait_{{0.001, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60}};
  Histogram tokens_per_s_{{1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000}};
  Histogram first_token_{{0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120}};
  Histogram inter_token_{{0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2, 5}};
  double decode_seconds_ = 0;
  uint64_t decode_tokens_ = 0;
  double last_tokens_per_s_ = 0;
};

// Escapes a label value.
std::string prom_label(const std::string& v);

}  // namespace md::server
