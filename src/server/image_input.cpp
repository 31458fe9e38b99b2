#include "server/image_input.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <curl/curl.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <memory>
#include <mutex>

#include <vips/vips8>

#include "server/api_error.h"
#include "tensor/error.h"

namespace md::server {
namespace {

int b64_value(unsigned char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+' || c == '-') return 62;
  if (c == '/' || c == '_') return 63;
  return -1;
}

bool starts_with_ci(std::string_view s, std::string_view prefix) {
  if (s.size() < prefix.size()) return false;
  for (size_t i = 0; i < prefix.size(); ++i)
    if (std::tolower((unsigned char)s[i]) != std::tolower((unsigned char)prefix[i])) return false;
  return true;
}

ApiError too_large(uint64_t got, uint64_t limit) {
  return bad_request("image_too_large",
                     "image is " + std::to_string(got) + " bytes; the limit is " + std::to_string(limit) + " bytes");
}

struct FetchState {
  std::string body;
  uint64_t max_bytes = 0;
  bool too_large = false;
  bool allow_private = false;
  bool blocked = false;
  std::string blocked_ip;
  const std::vector<std::string>* reachable = nullptr;
};

size_t on_data(char* ptr, size_t size, size_t nmemb, void* user) {
  auto* st = static_cast<FetchState*>(user);
  const size_t n = size * nmemb;
  if (st->body.size() + n > st->max_bytes) {
    st->too_large = true;
    return 0;  // aborts the transfer
  }
  st->body.append(ptr, n);
  return n;
}

// Every connection (redirects included) is checked before it is made.
curl_socket_t on_open_socket(void* user, curlsocktype, curl_sockaddr* address) {
  auto* st = static_cast<FetchState*>(user);
  char ip[INET6_ADDRSTRLEN] = {0};
  if (address->family == AF_INET)
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(&address->addr)->sin_addr, ip, sizeof ip);
  else if (address->family == AF_INET6)
    inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(&address->addr)->sin6_addr, ip, sizeof ip);
  int port = 0;
  if (address->family == AF_INET)
    port = ntohs(reinterpret_cast<const sockaddr_in*>(&address->addr)->sin_port);
  else if (address->family == AF_INET6)
    port = ntohs(reinterpret_cast<const sockaddr_in6*>(&address->addr)->sin6_port);
  const std::string endpoint = std::string(ip) + ":" + std::to_string(port);
  const bool listed =
      st->reachable && std::find(st->reachable->begin(), st->reachable->end(), endpoint) != st->reachable->end();
  if (!st->allow_private && !listed && is_private_address(ip)) {
    st->blocked = true;
    st->blocked_ip = ip;
    return CURL_SOCKET_BAD;
  }
#if defined(SOCK_CLOEXEC)
  return socket(address->family, address->socktype | SOCK_CLOEXEC, address->protocol);
#else
  const int fd = socket(address->family, address->socktype, address->protocol);
  if (fd >= 0) fcntl(fd, F_SETFD, FD_CLOEXEC);
  return fd;
#endif
}

std::string fetch_url(const std::string& url, const ImageFetchOptions& opts) {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
  std::unique_ptr<CURL, void (*)(CURL*)> curl(curl_easy_init(), curl_easy_cleanup);
  if (!curl) throw ApiError(500, "internal_error", "cannot start an HTTP client");
  FetchState st;
  st.max_bytes = opts.max_bytes;
  st.allow_private = opts.allow_private;
  st.reachable = &opts.reachable;
  char err[CURL_ERROR_SIZE] = {0};
  CURL* c = curl.get();
  curl_easy_setopt(c, CURLOPT_URL, url.c_str());
  curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
  curl_easy_setopt(c, CURLOPT_MAXREDIRS, 3L);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, long(opts.timeout_s) * 1000);
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, long(std::min(opts.timeout_s, 10)) * 1000);
  curl_easy_setopt(c, CURLOPT_MAXFILESIZE_LARGE, curl_off_t(opts.max_bytes));
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &st);
  curl_easy_setopt(c, CURLOPT_OPENSOCKETFUNCTION, on_open_socket);
  curl_easy_setopt(c, CURLOPT_OPENSOCKETDATA, &st);
  curl_easy_setopt(c, CURLOPT_ERRORBUFFER, err);
  curl_easy_setopt(c, CURLOPT_USERAGENT, "moondream-server");
  curl_easy_setopt(c, CURLOPT_ACCEPT_ENCODING, "");
  // No proxy from the environment: the address check must see the real peer.
  curl_easy_setopt(c, CURLOPT_PROXY, "");
  const CURLcode rc = curl_easy_perform(c);
  if (st.blocked)
    throw bad_request("image_url_forbidden", "image_url resolves to a private or loopback address (" + st.blocked_ip +
                                                 "); fetching it is not allowed");
  if (st.too_large || rc == CURLE_FILESIZE_EXCEEDED) {
    curl_off_t len = -1;
    curl_easy_getinfo(c, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &len);
    throw too_large(len > 0 ? uint64_t(len) : st.body.size(), opts.max_bytes);
  }
  if (rc == CURLE_OPERATION_TIMEDOUT)
    throw bad_request("image_url_timeout",
                      "fetching image_url took longer than " + std::to_string(opts.timeout_s) + " s");
  if (rc != CURLE_OK)
    throw bad_request("image_url_unreachable",
                      "cannot fetch image_url: " + std::string(err[0] ? err : curl_easy_strerror(rc)));
  long status = 0;
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
  if (status != 200)
    throw bad_request("image_url_unreachable", "fetching image_url answered HTTP " + std::to_string(status));
  return std::move(st.body);
}

}  // namespace

bool base64_decode(std::string_view in, std::string* out) {
  out->clear();
  out->reserve(in.size() / 4 * 3 + 3);
  uint32_t acc = 0;
  int bits = 0;
  size_t pad = 0, digits = 0;
  for (unsigned char c : in) {
    if (c == ' ' || c == '\n' || c == '\r' || c == '\t') continue;
    if (c == '=') {
      ++pad;
      continue;
    }
    if (pad) return false;  // data after padding
    const int v = b64_value(c);
    if (v < 0) return false;
    ++digits;
    acc = (acc << 6) | uint32_t(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out->push_back(char((acc >> bits) & 0xFF));
    }
  }
  if (pad > 2 || digits % 4 == 1) return false;
  return true;
}

std::string base64_encode(std::string_view in) {
  static const char* t = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((in.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    const uint32_t v = (uint8_t(in[i]) << 16) | (uint8_t(in[i + 1]) << 8) | uint8_t(in[i + 2]);
    out += t[v >> 18];
    out += t[(v >> 12) & 63];
    out += t[(v >> 6) & 63];
    out += t[v & 63];
  }
  if (i + 1 == in.size()) {
    const uint32_t v = uint8_t(in[i]) << 16;
    out += t[v >> 18];
    out += t[(v >> 12) & 63];
    out += "==";
  } else if (i + 2 == in.size()) {
    const uint32_t v = (uint8_t(in[i]) << 16) | (uint8_t(in[i + 1]) << 8);
    out += t[v >> 18];
    out += t[(v >> 12) & 63];
    out += t[(v >> 6) & 63];
    out += '=';
  }
  return out;
}

bool is_private_address(const std::string& ip) {
  in_addr a4;
  in6_addr a6;
  auto v4_private = [](uint32_t h) {
    const uint8_t a = h >> 24, b = (h >> 16) & 0xFF;
    return a == 0 || a == 10 || a == 127 || (a == 100 && (b & 0xC0) == 64) || (a == 169 && b == 254) ||
           (a == 172 && (b & 0xF0) == 16) || (a == 192 && b == 168) || (a == 192 && b == 0 && ((h >> 8) & 0xFF) == 0) ||
           (a == 198 && (b & 0xFE) == 18) || a >= 224;
  };
  if (inet_pton(AF_INET, ip.c_str(), &a4) == 1) return v4_private(ntohl(a4.s_addr));
  if (inet_pton(AF_INET6, ip.c_str(), &a6) == 1) {
    const uint8_t* b = a6.s6_addr;
    static const uint8_t zero[16] = {0};
    if (std::memcmp(b, zero, 15) == 0 && (b[15] == 0 || b[15] == 1)) return true;  // :: and ::1
    const bool mapped = std::memcmp(b, zero, 10) == 0 && b[10] == 0xFF && b[11] == 0xFF;
    const bool nat64 = b[0] == 0x00 && b[1] == 0x64 && b[2] == 0xFF && b[3] == 0x9B;
    if (mapped || nat64) return v4_private((uint32_t(b[12]) << 24) | (b[13] << 16) | (b[14] << 8) | b[15]);
    if ((b[0] & 0xFE) == 0xFC) return true;                  // fc00::/7 unique local
    if (b[0] == 0xFE && (b[1] & 0xC0) == 0x80) return true;  // fe80::/10 link local
    if (b[0] == 0xFF) return true;                           // multicast
    return false;
  }
  return true;  // not an address: refuse
}

std::string image_bytes_from_url(const std::string& image_url, const ImageFetchOptions& opts) {
  std::string_view u = image_url;
  while (!u.empty() && std::isspace((unsigned char)u.front())) u.remove_prefix(1);
  while (!u.empty() && std::isspace((unsigned char)u.back())) u.remove_suffix(1);
  if (u.empty()) throw bad_request("missing_image", "image_url is empty");

  if (starts_with_ci(u, "http://") || starts_with_ci(u, "https://")) {
    if (!opts.allow_urls)
      throw bad_request("image_url_not_allowed",
                        "image_url must be a data URI (data:image/jpeg;base64,...); fetching http(s) URLs is "
                        "turned off (server.allow_image_urls)");
    return fetch_url(std::string(u), opts);
  }

  std::string_view payload = u;
  if (starts_with_ci(u, "data:")) {
    const size_t comma = u.find(',');
    if (comma == std::string_view::npos)
      throw bad_request("invalid_image", "image_url data URI has no ',' before the data");
    const std::string_view meta = u.substr(5, comma - 5);
    if (meta.size() < 7 || !starts_with_ci(meta.substr(meta.size() - 7), ";base64"))
      throw bad_request("invalid_image", "image_url data URI must be base64 encoded (data:image/png;base64,...)");
    payload = u.substr(comma + 1);
  } else if (u.find("://") != std::string_view::npos) {
    throw bad_request("invalid_image", "image_url must be a data URI or an http(s) URL");
  }
  // Base64 size check before decoding.
  const uint64_t approx = payload.size() / 4 * 3;
  if (approx > opts.max_bytes + 3) throw too_large(approx, opts.max_bytes);
  std::string bytes;
  if (!base64_decode(payload, &bytes))
    throw bad_request("invalid_image",
                      "image_url is not valid base64 (expected a data URI such as "
                      "data:image/jpeg;base64,...)");
  if (bytes.size() > opts.max_bytes) throw too_large(bytes.size(), opts.max_bytes);
  if (bytes.empty()) throw bad_request("invalid_image", "image_url holds no data");
  return bytes;
}

RgbImage downscale(const RgbImage& image, int max_side) {
  const int side = std::max(image.width, image.height);
  if (max_side <= 0 || side <= max_side) return image;
  const double scale = double(max_side) / side;
  try {
    vips::VImage src = vips::VImage::new_from_memory(const_cast<uint8_t*>(image.pixels.data()), image.pixels.size(),
                                                     image.width, image.height, 3, VIPS_FORMAT_UCHAR);
    vips::VImage out = src.resize(scale, vips::VImage::option()->set("kernel", VIPS_KERNEL_LANCZOS3));
    if (out.bands() != 3 || out.format() != VIPS_FORMAT_UCHAR) throw Error("image: resize changed the format");
    RgbImage r;
    r.width = out.width();
    r.height = out.height();
    size_t n = 0;
    void* mem = out.write_to_memory(&n);
    std::unique_ptr<void, void (*)(void*)> guard(mem, g_free);
    if (n != size_t(r.width) * r.height * 3) throw Error("image: resize produced an unexpected size");
    r.pixels.assign(static_cast<uint8_t*>(mem), static_cast<uint8_t*>(mem) + n);
    return r;
  } catch (const vips::VError& e) {
    throw Error(std::string("image: scaling down failed: ") + e.what());
  }
}

}  // namespace md::server
