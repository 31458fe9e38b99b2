#include "server/config.h"

#include "model/revision.h"
#include "model/text.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "tensor/error.h"
#include "tensor/json_text.h"

namespace md::server {
namespace {

using nlohmann::json;

std::string shown(const json& v) {
  std::string s = v.dump();
  if (s.size() > 60) s = s.substr(0, 57) + "...";
  return s;
}

// Walks one JSON object, reading known keys and warning about the rest.
class Section {
 public:
  Section(const json& obj, std::string prefix, const std::string& source, std::vector<std::string>* warnings)
      : obj_(obj), prefix_(std::move(prefix)), source_(source), warnings_(warnings) {}

  [[noreturn]] void fail(const std::string& key, const std::string& what, const json& got) const {
    throw Error("config " + source_ + ": " + prefix_ + key + " " + what + " (got " + shown(got) + ")");
  }
  void warn(const std::string& msg) const {
    if (warnings_) warnings_->push_back("config " + source_ + ": " + msg);
  }
  std::string name(const std::string& key) const { return prefix_ + key; }

  const json* get(const std::string& key) {
    known_.insert(key);
    auto it = obj_.find(key);
    if (it == obj_.end() || it->is_null()) return nullptr;
    return &*it;
  }

  void read(const std::string& key, bool* out) {
    if (const json* v = get(key)) {
      if (!v->is_boolean()) fail(key, "must be true or false", *v);
      *out = v->get<bool>();
    }
  }
  void read(const std::string& key, std::string* out, bool allow_empty = false) {
    if (const json* v = get(key)) {
      if (!v->is_string()) fail(key, "must be a string", *v);
      std::string s = v->get<std::string>();
      if (s.empty() && !allow_empty) fail(key, "must not be empty", *v);
      *out = s;
    }
  }
  template <typename Int>
  void read_int(const std::string& key, Int* out, long long lo, long long hi) {
    if (const json* v = get(key)) {
      long long x;
      if (v->is_number_integer()) {
        x = v->get<long long>();
      } else if (v->is_number_float() && std::isfinite(v->get<double>()) &&
                 v->get<double>() == std::floor(v->get<double>())) {
        // Compared as a double first: converting one outside long long's
        // range is undefined (found by fuzz_server_config with 1e24).
        const double d = v->get<double>();
        if (d < double(lo) || d > double(hi))
          fail(key, "must be between " + std::to_string(lo) + " and " + std::to_string(hi), *v);
        x = (long long)d;
      } else {
        fail(key, "must be an integer", *v);
      }
      if (x < lo || x > hi) fail(key, "must be between " + std::to_string(lo) + " and " + std::to_string(hi), *v);
      *out = Int(x);
    }
  }
  void read_number(const std::string& key, double* out, double lo, double hi, bool lo_open = false) {
    if (const json* v = get(key)) {
      if (!v->is_number()) fail(key, "must be a number", *v);
      const double x = v->get<double>();
      if (!(lo_open ? x > lo : x >= lo) || !(x <= hi)) {
        std::ostringstream r;
        r << "must be in " << (lo_open ? "(" : "[") << lo << ", " << hi << "]";
        fail(key, r.str(), *v);
      }
      *out = x;
    }
  }
  // A nested object; nullptr when absent.
  const json* object(const std::string& key) {
    if (const json* v = get(key)) {
      if (!v->is_object()) fail(key, "must be an object", *v);
      return v;
    }
    return nullptr;
  }
  void warn_unknown() const {
    for (auto it = obj_.begin(); it != obj_.end(); ++it)
      if (!known_.count(it.key())) warn("unknown key '" + prefix_ + it.key() + "' ignored");
  }

 private:
  const json& obj_;
  std::string prefix_;
  const std::string& source_;
  std::vector<std::string>* warnings_;
  std::set<std::string> known_;
};

}  // namespace

ServerConfig parse_server_config(const std::string& json_text, const std::string& source,
                                 std::vector<std::string>* warnings) {
  json root;
  try {
    root = json::parse(json_text);
  } catch (const json::exception& e) {  // parse_error, and out_of_range for numbers such as 1e400
    throw Error("config " + source + ": not valid JSON: " + json_text::parse_failure(e));
  }
  if (!root.is_object()) throw Error("config " + source + ": the top level must be a JSON object");

  ServerConfig c;
  Section top(root, "", source, warnings);
  top.read("model_name", &c.model_name);
  top.read("model_path", &c.model_path);
  top.read("revision", &c.revision, true);
  if (c.revision.empty()) c.revision = "main";
  top.read("tokenizer", &c.tokenizer, true);
  top.read("revision_profile", &c.revision_profile);
  top.read("device", &c.device);
  {
    std::string d = c.device;
    std::transform(d.begin(), d.end(), d.begin(), ::tolower);
    if (d == "mps" || d == "cuda" || d == "auto" || d.rfind("cuda:", 0) == 0) {
      top.warn("device '" + c.device + "' requested; this build runs on the CPU");
    } else if (d != "cpu") {
      top.fail("device", "must be cpu, mps, cuda or auto", root["device"]);
    }
    c.device = d;
  }
  top.read_int("max_tokens", &c.max_tokens, 1, 1'000'000);
  top.read_int("threads", &c.threads, 0, 4096);
  // Keys other servers for this model write that mean nothing here.
  for (const char* k : {"trust_remote_code", "timeout", "model_type", "description"}) top.get(k);

  if (const json* p = top.object("performance")) {
    Section s(*p, "performance.", source, warnings);
    s.read("image_caching", &c.performance.image_caching);
    s.read("response_caching", &c.performance.response_caching);
    s.read("memory_management", &c.performance.memory_management);
    s.read_int("cache_max_mb", &c.performance.cache_max_mb, 0, 1 << 24);
    s.read_int("max_batch", &c.performance.max_batch, 1, TextModel::kMaxBatchRows);
    s.read_int("kv_cache_mb", &c.performance.kv_cache_mb, 1, 1 << 24);
    if (const json* q = s.get("quantization")) {
      std::string v;
      if (q->is_boolean()) {
        v = q->get<bool>() ? "int8" : "none";
      } else if (q->is_string()) {
        v = q->get<std::string>();
      } else {
        s.fail("quantization", "must be a string such as \"none\"", *q);
      }
      if (!normalize_quantization(v, &c.performance.quantization))
        s.fail("quantization", "must be none, fp32, bf16, fp16, int8 or int4", *q);
    }
    if (const json* q = s.get("kv_cache")) {
      if (!q->is_string() || !normalize_kv_cache(q->get<std::string>(), &c.performance.kv_cache))
        s.fail("kv_cache", "must be \"bf16\", \"f32\" or \"int8\"", *q);
    }
    s.warn_unknown();
  }

  if (const json* p = top.object("server")) {
    Section s(*p, "server.", source, warnings);
    s.read("host", &c.server.host);
    s.read_int("port", &c.server.port, 1, 65535);
    s.read_int("backend_port", &c.server.backend_port, 0, 65535);
    s.read("cors_enabled", &c.server.cors_enabled);
    s.read("api_key", &c.server.api_key, true);
    s.read_int("queue_size", &c.server.queue_size, 1, 100000);
    s.read_int("http_threads", &c.server.http_threads, 2, 4096);
    s.read("allow_image_urls", &c.server.allow_image_urls);
    s.read("allow_private_image_urls", &c.server.allow_private_image_urls);
    s.read("web_ui", &c.server.web_ui);
    s.get("debug");
    s.get("workers");
    s.warn_unknown();
  }

  if (const json* p = top.object("image_processing")) {
    Section s(*p, "image_processing.", source, warnings);
    s.read_int("size", &c.image_processing.size, 0, 65535);
    if (c.image_processing.size > 0 && c.image_processing.size < 32)
      s.fail("size", "must be 0 (keep the size) or at least 32", (*p)["size"]);
    s.read_int("quality", &c.image_processing.quality, 1, 100);
    s.warn_unknown();
  }

  if (const json* p = top.object("generation_config")) {
    Section s(*p, "generation_config.", source, warnings);
    s.read_int("max_new_tokens", &c.generation_config.max_new_tokens, 1, 1'000'000);
    s.read_number("temperature", &c.generation_config.temperature, 0.0, 100.0);
    s.read_number("top_p", &c.generation_config.top_p, 0.0, 1.0, true);
    s.read("do_sample", &c.generation_config.do_sample);
    s.warn_unknown();
  }

  if (const json* p = top.object("limits")) {
    Section s(*p, "limits.", source, warnings);
    s.read_int("max_body_bytes", &c.limits.max_body_bytes, 1024, 1ll << 40);
    s.read_int("max_image_bytes", &c.limits.max_image_bytes, 1, 1ll << 40);
    s.read_int("max_image_pixels", &c.limits.max_image_pixels, 1, 1ll << 40);
    s.read_int("image_url_timeout_s", &c.limits.image_url_timeout_s, 1, 3600);
    s.read_int("max_objects", &c.limits.max_objects, 1, 10000);
    s.read_int("max_images", &c.limits.max_images, 1, 1000);
    s.read_int("request_timeout_s", &c.limits.request_timeout_s, 1, 3600);
    s.read_int("idle_timeout_s", &c.limits.idle_timeout_s, 1, 3600);
    s.warn_unknown();
  }
  top.warn_unknown();
  validate(c, source);
  if (c.generation_config.max_new_tokens > c.max_tokens) {
    if (warnings)
      warnings->push_back("config " + source + ": generation_config.max_new_tokens " +
                          std::to_string(c.generation_config.max_new_tokens) + " is above max_tokens " +
                          std::to_string(c.max_tokens) + "; using " + std::to_string(c.max_tokens));
    c.generation_config.max_new_tokens = c.max_tokens;
  }
  if (c.performance.image_caching && c.performance.cache_max_mb == 0 && warnings)
    warnings->push_back("config " + source +
                        ": performance.image_caching is on but cache_max_mb is 0: nothing will be cached");
  return c;
}

ServerConfig load_server_config(const std::string& path, std::vector<std::string>* warnings) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error("config " + path + ": cannot open the file");
  std::stringstream ss;
  ss << f.rdbuf();
  return parse_server_config(ss.str(), path, warnings);
}

bool normalize_quantization(const std::string& in, std::string* out) {
  std::string l = in;
  std::transform(l.begin(), l.end(), l.begin(), ::tolower);
  // Weights as stored (16-bit files stay 16-bit), int8 or 4-bit, under
  // the names users already write.
  static const std::set<std::string> none = {"",     "none",     "fp32", "float32", "f32", "off",
                                             "bf16", "bfloat16", "fp16", "float16", "f16"};
  static const std::set<std::string> int8 = {"int8", "q8", "q8_0", "8bit", "dynamic"};
  static const std::set<std::string> q4 = {"int4", "q4", "q4_0", "4bit"};
  if (none.count(l)) {
    *out = "none";
  } else if (int8.count(l)) {
    *out = "int8";
  } else if (q4.count(l)) {
    *out = "q4";
  } else {
    return false;
  }
  return true;
}

bool normalize_kv_cache(const std::string& in, std::string* out) {
  std::string l = in;
  std::transform(l.begin(), l.end(), l.begin(), ::tolower);
  if (l == "bf16" || l == "bfloat16") {
    *out = "bf16";
  } else if (l == "f32" || l == "fp32" || l == "float32") {
    *out = "f32";
  } else if (l == "int8" || l == "i8" || l == "q8") {
    *out = "int8";
  } else {
    return false;
  }
  return true;
}

void apply_overrides(ServerConfig* cfg, const ConfigOverrides& o) {
  if (o.quantization && !normalize_quantization(*o.quantization, &cfg->performance.quantization))
    throw Error("--quantization must be none, int8 or q4 (or another spelling of them), got '" + *o.quantization + "'");
  if (o.kv_cache && !normalize_kv_cache(*o.kv_cache, &cfg->performance.kv_cache))
    throw Error("--kv-cache must be bf16, f32 or int8, got '" + *o.kv_cache + "'");
  if (o.model_path) cfg->model_path = *o.model_path;
  if (o.revision) cfg->revision = o.revision->empty() ? "main" : *o.revision;
  if (o.tokenizer) cfg->tokenizer = *o.tokenizer;
  if (o.revision_profile) cfg->revision_profile = *o.revision_profile;
  if (o.host) cfg->server.host = *o.host;
  if (o.api_key) cfg->server.api_key = *o.api_key;
  if (o.port) cfg->server.port = *o.port;
  if (o.backend_port) cfg->server.backend_port = *o.backend_port;
  if (o.threads) cfg->threads = *o.threads;
  if (o.web_ui) cfg->server.web_ui = *o.web_ui;
}

void validate(const ServerConfig& c, const std::string& source) {
  auto fail = [&](const std::string& msg) { throw Error("config " + source + ": " + msg); };
  if (c.model_path.empty()) fail("model_path must not be empty");
  RevisionChoice choice;
  if (!parse_revision_choice(c.revision_profile, &choice))
    fail("revision_profile must be auto, 2025-01-09 or 2025-06-21, got '" + c.revision_profile + "'");
  if (c.server.host.empty()) fail("server.host must not be empty");
  if (c.server.port < 1 || c.server.port > 65535) fail("server.port must be between 1 and 65535");
  if (c.server.backend_port < 0 || c.server.backend_port > 65535)
    fail("server.backend_port must be between 0 and 65535");
  if (c.server.backend_port == c.server.port)
    fail("server.backend_port must differ from server.port (both " + std::to_string(c.server.port) + ")");
  if (c.threads < 0) fail("threads must not be negative");
}

std::string config_to_json(const ServerConfig& c) {
  json j = {
      {"model_name", c.model_name},
      {"model_path", c.model_path},
      {"revision", c.revision},
      {"tokenizer", c.tokenizer},
      {"revision_profile", c.revision_profile},
      {"device", c.device},
      {"max_tokens", c.max_tokens},
      {"threads", c.threads},
      {"performance",
       {{"image_caching", c.performance.image_caching},
        {"response_caching", c.performance.response_caching},
        {"memory_management", c.performance.memory_management},
        {"cache_max_mb", c.performance.cache_max_mb},
        {"quantization", c.performance.quantization},
        {"kv_cache", c.performance.kv_cache},
        {"max_batch", c.performance.max_batch},
        {"kv_cache_mb", c.performance.kv_cache_mb}}},
      {"server",
       {{"host", c.server.host},
        {"port", c.server.port},
        {"backend_port", c.server.backend_port},
        {"cors_enabled", c.server.cors_enabled},
        {"api_key", c.server.api_key.empty() ? "" : "***"},
        {"queue_size", c.server.queue_size},
        {"http_threads", c.server.http_threads},
        {"allow_image_urls", c.server.allow_image_urls},
        {"allow_private_image_urls", c.server.allow_private_image_urls},
        {"web_ui", c.server.web_ui}}},
      {"image_processing", {{"size", c.image_processing.size}, {"quality", c.image_processing.quality}}},
      {"generation_config",
       {{"max_new_tokens", c.generation_config.max_new_tokens},
        {"temperature", c.generation_config.temperature},
        {"top_p", c.generation_config.top_p},
        {"do_sample", c.generation_config.do_sample}}},
      {"limits",
       {{"max_body_bytes", c.limits.max_body_bytes},
        {"max_image_bytes", c.limits.max_image_bytes},
        {"max_image_pixels", c.limits.max_image_pixels},
        {"image_url_timeout_s", c.limits.image_url_timeout_s},
        {"max_objects", c.limits.max_objects},
        {"max_images", c.limits.max_images},
        {"request_timeout_s", c.limits.request_timeout_s},
        {"idle_timeout_s", c.limits.idle_timeout_s}}},
  };
  return j.dump();
}

std::vector<std::string> list_profiles(const std::string& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  if (dir.empty() || !std::filesystem::is_directory(dir, ec)) return out;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    if (e.path().extension() == ".json" && e.is_regular_file(ec)) out.push_back(e.path().stem().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace md::server
