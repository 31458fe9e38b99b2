#include "server/server.h"

#include <unistd.h>

#include <algorithm>
#include <filesystem>

#include <httplib.h>
#include <spdlog/spdlog.h>

#include "server/api_error.h"
#include "server/http_server.h"
#include "server/image_input.h"
#include "server/wire.h"
#include "tensor/error.h"
#include "tensor/parallel.h"

namespace md::server {

const char* const kServerVersion = "0.1.0";

using nlohmann::json;

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

}  // namespace md::server
