#include "server/server.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>
#include <optional>
#include <random>
#include <span>
#include <sstream>

#include <httplib.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "server/api_error.h"
#include "server/http_server.h"
#include "server/image_input.h"
#include "server/process.h"
#include "server/web_ui.h"
#include "server/requests.h"
#include "server/security.h"
#include "tensor/error.h"
#include "tensor/parallel.h"

namespace md::server {

const char* const kServerVersion = "0.1.0";

using nlohmann::json;
using Clock = std::chrono::steady_clock;

struct RequestInfo {
  Clock::time_point start = Clock::now();
  std::string image_cache;     // hit / miss / off / "" (no image)
  std::string response_cache;  // hit / miss / off / ""
  int tokens_in = -1, tokens_out = -1;
  double queue_s = -1;
  std::string finish;
};

namespace {

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Responses never fail on invalid UTF-8 from a random model: it is replaced.
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

std::string sse(const json& j) { return "data: " + dumps(j) + "\n\n"; }

// Which methods each known path answers, for 405s.
struct Route {
  const char* path;
  const char* methods;
};
const Route kApiRoutes[] = {{"/", "GET"},
                            {"/health", "GET"},
                            {"/v1/models", "GET"},
                            {"/v1/chat/completions", "POST"},
                            {"/v1/caption", "POST"},
                            {"/v1/query", "POST"},
                            {"/v1/detect", "POST"},
                            {"/v1/point", "POST"},
                            {"/v1/gaze", "POST"}};
const Route kBackendRoutes[] = {{"/health", "GET"}, {"/api/v1/config", "GET, PATCH"}, {"/metrics", "GET"}};

std::string endpoint_label(const std::string& path, bool backend) {
  for (const auto& r : backend ? std::span<const Route>(kBackendRoutes) : std::span<const Route>(kApiRoutes))
    if (path == r.path) return path;
  if (!backend && path.rfind("/v1/models/", 0) == 0) return "/v1/models/{id}";
  if (!backend && find_web_asset(path)) return path;
  return "other";
}

const char* allowed_methods(const std::string& path, bool backend) {
  for (const auto& r : backend ? std::span<const Route>(kBackendRoutes) : std::span<const Route>(kApiRoutes))
    if (path == r.path) return r.methods;
  if (!backend && path.rfind("/v1/models/", 0) == 0) return "GET";
  if (!backend && find_web_asset(path)) return "GET";
  return nullptr;
}

// True when an Accept header asks for JSON rather than a page (API clients
// that GET / for the endpoint list); browsers send text/html.
bool prefers_json(const std::string& accept) {
  return accept.find("application/json") != std::string::npos && accept.find("text/html") == std::string::npos;
}

// Headers of every task response: the replica's instance id and, with an
// image, its key — a load balancer hashing on it (deploy/nginx) sends
// follow-ups about the image to the replica that holds it.
void set_task_headers(httplib::Response& res, const Job& job, const std::string& instance) {
  if (job.params.has_image) res.set_header("X-Image-Key", job.image.key.hex());
  res.set_header("X-Moondream-Instance", instance);
}

// "/app.js" as an httplib route pattern (a regex).
std::string literal_pattern(std::string_view path) {
  std::string out;
  for (char ch : path) {
    if (std::string_view(".+*?()[]{}|^$\\").find(ch) != std::string_view::npos) out += '\\';
    out += ch;
  }
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------

Server::Server(ServerOptions opts, ServerConfig cfg, std::string profile_name)
    : opts_(std::move(opts)), startup_cfg_(cfg), started_(Clock::now()) {
  auto p = std::make_shared<Profile>();
  p->name = std::move(profile_name);
  p->path = opts_.config_path;
  p->cfg = std::move(cfg);
  active_ = p;
  queue_ = std::make_unique<InferenceQueue>(&caches_, size_t(p->cfg.server.queue_size), p->cfg.performance.max_batch);
  apply_runtime_settings(*p);
  HttpServerOptions ho;
  ho.threads = startup_cfg_.server.http_threads;
  ho.idle_timeout_s = startup_cfg_.limits.idle_timeout_s;
  ho.read_timeout_s = startup_cfg_.limits.request_timeout_s;
  ho.write_timeout_s = 30;
  api_ = std::make_unique<HttpServer>(ho);
  if (startup_cfg_.server.backend_port > 0) backend_ = std::make_unique<HttpServer>(ho);
  routes();
}

Server::~Server() { stop(); }

std::shared_ptr<const Profile> Server::active() const {
  std::lock_guard<std::mutex> lock(active_m_);
  return active_;
}

std::shared_ptr<RequestInfo> Server::info(const httplib::Request& req) {
  std::lock_guard<std::mutex> lock(info_m_);
  auto& p = infos_[&req];
  if (!p) p = std::make_shared<RequestInfo>();
  return p;
}

void Server::apply_runtime_settings(const Profile& p) {
  const PerformanceConfig& perf = p.cfg.performance;
  caches_.images.set_max_bytes(perf.image_caching ? size_t(perf.cache_max_mb) << 20 : 0);
  if (!perf.response_caching) caches_.responses.clear();
  queue_->set_capacity(size_t(p.cfg.server.queue_size));
  queue_->set_max_running(perf.max_batch);
  caches_.kv.set_max_bytes(size_t(perf.kv_cache_mb) << 20);
}

void Server::bind() {
  const std::string& host = startup_cfg_.server.host;
  if (!api_->bind_deep(host, startup_cfg_.server.port))
    throw Error("cannot listen on " + host + ":" + std::to_string(startup_cfg_.server.port));
  if (backend_ && !backend_->bind_deep(host, startup_cfg_.server.backend_port))
    throw Error("cannot listen on " + host + ":" + std::to_string(startup_cfg_.server.backend_port));
}

void Server::start() {
  api_thread_ = std::thread([this] { api_->listen_after_bind(); });
  if (backend_) backend_thread_ = std::thread([this] { backend_->listen_after_bind(); });
  // stop() only reaches a server that is already running.
  for (int i = 0; i < 2000 && !(api_->is_running() && (!backend_ || backend_->is_running())); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
}

void Server::load_startup_model() {
  auto cur = active();
  const ServerConfig& c = cur->cfg;
  spdlog::info("loading model {} (revision {})", c.model_path, c.revision);
  std::shared_ptr<LoadedModel> lm;
  try {
    lm = load_model(c.model_path, c.revision, startup_cfg_.threads, c.performance.quantization, c.tokenizer,
                    c.revision_profile, c.performance.kv_cache);
  } catch (const Error& e) {
    std::error_code ec;
    if (opts_.fallback_model.empty() || std::filesystem::is_directory(c.model_path, ec)) throw;
    spdlog::error("cannot load {}: {}", c.model_path, e.what());
    spdlog::warn("serving the fallback model {} instead (--fallback-model); its answers are not Moondream2's",
                 opts_.fallback_model);
    lm = load_model(opts_.fallback_model, "", startup_cfg_.threads, c.performance.quantization, "", "auto",
                    c.performance.kv_cache);
    lm->fallback_from = c.model_path;
    lm->fallback_reason = e.what();
  }
  check_kv_budget(c.performance.kv_cache_mb, *lm->model);
  auto p = std::make_shared<Profile>(*cur);
  p->model = lm;
  {
    std::lock_guard<std::mutex> lock(active_m_);
    active_ = p;
  }
  spdlog::info("model ready: {} from {} in {:.2f} s ({} threads)", c.model_name, lm->dir, lm->load_seconds,
               md::num_threads());
}

void Server::stop() {
  if (stopping_.exchange(true)) return;
  // Every connection the kernel accepted gets its answer (503 shutting_down
  // for requests that arrive now); new ones are refused.
  if (api_) api_->drain();
  if (backend_) backend_->drain();
  if (api_thread_.joinable()) api_thread_.join();
  if (backend_thread_.joinable()) backend_thread_.join();
  if (queue_) queue_->stop();
}

// ---- plumbing shared by both ports -----------------------------------------

void Server::common_handlers(httplib::Server& s, bool backend) {
  // Bodies are read by read_body(), which applies the active profile's limit.
  s.set_payload_max_length(std::numeric_limits<size_t>::max());

  s.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response&) {
    std::lock_guard<std::mutex> lock(info_m_);
    infos_[&req] = std::make_shared<RequestInfo>();  // starts the clock
    return httplib::Server::HandlerResponse::Unhandled;
  });

  auto cors = [this](const httplib::Request& req, httplib::Response& res) {
    if (!active()->cfg.server.cors_enabled || res.has_header("Access-Control-Allow-Origin")) return;
    const std::string origin = req.get_header_value("Origin");
    res.set_header("Access-Control-Allow-Origin", origin.empty() ? "*" : origin);
    if (!origin.empty()) res.set_header("Vary", "Origin");
    res.set_header("Access-Control-Expose-Headers", "Retry-After, X-Request-Id, X-Image-Key, X-Moondream-Instance");
  };
  s.set_post_routing_handler(cors);

  s.set_error_handler(
      httplib::Server::HandlerWithResponse([this, cors, backend](const httplib::Request& req, httplib::Response& res) {
        cors(req, res);
        if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
        if (res.status == 404) {
          if (const char* allowed = allowed_methods(req.path, backend)) {
            res.set_header("Allow", allowed);
            write_error(res, ApiError(405, "method_not_allowed",
                                      req.method + " is not allowed on " + req.path + " (allowed: " + allowed + ")"));
          } else {
            write_error(res, ApiError(404, "not_found", "no such endpoint: " + req.method + " " + req.path));
          }
        } else if (res.status == 413) {
          write_error(res, ApiError(413, "payload_too_large",
                                    "the request body is larger than " +
                                        std::to_string(startup_cfg_.limits.max_body_bytes) + " bytes"));
        } else {
          write_error(res, ApiError(res.status, "http_error", "HTTP " + std::to_string(res.status)));
        }
        return httplib::Server::HandlerResponse::Handled;
      }));

  s.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    try {
      std::rethrow_exception(ep);
    } catch (const ApiError& e) {
      write_error(res, e);
    } catch (const std::exception& e) {
      write_error(res, ApiError(500, "internal_error", e.what()));
    }
  });

  s.set_logger([this, backend](const httplib::Request& req, const httplib::Response& res) {
    std::shared_ptr<RequestInfo> inf;
    {
      std::lock_guard<std::mutex> lock(info_m_);
      auto it = infos_.find(&req);
      if (it != infos_.end()) {
        inf = it->second;
        infos_.erase(it);
      }
    }
    const double secs = inf ? seconds_since(inf->start) : 0.0;
    const std::string ep = endpoint_label(req.path, backend);
    metrics_.request(ep, res.status, secs);
    std::string line = req.method + " " + req.path + " " + std::to_string(res.status);
    if (inf && !inf->image_cache.empty()) line += " image=" + inf->image_cache;
    if (inf && !inf->response_cache.empty()) line += " response=" + inf->response_cache;
    if (inf && inf->tokens_in >= 0)
      line += " tokens=" + std::to_string(inf->tokens_in) + "/" + std::to_string(std::max(0, inf->tokens_out));
    if (inf && !inf->finish.empty()) line += " finish=" + inf->finish;
    if (inf && inf->queue_s >= 0) line += fmt::format(" queue={:.3f}s", inf->queue_s);
    line += fmt::format(" {:.3f}s", secs);
    const bool quiet =
        req.path == "/health" || req.path == "/metrics" || (!backend && req.path != "/" && find_web_asset(req.path));
    spdlog::log(quiet ? spdlog::level::debug : spdlog::level::info, "{}", line);
  });

  s.Options(".*", [this](const httplib::Request& req, httplib::Response& res) {
    res.status = 204;
    if (!active()->cfg.server.cors_enabled) {
      res.set_header("Allow", "GET, POST, PATCH, OPTIONS");
      return;
    }
    const std::string origin = req.get_header_value("Origin");
    res.set_header("Access-Control-Allow-Origin", origin.empty() ? "*" : origin);
    if (!origin.empty()) res.set_header("Vary", "Origin");
    res.set_header("Access-Control-Allow-Methods", "GET, POST, PATCH, OPTIONS");
    const std::string asked = req.get_header_value("Access-Control-Request-Headers");
    res.set_header("Access-Control-Allow-Headers",
                   asked.empty() ? "Content-Type, Authorization, X-Moondream-Auth, X-API-Key" : asked);
    res.set_header("Access-Control-Max-Age", "86400");
  });
}

void Server::guarded(const httplib::Request& req, httplib::Response& res, bool needs_key,
                     const std::function<void()>& fn) {
  try {
    if (needs_key) check_api_key(req, *active());
    fn();
  } catch (const ApiError& e) {
    write_error(res, e);
  } catch (const Error& e) {
    write_error(res, ApiError(400, "invalid_request", e.what()));
  } catch (const std::exception& e) {
    spdlog::error("{} {}: {}", req.method, req.path, e.what());
    write_error(res, ApiError(500, "internal_error", e.what()));
  }
}

void Server::check_api_key(const httplib::Request& req, const Profile& p) const {
  const std::string& want = p.cfg.server.api_key;
  if (want.empty()) return;
  std::string got;
  const std::string auth = req.get_header_value("Authorization");
  if (auth.size() > 7 && (auth.compare(0, 7, "Bearer ") == 0 || auth.compare(0, 7, "bearer ") == 0))
    got = auth.substr(7);
  if (got.empty()) got = req.get_header_value("X-Moondream-Auth");
  if (got.empty()) got = req.get_header_value("X-API-Key");
  if (got.empty()) got = req.get_header_value("api-key");
  if (got.empty())
    throw ApiError(401, "missing_api_key",
                   "an API key is required: send Authorization: Bearer <key> (or X-Moondream-Auth: <key>)");
  if (!api_key_matches(got, want)) throw ApiError(401, "invalid_api_key", "the API key is not valid");
}

std::string Server::read_body(const httplib::Request& req, httplib::Response& res,
                              const httplib::ContentReader& reader) {
  const uint64_t limit = active()->cfg.limits.max_body_bytes;
  auto too_large = [&] {
    res.set_header("Connection", "close");  // the rest of the body is never read
    return ApiError(413, "payload_too_large",
                    "the request body is larger than the limit of " + std::to_string(limit) + " bytes");
  };
  // A body a little over the limit is read and dropped, so that the client,
  // still sending, gets to read the 413; a much larger one closes the connection.
  const uint64_t drain = limit + (64ull << 20);
  if (req.has_header("Content-Length") && req.get_header_value<uint64_t>("Content-Length") > drain) throw too_large();
  std::string body;
  bool over = false, late = false;
  uint64_t seen = 0;
  // The whole body must arrive within limits.request_timeout_s of the headers.
  const int timeout_s = active()->cfg.limits.request_timeout_s;
  const Clock::time_point deadline = info(req)->start + std::chrono::seconds(timeout_s);
  const bool ok = reader([&](const char* data, size_t n) {
    if (Clock::now() > deadline) {
      late = true;
      return false;
    }
    seen += n;
    if (seen > limit) {
      over = true;
      body.clear();
      return seen <= drain;
    }
    body.append(data, n);
    return true;
  });
  if (over) {
    if (!ok) throw too_large();
    throw ApiError(413, "payload_too_large",
                   "the request body is larger than the limit of " + std::to_string(limit) + " bytes");
  }
  if (late) {
    res.set_header("Connection", "close");
    throw ApiError(
        408, "request_timeout",
        "the request body did not arrive within " + std::to_string(timeout_s) + " s (limits.request_timeout_s)");
  }
  if (!ok) {
    res.set_header("Connection", "close");
    if (req.has_header("Content-Length") && req.get_header_value<uint64_t>("Content-Length") > limit) throw too_large();
    throw bad_request("invalid_body", "the request body could not be read");
  }
  return body;
}

void Server::with_body(const httplib::Request& req, httplib::Response& res, const httplib::ContentReader& reader,
                       const std::function<void(const std::string&)>& fn) {
  std::string body;
  bool ok = false;
  guarded(req, res, false, [&] {
    body = read_body(req, res, reader);
    ok = true;
  });
  if (ok) fn(body);
}

std::shared_ptr<const Profile> Server::ready_profile() const {
  if (stopping_) throw ApiError(503, "shutting_down", "the server is shutting down");
  auto p = active();
  if (!p->model) throw ApiError(503, "model_loading", "the model is still loading; try again shortly");
  return p;
}

void Server::routes() {
  common_handlers(*api_, false);
  auto& s = *api_;
  // The web page (no API key: the page asks for one when the API answers 401).
  s.Get("/", [this](const httplib::Request& req, httplib::Response& res) { web_page(req, res); });
  for (const WebAsset& a : web_assets())
    s.Get(literal_pattern(a.path), [this](const httplib::Request& req, httplib::Response& res) { web_page(req, res); });
  s.Get("/health", [this](const httplib::Request& req, httplib::Response& res) { health(req, res); });
  s.Get("/v1/models", [this](const httplib::Request& req, httplib::Response& res) { models(req, res); });
  s.Get(R"(/v1/models/(.+))", [this](const httplib::Request& req, httplib::Response& res) { models(req, res); });
  // Bodies are read by our own readers: any content type (curl -d sends
  // form-urlencoded), bounded by limits.max_body_bytes.
  using Reader = httplib::ContentReader;
  s.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res, const Reader& rd) {
    with_body(req, res, rd, [&](const std::string& b) { chat_completions(req, b, res); });
  });
  const std::pair<const char*, Task> tasks[] = {{"/v1/caption", Task::Caption},
                                                {"/v1/query", Task::Query},
                                                {"/v1/detect", Task::Detect},
                                                {"/v1/point", Task::Point},
                                                {"/v1/gaze", Task::Gaze}};
  for (const auto& [path, task] : tasks) {
    const Task t = task;
    s.Post(path, [this, t](const httplib::Request& req, httplib::Response& res, const Reader& rd) {
      with_body(req, res, rd, [&](const std::string& b) { moondream_task(req, b, res, t); });
    });
  }

  if (backend_) {
    common_handlers(*backend_, true);
    auto& b = *backend_;
    b.Get("/health", [this](const httplib::Request& req, httplib::Response& res) { health(req, res); });
    b.Get("/api/v1/config", [this](const httplib::Request& req, httplib::Response& res) { get_config(req, res); });
    b.Patch("/api/v1/config",
            [this](const httplib::Request& req, httplib::Response& res, const httplib::ContentReader& rd) {
              with_body(req, res, rd, [&](const std::string& body) { patch_config(req, body, res); });
            });
    b.Get("/metrics", [this](const httplib::Request& req, httplib::Response& res) { metrics(req, res); });
  }
}

// ---- the web page ---------------------------------------------------------------

void Server::web_page(const httplib::Request& req, httplib::Response& res) {
  guarded(req, res, false, [&] {
    const bool ui = active()->cfg.server.web_ui;
    if (req.path == "/") res.set_header("Vary", "Accept");
    if (req.path == "/" && (!ui || prefers_json(req.get_header_value("Accept")))) {
      json eps = json::array();
      for (const auto& r : kApiRoutes) eps.push_back(std::string(r.methods) + " " + r.path);
      set_json(res, 200,
               {{"server", "moondream-server"},
                {"version", kServerVersion},
                {"endpoints", eps},
                {"web_ui", ui},
                {"docs", "docs/API.md"}});
      return;
    }
    const WebAsset* a = ui ? find_web_asset(req.path) : nullptr;
    if (!a)
      throw ApiError(404, "not_found",
                     "no such endpoint: " + req.method + " " + req.path + " (the web page is turned off)");
    res.set_header("Content-Security-Policy", kWebUiCsp);
    res.set_header("X-Content-Type-Options", "nosniff");
    res.set_header("Referrer-Policy", "no-referrer");
    res.set_header("Cache-Control", "no-cache");
    res.set_header("ETag", std::string(a->etag));
    if (req.get_header_value("If-None-Match") == a->etag) {
      res.status = 304;
      return;
    }
    res.status = 200;
    res.set_content(a->body.data(), a->body.size(), std::string(a->content_type).c_str());
  });
}

// ---- /health, /v1/models, /metrics, /api/v1/config --------------------------

std::string Server::health_json() const {
  auto p = active();
  const ServerConfig& c = p->cfg;
  auto cache_json = [](const CacheStats& s, bool enabled) {
    return json{{"enabled", enabled}, {"hits", s.hits},           {"misses", s.misses},      {"entries", s.entries},
                {"bytes", s.bytes},   {"max_bytes", s.max_bytes}, {"evictions", s.evictions}};
  };
  json j = {
      {"status", p->model ? "ok" : "loading"},
      {"server", "moondream-server"},
      {"version", kServerVersion},
      {"pid", int(getpid())},
      {"instance", opts_.instance},
      {"profile", p->name},
      {"model", c.model_name},
      {"model_path", p->model ? p->model->dir : c.model_path},
      {"model_source", c.model_path},
      {"revision", c.revision},
      {"revision_profile", p->model ? p->model->model->revision().name : ""},
      {"revision_detected_by", p->model ? p->model->model->revision().detected_by : ""},
      {"tokenizer", p->model ? p->model->model->tokenizer_path() : ""},
      {"quantization", p->model ? p->model->quantization : c.performance.quantization},
      {"kv_cache", p->model ? p->model->kv_cache : c.performance.kv_cache},
      {"load_seconds", p->model ? p->model->load_seconds : 0.0},
      {"uptime_seconds", seconds_since(started_)},
      {"rss_bytes", rss_bytes()},
      {"threads", md::num_threads()},
      {"queue_depth", queue_->depth()},
      {"queue_capacity", queue_->capacity()},
      {"busy", queue_->busy()},
      {"running", queue_->running()},
      {"max_batch", queue_->max_running()},
      {"kv_budget", {{"budget_bytes", caches_.kv.max_bytes()}, {"used_bytes", caches_.kv.used()}}},
      {"cache", cache_json(caches_.images.stats(), c.performance.image_caching)},
      {"response_cache", cache_json(caches_.responses.stats(), c.performance.response_caching)},
  };
  if (p->model && !p->model->fallback_from.empty()) {
    j["fallback_from"] = p->model->fallback_from;
    j["fallback_reason"] = p->model->fallback_reason;
  }
  return dumps(j);
}

void Server::health(const httplib::Request& req, httplib::Response& res) {
  guarded(req, res, false, [&] {
    const std::string body = health_json();
    res.status = active()->model ? 200 : 503;
    if (res.status == 503) res.set_header("Retry-After", "5");
    res.set_content(body, "application/json");
  });
}

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

void Server::metrics(const httplib::Request& req, httplib::Response& res) {
  guarded(req, res, true, [&] {
    auto p = active();
    std::string o = metrics_.render();
    auto gauge = [&](const std::string& name, const std::string& help, const std::string& type, double v) {
      o += "# HELP " + name + " " + help + "\n# TYPE " + name + " " + type + "\n" + name + " " + fmt::format("{}", v) +
           "\n";
    };
    const CacheStats ic = caches_.images.stats(), rc = caches_.responses.stats();
    gauge("moondream_image_cache_hits_total", "Encoded-image cache hits.", "counter", double(ic.hits));
    gauge("moondream_image_cache_misses_total", "Encoded-image cache misses.", "counter", double(ic.misses));
    gauge("moondream_image_cache_entries", "Encoded images held.", "gauge", double(ic.entries));
    gauge("moondream_image_cache_bytes", "Bytes of encoded images held.", "gauge", double(ic.bytes));
    gauge("moondream_response_cache_hits_total", "Response cache hits.", "counter", double(rc.hits));
    gauge("moondream_response_cache_misses_total", "Response cache misses.", "counter", double(rc.misses));
    gauge("moondream_response_cache_entries", "Responses held.", "gauge", double(rc.entries));
    gauge("moondream_queue_depth", "Requests waiting for an inference slot.", "gauge", double(queue_->depth()));
    gauge("moondream_queue_capacity", "Requests that may wait before 503s.", "gauge", double(queue_->capacity()));
    gauge("moondream_worker_busy", "1 while any request runs.", "gauge", queue_->busy() ? 1 : 0);
    // The names autoscalers already scale on (vLLM's num_requests_running /
    // _waiting, llama.cpp's requests_processing / _deferred).
    gauge("moondream_num_requests_running", "Requests running (in the decode batch or being prefilled).", "gauge",
          double(queue_->running()));
    gauge("moondream_num_requests_waiting", "Requests waiting for a slot.", "gauge", double(queue_->depth()));
    gauge("moondream_requests_processing", "Requests running (llama.cpp's name).", "gauge", double(queue_->running()));
    gauge("moondream_requests_deferred", "Requests waiting (llama.cpp's name).", "gauge", double(queue_->depth()));
    gauge("moondream_max_batch", "Requests that may run at once (performance.max_batch).", "gauge",
          double(queue_->max_running()));
    // KV memory (performance.kv_cache_mb): cached image prefixes plus what
    // running requests reserved. usage_perc as vLLM's kv_cache_usage_perc (0-1).
    const double kv_budget = double(caches_.kv.max_bytes()), kv_used = double(caches_.kv.used());
    gauge("moondream_kv_cache_budget_bytes", "KV cache budget (performance.kv_cache_mb).", "gauge", kv_budget);
    gauge("moondream_kv_cache_used_bytes", "KV bytes of cached images and running requests.", "gauge", kv_used);
    gauge("moondream_kv_cache_peak_bytes", "Most KV bytes in use at once since the start.", "gauge",
          double(caches_.kv.peak()));
    gauge("moondream_kv_cache_usage_perc", "KV budget in use, 0-1 (vLLM's kv_cache_usage_perc).", "gauge",
          kv_budget > 0 ? kv_used / kv_budget : 0.0);
    gauge("moondream_kv_budget_waits_total", "Times the next request waited for KV budget.", "counter",
          double(queue_->kv_waits.load()));
    gauge("moondream_kv_budget_refused_total", "Requests answered 503 because the KV budget was held.", "counter",
          double(queue_->kv_refused.load()));
    if (p->model) {
      const DecodeBatcher::Stats bs = p->model->batcher->stats();
      std::vector<double> sizes;
      for (size_t n = 1; n < bs.steps_of_size.size(); ++n) sizes.push_back(double(n));
      Histogram batch_size(sizes);
      for (size_t n = 1; n < bs.steps_of_size.size(); ++n) batch_size.observe(double(n), bs.steps_of_size[n]);
      o += "# HELP moondream_decode_batch_size Sequences advanced by one decode step (one pass over the weights).\n"
           "# TYPE moondream_decode_batch_size histogram\n";
      batch_size.render(&o, "moondream_decode_batch_size", "");
      gauge("moondream_decode_steps_between_layers_total",
            "Decode steps run between the layers of an image encoding or a prompt.", "counter", double(bs.yields));
    }
    gauge("moondream_requests_cancelled_total", "Generations stopped because the client left.", "counter",
          double(queue_->cancelled.load()));
    gauge("moondream_model_load_seconds", "Seconds the active model took to load.", "gauge",
          p->model ? p->model->load_seconds : 0.0);
    gauge("moondream_rss_bytes", "Resident memory of the server.", "gauge", double(rss_bytes()));
    gauge("moondream_uptime_seconds", "Seconds since the server started.", "gauge", seconds_since(started_));
    o += "# HELP moondream_info Active profile and model.\n# TYPE moondream_info gauge\n";
    o += "moondream_info{profile=\"" + prom_label(p->name) + "\",model=\"" + prom_label(p->cfg.model_name) +
         "\",version=\"" + kServerVersion + "\"} 1\n";
    res.set_content(o, "text/plain; version=0.0.4; charset=utf-8");
  });
}

std::string Server::config_json() const {
  auto p = active();
  json models = json::array();
  for (const auto& n : list_profiles(opts_.configs_dir)) models.push_back(n);
  if (std::find(models.begin(), models.end(), p->name) == models.end()) models.push_back(p->name);
  json j = {{"active_model", p->name},
            {"models", models},
            {"configs_dir", opts_.configs_dir},
            {"config", json::parse(config_to_json(p->cfg))},
            {"model",
             {{"name", p->cfg.model_name},
              {"path", p->model ? p->model->dir : ""},
              {"source", p->cfg.model_path},
              {"revision", p->cfg.revision},
              {"ready", p->model != nullptr},
              {"load_seconds", p->model ? p->model->load_seconds : 0.0}}}};
  return dumps(j);
}

void Server::get_config(const httplib::Request& req, httplib::Response& res) {
  guarded(req, res, true, [&] { res.set_content(config_json(), "application/json"); });
}

void Server::patch_config(const httplib::Request& req, const std::string& raw_body, httplib::Response& res) {
  guarded(req, res, true, [&] {
    const std::string name = parse_profile_switch(raw_body);
    const auto names = list_profiles(opts_.configs_dir);
    if (std::find(names.begin(), names.end(), name) == names.end())
      throw ApiError(404, "profile_not_found",
                     "no profile named '" + name + "' in " + opts_.configs_dir + " (see GET /api/v1/config)");
    std::lock_guard<std::mutex> switch_lock(switch_m_);
    const std::string path = (std::filesystem::path(opts_.configs_dir) / (name + ".json")).string();
    std::vector<std::string> warnings;
    ServerConfig cfg;
    try {
      cfg = load_server_config(path, &warnings);
      apply_overrides(&cfg, opts_.overrides);
      validate(cfg, path);
    } catch (const Error& e) {
      throw ApiError(400, "invalid_config", e.what());
    }
    for (const auto& w : warnings) spdlog::warn("{}", w);
    if (cfg.server.host != startup_cfg_.server.host || cfg.server.port != startup_cfg_.server.port ||
        cfg.server.backend_port != startup_cfg_.server.backend_port)
      warnings.push_back("server.host/port/backend_port apply at startup only; kept " + startup_cfg_.server.host + ":" +
                         std::to_string(startup_cfg_.server.port));
    if (cfg.threads != startup_cfg_.threads)
      warnings.push_back("threads applies at startup only; kept " + std::to_string(startup_cfg_.threads));
    auto cur = active();
    auto next = std::make_shared<Profile>();
    next->name = name;
    next->path = path;
    next->cfg = cfg;
    bool reloaded = false;
    if (cur->model && cur->model->source == cfg.model_path && cur->model->revision == cfg.revision &&
        cur->model->quantization == cfg.performance.quantization && cur->model->kv_cache == cfg.performance.kv_cache) {
      next->model = cur->model;
    } else {
      spdlog::info("profile {}: loading model {} (revision {})", name, cfg.model_path, cfg.revision);
      try {
        next->model = load_model(cfg.model_path, cfg.revision, startup_cfg_.threads, cfg.performance.quantization,
                                 cfg.tokenizer, cfg.revision_profile, cfg.performance.kv_cache);
      } catch (const Error& e) {
        throw ApiError(500, "model_load_failed", std::string(e.what()) + "; profile '" + cur->name + "' stays active",
                       "server_error");
      }
      reloaded = true;
    }
    try {
      check_kv_budget(cfg.performance.kv_cache_mb, *next->model->model);
    } catch (const Error& e) {
      throw ApiError(400, "invalid_config", std::string(e.what()) + "; profile '" + cur->name + "' stays active");
    }
    if (reloaded) {
      // Entries keyed by the old model can never hit again.
      caches_.images.clear();
      caches_.responses.clear();
      caches_.raw_images.clear();
    }
    {
      std::lock_guard<std::mutex> lock(active_m_);
      active_ = next;
    }
    apply_runtime_settings(*next);
    spdlog::info("active profile: {} (model {}{})", name, cfg.model_name, reloaded ? ", reloaded" : "");
    json out = json::parse(config_json());
    out["model_reloaded"] = reloaded;
    out["warnings"] = warnings;
    set_json(res, 200, out);
  });
}

// ---- inference requests -------------------------------------------------------

void Server::prepare_image(Job& job, const std::string& image_url, const Profile& p, RequestInfo& inf) {
  const ServerConfig& c = p.cfg;
  ImageFetchOptions fo;
  fo.allow_urls = c.server.allow_image_urls;
  fo.allow_private = c.server.allow_private_image_urls;
  fo.max_bytes = c.limits.max_image_bytes;
  fo.timeout_s = c.limits.image_url_timeout_s;
  const std::string bytes = image_bytes_from_url(image_url, fo);

  const LoadedModel& lm = *p.model;
  const bool img_cache = c.performance.image_caching;
  const bool resp_cache = c.performance.response_caching && job.params.deterministic();
  job.image_caching = img_cache;
  job.response_caching = resp_cache;
  job.memory_management = c.performance.memory_management;
  inf.image_cache = img_cache ? "miss" : "off";

  Key128 raw;
  if (img_cache || resp_cache) {
    raw = Hasher().add("raw-v1").add_int(int64_t(lm.id)).add_int(c.image_processing.size).add(bytes).finish();
    if (auto k = caches_.raw_images.get(raw, false)) {
      job.image.key = *k;
      if (img_cache) job.image.encoded = caches_.images.get(*k, false);
      if (job.image.encoded) return;  // no decode, no vision, no prefix
      if (resp_cache && caches_.responses.get(response_key(lm.id, *k, job.params), false)) return;
    }
  }

  const auto t0 = Clock::now();
  RgbImage img;
  try {
    img = decode_image(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()),
                       c.limits.max_image_pixels);
    img = downscale(img, c.image_processing.size);
  } catch (const Error& e) {
    const std::string msg = e.what();
    throw bad_request(msg.find("exceeds the limit") != std::string::npos ? "image_too_large" : "invalid_image", msg);
  }
  job.image.decode_image_s = seconds_since(t0);
  const CropParams cp = lm.model->crop_params();
  Hasher h;
  h.add("image-v1").add_int(int64_t(lm.id));
  h.add_int(cp.crop_size).add_int(cp.patch_size).add_int(cp.overlap_margin).add_int(cp.max_crops);
  h.add_int(c.image_processing.size).add_int(img.width).add_int(img.height);
  h.add(img.pixels.data(), img.pixels.size());
  job.image.key = h.finish();
  if (img_cache || resp_cache) caches_.raw_images.put(raw, std::make_shared<Key128>(job.image.key), 1);
  if (img_cache) job.image.encoded = caches_.images.get(job.image.key, false);
  if (!job.image.encoded) job.image.pixels = std::move(img);
}

std::shared_ptr<const JobOutcome> Server::cached_response(Job& job, const Profile& p) {
  if (!job.response_caching) return nullptr;
  job.response_key = response_key(p.model->id, job.image.key, job.params);
  return caches_.responses.get(job.response_key, true);
}

void Server::submit(const std::shared_ptr<Job>& job) {
  if (stopping_) throw ApiError(503, "shutting_down", "the server is shutting down");
  if (!queue_->try_push(job)) {
    ApiError e(
        503, "queue_full",
        "the server is busy: " + std::to_string(queue_->capacity()) + " requests are already waiting; retry later");
    throw e;
  }
}

namespace {

// How a finished job is presented: the Moondream API or OpenAI chat completions.
struct Presenter {
  // Complete JSON body of a non-streaming response.
  std::function<json(const JobOutcome&, double total_s)> body;
  // SSE text sent before any chunk (may be empty).
  std::string start;
  std::function<std::string(const std::string& chunk)> chunk;
  std::function<std::string(const std::string& reasoning_json)> reasoning;  // may be unset
  std::function<std::string(const JobOutcome&, double total_s)> end;
  std::function<std::string(const ApiError&)> error;
};

}  // namespace

// Runs a prepared job (or answers it from the response cache) and writes the
// response, streaming or not.
static void run_and_respond(const std::shared_ptr<Job>& job, const std::shared_ptr<RequestInfo>& inf,
                            const Presenter& pr, httplib::Response& res,
                            const std::function<std::shared_ptr<const JobOutcome>()>& cached,
                            const std::function<void(const std::shared_ptr<Job>&)>& submit,
                            const std::function<void(const JobOutcome&)>& record);

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

static void run_and_respond(const std::shared_ptr<Job>& job, const std::shared_ptr<RequestInfo>& inf,
                            const Presenter& pr, httplib::Response& res,
                            const std::function<std::shared_ptr<const JobOutcome>()>& cached,
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
