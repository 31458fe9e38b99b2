// The web page served by moondream-server at `/` (web/, built into the
// binary): its files, types and Content-Security-Policy, no key needed for
// the page itself, --no-web-ui; then the page itself in headless Chromium
// driven by playwright-core (tests/node/web/web_ui.mjs) against the real
// server on the tiny model. Screenshots: build/web-screenshots/*.png.
#include <gtest/gtest.h>

#include <cctype>
#include <cstring>

#include "server_harness.h"

namespace md {
namespace {

using namespace srvtest;
using testdata::run_command;
using testdata::shell_quote;

const char* const kKey = "web-test-key-7f3a";

class WebUi : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    signal(SIGPIPE, SIG_IGN);
    dir_ = new TempDir();
    port_ = free_port();
    key_port_ = free_port();
    off_port_ = free_port();
    auto start = [](int port, const std::string& name, std::vector<std::string> extra,
                    std::vector<std::pair<std::string, std::string>> env = {}) {
      const fs::path cfg = dir_->path / (name + ".json");
      write_file(cfg, tiny_profile(port, 0).dump(2));
      std::vector<std::string> args = {"--config", cfg.string(), "--pid-file", (dir_->path / (name + ".pid")).string()};
      args.insert(args.end(), extra.begin(), extra.end());
      return new ServerProcess(args, port, dir_->path / (name + ".log"), env);
    };
    // Streamed chunks are slowed a little so that streaming is visible to the page.
    server_ = start(port_, "open", {}, {{"MOONDREAM_SERVER_TEST_CHUNK_DELAY_MS", "40"}});
    key_server_ = start(key_port_, "key", {"--api-key", kKey});
    off_server_ = start(off_port_, "off", {"--no-web-ui"});
    ASSERT_TRUE(server_->wait_ready()) << server_->log();
    ASSERT_TRUE(key_server_->wait_ready()) << key_server_->log();
    ASSERT_TRUE(off_server_->wait_ready()) << off_server_->log();
  }
  static void TearDownTestSuite() {
    for (ServerProcess** s : {&server_, &key_server_, &off_server_}) {
      if (*s) {
        EXPECT_EQ((*s)->stop(), 0) << (*s)->log();
      }
      delete *s;
      *s = nullptr;
    }
    delete dir_;
    dir_ = nullptr;
  }

  static TempDir* dir_;
  static ServerProcess *server_, *key_server_, *off_server_;
  static int port_, key_port_, off_port_;
};
TempDir* WebUi::dir_ = nullptr;
ServerProcess* WebUi::server_ = nullptr;
ServerProcess* WebUi::key_server_ = nullptr;
ServerProcess* WebUi::off_server_ = nullptr;
int WebUi::port_ = 0;
int WebUi::key_port_ = 0;
int WebUi::off_port_ = 0;

TEST_F(WebUi, PageAndAssetsHaveTheirTypesAndPolicy) {
  auto c = server_->client();
  const std::pair<const char*, const char*> files[] = {{"/", "text/html; charset=utf-8"},
                                                       {"/index.html", "text/html; charset=utf-8"},
                                                       {"/app.js", "text/javascript; charset=utf-8"},
                                                       {"/style.css", "text/css; charset=utf-8"},
                                                       {"/favicon.svg", "image/svg+xml"}};
  for (const auto& [path, type] : files) {
    auto r = c->Get(path);
    ASSERT_TRUE(r) << path;
    EXPECT_EQ(r->status, 200) << path;
    EXPECT_EQ(r->get_header_value("Content-Type"), type) << path;
    const std::string csp = r->get_header_value("Content-Security-Policy");
    EXPECT_NE(csp.find("default-src 'none'"), std::string::npos) << path << ": " << csp;
    EXPECT_NE(csp.find("script-src 'self'"), std::string::npos) << csp;
    EXPECT_NE(csp.find("connect-src 'self'"), std::string::npos) << csp;
    EXPECT_EQ(csp.find("unsafe"), std::string::npos) << csp;
    EXPECT_EQ(csp.find("http"), std::string::npos) << "no other origin is allowed: " << csp;
    EXPECT_EQ(r->get_header_value("X-Content-Type-Options"), "nosniff");
    EXPECT_FALSE(r->get_header_value("ETag").empty());
    EXPECT_GT(r->body.size(), 100u) << path;
  }
  const std::string html = c->Get("/")->body;
  EXPECT_NE(html.find("<script src=\"/app.js\""), std::string::npos);
  EXPECT_NE(html.find("href=\"/style.css\""), std::string::npos);
  EXPECT_NE(html.find("name=\"viewport\""), std::string::npos) << "usable on a phone";
}

TEST_F(WebUi, NothingIsLoadedFromOtherOrigins) {
  auto c = server_->client();
  // The only "://" allowed: the SVG namespace (not a request) and the advice
  // to open the page on localhost for the camera.
  // Every "scheme://rest" in the files (std::regex trips GCC 12's warnings under ASan).
  auto urls = [](const std::string& body) {
    std::vector<std::string> out;
    for (size_t p = body.find("://"); p != std::string::npos; p = body.find("://", p + 3)) {
      size_t b = p, e = p + 3;
      while (b > 0 && (std::isalnum((unsigned char)body[b - 1]) || std::strchr("+.-", body[b - 1]))) --b;
      while (e < body.size() && !std::isspace((unsigned char)body[e]) && !std::strchr("\"'`)<>", body[e])) ++e;
      out.push_back(body.substr(b, e - b));
    }
    return out;
  };
  for (const char* path : {"/", "/app.js", "/style.css", "/favicon.svg"}) {
    const std::string body = c->Get(path)->body;
    for (const std::string& u : urls(body))
      EXPECT_TRUE(u == "http://www.w3.org/2000/svg" || u == "http://localhost:PORT") << path << ": " << u;
    EXPECT_EQ(body.find("@import"), std::string::npos) << path;
    EXPECT_EQ(body.find("//cdn"), std::string::npos) << path;
  }
}

TEST_F(WebUi, ConditionalGetAndMethods) {
  auto c = server_->client();
  auto r = c->Get("/app.js");
  ASSERT_TRUE(r);
  const std::string etag = r->get_header_value("ETag");
  auto again = c->Get("/app.js", {{"If-None-Match", etag}});
  ASSERT_TRUE(again);
  EXPECT_EQ(again->status, 304);
  EXPECT_TRUE(again->body.empty());
  auto post = c->Post("/app.js", "x", "text/plain");
  ASSERT_TRUE(post);
  EXPECT_EQ(post->status, 405);
  EXPECT_EQ(post->get_header_value("Allow"), "GET");
  auto missing = c->Get("/nope.js");
  ASSERT_TRUE(missing);
  EXPECT_EQ(missing->status, 404);
}

TEST_F(WebUi, JsonClientsStillGetTheIndex) {
  auto r = server_->client()->Get("/", {{"Accept", "application/json"}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  const json j = json::parse(r->body);
  EXPECT_EQ(j["server"], "moondream-server");
  EXPECT_EQ(j["web_ui"], true);
  EXPECT_TRUE(j["endpoints"].is_array());
}

TEST_F(WebUi, PageNeedsNoKeyButTheApiDoes) {
  auto c = key_server_->client();
  for (const char* path : {"/", "/app.js", "/style.css", "/favicon.svg", "/health"}) {
    auto r = c->Get(path);
    ASSERT_TRUE(r) << path;
    EXPECT_EQ(r->status, 200) << path;
  }
  int status = 0;
  const json j = post_json(*c, "/v1/caption", {{"image_url", data_uri(image("square_378.png"))}}, &status);
  EXPECT_EQ(status, 401) << j.dump();
  EXPECT_EQ(j["error"]["code"], "missing_api_key");
}

TEST_F(WebUi, NoWebUiFlagTurnsThePageOff) {
  auto c = off_server_->client();
  auto r = c->Get("/", {{"Accept", "text/html"}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->get_header_value("Content-Type"), "application/json");
  EXPECT_EQ(json::parse(r->body)["web_ui"], false);
  for (const char* path : {"/app.js", "/style.css", "/index.html"}) {
    auto a = c->Get(path);
    ASSERT_TRUE(a);
    EXPECT_EQ(a->status, 404) << path;
    EXPECT_EQ(json::parse(a->body)["error"]["code"], "not_found");
  }
}

TEST_F(WebUi, PlaygroundInHeadlessChromium) {
  const fs::path node_dir = fs::path(MOONDREAM_SOURCE_DIR) / "tests" / "node";
  ASSERT_TRUE(fs::exists(node_dir / "node_modules" / "playwright-core"))
      << "run npm ci in tests/node (scripts/install-deps.sh does)";
  const char* chromium_env = std::getenv("CHROMIUM");
  const std::string chromium = chromium_env && *chromium_env ? chromium_env : "/usr/bin/chromium";
  ASSERT_TRUE(fs::exists(chromium)) << chromium
                                    << " is missing: apt-get install chromium (scripts/install-deps.sh does)";
  const fs::path shots = fs::path(MOONDREAM_BINARY_DIR) / "web-screenshots";
  std::error_code ec;
  fs::remove_all(shots, ec);
  const std::string err = (dir_->path / "web_ui.err").string();
  const auto r = run_command("node " + shell_quote((node_dir / "web" / "web_ui.mjs").string()) + " --base " +
                             shell_quote("http://127.0.0.1:" + std::to_string(port_)) + " --key-base " +
                             shell_quote("http://127.0.0.1:" + std::to_string(key_port_)) + " --key " + kKey +
                             " --out " + shell_quote(shots.string()) + " 2>" + shell_quote(err));
  ASSERT_EQ(r.status, 0) << r.out << read_file(err) << "\nserver log:\n" << server_->log();
  const json out = json::parse(r.out);
  std::cout << "web_ui.mjs: " << out.dump() << "\n";
  EXPECT_GE(out["caption"]["states"].get<int>(), 3);
  EXPECT_LE(out["detect_desktop"]["max_error_px"].get<double>(), 1.0);
  EXPECT_LE(out["detect_phone"]["max_error_px"].get<double>(), 1.0);
  EXPECT_EQ(out["live_fast"]["max_in_flight"], 1);
  EXPECT_GE(out["live_fast"]["requests"].get<int>(), 4);
  EXPECT_NE(out["error_message"].get<std::string>().find("400"), std::string::npos);
  for (const char* name : {"01-caption-streamed", "02-detect-boxes-desktop", "03-detect-boxes-phone", "05-error-400",
                           "06-camera-live", "08-api-key-dialog"})
    EXPECT_TRUE(fs::exists(shots / (std::string(name) + ".png"))) << name;
}

}  // namespace
}  // namespace md
