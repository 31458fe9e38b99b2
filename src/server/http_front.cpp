// The HTTP front of both ports: the route table (every endpoint once: it
// registers the handlers, answers 405 with the Allow list, and names the
// endpoint in metrics), transport limits (body size and time), API keys,
// CORS, the access log, and the web page's assets.
#include <limits>

#include <httplib.h>
#include <spdlog/spdlog.h>

#include "server/http_server.h"
#include "server/security.h"
#include "server/server.h"
#include "server/web_ui.h"
#include "server/wire.h"
#include "tensor/error.h"

namespace md::server {

using nlohmann::json;

namespace {

// True when an Accept header asks for JSON rather than a page (API clients
// that GET / for the endpoint list); browsers send text/html.
bool prefers_json(const std::string& accept) {
  return accept.find("application/json") != std::string::npos && accept.find("text/html") == std::string::npos;
}

// A route path ("/v1/models/{id}": a trailing {param} is any non-empty rest)
// as an httplib pattern (a regex; the rest is req.matches[1]).
std::string route_pattern(std::string_view path) {
  const size_t brace = path.find('{');
  std::string out;
  for (char ch : path.substr(0, brace)) {
    if (std::string_view(".+*?()[]{}|^$\\").find(ch) != std::string_view::npos) out += '\\';
    out += ch;
  }
  if (brace != std::string_view::npos) out += "(.+)";
  return out;
}

bool route_matches(std::string_view route, std::string_view path) {
  const size_t brace = route.find('{');
  if (brace == std::string_view::npos) return route == path;
  return path.size() > brace && path.substr(0, brace) == route.substr(0, brace);
}

}  // namespace

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
          if (const std::string allowed = allowed_methods(req.path, backend); !allowed.empty()) {
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
    const Route* route = find_route(req.path, backend);
    const std::string ep = route ? route->path : "other";
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
  using Req = httplib::Request;
  using Res = httplib::Response;
  auto plain = [this](void (Server::*h)(const Req&, Res&)) {
    return [this, h](const Req& req, Res& res, const std::string&) { (this->*h)(req, res); };
  };
  const auto page = plain(&Server::web_page);
  auto task = [this](Task t) {
    return [this, t](const Req& req, Res& res, const std::string& body) { moondream_task(req, body, res, t); };
  };
  // (port, method, path, listed at GET /, handler). The web page needs no
  // API key: it asks for one when the API answers 401.
  route_table_ = {
      {false, "GET", "/", true, page},
      {false, "GET", "/health", true, plain(&Server::health)},
      {false, "GET", "/v1/models", true, plain(&Server::models)},
      {false, "GET", "/v1/models/{id}", false, plain(&Server::models)},
      {false, "POST", "/v1/chat/completions", true,
       [this](const Req& req, Res& res, const std::string& body) { chat_completions(req, body, res); }},
      {false, "POST", "/v1/caption", true, task(Task::Caption)},
      {false, "POST", "/v1/query", true, task(Task::Query)},
      {false, "POST", "/v1/detect", true, task(Task::Detect)},
      {false, "POST", "/v1/point", true, task(Task::Point)},
      {false, "POST", "/v1/gaze", true, task(Task::Gaze)},
      {true, "GET", "/health", true, plain(&Server::health)},
      {true, "GET", "/api/v1/config", true, plain(&Server::get_config)},
      {true, "PATCH", "/api/v1/config", true,
       [this](const Req& req, Res& res, const std::string& body) { patch_config(req, body, res); }},
      {true, "GET", "/metrics", true, plain(&Server::metrics)},
  };
  for (const WebAsset& a : web_assets()) route_table_.push_back({false, "GET", std::string(a.path), false, page});

  common_handlers(*api_, false);
  if (backend_) common_handlers(*backend_, true);
  for (const Route& r : route_table_) {
    httplib::Server* s = r.backend ? backend_.get() : api_.get();
    if (!s) continue;
    const auto& h = r.handler;
    if (r.method == "GET") {
      s->Get(route_pattern(r.path), [h](const Req& req, Res& res) { h(req, res, std::string()); });
      continue;
    }
    // Bodies are read by our own reader: any content type (curl -d sends
    // form-urlencoded), bounded by limits.max_body_bytes.
    auto with = [this, h](const Req& req, Res& res, const httplib::ContentReader& rd) {
      with_body(req, res, rd, [&](const std::string& body) { h(req, res, body); });
    };
    if (r.method == "POST")
      s->Post(route_pattern(r.path), with);
    else
      s->Patch(route_pattern(r.path), with);
  }
}

const Server::Route* Server::find_route(const std::string& path, bool backend) const {
  for (const Route& r : route_table_)
    if (r.backend == backend && route_matches(r.path, path)) return &r;
  return nullptr;
}

std::string Server::allowed_methods(const std::string& path, bool backend) const {
  std::string out;
  for (const Route& r : route_table_)
    if (r.backend == backend && route_matches(r.path, path) && out.find(r.method) == std::string::npos)
      out += (out.empty() ? "" : ", ") + r.method;
  return out;
}

void Server::web_page(const httplib::Request& req, httplib::Response& res) {
  guarded(req, res, false, [&] {
    const bool ui = active()->cfg.server.web_ui;
    if (req.path == "/") res.set_header("Vary", "Accept");
    if (req.path == "/" && (!ui || prefers_json(req.get_header_value("Accept")))) {
      json eps = json::array();
      for (const Route& r : route_table_)
        if (!r.backend && r.listed) eps.push_back(r.method + " " + r.path);
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

}  // namespace md::server
