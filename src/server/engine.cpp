#include "server/engine.h"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <algorithm>
#include <cstdlib>
#include <filesystem>

#include <spdlog/spdlog.h>

#include "server/api_error.h"
#include "server/hub.h"
#include "tensor/error.h"

namespace md::server {
namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

int env_int(const char* name) {
  const char* v = std::getenv(name);
  return v ? std::atoi(v) : 0;
}

}  // namespace

const char* task_name(Task t) {
  switch (t) {
    case Task::Caption: return "caption";
    case Task::Query: return "query";
    case Task::Chat: return "chat";
    case Task::Detect: return "detect";
    case Task::Point: return "point";
    case Task::Gaze: return "gaze";
  }
  return "?";
}

TaskRequest task_request(const JobParams& p, const EncodedImage* image) {
  TaskRequest rq;
  switch (p.task) {
    case Task::Caption: rq.kind = TaskKind::kCaption; break;
    case Task::Query: rq.kind = TaskKind::kQuery; break;
    case Task::Chat: rq.kind = TaskKind::kChat; break;
    case Task::Detect: rq.kind = TaskKind::kDetect; break;
    case Task::Point: rq.kind = TaskKind::kPoint; break;
    case Task::Gaze: rq.kind = TaskKind::kGaze; break;
  }
  rq.image = image;
  rq.length = p.length;
  rq.text = p.text;
  rq.history = p.history;
  rq.reasoning = p.reasoning;
  rq.spatial_refs = p.spatial_refs;
  rq.eye_x = p.eye_x;
  rq.eye_y = p.eye_y;
  rq.max_tokens = p.max_tokens;
  rq.max_objects = p.max_objects;
  rq.sampling.temperature = p.temperature;
  rq.sampling.top_p = p.top_p;
  rq.sampling.seed = p.seed;
  return rq;
}

std::shared_ptr<LoadedModel> load_model(const std::string& source, const std::string& revision, int threads,
                                        const std::string& quantization, const std::string& tokenizer,
                                        const std::string& revision_profile, const std::string& kv_cache) {
  static std::atomic<uint64_t> next_id{1};
  const auto t0 = std::chrono::steady_clock::now();
  auto lm = std::make_shared<LoadedModel>();
  lm->source = source;
  lm->revision = revision;
  lm->threads = threads;
  lm->quantization = quantization;
  lm->kv_cache = kv_cache;
  std::error_code ec;
  if (std::filesystem::is_directory(source, ec)) {
    lm->dir = source;
  } else if (is_hub_repo_id(source)) {
    HubOptions ho;
    lm->dir = resolve_model(source, revision, ho);
  } else {
    throw Error("model: '" + source + "' is not a directory (nor a hub repo id such as vikhyatk/moondream2)");
  }
  LoadOptions lo;
  lo.threads = threads;
  if (!parse_quantization(quantization, &lo.quantization))
    throw Error("performance.quantization must be none, int8 or q4, got '" + quantization + "'");
  if (!parse_kv_format(kv_cache, &lo.kv_cache))
    throw Error("performance.kv_cache must be bf16, f32 or int8, got '" + kv_cache + "'");
  if (!parse_revision_choice(revision_profile, &lo.revision))
    throw Error("revision_profile must be auto, 2025-01-09 or 2025-06-21, got '" + revision_profile + "'");
  lo.tokenizer_path = tokenizer_for_model(lm->dir, tokenizer, revision_profile);
  lm->model = Moondream::load(lm->dir, lo);
  const RevisionProfile& rev = lm->model->revision();
  spdlog::info("revision profile {} ({}); tokenizer {}", rev.name, rev.detected_by, lm->model->tokenizer_path());
  const ModelWeights& w = lm->model->weights();
  if (!w.quant_cache_path.empty() && !w.quant_cache_hit) {
    if (w.quant_cache_error.empty())
      spdlog::info("quantised weights ({}) saved to {} for faster loads", quantization, w.quant_cache_path);
    else
      spdlog::warn("quantised weights ({}) not cached: {}", quantization, w.quant_cache_error);
  }
  lm->batcher = std::make_unique<DecodeBatcher>(lm->model->text(), TextModel::kMaxBatchRows);
  lm->id = next_id++;
  lm->load_seconds = seconds_since(t0);
  return lm;
}

// ---------------------------------------------------------------------------

void StreamChannel::push(std::string chunk) {
  {
    std::lock_guard<std::mutex> lock(m_);
    chunks_.emplace_back(std::move(chunk), false);
  }
  cv_.notify_all();
}

void StreamChannel::push_reasoning(std::string json_text) {
  {
    std::lock_guard<std::mutex> lock(m_);
    chunks_.emplace_back(std::move(json_text), true);
  }
  cv_.notify_all();
}

void StreamChannel::finish(std::shared_ptr<JobOutcome> outcome) {
  {
    std::lock_guard<std::mutex> lock(m_);
    outcome_ = std::move(outcome);
    done_ = true;
  }
  cv_.notify_all();
}

void StreamChannel::start() {
  {
    std::lock_guard<std::mutex> lock(m_);
    started_ = true;
  }
  cv_.notify_all();
}

void StreamChannel::wait_started() {
  std::unique_lock<std::mutex> lock(m_);
  cv_.wait(lock, [&] { return started_ || done_; });
  if (!started_ && error_) std::rethrow_exception(error_);
}

void StreamChannel::fail(std::exception_ptr e) {
  {
    std::lock_guard<std::mutex> lock(m_);
    error_ = std::move(e);
    done_ = true;
  }
  cv_.notify_all();
}

bool StreamChannel::next(std::string* chunk, bool* is_reasoning) {
  std::unique_lock<std::mutex> lock(m_);
  cv_.wait(lock, [&] { return !chunks_.empty() || done_; });
  if (!chunks_.empty()) {
    *chunk = std::move(chunks_.front().first);
    if (is_reasoning) *is_reasoning = chunks_.front().second;
    chunks_.pop_front();
    return true;
  }
  return false;
}

std::shared_ptr<JobOutcome> StreamChannel::wait() {
  std::unique_lock<std::mutex> lock(m_);
  cv_.wait(lock, [&] { return done_; });
  if (error_) std::rethrow_exception(error_);
  return outcome_;
}

// ---------------------------------------------------------------------------

StopFilter::StopFilter(std::vector<std::string> stops) {
  for (auto& s : stops)
    if (!s.empty()) stops_.push_back(std::move(s));
}

std::string StopFilter::push(const std::string& chunk, bool* hit) {
  *hit = false;
  if (hit_) return {};
  if (stops_.empty()) return chunk;
  pending_ += chunk;
  size_t first = std::string::npos;
  for (const auto& s : stops_) first = std::min(first, pending_.find(s));
  if (first != std::string::npos) {
    std::string out = pending_.substr(0, first);
    pending_.clear();
    hit_ = *hit = true;
    return out;
  }
  size_t hold = 0;
  for (const auto& s : stops_) {
    for (size_t l = std::min(s.size() - 1, pending_.size()); l > hold; --l) {
      if (pending_.compare(pending_.size() - l, l, s, 0, l) == 0) {
        hold = l;
        break;
      }
    }
  }
  std::string out = pending_.substr(0, pending_.size() - hold);
  pending_.erase(0, pending_.size() - hold);
  return out;
}

std::string StopFilter::finish() {
  if (hit_) return {};
  return std::exchange(pending_, {});
}

Key128 response_key(uint64_t model_id, const Key128& image_key, const JobParams& p) {
  Hasher h;
  h.add("response-v1").add_int(int64_t(model_id)).add(&image_key, sizeof image_key);
  h.add_int(int(p.task)).add_int(int(p.length)).add(p.text);
  h.add_int(int64_t(p.history.size()));
  for (const auto& [q, a] : p.history) h.add(q).add(a);
  h.add_int(p.task == Task::Detect || p.task == Task::Point ? p.max_objects : p.max_tokens);
  h.add_int(p.has_image).add_int(p.reasoning).add_int(int64_t(p.spatial_refs.size()));
  for (const auto& r : p.spatial_refs)
    for (double v : r) h.add(&v, sizeof v);
  h.add(&p.eye_x, sizeof p.eye_x).add(&p.eye_y, sizeof p.eye_y);
  h.add_int(int64_t(p.stop.size()));
  for (const auto& s : p.stop) h.add(s);
  return h.finish();
}

// ---------------------------------------------------------------------------

InferenceQueue::InferenceQueue(Caches* caches, size_t capacity, int max_running)
    : caches_(caches), capacity_(capacity), max_running_(std::clamp(max_running, 1, kMaxWorkers)) {
  job_delay_ms_ = env_int("MOONDREAM_SERVER_TEST_JOB_DELAY_MS");
  chunk_delay_ms_ = env_int("MOONDREAM_SERVER_TEST_CHUNK_DELAY_MS");
  encode_delay_ms_ = env_int("MOONDREAM_SERVER_TEST_ENCODE_DELAY_MS");
  // Threads for the most jobs a profile may run at once; max_running_ of
  // them take jobs (a profile switch changes it without new threads).
  for (int i = 0; i < kMaxWorkers; ++i) workers_.emplace_back([this] { run(); });
}

InferenceQueue::~InferenceQueue() { stop(); }

bool InferenceQueue::try_push(std::shared_ptr<Job> job) {
  // The KV bytes it will reserve (its prompt was checked before it came here).
  const Moondream& m = *job->model->model;
  const bool has_image = job->params.has_image;
  job->kv_own_bytes = kv_block_bytes(m, task_kv_positions(m, task_request(job->params, nullptr), has_image));
  job->kv_prefix_bytes = has_image && !job->image.encoded ? kv_block_bytes(m, m.config().text.prefix_attn) : 0;
  {
    std::lock_guard<std::mutex> lock(m_);
    if (stopping_ || q_.size() >= capacity_) return false;
    job->enqueued = std::chrono::steady_clock::now();
    q_.push_back(std::move(job));
  }
  cv_.notify_all();
  return true;
}

size_t InferenceQueue::depth() const {
  std::lock_guard<std::mutex> lock(m_);
  return q_.size();
}

size_t InferenceQueue::capacity() const {
  std::lock_guard<std::mutex> lock(m_);
  return capacity_;
}

void InferenceQueue::set_capacity(size_t n) {
  std::lock_guard<std::mutex> lock(m_);
  capacity_ = std::max<size_t>(1, n);
}

void InferenceQueue::set_max_running(int n) {
  {
    std::lock_guard<std::mutex> lock(m_);
    max_running_ = std::clamp(n, 1, kMaxWorkers);
  }
  cv_.notify_all();
}

int InferenceQueue::max_running() const {
  std::lock_guard<std::mutex> lock(m_);
  return max_running_;
}

double InferenceQueue::estimated_wait_s() const {
  // Jobs ahead, served max_running at a time.
  return avg_job_s_.load() * double(depth() + size_t(running())) / double(max_running());
}

void InferenceQueue::stop() {
  {
    std::lock_guard<std::mutex> lock(m_);
    stopping_ = true;
  }
  cv_.notify_all();
  for (std::thread& w : workers_)
    if (w.joinable()) w.join();
}

void InferenceQueue::run() {
  for (;;) {
    std::shared_ptr<Job> job;
    {
      std::unique_lock<std::mutex> lock(m_);
      // First come, first served: the head runs when a slot and its KV bytes
      // are free. (Polled as well: a cached image that a finished HTTP
      // request stops holding becomes evictable without a notification.)
      const auto ready = [&] {
        return (stopping_ && q_.empty()) || (!q_.empty() && running_ < max_running_ && admit_locked(*q_.front()));
      };
      while (!ready()) cv_.wait_for(lock, std::chrono::milliseconds(50));
      if (q_.empty()) return;  // stopping, nothing left
      job = std::move(q_.front());
      q_.pop_front();
      ++running_;
    }
    const auto t0 = std::chrono::steady_clock::now();
    try {
      execute(*job);
    } catch (...) {
      ++failed;
      job->channel->fail(std::current_exception());
    }
    const double s = seconds_since(t0);
    avg_job_s_ = 0.8 * avg_job_s_.load() + 0.2 * s;
#if defined(__GLIBC__)
    if (job->memory_management) malloc_trim(0);
#endif
    caches_->kv.release(job->kv_held);
    job.reset();
    {
      std::lock_guard<std::mutex> lock(m_);
      --running_;
    }
    cv_.notify_all();  // a waiting job may run now
  }
}

bool InferenceQueue::admit_locked(Job& job) {
  const size_t bytes = job.kv_own_bytes + job.kv_prefix_bytes;
  if (caches_->kv.try_reserve(bytes)) {
    job.kv_held = bytes;
    head_waiting_for_kv_ = false;
    return true;
  }
  if (running_ == 0) {
    // Nothing running will release anything: what fills the budget is held
    // by requests still waiting (their cached images). Answer this one 503.
    job.kv_refused = true;
    head_waiting_for_kv_ = false;
    return true;
  }
  if (!head_waiting_for_kv_) ++kv_waits;
  head_waiting_for_kv_ = true;
  return false;
}

std::shared_ptr<const EncodedImage> InferenceQueue::encode_once(Job& job, bool* shared) {
  std::promise<std::shared_ptr<const EncodedImage>> mine;
  Encoding encoding;
  {
    std::lock_guard<std::mutex> lock(flights_m_);
    auto it = flights_.find(job.image.key);
    *shared = it != flights_.end();
    if (*shared)
      encoding = it->second;
    else
      flights_.emplace(job.image.key, mine.get_future().share());
  }
  try {
    if (*shared) {
      ++encodes_shared;
      return encoding.get();  // rethrows the encoding's error
    }
    std::shared_ptr<const EncodedImage> enc;
    try {
      auto e = std::make_shared<EncodedImage>();
      if (encode_delay_ms_ > 0) std::this_thread::sleep_for(std::chrono::milliseconds(encode_delay_ms_));
      // On the compute thread, between other jobs' decode steps.
      job.model->batcher->run([&] { *e = job.model->model->encode_image(job.image.pixels); });
      ++encodes;
      enc = e;
      // Into the cache before the flight lands: a job that comes later finds it there.
      if (job.image_caching) caches_->images.put(job.image.key, enc, enc->cache.bytes());
      mine.set_value(enc);
    } catch (...) {
      mine.set_exception(std::current_exception());
      std::lock_guard<std::mutex> lock(flights_m_);
      flights_.erase(job.image.key);
      throw;
    }
    std::lock_guard<std::mutex> lock(flights_m_);
    flights_.erase(job.image.key);
    return enc;
  } catch (const Error& e) {
    throw bad_request("invalid_image", e.what());
  }
}

void InferenceQueue::execute(Job& job) {
  auto out = std::make_shared<JobOutcome>();
  out->queue_s = seconds_since(job.enqueued);
  const auto release_prefix = [&] {
    const size_t b = std::min(job.kv_prefix_bytes, job.kv_held);
    job.kv_held -= b;
    caches_->kv.release(b);
    caches_->kv.note();
  };
  StreamChannel& ch = *job.channel;
  if (ch.cancelled) {  // the client left while the job waited
    out->finish_reason = "cancelled";
    ++cancelled;
    ch.finish(out);
    return;
  }
  if (job.kv_refused) {
    ++kv_refused;
    throw ApiError(503, "kv_budget_full",
                   "the KV cache budget (performance.kv_cache_mb) is held by other requests; retry later");
  }
  ch.start();
  if (job_delay_ms_ > 0) std::this_thread::sleep_for(std::chrono::milliseconds(job_delay_ms_));

  const Moondream& m = *job.model->model;
  DecodeBatcher& compute = *job.model->batcher;
  const JobParams& p = job.params;

  // The encoded image: pinned by the HTTP thread, cached, or encoded now.
  std::shared_ptr<const EncodedImage> enc = job.image.encoded;
  if (p.has_image && !enc && job.image_caching) enc = caches_->images.get(job.image.key, false);
  bool hit = enc != nullptr;
  if (p.has_image && !enc) {
    bool shared = false;
    enc = encode_once(job, &shared);
    // Cached (by this job or the one it shared with), the prefix counts in
    // the cache's bytes instead of this job's.
    if (job.image_caching && caches_->images.get(job.image.key, false) == enc) release_prefix();
    hit = shared;
  } else if (hit) {
    release_prefix();  // found in the cache after all: no prefix of its own
  }
  if (job.image_caching && p.has_image) {
    hit ? caches_->images.count_hit() : caches_->images.count_miss();
    out->image_cache = hit ? "hit" : "miss";
  }
  job.image.pixels = RgbImage{};  // not needed any more
  job.image.encoded.reset();
  out->image_tokens = enc ? enc->cache.length : 0;
  Timings t;
  t.decode_image_s = job.image.decode_image_s;
  if (enc && !hit) {
    t.vision_s = enc->timings.vision_s;
    t.prefill_s = enc->timings.prefill_s;
  }

  {
    StopFilter filter(p.stop);
    std::string collected;
    bool stopped = false;
    auto emit = [&](const std::string& piece) {
      if (piece.empty()) return;
      collected += piece;
      if (job.stream) ch.push(piece);
    };
    TaskCallbacks cb;
    auto last_piece = std::chrono::steady_clock::now();
    cb.on_chunk = [&](const std::string& chunk) {
      const auto now = std::chrono::steady_clock::now();
      if (out->first_token_s < 0)
        out->first_token_s = std::chrono::duration<double>(now - job.enqueued).count();
      else
        out->inter_token_s.push_back(std::chrono::duration<double>(now - last_piece).count());
      last_piece = now;
      if (chunk_delay_ms_ > 0) std::this_thread::sleep_for(std::chrono::milliseconds(chunk_delay_ms_));
      bool stop_hit = false;
      emit(filter.push(chunk, &stop_hit));
      if (stop_hit) {
        stopped = true;
        return false;
      }
      return !ch.cancelled.load();
    };
    cb.on_reasoning = [&](const Reasoning& r) {
      if (job.stream)
        ch.push_reasoning(reasoning_json(r).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
    };
    TaskResult r;
    try {
      r = run_task(m, task_request(p, enc.get()), cb, &compute);
    } catch (const TaskError& e) {
      throw task_error(e);
    }
    const bool text_task = p.task == Task::Caption || p.task == Task::Query || p.task == Task::Chat;
    if (text_task && !stopped && r.finish_reason != "cancelled") emit(filter.finish());
    out->text = text_task && (stopped || !p.stop.empty()) ? collected : r.text;
    out->tokens = r.tokens;
    out->objects = r.objects;
    out->points = r.points;
    out->gaze = r.gaze;
    out->reasoning = r.reasoning;
    out->prompt_tokens = r.prompt_tokens();
    out->finish_reason = stopped ? "stop" : text_task ? r.finish_reason : "stop";
    t.prefill_s += r.timings.prefill_s;
    t.decode_s = r.timings.decode_s;
    t.decode_tokens = r.timings.decode_tokens;
  }
  out->timings = t;
  if (out->finish_reason == "cancelled") {
    ++cancelled;
  } else {
    ++completed;
    if (job.response_caching && p.deterministic()) {
      out->response_cache = "miss";
      caches_->responses.put(job.response_key, out, out->bytes());
    }
  }
  ch.finish(out);
}

}  // namespace md::server
