// moondream_load: the load test at any scale against a running server on
// loopback (the CI runs it small through server_load_ref_test).
//   moondream_load --port 8080 --clients 64 --seconds 300 --image a.jpg [--image b.png] [--api-key K]
// Prints the report as JSON; exits 1 if any request failed or hung, or the
// server was not healthy afterwards.
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>

#include "load_runner.h"
#include "server/image_input.h"

namespace {

std::string data_uri(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "moondream_load: cannot read %s\n", path.c_str());
    std::exit(2);
  }
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string bytes = ss.str();
  const bool png = bytes.size() > 4 && bytes.compare(1, 3, "PNG") == 0;
  return std::string("data:image/") + (png ? "png" : "jpeg") + ";base64," + md::server::base64_encode(bytes);
}

}  // namespace

int main(int argc, char** argv) {
  md::load::LoadOptions o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "moondream_load: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--host")
      o.host = next();
    else if (a == "--port")
      o.port = std::stoi(next());
    else if (a == "--clients")
      o.clients = std::stoi(next());
    else if (a == "--seconds")
      o.seconds = std::stod(next());
    else if (a == "--timeout")
      o.request_timeout_s = std::stod(next());
    else if (a == "--image")
      o.image_uris.push_back(data_uri(next()));
    else if (a == "--api-key")
      o.api_key = next();
    else {
      std::fprintf(stderr,
                   "usage: moondream_load [--host H] [--port P] [--clients N] [--seconds S] [--timeout S] --image "
                   "FILE... [--api-key K]\n");
      return 2;
    }
  }
  if (o.host != "127.0.0.1" && o.host != "localhost" && o.host != "::1") {
    std::fprintf(stderr, "moondream_load: loopback only\n");
    return 2;
  }
  if (o.image_uris.empty()) {
    std::fprintf(stderr, "moondream_load: give at least one --image\n");
    return 2;
  }
  const md::load::LoadReport r = md::load::run_load(o);
  std::printf("%s\n", r.to_json().dump(2).c_str());
  return r.errors == 0 && r.healthy_after ? 0 : 1;
}
