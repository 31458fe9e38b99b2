// moondream-server over HTTP, one server for the whole suite: the Moondream
// API (plain and streaming) gives the CLI's greedy answers, the OpenAI chat
// completions API works with the official `openai` npm client, errors carry
// the right statuses, CORS preflights are answered, and the caches skip the
// vision encoder (and the whole generation) on repeated images/requests.
#include <gtest/gtest.h>

#include <random>

#include "server_harness.h"

namespace md {
namespace {

using namespace srvtest;
using testdata::run_command;
using testdata::shell_quote;

class ServerApi : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    signal(SIGPIPE, SIG_IGN);
    dir_ = new TempDir();
    port_ = free_port();
    backend_ = free_port();
    const json limits = {
        {"max_body_bytes", 6'000'000}, {"max_image_bytes", 3'000'000}, {"max_image_pixels", 4'000'000}};
    const json profile =
        tiny_profile(port_, backend_,
                     {{"performance", {{"image_caching", true}, {"response_caching", true}, {"cache_max_mb", 64}}},
                      {"server", {{"allow_image_urls", true}, {"allow_private_image_urls", false}}},
                      {"limits", limits}});
    write_file(dir_->path / "configs" / "main.json", profile.dump(2));
    write_file(dir_->path / "configs" / "other.json", tiny_profile(port_, backend_).dump(2));
    server_ = new ServerProcess({"--config", (dir_->path / "configs" / "main.json").string(), "--pid-file",
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
  std::unique_ptr<httplib::Client> backend() { return server_->client(backend_); }
  json health() {
    auto r = api()->Get("/health");
    EXPECT_TRUE(r);
    return r ? json::parse(r->body) : json();
  }

  static TempDir* dir_;
  static ServerProcess* server_;
  static int port_, backend_;
};
TempDir* ServerApi::dir_ = nullptr;
ServerProcess* ServerApi::server_ = nullptr;
int ServerApi::port_ = 0;
int ServerApi::backend_ = 0;

json cli_json(const std::string& task, const fs::path& img, const std::string& args) {
  const auto r = run_command(cli_bin() + " " + task + " --model " + shell_quote(testdata::tiny_model().string()) +
                             " --image " + shell_quote(img.string()) + " --json " + args);
  EXPECT_EQ(r.status, 0) << task << " " << args;
  return r.status == 0 ? json::parse(r.out) : json();
}

void expect_error(const json& j, int status, int want_status, const std::string& code, const std::string& what) {
  EXPECT_EQ(status, want_status) << what << ": " << j.dump();
  ASSERT_TRUE(j.is_object() && j.contains("error")) << what << ": " << j.dump();
  EXPECT_TRUE(j["error"]["message"].is_string()) << what;
  EXPECT_TRUE(j["error"]["type"].is_string()) << what;
  if (!code.empty()) {
    EXPECT_EQ(j["error"]["code"], code) << what << ": " << j.dump();
  }
}

TEST_F(ServerApi, HealthAndModels) {
  const json h = health();
  EXPECT_EQ(h["status"], "ok");
  EXPECT_EQ(h["server"], "moondream-server");
  EXPECT_EQ(h["model"], "moondream2-tiny");
  EXPECT_EQ(h["pid"], server_->pid());
  for (const char* k :
       {"model_path", "revision", "load_seconds", "uptime_seconds", "rss_bytes", "threads", "queue_depth", "cache"})
    EXPECT_TRUE(h.contains(k)) << k;
  for (const char* k : {"hits", "misses", "entries", "bytes"}) EXPECT_TRUE(h["cache"][k].is_number()) << k;
  EXPECT_GT(h["rss_bytes"].get<double>(), 0);
  // The precision the model was loaded with (the test profile: as stored, f32 rows).
  EXPECT_EQ(h["quantization"], "none");
  EXPECT_EQ(h["kv_cache"], "f32");

  auto r = api()->Get("/v1/models");
  ASSERT_TRUE(r);
  const json m = json::parse(r->body);
  EXPECT_EQ(m["object"], "list");
  ASSERT_EQ(m["data"].size(), 1u);
  EXPECT_EQ(m["data"][0]["id"], "moondream2-tiny");
  EXPECT_EQ(m["data"][0]["object"], "model");
}

TEST_F(ServerApi, GreedyAnswersEqualTheCli) {
  auto c = api();
  for (const char* name : {"photo_640x480.jpg", "square_378.png"}) {
    const fs::path img = image(name);
    const auto meta = testdata::read_json(testdata::root() / "expected" / img.stem() / "meta.json");
    const int max_tokens = meta["max_tokens"].get<int>();
    const std::string question = meta["query_question"].get<std::string>();

    const json cap_cli = cli_json("caption", img, "--temperature 0 --max-tokens " + std::to_string(max_tokens));
    int status = 0;
    const json cap = post_json(*c, "/v1/caption",
                               {{"image_url", data_uri(img)},
                                {"length", "normal"},
                                {"settings", {{"temperature", 0}, {"max_tokens", max_tokens}}}},
                               &status);
    ASSERT_EQ(status, 200) << cap.dump();
    EXPECT_EQ(cap["caption"], cap_cli["caption"]) << name;
    EXPECT_EQ(cap["usage"]["completion_tokens"], cap_cli["tokens"].size()) << name;

    const json q_cli =
        cli_json("query", img,
                 "--question " + shell_quote(question) + " --temperature 0 --max-tokens " + std::to_string(max_tokens));
    const json q = post_json(*c, "/v1/query",
                             {{"image_url", data_uri(img)},
                              {"question", question},
                              {"settings", {{"temperature", 0}, {"max_tokens", max_tokens}}}},
                             &status);
    ASSERT_EQ(status, 200) << q.dump();
    EXPECT_EQ(q["answer"], q_cli["answer"]) << name;
  }

  const fs::path img = image("photo_640x480.jpg");
  const json d_cli = cli_json("detect", img, "--object cat");
  int status = 0;
  const json d = post_json(*c, "/v1/detect", {{"image_url", data_uri(img)}, {"object", "cat"}}, &status);
  ASSERT_EQ(status, 200) << d.dump();
  EXPECT_EQ(d["objects"], d_cli["objects"]);

  const json p_cli = cli_json("point", img, "--object dog --max-objects 2");
  const json p = post_json(
      *c, "/v1/point", {{"image_url", data_uri(img)}, {"object", "dog"}, {"settings", {{"max_objects", 2}}}}, &status);
  ASSERT_EQ(status, 200) << p.dump();
  EXPECT_EQ(p["points"], p_cli["points"]);
}

TEST_F(ServerApi, StreamingCaptionAndQueryMatchPlainAnswers) {
  auto c = api();
  const std::string img = data_uri(image("rgba_500x400.png"));
  for (const std::string task : {"caption", "query"}) {
    json req = {{"image_url", img}, {"stream", true}, {"settings", {{"temperature", 0}, {"max_tokens", 40}}}};
    if (task == "query") req["question"] = "What is in the picture?";
    auto r = c->Post(("/v1/" + task).c_str(), req.dump(), "application/json");
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 200) << r->body;
    EXPECT_NE(r->get_header_value("Content-Type").find("text/event-stream"), std::string::npos);
    const auto events = sse_data(r->body);
    ASSERT_GE(events.size(), 3u) << r->body;
    std::string text;
    for (size_t i = 0; i + 1 < events.size(); ++i) {
      const json e = json::parse(events[i]);
      ASSERT_TRUE(e.contains("chunk")) << events[i];
      text += e["chunk"].get<std::string>();
    }
    const json last = json::parse(events.back());
    EXPECT_EQ(last["completed"], true);
    EXPECT_TRUE(last["timings"]["decode_s"].is_number());
    EXPECT_EQ(last["usage"]["completion_tokens"], 40);

    req["stream"] = false;
    int status = 0;
    const json plain = post_json(*c, "/v1/" + task, req, &status);
    ASSERT_EQ(status, 200);
    EXPECT_EQ(text, plain[task == "caption" ? "caption" : "answer"]) << task;
  }
}

TEST_F(ServerApi, ChatCompletionsPlainAndStreamingOverRawHttp) {
  auto c = api();
  const std::string img = data_uri(image("square_378.png"));
  const std::string question = "Describe the colours.";
  int status = 0;
  const json q = post_json(
      *c, "/v1/query",
      {{"image_url", img}, {"question", question}, {"settings", {{"temperature", 0}, {"max_tokens", 20}}}}, &status);
  ASSERT_EQ(status, 200);

  json req = {{"model", "anything"},
              {"messages",
               {{{"role", "system"}, {"content", "You are helpful."}},
                {{"role", "user"},
                 {"content",
                  {{{"type", "text"}, {"text", question}}, {{"type", "image_url"}, {"image_url", {{"url", img}}}}}}}}},
              {"temperature", 0},
              {"max_tokens", 20}};
  const json plain = post_json(*c, "/v1/chat/completions", req, &status);
  ASSERT_EQ(status, 200) << plain.dump();
  EXPECT_EQ(plain["object"], "chat.completion");
  EXPECT_EQ(plain["model"], "moondream2-tiny");
  EXPECT_EQ(plain["choices"][0]["message"]["content"], q["answer"]);
  EXPECT_EQ(plain["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(plain["usage"]["completion_tokens"], 20);
  EXPECT_TRUE(plain["timings"].is_object());

  req["stream"] = true;
  req["stream_options"] = {{"include_usage", true}};
  auto r = c->Post("/v1/chat/completions", req.dump(), "application/json");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200);
  const auto events = sse_data(r->body);
  ASSERT_GE(events.size(), 4u);
  EXPECT_EQ(events.back(), "[DONE]");
  std::string text;
  std::string finish;
  json usage;
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    const json e = json::parse(events[i]);
    EXPECT_EQ(e["object"], "chat.completion.chunk");
    if (!e["choices"].empty()) {
      text += e["choices"][0]["delta"].value("content", "");
      if (e["choices"][0]["finish_reason"].is_string()) finish = e["choices"][0]["finish_reason"];
    }
    if (e.contains("usage") && e["usage"].is_object()) usage = e["usage"];
  }
  EXPECT_EQ(text, q["answer"]);
  EXPECT_EQ(finish, "length");
  EXPECT_EQ(usage["completion_tokens"], 20);

  // A bare string content with an earlier image turn works as chat history.
  json hist = {
      {"messages",
       {{{"role", "user"},
         {"content", {{{"type", "text"}, {"text", question}}, {{"type", "image_url"}, {"image_url", {{"url", img}}}}}}},
        {{"role", "assistant"}, {"content", q["answer"]}},
        {{"role", "user"}, {"content", "And the shapes?"}}}},
      {"temperature", 0},
      {"max_tokens", 8}};
  const json h = post_json(*c, "/v1/chat/completions", hist, &status);
  EXPECT_EQ(status, 200) << h.dump();
  EXPECT_TRUE(h["choices"][0]["message"]["content"].is_string());
}

TEST_F(ServerApi, StopSequencesCutTheAnswer) {
  auto c = api();
  const std::string img = data_uri(image("solid_1000x700.png"));
  json req = {{"messages",
               {{{"role", "user"},
                 {"content",
                  {{{"type", "image_url"}, {"image_url", {{"url", img}}}}, {{"type", "text"}, {"text", "What?"}}}}}}},
              {"temperature", 0},
              {"max_tokens", 30}};
  int status = 0;
  const json full = post_json(*c, "/v1/chat/completions", req, &status);
  ASSERT_EQ(status, 200);
  const std::string text = full["choices"][0]["message"]["content"];
  // A stop string from the middle of the answer.
  const size_t cut = text.find(' ', text.size() / 2);
  ASSERT_NE(cut, std::string::npos) << text;
  const std::string stop = text.substr(cut, std::min<size_t>(4, text.size() - cut));
  req["stop"] = {stop};
  const json cutj = post_json(*c, "/v1/chat/completions", req, &status);
  ASSERT_EQ(status, 200);
  EXPECT_EQ(cutj["choices"][0]["message"]["content"], text.substr(0, text.find(stop)));
  EXPECT_EQ(cutj["choices"][0]["finish_reason"], "stop");
}

TEST_F(ServerApi, OpenAiNpmClientPlainAndStreaming) {
  const fs::path script = fs::path(MOONDREAM_SOURCE_DIR) / "tests" / "node" / "server" / "openai_client.mjs";
  ASSERT_TRUE(fs::exists(fs::path(MOONDREAM_SOURCE_DIR) / "tests" / "node" / "node_modules" / "openai"))
      << "run npm ci in tests/node";
  const fs::path img = image("photo_640x480.jpg");
  const std::string question = "What is happening here?";
  const std::string err = (dir_->path / "node.err").string();
  const auto r = run_command("node " + shell_quote(script.string()) + " " +
                             shell_quote("http://127.0.0.1:" + std::to_string(port_) + "/v1") + " " +
                             shell_quote(img.string()) + " " + shell_quote(question) + " 24 2>" + shell_quote(err));
  ASSERT_EQ(r.status, 0) << r.out << read_file(err);
  const json out = json::parse(r.out);
  auto c = api();
  int status = 0;
  const json q = post_json(
      *c, "/v1/query",
      {{"image_url", data_uri(img)}, {"question", question}, {"settings", {{"temperature", 0}, {"max_tokens", 24}}}},
      &status);
  ASSERT_EQ(status, 200);
  EXPECT_EQ(out["content"], q["answer"]);
  EXPECT_EQ(out["streamed"], q["answer"]);
  EXPECT_EQ(out["models"], json::array({"moondream2-tiny"}));
}

TEST_F(ServerApi, ErrorStatuses) {
  auto c = api();
  const std::string img = data_uri(image("square_378.png"));
  auto raw = [&](const std::string& path, const std::string& body, int* status) {
    auto r = c->Post(path.c_str(), body, "application/json");
    *status = r ? r->status : -1;
    return r ? json::parse(r->body) : json();
  };
  int st = 0;
  json j;
  j = raw("/v1/query", "{bad", &st);
  expect_error(j, st, 400, "invalid_json", "bad json");
  j = raw("/v1/query", "[1, 2]", &st);
  expect_error(j, st, 400, "invalid_json", "not an object");
  j = post_json(*c, "/v1/query", {{"question", "hi"}}, &st);
  expect_error(j, st, 400, "missing_field", "no image_url");
  j = post_json(*c, "/v1/query", {{"image_url", img}}, &st);
  expect_error(j, st, 400, "missing_field", "no question");
  j = post_json(*c, "/v1/detect", {{"image_url", img}}, &st);
  expect_error(j, st, 400, "missing_field", "no object");
  j = post_json(*c, "/v1/caption", {{"image_url", "data:image/png;base64," + server::base64_encode("not an image")}},
                &st);
  expect_error(j, st, 400, "invalid_image", "undecodable image");
  j = post_json(*c, "/v1/caption", {{"image_url", "data:image/png;base64,@@@@"}}, &st);
  expect_error(j, st, 400, "invalid_image", "bad base64");
  j = post_json(*c, "/v1/caption", {{"image_url", data_uri(image("photo_4000x3000.jpg"))}}, &st);
  expect_error(j, st, 400, "image_too_large", "too many pixels");
  std::string big(3'200'000, '\0');
  std::mt19937 g(1);
  for (char& ch : big) ch = char(g());
  j = post_json(*c, "/v1/caption", {{"image_url", "data:image/jpeg;base64," + server::base64_encode(big)}}, &st);
  expect_error(j, st, 400, "image_too_large", "too many bytes");
  j = raw("/v1/caption", "{\"image_url\": \"" + std::string(7'000'000, 'A') + "\"}", &st);
  expect_error(j, st, 413, "payload_too_large", "body too large");
  j = post_json(*c, "/v1/caption", {{"image_url", img}, {"length", "huge"}}, &st);
  expect_error(j, st, 400, "invalid_field", "bad length");
  j = post_json(*c, "/v1/caption", {{"image_url", img}, {"settings", {{"temperature", "hot"}}}}, &st);
  expect_error(j, st, 400, "invalid_field", "bad temperature");
  j = post_json(*c, "/v1/caption", {{"image_url", img}, {"settings", {{"max_tokens", 100000}}}}, &st);
  expect_error(j, st, 400, "max_tokens_too_large", "max_tokens above the ceiling");
  j = post_json(*c, "/v1/caption", {{"image_url", "http://127.0.0.1:1/cat.png"}}, &st);
  expect_error(j, st, 400, "image_url_forbidden", "loopback URL");
  j = post_json(*c, "/v1/chat/completions", {{"messages", {{{"role", "user"}, {"content", "hello"}}}}}, &st);
  expect_error(j, st, 400, "image_required", "chat without an image");
  j = post_json(*c, "/v1/chat/completions", {{"messages", json::array()}}, &st);
  expect_error(j, st, 400, "invalid_field", "no messages");
  const json img_msg = {
      {"role", "user"},
      {"content", {{{"type", "image_url"}, {"image_url", {{"url", img}}}}, {{"type", "text"}, {"text", "?"}}}}};
  j = post_json(*c, "/v1/chat/completions", {{"messages", {img_msg}}, {"n", 2}}, &st);
  expect_error(j, st, 400, "invalid_field", "n = 2");
  j = post_json(*c, "/v1/chat/completions", {{"messages", {img_msg, {{"role", "assistant"}, {"content", "x"}}}}}, &st);
  expect_error(j, st, 400, "invalid_field", "last message not from the user");

  auto g405 = c->Get("/v1/caption");
  ASSERT_TRUE(g405);
  expect_error(json::parse(g405->body), g405->status, 405, "method_not_allowed", "GET on a POST endpoint");
  EXPECT_EQ(g405->get_header_value("Allow"), "POST");
  auto p405 = c->Put("/v1/query", "{}", "application/json");
  ASSERT_TRUE(p405);
  EXPECT_EQ(p405->status, 405);
  // The route table answers for every port and every path it holds: both
  // methods of the config endpoint, a path with a parameter.
  auto c405 = backend()->Put("/api/v1/config", "{}", "application/json");
  ASSERT_TRUE(c405);
  EXPECT_EQ(c405->status, 405);
  EXPECT_EQ(c405->get_header_value("Allow"), "GET, PATCH");
  auto m405 = c->Delete("/v1/models/moondream2");
  ASSERT_TRUE(m405);
  EXPECT_EQ(m405->status, 405);
  EXPECT_EQ(m405->get_header_value("Allow"), "GET");
  auto metrics_405 = c->Post("/metrics", "", "text/plain");  // a backend-only path on the API port
  ASSERT_TRUE(metrics_405);
  EXPECT_EQ(metrics_405->status, 404);
  auto g404 = c->Get("/v1/nothing-here");
  ASSERT_TRUE(g404);
  expect_error(json::parse(g404->body), g404->status, 404, "not_found", "unknown path");
  auto b404 = backend()->Get("/nothing");
  ASSERT_TRUE(b404);
  EXPECT_EQ(b404->status, 404);
}

TEST_F(ServerApi, CorsPreflightAndHeaders) {
  auto c = api();
  httplib::Headers h = {{"Origin", "http://localhost:3000"},
                        {"Access-Control-Request-Method", "POST"},
                        {"Access-Control-Request-Headers", "content-type, authorization"}};
  auto r = c->Options("/v1/chat/completions", h);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 204);
  EXPECT_EQ(r->get_header_value("Access-Control-Allow-Origin"), "http://localhost:3000");
  EXPECT_NE(r->get_header_value("Access-Control-Allow-Methods").find("POST"), std::string::npos);
  EXPECT_EQ(r->get_header_value("Access-Control-Allow-Headers"), "content-type, authorization");

  auto g = c->Get("/health", {{"Origin", "http://localhost:3000"}});
  ASSERT_TRUE(g);
  EXPECT_EQ(g->get_header_value("Access-Control-Allow-Origin"), "http://localhost:3000");
  auto e = c->Get("/nope", {{"Origin", "http://a.test"}});
  ASSERT_TRUE(e);
  EXPECT_EQ(e->get_header_value("Access-Control-Allow-Origin"), "http://a.test");
  auto s = c->Post(
      "/v1/caption", {{"Origin", "http://a.test"}},
      json{{"image_url", data_uri(image("square_378.png"))}, {"stream", true}, {"settings", {{"max_tokens", 4}}}}
          .dump(),
      "application/json");
  ASSERT_TRUE(s);
  EXPECT_EQ(s->get_header_value("Access-Control-Allow-Origin"), "http://a.test");
}

TEST_F(ServerApi, SecondQuestionOnAnImageSkipsTheVisionEncoder) {
  auto c = api();
  const std::string img = data_uri(image("wide_1600x300.webp"));
  const json h0 = health();
  int status = 0;
  const json a =
      post_json(*c, "/v1/query",
                {{"image_url", img}, {"question", "first question"}, {"settings", {{"max_tokens", 6}}}}, &status);
  ASSERT_EQ(status, 200) << a.dump();
  EXPECT_EQ(a["timings"]["image_cache"], "miss");
  EXPECT_GT(a["timings"]["vision_s"].get<double>(), 0.0);
  EXPECT_GT(a["timings"]["decode_image_s"].get<double>(), 0.0);
  const json h1 = health();
  EXPECT_EQ(h1["cache"]["misses"].get<int>(), h0["cache"]["misses"].get<int>() + 1);
  EXPECT_GE(h1["cache"]["entries"].get<int>(), 1);
  EXPECT_GT(h1["cache"]["bytes"].get<double>(), 0);

  const json b =
      post_json(*c, "/v1/query",
                {{"image_url", img}, {"question", "second question"}, {"settings", {{"max_tokens", 6}}}}, &status);
  ASSERT_EQ(status, 200) << b.dump();
  EXPECT_EQ(b["timings"]["image_cache"], "hit");
  EXPECT_EQ(b["timings"]["vision_s"].get<double>(), 0.0);
  EXPECT_EQ(b["timings"]["decode_image_s"].get<double>(), 0.0);
  EXPECT_EQ(b["usage"]["prompt_tokens_details"]["cached_tokens"], b["usage"]["prompt_tokens_details"]["image_tokens"]);
  const json h2 = health();
  EXPECT_EQ(h2["cache"]["hits"].get<int>(), h1["cache"]["hits"].get<int>() + 1);
  EXPECT_EQ(h2["cache"]["misses"], h1["cache"]["misses"]);
}

TEST_F(ServerApi, DeterministicRequestsComeFromTheResponseCache) {
  auto c = api();
  const json req = {{"image_url", data_uri(image("grey_300x900.png"))},
                    {"settings", {{"temperature", 0}, {"max_tokens", 12}}}};
  int status = 0;
  const json a = post_json(*c, "/v1/caption", req, &status);
  ASSERT_EQ(status, 200);
  EXPECT_EQ(a["timings"]["response_cache"], "miss");
  const int hits = health()["response_cache"]["hits"];
  const json b = post_json(*c, "/v1/caption", req, &status);
  ASSERT_EQ(status, 200);
  EXPECT_EQ(b["timings"]["response_cache"], "hit");
  EXPECT_EQ(b["caption"], a["caption"]);
  EXPECT_EQ(health()["response_cache"]["hits"].get<int>(), hits + 1);
  // Sampling is not deterministic: never cached.
  json sampled = req;
  sampled["settings"]["temperature"] = 0.7;
  const json s = post_json(*c, "/v1/caption", sampled, &status);
  ASSERT_EQ(status, 200);
  EXPECT_EQ(s["timings"]["response_cache"], "off");
}

TEST_F(ServerApi, BackendConfigAndMetrics) {
  int status = 0;
  post_json(*api(), "/v1/caption",
            {{"image_url", data_uri(image("square_378.png"))}, {"settings", {{"max_tokens", 3}}}}, &status);
  ASSERT_EQ(status, 200);
  auto b = backend();
  auto r = b->Get("/api/v1/config");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200);
  const json cfg = json::parse(r->body);
  EXPECT_EQ(cfg["active_model"], "main");
  EXPECT_EQ(cfg["models"], json::array({"main", "other"}));
  auto m = b->Get("/metrics");
  ASSERT_TRUE(m);
  ASSERT_EQ(m->status, 200);
  for (const char* k :
       {"moondream_requests_total{", "moondream_request_duration_seconds_bucket{", "moondream_generated_tokens_total{",
        "moondream_decode_tokens_per_second ", "moondream_image_cache_hits_total ", "moondream_queue_depth "})
    EXPECT_NE(m->body.find(k), std::string::npos) << k;
  EXPECT_NE(m->get_header_value("Content-Type").find("text/plain"), std::string::npos);
}

}  // namespace
}  // namespace md
