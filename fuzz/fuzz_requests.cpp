// Fuzz target: the JSON request bodies of every endpoint, through the same
// parsers the HTTP handlers call: /v1/caption, /v1/query, /v1/detect,
// /v1/point, /v1/chat/completions and PATCH /api/v1/config. Every input is
// given to all of them; a refusal must be a 400 ApiError.
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
  if (r.image_url.empty()) __builtin_trap();
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
  for (Task t : {Task::Caption, Task::Query, Task::Detect, Task::Point}) {
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
