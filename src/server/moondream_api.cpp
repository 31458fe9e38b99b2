// The Moondream API's wire format: POST /v1/caption, /v1/query, /v1/detect,
// /v1/point, /v1/gaze (docs/API.md), streamed as {"chunk": ...} events.
#include <httplib.h>

#include "server/requests.h"
#include "server/server.h"
#include "server/wire.h"

namespace md::server {

using nlohmann::json;

namespace {

json moondream_result(Task task, const JobOutcome& o) {
  json j;
  switch (task) {
    case Task::Caption: j["caption"] = o.text; break;
    case Task::Query:
    case Task::Chat:
      j["answer"] = o.text;
      if (o.reasoning) j["reasoning"] = reasoning_json(*o.reasoning);
      break;
    case Task::Gaze: j["gaze"] = o.gaze ? json{{"x", o.gaze->x}, {"y", o.gaze->y}} : json(nullptr); break;
    case Task::Detect: {
      json a = json::array();
      for (const auto& b : o.objects)
        a.push_back({{"x_min", b.x_min}, {"y_min", b.y_min}, {"x_max", b.x_max}, {"y_max", b.y_max}});
      j["objects"] = a;
      break;
    }
    case Task::Point: {
      json a = json::array();
      for (const auto& pt : o.points) a.push_back({{"x", pt.x}, {"y", pt.y}});
      j["points"] = a;
      break;
    }
  }
  return j;
}

}  // namespace

void Server::moondream_task(const httplib::Request& req, const std::string& raw_body, httplib::Response& res,
                            Task task) {
  guarded(req, res, true, [&] {
    auto inf = info(req);
    auto prof = ready_profile();
    const ServerConfig& c = prof->cfg;
    ParsedRequest parsed = parse_moondream_request(raw_body, task, c);
    auto job = std::make_shared<Job>();
    job->model = prof->model;
    job->params = std::move(parsed.params);
    JobParams& p = job->params;
    job->stream = parsed.stream;
    const std::string& image_url = parsed.image_url;
    if (!p.has_image && !prof->model->model->revision().text_only)
      throw bad_request("missing_field",
                        "image_url is required (questions without an image need revision "
                        "2025-06-21; the loaded model is revision " +
                            prof->model->model->revision().name + ")");
    // The model's checks (options against the loaded revision, the context)
    // before any image work.
    try {
      prepare_task(*prof->model->model, task_request(p, nullptr), p.has_image);
    } catch (const TaskError& e) {
      throw task_error(e);
    }
    if (p.has_image) prepare_image(*job, image_url, *prof, *inf);
    set_task_headers(res, *job, opts_.instance);

    const std::string request_id = "req-" + random_hex(24);
    res.set_header("X-Request-Id", request_id);
    Presenter pr;
    pr.body = [task, request_id](const JobOutcome& o, double total) {
      json j = moondream_result(task, o);
      j["request_id"] = request_id;
      j["finish_reason"] = public_finish(o.finish_reason);
      j["timings"] = timings_json(o, total);
      j["usage"] = usage_json(o);
      return j;
    };
    pr.chunk = [](const std::string& chunk) { return sse({{"chunk", chunk}}); };
    // The whole reasoning, before the first answer chunk.
    pr.reasoning = [](const std::string& json_text) {
      return sse({{"chunk", ""}, {"reasoning", json::parse(json_text)}, {"completed", false}});
    };
    pr.end = [request_id](const JobOutcome& o, double total) {
      return sse({{"completed", true},
                  {"request_id", request_id},
                  {"finish_reason", public_finish(o.finish_reason)},
                  {"timings", timings_json(o, total)},
                  {"usage", usage_json(o)}});
    };
    pr.error = [](const ApiError& e) {
      json j = error_body(e);
      j["completed"] = true;
      return sse(j);
    };
    run_and_respond(
        job, inf, pr, res, [&] { return cached_response(*job, *prof); },
        [this](const std::shared_ptr<Job>& j) { submit(j); },
        [this, task](const JobOutcome& o) {
          metrics_.generation(task_name(task), o.prompt_tokens + o.image_tokens, o.completion_tokens(),
                              o.timings.decode_s, o.queue_s, o.finish_reason);
          metrics_.token_latency(o.first_token_s, o.inter_token_s);
        });
  });
}

}  // namespace md::server
