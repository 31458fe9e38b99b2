#include "server/web_ui.h"

namespace md::server {

const char* const kWebUiCsp =
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "media-src 'self' blob: mediastream:; connect-src 'self'; manifest-src 'self'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'";

const WebAsset* find_web_asset(std::string_view request_path) {
  if (request_path == "/") request_path = "/index.html";
  for (const WebAsset& a : web_assets())
    if (a.path == request_path) return &a;
  return nullptr;
}

}  // namespace md::server
