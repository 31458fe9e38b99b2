#pragma once
// What the API front ends share (src/server/moondream_api.cpp, openai_api.cpp,
// admin.cpp, http_front.cpp): JSON and SSE helpers, the error body, the
// record of a request that the access log prints, and run_and_respond — a
// prepared job to its HTTP response, streamed or not, written by a Presenter
// that knows the wire format.
#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "server/api_error.h"
#include "server/engine.h"

namespace httplib {
struct Response;
}

namespace md::server {

using Clock = std::chrono::steady_clock;

// One request's facts for the access log and metrics.
struct RequestInfo {
  Clock::time_point start = Clock::now();
  std::string image_cache;     // hit / miss / off / "" (no image)
  std::string response_cache;  // hit / miss / off / ""
  int tokens_in = -1, tokens_out = -1;
  double queue_s = -1;
  std::string finish;
};

double seconds_since(Clock::time_point t0);
// JSON text; invalid UTF-8 from a random model is replaced, never an error.
std::string dumps(const nlohmann::json& j);
std::string random_hex(int n);
int64_t unix_time();
std::string sse(const nlohmann::json& j);  // one server-sent event

nlohmann::json error_body(const ApiError& e);
void set_json(httplib::Response& res, int status, const nlohmann::json& j);
// The error as JSON with its status (503s get Retry-After).
void write_error(httplib::Response& res, const ApiError& e);

nlohmann::json timings_json(const JobOutcome& o, double total_s);
nlohmann::json usage_json(const JobOutcome& o);
// finish_reason as clients see it: "length" or "stop".
std::string public_finish(const std::string& f);
// Headers of every task response: the replica's instance id and, with an
// image, its key (deploy/nginx hashes on it).
void set_task_headers(httplib::Response& res, const Job& job, const std::string& instance);

// How a finished job is presented: the Moondream API or OpenAI chat completions.
struct Presenter {
  // Complete JSON body of a non-streaming response.
  std::function<nlohmann::json(const JobOutcome&, double total_s)> body;
  // SSE text sent before any chunk (may be empty).
  std::string start;
  std::function<std::string(const std::string& chunk)> chunk;
  std::function<std::string(const std::string& reasoning_json)> reasoning;  // may be unset
  std::function<std::string(const JobOutcome&, double total_s)> end;
  std::function<std::string(const ApiError&)> error;
};

// Runs a prepared job (or answers it from the response cache) and writes the
// response, streaming or not.
void run_and_respond(const std::shared_ptr<Job>& job, const std::shared_ptr<RequestInfo>& inf, const Presenter& pr,
                     httplib::Response& res, const std::function<std::shared_ptr<const JobOutcome>()>& cached,
                     const std::function<void(const std::shared_ptr<Job>&)>& submit,
                     const std::function<void(const JobOutcome&)>& record);

}  // namespace md::server
