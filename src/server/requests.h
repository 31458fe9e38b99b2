#pragma once
// The JSON request bodies of every endpoint, parsed and validated without a
// model or a network: pure functions from body text (and the active config)
// to what the handler needs, or an ApiError 400 naming the field. The
// handlers in server.cpp call these; the fuzz targets and unit tests too.
#include <string>

#include "server/config.h"
#include "server/engine.h"

namespace md::server {

struct ParsedRequest {
  JobParams params;       // task, text, history, sampling, stop sequences
  std::string image_url;  // the image the request is about (chat: the last one)
  bool stream = false;
  bool include_usage = false;  // chat: stream_options.include_usage
  size_t image_count = 0;      // chat: images in the whole conversation
};

// POST /v1/caption, /v1/query, /v1/detect, /v1/point (`task` picks which).
ParsedRequest parse_moondream_request(const std::string& body, Task task, const ServerConfig& c);
// POST /v1/chat/completions. Refuses more than limits.max_images images.
ParsedRequest parse_chat_request(const std::string& body, const ServerConfig& c);
// PATCH /api/v1/config: the profile name asked for (not yet checked to exist).
std::string parse_profile_switch(const std::string& body);

}  // namespace md::server
