// Faults under load: SIGTERM while 64 clients are busy (every request gets a
// complete answer, a 503 or a refused connection — never a cut stream or a
// hang — and the server exits 0), and profile switches while requests run.
// The client leaving mid-stream, a bad model file and a full disk during the
// download are covered in server_ops_ref_test, safetensors_test and hub_test.
#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "load/load_runner.h"
#include "server_harness.h"

namespace md {
namespace {

using namespace srvtest;

class ServerFaults : public ::testing::Test {
 protected:
  void SetUp() override {
    signal(SIGPIPE, SIG_IGN);
    port_ = free_port();
    backend_ = free_port();
  }
  std::unique_ptr<ServerProcess> start(const std::vector<std::pair<std::string, json>>& profiles) {
    for (const auto& [name, j] : profiles) write_file(dir_.path / "configs" / (name + ".json"), j.dump(2));
    auto s = std::make_unique<ServerProcess>(
        std::vector<std::string>{"--config", (dir_.path / "configs" / (profiles[0].first + ".json")).string()}, port_,
        dir_.path / "server.log", std::vector<std::pair<std::string, std::string>>{{"XDG_RUNTIME_DIR", dir_.path.string()}});
    EXPECT_TRUE(s->wait_ready()) << s->log();
    return s;
  }
  load::LoadOptions load_options(double seconds) const {
    load::LoadOptions o;
    o.port = port_;
    o.clients = 64;
    o.seconds = seconds;
    o.request_timeout_s = 120;
    o.image_uris = {data_uri(image("square_378.png")), data_uri(image("photo_640x480.jpg"))};
    return o;
  }
  json profile(const json& extra = json::object()) const {
    json j = tiny_profile(port_, backend_, {{"server", {{"queue_size", 8}, {"http_threads", 80}}}});
    j.merge_patch(extra);
    return j;
  }
  TempDir dir_;
  int port_ = 0, backend_ = 0;
};

TEST_F(ServerFaults, SigtermUnderLoadFinishesWhatItAcceptedAndExitsZero) {
  auto s = start({{"p", profile()}});
  load::LoadReport r;
  std::thread t([&] { r = load::run_load(load_options(12)); });
  std::this_thread::sleep_for(std::chrono::seconds(4));
  const auto t_term = std::chrono::steady_clock::now();
  kill(s->pid(), SIGTERM);
  const int code = s->wait_exit(90);
  const double exit_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_term).count();
  t.join();
  std::printf("  SIGTERM under load: %s; exited %d after %.1f s\n", r.to_json().dump().c_str(), code, exit_s);
  EXPECT_EQ(code, 0) << s->log().substr(0, 4000);
  EXPECT_EQ(r.errors, 0) << r.to_json().dump(2);
  EXPECT_EQ(r.hung, 0);
  EXPECT_GT(r.completed, 0);
  EXPECT_GT(r.refused, 0) << "new requests after SIGTERM must be refused";
  EXPECT_NE(s->log().find("shutting down"), std::string::npos);
}

TEST_F(ServerFaults, ProfileSwitchesUnderLoadLoseNoRequest) {
  auto s = start({{"a", profile()},
                  {"b", profile({{"performance", {{"image_caching", true}, {"response_caching", true}}},
                                 {"generation_config", {{"max_new_tokens", 12}}}})}});
  load::LoadReport r;
  std::atomic<bool> done{false};
  std::thread t([&] {
    r = load::run_load(load_options(12));
    done = true;
  });
  httplib::Client backend("127.0.0.1", backend_);
  backend.set_read_timeout(30, 0);
  int switches = 0, ok = 0;
  for (int i = 0; !done; ++i) {
    auto res = backend.Patch("/api/v1/config", json{{"active_model", i % 2 ? "a" : "b"}}.dump(), "application/json");
    ++switches;
    ok += res && res->status == 200;
    std::this_thread::sleep_for(std::chrono::milliseconds(700));
  }
  t.join();
  std::printf("  %d profile switches (%d ok) under load: %s\n", switches, ok, r.to_json().dump().c_str());
  EXPECT_GE(switches, 5);
  EXPECT_EQ(ok, switches);
  EXPECT_EQ(r.errors, 0) << r.to_json().dump(2) << "\n" << s->log().substr(0, 4000);
  EXPECT_EQ(r.refused, 0);
  EXPECT_GT(r.completed, 0);
  EXPECT_TRUE(r.healthy_after);
  EXPECT_EQ(s->stop(), 0);
}

}  // namespace
}  // namespace md
