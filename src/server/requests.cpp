#include "server/requests.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <mutex>
#include <optional>
#include <random>
#include <sstream>

#include <nlohmann/json.hpp>

#include "server/api_error.h"
#include "tensor/json_text.h"

namespace md::server {
namespace {

using nlohmann::json;

json parse_object(const std::string& body) {
  if (body.empty()) throw bad_request("invalid_json", "the request body is empty; send a JSON object");
  json j;
  try {
    j = json::parse(body);
  } catch (const json::exception& e) {  // parse_error, and out_of_range for numbers such as 1e400
    throw bad_request("invalid_json", "the request body is not valid JSON: " + json_text::parse_failure(e));
  }
  if (!j.is_object()) throw bad_request("invalid_json", "the request body must be a JSON object");
  return j;
}

const json* field(const json& obj, const std::string& key) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

std::string required_string(const json& obj, const std::string& key, const std::string& prefix = "") {
  const json* v = field(obj, key);
  if (!v) throw bad_request("missing_field", prefix + key + " is required");
  if (!v->is_string()) throw bad_request("invalid_field", prefix + key + " must be a string");
  std::string s = v->get<std::string>();
  if (s.find_first_not_of(" \t\r\n") == std::string::npos)
    throw bad_request("missing_field", prefix + key + " must not be empty");
  return s;
}

std::optional<std::string> optional_string(const json& obj, const std::string& key, const std::string& prefix = "") {
  const json* v = field(obj, key);
  if (!v) return std::nullopt;
  if (!v->is_string()) throw bad_request("invalid_field", prefix + key + " must be a string");
  return v->get<std::string>();
}

std::optional<bool> optional_bool(const json& obj, const std::string& key, const std::string& prefix = "") {
  const json* v = field(obj, key);
  if (!v) return std::nullopt;
  if (!v->is_boolean()) throw bad_request("invalid_field", prefix + key + " must be true or false");
  return v->get<bool>();
}

std::optional<long long> optional_int(const json& obj, const std::string& key, long long lo, long long hi,
                                      const std::string& prefix = "") {
  const json* v = field(obj, key);
  if (!v) return std::nullopt;
  const bool integral =
      v->is_number_integer() ||
      (v->is_number_float() && std::floor(v->get<double>()) == v->get<double>() && std::fabs(v->get<double>()) < 9e18);
  const std::string range = "between " + std::to_string(lo) + " and " + std::to_string(hi);
  if (!integral) throw bad_request("invalid_field", prefix + key + " must be an integer " + range);
  const long long x = v->is_number_integer() ? v->get<long long>() : (long long)v->get<double>();
  if (x < lo || x > hi) {
    const bool tokens = key == "max_tokens" || key == "max_completion_tokens" || key == "max_new_tokens";
    throw bad_request(tokens && x > hi ? "max_tokens_too_large" : "invalid_field",
                      prefix + key + " must be " + range + " (got " + std::to_string(x) + ")");
  }
  return x;
}

std::optional<double> optional_number(const json& obj, const std::string& key, double lo, double hi,
                                      const std::string& prefix = "") {
  const json* v = field(obj, key);
  if (!v) return std::nullopt;
  std::ostringstream r;
  r << "between " << lo << " and " << hi;
  if (!v->is_number()) throw bad_request("invalid_field", prefix + key + " must be a number " + r.str());
  const double x = v->get<double>();
  if (!(x >= lo && x <= hi)) throw bad_request("invalid_field", prefix + key + " must be " + r.str());
  return x;
}

uint64_t random_seed() {
  static std::random_device rd;
  static std::mutex m;
  std::lock_guard<std::mutex> lock(m);
  return (uint64_t(rd()) << 32) ^ rd();
}

void default_sampling(JobParams& p, const ServerConfig& c) {
  p.max_tokens = std::min(c.generation_config.max_new_tokens, c.max_tokens);
  p.temperature = c.generation_config.do_sample ? float(c.generation_config.temperature) : 0.0f;
  p.top_p = float(c.generation_config.top_p);
  p.max_objects = std::min(50, c.limits.max_objects);
  p.seed = random_seed();
}

// temperature / top_p / max_tokens / seed from `obj` (OpenAI body or Moondream settings).
void read_sampling(JobParams& p, const json& obj, const ServerConfig& c, const std::string& prefix) {
  if (auto v = optional_number(obj, "temperature", 0.0, 2.0, prefix)) p.temperature = float(*v);
  if (auto v = optional_number(obj, "top_p", 0.0, 1.0, prefix)) {
    if (*v == 0.0)
      p.temperature = 0.0f;  // no mass kept but the top token: greedy
    else
      p.top_p = float(*v);
  }
  if (auto v = optional_int(obj, "max_tokens", 1, c.max_tokens, prefix)) p.max_tokens = int(*v);
  if (auto v = optional_int(obj, "max_completion_tokens", 1, c.max_tokens, prefix)) p.max_tokens = int(*v);
  if (auto v = optional_int(obj, "seed", std::numeric_limits<long long>::min(), std::numeric_limits<long long>::max(),
                            prefix))
    p.seed = uint64_t(*v);
}

}  // namespace

ParsedRequest parse_moondream_request(const std::string& raw_body, Task task, const ServerConfig& c) {
  const json body = parse_object(raw_body);
  ParsedRequest r;
  JobParams& p = r.params;
  p.task = task;
  default_sampling(p, c);
  // A question may come without an image (2025-06-21; the model checks the revision).
  if (task == Task::Query && !field(body, "image_url")) {
    p.has_image = false;
  } else {
    r.image_url = required_string(body, "image_url");
    r.image_count = 1;
  }
  if (field(body, "variant"))
    throw bad_request("unsupported", "variant is not supported: this server runs the one model it loaded");
  if (const json* v = field(body, "reasoning")) {
    if (task != Task::Query) throw bad_request("invalid_field", "reasoning is only for /v1/query");
    if (!v->is_boolean()) throw bad_request("invalid_field", "reasoning must be true or false");
    p.reasoning = v->get<bool>();
  }
  if (const json* v = field(body, "spatial_refs")) {
    if (task != Task::Query && task != Task::Point)
      throw bad_request("invalid_field", "spatial_refs are only for /v1/query and /v1/point");
    if (!v->is_array())
      throw bad_request("invalid_field", "spatial_refs must be an array of [x, y] or [x_min, y_min, x_max, y_max]");
    for (size_t i = 0; i < v->size(); ++i) {
      const json& r0 = (*v)[i];
      const std::string at = "spatial_refs[" + std::to_string(i) + "]";
      if (!r0.is_array() || !std::all_of(r0.begin(), r0.end(), [](const json& x) { return x.is_number(); }))
        throw bad_request("invalid_field", at + " must be an array of numbers");
      std::vector<double> ref;
      for (const json& x : r0) ref.push_back(x.get<double>());
      try {
        validate_spatial_ref(ref, at);
      } catch (const TaskError& e) {
        throw bad_request("invalid_field", e.what());
      }
      p.spatial_refs.push_back(std::move(ref));
    }
  }
  if (task == Task::Caption) {
    const std::string len = optional_string(body, "length").value_or("normal");
    if (!parse_caption_length(len, &p.length))
      throw bad_request("invalid_field", "length must be short, normal or long (got '" + len + "')");
  } else if (task == Task::Query) {
    p.text = required_string(body, "question");
  } else if (task == Task::Gaze) {
    const json* eye = field(body, "eye");
    if (!eye || !eye->is_object()) throw bad_request(eye ? "invalid_field" : "missing_field", "eye {x, y} is required");
    for (const char* k : {"x", "y"}) {
      const json* v = field(*eye, k);
      if (!v || !v->is_number()) throw bad_request("invalid_field", std::string("eye.") + k + " must be a number");
    }
    p.eye_x = (*eye)["x"].get<double>();
    p.eye_y = (*eye)["y"].get<double>();
    try {
      validate_spatial_ref({p.eye_x, p.eye_y}, "eye");
    } catch (const TaskError& e) {
      throw bad_request("invalid_field", e.what());
    }
  } else {
    p.text = required_string(body, "object");
  }
  if (const json* s = field(body, "settings")) {
    if (!s->is_object()) throw bad_request("invalid_field", "settings must be an object");
    read_sampling(p, *s, c, "settings.");
    if (auto v = optional_int(*s, "max_objects", 1, c.limits.max_objects, "settings.")) p.max_objects = int(*v);
  }
  // Top-level sampling fields are accepted too.
  read_sampling(p, body, c, "");
  if (auto v = optional_int(body, "max_objects", 1, c.limits.max_objects)) p.max_objects = int(*v);
  const bool text_task = task == Task::Caption || task == Task::Query;
  r.stream = text_task && optional_bool(body, "stream").value_or(false);
  return r;
}

ParsedRequest parse_chat_request(const std::string& raw_body, const ServerConfig& c) {
  const json body = parse_object(raw_body);
  const json* msgs = field(body, "messages");
  if (!msgs) throw bad_request("missing_field", "messages is required");
  if (!msgs->is_array() || msgs->empty()) throw bad_request("invalid_field", "messages must be a non-empty array");

  struct Turn {
    std::string role, text;
    std::vector<std::string> images;
  };
  std::vector<Turn> turns;
  ParsedRequest r;
  for (size_t i = 0; i < msgs->size(); ++i) {
    const json& m = (*msgs)[i];
    const std::string at = "messages[" + std::to_string(i) + "].";
    if (!m.is_object()) throw bad_request("invalid_field", "messages[" + std::to_string(i) + "] must be an object");
    Turn t;
    t.role = required_string(m, "role", at);
    const json* content = field(m, "content");
    if (content && content->is_string()) {
      t.text = content->get<std::string>();
    } else if (content && content->is_array()) {
      for (size_t k = 0; k < content->size(); ++k) {
        const json& part = (*content)[k];
        const std::string pat = at + "content[" + std::to_string(k) + "].";
        if (!part.is_object()) throw bad_request("invalid_field", pat.substr(0, pat.size() - 1) + " must be an object");
        const std::string type = required_string(part, "type", pat);
        if (type == "text" || type == "input_text") {
          const std::string txt = optional_string(part, "text", pat).value_or("");
          if (!t.text.empty() && !txt.empty()) t.text += "\n";
          t.text += txt;
        } else if (type == "image_url" || type == "input_image") {
          if (++r.image_count > uint64_t(c.limits.max_images))
            throw bad_request("too_many_images", "the conversation has more than " +
                                                     std::to_string(c.limits.max_images) +
                                                     " images (limits.max_images)");
          const json* iu = field(part, "image_url");
          if (iu && iu->is_object())
            t.images.push_back(required_string(*iu, "url", pat + "image_url."));
          else
            t.images.push_back(required_string(part, "image_url", pat));
        } else {
          throw bad_request("unsupported_content",
                            pat + "type '" + type + "' is not supported (use text or image_url)");
        }
      }
    } else if (content) {
      throw bad_request("invalid_field", at + "content must be a string or an array of parts");
    }
    turns.push_back(std::move(t));
  }
  if (turns.back().role != "user")
    throw bad_request("invalid_field", "the last message must have role \"user\" (got \"" + turns.back().role + "\")");

  for (auto it = turns.rbegin(); it != turns.rend() && r.image_url.empty(); ++it)
    if (!it->images.empty()) r.image_url = it->images.back();
  JobParams& p = r.params;
  // No image anywhere: a text-only question (the server checks the revision allows it).
  p.has_image = !r.image_url.empty();
  default_sampling(p, c);
  // Earlier turns become Question/Answer history.
  std::string pending;
  for (size_t i = 0; i + 1 < turns.size(); ++i) {
    const Turn& t = turns[i];
    if (t.role == "user") {
      if (!pending.empty() && !t.text.empty()) pending += "\n";
      pending += t.text;
    } else if (t.role == "assistant") {
      if (pending.find_first_not_of(" \t\r\n") != std::string::npos) p.history.emplace_back(pending, t.text);
      pending.clear();
    }  // system / developer / tool messages are not part of moondream's prompt
  }
  std::string question = turns.back().text;
  if (!pending.empty()) question = pending + (question.empty() ? "" : "\n" + question);
  const bool blank = question.find_first_not_of(" \t\r\n") == std::string::npos;
  if (blank && p.history.empty() && !p.has_image)
    throw bad_request("image_required", "no image and no question: add an image to caption, or ask a question");
  if (blank && p.history.empty()) {
    p.task = Task::Caption;  // an image with no question: describe it
  } else if (p.history.empty()) {
    p.task = Task::Query;
    p.text = question;
  } else {
    p.task = Task::Chat;
    p.text = question;
  }

  read_sampling(p, body, c, "");
  if (auto n = optional_int(body, "n", 1, 128); n && *n != 1)
    throw bad_request("invalid_field", "n must be 1: this server returns one choice");
  if (const json* st = field(body, "stop")) {
    if (st->is_string()) {
      p.stop.push_back(st->get<std::string>());
    } else if (st->is_array() && st->size() <= 4 &&
               std::all_of(st->begin(), st->end(), [](const json& x) { return x.is_string(); })) {
      for (const auto& x : *st) p.stop.push_back(x.get<std::string>());
    } else {
      throw bad_request("invalid_field", "stop must be a string or an array of up to 4 strings");
    }
  }
  r.stream = optional_bool(body, "stream").value_or(false);
  if (const json* so = field(body, "stream_options")) {
    if (!so->is_object()) throw bad_request("invalid_field", "stream_options must be an object");
    r.include_usage = optional_bool(*so, "include_usage", "stream_options.").value_or(false);
  }
  return r;
}

std::string parse_profile_switch(const std::string& raw_body) {
  const json body = parse_object(raw_body);
  return required_string(body, "active_model");
}

}  // namespace md::server
