// moondream-server running many requests at once (performance.max_batch): 8
// mixed requests sent together — captions, questions (streamed and not),
// detect, point, on new images that are encoded while the others decode —
// get exactly the answers they get one at a time from a server that runs one
// request at a time, while the metrics show decode steps shared by several.
#include <gtest/gtest.h>

#include <thread>

#include "server_harness.h"

namespace md {
namespace {

using namespace srvtest;

struct Call {
  std::string path;
  json body;
};

std::vector<Call> mixed_calls() {
  auto img = [](const char* name) { return data_uri(image(name)); };
  const json greedy = {{"temperature", 0}, {"max_tokens", 20}};
  return {
      {"/v1/caption", {{"image_url", img("square_378.png")}, {"settings", greedy}}},
      {"/v1/caption", {{"image_url", img("photo_640x480.jpg")}, {"length", "short"}, {"settings", greedy}}},
      {"/v1/query", {{"image_url", img("rgba_500x400.png")}, {"question", "What is this?"}, {"settings", greedy}}},
      {"/v1/query",
       {{"image_url", img("square_378.png")},
        {"question", "Describe the colours."},
        {"stream", true},
        {"settings", greedy}}},
      {"/v1/detect", {{"image_url", img("photo_640x480.jpg")}, {"object", "face"}}},
      {"/v1/point", {{"image_url", img("solid_1000x700.png")}, {"object", "cup"}}},
      {"/v1/caption", {{"image_url", img("grey_300x900.png")}, {"length", "long"}, {"settings", greedy}}},
      {"/v1/chat/completions",
       {{"model", "moondream2-tiny"},
        {"temperature", 0},
        {"max_tokens", 16},
        {"messages",
         {{{"role", "user"},
           {"content",
            {{{"type", "text"}, {"text", "What is in the picture?"}},
             {{"type", "image_url"}, {"image_url", {{"url", img("wide_1600x300.webp")}}}}}}}}}}},
  };
}

// The answer without what may differ between runs (timings, ids, created).
json answer_of(const Call& c, const std::string& body) {
  if (c.body.value("stream", false)) {
    std::string text;
    for (const std::string& e : sse_data(body)) {
      const json j = json::parse(e);
      if (j.contains("chunk")) text += j["chunk"].get<std::string>();
    }
    return text;
  }
  json j = json::parse(body);
  if (c.path == "/v1/chat/completions") return j["choices"][0]["message"]["content"];
  j.erase("metrics");
  j.erase("request_id");
  j.erase("timings");
  j.erase("usage");
  return j;
}

std::vector<json> run_calls(ServerProcess& s, const std::vector<Call>& calls, bool together) {
  std::vector<json> out(calls.size());
  auto one = [&](size_t i) {
    auto r = s.client()->Post(calls[i].path, calls[i].body.dump(), "application/json");
    ASSERT_TRUE(r) << calls[i].path;
    ASSERT_EQ(r->status, 200) << calls[i].path << " " << r->body;
    out[i] = answer_of(calls[i], r->body);
  };
  if (!together) {
    for (size_t i = 0; i < calls.size(); ++i) one(i);
    return out;
  }
  std::vector<std::thread> threads;
  for (size_t i = 0; i < calls.size(); ++i) threads.emplace_back(one, i);
  for (std::thread& t : threads) t.join();
  return out;
}

// The answers of a server that runs one request at a time (max_batch 1);
// empty if it did not start.
std::vector<json> answers_one_at_a_time(const TempDir& dir, const std::vector<Call>& calls) {
  const int port = free_port(), backend = free_port();
  write_file(dir.path / "one.json", tiny_profile(port, backend, {{"performance", {{"max_batch", 1}}}}).dump());
  ServerProcess s({"--config", (dir.path / "one.json").string()}, port, dir.path / "one.log");
  if (!s.wait_ready()) {
    ADD_FAILURE() << s.log();
    return {};
  }
  return run_calls(s, calls, false);
}

TEST(ServerBatching, EightMixedRequestsTogetherEqualEachOneAtATime) {
  signal(SIGPIPE, SIG_IGN);
  TempDir dir;
  const std::vector<Call> calls = mixed_calls();
  std::vector<json> together;
  const std::vector<json> alone = answers_one_at_a_time(dir, calls);
  ASSERT_EQ(alone.size(), calls.size());
  const int port = free_port(), backend = free_port();
  write_file(dir.path / "eight.json", tiny_profile(port, backend, {{"performance", {{"max_batch", 8}}}}).dump());
  ServerProcess s({"--config", (dir.path / "eight.json").string()}, port, dir.path / "eight.log");
  ASSERT_TRUE(s.wait_ready()) << s.log();
  // Twice: the second round finds the first one's threads warm.
  for (int round = 0; round < 2; ++round) {
    together = run_calls(s, calls, true);
    for (size_t i = 0; i < calls.size(); ++i)
      EXPECT_EQ(together[i], alone[i]) << calls[i].path << " (request " << i << ", round " << round << ")";
  }
  auto r = s.client(backend)->Get("/metrics");
  ASSERT_TRUE(r);
  const double steps = metric(r->body, "moondream_decode_batch_size_count");
  const double single = metric(r->body, "moondream_decode_batch_size_bucket{le=\"1\"}");
  const double rows = metric(r->body, "moondream_decode_batch_size_sum");
  ASSERT_GT(steps, 0) << r->body;
  EXPECT_LT(single, steps) << "no decode step was shared";
  EXPECT_GT(rows / steps, 1.5) << r->body;
  EXPECT_GE(metric(r->body, "moondream_time_to_first_token_seconds_count"), 2.0) << r->body;
  EXPECT_GT(metric(r->body, "moondream_inter_token_latency_seconds_count"), 0.0) << r->body;
  // Every request answered: the running count returns to 0 (a job leaves
  // it just after its answer is sent, so poll for a moment).
  double running = -1;
  for (int i = 0; i < 250 && running != 0; ++i) {
    if (i > 0) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    auto m = s.client(backend)->Get("/metrics");
    ASSERT_TRUE(m);
    running = metric(m->body, "moondream_num_requests_running");
  }
  EXPECT_EQ(running, 0.0);
}

// Four requests about one new image, sent together, encode it once: the
// first encodes (slowed by a test hook so that the others surely arrive
// meanwhile), the others take its encoding — with the image cache off, so it
// is not the cache. Their answers equal the answer of a request alone.
TEST(ServerBatching, IdenticalNewImagesSentTogetherAreEncodedOnce) {
  signal(SIGPIPE, SIG_IGN);
  TempDir dir;
  const int port = free_port(), backend = free_port();
  write_file(dir.path / "p.json",
             tiny_profile(port, backend, {{"performance", {{"max_batch", 8}, {"image_caching", false}}}}).dump());
  ServerProcess s({"--config", (dir.path / "p.json").string()}, port, dir.path / "p.log",
                  {{"MOONDREAM_SERVER_TEST_ENCODE_DELAY_MS", "400"}});
  ASSERT_TRUE(s.wait_ready()) << s.log();
  const std::string img = data_uri(image("photo_640x480.jpg"));
  std::vector<Call> calls;
  for (const char* q : {"What is this?", "Any people?", "What colour is it?", "Where is it?"})
    calls.push_back({"/v1/query", {{"image_url", img}, {"question", q}, {"settings", {{"temperature", 0}}}}});
  const std::vector<json> together = run_calls(s, calls, true);
  auto r = s.client(backend)->Get("/metrics");
  ASSERT_TRUE(r);
  EXPECT_EQ(metric(r->body, "moondream_image_encodes_total"), 1) << r->body;
  EXPECT_EQ(metric(r->body, "moondream_image_encodes_shared_total"), 3) << r->body;
  const std::vector<json> alone = run_calls(s, calls, false);
  for (size_t i = 0; i < calls.size(); ++i) EXPECT_EQ(together[i], alone[i]) << i;
  r = s.client(backend)->Get("/metrics");
  ASSERT_TRUE(r);
  EXPECT_EQ(metric(r->body, "moondream_image_encodes_total"), 5) << "one at a time, each encodes";
}

// A KV budget too small for all eight at once (performance.kv_cache_mb 6,
// the least the tiny test profile (fp32 KV) accepts: a new image's prefix
// reserves a 2 MiB block, its own rows ~0.5 MB) holds requests back until
// others finish; every answer is still the one-at-a-time answer, nothing is
// refused, and the KV bytes in use never exceeded the budget.
TEST(ServerBatching, KvBudgetHoldsRequestsBackWithoutChangingAnswers) {
  signal(SIGPIPE, SIG_IGN);
  TempDir dir;
  std::vector<Call> calls = mixed_calls();
  // Room for long answers (the profile's ceiling).
  for (Call& c : calls)
    if (c.body.contains("settings") && c.body["settings"].contains("max_tokens"))
      c.body["settings"]["max_tokens"] = 256;
  const std::vector<json> alone = answers_one_at_a_time(dir, calls);
  ASSERT_EQ(alone.size(), calls.size());
  const int port = free_port(), backend = free_port();
  write_file(
      dir.path / "kv.json",
      tiny_profile(port, backend, {{"performance", {{"max_batch", 8}, {"image_caching", true}, {"kv_cache_mb", 6}}}})
          .dump());
  ServerProcess s({"--config", (dir.path / "kv.json").string()}, port, dir.path / "kv.log");
  ASSERT_TRUE(s.wait_ready()) << s.log();
  const std::vector<json> together = run_calls(s, calls, true);
  for (size_t i = 0; i < calls.size(); ++i)
    EXPECT_EQ(together[i], alone[i]) << calls[i].path << " (request " << i << ")";
  auto r = s.client(backend)->Get("/metrics");
  ASSERT_TRUE(r);
  const double budget = metric(r->body, "moondream_kv_cache_budget_bytes");
  EXPECT_EQ(budget, 6.0 * (1 << 20)) << r->body;
  EXPECT_GT(metric(r->body, "moondream_kv_budget_waits_total"), 0) << "the budget never held a request back";
  EXPECT_EQ(metric(r->body, "moondream_kv_budget_refused_total"), 0) << r->body;
  const double peak = metric(r->body, "moondream_kv_cache_peak_bytes");
  EXPECT_GT(peak, 1 << 20) << r->body;
  EXPECT_LE(peak, budget) << r->body;
  EXPECT_LE(metric(r->body, "moondream_kv_cache_used_bytes"), budget) << r->body;
  // /health shows the same budget.
  auto h = s.client()->Get("/health");
  ASSERT_TRUE(h);
  EXPECT_EQ(json::parse(h->body)["kv_budget"]["budget_bytes"], 6 << 20) << h->body;
}

}  // namespace
}  // namespace md
