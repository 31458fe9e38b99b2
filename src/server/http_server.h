#pragma once
// cpp-httplib's Server with the connection handling an API server under load
// needs and Debian's cpp-httplib 0.11 lacks (docs/RELIABILITY.md, "Requests
// lost under load"):
// - a deep accept queue: 0.11 listens with a backlog of 5, and a burst of
//   clients overflows it; the kernel then resets connections that the clients
//   already believe open, after they sent their request;
// - a graceful stop that answers every connection the kernel completed:
//   httplib's stop() closes the listener (resetting the connections still in
//   the kernel's queue) and its workers drop connections already accepted but
//   not yet read;
// - a lingering close, so a reply is not destroyed by a reset when the client
//   is still sending (a 413 to a large body);
// - idle keep-alive connections closed promptly once a stop begins.
#include <atomic>
#include <cstdint>
#include <string>

#include <httplib.h>

namespace md::server {

struct HttpServerOptions {
  int threads = 8;          // connections served at once
  int idle_timeout_s = 5;   // an idle connection (no request yet) is closed after this long
  int read_timeout_s = 30;  // one read of a request that has begun
  int write_timeout_s = 30;
};

class HttpServer : public httplib::Server {
 public:
  // Connections the kernel may complete before the accept loop takes them
  // (the kernel caps it at net.core.somaxconn).
  static constexpr int kListenBacklog = 4096;

  explicit HttpServer(const HttpServerOptions& o);

  // Binds and listens with kListenBacklog; false when the address cannot be
  // bound.
  bool bind_deep(const std::string& host, int port);
  // Graceful stop: new connection attempts get no answer (their SYNs are
  // dropped; once the listener closes, their retries are refused), every
  // connection the kernel had completed is accepted and served, then the
  // listener closes. listen_after_bind() returns once every connection has
  // been answered and closed. Requests that arrive now are answered by the
  // handlers (which see the server stopping) with "Connection: close".
  void drain();

 private:
  bool process_and_close_socket(socket_t sock) override;
  // Waits for the first byte of a request on a connection; false when the
  // connection is idle past its timeout, closed by the peer, or idle while
  // the server drains.
  bool await_request(socket_t sock, bool first) const;

  HttpServerOptions opts_;
  int listen_fd_ = -1;
  std::atomic<bool> draining_{false};
  std::atomic<int64_t> drain_started_ns_{0};  // steady_clock ticks
};

}  // namespace md::server
