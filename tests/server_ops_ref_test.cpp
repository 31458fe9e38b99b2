// moondream-server as a process: API keys, the bounded queue's 503, switching
// profiles while a request is in flight, a client leaving mid-stream, image
// URLs, graceful SIGTERM, the port-taken message, --replace, and startup
// refusing a bad config with one line, and a hub model downloaded through a
// cut-and-resumed transfer (then served from the cache, or replaced by the
// fallback model when the hub is unreachable). Each test starts its own server; the
// MOONDREAM_SERVER_TEST_*_DELAY_MS hooks keep a request in flight long enough.
#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "mock_hub.h"
#include "server/process.h"
#include "server_harness.h"

namespace md {
namespace {

using namespace srvtest;

class ServerOps : public ::testing::Test {
 protected:
  void SetUp() override {
    signal(SIGPIPE, SIG_IGN);
    port_ = free_port();
    backend_ = free_port();
  }
  // Writes profiles into configs/ and starts the server on the first one.
  std::unique_ptr<ServerProcess> start(const std::vector<std::pair<std::string, json>>& profiles,
                                       std::vector<std::string> extra_args = {},
                                       std::vector<std::pair<std::string, std::string>> env = {}, bool wait = true) {
    for (const auto& [name, j] : profiles) write_file(dir_.path / "configs" / (name + ".json"), j.dump(2));
    std::vector<std::string> args = {"--config", (dir_.path / "configs" / (profiles[0].first + ".json")).string()};
    args.insert(args.end(), extra_args.begin(), extra_args.end());
    env.emplace_back("XDG_RUNTIME_DIR", dir_.path.string());
    auto s = std::make_unique<ServerProcess>(args, port_, dir_.path / ("server" + std::to_string(++n_) + ".log"), env);
    if (wait) {
      EXPECT_TRUE(s->wait_ready()) << s->log();
    }
    return s;
  }
  json health(ServerProcess& s) {
    auto r = s.client()->Get("/health");
    return r ? json::parse(r->body) : json();
  }
  // Polls until `pred(health)` holds; false after `timeout_s`.
  bool wait_health(ServerProcess& s, const std::function<bool(const json&)>& pred, double timeout_s = 10) {
    const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
    while (std::chrono::steady_clock::now() < end) {
      const json h = health(s);
      if (h.is_object() && pred(h)) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
  }

  // The servers run with XDG_RUNTIME_DIR = dir_.
  fs::path pid_file() const { return dir_.path / ("moondream-server-" + std::to_string(port_) + ".pid"); }

  TempDir dir_;
  int port_ = 0, backend_ = 0, n_ = 0;
};

json caption_req(int max_tokens = 4) {
  return {{"image_url", data_uri(image("square_378.png"))},
          {"settings", {{"temperature", 0}, {"max_tokens", max_tokens}}}};
}

TEST_F(ServerOps, ApiKeyIsRequiredExceptForHealthAndLogsOneLinePerRequest) {
  auto s = start({{"keyed", tiny_profile(port_, backend_)}}, {"--api-key", "s3cret"}, {{"LOG_LEVEL", "debug"}});
  auto c = s->client();
  int st = 0;
  json j = post_json(*c, "/v1/caption", caption_req(), &st);
  EXPECT_EQ(st, 401);
  EXPECT_EQ(j["error"]["code"], "missing_api_key");
  EXPECT_EQ(j["error"]["type"], "authentication_error");
  j = post_json(*c, "/v1/caption", caption_req(), &st, {{"Authorization", "Bearer wrong"}});
  EXPECT_EQ(st, 401);
  EXPECT_EQ(j["error"]["code"], "invalid_api_key");
  post_json(*c, "/v1/caption", caption_req(), &st, {{"Authorization", "Bearer s3cret"}});
  EXPECT_EQ(st, 200);
  post_json(*c, "/v1/caption", caption_req(), &st, {{"X-Moondream-Auth", "s3cret"}});
  EXPECT_EQ(st, 200);
  auto m = c->Get("/v1/models");
  ASSERT_TRUE(m);
  EXPECT_EQ(m->status, 401);
  auto h = c->Get("/health");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200);
  auto b = s->client(backend_)->Get("/api/v1/config");
  ASSERT_TRUE(b);
  EXPECT_EQ(b->status, 401);
  // CORS preflights never need the key.
  auto o = c->Options("/v1/caption", {{"Origin", "http://x.test"}, {"Access-Control-Request-Method", "POST"}});
  ASSERT_TRUE(o);
  EXPECT_EQ(o->status, 204);

  EXPECT_EQ(s->stop(), 0);
  const std::string log = s->log();
  EXPECT_NE(log.find("POST /v1/caption 401"), std::string::npos) << log;
  EXPECT_NE(log.find("POST /v1/caption 200 image=off response=off tokens="), std::string::npos) << log;
  EXPECT_NE(log.find("queue="), std::string::npos) << log;
  EXPECT_NE(log.find("GET /health 200"), std::string::npos) << "LOG_LEVEL=debug shows health checks: " << log;
}

TEST_F(ServerOps, FullQueueAnswers503WithRetryAfter) {
  // Two requests run at once (performance.max_batch), one may wait.
  auto s = start({{"small", tiny_profile(port_, backend_,
                                         {{"server", {{"queue_size", 1}}}, {"performance", {{"max_batch", 2}}}})}},
                 {}, {{"MOONDREAM_SERVER_TEST_JOB_DELAY_MS", "3000"}});
  int st_a = 0, st_b = 0, st_c = 0;
  std::thread a([&] { post_json(*s->client(), "/v1/caption", caption_req(), &st_a); });
  std::thread b([&] { post_json(*s->client(), "/v1/caption", caption_req(), &st_b); });
  ASSERT_TRUE(wait_health(*s, [](const json& h) { return h["running"] == 2 && h["max_batch"] == 2; }));
  std::thread c([&] { post_json(*s->client(), "/v1/caption", caption_req(), &st_c); });
  ASSERT_TRUE(wait_health(*s, [](const json& h) { return h["queue_depth"] == 1; }));
  {
    const std::string m = s->client(backend_)->Get("/metrics")->body;
    EXPECT_NE(m.find("moondream_num_requests_running 2\n"), std::string::npos) << m;
    EXPECT_NE(m.find("moondream_num_requests_waiting 1\n"), std::string::npos) << m;
    EXPECT_NE(m.find("moondream_requests_deferred 1\n"), std::string::npos) << m;
  }
  auto r = s->client()->Post("/v1/caption", caption_req().dump(), "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 503);
  EXPECT_FALSE(r->get_header_value("Retry-After").empty());
  EXPECT_GE(std::stoi(r->get_header_value("Retry-After")), 1);
  EXPECT_EQ(json::parse(r->body)["error"]["code"], "queue_full");
  a.join();
  b.join();
  c.join();
  EXPECT_EQ(st_a, 200);
  EXPECT_EQ(st_b, 200);
  EXPECT_EQ(st_c, 200);
}

TEST_F(ServerOps, ProfileSwitchKeepsTheRequestInFlight) {
  // Model B: the same weights under another directory, so the switch reloads.
  const fs::path model_b = dir_.path / "model-b";
  fs::create_directories(model_b);
  for (const auto& e : fs::directory_iterator(testdata::tiny_model()))
    fs::create_symlink(e.path(), model_b / e.path().filename());
  const json p2 = tiny_profile(port_, backend_,
                               {{"model_name", "tiny-b"},
                                {"model_path", model_b.string()},
                                {"performance", {{"image_caching", true}, {"response_caching", true}}}});
  json bad = p2;
  bad["performance"]["cache_max_mb"] = "lots";
  auto s = start({{"p1", tiny_profile(port_, backend_)}, {"p2", p2}, {"p3_broken", bad}}, {},
                 {{"MOONDREAM_SERVER_TEST_JOB_DELAY_MS", "5000"}});

  const json q = {{"image_url", data_uri(image("photo_640x480.jpg"))},
                  {"question", "What is this?"},
                  {"stream", true},
                  {"settings", {{"temperature", 0}, {"max_tokens", 16}}}};
  int status = 0;
  std::string body;
  std::thread inflight([&] {
    auto r = s->client()->Post("/v1/query", q.dump(), "application/json");
    status = r ? r->status : -1;
    body = r ? r->body : "";
  });
  ASSERT_TRUE(wait_health(*s, [](const json& h) { return h["busy"] == true; }));
  auto b = s->client(backend_);
  auto r = b->Patch("/api/v1/config", json{{"active_model", "p2"}}.dump(), "application/json");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  const json sw = json::parse(r->body);
  EXPECT_EQ(sw["active_model"], "p2");
  EXPECT_EQ(sw["model_reloaded"], true);
  EXPECT_EQ(health(*s)["busy"], true) << "the switch did not wait for the request";
  inflight.join();
  ASSERT_EQ(status, 200) << body;
  const auto events = sse_data(body);
  ASSERT_GE(events.size(), 2u);
  EXPECT_EQ(json::parse(events.back())["completed"], true);
  std::string streamed;
  for (size_t i = 0; i + 1 < events.size(); ++i) streamed += json::parse(events[i])["chunk"].get<std::string>();

  const json h = health(*s);
  EXPECT_EQ(h["profile"], "p2");
  EXPECT_EQ(h["model"], "tiny-b");
  EXPECT_EQ(h["model_path"], model_b.string());
  EXPECT_EQ(h["cache"]["enabled"], true);
  json plain = q;
  plain["stream"] = false;
  const json a = post_json(*s->client(), "/v1/query", plain, &status);
  ASSERT_EQ(status, 200);
  EXPECT_EQ(a["answer"], streamed) << "same weights, same greedy answer";

  r = b->Patch("/api/v1/config", json{{"active_model", "nope"}}.dump(), "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 404);
  r = b->Patch("/api/v1/config", json{{"active_model", "p3_broken"}}.dump(), "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 400);
  EXPECT_NE(r->body.find("performance.cache_max_mb"), std::string::npos) << r->body;
  r = b->Patch("/api/v1/config", "{}", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 400);
  auto g = b->Get("/api/v1/config");
  ASSERT_TRUE(g);
  const json cfg = json::parse(g->body);
  EXPECT_EQ(cfg["active_model"], "p2");
  EXPECT_EQ(cfg["models"], json::array({"p1", "p2", "p3_broken"}));
  // Back to p1: its model loads again; requests keep working.
  r = b->Patch("/api/v1/config", json{{"active_model", "p1"}}.dump(), "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  post_json(*s->client(), "/v1/caption", caption_req(), &status);
  EXPECT_EQ(status, 200);
}

TEST_F(ServerOps, ClientLeavingMidStreamStopsGeneration) {
  auto s = start({{"slow", tiny_profile(port_, backend_, {{"max_tokens", 400}})}}, {},
                 {{"MOONDREAM_SERVER_TEST_CHUNK_DELAY_MS", "100"}});
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/caption";
  req.body = json{{"image_url", data_uri(image("square_378.png"))},
                  {"stream", true},
                  {"settings", {{"temperature", 0}, {"max_tokens", 400}}}}
                 .dump();
  req.set_header("Content-Type", "application/json");
  std::atomic<int> chunks{0};
  req.content_receiver = [&](const char*, size_t, uint64_t, uint64_t) { return ++chunks < 2; };
  auto c = s->client();
  c->send(req);  // returns once the receiver refuses more
  c->stop();
  EXPECT_GE(chunks.load(), 1);
  const auto left = std::chrono::steady_clock::now();
  ASSERT_TRUE(wait_health(
      *s, [](const json& h) { return h["busy"] == false; }, 20));
  // 400 tokens at >= 100 ms per chunk would take far longer.
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - left).count(), 5.0);
  auto m = s->client(backend_)->Get("/metrics");
  ASSERT_TRUE(m);
  EXPECT_NE(m->body.find("moondream_requests_cancelled_total 1"), std::string::npos) << m->body;
  int st = 0;
  post_json(*s->client(), "/v1/caption", caption_req(), &st);
  EXPECT_EQ(st, 200);
}

TEST_F(ServerOps, ImageUrlsAreFetchedWhenAllowed) {
  httplib::Server files;
  const std::string png = read_file(image("square_378.png"));
  files.Get("/square.png", [&](const httplib::Request&, httplib::Response& res) { res.set_content(png, "image/png"); });
  const int fport = files.bind_to_any_port("127.0.0.1");
  std::thread ft([&] { files.listen_after_bind(); });
  auto s =
      start({{"urls", tiny_profile(port_, backend_,
                                   {{"server", {{"allow_image_urls", true}, {"allow_private_image_urls", true}}}})}});
  const std::string base = "http://127.0.0.1:" + std::to_string(fport);
  int st = 0;
  json req = caption_req();
  const json by_data = post_json(*s->client(), "/v1/caption", req, &st);
  ASSERT_EQ(st, 200);
  req["image_url"] = base + "/square.png";
  const json by_url = post_json(*s->client(), "/v1/caption", req, &st);
  EXPECT_EQ(st, 200) << by_url.dump();
  EXPECT_EQ(by_url["caption"], by_data["caption"]);
  req["image_url"] = base + "/missing.png";
  const json missing = post_json(*s->client(), "/v1/caption", req, &st);
  EXPECT_EQ(st, 400);
  EXPECT_EQ(missing["error"]["code"], "image_url_unreachable");
  files.stop();
  ft.join();
}

TEST_F(ServerOps, SigtermFinishesTheRequestInFlightAndExitsZero) {
  auto s = start({{"p", tiny_profile(port_, backend_)}}, {}, {{"MOONDREAM_SERVER_TEST_JOB_DELAY_MS", "3000"}});
  const fs::path our_pid_file = pid_file();
  ASSERT_TRUE(fs::exists(our_pid_file));
  int st = 0;
  json out;
  std::thread t([&] { out = post_json(*s->client(), "/v1/caption", caption_req(), &st); });
  ASSERT_TRUE(wait_health(*s, [](const json& h) { return h["busy"] == true; }));
  kill(s->pid(), SIGTERM);
  t.join();
  EXPECT_EQ(st, 200) << out.dump();
  EXPECT_TRUE(out["caption"].is_string());
  EXPECT_EQ(s->wait_exit(30), 0) << s->log();
  EXPECT_FALSE(fs::exists(our_pid_file));
  EXPECT_NE(s->log().find("shutting down"), std::string::npos);
}

TEST_F(ServerOps, PortTakenNamesTheHolderAndReplaceLeavesOthersAlone) {
  // This process holds a port the kernel picks now (a free_port() number
  // could meanwhile go to a server of a test running beside this one). Not
  // inherited by the server started below: with the socket open in both, the
  // server named itself as the holder whenever its pid sorted first.
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  socklen_t alen = sizeof a;
  ASSERT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&a), &alen), 0);
  port_ = ntohs(a.sin_port);
  ASSERT_EQ(listen(fd, 4), 0);

  auto s = start({{"p", tiny_profile(port_, backend_)}}, {}, {}, false);
  EXPECT_EQ(s->wait_exit(30), 1);
  const std::string log = s->log();
  EXPECT_NE(log.find("port " + std::to_string(port_) + " is already in use by pid " + std::to_string(getpid())),
            std::string::npos)
      << log;
  EXPECT_LE(std::count(log.begin(), log.end(), '\n'), 1) << log;

  auto r = start({{"p", tiny_profile(port_, backend_)}}, {"--replace"}, {}, false);
  EXPECT_EQ(r->wait_exit(30), 1);
  EXPECT_NE(r->log().find("leaves it alone"), std::string::npos) << r->log();
  // Our socket still listens.
  int err = 0;
  socklen_t len = sizeof err;
  EXPECT_EQ(getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len), 0);
  EXPECT_EQ(server::find_port_owner(port_).pid, getpid());
  close(fd);
}

TEST_F(ServerOps, ReplaceStopsThePreviousServerGracefully) {
  auto first = start({{"p", tiny_profile(port_, backend_)}});
  const pid_t first_pid = first->pid();
  auto second = start({{"p", tiny_profile(port_, backend_)}}, {"--replace"}, {}, false);
  EXPECT_EQ(first->wait_exit(30), 0) << first->log();
  ASSERT_TRUE(wait_health(
      *second, [&](const json& h) { return h["pid"] == second->pid() && h["status"] == "ok"; }, 30))
      << second->log();
  EXPECT_NE(first->log().find("shutting down"), std::string::npos);
  const json h = health(*second);
  EXPECT_EQ(h["pid"], second->pid());
  EXPECT_NE(h["pid"], first_pid);
  const auto pf = server::read_pid_file(pid_file().string());
  ASSERT_TRUE(pf.has_value());
  EXPECT_EQ(pf->pid, second->pid());
  EXPECT_EQ(pf->instance, h["instance"]);
}

TEST_F(ServerOps, BadConfigStopsStartupWithOneLineNamingTheKey) {
  struct Case {
    json patch;
    std::string raw;
    std::string needle;
  };
  const std::vector<Case> cases = {
      {{{"performance", {{"cache_max_mb", "lots"}}}}, "", "performance.cache_max_mb"},
      {{{"server", {{"port", 70000}}}}, "", "server.port"},
      {{{"generation_config", {{"top_p", 0}}}}, "", "generation_config.top_p"},
      {{{"device", "tpu"}}, "", "device"},
      {{{"performance", {{"image_caching", "yes"}}}}, "", "performance.image_caching"},
      {json::object(), "{\"model_name\": ", "not valid JSON"},
  };
  for (const auto& c : cases) {
    const fs::path cfg = dir_.path / "bad" / "bad.json";
    write_file(cfg, c.raw.empty() ? tiny_profile(port_, backend_, c.patch).dump() : c.raw);
    ServerProcess s({"--config", cfg.string()}, port_, dir_.path / "bad.log");
    EXPECT_EQ(s.wait_exit(30), 2) << c.needle;
    const std::string log = s.log();
    EXPECT_EQ(std::count(log.begin(), log.end(), '\n'), 1) << log;
    EXPECT_NE(log.find(c.needle), std::string::npos) << log;
  }
  // Bad --quantization / --kv-cache flags: one error line naming the flag, exit 2.
  for (const auto& [flag, value] : {std::pair{"--quantization", "int3"}, std::pair{"--kv-cache", "int4"}}) {
    const fs::path cfg = dir_.path / "bad" / "flags.json";
    write_file(cfg, tiny_profile(port_, backend_).dump());
    ServerProcess s({"--config", cfg.string(), flag, value}, port_, dir_.path / "flags.log");
    EXPECT_EQ(s.wait_exit(30), 2) << flag;
    EXPECT_NE(s.log().find(flag), std::string::npos) << s.log();
  }
  // A model directory that does not exist: one error line, exit 1.
  const fs::path cfg = dir_.path / "bad" / "nomodel.json";
  write_file(cfg, tiny_profile(port_, backend_, {{"model_path", "/nonexistent/model"}}).dump());
  ServerProcess s({"--config", cfg.string()}, port_, dir_.path / "nomodel.log");
  EXPECT_EQ(s.wait_exit(30), 1);
  EXPECT_NE(s.log().find("/nonexistent/model"), std::string::npos) << s.log();
  // A KV budget below one full-context request of the model: exit 1, naming
  // the key and the least that works (6 MB for the tiny profile's fp32 KV).
  const fs::path small = dir_.path / "bad" / "smallkv.json";
  write_file(small, tiny_profile(port_, backend_, {{"performance", {{"kv_cache_mb", 1}}}}).dump());
  ServerProcess kv({"--config", small.string()}, port_, dir_.path / "smallkv.log");
  EXPECT_EQ(kv.wait_exit(30), 1);
  EXPECT_NE(kv.log().find("performance.kv_cache_mb 1 cannot hold one full-context request"), std::string::npos)
      << kv.log();
  EXPECT_NE(kv.log().find("set it to at least 6"), std::string::npos) << kv.log();
  // Unknown keys only warn.
  auto ok = start({{"extra", tiny_profile(port_, backend_, {{"colour", "blue"}, {"server", {{"shiny", true}}}})}});
  EXPECT_NE(ok->log().find("unknown key 'colour'"), std::string::npos) << ok->log();
  EXPECT_NE(ok->log().find("unknown key 'server.shiny'"), std::string::npos) << ok->log();
}

// The tiny model as a hub repo on the mock hub: the weights through the CDN
// redirect, the small files served directly.
mockhub::MockRepo tiny_hub_repo() {
  mockhub::MockRepo repo;
  repo.commit = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678";
  repo.refs = {"main"};
  for (const char* f : {"config.json", "tokenizer.json"})
    repo.files[f] = mockhub::MockFile{read_file(testdata::tiny_model() / f), false};
  repo.files["model.safetensors"] = mockhub::MockFile{read_file(testdata::tiny_model() / "model.safetensors"), true};
  return repo;
}

TEST_F(ServerOps, HubModelDownloadsWithAResumedTransferThenStartsFromTheCacheWithoutNetwork) {
  mockhub::MockHub hub;
  hub.repos["test/moondream2-tiny"] = tiny_hub_repo();
  const std::string weights = hub.repos["test/moondream2-tiny"].files["model.safetensors"].content;
  const std::string sha = md::hub_detail::sha256_hex(weights);
  hub.cut_first[sha] = weights.size() / 3;  // the first transfer drops a third of the way in

  const fs::path cache = dir_.path / "hf-cache";
  const std::vector<std::pair<std::string, std::string>> env = {
      {"HF_ENDPOINT", hub.url()}, {"HF_HUB_CACHE", cache.string()}, {"HF_HOME", (dir_.path / "hf-home").string()}};
  const json profile = tiny_profile(port_, backend_, {{"model_path", "test/moondream2-tiny"}, {"revision", "main"}});

  std::string first_caption;
  {
    auto s = start({{"hub", profile}}, {}, env, false);
    ASSERT_TRUE(wait_health(
        *s, [](const json& h) { return h["status"] == "ok"; }, 120))
        << s->log();
    const json h = health(*s);
    const fs::path snap =
        cache / "models--test--moondream2-tiny" / "snapshots" / hub.repos["test/moondream2-tiny"].commit;
    EXPECT_EQ(fs::weakly_canonical(h["model_path"].get<std::string>()), fs::weakly_canonical(snap)) << h.dump();
    EXPECT_EQ(h["model_source"], "test/moondream2-tiny");
    EXPECT_EQ(read_file(snap / "model.safetensors"), weights);  // byte-identical after the resume
    int ranged = 0;
    for (const auto& rq : hub.requests())
      if (rq.path.rfind("/cdn/", 0) == 0 && rq.header("range").rfind("bytes=", 0) == 0) ++ranged;
    EXPECT_GE(ranged, 1) << "the cut transfer was not resumed with a Range request";
    int st = 0;
    const json out = post_json(*s->client(), "/v1/caption", caption_req(), &st);
    ASSERT_EQ(st, 200) << out.dump();
    first_caption = out["caption"];
    EXPECT_EQ(s->stop(), 0) << s->log();
  }
  // Second start: the hub is gone; the cache serves the same model.
  const size_t requests_before = hub.request_count();
  hub.stop();
  {
    auto s = start({{"hub", profile}}, {}, env, false);
    ASSERT_TRUE(wait_health(
        *s, [](const json& h) { return h["status"] == "ok"; }, 60))
        << s->log();
    int st = 0;
    const json out = post_json(*s->client(), "/v1/caption", caption_req(), &st);
    ASSERT_EQ(st, 200) << out.dump();
    EXPECT_EQ(out["caption"], first_caption);
    EXPECT_FALSE(health(*s).contains("fallback_from"));
  }
  EXPECT_EQ(hub.request_count(), requests_before);
}

TEST_F(ServerOps, UnreachableHubServesTheFallbackModelAndSaysSo) {
  const std::vector<std::pair<std::string, std::string>> env = {
      {"HF_ENDPOINT", "http://127.0.0.1:" + std::to_string(mockhub::dead_port())},
      {"HF_HUB_CACHE", (dir_.path / "empty-cache").string()},
      {"HF_HOME", (dir_.path / "hf-home").string()}};
  const json profile =
      tiny_profile(port_, backend_, {{"model_path", "vikhyatk/moondream2"}, {"revision", "2025-04-14"}});

  // Without a fallback the start fails with the reason.
  auto failing = start({{"hub", profile}}, {}, env, false);
  EXPECT_EQ(failing->wait_exit(60), 1);
  EXPECT_NE(failing->log().find("cannot load the model"), std::string::npos) << failing->log();

  auto s = start({{"hub", profile}}, {"--fallback-model", testdata::tiny_model().string()}, env, false);
  ASSERT_TRUE(wait_health(
      *s, [](const json& h) { return h["status"] == "ok"; }, 60))
      << s->log();
  const json h = health(*s);
  EXPECT_EQ(h["fallback_from"], "vikhyatk/moondream2") << h.dump();
  EXPECT_FALSE(h["fallback_reason"].get<std::string>().empty());
  EXPECT_EQ(fs::weakly_canonical(h["model_path"].get<std::string>()), fs::weakly_canonical(testdata::tiny_model()));
  int st = 0;
  const json out = post_json(*s->client(), "/v1/caption", caption_req(), &st);
  EXPECT_EQ(st, 200) << out.dump();
  EXPECT_NE(s->log().find("serving the fallback model"), std::string::npos) << s->log();
}

}  // namespace
}  // namespace md
