// moondream-server on a 2025-06-21 model (the tiny one in the snapshot's
// layout, its tokenizer found in a hub cache, offline): /health names the
// revision; the official `moondream` npm client's query({reasoning: true})
// gets the reasoning object, a question without an image an answer; the
// `openai` client's conversation without an image an answer; /v1/gaze,
// spatial_refs and streaming reasoning. Every answer is compared with the
// engine's own run_task on the same model.
#include <gtest/gtest.h>

#include "model/image.h"
#include "model/tasks.h"
#include "server/hub.h"
#include "server_harness.h"

namespace md::srvtest {
namespace {

using testdata::run_command;
using testdata::shell_quote;

const fs::path kModel = testdata::root() / "models" / "tiny-2025-06-21";
const std::string kQuestion = "What is in this image?";
const char* kImage = "square_378.png";

class ServerRevision : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    signal(SIGPIPE, SIG_IGN);
    setenv("HF_HUB_CACHE", (testdata::root() / "hf-cache").c_str(), 1);
    setenv("HF_HUB_OFFLINE", "1", 1);
    dir_ = new TempDir();
    port_ = free_port();
    const json profile = tiny_profile(
        free_port(), 0,
        {{"model_path", kModel.string()}, {"generation_config", {{"max_new_tokens", 24}, {"do_sample", false}}}});
    json p = profile;
    p["server"]["port"] = port_;
    write_file(dir_->path / "configs" / "main.json", p.dump(2));
    server_ = new ServerProcess({"--config", (dir_->path / "configs" / "main.json").string(), "--pid-file",
                                 (dir_->path / "server.pid").string()},
                                port_, dir_->path / "server.log",
                                {{"HF_HUB_CACHE", (testdata::root() / "hf-cache").string()}, {"HF_HUB_OFFLINE", "1"}});
    ASSERT_TRUE(server_->wait_ready()) << server_->log();
    LoadOptions lo;
    lo.kv_cache = KVFormat::F32;  // as the server's test profile
    lo.tokenizer_path = tokenizer_for_model(kModel.string(), "", "auto");
    model_ = Moondream::load(kModel.string(), lo).release();
    image_ = new EncodedImage(model_->encode_image(load_image_file(image(kImage).string())));
  }
  static void TearDownTestSuite() {
    if (server_) {
      EXPECT_EQ(server_->stop(), 0) << server_->log();
    }
    delete server_;
    delete image_;
    delete model_;
    delete dir_;
  }
  static std::unique_ptr<httplib::Client> api() {
    auto c = std::make_unique<httplib::Client>("127.0.0.1", port_);
    c->set_read_timeout(120, 0);
    return c;
  }
  // The engine's own answer, greedy, as the server's defaults here.
  static TaskResult engine(TaskRequest rq) {
    rq.sampling.temperature = 0;
    if (rq.max_tokens == 768) rq.max_tokens = 24;
    return run_task(*model_, rq);
  }
  static TaskResult reasoned_query() {
    TaskRequest rq;
    rq.kind = TaskKind::kQuery;
    rq.image = image_;
    rq.text = kQuestion;
    rq.reasoning = true;
    return engine(rq);
  }
  static TaskRequest text_only_query() {
    TaskRequest rq;
    rq.kind = TaskKind::kQuery;
    rq.text = kQuestion;
    return rq;
  }
  static json grounding(const Reasoning& r) {
    json g = json::array();
    for (const auto& s : r.grounding) {
      json pts = json::array();
      for (const auto& p : s.points) pts.push_back({p.x, p.y});
      g.push_back({{"start_idx", s.start_idx}, {"end_idx", s.end_idx}, {"points", pts}});
    }
    return g;
  }

  static TempDir* dir_;
  static int port_;
  static ServerProcess* server_;
  static Moondream* model_;
  static EncodedImage* image_;
};
TempDir* ServerRevision::dir_ = nullptr;
int ServerRevision::port_ = 0;
ServerProcess* ServerRevision::server_ = nullptr;
Moondream* ServerRevision::model_ = nullptr;
EncodedImage* ServerRevision::image_ = nullptr;

TEST_F(ServerRevision, HealthNamesTheRevisionAndTheTokenizer) {
  auto c = api();
  auto r = c->Get("/health");
  ASSERT_TRUE(r);
  const json h = json::parse(r->body);
  EXPECT_EQ(h["revision_profile"], "2025-06-21");
  EXPECT_NE(h["revision_detected_by"].get<std::string>().find("moondream.py"), std::string::npos);
  EXPECT_NE(h["tokenizer"].get<std::string>().find("models--moondream--starmie-v1"), std::string::npos);
}

TEST_F(ServerRevision, OfficialMoondreamAndOpenAiClients) {
  const fs::path script = fs::path(MOONDREAM_SOURCE_DIR) / "tests" / "node" / "server" / "revision_clients.mjs";
  const std::string err = (dir_->path / "node.err").string();
  const auto r = run_command(
      "node " + shell_quote(script.string()) + " " + shell_quote("http://127.0.0.1:" + std::to_string(port_) + "/v1") +
      " " + shell_quote(image(kImage).string()) + " " + shell_quote(kQuestion) + " 2>" + shell_quote(err));
  ASSERT_EQ(r.status, 0) << r.out << read_file(err);
  const json out = json::parse(r.out);

  const TaskResult reasoned = reasoned_query();
  ASSERT_TRUE(reasoned.reasoning);
  EXPECT_EQ(out["reasoning"]["text"], reasoned.reasoning->text);
  EXPECT_EQ(out["reasoning"]["grounding"], grounding(*reasoned.reasoning));
  EXPECT_FALSE(reasoned.reasoning->grounding.empty()) << "the test model should ground its reasoning";
  EXPECT_EQ(out["answer"], reasoned.text);

  TaskRequest rq = text_only_query();
  EXPECT_EQ(out["text_only"], engine(rq).text);
  rq.max_tokens = 16;
  EXPECT_EQ(out["chat"], engine(rq).text);

  TaskRequest pt;
  pt.kind = TaskKind::kPoint;
  pt.image = image_;
  pt.text = "cat";
  const TaskResult points = engine(pt);
  ASSERT_EQ(out["points"].size(), points.points.size());
}

TEST_F(ServerRevision, GazeSpatialRefsStreamingAndErrors) {
  auto c = api();
  const std::string img = data_uri(image(kImage));
  int status = 0;
  const json g = post_json(*c, "/v1/gaze", {{"image_url", img}, {"eye", {{"x", 0.4}, {"y", 0.3}}}}, &status);
  ASSERT_EQ(status, 200) << g.dump();
  TaskRequest rq;
  rq.kind = TaskKind::kGaze;
  rq.image = image_;
  rq.eye_x = 0.4;
  rq.eye_y = 0.3;
  const TaskResult gz = engine(rq);
  if (gz.gaze) {
    EXPECT_NEAR(g["gaze"]["x"].get<double>(), gz.gaze->x, 1e-9);
    EXPECT_NEAR(g["gaze"]["y"].get<double>(), gz.gaze->y, 1e-9);
  } else {
    EXPECT_TRUE(g["gaze"].is_null()) << g.dump();
  }

  const json refs = json::array({json::array({0.25, 0.75}), json::array({0.1, 0.2, 0.5, 0.9})});
  const json q =
      post_json(*c, "/v1/query", {{"image_url", img}, {"question", kQuestion}, {"spatial_refs", refs}}, &status);
  ASSERT_EQ(status, 200) << q.dump();
  TaskRequest sq;
  sq.kind = TaskKind::kQuery;
  sq.image = image_;
  sq.text = kQuestion;
  sq.spatial_refs = {{0.25, 0.75}, {0.1, 0.2, 0.5, 0.9}};
  EXPECT_EQ(q["answer"], engine(sq).text);

  for (const json& bad : {json::array({json::array({1.5, 0.5})}), json::array({json::array({0.6, 0.1, 0.5, 0.9})}),
                          json::array({json::array({0.5})}), json("x")}) {
    const json e =
        post_json(*c, "/v1/query", {{"image_url", img}, {"question", kQuestion}, {"spatial_refs", bad}}, &status);
    EXPECT_EQ(status, 400) << bad.dump();
    EXPECT_EQ(e["error"]["code"], "invalid_field") << e.dump();
  }
  const json v = post_json(*c, "/v1/query", {{"image_url", img}, {"question", kQuestion}, {"variant", "x"}}, &status);
  EXPECT_EQ(status, 400);
  EXPECT_EQ(v["error"]["code"], "unsupported");
  const json nq = post_json(*c, "/v1/query", {{"question", kQuestion}, {"spatial_refs", refs}}, &status);
  EXPECT_EQ(status, 400) << nq.dump();  // references need an image

  // Streaming: the whole reasoning first, then the answer chunks.
  auto r = c->Post("/v1/query",
                   json{{"image_url", img}, {"question", kQuestion}, {"reasoning", true}, {"stream", true}}.dump(),
                   "application/json");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  const std::vector<std::string> events = sse_data(r->body);
  ASSERT_GE(events.size(), 2u);
  const json first = json::parse(events.front());
  ASSERT_TRUE(first.contains("reasoning")) << events.front();
  TaskRequest rr = sq;
  rr.spatial_refs.clear();
  rr.reasoning = true;
  const TaskResult want = engine(rr);
  EXPECT_EQ(first["reasoning"]["text"], want.reasoning->text);
  std::string answer;
  for (size_t i = 1; i < events.size(); ++i) {
    const json e = json::parse(events[i]);
    EXPECT_FALSE(e.contains("reasoning"));
    if (e.contains("chunk")) answer += e["chunk"].get<std::string>();
  }
  EXPECT_EQ(answer, want.text);
}

TEST_F(ServerRevision, WebPageReasoningTextOnlyAndGaze) {
  const TaskResult reasoned = reasoned_query();
  ASSERT_TRUE(reasoned.reasoning);
  const TaskRequest rq = text_only_query();
  const json expect = {
      {"question", kQuestion},
      {"reasoning", {{"text", reasoned.reasoning->text}, {"grounding", grounding(*reasoned.reasoning)}}},
      {"text_only", engine(rq).text},
      {"gaze_eye", {{"x", 0.4}, {"y", 0.3}}}};
  write_file(dir_->path / "expect.json", expect.dump());
  const fs::path script = fs::path(MOONDREAM_SOURCE_DIR) / "tests" / "node" / "web" / "revision_ui.mjs";
  const fs::path shots = fs::path(MOONDREAM_BINARY_DIR) / "web-screenshots" / "revision";
  const std::string err = (dir_->path / "ui.err").string();
  const auto r = run_command("node " + shell_quote(script.string()) + " --base " +
                             shell_quote("http://127.0.0.1:" + std::to_string(port_)) + " --image " +
                             shell_quote(image(kImage).string()) + " --expect " +
                             shell_quote((dir_->path / "expect.json").string()) + " --out " +
                             shell_quote(shots.string()) + " 2>" + shell_quote(err));
  ASSERT_EQ(r.status, 0) << r.out << read_file(err) << "\nserver log:\n" << server_->log();
  const json out = json::parse(r.out);
  EXPECT_EQ(out["reasoning"]["spans"].get<size_t>(), reasoned.reasoning->grounding.size());
  EXPECT_TRUE(out["text_only"].get<bool>());
}

}  // namespace
}  // namespace md::srvtest
