// Fuzz target: a moondream-server config file (parse_server_config); an
// accepted config survives config_to_json → parse again.
#include <cstdint>
#include <string>
#include <vector>

#include "server/config.h"
#include "tensor/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  std::vector<std::string> warnings;
  md::server::ServerConfig c;
  try {
    c = md::server::parse_server_config(text, "fuzz.json", &warnings);
  } catch (const md::Error&) {
    return 0;
  }
  try {
    std::vector<std::string> w2;
    const md::server::ServerConfig again =
        md::server::parse_server_config(md::server::config_to_json(c), "again.json", &w2);
    if (again.max_tokens != c.max_tokens || again.limits.max_body_bytes != c.limits.max_body_bytes ||
        again.server.port != c.server.port || again.performance.quantization != c.performance.quantization)
      __builtin_trap();
  } catch (const md::Error&) {
    __builtin_trap();  // what we print must parse
  }
  return 0;
}
