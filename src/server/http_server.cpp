#include "server/http_server.h"

#if defined(__linux__)
#include <linux/filter.h>
#endif
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <thread>

#include <spdlog/spdlog.h>

namespace md::server {

// No SIGPIPE from a write to a closed connection (the server also ignores
// the signal: where MSG_NOSIGNAL is missing, macOS, that is what holds).
#if defined(MSG_NOSIGNAL)
constexpr int kSendFlags = MSG_NOSIGNAL;
#else
constexpr int kSendFlags = 0;
#endif
namespace {

using Clock = std::chrono::steady_clock;

// While draining, a keep-alive connection with no request in flight is
// closed after this grace (a request already on its way gets served).
constexpr auto kDrainIdleGrace = std::chrono::milliseconds(250);
// A close waits this long for the client to stop sending (see lingering_close).
constexpr auto kLingerTime = std::chrono::seconds(1);
constexpr size_t kLingerMaxBytes = 64u << 20;

int poll_one(int fd, short events, int timeout_ms) {
  pollfd p{fd, events, 0};
  for (;;) {
    const int r = ::poll(&p, 1, timeout_ms);
    if (r >= 0 || errno != EINTR) return r;
  }
}

int remaining_ms(Clock::time_point deadline) {
  const auto d = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return d > 0 ? int(d) : 0;
}

bool ip_and_port(const sockaddr_storage& addr, socklen_t len, std::string& ip, int& port) {
  if (addr.ss_family == AF_INET)
    port = ntohs(reinterpret_cast<const sockaddr_in*>(&addr)->sin_port);
  else if (addr.ss_family == AF_INET6)
    port = ntohs(reinterpret_cast<const sockaddr_in6*>(&addr)->sin6_port);
  else
    return false;
  std::array<char, NI_MAXHOST> host{};
  if (getnameinfo(reinterpret_cast<const sockaddr*>(&addr), len, host.data(), socklen_t(host.size()), nullptr, 0,
                  NI_NUMERICHOST) != 0)
    return false;
  ip = host.data();
  return true;
}

// A connection as httplib's request parser reads it: buffered reads (its line
// reader asks for one byte at a time), each read and write bounded by a
// timeout.
class ConnectionStream final : public httplib::Stream {
 public:
  ConnectionStream(int fd, int read_timeout_s, int write_timeout_s)
      : fd_(fd), read_ms_(read_timeout_s * 1000), write_ms_(write_timeout_s * 1000) {}

  bool is_readable() const override { return off_ < len_ || poll_one(fd_, POLLIN, read_ms_) > 0; }
  bool is_writable() const override { return poll_one(fd_, POLLOUT, write_ms_) > 0; }

  ssize_t read(char* ptr, size_t size) override {
    if (off_ < len_) {
      const size_t n = std::min(size, len_ - off_);
      std::memcpy(ptr, buf_.data() + off_, n);
      off_ += n;
      return ssize_t(n);
    }
    if (!is_readable()) return -1;
    if (size >= buf_.size()) return recv_some(ptr, size);
    const ssize_t n = recv_some(buf_.data(), buf_.size());
    if (n <= 0) return n;
    off_ = 0;
    len_ = size_t(n);
    return read(ptr, size);
  }

  ssize_t write(const char* ptr, size_t size) override {
    if (!is_writable()) return -1;
    for (;;) {
      const ssize_t n = ::send(fd_, ptr, size, kSendFlags);
      if (n >= 0 || errno != EINTR) return n;
    }
  }

  void get_remote_ip_and_port(std::string& ip, int& port) const override {
    sockaddr_storage a{};
    socklen_t len = sizeof(a);
    if (getpeername(fd_, reinterpret_cast<sockaddr*>(&a), &len) == 0) ip_and_port(a, len, ip, port);
  }
  void get_local_ip_and_port(std::string& ip, int& port) const override {
    sockaddr_storage a{};
    socklen_t len = sizeof(a);
    if (getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len) == 0) ip_and_port(a, len, ip, port);
  }
  socket_t socket() const override { return fd_; }

 private:
  ssize_t recv_some(char* p, size_t n) {
    for (;;) {
      const ssize_t r = ::recv(fd_, p, n, 0);
      if (r >= 0 || errno != EINTR) return r;
    }
  }

  int fd_;
  int read_ms_, write_ms_;
  std::array<char, 4096> buf_{};
  size_t off_ = 0, len_ = 0;
};

// Closes after the reply without resetting it: a close() with unread input
// makes the kernel send a reset, which can destroy the reply before the
// client reads it (a 413 sent while the client is still uploading). So: FIN
// first, then read and drop what the client still sends until it closes,
// for a bounded time.
void lingering_close(int fd) {
  ::shutdown(fd, SHUT_WR);
  const auto deadline = Clock::now() + kLingerTime;
  std::array<char, 16384> sink{};
  size_t dropped = 0;
  while (dropped < kLingerMaxBytes && poll_one(fd, POLLIN, remaining_ms(deadline)) > 0) {
    const ssize_t n = ::recv(fd, sink.data(), sink.size(), 0);
    if (n <= 0) break;
    dropped += size_t(n);
  }
  ::close(fd);
}

// The accept loop's hand-off to httplib's thread pool. The test hook
// MOONDREAM_SERVER_TEST_ACCEPT_DELAY_MS slows the accept loop down (each
// accepted connection holds it that long), as a loaded machine does, so that
// tests can fill the kernel's accept queue on purpose.
class SlowablePool final : public httplib::TaskQueue {
 public:
  explicit SlowablePool(size_t threads) : pool_(threads) {
    if (const char* v = std::getenv("MOONDREAM_SERVER_TEST_ACCEPT_DELAY_MS")) delay_ms_ = std::atoi(v);
  }
  void enqueue(std::function<void()> fn) override {
    pool_.enqueue(std::move(fn));
    if (delay_ms_ > 0) std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms_));
  }
  void shutdown() override { pool_.shutdown(); }

 private:
  httplib::ThreadPool pool_;
  int delay_ms_ = 0;
};

// Connections in the kernel's accept queue of a listening socket (Linux's
// TCP_INFO; -1 elsewhere).
long accept_queue_length(int fd) {
#if !defined(__linux__)
  (void)fd;
  return -1;
#else
  tcp_info ti{};
  socklen_t len = sizeof(ti);
  if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) != 0) return -1;
  return long(ti.tcpi_unacked);  // for a listener: its accept queue
#endif
}

// Drops every SYN (flags SYN set, ACK clear) that reaches the listener, so no
// new handshake completes; packets of handshakes already answered (the
// client's final ACK) and of accepted connections pass. A classic BPF filter
// on a TCP socket sees the segment from its TCP header (byte 13: flags).
bool refuse_new_handshakes(int fd) {
#if !defined(__linux__)
  (void)fd;
  return false;  // (no socket filters: draining then closes the listener at once)
#else
  sock_filter code[] = {
      BPF_STMT(BPF_LD | BPF_B | BPF_ABS, 13),          BPF_STMT(BPF_ALU | BPF_AND | BPF_K, 0x12),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0x02, 0, 1), BPF_STMT(BPF_RET | BPF_K, 0),
      BPF_STMT(BPF_RET | BPF_K, 0xffffffffu),
  };
  sock_fprog prog{static_cast<unsigned short>(sizeof(code) / sizeof(code[0])), code};
  return setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof(prog)) == 0;
#endif
}

}  // namespace

HttpServer::HttpServer(const HttpServerOptions& o) : opts_(o) {
  const size_t threads = size_t(std::max(1, o.threads));
  new_task_queue = [threads] { return new SlowablePool(threads); };
  set_keep_alive_timeout(o.idle_timeout_s);
  set_read_timeout(o.read_timeout_s, 0);
  set_write_timeout(o.write_timeout_s, 0);
}

bool HttpServer::bind_deep(const std::string& host, int port) {
  int fd = -1;
  set_socket_options([&fd](socket_t s) {
    httplib::default_socket_options(s);
    fd = s;  // the last socket made is the one that bound
  });
  const bool ok = bind_to_port(host, port);
  set_socket_options(httplib::default_socket_options);
  if (!ok) return false;
  listen_fd_ = fd;
  if (::listen(fd, kListenBacklog) != 0)
    spdlog::warn("listen backlog of {} refused ({}); bursts of clients may be reset", kListenBacklog,
                 std::strerror(errno));
  return true;
}

void HttpServer::drain() {
  if (draining_.exchange(true) || listen_fd_ < 0) return;
  drain_started_ns_ = Clock::now().time_since_epoch().count();
  const int fd = listen_fd_;
  if (!refuse_new_handshakes(fd))
    spdlog::warn("cannot filter new connections while stopping: {}", std::strerror(errno));
  // The accept loop takes what the kernel completed; bounded, in case it is
  // stuck.
  const auto deadline = Clock::now() + std::chrono::seconds(2);
  while (is_running() && accept_queue_length(fd) > 0 && Clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  // accept() now fails: httplib's loop ends, closes the socket and joins its
  // pool, which serves every connection it was handed (svr_sock_ is left as
  // is, so its workers do not drop them as httplib's stop() would).
  ::shutdown(fd, SHUT_RDWR);
}

bool HttpServer::await_request(socket_t sock, bool first) const {
  const auto deadline = Clock::now() + std::chrono::seconds(opts_.idle_timeout_s);
  for (;;) {
    const int r = poll_one(sock, POLLIN, std::min(50, remaining_ms(deadline)));
    if (r != 0) return r > 0;  // data, or the peer closed (the parser sees which)
    if (Clock::now() >= deadline) return false;
    if (!first && draining_ &&
        Clock::now().time_since_epoch().count() - drain_started_ns_.load() >=
            std::chrono::duration_cast<Clock::duration>(kDrainIdleGrace).count())
      return false;
  }
}

bool HttpServer::process_and_close_socket(socket_t sock) {
  ConnectionStream strm(sock, opts_.read_timeout_s, opts_.write_timeout_s);
  bool ret = false;
  // Unlike httplib's loop, this one never checks whether the server is still
  // listening: a connection it was handed gets its request answered.
  for (size_t served = 0; served < keep_alive_max_count_; ++served) {
    if (!await_request(sock, served == 0)) break;
    const bool last = served + 1 == keep_alive_max_count_ || draining_;
    bool closed_by_client = false;
    ret = process_request(strm, last, closed_by_client, nullptr);
    if (!ret || closed_by_client || last) break;
  }
  lingering_close(sock);
  return ret;
}

}  // namespace md::server
