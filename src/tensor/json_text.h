#pragma once
// Error-message helpers shared by the JSON readers (safetensors headers,
// config.json, tokenizer.json).
#include <exception>
#include <string>

#include <nlohmann/json.hpp>

namespace md::json_text {

// Short rendering of a JSON value for error messages.
inline std::string brief(const nlohmann::json& j) {
  std::string s = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (s.size() > 60) s = s.substr(0, 57) + "...";
  return s;
}

// nlohmann's what() starts with "[json.exception.parse_error.101] "; drop it
// and keep the message on one line.
inline std::string error_text(const std::exception& e) {
  std::string s = e.what();
  if (!s.empty() && s[0] == '[') {
    const size_t p = s.find("] ");
    if (p != std::string::npos) s = s.substr(p + 2);
  }
  for (char& c : s)
    if (c == '\n' || c == '\r') c = ' ';
  return s;
}

// A parse or range error (e.g. 1e400) as a server message: from "parse
// error" on when nlohmann says so, else without the "[json.exception...] "
// prefix.
inline std::string parse_failure(const std::exception& e) {
  const std::string w = e.what();
  auto p = w.find("parse error");
  if (p == std::string::npos && !w.empty() && w[0] == '[' && w.find("] ") != std::string::npos) p = w.find("] ") + 2;
  return p == std::string::npos ? w : w.substr(p);
}

}  // namespace md::json_text
