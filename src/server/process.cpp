#include "server/process.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#if defined(__APPLE__)
#include <mach/mach.h>
#endif

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include <httplib.h>
#include <nlohmann/json.hpp>

namespace md::server {
namespace fs = std::filesystem;

namespace {

uint64_t listening_inode(const char* table, int port) {
  std::ifstream f(table);
  std::string line;
  std::getline(f, line);  // header
  while (std::getline(f, line)) {
    std::istringstream ls(line);
    std::string sl, local, remote, st, queues, timer, retr, uid, timeout, inode;
    if (!(ls >> sl >> local >> remote >> st >> queues >> timer >> retr >> uid >> timeout >> inode)) continue;
    if (st != "0A") continue;  // LISTEN
    const auto colon = local.rfind(':');
    if (colon == std::string::npos) continue;
    if (std::strtol(local.c_str() + colon + 1, nullptr, 16) != port) continue;
    const uint64_t ino = std::strtoull(inode.c_str(), nullptr, 10);
    if (ino) return ino;
  }
  return 0;
}

std::string command_line(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/cmdline", std::ios::binary);
  std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  while (!s.empty() && s.back() == '\0') s.pop_back();
  for (char& c : s)
    if (c == '\0') c = ' ';
  if (s.empty()) {
    std::ifstream c("/proc/" + std::to_string(pid) + "/comm");
    std::getline(c, s);
  }
  if (s.size() > 120) s = s.substr(0, 117) + "...";
  return s;
}

}  // namespace

// The server binds with SO_REUSEPORT (cpp-httplib), which TIME_WAIT leftovers
// of a previous server do not block; a probe with SO_REUSEADDR alone would
// fail on them, so a failed probe only counts when something still listens.
bool port_is_free(const std::string& host, int port) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* res = nullptr;
  const std::string service = std::to_string(port);
  if (getaddrinfo(host.empty() ? nullptr : host.c_str(), service.c_str(), &hints, &res) != 0) return true;
  bool free = true;
  for (addrinfo* a = res; a; a = a->ai_next) {
    const int fd = socket(a->ai_family, a->ai_socktype, a->ai_protocol);  // (closed below: no exec in between)
    if (fd < 0) continue;
    int yes = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
    if (bind(fd, a->ai_addr, a->ai_addrlen) != 0 && errno == EADDRINUSE) free = false;
    close(fd);
    break;  // the server binds the first address too
  }
  freeaddrinfo(res);
  if (free) return true;
#if !defined(__linux__)
  return false;  // (no /proc/net/tcp to tell a listener from TIME_WAIT leftovers)
#endif
  return listening_inode("/proc/net/tcp", port) == 0 && listening_inode("/proc/net/tcp6", port) == 0;
}

PortOwner find_port_owner(int port) {
  PortOwner o;
  o.inode = listening_inode("/proc/net/tcp", port);
  if (!o.inode) o.inode = listening_inode("/proc/net/tcp6", port);
  if (!o.inode) return o;
  const std::string target = "socket:[" + std::to_string(o.inode) + "]";
  std::error_code ec;
  for (const auto& proc : fs::directory_iterator("/proc", ec)) {
    const std::string name = proc.path().filename().string();
    if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::error_code ec2;
    for (const auto& fd : fs::directory_iterator(proc.path() / "fd", ec2)) {
      char buf[64];
      const ssize_t n = readlink(fd.path().c_str(), buf, sizeof buf - 1);
      if (n <= 0) continue;
      if (std::string(buf, size_t(n)) == target) {
        o.pid = pid_t(std::atoi(name.c_str()));
        o.command = command_line(o.pid);
        return o;
      }
    }
  }
  return o;
}

std::string describe_port_owner(int port, const PortOwner& owner) {
  const std::string p = "port " + std::to_string(port) + " is already in use";
  if (owner.pid) return p + " by pid " + std::to_string(owner.pid) + " (" + owner.command + ")";
  if (owner.inode) return p + " by a process this user cannot see (socket inode " + std::to_string(owner.inode) + ")";
  return p;
}

std::string default_pid_file(int port) {
  const char* xdg = std::getenv("XDG_RUNTIME_DIR");
  std::string dir = "/tmp";
  if (xdg && *xdg && access(xdg, W_OK) == 0) dir = xdg;
  return dir + "/moondream-server-" + std::to_string(port) + ".pid";
}

std::optional<PidFile> read_pid_file(const std::string& path) {
  std::ifstream f(path);
  if (!f) return std::nullopt;
  try {
    const auto j = nlohmann::json::parse(f);
    PidFile pf;
    pf.pid = j.at("pid").get<pid_t>();
    pf.port = j.value("port", 0);
    pf.instance = j.value("instance", "");
    return pf;
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

void write_pid_file(const std::string& path, const PidFile& pf) {
  const std::string tmp = path + ".tmp." + std::to_string(getpid());
  {
    std::ofstream f(tmp, std::ios::trunc);
    f << nlohmann::json{{"pid", pf.pid}, {"port", pf.port}, {"instance", pf.instance}}.dump() << "\n";
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) fs::remove(tmp, ec);
}

void remove_pid_file(const std::string& path, const std::string& instance) {
  const auto pf = read_pid_file(path);
  if (pf && pf->pid == getpid() && pf->instance == instance) {
    std::error_code ec;
    fs::remove(path, ec);
  }
}

std::string new_instance_id() {
  std::random_device rd;
  std::mt19937_64 g((uint64_t(rd()) << 32) ^ rd() ^ uint64_t(getpid()) ^
                    uint64_t(std::chrono::steady_clock::now().time_since_epoch().count()));
  char buf[33];
  std::snprintf(buf, sizeof buf, "%016llx%016llx", (unsigned long long)g(), (unsigned long long)g());
  return buf;
}

std::string replace_previous_server(const std::string& host, int port, const std::string& pid_file, double wait_s) {
  const PortOwner owner = find_port_owner(port);
  const std::string held = describe_port_owner(port, owner);
  if (!owner.pid) return held + "; --replace only stops a moondream-server it can identify";
  const auto pf = read_pid_file(pid_file);
  if (!pf) return held + "; there is no moondream-server pid file " + pid_file + ", so --replace leaves it alone";
  if (pf->pid != owner.pid)
    return held + "; the pid file " + pid_file + " names pid " + std::to_string(pf->pid) +
           ", so --replace leaves it alone";

  // Ask the process itself who it is.
  std::string connect_host = host;
  if (host.empty() || host == "0.0.0.0") connect_host = "127.0.0.1";
  if (host == "::") connect_host = "::1";
  httplib::Client cli(connect_host, port);
  cli.set_connection_timeout(3, 0);
  cli.set_read_timeout(5, 0);
  auto res = cli.Get("/health");
  if (!res) return held + "; it does not answer GET /health, so --replace leaves it alone";
  nlohmann::json h;
  try {
    h = nlohmann::json::parse(res->body);
  } catch (const std::exception&) {
    return held + "; its /health is not moondream-server's, so --replace leaves it alone";
  }
  if (!h.is_object() || h.value("server", "") != "moondream-server" || h.value("pid", -1) != owner.pid ||
      h.value("instance", "") != pf->instance)
    return held + "; its /health identity does not match " + pid_file + ", so --replace leaves it alone";

  if (kill(owner.pid, SIGTERM) != 0) return held + "; cannot signal it: " + std::strerror(errno);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(wait_s);
  while (std::chrono::steady_clock::now() < deadline) {
#if defined(__linux__)
    const bool alive = kill(owner.pid, 0) == 0 && fs::exists("/proc/" + std::to_string(owner.pid));
#else
    const bool alive = kill(owner.pid, 0) == 0;
#endif
    if (!alive && port_is_free(host, port)) return "";
    if (alive) {
      // A zombie (exited, not yet reaped by its parent) no longer holds the port.
      std::ifstream st("/proc/" + std::to_string(owner.pid) + "/stat");
      std::string s;
      std::getline(st, s);
      const auto rp = s.rfind(')');
      if (rp != std::string::npos && rp + 2 < s.size() && s[rp + 2] == 'Z' && port_is_free(host, port)) return "";
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return "the previous moondream-server (pid " + std::to_string(owner.pid) + ") did not exit within " +
         std::to_string(int(wait_s)) + " s";
}

uint64_t rss_bytes() {
#if defined(__APPLE__)
  mach_task_basic_info info{};
  mach_msg_type_number_t count = MACH_TASK_BASIC_INFO_COUNT;
  if (task_info(mach_task_self(), MACH_TASK_BASIC_INFO, reinterpret_cast<task_info_t>(&info), &count) != KERN_SUCCESS)
    return 0;
  return uint64_t(info.resident_size);
#endif
  std::ifstream f("/proc/self/statm");
  uint64_t size = 0, resident = 0;
  f >> size >> resident;
  return resident * uint64_t(sysconf(_SC_PAGESIZE));
}

}  // namespace md::server
