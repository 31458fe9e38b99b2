#pragma once
// The web page served at `/` (server.web_ui): web/ is built into the binary
// by cmake/embed_files.cmake, so nothing is installed next to it and the page
// makes no request to any other origin.
#include <span>
#include <string>
#include <string_view>

namespace md::server {

struct WebAsset {
  std::string_view path;          // "/index.html", "/app.js", ...
  std::string_view content_type;  // with charset for text
  std::string_view body;
  std::string_view etag;  // quoted, from the file's sha256
};

// Every embedded file (generated source).
std::span<const WebAsset> web_assets();

// The asset served at a request path ("/" is /index.html); nullptr if none.
const WebAsset* find_web_asset(std::string_view request_path);

// Content-Security-Policy of the page: its own origin only (the camera's
// frames and dropped files are blob:/data: URLs of the page itself).
extern const char* const kWebUiCsp;

}  // namespace md::server
