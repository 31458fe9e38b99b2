// The OpenAI wire format: POST /v1/chat/completions (streamed as
// chat.completion.chunk events ending in [DONE]) and GET /v1/models.
#include <httplib.h>

#include "server/requests.h"
#include "server/server.h"
#include "server/wire.h"

namespace md::server {

using nlohmann::json;

void Server::models(const httplib::Request& req, httplib::Response& res) {
  guarded(req, res, true, [&] {
    auto p = active();
    const json m = {
        {"id", p->cfg.model_name},
        {"object", "model"},
        {"created",
         int64_t(std::chrono::duration_cast<std::chrono::seconds>(
                     std::chrono::system_clock::now().time_since_epoch() -
                     std::chrono::duration_cast<std::chrono::system_clock::duration>(Clock::now() - started_))
                     .count())},
        {"owned_by", "moondream"},
        {"root", p->cfg.model_path},
        {"ready", p->model != nullptr}};
    if (req.matches.size() > 1) {
      if (req.matches[1].str() != p->cfg.model_name)
        throw ApiError(404, "model_not_found", "no model named '" + req.matches[1].str() + "'");
      set_json(res, 200, m);
      return;
    }
    set_json(res, 200, {{"object", "list"}, {"data", json::array({m})}});
  });
}

void Server::chat_completions(const httplib::Request& req, const std::string& raw_body, httplib::Response& res) {
  guarded(req, res, true, [&] {
    auto inf = info(req);
    auto prof = ready_profile();
    const ServerConfig& c = prof->cfg;
    ParsedRequest parsed = parse_chat_request(raw_body, c);
    auto job = std::make_shared<Job>();
    job->model = prof->model;
    job->params = std::move(parsed.params);
    JobParams& p = job->params;
    job->stream = parsed.stream;
    const bool include_usage = parsed.include_usage;
    const std::string& image_url = parsed.image_url;
    const Moondream& m = *prof->model->model;
    if (!p.has_image && !m.revision().text_only)
      throw bad_request("image_required",
                        "moondream answers questions about an image, and no message has one: add a content part "
                        "{\"type\": \"image_url\", \"image_url\": {\"url\": \"data:image/jpeg;base64,...\"}} to a "
                        "user message (questions without an image need revision 2025-06-21; the loaded model is " +
                            m.revision().name + ")");
    try {
      prepare_task(m, task_request(p, nullptr), p.has_image);
    } catch (const TaskError& e) {
      throw task_error(e);
    }
    if (p.has_image) prepare_image(*job, image_url, *prof, *inf);
    set_task_headers(res, *job, opts_.instance);

    const std::string id = "chatcmpl-" + random_hex(24);
    const int64_t created = unix_time();
    const std::string model = c.model_name;
    res.set_header("X-Request-Id", id);
    auto base = [id, created, model](const char* object) {
      return json{
          {"id", id}, {"object", object}, {"created", created}, {"model", model}, {"system_fingerprint", nullptr}};
    };
    Presenter pr;
    pr.body = [base](const JobOutcome& o, double total) {
      json j = base("chat.completion");
      j["choices"] = json::array({{{"index", 0},
                                   {"message", {{"role", "assistant"}, {"content", o.text}, {"refusal", nullptr}}},
                                   {"logprobs", nullptr},
                                   {"finish_reason", public_finish(o.finish_reason)}}});
      j["usage"] = usage_json(o);
      j["timings"] = timings_json(o, total);
      return j;
    };
    auto chunk_json = [base, include_usage](const json& delta, const json& finish) {
      json j = base("chat.completion.chunk");
      j["choices"] = json::array({{{"index", 0}, {"delta", delta}, {"logprobs", nullptr}, {"finish_reason", finish}}});
      if (include_usage) j["usage"] = nullptr;
      return j;
    };
    pr.start = sse(chunk_json({{"role", "assistant"}, {"content", ""}}, nullptr));
    pr.chunk = [chunk_json](const std::string& text) { return sse(chunk_json({{"content", text}}, nullptr)); };
    pr.end = [chunk_json, base, include_usage](const JobOutcome& o, double total) {
      json last = chunk_json(json::object(), public_finish(o.finish_reason));
      if (!include_usage) last["timings"] = timings_json(o, total);
      std::string out = sse(last);
      if (include_usage) {
        json u = base("chat.completion.chunk");
        u["choices"] = json::array();
        u["usage"] = usage_json(o);
        u["timings"] = timings_json(o, total);
        out += sse(u);
      }
      return out + "data: [DONE]\n\n";
    };
    pr.error = [](const ApiError& e) { return sse(error_body(e)) + "data: [DONE]\n\n"; };
    const Task task = p.task;
    run_and_respond(
        job, inf, pr, res, [&] { return cached_response(*job, *prof); },
        [this](const std::shared_ptr<Job>& j) { submit(j); },
        [this, task](const JobOutcome& o) {
          metrics_.generation(task == Task::Caption ? "chat_caption" : "chat", o.prompt_tokens + o.image_tokens,
                              o.completion_tokens(), o.timings.decode_s, o.queue_s, o.finish_reason);
          metrics_.token_latency(o.first_token_s, o.inter_token_s);
        });
  });
}

}  // namespace md::server
