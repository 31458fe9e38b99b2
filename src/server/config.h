#pragma once
// moondream-server configuration: the JSON keys users already write for this
// model (model_name, model_path, revision, device, max_tokens, performance,
// server, image_processing, generation_config) plus a few server-only keys
// (server.backend_port/api_key/queue_size/..., limits.*). Unknown keys warn;
// a wrong type or value throws md::Error naming the key, in one line.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace md::server {

struct PerformanceConfig {
  bool image_caching = false;
  bool response_caching = false;
  bool memory_management = false;     // hand freed memory back to the OS after each request
  int cache_max_mb = 1024;            // budget of the encoded-image cache
  std::string quantization = "none";  // normalised: "none", "int8" or "q4"
  std::string kv_cache = "bf16";      // normalised: "bf16", "f32" or "int8"
  // Requests in flight at once (their decode steps share one pass over the
  // weights); more wait in the queue. 1 = one request at a time.
  int max_batch = 8;
  // KV memory of cached image prefixes and running requests together
  // (server/kv_budget.h); a request waits for its share. At least one
  // full-context sequence of the loaded model.
  int kv_cache_mb = 4096;
};

// The spellings users write for performance.quantization / --quantization
// (none, fp32, bf16, int8, q8_0, int4, ...) → "none", "int8" or "q4";
// false for anything else.
bool normalize_quantization(const std::string& in, std::string* out);
// performance.kv_cache / --kv-cache: bf16, bfloat16, f32, fp32, float32,
// int8, i8, q8 → "bf16", "f32" or "int8"; false for anything else.
bool normalize_kv_cache(const std::string& in, std::string* out);

struct HttpConfig {
  std::string host = "127.0.0.1";
  int port = 8080;
  int backend_port = 8000;                // 0 = no backend API
  bool cors_enabled = false;              // CORS headers and preflights only when configured
  std::string api_key;                    // empty = no key needed
  int queue_size = 16;                    // requests waiting for the inference worker
  int http_threads = 32;                  // connections served at once (each waits for its job)
  bool allow_image_urls = false;          // http(s) image_url fetching
  bool allow_private_image_urls = false;  // ... including loopback / private addresses
  bool web_ui = true;                     // the web page at / (and its assets); off: / answers the JSON index
};

struct ImageProcessingConfig {
  int size = 0;      // longest side the image is scaled down to before the crops; 0 = as is
  int quality = 95;  // accepted for compatibility; images are never re-encoded
};

struct GenerationConfig {
  int max_new_tokens = 512;  // default when a request gives no max_tokens
  double temperature = 0.5;
  double top_p = 0.3;
  bool do_sample = true;  // false: greedy unless the request asks for a temperature
};

struct LimitsConfig {
  uint64_t max_body_bytes = 64ull << 20;
  uint64_t max_image_bytes = 32ull << 20;
  uint64_t max_image_pixels = 50'000'000;
  int image_url_timeout_s = 10;
  int max_objects = 50;  // ceiling of detect/point settings.max_objects
  int max_images = 16;   // images in one chat request (only the last one is used)
  // Time a client may take to send its request: no byte for this long while
  // reading it closes the connection; a body not complete by then gets 408.
  int request_timeout_s = 30;
  int idle_timeout_s = 5;  // an idle keep-alive connection is closed after this long
};

struct ServerConfig {
  std::string model_name = "moondream2";
  std::string model_path = "vikhyatk/moondream2";
  std::string revision = "main";
  // tokenizer.json path, directory or hub repo; empty: what the revision needs
  // (the model's own file, or moondream/starmie-v1 for 2025-06-21).
  std::string tokenizer;
  std::string revision_profile = "auto";  // auto, 2025-01-09 or 2025-06-21
  std::string device = "cpu";
  int max_tokens = 2048;  // ceiling of any request's max_tokens
  int threads = 0;        // inference threads, 0 = all cores
  PerformanceConfig performance;
  HttpConfig server;
  ImageProcessingConfig image_processing;
  GenerationConfig generation_config;
  LimitsConfig limits;
};

// Parses and validates config text. `source` names the file in messages.
// Warnings (unknown keys, accepted-but-unused values) go to `warnings`.
ServerConfig parse_server_config(const std::string& json_text, const std::string& source,
                                 std::vector<std::string>* warnings);
ServerConfig load_server_config(const std::string& path, std::vector<std::string>* warnings);

// Command-line values that override every profile's file.
struct ConfigOverrides {
  std::optional<std::string> model_path, revision, host, api_key, tokenizer, revision_profile, quantization, kv_cache;
  std::optional<int> port, backend_port, threads;
  std::optional<bool> web_ui;  // --no-web-ui
};
void apply_overrides(ServerConfig* cfg, const ConfigOverrides& o);
// Checks cross-field constraints after overrides; throws md::Error.
void validate(const ServerConfig& cfg, const std::string& source);

// The effective configuration as JSON text (api_key masked).
std::string config_to_json(const ServerConfig& cfg);

// Profile names: stems of the *.json files in `dir`, sorted.
std::vector<std::string> list_profiles(const std::string& dir);

}  // namespace md::server
