// The admin side: /health (both ports), and on the backend port the profile
// switch (GET/PATCH /api/v1/config) and Prometheus /metrics.
#include <filesystem>

#include <httplib.h>
#include <spdlog/spdlog.h>

#include "server/process.h"
#include "server/requests.h"
#include "server/server.h"
#include "server/wire.h"
#include "tensor/error.h"
#include "tensor/parallel.h"

namespace md::server {

using nlohmann::json;

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
      {"kv_budget",
       {{"budget_bytes", caches_.kv.max_bytes()},
        {"used_bytes", caches_.kv.used()},
        {"peak_bytes", caches_.kv.peak()}}},
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
    gauge("moondream_image_encodes_total", "Images run through the vision encoder and the prefix.", "counter",
          double(queue_->encodes.load()));
    gauge("moondream_image_encodes_shared_total",
          "Requests that took the encoding another request was making of the same image.", "counter",
          double(queue_->encodes_shared.load()));
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
      gauge("moondream_decode_step_seconds_total", "Compute thread's time in decode steps (with their logits).",
            "counter", bs.step_seconds);
      gauge("moondream_prefill_seconds_total",
            "Compute thread's time encoding images and prefilling prompts (without the steps run between their "
            "layers).",
            "counter", bs.work_seconds);
      gauge("moondream_decode_rows_total", "Sequence positions advanced by decode steps.", "counter", double(bs.rows));
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

}  // namespace md::server
