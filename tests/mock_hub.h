#pragma once
// A mock Hugging Face hub on 127.0.0.1 for the download tests: the
// resolve/{revision}/{file} endpoints with the hub's headers, a CDN redirect
// with sha256 ETags, Range resumes, and switches that cut, corrupt or refuse
// transfers. A minimal HTTP/1.1 server, one connection at a time.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "server/hub.h"

namespace md::mockhub {

using md::hub_detail::sha256_hex;

inline std::string url_decode(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size()) {
      out += static_cast<char>(std::stoi(s.substr(i + 1, 2), nullptr, 16));
      i += 2;
    } else {
      out += s[i];
    }
  }
  return out;
}

// ------------------------------------------------------------- the mock hub

struct Request {
  std::string method, path;
  std::map<std::string, std::string> headers;  // lower-case names
  std::string header(const std::string& k) const {
    auto it = headers.find(k);
    return it == headers.end() ? "" : it->second;
  }
};

struct MockFile {
  std::string content;
  bool lfs = false;  // served through a redirect to the CDN, ETag = sha256
};

struct MockRepo {
  std::string commit;
  std::set<std::string> refs;  // branch and tag names
  std::map<std::string, MockFile> files;
  std::string token;  // required token; empty: public
};

// A minimal HTTP/1.1 server (one connection at a time, Connection: close)
// with the hub's resolve endpoints and a CDN path. Tests configure it only
// between resolve_model() calls.
class MockHub {
 public:
  std::map<std::string, MockRepo> repos;
  std::map<std::string, std::string> renamed;    // old repo id → new repo id (relative redirect)
  std::map<std::string, size_t> cut_first;       // sha256 → body bytes sent before the first GET drops
  std::set<std::string> cut_always;              // sha256 → every GET drops before any body byte
  std::set<std::string> ignore_range;            // sha256 → Range requests get a full 200
  std::set<std::string> corrupt;                 // sha256 → one byte of the body is flipped
  std::map<std::string, long long> linked_size;  // sha256 → X-Linked-Size override

  MockHub() {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    ::setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = 0;
    if (::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(fd_, 16) != 0) {
      throw std::runtime_error("mock hub: cannot listen");
    }
    socklen_t len = sizeof a;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] { loop(); });
  }
  ~MockHub() { stop(); }

  void stop() {
    if (stopped_.exchange(true)) return;
    thread_.join();
    ::close(fd_);
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  std::vector<Request> requests() {
    std::lock_guard<std::mutex> l(mu_);
    return log_;
  }
  size_t request_count() { return requests().size(); }

 private:
  void loop() {
    while (!stopped_) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 50) <= 0) continue;
      const int c = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) continue;
      timeval tv{5, 0};
      ::setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
      handle(c);
      ::shutdown(c, SHUT_WR);
      ::close(c);
    }
  }

  static void send_all(int c, const std::string& s) {
    size_t done = 0;
    while (done < s.size()) {
      const ssize_t w = ::send(c, s.data() + done, s.size() - done, MSG_NOSIGNAL);
      if (w <= 0) return;
      done += static_cast<size_t>(w);
    }
  }

  // Sends a response; `body_limit` < body size cuts the transfer short.
  static void respond(int c, const Request& rq, int status, const std::string& reason,
                      const std::vector<std::pair<std::string, std::string>>& headers, const std::string& body,
                      size_t body_limit = std::string::npos) {
    std::string out = "HTTP/1.1 " + std::to_string(status) + " " + reason + "\r\n";
    for (const auto& [k, v] : headers) out += k + ": " + v + "\r\n";
    out += "Content-Length: " + std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n";
    if (rq.method != "HEAD") out += body.substr(0, std::min(body_limit, body.size()));
    send_all(c, out);
  }

  void handle(int c) {
    std::string in;
    char buf[4096];
    while (in.find("\r\n\r\n") == std::string::npos) {
      const ssize_t r = ::recv(c, buf, sizeof buf, 0);
      if (r <= 0) return;
      in.append(buf, static_cast<size_t>(r));
    }
    Request rq;
    std::istringstream ss(in.substr(0, in.find("\r\n\r\n")));
    std::string line;
    std::getline(ss, line);
    std::istringstream first(line);
    first >> rq.method >> rq.path;
    while (std::getline(ss, line)) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      const size_t colon = line.find(':');
      if (colon == std::string::npos) continue;
      std::string k = line.substr(0, colon);
      for (char& ch : k) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
      rq.headers[k] = line.substr(line.find_first_not_of(' ', colon + 1));
    }
    std::lock_guard<std::mutex> l(mu_);
    log_.push_back(rq);
    route(c, rq);
  }

  void route(int c, const Request& rq) {
    if (rq.path.rfind("/cdn/", 0) == 0) return serve_cdn(c, rq, rq.path.substr(5));
    // /{org}/{name}/resolve/{revision}/{file...}
    std::vector<std::string> parts;
    for (size_t b = 1, e; b <= rq.path.size(); b = e + 1) {
      e = rq.path.find('/', b);
      if (e == std::string::npos) e = rq.path.size();
      parts.push_back(rq.path.substr(b, e - b));
    }
    if (parts.size() < 5 || parts[2] != "resolve") return respond(c, rq, 404, "Not Found", {}, "no route");
    const std::string repo_id = parts[0] + "/" + parts[1];
    const std::string rev = url_decode(parts[3]);
    std::string file;
    for (size_t i = 4; i < parts.size(); ++i) file += (i > 4 ? "/" : "") + url_decode(parts[i]);

    if (auto it = renamed.find(repo_id); it != renamed.end()) {
      return respond(c, rq, 307, "Temporary Redirect",
                     {{"Location", "/" + it->second + "/resolve/" + parts[3] + "/" + file}}, "");
    }
    auto rit = repos.find(repo_id);
    if (rit == repos.end()) {
      return respond(c, rq, 404, "Not Found",
                     {{"X-Error-Code", "RepoNotFound"}, {"X-Error-Message", "Repository not found"}}, "");
    }
    const MockRepo& repo = rit->second;
    if (!repo.token.empty() && rq.header("authorization") != "Bearer " + repo.token) {
      return respond(c, rq, 401, "Unauthorized", {{"X-Error-Message", "Invalid credentials"}}, "");
    }
    if (rev != repo.commit && !repo.refs.count(rev)) {
      return respond(c, rq, 404, "Not Found",
                     {{"X-Error-Code", "RevisionNotFound"}, {"X-Error-Message", "Invalid rev id"}}, "");
    }
    auto fit = repo.files.find(file);
    if (fit == repo.files.end()) {
      return respond(c, rq, 404, "Not Found", {{"X-Error-Code", "EntryNotFound"}, {"X-Repo-Commit", repo.commit}}, "");
    }
    const MockFile& f = fit->second;
    const std::string sha = sha256_hex(f.content);
    if (f.lfs) {
      const long long size = linked_size.count(sha) ? linked_size[sha] : static_cast<long long>(f.content.size());
      return respond(c, rq, 302, "Found",
                     {{"Location", url() + "/cdn/" + sha},
                      {"X-Repo-Commit", repo.commit},
                      {"X-Linked-Etag", "\"" + sha + "\""},
                      {"X-Linked-Size", std::to_string(size)},
                      {"ETag", "\"" + sha.substr(0, 40) + "\""}},  // the pointer's etag: must not be used
                     "");
    }
    // Small files: a weak git-style ETag, served directly.
    return respond(c, rq, 200, "OK", {{"X-Repo-Commit", repo.commit}, {"ETag", "W/\"" + sha.substr(24) + "\""}},
                   f.content);
  }

  void serve_cdn(int c, const Request& rq, const std::string& sha) {
    const MockFile* f = nullptr;
    for (const auto& [id, repo] : repos) {
      for (const auto& [name, file] : repo.files) {
        if (sha256_hex(file.content) == sha) f = &file;
      }
    }
    if (!f) return respond(c, rq, 404, "Not Found", {}, "");
    std::string body = f->content;
    if (corrupt.count(sha)) body[body.size() / 2] ^= 0x5a;
    if (cut_always.count(sha)) return respond(c, rq, 200, "OK", {}, body, 0);
    size_t start = 0;
    const std::string range = rq.header("range");
    if (!range.empty() && !ignore_range.count(sha)) {
      start = std::stoull(range.substr(6));  // bytes=N-
      if (start >= body.size()) {
        return respond(c, rq, 416, "Range Not Satisfiable",
                       {{"Content-Range", "bytes */" + std::to_string(body.size())}}, "");
      }
      const std::string part = body.substr(start);
      return respond(c, rq, 206, "Partial Content",
                     {{"Content-Range", "bytes " + std::to_string(start) + "-" + std::to_string(body.size() - 1) + "/" +
                                            std::to_string(body.size())},
                      {"ETag", "\"" + sha + "\""}},
                     part);
    }
    size_t limit = std::string::npos;
    if (auto it = cut_first.find(sha); it != cut_first.end() && rq.method == "GET") {
      limit = it->second;
      cut_first.erase(it);
    }
    respond(c, rq, 200, "OK", {{"ETag", "\"" + sha + "\""}, {"Accept-Ranges", "bytes"}}, body, limit);
  }

  int fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stopped_{false};
  std::thread thread_;
  std::mutex mu_;
  std::vector<Request> log_;
};

// A port nothing listens on.
inline int dead_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

}  // namespace md::mockhub
