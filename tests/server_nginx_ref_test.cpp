// Scale-out with existing parts: Debian's nginx, configured by the repo's
// deploy/nginx/moondream.conf, in front of two moondream-server replicas on
// loopback. Questions about one image (the same X-Image-Key) land on one
// replica, whose image cache answers all but the first; keys spread over
// both replicas; a client echoing the server's X-Image-Key sticks too; and
// when one replica stops, every request is still answered by the other.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <map>
#include <set>
#include <thread>

#include "server_harness.h"

namespace md {
namespace {

using namespace srvtest;

const char* kNginx = "/usr/sbin/nginx";

// nginx in the foreground with everything (pid, logs, temp files) in `dir`.
class NginxProcess {
 public:
  NginxProcess(const fs::path& dir, int port, int replica_a, int replica_b) {
    std::string conf = read_file(fs::path(MOONDREAM_SOURCE_DIR) / "deploy" / "nginx" / "moondream.conf");
    auto replace = [&](const std::string& from, const std::string& to) {
      const size_t at = conf.find(from);
      ASSERT_NE(at, std::string::npos) << "deploy/nginx/moondream.conf no longer has '" << from << "'";
      conf.replace(at, from.size(), to);
    };
    replace("server 127.0.0.1:8081 ", "server 127.0.0.1:" + std::to_string(replica_a) + " ");
    replace("server 127.0.0.1:8082 ", "server 127.0.0.1:" + std::to_string(replica_b) + " ");
    replace("listen 8080;", "listen 127.0.0.1:" + std::to_string(port) + ";");
    write_file(dir / "moondream.conf", conf);
    const std::string d = dir.string();
    write_file(dir / "nginx.conf", "worker_processes 1;\ndaemon off;\npid " + d + "/nginx.pid;\nerror_log " + d +
                                       "/error.log info;\nevents { worker_connections 256; }\nhttp {\n  access_log " +
                                       d + "/access.log;\n  client_body_temp_path " + d + "/body;\n  proxy_temp_path " +
                                       d + "/proxy;\n  fastcgi_temp_path " + d + "/fcgi;\n  uwsgi_temp_path " + d +
                                       "/uwsgi;\n  scgi_temp_path " + d + "/scgi;\n  include " + d +
                                       "/moondream.conf;\n}\n");
    log_ = dir / "nginx.log";
    pid_ = fork();
    if (pid_ == 0) {
      prctl(PR_SET_PDEATHSIG, SIGTERM);
      const int fd = open(log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      dup2(fd, 1);
      dup2(fd, 2);
      execl(kNginx, kNginx, "-p", d.c_str(), "-c", (dir / "nginx.conf").c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
  }
  ~NginxProcess() {
    if (pid_ > 0) {
      kill(pid_, SIGQUIT);
      int st = 0;
      waitpid(pid_, &st, 0);
    }
  }
  std::string log() const { return read_file(log_); }

 private:
  pid_t pid_ = -1;
  fs::path log_;
};

struct Answer {
  int status = 0;
  std::string instance, image_key, image_cache;
};

Answer ask(int port, const fs::path& img, const std::string& question, const std::string& key) {
  httplib::Client c("127.0.0.1", port);
  c.set_read_timeout(120, 0);
  httplib::Headers h;
  if (!key.empty()) h.emplace("X-Image-Key", key);
  const json body = {
      {"image_url", data_uri(img)}, {"question", question}, {"settings", {{"temperature", 0}, {"max_tokens", 3}}}};
  auto r = c.Post("/v1/query", h, body.dump(), "application/json");
  Answer a;
  if (!r) return a;
  a.status = r->status;
  a.instance = r->get_header_value("X-Moondream-Instance");
  a.image_key = r->get_header_value("X-Image-Key");
  const json j = json::parse(r->body, nullptr, false);
  if (j.is_object() && j.contains("timings")) a.image_cache = j["timings"].value("image_cache", "");
  return a;
}

TEST(ServerNginx, RepeatQuestionsStickToTheReplicaHoldingTheImageAndTrafficSurvivesAReplicaStopping) {
  ASSERT_TRUE(fs::exists(kNginx)) << "Debian's nginx (scripts/install-deps.sh installs it)";
  signal(SIGPIPE, SIG_IGN);
  TempDir dir;
  const int pa = free_port(), pb = free_port(), front = free_port();
  const json caching = {{"performance", {{"image_caching", true}, {"response_caching", false}}}};
  write_file(dir.path / "a.json", tiny_profile(pa, 0, caching).dump());
  write_file(dir.path / "b.json", tiny_profile(pb, 0, caching).dump());
  auto a = std::make_unique<ServerProcess>(std::vector<std::string>{"--config", (dir.path / "a.json").string()}, pa,
                                           dir.path / "a.log");
  ServerProcess b({"--config", (dir.path / "b.json").string()}, pb, dir.path / "b.log");
  ASSERT_TRUE(a->wait_ready()) << a->log();
  ASSERT_TRUE(b.wait_ready()) << b.log();
  const std::string id_a = json::parse(a->client()->Get("/health")->body)["instance"];
  const std::string id_b = json::parse(b.client()->Get("/health")->body)["instance"];
  ASSERT_NE(id_a, id_b);
  fs::create_directories(dir.path / "nginx");
  NginxProcess nginx(dir.path / "nginx", front, pa, pb);
  bool up = false;
  for (int i = 0; i < 200 && !up; ++i) {
    httplib::Client c("127.0.0.1", front);
    auto r = c.Get("/health");
    up = r && r->status == 200;
    if (!up) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_TRUE(up) << nginx.log();

  // Three questions about each of four images, each image with its own key:
  // one replica per key, the first question encodes, the others hit.
  const std::vector<std::string> images = {"square_378.png", "photo_640x480.jpg", "rgba_500x400.png",
                                           "solid_1000x700.png"};
  std::map<std::string, std::string> replica_of;  // key -> instance
  for (const std::string& name : images) {
    const std::string key = "client-id-" + name;
    for (int q = 0; q < 3; ++q) {
      const Answer r = ask(front, image(name), "Question " + std::to_string(q) + "?", key);
      ASSERT_EQ(r.status, 200) << name;
      EXPECT_TRUE(r.instance == id_a || r.instance == id_b) << r.instance;
      if (q == 0) {
        replica_of[key] = r.instance;
        EXPECT_EQ(r.image_cache, "miss") << name;
      } else {
        EXPECT_EQ(r.instance, replica_of[key]) << name << ": a repeat question went to the other replica";
        EXPECT_EQ(r.image_cache, "hit") << name;
      }
    }
  }

  // Keys spread over both replicas (16 keys all on one: probability 2^-15).
  std::set<std::string> used;
  for (int k = 0; k < 16; ++k) {
    const std::string key = "spread-" + std::to_string(k);
    const Answer r = ask(front, image("tiny_1x1.png"), "Which?", key);
    ASSERT_EQ(r.status, 200);
    used.insert(r.instance);
    replica_of[key] = r.instance;
  }
  EXPECT_EQ(used.size(), 2u) << "consistent hashing sent every key to one replica";

  // A client without its own id echoes the server's X-Image-Key: from the
  // first echo on, the image stays on one replica, and is cached there.
  const Answer first = ask(front, image("grey_300x900.png"), "What is this?", "");
  ASSERT_EQ(first.status, 200);
  ASSERT_EQ(first.image_key.size(), 32u) << "X-Image-Key is the 128-bit image key in hex";
  std::string sticky;
  for (int q = 0; q < 3; ++q) {
    const Answer r = ask(front, image("grey_300x900.png"), "And now " + std::to_string(q) + "?", first.image_key);
    ASSERT_EQ(r.status, 200);
    EXPECT_EQ(r.image_key, first.image_key);
    if (q == 0) sticky = r.instance;
    EXPECT_EQ(r.instance, sticky);
    if (q > 0) {
      EXPECT_EQ(r.image_cache, "hit");
    }
  }

  // One replica stops: every key still gets its answer, from the other.
  a.reset();  // SIGTERM, waits for the exit
  for (const auto& [key, instance] : replica_of) {
    const Answer r = ask(front, image("tiny_1x1.png"), "Still there?", key);
    EXPECT_EQ(r.status, 200) << key << " (was on " << (instance == id_a ? "the stopped replica" : "the other") << ")";
    EXPECT_EQ(r.instance, id_b) << key;
  }
}

}  // namespace
}  // namespace md
