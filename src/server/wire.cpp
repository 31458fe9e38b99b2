#include "server/wire.h"

#include <random>

#include <httplib.h>

namespace md::server {

using nlohmann::json;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

std::string dumps(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

std::string random_hex(int n) {
  static thread_local std::mt19937_64 g{std::random_device{}() ^ uint64_t(Clock::now().time_since_epoch().count())};
  static const char* d = "0123456789abcdef";
  std::string s;
  for (int i = 0; i < n; ++i) s += d[g() & 15];
  return s;
}

int64_t unix_time() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

json error_body(const ApiError& e) {
  return {{"error", {{"message", e.what()}, {"type", e.type}, {"code", e.code}, {"param", nullptr}}}};
}

void set_json(httplib::Response& res, int status, const json& j) {
  res.status = status;
  res.set_content(dumps(j), "application/json");
}

void write_error(httplib::Response& res, const ApiError& e) {
  set_json(res, e.status, error_body(e));
  if (e.status == 503 && !res.has_header("Retry-After")) res.set_header("Retry-After", "1");
}

// ---- response helpers ------------------------------------------------------

json timings_json(const JobOutcome& o, double total_s) {
  const Timings& t = o.timings;
  return {{"decode_image_s", t.decode_image_s},
          {"vision_s", t.vision_s},
          {"prefill_s", t.prefill_s},
          {"decode_s", t.decode_s},
          {"decode_tokens", t.decode_tokens},
          {"decode_tokens_per_s", t.decode_tokens_per_s()},
          {"queue_s", o.queue_s},
          {"total_s", total_s},
          {"image_cache", o.image_cache},
          {"response_cache", o.response_cache}};
}

json usage_json(const JobOutcome& o) {
  const int prompt = o.prompt_tokens + o.image_tokens;
  return {{"prompt_tokens", prompt},
          {"completion_tokens", o.completion_tokens()},
          {"total_tokens", prompt + o.completion_tokens()},
          {"prompt_tokens_details",
           {{"cached_tokens", o.image_cache == "hit" ? o.image_tokens : 0}, {"image_tokens", o.image_tokens}}}};
}

std::string public_finish(const std::string& f) { return f == "length" ? "length" : "stop"; }

std::string sse(const json& j) { return "data: " + dumps(j) + "\n\n"; }

void set_task_headers(httplib::Response& res, const Job& job, const std::string& instance) {
  if (job.params.has_image) res.set_header("X-Image-Key", job.image.key.hex());
  res.set_header("X-Moondream-Instance", instance);
}

void run_and_respond(const std::shared_ptr<Job>& job, const std::shared_ptr<RequestInfo>& inf, const Presenter& pr,
                     httplib::Response& res, const std::function<std::shared_ptr<const JobOutcome>()>& cached,
                     const std::function<void(const std::shared_ptr<Job>&)>& submit,
                     const std::function<void(const JobOutcome&)>& record) {
  auto note = [inf](const JobOutcome& o) {
    inf->image_cache = o.image_cache;
    inf->response_cache = o.response_cache;
    inf->tokens_in = o.prompt_tokens + o.image_tokens;
    inf->tokens_out = o.completion_tokens();
    inf->queue_s = o.queue_s;
    inf->finish = o.finish_reason;
  };

  std::shared_ptr<const JobOutcome> hit = cached();
  if (hit) {
    auto o = std::make_shared<JobOutcome>(*hit);
    o->response_cache = "hit";
    o->image_cache = "skipped";
    o->timings = Timings{};
    o->timings.decode_image_s = job->image.decode_image_s;
    o->queue_s = 0;
    note(*o);
    if (!job->stream) {
      set_json(res, 200, pr.body(*o, seconds_since(inf->start)));
      return;
    }
    std::string text = pr.start;
    if (!o->text.empty()) text += pr.chunk(o->text);
    text += pr.end(*o, seconds_since(inf->start));
    res.set_header("Cache-Control", "no-cache");
    res.set_content(text, "text/event-stream");
    return;
  }
  if (job->response_caching) inf->response_cache = "miss";

  submit(job);  // throws a 503 when the queue is full

  if (!job->stream) {
    const std::shared_ptr<JobOutcome> o = job->channel->wait();  // rethrows the job's ApiError
    note(*o);
    record(*o);
    set_json(res, 200, pr.body(*o, seconds_since(inf->start)));
    return;
  }

  // A stream's 200 goes out once the job runs: a 503 for the KV budget is
  // still a real status.
  job->channel->wait_started();
  res.set_header("Cache-Control", "no-cache");
  res.set_header("X-Accel-Buffering", "no");
  res.set_chunked_content_provider(
      "text/event-stream",
      [job, inf, pr, note, record](size_t, httplib::DataSink& sink) {
        auto send = [&](const std::string& s) {
          if (s.empty()) return true;
          if (!sink.write(s.data(), s.size())) {
            job->channel->cancelled = true;
            return false;
          }
          return true;
        };
        if (!send(pr.start)) return false;
        std::string chunk;
        bool is_reasoning = false;
        while (job->channel->next(&chunk, &is_reasoning)) {
          if (is_reasoning) {
            if (pr.reasoning && !send(pr.reasoning(chunk))) return false;
            continue;
          }
          if (!send(pr.chunk(chunk))) return false;
        }
        if (auto e = job->channel->error()) {
          std::string ev;
          try {
            std::rethrow_exception(e);
          } catch (const ApiError& ae) {
            ev = pr.error(ae);
          } catch (const std::exception& ex) {
            ev = pr.error(ApiError(500, "internal_error", ex.what()));
          }
          inf->finish = "error";
          send(ev);
          sink.done();
          return true;
        }
        const auto o = job->channel->outcome();
        note(*o);
        record(*o);
        if (!send(pr.end(*o, seconds_since(inf->start)))) return false;
        sink.done();
        return true;
      },
      [job](bool success) {
        if (!success) job->channel->cancelled = true;
      });
}

}  // namespace md::server
