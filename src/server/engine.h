#pragma once
// The inference side of moondream-server: loaded models, the encoded-image and
// response caches, and a pool of job threads fed by a bounded queue. Up to
// performance.max_batch jobs run at once; each model's DecodeBatcher runs
// their computations on one compute thread (every core, one OpenMP team),
// their decode steps together.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <exception>
#include <functional>
#include <future>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "model/decode_batcher.h"
#include "model/moondream.h"
#include "model/tasks.h"
#include "server/cache.h"
#include "server/kv_budget.h"

namespace md::server {

struct LoadedModel {
  std::unique_ptr<Moondream> model;
  // Where jobs on this model compute (declared after `model`: stopped first).
  std::unique_ptr<DecodeBatcher> batcher;
  std::string source;  // model_path as configured (directory or hub repo id)
  std::string dir;     // the local directory it was loaded from
  std::string revision;
  std::string quantization = "none";  // "none", "int8" or "q4"
  std::string kv_cache = "bf16";      // "bf16", "f32" or "int8"
  int threads = 0;
  uint64_t id = 0;  // unique per load: cache keys never mix models
  double load_seconds = 0;
  std::string fallback_from;  // the source that failed when this is the fallback model
  std::string fallback_reason;
};

// Resolves `source` (a directory, or a hub repo id downloaded into the hub
// cache) and loads it. Throws md::Error.
// `quantization` is the config's performance.quantization, normalised.
// `tokenizer` and `revision_profile`: the config keys of the same names.
std::shared_ptr<LoadedModel> load_model(const std::string& source, const std::string& revision, int threads,
                                        const std::string& quantization = "none", const std::string& tokenizer = "",
                                        const std::string& revision_profile = "auto",
                                        const std::string& kv_cache = "bf16");

enum class Task { Caption, Query, Chat, Detect, Point, Gaze };
const char* task_name(Task t);

// A request's image, prepared on the HTTP thread: either already encoded (an
// image-cache hit, pinned so eviction cannot take it away) or decoded pixels.
struct ImageInput {
  Key128 key;  // decoded pixels + crop settings + model
  std::shared_ptr<const EncodedImage> encoded;
  RgbImage pixels;
  double decode_image_s = 0;
};

struct JobParams {
  Task task = Task::Caption;
  CaptionLength length = CaptionLength::Normal;
  std::string text;                                          // question (query/chat) or object (detect/point)
  std::vector<std::pair<std::string, std::string>> history;  // chat: earlier (question, answer) turns
  int max_tokens = 512;
  int max_objects = 50;
  float temperature = 0.5f;
  float top_p = 0.3f;
  uint64_t seed = 0;
  std::vector<std::string> stop;
  bool has_image = true;                          // false: a text-only question
  bool reasoning = false;                         // query: grounded reasoning
  std::vector<std::vector<double>> spatial_refs;  // query, point
  double eye_x = 0, eye_y = 0;                    // gaze
  bool deterministic() const {
    return task == Task::Detect || task == Task::Point || task == Task::Gaze || temperature == 0.0f;
  }
};

// The model-level request of a job (image: the encoded one, or null).
TaskRequest task_request(const JobParams& p, const EncodedImage* image);

struct JobOutcome {
  std::string text;
  std::vector<int> tokens;
  std::string finish_reason;  // stop, length, cancelled
  std::vector<DetectedObject> objects;
  std::vector<DetectedPoint> points;
  std::optional<DetectedPoint> gaze;
  std::optional<Reasoning> reasoning;
  int prompt_tokens = 0;  // text prompt tokens
  int image_tokens = 0;   // positions of the encoded image prefix
  Timings timings;
  double queue_s = 0;
  double first_token_s = -1;           // enqueued → first streamed piece (text tasks); -1: none
  std::vector<double> inter_token_s;   // between streamed pieces
  std::string image_cache = "off";     // hit, miss, off
  std::string response_cache = "off";  // hit, miss, off
  int completion_tokens() const { return int(tokens.size()); }
  size_t bytes() const { return 256 + text.size() + tokens.size() * 4 + objects.size() * 32 + points.size() * 16; }
};

// Worker → HTTP thread: streamed chunks, then the outcome (or an error).
class StreamChannel {
 public:
  void push(std::string chunk);
  // The reasoning (as its JSON text), sent before the first answer chunk.
  void push_reasoning(std::string json_text);
  // The job has its slot and KV budget (what may fail before: answered with
  // a real HTTP status, not inside a 200 stream).
  void start();
  // Waits for start() or the end; rethrows an error that came before start.
  void wait_started();
  void finish(std::shared_ptr<JobOutcome> outcome);
  void fail(std::exception_ptr e);
  // Waits for the next chunk (true) or the end (false); on the end, outcome()
  // or error() is set. `timeout` bounds each wait.
  bool next(std::string* chunk, bool* is_reasoning = nullptr);
  std::shared_ptr<JobOutcome> wait();  // rethrows the job's error
  std::shared_ptr<JobOutcome> outcome() const { return outcome_; }
  std::exception_ptr error() const { return error_; }
  std::atomic<bool> cancelled{false};  // the client has gone: stop generating

 private:
  std::mutex m_;
  std::condition_variable cv_;
  std::deque<std::pair<std::string, bool>> chunks_;  // (text, is the reasoning)
  bool started_ = false, done_ = false;
  std::shared_ptr<JobOutcome> outcome_;
  std::exception_ptr error_;
};

// Holds back text that may be the start of a stop sequence; cuts at the first
// stop sequence found.
class StopFilter {
 public:
  explicit StopFilter(std::vector<std::string> stops);
  std::string push(const std::string& chunk, bool* hit);
  std::string finish();

 private:
  std::vector<std::string> stops_;
  std::string pending_;
  bool hit_ = false;
};

struct Caches {
  LruCache<EncodedImage> images{0};
  LruCache<JobOutcome> responses{32u << 20};
  LruCache<Key128> raw_images{4096};  // xxh3 of the image file bytes → image key (1 "byte" each)
  KvBudget kv{&images};               // performance.kv_cache_mb: cached prefixes + running jobs
};

struct Job {
  std::shared_ptr<LoadedModel> model;
  JobParams params;
  ImageInput image;
  bool stream = false;
  bool image_caching = false;
  bool response_caching = false;
  bool memory_management = false;
  Key128 response_key;
  std::chrono::steady_clock::time_point enqueued;
  std::shared_ptr<StreamChannel> channel = std::make_shared<StreamChannel>();
  // KV bytes the job reserves before it runs (kv_budget.h): its own rows,
  // and the image prefix while its image is not encoded; what it holds now.
  size_t kv_own_bytes = 0, kv_prefix_bytes = 0, kv_held = 0;
  bool kv_refused = false;  // could never fit beside what is pinned: answered 503
};

// The key of a deterministic request's response.
Key128 response_key(uint64_t model_id, const Key128& image_key, const JobParams& p);

class InferenceQueue {
 public:
  InferenceQueue(Caches* caches, size_t capacity, int max_running = 1);
  ~InferenceQueue();

  // False when `capacity` jobs are already waiting.
  bool try_push(std::shared_ptr<Job> job);
  size_t depth() const;  // jobs waiting
  size_t capacity() const;
  void set_capacity(size_t n);
  // Jobs that may run at once (performance.max_batch; 1..kMaxWorkers).
  void set_max_running(int n);
  int max_running() const;
  int running() const { return running_.load(); }
  bool busy() const { return running_.load() > 0; }
  static constexpr int kMaxWorkers = TextModel::kMaxBatchRows;
  // Seconds a new job would wait, roughly (for Retry-After).
  double estimated_wait_s() const;
  // Finishes every queued job, then stops the workers.
  void stop();

  // Counters for /metrics. kv_waits: times the head job waited for KV budget;
  // encodes: images run through the vision encoder and prefix; encodes_shared:
  // jobs that took the encoding another job was making of the same image.
  std::atomic<uint64_t> completed{0}, cancelled{0}, failed{0}, kv_waits{0}, kv_refused{0};
  std::atomic<uint64_t> encodes{0}, encodes_shared{0};

 private:
  void run();
  void execute(Job& job);
  // Reserves the head job's KV bytes (with m_ held); false: it must wait.
  bool admit_locked(Job& job);
  // The job's image encoded: by this job, or — when another job is encoding
  // the same image right now — by that one (single flight: identical images
  // sent at once are encoded once). *shared: it was the other's.
  std::shared_ptr<const EncodedImage> encode_once(Job& job, bool* shared);

  using Encoding = std::shared_future<std::shared_ptr<const EncodedImage>>;
  std::mutex flights_m_;
  std::unordered_map<Key128, Encoding, Key128Hash> flights_;  // encodings in progress

  Caches* caches_;
  mutable std::mutex m_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Job>> q_;
  size_t capacity_;
  int max_running_ = 1;
  bool stopping_ = false;
  std::atomic<int> running_{0};
  std::atomic<double> avg_job_s_{1.0};
  bool head_waiting_for_kv_ = false;
  int job_delay_ms_ = 0, chunk_delay_ms_ = 0, encode_delay_ms_ = 0;  // test hooks (environment)
  std::vector<std::thread> workers_;
};

}  // namespace md::server
