#pragma once
// Helpers for tests that read the testdata fixture (tests/reference/prepare.sh):
// the tiny model, the test images and the reference's expected values.
#include <cstdint>
#include <algorithm>
#include <cstdio>
#include <sys/wait.h>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace md::testdata {

inline std::filesystem::path root() { return MOONDREAM_TESTDATA_DIR; }
inline std::filesystem::path tiny_model() { return root() / "models" / "tiny"; }

template <typename T>
std::vector<T> read_raw(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  if (!f) throw std::runtime_error("cannot open " + p.string());
  f.seekg(0, std::ios::end);
  const size_t n = size_t(f.tellg());
  f.seekg(0);
  std::vector<T> v(n / sizeof(T));
  f.read(reinterpret_cast<char*>(v.data()), std::streamsize(v.size() * sizeof(T)));
  return v;
}

inline nlohmann::json read_json(const std::filesystem::path& p) {
  std::ifstream f(p);
  if (!f) throw std::runtime_error("cannot open " + p.string());
  return nlohmann::json::parse(f);
}

struct Case {
  std::string name;
  std::filesystem::path image;     // the test image
  std::filesystem::path expected;  // expected/<name>/
};

// Every image that has expected values, sorted by name.
inline std::vector<Case> cases() {
  std::vector<Case> out;
  for (const auto& e : std::filesystem::directory_iterator(root() / "images")) {
    Case c;
    c.name = e.path().stem().string();
    c.image = e.path();
    c.expected = root() / "expected" / c.name;
    if (std::filesystem::exists(c.expected / "meta.json")) out.push_back(c);
  }
  std::sort(out.begin(), out.end(), [](const Case& a, const Case& b) { return a.name < b.name; });
  return out;
}

// Runs a command, returns its exit status and stdout (stderr goes to `err_file`).
struct CommandResult {
  int status = -1;
  std::string out;
};
inline CommandResult run_command(const std::string& cmd) {
  CommandResult r;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  const int st = pclose(p);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

inline std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

}  // namespace md::testdata
