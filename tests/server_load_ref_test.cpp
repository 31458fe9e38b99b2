// The load test at CI scale: 64 concurrent clients mixing every endpoint,
// streaming and not, against the real server on the tiny model with a small
// request queue, for MOONDREAM_LOAD_SECONDS (default 15). Every request must
// get a complete answer or a 503 with Retry-After, none may hang, the
// server's RSS must stay bounded, the KV memory in use within its budget
// (performance.kv_cache_mb, at the least the profile accepts so that it
// binds), and it must be healthy afterwards. The same
// runner at full scale: tests/load/moondream_load (see docs/RELIABILITY.md).
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>

#include "load/load_runner.h"
#include "server_harness.h"

namespace md {
namespace {

using namespace srvtest;

#if defined(__SANITIZE_ADDRESS__)
constexpr long kRssBound = 3L << 30;  // ASan's shadow memory and quarantine
#else
constexpr long kRssBound = 1L << 30;  // tiny model: weights ~30 MB, caches 64 MB, 64 connections
#endif

long vm_hwm_bytes(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::stol(line.substr(6)) * 1024;
  return -1;
}

TEST(ServerLoad, SixtyFourClientsGetAnswersOr503sAndTheServerStaysHealthy) {
  signal(SIGPIPE, SIG_IGN);
  TempDir dir;
  const int port = free_port(), backend = free_port();
  json profile =
      tiny_profile(port, backend,
                   {{"performance", {{"image_caching", true}, {"response_caching", true}, {"kv_cache_mb", 6}}},
                    {"server", {{"queue_size", 8}, {"http_threads", 80}}}});
  write_file(dir.path / "load.json", profile.dump(2));
  ServerProcess s({"--config", (dir.path / "load.json").string()}, port, dir.path / "server.log",
                  {{"XDG_RUNTIME_DIR", dir.path.string()}});
  ASSERT_TRUE(s.wait_ready()) << s.log();

  load::LoadOptions o;
  o.port = port;
  o.clients = 64;
  o.seconds = 15;
  if (const char* e = std::getenv("MOONDREAM_LOAD_SECONDS")) o.seconds = std::atof(e);
  o.request_timeout_s = 120;
  for (const char* name : {"square_378.png", "photo_640x480.jpg", "wide_1600x300.webp"}) {
    if (fs::exists(image(name))) o.image_uris.push_back(data_uri(image(name)));
  }
  ASSERT_FALSE(o.image_uris.empty());
  const load::LoadReport r = load::run_load(o);
  const long hwm = vm_hwm_bytes(s.pid());
  std::printf("  load: %s\n  server VmHWM %.1f MB (bound %.0f MB)\n", r.to_json().dump().c_str(), hwm / 1e6,
              kRssBound / 1e6);
  EXPECT_EQ(r.errors, 0) << r.to_json().dump(2) << "\n" << s.log().substr(0, 4000);
  EXPECT_EQ(r.hung, 0);
  EXPECT_EQ(r.refused, 0);
  EXPECT_GT(r.completed, 0);
  EXPECT_GT(r.rejected_503, 0) << "64 clients against a queue of 8 should see 503s";
  EXPECT_TRUE(r.healthy_after);
  EXPECT_GT(hwm, 0);
  EXPECT_LE(hwm, kRssBound);
  EXPECT_LE(r.peak_rss_bytes, kRssBound);
  auto m = s.client(backend)->Get("/metrics");
  ASSERT_TRUE(m);
  const double kv_peak = metric(m->body, "moondream_kv_cache_peak_bytes");
  std::printf("  KV peak %.2f MB of %.0f MB, %g waits for KV budget\n", kv_peak / 1e6,
              metric(m->body, "moondream_kv_cache_budget_bytes") / 1e6,
              metric(m->body, "moondream_kv_budget_waits_total"));
  EXPECT_GT(kv_peak, 0);
  EXPECT_LE(kv_peak, 6 << 20);
  // The server still answers properly after the storm.
  int st = 0;
  const json out =
      post_json(*s.client(), "/v1/caption",
                {{"image_url", o.image_uris[0]}, {"settings", {{"temperature", 0}, {"max_tokens", 4}}}}, &st);
  EXPECT_EQ(st, 200) << out.dump();
  EXPECT_EQ(s.stop(), 0) << s.log().substr(0, 4000);
}

}  // namespace
}  // namespace md
