#pragma once
// Process-level helpers: who holds a TCP port (from /proc), pid files, and
// stopping a previous moondream-server (never any other process).
#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>

namespace md::server {

// True when host:port can be bound now (SO_REUSEADDR, as the server binds).
bool port_is_free(const std::string& host, int port);

struct PortOwner {
  uint64_t inode = 0;   // 0: no listening socket found in /proc/net/tcp{,6}
  pid_t pid = 0;        // 0: the socket belongs to a process we cannot see
  std::string command;  // its command line, shortened
};
// The process listening on `port` (any address), from /proc/net/tcp{,6} and
// the socket inodes of /proc/*/fd.
PortOwner find_port_owner(int port);
// One line for the user: "port 8080 is in use by pid 1234 (python3 -m http.server 8080)".
std::string describe_port_owner(int port, const PortOwner& owner);

// $XDG_RUNTIME_DIR/moondream-server-<port>.pid, or /tmp/moondream-server-<port>.pid.
std::string default_pid_file(int port);

struct PidFile {
  pid_t pid = 0;
  int port = 0;
  std::string instance;
};
std::optional<PidFile> read_pid_file(const std::string& path);
void write_pid_file(const std::string& path, const PidFile& pf);  // atomic (rename)
// Removes the file only when it still names this process.
void remove_pid_file(const std::string& path, const std::string& instance);

// A random 128-bit instance id (hex).
std::string new_instance_id();

// --replace: when `port` is held by a moondream-server whose pid file and
// /health identity (server, pid, instance) agree, sends it SIGTERM and waits
// up to `wait_s` for the port to free. Returns an empty string on success, or
// the one-line reason it refused or failed.
std::string replace_previous_server(const std::string& host, int port, const std::string& pid_file, double wait_s);

// Resident set size of this process in bytes.
uint64_t rss_bytes();

}  // namespace md::server
