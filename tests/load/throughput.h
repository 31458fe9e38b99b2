#pragma once
// Throughput of many clients against one server on loopback (issue 16's
// table): a list of requests shared by N clients, each client taking the next
// one when its previous one is answered. Streams are read as they arrive, so
// every request also gives its time to first piece and the gaps between
// pieces; every answer is kept to compare with the same request served alone.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <httplib.h>
#include <nlohmann/json.hpp>

namespace md::load {

using nlohmann::json;

struct Job {
  std::string path;
  json body;  // "stream": true for SSE
};

struct JobsReport {
  double wall_s = 0;
  std::vector<json> answers;          // per job: the text (streams) or the reply without timings
  std::vector<double> first_piece_s;  // per streamed job
  std::vector<double> gaps_s;         // between pieces, every streamed job
  long completion_tokens = 0;         // generated tokens, from each answer's usage
  long errors = 0;
  std::vector<std::string> error_samples;
  double per_minute() const { return wall_s > 0 ? double(answers.size() - size_t(errors)) * 60.0 / wall_s : 0; }
  double tokens_per_s() const { return wall_s > 0 ? double(completion_tokens) / wall_s : 0; }
};

inline double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, size_t(p * double(v.size())))];
}

namespace detail {

// The SSE events' "chunk" texts (Moondream API) or choices[0].delta.content (OpenAI).
inline std::string piece_of(const std::string& event) {
  const json j = json::parse(event, nullptr, false);
  if (!j.is_object()) return {};
  if (j.contains("chunk") && j["chunk"].is_string()) return j["chunk"];
  if (j.contains("choices") && !j["choices"].empty()) {
    const json& d = j["choices"][0].value("delta", json::object());
    if (d.contains("content") && d["content"].is_string()) return d["content"];
  }
  return {};
}

// usage.completion_tokens of an SSE event (the last one carries it), else 0.
inline long completion_tokens_of(const std::string& event) {
  if (event.find("\"usage\"") == std::string::npos) return 0;
  const json j = json::parse(event, nullptr, false);
  if (!j.is_object() || !j.contains("usage") || !j["usage"].is_object()) return 0;
  return j["usage"].value("completion_tokens", 0L);
}

}  // namespace detail

inline JobsReport run_jobs(const std::string& host, int port, const std::vector<Job>& jobs, int clients,
                           double timeout_s = 600) {
  JobsReport rep;
  rep.answers.assign(jobs.size(), json());
  std::mutex m;
  std::atomic<size_t> next{0};
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::thread> threads;
  for (int id = 0; id < clients; ++id) {
    threads.emplace_back([&] {
      httplib::Client c(host, port);
      c.set_connection_timeout(5, 0);
      c.set_read_timeout(time_t(timeout_s), 0);
      for (size_t i = next++; i < jobs.size(); i = next++) {
        const Job& job = jobs[i];
        const bool stream = job.body.value("stream", false);
        httplib::Request req;
        req.method = "POST";
        req.path = job.path;
        req.body = job.body.dump();
        req.set_header("Content-Type", "application/json");
        std::string body, pending, text;
        long tokens = 0;
        std::vector<double> gaps;
        double first = -1;
        auto last = std::chrono::steady_clock::now();
        const auto start = last;
        if (stream) {
          req.content_receiver = [&](const char* data, size_t len, uint64_t, uint64_t) {
            pending.append(data, len);
            for (size_t e; (e = pending.find("\n\n")) != std::string::npos; pending.erase(0, e + 2)) {
              const std::string ev = pending.substr(0, e);
              if (ev.rfind("data: ", 0) != 0) continue;
              tokens = std::max(tokens, detail::completion_tokens_of(ev.substr(6)));
              const std::string piece = detail::piece_of(ev.substr(6));
              if (piece.empty()) continue;
              const auto now = std::chrono::steady_clock::now();
              if (first < 0)
                first = std::chrono::duration<double>(now - start).count();
              else
                gaps.push_back(std::chrono::duration<double>(now - last).count());
              last = now;
              text += piece;
            }
            return true;
          };
        }
        auto r = c.send(req);
        std::lock_guard<std::mutex> lock(m);
        if (!r || r->status != 200) {
          ++rep.errors;
          if (rep.error_samples.size() < 5)
            rep.error_samples.push_back(job.path + ": " +
                                        (r ? std::to_string(r->status) + " " + r->body.substr(0, 200)
                                           : std::string(httplib::to_string(r.error()))));
          continue;
        }
        if (stream) {
          rep.completion_tokens += tokens;
          rep.answers[i] = text;
          if (first >= 0) rep.first_piece_s.push_back(first);
          rep.gaps_s.insert(rep.gaps_s.end(), gaps.begin(), gaps.end());
        } else {
          json j = json::parse(r->body, nullptr, false);
          if (j.is_object() && j.contains("usage")) rep.completion_tokens += j["usage"].value("completion_tokens", 0L);
          if (j.is_object())
            for (const char* k : {"metrics", "request_id", "timings", "usage", "id", "created"}) j.erase(k);
          rep.answers[i] = j;
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  rep.wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return rep;
}

}  // namespace md::load
