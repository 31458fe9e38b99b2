#pragma once
// Request images: `image_url` as a data URI (data:image/jpeg;base64,...), bare
// base64, or an http(s) URL when the configuration allows fetching. Errors are
// ApiError 400s naming the problem.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "model/image.h"

namespace md::server {

struct ImageFetchOptions {
  bool allow_urls = false;
  bool allow_private = false;  // loopback, private, link-local, unique-local addresses
  uint64_t max_bytes = 32ull << 20;
  int timeout_s = 10;
  // "ip:port" endpoints reachable even when private (tests: a local server
  // standing in for a public one). Everything else is checked as usual.
  std::vector<std::string> reachable;
};

// Standard or URL-safe base64, padding optional, whitespace ignored.
// Returns false on any other character or a bad length.
bool base64_decode(std::string_view in, std::string* out);
std::string base64_encode(std::string_view in);

// The image file's bytes for an image_url value.
std::string image_bytes_from_url(const std::string& image_url, const ImageFetchOptions& opts);

// True for addresses a server-side fetch must not reach unless allowed
// (loopback, RFC 1918, link-local, CGNAT, unique-local, unspecified, ...).
bool is_private_address(const std::string& ip);

// Scales the image down (Lanczos-3, libvips) so its longest side is at most
// `max_side`; smaller images are returned unchanged.
RgbImage downscale(const RgbImage& image, int max_side);

}  // namespace md::server
