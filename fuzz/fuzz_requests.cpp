// Fuzz target: the JSON request bodies of every endpoint, through the same
// parsers the HTTP handlers call: /v1/caption, /v1/query, /v1/detect,
// /v1/point, /v1/gaze, /v1/chat/completions and PATCH /api/v1/config. Every
// input is given to all of them; a refusal must be a 400 ApiError; what is
// accepted holds valid values (spatial references and the eye in [0, 1], an
// image unless a question goes without one).
#include <cstdint>
#include <string>

#include "server/api_error.h"
#include "server/requests.h"

namespace {

md::server::ServerConfig config() {
  md::server::ServerConfig c;
  c.max_tokens = 300;
  c.limits.max_objects = 20;
  c.limits.max_images = 4;
  return c;
}

void check(const md::server::ParsedRequest& r, const md::server::ServerConfig& c) {
  const md::server::JobParams& p = r.params;
  if (r.image_url.empty() == p.has_image) __builtin_trap();  // no image only when marked text-only
  if (!p.has_image && p.task != md::server::Task::Query && p.task != md::server::Task::Chat) __builtin_trap();
  if (p.reasoning && p.task != md::server::Task::Query) __builtin_trap();
  for (const auto& ref : p.spatial_refs) {
    if (ref.size() != 2 && ref.size() != 4) __builtin_trap();
    for (double v : ref)
      if (!(v >= 0 && v <= 1)) __builtin_trap();
    if (ref.size() == 4 && (ref[0] > ref[2] || ref[1] > ref[3])) __builtin_trap();
  }
  if (!(p.eye_x >= 0 && p.eye_x <= 1 && p.eye_y >= 0 && p.eye_y <= 1)) __builtin_trap();
  if (p.max_tokens < 1 || p.max_tokens > c.max_tokens) __builtin_trap();
  if (p.max_objects < 1 || p.max_objects > c.limits.max_objects) __builtin_trap();
  if (!(p.temperature >= 0.0f && p.temperature <= 2.0f)) __builtin_trap();
  if (!(p.top_p > 0.0f && p.top_p <= 1.0f)) __builtin_trap();
  if (r.image_count > size_t(c.limits.max_images) || p.stop.size() > 4) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const md::server::ServerConfig c = config();
  const std::string body(reinterpret_cast<const char*>(data), size);
  using md::server::Task;
  for (Task t : {Task::Caption, Task::Query, Task::Detect, Task::Point, Task::Gaze}) {
    try {
      check(md::server::parse_moondream_request(body, t, c), c);
    } catch (const md::server::ApiError& e) {
      if (e.status != 400) __builtin_trap();
    }
  }
  try {
    check(md::server::parse_chat_request(body, c), c);
  } catch (const md::server::ApiError& e) {
    if (e.status != 400) __builtin_trap();
  }
  try {
    if (md::server::parse_profile_switch(body).empty()) __builtin_trap();
  } catch (const md::server::ApiError& e) {
    if (e.status != 400) __builtin_trap();
  }
  return 0;
}
