#include "server/metrics.h"

#include <cstdio>

namespace md::server {
namespace {

std::string num(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}

const std::vector<double> kLatencyBounds = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120};

}  // namespace

std::string prom_label(const std::string& v) {
  std::string o;
  for (char c : v) {
    if (c == '\\' || c == '"') o += '\\';
    if (c == '\n') {
      o += "\\n";
      continue;
    }
    o += c;
  }
  return o;
}

void Histogram::observe(double v, uint64_t times) {
  size_t i = 0;
  while (i < bounds_.size() && v > bounds_[i]) ++i;
  counts_[i] += times;
  sum_ += v * double(times);
  count_ += times;
}

void Histogram::render(std::string* out, const std::string& name, const std::string& labels) const {
  uint64_t cum = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    cum += counts_[i];
    *out += name + "_bucket{" + labels + "le=\"" + (i < bounds_.size() ? num(bounds_[i]) : "+Inf") + "\"} " +
            std::to_string(cum) + "\n";
  }
  std::string l;
  if (!labels.empty()) {
    l = "{";
    l.append(labels, 0, labels.size() - 1);  // without the trailing comma
    l += "}";
  }
  *out += name + "_sum" + l + " " + num(sum_) + "\n";
  *out += name + "_count" + l + " " + std::to_string(count_) + "\n";
}

void Metrics::request(const std::string& endpoint, int status, double seconds) {
  std::lock_guard<std::mutex> lock(m_);
  ++requests_[{endpoint, status}];
  auto it = latency_.find(endpoint);
  if (it == latency_.end()) it = latency_.emplace(endpoint, Histogram(kLatencyBounds)).first;
  it->second.observe(seconds);
}

void Metrics::generation(const std::string& task, int prompt_tokens, int completion_tokens, double decode_s,
                         double queue_s, const std::string& finish_reason) {
  std::lock_guard<std::mutex> lock(m_);
  prompt_tokens_[task] += uint64_t(prompt_tokens);
  completion_tokens_[task] += uint64_t(completion_tokens);
  ++finish_[finish_reason];
  queue_wait_.observe(queue_s);
  if (decode_s > 0 && completion_tokens > 0) {
    decode_seconds_ += decode_s;
    decode_tokens_ += uint64_t(completion_tokens);
    last_tokens_per_s_ = completion_tokens / decode_s;
    tokens_per_s_.observe(last_tokens_per_s_);
  }
}

void Metrics::token_latency(double first_token_s, const std::vector<double>& inter_token_s) {
  std::lock_guard<std::mutex> lock(m_);
  if (first_token_s >= 0) first_token_.observe(first_token_s);
  for (double s : inter_token_s) inter_token_.observe(s);
}

std::string Metrics::render() const {
  std::lock_guard<std::mutex> lock(m_);
  std::string o;
  o += "# HELP moondream_requests_total HTTP requests by endpoint and status.\n";
  o += "# TYPE moondream_requests_total counter\n";
  for (const auto& [k, v] : requests_)
    o += "moondream_requests_total{endpoint=\"" + prom_label(k.first) + "\",status=\"" + std::to_string(k.second) +
         "\"} " + std::to_string(v) + "\n";
  o += "# HELP moondream_request_duration_seconds HTTP request latency, including streaming.\n";
  o += "# TYPE moondream_request_duration_seconds histogram\n";
  for (const auto& [k, h] : latency_)
    h.render(&o, "moondream_request_duration_seconds", "endpoint=\"" + prom_label(k) + "\",");
  o += "# HELP moondream_prompt_tokens_total Text prompt tokens processed, by task.\n";
  o += "# TYPE moondream_prompt_tokens_total counter\n";
  for (const auto& [k, v] : prompt_tokens_)
    o += "moondream_prompt_tokens_total{task=\"" + k + "\"} " + std::to_string(v) + "\n";
  o += "# HELP moondream_generated_tokens_total Tokens generated, by task.\n";
  o += "# TYPE moondream_generated_tokens_total counter\n";
  for (const auto& [k, v] : completion_tokens_)
    o += "moondream_generated_tokens_total{task=\"" + k + "\"} " + std::to_string(v) + "\n";
  o += "# HELP moondream_generations_total Finished generations by finish reason.\n";
  o += "# TYPE moondream_generations_total counter\n";
  for (const auto& [k, v] : finish_)
    o += "moondream_generations_total{finish_reason=\"" + prom_label(k) + "\"} " + std::to_string(v) + "\n";
  o += "# HELP moondream_decode_seconds_total Seconds spent generating tokens.\n";
  o += "# TYPE moondream_decode_seconds_total counter\n";
  o += "moondream_decode_seconds_total " + num(decode_seconds_) + "\n";
  o += "# HELP moondream_decode_tokens_per_second Decode speed of the last generation.\n";
  o += "# TYPE moondream_decode_tokens_per_second gauge\n";
  o += "moondream_decode_tokens_per_second " + num(last_tokens_per_s_) + "\n";
  o += "# HELP moondream_decode_tokens_per_second_hist Decode speed per generation.\n";
  o += "# TYPE moondream_decode_tokens_per_second_hist histogram\n";
  tokens_per_s_.render(&o, "moondream_decode_tokens_per_second_hist", "");
  o += "# HELP moondream_queue_wait_seconds Time requests waited for the inference worker.\n";
  o += "# TYPE moondream_queue_wait_seconds histogram\n";
  queue_wait_.render(&o, "moondream_queue_wait_seconds", "");
  o += "# HELP moondream_time_to_first_token_seconds From a request's arrival in the queue to its first streamed "
       "piece.\n";
  o += "# TYPE moondream_time_to_first_token_seconds histogram\n";
  first_token_.render(&o, "moondream_time_to_first_token_seconds", "");
  o += "# HELP moondream_inter_token_latency_seconds Between a generation's streamed pieces.\n";
  o += "# TYPE moondream_inter_token_latency_seconds histogram\n";
  inter_token_.render(&o, "moondream_inter_token_latency_seconds", "");
  return o;
}

}  // namespace md::server
