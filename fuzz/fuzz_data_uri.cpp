// Fuzz target: a request's image_url value (data URI, bare base64, or a URL,
// which is refused without fetching), base64 decoding and encoding, and the
// private-address check for fetched URLs.
#include <cstdint>
#include <string>
#include <string_view>

#include "server/api_error.h"
#include "server/image_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string s(reinterpret_cast<const char*>(data), size);
  md::server::ImageFetchOptions opts;
  opts.allow_urls = false;  // never touch the network
  opts.max_bytes = 1 << 16;
  try {
    const std::string bytes = md::server::image_bytes_from_url(s, opts);
    if (bytes.empty() || bytes.size() > opts.max_bytes) __builtin_trap();
  } catch (const md::server::ApiError& e) {
    if (e.status != 400) __builtin_trap();
  }

  std::string decoded;
  if (md::server::base64_decode(s, &decoded)) {
    // Re-encoding what was decoded gives text that decodes to the same bytes.
    std::string again;
    if (!md::server::base64_decode(md::server::base64_encode(decoded), &again) || again != decoded) __builtin_trap();
  }
  // Every encoding decodes back.
  std::string back;
  if (!md::server::base64_decode(md::server::base64_encode(s), &back) || back != s) __builtin_trap();

  (void)md::server::is_private_address(s);
  return 0;
}
