#pragma once
// A bounded load generator for moondream-server on loopback: N concurrent
// clients, each looping over a mix of every endpoint (caption, query, detect,
// point, chat; streaming and not) until the time is up. A request passes when
// it gets a complete answer (the endpoint's field, or an SSE stream that ends
// with its completion event) or a 503 carrying Retry-After; anything else —
// another status, a cut stream, a timeout — is an error. /health is polled
// throughout for the server's RSS.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <httplib.h>
#include <nlohmann/json.hpp>

namespace md::load {

using nlohmann::json;

struct LoadOptions {
  std::string host = "127.0.0.1";
  int port = 8080;
  int clients = 64;
  double seconds = 10;
  double request_timeout_s = 120;       // a request slower than this counts as hung
  std::vector<std::string> image_uris;  // data URIs the clients send
  std::string api_key;
};

struct LoadReport {
  long completed = 0;                      // complete answers
  long rejected_503 = 0;                   // 503 with Retry-After
  long refused = 0;                        // connection refused (the server stopped listening)
  long errors = 0;                         // anything else
  long hung = 0;                           // of the errors: timeouts
  double p50_s = 0, p99_s = 0, max_s = 0;  // latency of completed requests
  long peak_rss_bytes = 0;                 // largest rss_bytes /health reported
  bool healthy_after = false;
  std::vector<std::string> error_samples;  // the first few errors, for the log
  json to_json() const {
    return {{"completed", completed},
            {"rejected_503", rejected_503},
            {"refused", refused},
            {"errors", errors},
            {"hung", hung},
            {"p50_s", p50_s},
            {"p99_s", p99_s},
            {"max_s", max_s},
            {"peak_rss_bytes", peak_rss_bytes},
            {"healthy_after", healthy_after},
            {"error_samples", error_samples}};
  }
};

namespace detail {

struct Kind {
  const char* path;
  bool stream;
};
// Every endpoint, streaming and not.
inline const std::vector<Kind>& kinds() {
  static const std::vector<Kind> k = {{"/v1/caption", false},
                                      {"/v1/caption", true},
                                      {"/v1/query", false},
                                      {"/v1/query", true},
                                      {"/v1/detect", false},
                                      {"/v1/point", false},
                                      {"/v1/chat/completions", false},
                                      {"/v1/chat/completions", true}};
  return k;
}

inline json body_for(const Kind& k, const std::string& image, int n) {
  const json settings = {{"max_tokens", 8 + n % 8}, {"temperature", n % 3 == 0 ? 0.0 : 0.5}};
  const std::string path = k.path;
  if (path == "/v1/caption")
    return {{"image_url", image}, {"length", "short"}, {"stream", k.stream}, {"settings", settings}};
  if (path == "/v1/query")
    return {{"image_url", image},
            {"question", "What is this? #" + std::to_string(n % 5)},
            {"stream", k.stream},
            {"settings", settings}};
  if (path == "/v1/detect") return {{"image_url", image}, {"object", "cat"}, {"settings", {{"max_objects", 3}}}};
  if (path == "/v1/point") return {{"image_url", image}, {"object", "dog"}};
  return {
      {"max_tokens", 8},
      {"stream", k.stream},
      {"messages",
       {{{"role", "user"},
         {"content",
          {{{"type", "text"}, {"text", "Describe it."}}, {{"type", "image_url"}, {"image_url", {{"url", image}}}}}}}}}};
}

// "" when the reply is a complete answer for this kind.
inline std::string check_answer(const Kind& k, const std::string& body) {
  const std::string path = k.path;
  if (k.stream) {
    const std::string end = path == "/v1/chat/completions" ? "data: [DONE]" : "\"completed\":true";
    return body.find(end) != std::string::npos ? "" : "stream without its end event";
  }
  json j = json::parse(body, nullptr, false);
  if (!j.is_object()) return "reply is not JSON";
  const char* field = path == "/v1/caption"  ? "caption"
                      : path == "/v1/query"  ? "answer"
                      : path == "/v1/detect" ? "objects"
                      : path == "/v1/point"  ? "points"
                                             : "choices";
  return j.contains(field) ? "" : std::string("reply lacks ") + field;
}

}  // namespace detail

inline LoadReport run_load(const LoadOptions& o) {
  LoadReport rep;
  std::mutex m;
  std::vector<double> latencies;
  std::atomic<bool> done{false};
  const auto t_end = std::chrono::steady_clock::now() + std::chrono::duration<double>(o.seconds);
  httplib::Headers headers;
  if (!o.api_key.empty()) headers.emplace("Authorization", "Bearer " + o.api_key);

  std::thread monitor([&] {
    httplib::Client c(o.host, o.port);
    c.set_connection_timeout(2, 0);
    c.set_read_timeout(5, 0);
    while (!done) {
      if (auto r = c.Get("/health", headers); r && r->status == 200) {
        const json h = json::parse(r->body, nullptr, false);
        if (h.is_object() && h.contains("rss_bytes")) {
          std::lock_guard<std::mutex> l(m);
          rep.peak_rss_bytes = std::max(rep.peak_rss_bytes, h["rss_bytes"].get<long>());
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
  });

  std::vector<std::thread> clients;
  for (int id = 0; id < o.clients; ++id) {
    clients.emplace_back([&, id] {
      httplib::Client c(o.host, o.port);
      c.set_connection_timeout(5, 0);
      const auto to = std::chrono::duration<double>(o.request_timeout_s);
      c.set_read_timeout(std::chrono::duration_cast<std::chrono::seconds>(to).count(), 0);
      c.set_write_timeout(30, 0);
      for (int n = id; std::chrono::steady_clock::now() < t_end; n += o.clients) {
        const auto& kind = detail::kinds()[size_t(n) % detail::kinds().size()];
        const std::string& image = o.image_uris[size_t(n / 3) % o.image_uris.size()];
        const auto t0 = std::chrono::steady_clock::now();
        auto r = c.Post(kind.path, headers, detail::body_for(kind, image, n).dump(), "application/json");
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        std::string err;
        bool rejected = false, hung = false, refused = false;
        if (!r && r.error() == httplib::Error::Connection) {
          refused = true;
        } else if (!r) {
          hung = r.error() == httplib::Error::Read && s >= o.request_timeout_s * 0.9;
          err = std::string("no reply (") + httplib::to_string(r.error()) + ")";
        } else if (r->status == 503) {
          rejected = true;
          if (!r->has_header("Retry-After")) err = "503 without Retry-After";
        } else if (r->status != 200) {
          err = "status " + std::to_string(r->status) + ": " + r->body.substr(0, 200);
        } else {
          err = detail::check_answer(kind, r->body);
        }
        {
          std::lock_guard<std::mutex> l(m);
          if (!err.empty()) {
            ++rep.errors;
            rep.hung += hung;
            if (rep.error_samples.size() < 5) rep.error_samples.push_back(std::string(kind.path) + ": " + err);
          } else if (refused) {
            ++rep.refused;
          } else if (rejected) {
            ++rep.rejected_503;
          } else {
            ++rep.completed;
            latencies.push_back(s);
          }
        }
        // Back off (outside the lock: the other clients keep going): after a
        // refusal, and after a 503 as told (bounded, to keep the test short).
        if (err.empty() && (refused || rejected))
          std::this_thread::sleep_for(std::chrono::milliseconds(refused ? 100 : 200));
      }
    });
  }
  for (auto& t : clients) t.join();
  done = true;
  monitor.join();

  std::sort(latencies.begin(), latencies.end());
  if (!latencies.empty()) {
    rep.p50_s = latencies[latencies.size() / 2];
    rep.p99_s = latencies[std::min(latencies.size() - 1, latencies.size() * 99 / 100)];
    rep.max_s = latencies.back();
  }
  httplib::Client c(o.host, o.port);
  c.set_connection_timeout(5, 0);
  c.set_read_timeout(30, 0);
  if (auto r = c.Get("/health", headers); r && r->status == 200) {
    const json h = json::parse(r->body, nullptr, false);
    rep.healthy_after = h.is_object() && h.value("status", "") == "ok";
  }
  return rep;
}

}  // namespace md::load
