#pragma once
// Helpers for the moondream-server tests: start the real binary on free
// ports against the tiny model, talk to it over HTTP on 127.0.0.1, stop it.
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <strings.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <httplib.h>
#include <nlohmann/json.hpp>

#include "server/image_input.h"
#include "testdata.h"

namespace md::srvtest {

namespace fs = std::filesystem;
using nlohmann::json;

inline std::string server_bin() { return std::string(MOONDREAM_BINARY_DIR) + "/moondream-server"; }
inline std::string cli_bin() { return std::string(MOONDREAM_BINARY_DIR) + "/moondream"; }
inline fs::path image(const std::string& name) { return testdata::root() / "images" / name; }

inline std::string read_file(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}
inline void write_file(const fs::path& p, const std::string& s) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << s;
}

inline std::string data_uri(const fs::path& p) {
  const std::string ext = p.extension().string();
  const std::string mime = ext == ".png" ? "image/png" : ext == ".webp" ? "image/webp" : "image/jpeg";
  return "data:" + mime + ";base64," + server::base64_encode(read_file(p));
}

// A port nobody listens on (bound to 0, read back, released).
inline int free_port() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  close(fd);
  return ntohs(a.sin_port);
}

struct TempDir {
  fs::path path;
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "mdsrv-XXXXXX").string();
    path = mkdtemp(tmpl.data());
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

// A profile for the tiny model on the given ports; `extra` is merged in.
inline json tiny_profile(int port, int backend_port, const json& extra = json::object()) {
  json j = {{"model_name", "moondream2-tiny"},
            {"model_path", testdata::tiny_model().string()},
            {"revision", "main"},
            {"device", "cpu"},
            {"max_tokens", 256},
            {"performance",
             {{"image_caching", false},
              {"response_caching", false},
              {"memory_management", false},
              {"cache_max_mb", 64},
              {"quantization", "none"},
              // fp32 rows: the answers are compared with the fp32 reference.
              {"kv_cache", "f32"}}},
            {"server", {{"host", "127.0.0.1"}, {"port", port}, {"backend_port", backend_port}, {"cors_enabled", true}}},
            {"image_processing", {{"size", 0}, {"quality", 95}}},
            {"generation_config", {{"max_new_tokens", 24}, {"temperature", 0.5}, {"top_p", 0.3}, {"do_sample", true}}}};
  j.merge_patch(extra);
  return j;
}

// The real server binary as a child process (stdout+stderr to a log file).
class ServerProcess {
 public:
  ServerProcess(std::vector<std::string> args, int port, const fs::path& log,
                std::vector<std::pair<std::string, std::string>> env = {})
      : port_(port), log_(log) {
    pid_ = fork();
    if (pid_ == 0) {
      prctl(PR_SET_PDEATHSIG, SIGTERM);  // never outlive a crashed test
      const int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      dup2(fd, 1);
      dup2(fd, 2);
      for (const auto& [k, v] : env) setenv(k.c_str(), v.c_str(), 1);
      std::vector<char*> argv;
      std::string bin = server_bin();
      argv.push_back(bin.data());
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(bin.c_str(), argv.data());
      _exit(127);
    }
  }
  ~ServerProcess() {
    if (running()) stop(SIGTERM, 20);
    if (running()) {
      kill(pid_, SIGKILL);
      wait_exit(5);
    }
  }
  ServerProcess(const ServerProcess&) = delete;
  ServerProcess& operator=(const ServerProcess&) = delete;

  pid_t pid() const { return pid_; }
  int port() const { return port_; }
  std::string log() const { return read_file(log_); }

  bool running() {
    if (exited_) return false;
    int st = 0;
    const pid_t r = waitpid(pid_, &st, WNOHANG);
    if (r == pid_) {
      exited_ = true;
      status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
      return false;
    }
    return true;
  }
  // Exit status, or -1 if still running after `timeout_s`.
  int wait_exit(double timeout_s) {
    const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
    while (running()) {
      if (std::chrono::steady_clock::now() > end) return -1;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return status_;
  }
  int stop(int sig = SIGTERM, double timeout_s = 30) {
    if (running()) kill(pid_, sig);
    return wait_exit(timeout_s);
  }
  // Waits until GET /health answers 200 ("ok"); false if the process exits or time runs out.
  bool wait_ready(double timeout_s = 60) {
    const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
    while (std::chrono::steady_clock::now() < end) {
      if (!running()) return false;
      httplib::Client c("127.0.0.1", port_);
      c.set_connection_timeout(1, 0);
      if (auto r = c.Get("/health"); r && r->status == 200) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
  }
  std::unique_ptr<httplib::Client> client(int port = 0) const {
    auto c = std::make_unique<httplib::Client>("127.0.0.1", port ? port : port_);
    c->set_connection_timeout(5, 0);
    c->set_read_timeout(120, 0);
    c->set_write_timeout(30, 0);
    return c;
  }

 private:
  pid_t pid_ = -1;
  int port_;
  fs::path log_;
  bool exited_ = false;
  int status_ = -1;
};

// The `data: ...` payloads of an SSE body, in order.
inline std::vector<std::string> sse_data(const std::string& body) {
  std::vector<std::string> out;
  std::istringstream in(body);
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.rfind("data: ", 0) == 0) out.push_back(line.substr(6));
  }
  return out;
}

inline json post_json(httplib::Client& c, const std::string& path, const json& body, int* status = nullptr,
                      httplib::Headers headers = {}) {
  auto r = c.Post(path.c_str(), headers, body.dump(), "application/json");
  if (!r) {
    if (status) *status = -1;
    return json();
  }
  if (status) *status = r->status;
  try {
    return json::parse(r->body);
  } catch (const std::exception&) {
    return json(r->body);
  }
}

// A raw TCP connection to 127.0.0.1:port; -1 (and *err = errno) when refused.
inline int connect_to(int port, int* err = nullptr) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(uint16_t(port));
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    if (err) *err = errno;
    close(fd);
    return -1;
  }
  return fd;
}

// Sends all of `data`; false when the connection fails first.
inline bool send_all(int fd, const std::string& data) {
  for (size_t off = 0; off < data.size();) {
    const ssize_t n = ::send(fd, data.data() + off, data.size() - off, MSG_NOSIGNAL);
    if (n <= 0) return false;
    off += size_t(n);
  }
  return true;
}

// One HTTP/1.1 exchange over a raw socket, so that a test decides when each
// byte goes out (a body sent in parts, many connections opened at once).
struct RawExchange {
  int connect_errno = 0;
  int fd = -1;
  explicit RawExchange(int port) : fd(connect_to(port, &connect_errno)) {}
  ~RawExchange() {
    if (fd >= 0) close(fd);
  }
  RawExchange(const RawExchange&) = delete;
  RawExchange& operator=(const RawExchange&) = delete;

  // "POST path" request head for a JSON body of `body_size` bytes (Connection: close).
  static std::string post_head(const std::string& path, size_t body_size) {
    return "POST " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: " +
           std::to_string(body_size) + "\r\nConnection: close\r\n\r\n";
  }
  bool send_all(const std::string& data) { return srvtest::send_all(fd, data); }
  // Reads until the server closes. `error` is set when the connection failed
  // (reset, timeout) or the reply is not complete.
  struct Reply {
    int status = -1;
    std::string head, body, error;
    std::string header(const std::string& name) const {
      std::istringstream in(head);
      std::string line;
      while (std::getline(in, line)) {
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (line.size() > name.size() && strncasecmp(line.c_str(), name.c_str(), name.size()) == 0 &&
            line[name.size()] == ':')
          return line.substr(line.find_first_not_of(' ', name.size() + 1));
      }
      return "";
    }
  };
  Reply read_reply(double timeout_s = 60) {
    Reply r;
    if (fd < 0) {
      r.error = "connect failed: " + std::string(strerror(connect_errno));
      return r;
    }
    timeval tv{long(timeout_s), 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    std::string all;
    char buf[16384];
    for (;;) {
      const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
      if (n == 0) break;
      if (n < 0) {
        r.error = std::string(errno == EAGAIN ? "timeout" : strerror(errno)) + " after " + std::to_string(all.size()) +
                  " bytes";
        return r;
      }
      all.append(buf, size_t(n));
    }
    const size_t end = all.find("\r\n\r\n");
    if (end == std::string::npos || all.compare(0, 9, "HTTP/1.1 ") != 0) {
      r.error = all.empty() ? "closed with no reply" : "incomplete reply head";
      return r;
    }
    r.status = std::atoi(all.c_str() + 9);
    r.head = all.substr(0, end);
    r.body = all.substr(end + 4);
    if (const std::string cl = r.header("Content-Length"); !cl.empty() && r.body.size() != size_t(std::stoul(cl)))
      r.error = "body of " + std::to_string(r.body.size()) + " bytes, Content-Length " + cl;
    if (r.header("Transfer-Encoding") == "chunked" && r.body.find("0\r\n\r\n") == std::string::npos)
      r.error = "chunked body without its last chunk";
    return r;
  }
};

// The value of the sample line `name value` in Prometheus text (-1: none).
inline double metric(const std::string& text, const std::string& name) {
  const size_t at = text.find("\n" + name + " ");
  if (at == std::string::npos) return -1;
  return std::stod(text.substr(at + 1 + name.size() + 1));
}

}  // namespace md::srvtest
