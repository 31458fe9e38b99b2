// moondream-server limits, each hit over HTTP on the real server with the
// tiny model: request body bytes (413), image bytes, decoded pixels (a
// 50,000×50,000 PNG of a few KB refused before anything is allocated),
// max_tokens, images per chat request, the request timeout (408 for a body
// that trickles in, a closed connection for stalled headers), the idle
// keep-alive timeout; CORS off unless configured; no request value reaches
// the filesystem. (The queue limit's 503 is in server_ops_ref_test.)
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <poll.h>

#include <chrono>
#include <cstring>

#include "server_harness.h"

namespace md {
namespace {

using namespace srvtest;
using Clock = std::chrono::steady_clock;

class ServerLimits : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    signal(SIGPIPE, SIG_IGN);
    dir_ = new TempDir();
    port_ = free_port();
    backend_ = free_port();
    json profile = tiny_profile(port_, backend_,
                                {{"max_tokens", 32},
                                 {"limits",
                                  {{"max_body_bytes", 400'000},
                                   {"max_image_bytes", 200'000},
                                   {"max_image_pixels", 150'000},
                                   {"max_images", 2},
                                   {"request_timeout_s", 2},
                                   {"idle_timeout_s", 1}}}});
    profile["server"].erase("cors_enabled");  // the default: off
    write_file(dir_->path / "configs" / "limits.json", profile.dump(2));
    server_ = new ServerProcess({"--config", (dir_->path / "configs" / "limits.json").string(), "--pid-file",
                                 (dir_->path / "server.pid").string()},
                                port_, dir_->path / "server.log");
    ASSERT_TRUE(server_->wait_ready()) << server_->log();
  }
  static void TearDownTestSuite() {
    if (server_) {
      EXPECT_EQ(server_->stop(), 0) << server_->log();
    }
    delete server_;
    delete dir_;
    server_ = nullptr;
    dir_ = nullptr;
  }
  std::unique_ptr<httplib::Client> api() { return server_->client(); }

  static TempDir* dir_;
  static ServerProcess* server_;
  static int port_, backend_;
};
TempDir* ServerLimits::dir_ = nullptr;
ServerProcess* ServerLimits::server_ = nullptr;
int ServerLimits::port_ = 0;
int ServerLimits::backend_ = 0;

void expect_error(const json& j, int status, int want_status, const std::string& code, const std::string& what) {
  EXPECT_EQ(status, want_status) << what << ": " << j.dump();
  ASSERT_TRUE(j.is_object() && j.contains("error")) << what << ": " << j.dump();
  EXPECT_EQ(j["error"]["code"], code) << what << ": " << j.dump();
  EXPECT_TRUE(j["error"]["message"].is_string()) << what;
}

std::string small_png() { return data_uri(image("tiny_1x1.png")); }

// ---- PNG writing for the decompression bomb (stored deflate; no zlib) ------

uint32_t crc32_of(const std::string& s) {
  uint32_t crc = ~0u;
  for (unsigned char ch : s) {
    crc ^= ch;
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
  }
  return ~crc;
}

void be32(std::string& out, uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) out += char((v >> s) & 0xFF);
}

void png_chunk(std::string& out, const char* type, const std::string& body) {
  be32(out, uint32_t(body.size()));
  const std::string tb = std::string(type, 4) + body;
  out += tb;
  be32(out, crc32_of(tb));
}

// A PNG whose header says `w`×`h` 8-bit RGB, followed by 4 KB of zero
// scanline data in one stored deflate block: decoding it would need w·h·3
// bytes; the file is a few KB.
std::string bomb_png(uint32_t w, uint32_t h) {
  std::string png = "\x89PNG\r\n\x1a\n";
  std::string ihdr;
  be32(ihdr, w);
  be32(ihdr, h);
  ihdr += std::string("\x08\x02\x00\x00\x00", 5);
  png_chunk(png, "IHDR", ihdr);
  const uint16_t n = 4096;
  std::string z = "\x78\x01";
  z += char(0);  // not the last block: the rest of the image "follows"
  z += char(n & 0xFF);
  z += char(n >> 8);
  z += char(~n & 0xFF);
  z += char((~n >> 8) & 0xFF);
  z += std::string(n, '\0');
  png_chunk(png, "IDAT", z);
  png_chunk(png, "IEND", "");
  return png;
}

// ---- raw sockets for the timeouts -------------------------------------------

// Reads until the peer closes or `timeout_s` passes; returns what arrived
// and sets *closed when the peer closed the connection.
std::string read_until_closed(int fd, double timeout_s, bool* closed) {
  std::string got;
  *closed = false;
  const auto end = Clock::now() + std::chrono::duration<double>(timeout_s);
  while (Clock::now() < end) {
    pollfd p{fd, POLLIN, 0};
    const int left = int(std::chrono::duration_cast<std::chrono::milliseconds>(end - Clock::now()).count());
    if (poll(&p, 1, std::max(1, left)) <= 0) continue;
    char buf[4096];
    const ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n <= 0) {
      *closed = true;
      break;
    }
    got.append(buf, size_t(n));
  }
  return got;
}

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// -------------------------------------------------------------------------------

TEST_F(ServerLimits, RequestBodyBytes) {
  auto c = api();
  int st = 0;
  const std::string body = json{{"image_url", std::string(500'000, 'A')}}.dump();
  auto r = c->Post("/v1/caption", body, "application/json");
  ASSERT_TRUE(r);
  expect_error(json::parse(r->body), r->status, 413, "payload_too_large", "body over limits.max_body_bytes");
  // Just under the limit is read (and then refused for what it holds, not its size).
  json j = post_json(*c, "/v1/caption", {{"image_url", std::string(100'000, 'A')}}, &st);
  EXPECT_NE(st, 413) << j.dump();
}

TEST_F(ServerLimits, ImageBytes) {
  int st = 0;
  const std::string big(210'000, '\x01');
  json j =
      post_json(*api(), "/v1/caption", {{"image_url", "data:image/png;base64," + server::base64_encode(big)}}, &st);
  expect_error(j, st, 400, "image_too_large", "image over limits.max_image_bytes");
}

TEST_F(ServerLimits, DecodedPixels) {
  int st = 0;
  // 640×480 = 307,200 pixels, over the limit of 150,000.
  json j = post_json(*api(), "/v1/caption", {{"image_url", data_uri(image("photo_640x480.jpg"))}}, &st);
  expect_error(j, st, 400, "image_too_large", "image over limits.max_image_pixels");
  EXPECT_NE(j["error"]["message"].get<std::string>().find("640×480"), std::string::npos) << j.dump();
}

TEST_F(ServerLimits, DecompressionBombIsRefusedBeforeAllocating) {
  const std::string png = bomb_png(50000, 50000);
  ASSERT_LT(png.size(), 8000u) << "a few KB";
  auto rss = [&] {
    auto r = api()->Get("/health");
    return r ? json::parse(r->body)["rss_bytes"].get<double>() : 0.0;
  };
  const double before = rss();
  const auto t0 = Clock::now();
  int st = 0;
  json j =
      post_json(*api(), "/v1/caption", {{"image_url", "data:image/png;base64," + server::base64_encode(png)}}, &st);
  const double secs = seconds_since(t0);
  expect_error(j, st, 400, "image_too_large", "50000×50000 PNG");
  EXPECT_NE(j["error"]["message"].get<std::string>().find("50000×50000"), std::string::npos) << j.dump();
  EXPECT_LT(secs, 2.0) << "refused from the header, not after decoding";
  // Decoding would need 7.5 GB; the server's memory did not move.
  EXPECT_LT(rss() - before, 64.0 * 1024 * 1024);
  // Also as a chat image.
  j = post_json(*api(), "/v1/chat/completions",
                {{"messages",
                  {{{"role", "user"},
                    {"content",
                     {{{"type", "image_url"},
                       {"image_url", {{"url", "data:image/png;base64," + server::base64_encode(png)}}}}}}}}}},
                &st);
  expect_error(j, st, 400, "image_too_large", "bomb in a chat request");
}

TEST_F(ServerLimits, MaxTokensCeiling) {
  int st = 0;
  json j = post_json(*api(), "/v1/caption", {{"image_url", small_png()}, {"settings", {{"max_tokens", 33}}}}, &st);
  expect_error(j, st, 400, "max_tokens_too_large", "max_tokens over the config's max_tokens");
  j = post_json(*api(), "/v1/chat/completions",
                {{"max_completion_tokens", 1000},
                 {"messages",
                  {{{"role", "user"}, {"content", {{{"type", "image_url"}, {"image_url", {{"url", small_png()}}}}}}}}}},
                &st);
  expect_error(j, st, 400, "max_tokens_too_large", "chat max_completion_tokens");
  j = post_json(*api(), "/v1/caption",
                {{"image_url", small_png()}, {"settings", {{"max_tokens", 32}, {"temperature", 0}}}}, &st);
  EXPECT_EQ(st, 200) << "exactly at the ceiling: " << j.dump();
}

TEST_F(ServerLimits, ImagesPerChatRequest) {
  auto chat = [&](int n) {
    json parts = json::array({{{"type", "text"}, {"text", "What is it?"}}});
    for (int i = 0; i < n; ++i) parts.push_back({{"type", "image_url"}, {"image_url", {{"url", small_png()}}}});
    return json{{"max_tokens", 4}, {"messages", {{{"role", "user"}, {"content", parts}}}}};
  };
  int st = 0;
  json j = post_json(*api(), "/v1/chat/completions", chat(3), &st);
  expect_error(j, st, 400, "too_many_images", "3 images, limit 2");
  j = post_json(*api(), "/v1/chat/completions", chat(2), &st);
  EXPECT_EQ(st, 200) << j.dump();
}

TEST_F(ServerLimits, BodyTricklingInPastTheRequestTimeoutGets408) {
  const int fd = connect_to(port_);
  ASSERT_GE(fd, 0);
  const std::string body = json{{"image_url", small_png()}, {"settings", {{"max_tokens", 2}}}}.dump();
  send_all(fd, "POST /v1/caption HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " +
                   std::to_string(body.size()) + "\r\n\r\n");
  // One byte every 0.5 s: each read is quick, the whole body is not (limit 2 s).
  const auto t0 = Clock::now();
  bool closed = false;
  std::string got;
  for (size_t i = 0; i < body.size() && seconds_since(t0) < 10; ++i) {
    send_all(fd, body.substr(i, 1));
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, 500) > 0) {
      got = read_until_closed(fd, 3, &closed);
      break;
    }
  }
  close(fd);
  EXPECT_NE(got.find("HTTP/1.1 408"), std::string::npos) << got;
  EXPECT_NE(got.find("request_timeout"), std::string::npos) << got;
  EXPECT_LT(seconds_since(t0), 6.0);
}

TEST_F(ServerLimits, StalledHeadersAreDisconnected) {
  const int fd = connect_to(port_);
  ASSERT_GE(fd, 0);
  send_all(fd, "POST /v1/caption HTTP/1.1\r\nHost: x\r\n");  // and nothing more
  const auto t0 = Clock::now();
  bool closed = false;
  read_until_closed(fd, 10, &closed);
  const double secs = seconds_since(t0);
  close(fd);
  EXPECT_TRUE(closed);
  EXPECT_GT(secs, 1.0);
  EXPECT_LT(secs, 6.0) << "request_timeout_s is 2";
}

TEST_F(ServerLimits, IdleKeepAliveConnectionsAreClosed) {
  const int fd = connect_to(port_);
  ASSERT_GE(fd, 0);
  send_all(fd, "GET /health HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n");
  const auto t0 = Clock::now();
  bool closed = false;
  const std::string got = read_until_closed(fd, 8, &closed);
  const double secs = seconds_since(t0);
  close(fd);
  EXPECT_NE(got.find("HTTP/1.1 200"), std::string::npos) << got;
  EXPECT_TRUE(closed) << "the idle connection stays open";
  EXPECT_LT(secs, 5.0) << "idle_timeout_s is 1";
}

TEST_F(ServerLimits, CorsIsOffUnlessConfigured) {
  auto c = api();
  auto g = c->Get("/health", {{"Origin", "http://evil.test"}});
  ASSERT_TRUE(g);
  EXPECT_FALSE(g->has_header("Access-Control-Allow-Origin"));
  auto o = c->Options("/v1/caption", {{"Origin", "http://evil.test"}, {"Access-Control-Request-Method", "POST"}});
  ASSERT_TRUE(o);
  EXPECT_FALSE(o->has_header("Access-Control-Allow-Origin"));
  EXPECT_FALSE(o->has_header("Access-Control-Allow-Methods"));
}

TEST_F(ServerLimits, NoRequestValueReachesTheFilesystem) {
  int st = 0;
  for (const char* url : {"file:///etc/passwd", "/etc/passwd", "../../../etc/passwd"}) {
    json j = post_json(*api(), "/v1/caption", {{"image_url", url}}, &st);
    expect_error(j, st, 400, "invalid_image", url);
  }
  // Profile names are looked up among the configs folder's files, never opened as paths.
  auto b = server_->client(backend_);
  for (const char* name : {"../limits", "/etc/passwd", "limits.json", "configs/limits"}) {
    auto r = b->Patch("/api/v1/config", json{{"active_model", name}}.dump(), "application/json");
    ASSERT_TRUE(r);
    expect_error(json::parse(r->body), r->status, 404, "profile_not_found", name);
  }
}

}  // namespace
}  // namespace md
