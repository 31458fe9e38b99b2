// moondream-server pieces without a model: config parsing and validation
// (the shipped profiles included), base64 and data URIs, stop sequences, the
// LRU caches, address checks for image URLs, the Prometheus text.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <thread>

#include <httplib.h>
#include <nlohmann/json.hpp>

#include "server/api_error.h"
#include "server/cache.h"
#include "server/config.h"
#include "server/engine.h"
#include "server/image_input.h"
#include "server/metrics.h"
#include "server/process.h"
#include "server/requests.h"
#include "server/security.h"
#include "tensor/error.h"

namespace md::server {
namespace {

std::string error_of(const std::string& text) {
  try {
    std::vector<std::string> w;
    parse_server_config(text, "t.json", &w);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(ServerConfig, ShippedProfilesParseWithoutWarnings) {
  for (const char* name : {"moondream2", "moondream2_optimized"}) {
    std::vector<std::string> w;
    const ServerConfig c = load_server_config(std::string(MOONDREAM_SOURCE_DIR) + "/configs/" + name + ".json", &w);
    EXPECT_TRUE(w.empty()) << name << ": " << (w.empty() ? "" : w[0]);
    EXPECT_EQ(c.model_path, "vikhyatk/moondream2");
    EXPECT_EQ(c.server.port, 8080);
    EXPECT_FALSE(c.server.cors_enabled) << "CORS is off unless a profile turns it on";
    const bool optimized = std::string(name) == "moondream2_optimized";
    EXPECT_EQ(c.performance.image_caching, optimized) << name;
    EXPECT_EQ(c.performance.response_caching, optimized) << name;
    if (optimized) {
      EXPECT_GT(c.performance.cache_max_mb, 0);
    }
    // The optimized profile runs the fastest tested mode: int8 weights
    // (quant_ref_test: top-1 agreement) and bf16 KV rows (the default).
    EXPECT_EQ(c.performance.quantization, optimized ? "int8" : "none") << name;
    EXPECT_EQ(c.performance.kv_cache, "bf16") << name;
  }
  EXPECT_EQ(list_profiles(std::string(MOONDREAM_SOURCE_DIR) + "/configs"),
            (std::vector<std::string>{"moondream2", "moondream2_optimized"}));
}

TEST(ServerConfig, EveryKeyIsRead) {
  std::vector<std::string> w;
  const ServerConfig c = parse_server_config(R"({
    "model_name": "m", "model_path": "/models/m", "revision": "r1", "device": "cpu", "max_tokens": 300,
    "performance": {"image_caching": true, "response_caching": true, "memory_management": true,
                    "cache_max_mb": 512, "quantization": "none"},
    "server": {"host": "0.0.0.0", "port": 9000, "backend_port": 9001, "cors_enabled": false,
               "api_key": "k", "queue_size": 3, "web_ui": false},
    "image_processing": {"size": 768, "quality": 80},
    "generation_config": {"max_new_tokens": 100, "temperature": 0.2, "top_p": 0.9, "do_sample": false},
    "limits": {"max_body_bytes": 2048, "max_image_bytes": 1000, "max_image_pixels": 5000}
  })",
                                             "t.json", &w);
  EXPECT_TRUE(w.empty());
  EXPECT_EQ(c.model_name, "m");
  EXPECT_EQ(c.revision, "r1");
  EXPECT_EQ(c.max_tokens, 300);
  EXPECT_TRUE(c.performance.memory_management);
  EXPECT_EQ(c.performance.cache_max_mb, 512);
  EXPECT_EQ(c.server.host, "0.0.0.0");
  EXPECT_EQ(c.server.backend_port, 9001);
  EXPECT_FALSE(c.server.cors_enabled);
  EXPECT_EQ(c.server.queue_size, 3);
  EXPECT_FALSE(c.server.web_ui);
  EXPECT_TRUE(ServerConfig().server.web_ui);
  EXPECT_EQ(c.image_processing.size, 768);
  EXPECT_EQ(c.generation_config.max_new_tokens, 100);
  EXPECT_DOUBLE_EQ(c.generation_config.top_p, 0.9);
  EXPECT_FALSE(c.generation_config.do_sample);
  EXPECT_EQ(c.limits.max_image_pixels, 5000u);
}

TEST(ServerConfig, WrongTypesAndValuesNameTheKey) {
  const std::pair<const char*, const char*> cases[] = {
      {R"({"max_tokens": "many"})", "max_tokens"},
      {R"({"max_tokens": 0})", "max_tokens"},
      {R"({"performance": {"cache_max_mb": -1}})", "performance.cache_max_mb"},
      {R"({"performance": {"quantization": "int3"}})", "performance.quantization"},
      {R"({"performance": {"kv_cache": "int4"}})", "performance.kv_cache"},
      {R"({"performance": {"kv_cache": 16}})", "performance.kv_cache"},
      {R"({"performance": []})", "performance"},
      {R"({"server": {"port": 0}})", "server.port"},
      {R"({"server": {"cors_enabled": "yes"}})", "server.cors_enabled"},
      {R"({"server": {"web_ui": 1}})", "server.web_ui"},
      {R"({"server": {"port": 8000}})", "backend_port"},
      {R"({"image_processing": {"quality": 101}})", "image_processing.quality"},
      {R"({"generation_config": {"temperature": -1}})", "generation_config.temperature"},
      {R"({"generation_config": {"top_p": 0}})", "generation_config.top_p"},
      {R"({"device": "tpu"})", "device"},
      {R"({"model_path": ""})", "model_path"},
      {R"([1])", "object"},
      {R"({"a": )", "not valid JSON"},
      {R"({"max_tokens": 1e400})", "not valid JSON"},  // found by fuzz_server_config: was an uncaught exception
      {R"({"limits": {"max_image_bytes": 1.0e24}})", "limits.max_image_bytes must be between"},  // was UB (fuzz)
      {R"({"max_tokens": 2.5})", "max_tokens must be an integer"},
  };
  for (const auto& [text, key] : cases) {
    const std::string e = error_of(text);
    EXPECT_NE(e.find(key), std::string::npos) << text << " → " << e;
    EXPECT_NE(e.find("t.json"), std::string::npos) << e;
    EXPECT_EQ(e.find('\n'), std::string::npos) << e;
  }
}

TEST(ServerConfig, UnknownKeysAndOtherDevicesWarn) {
  std::vector<std::string> w;
  const ServerConfig c = parse_server_config(
      R"({"colour": 1, "device": "mps", "server": {"x": 2}, "performance": {"quantization": "int8"},
          "max_tokens": 100, "generation_config": {"max_new_tokens": 500}})",
      "t.json", &w);
  ASSERT_EQ(w.size(), 4u);
  std::string all;
  for (const auto& s : w) all += s + "\n";
  for (const char* k : {"'colour'", "'server.x'", "mps", "max_new_tokens"})
    EXPECT_NE(all.find(k), std::string::npos) << k << "\n" << all;
  EXPECT_EQ(c.generation_config.max_new_tokens, 100);
  EXPECT_EQ(c.performance.quantization, "int8");  // supported: no warning
  for (auto [in, out] : {std::pair{"q4_0", "q4"}, std::pair{"bf16", "none"}, std::pair{"8bit", "int8"}}) {
    const ServerConfig q =
        parse_server_config(std::string(R"({"performance": {"quantization": ")") + in + "\"}}", "t.json", nullptr);
    EXPECT_EQ(q.performance.quantization, out) << in;
  }
}

TEST(ServerConfig, OverridesWin) {
  ServerConfig c;
  ConfigOverrides o;
  o.model_path = "/m";
  o.port = 1234;
  o.api_key = "k";
  o.revision = "";
  o.web_ui = false;
  apply_overrides(&c, o);
  EXPECT_FALSE(c.server.web_ui);
  EXPECT_EQ(c.model_path, "/m");
  EXPECT_EQ(c.server.port, 1234);
  EXPECT_EQ(c.server.api_key, "k");
  EXPECT_EQ(c.revision, "main");
  const auto j = nlohmann::json::parse(config_to_json(c));
  EXPECT_EQ(j["server"]["api_key"], "***");
  EXPECT_EQ(j["server"]["web_ui"], false);
  // --quantization / --kv-cache: normalised like the config keys; a bad
  // value is an error naming the flag, never a silent default.
  ConfigOverrides q;
  q.quantization = "Q8_0";
  q.kv_cache = "fp32";
  apply_overrides(&c, q);
  EXPECT_EQ(c.performance.quantization, "int8");
  EXPECT_EQ(c.performance.kv_cache, "f32");
  EXPECT_EQ(nlohmann::json::parse(config_to_json(c))["performance"]["kv_cache"], "f32");
  q.kv_cache = "INT8";
  apply_overrides(&c, q);
  EXPECT_EQ(c.performance.kv_cache, "int8");
  EXPECT_EQ(parse_server_config(R"({"performance": {"kv_cache": "int8"}})", "t.json", nullptr).performance.kv_cache,
            "int8");
  for (auto [flag, value] : {std::pair{"--quantization", "int3"}, std::pair{"--kv-cache", "int4"}}) {
    ConfigOverrides bad;
    (std::string(flag) == "--quantization" ? bad.quantization : bad.kv_cache) = value;
    try {
      apply_overrides(&c, bad);
      ADD_FAILURE() << flag << " " << value << " accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(flag), std::string::npos) << e.what();
    }
  }
}

TEST(ServerImages, Base64AndDataUris) {
  for (const std::string& s : std::vector<std::string>{"", "a", "ab", "abc", "abcd", std::string("\0\xff\x10z", 4)}) {
    std::string out;
    ASSERT_TRUE(base64_decode(base64_encode(s), &out));
    EXPECT_EQ(out, s);
  }
  std::string out;
  EXPECT_TRUE(base64_decode("aGVs\nbG8", &out));
  EXPECT_EQ(out, "hello");
  EXPECT_TRUE(base64_decode("-_8", &out));  // URL-safe alphabet
  EXPECT_FALSE(base64_decode("a$bc", &out));
  EXPECT_FALSE(base64_decode("abcde", &out));
  ImageFetchOptions o;
  EXPECT_EQ(image_bytes_from_url("data:image/png;base64,aGVsbG8=", o), "hello");
  EXPECT_EQ(image_bytes_from_url("  aGVsbG8=  ", o), "hello");  // bare base64
  auto code = [&](const std::string& url, const ImageFetchOptions& opts) {
    try {
      image_bytes_from_url(url, opts);
    } catch (const ApiError& e) {
      EXPECT_EQ(e.status, 400);
      return e.code;
    }
    return std::string("ok");
  };
  EXPECT_EQ(code("data:image/png,hello", o), "invalid_image");
  EXPECT_EQ(code("http://example.com/a.png", o), "image_url_not_allowed");
  EXPECT_EQ(code("ftp://example.com/a.png", o), "invalid_image");
  EXPECT_EQ(code("", o), "missing_image");
  ImageFetchOptions small;
  small.max_bytes = 4;
  EXPECT_EQ(code("data:image/png;base64,aGVsbG8=", small), "image_too_large");
  ImageFetchOptions urls;
  urls.allow_urls = true;
  EXPECT_EQ(code("http://127.0.0.1:1/a.png", urls), "image_url_forbidden");
  EXPECT_EQ(code("http://[::1]:1/a.png", urls), "image_url_forbidden");
}

TEST(ServerImages, PrivateAddresses) {
  for (const char* ip :
       {"127.0.0.1", "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1", "169.254.169.254", "100.64.0.1",
        "0.0.0.0", "::1", "::", "fe80::1", "fd00::1", "::ffff:127.0.0.1", "224.0.0.1", "not-an-ip"})
    EXPECT_TRUE(is_private_address(ip)) << ip;
  for (const char* ip : {"8.8.8.8", "172.32.0.1", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8"})
    EXPECT_FALSE(is_private_address(ip)) << ip;
}

TEST(ServerConfig, LimitKeysAndDefaults) {
  const ServerConfig d;
  EXPECT_FALSE(d.server.cors_enabled) << "CORS is off unless configured";
  EXPECT_EQ(d.limits.max_images, 16);
  EXPECT_EQ(d.limits.request_timeout_s, 30);
  EXPECT_EQ(d.limits.idle_timeout_s, 5);
  const ServerConfig c = parse_server_config(
      R"({"limits": {"max_images": 3, "request_timeout_s": 7, "idle_timeout_s": 2}})", "t.json", nullptr);
  EXPECT_EQ(c.limits.max_images, 3);
  EXPECT_EQ(c.limits.request_timeout_s, 7);
  EXPECT_EQ(c.limits.idle_timeout_s, 2);
  const auto j = nlohmann::json::parse(config_to_json(c));
  EXPECT_EQ(j["limits"]["max_images"], 3);
  EXPECT_EQ(j["limits"]["request_timeout_s"], 7);
  EXPECT_EQ(j["limits"]["idle_timeout_s"], 2);
  for (const char* bad : {R"({"limits": {"max_images": 0}})", R"({"limits": {"request_timeout_s": 0}})",
                          R"({"limits": {"idle_timeout_s": "long"}})"})
    EXPECT_NE(error_of(bad).find("limits."), std::string::npos) << bad;
}

// ---- request parsers (the same functions the handlers and the fuzz target call)

std::string request_error(const std::function<void()>& f) {
  try {
    f();
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status, 400);
    return e.code;
  }
  return "ok";
}

TEST(ServerRequests, MoondreamBodies) {
  ServerConfig c;
  c.max_tokens = 100;
  c.limits.max_objects = 5;
  const ParsedRequest q = parse_moondream_request(
      R"({"image_url": "aGk=", "question": "why?", "stream": true, "settings": {"temperature": 0, "max_tokens": 9}})",
      Task::Query, c);
  EXPECT_EQ(q.params.task, Task::Query);
  EXPECT_EQ(q.params.text, "why?");
  EXPECT_EQ(q.image_url, "aGk=");
  EXPECT_TRUE(q.stream);
  EXPECT_EQ(q.params.max_tokens, 9);
  EXPECT_EQ(q.params.temperature, 0.0f);
  const ParsedRequest d =
      parse_moondream_request(R"({"image_url": "x", "object": "cat", "stream": true})", Task::Detect, c);
  EXPECT_FALSE(d.stream) << "detect never streams";
  EXPECT_EQ(d.params.max_objects, 5);
  auto err = [&](const std::string& body, Task t) {
    return request_error([&] { parse_moondream_request(body, t, c); });
  };
  EXPECT_EQ(err("", Task::Caption), "invalid_json");
  EXPECT_EQ(err("[]", Task::Caption), "invalid_json");
  // Found by fuzz_requests: a number out of double's range threw
  // json::out_of_range, not parse_error, and became a 500.
  EXPECT_EQ(err(R"({"image_url": "x", "seed": 1e400})", Task::Caption), "invalid_json");
  EXPECT_EQ(request_error([&] { parse_chat_request(R"({"messages": [], "n": -1e999})", c); }), "invalid_json");
  // A question without image_url parses (a text-only question; the server
  // checks the loaded revision allows it); the other tasks need the image.
  EXPECT_EQ(err(R"({"question": "q"})", Task::Query), "ok");
  EXPECT_FALSE(parse_moondream_request(R"({"question": "q"})", Task::Query, c).params.has_image);
  EXPECT_EQ(err(R"({"object": "q"})", Task::Point), "missing_field");
  EXPECT_EQ(err(R"({"image_url": "x", "question": "q", "variant": "m"})", Task::Query), "unsupported");
  EXPECT_EQ(err(R"({"image_url": "x", "question": "q", "reasoning": "yes"})", Task::Query), "invalid_field");
  EXPECT_EQ(err(R"({"image_url": "x", "reasoning": true})", Task::Caption), "invalid_field");
  EXPECT_EQ(err(R"({"image_url": "x", "question": "q", "spatial_refs": [[0.5, 1.5]]})", Task::Query), "invalid_field");
  EXPECT_EQ(err(R"({"image_url": "x", "question": "q", "spatial_refs": [[0.6, 0.1, 0.5, 0.9]]})", Task::Query),
            "invalid_field");
  EXPECT_EQ(err(R"({"image_url": "x", "question": "q", "spatial_refs": [[0.5]]})", Task::Query), "invalid_field");
  EXPECT_EQ(err(R"({"image_url": "x", "object": "o", "spatial_refs": [[0.1, 0.2, 0.3, 0.4]]})", Task::Point), "ok");
  EXPECT_EQ(err(R"({"image_url": "x", "object": "o", "spatial_refs": [[0.1, 0.2]]})", Task::Detect), "invalid_field");
  EXPECT_EQ(err(R"({"image_url": "x", "eye": {"x": 0.5, "y": 0.5}})", Task::Gaze), "ok");
  EXPECT_EQ(err(R"({"image_url": "x"})", Task::Gaze), "missing_field");
  EXPECT_EQ(err(R"({"image_url": "x", "eye": {"x": 2, "y": 0.5}})", Task::Gaze), "invalid_field");
  EXPECT_EQ(err(R"({"image_url": "x", "length": "huge"})", Task::Caption), "invalid_field");
  EXPECT_EQ(err(R"({"image_url": "x", "settings": {"max_tokens": 101}})", Task::Caption), "max_tokens_too_large");
  EXPECT_EQ(err(R"({"image_url": "x", "max_tokens": 1e300})", Task::Caption), "invalid_field");
  EXPECT_EQ(err(R"({"image_url": "x", "object": "o", "settings": {"max_objects": 6}})", Task::Point), "invalid_field");
}

TEST(ServerRequests, ChatBodiesAndTheImageLimit) {
  ServerConfig c;
  c.limits.max_images = 2;
  const std::string img = R"({"type": "image_url", "image_url": {"url": "IMG"}})";
  auto chat = [&](int images, const std::string& extra = "") {
    std::string parts;
    for (int i = 0; i < images; ++i) parts += (i ? ", " : "") + img;
    return R"({"messages": [{"role": "user", "content": [)" + parts + R"(]}, {"role": "assistant", "content": "A."},
               {"role": "user", "content": "Why?"}])" +
           extra + "}";
  };
  const ParsedRequest r =
      parse_chat_request(chat(2, R"(, "stop": ["x"], "stream": true, "stream_options": {"include_usage": true})"), c);
  EXPECT_EQ(r.image_count, 2u);
  EXPECT_EQ(r.image_url, "IMG");
  EXPECT_EQ(r.params.task, Task::Query) << "a first turn without text is not history";
  EXPECT_EQ(r.params.text, "Why?");
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
  EXPECT_EQ(r.params.stop, std::vector<std::string>{"x"});
  EXPECT_EQ(request_error([&] { parse_chat_request(chat(3), c); }), "too_many_images");
  // No image at all: a text-only conversation (the server checks the revision).
  EXPECT_EQ(request_error([&] { parse_chat_request(chat(0), c); }), "ok");
  EXPECT_FALSE(parse_chat_request(chat(0), c).params.has_image);
  EXPECT_EQ(request_error([&] { parse_chat_request(R"({"messages": []})", c); }), "invalid_field");
  EXPECT_EQ(request_error([&] { parse_chat_request(chat(1, R"(, "max_tokens": 1000000)"), c); }),
            "max_tokens_too_large");
  EXPECT_EQ(parse_profile_switch(R"({"active_model": "p"})"), "p");
  EXPECT_EQ(request_error([&] { parse_profile_switch(R"({"active_model": 3})"); }), "invalid_field");
}

// ---- security

TEST(ServerSecurity, ApiKeyComparison) {
  EXPECT_TRUE(api_key_matches("s3cret", "s3cret"));
  EXPECT_FALSE(api_key_matches("s3cre", "s3cret"));
  EXPECT_FALSE(api_key_matches("s3cret!", "s3cret"));
  EXPECT_FALSE(api_key_matches("S3cret", "s3cret"));
  EXPECT_FALSE(api_key_matches("", "s3cret"));
  EXPECT_FALSE(api_key_matches("", "")) << "an empty configured key never matches";
  EXPECT_FALSE(api_key_matches(std::string("s3cret\0x", 8), "s3cret"));
  EXPECT_TRUE(api_key_matches(std::string(1000, 'k'), std::string(1000, 'k')));
}

TEST(ServerSecurity, NoRequestValueReachesTheFilesystem) {
  // image_url never names a file: only data URIs, base64 and http(s).
  ImageFetchOptions o;
  o.allow_urls = true;
  // A value made only of base64 characters is base64, decoded, never opened.
  std::string decoded;
  ASSERT_TRUE(base64_decode("/etc/passwd", &decoded));
  EXPECT_EQ(image_bytes_from_url("/etc/passwd", o), decoded);
  for (const char* url : {"file:///etc/passwd", "../../etc/passwd", "FILE:///etc/hostname", "gopher://127.0.0.1/",
                          "data:image/png;base64,../../etc/passwd", "~/.ssh/id_rsa"}) {
    try {
      image_bytes_from_url(url, o);
      ADD_FAILURE() << url << " was accepted";
    } catch (const ApiError& e) {
      EXPECT_EQ(e.status, 400) << url;
      EXPECT_EQ(e.code, "invalid_image") << url;
    }
  }
}

TEST(ServerSecurity, RedirectsToPrivateAddressesAreRefused) {
  // `first` stands in for a public server (listed as reachable) and redirects
  // to `second`, a loopback address nobody allowed: the redirect is refused
  // at the socket, before any byte is sent there.
  httplib::Server first, second;
  std::atomic<int> second_hits{0};
  second.Get("/img", [&](const httplib::Request&, httplib::Response& res) {
    ++second_hits;
    res.set_content("PNGDATA", "image/png");
  });
  const int p2 = second.bind_to_any_port("127.0.0.1");
  first.Get("/img", [&](const httplib::Request&, httplib::Response& res) { res.set_content("direct", "image/png"); });
  first.Get("/redirect", [&](const httplib::Request&, httplib::Response& res) {
    res.set_redirect("http://127.0.0.1:" + std::to_string(p2) + "/img");
  });
  const int p1 = first.bind_to_any_port("127.0.0.1");
  std::thread t1([&] { first.listen_after_bind(); });
  std::thread t2([&] { second.listen_after_bind(); });
  while (!first.is_running() || !second.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  const std::string base = "http://127.0.0.1:" + std::to_string(p1);

  ImageFetchOptions o;
  o.allow_urls = true;
  o.timeout_s = 5;
  o.reachable = {"127.0.0.1:" + std::to_string(p1)};
  EXPECT_EQ(image_bytes_from_url(base + "/img", o), "direct");
  try {
    image_bytes_from_url(base + "/redirect", o);
    ADD_FAILURE() << "the redirect to a loopback address was followed";
  } catch (const ApiError& e) {
    EXPECT_EQ(e.code, "image_url_forbidden") << e.what();
  }
  EXPECT_EQ(second_hits.load(), 0);
  // With the second endpoint allowed too, the same redirect is followed.
  o.reachable.push_back("127.0.0.1:" + std::to_string(p2));
  EXPECT_EQ(image_bytes_from_url(base + "/redirect", o), "PNGDATA");
  EXPECT_EQ(second_hits.load(), 1);
  // A proxy from the environment is not used: the check must see the real peer.
  setenv("http_proxy", "http://127.0.0.1:1", 1);
  EXPECT_EQ(image_bytes_from_url(base + "/img", o), "direct");
  unsetenv("http_proxy");
  first.stop();
  second.stop();
  t1.join();
  t2.join();
}

TEST(ServerEngine, StopFilterHoldsBackPartialMatches) {
  StopFilter f({"\n\nQuestion", "END"});
  bool hit = false;
  std::string out = f.push("Hello wor", &hit);
  out += f.push("ld\n", &hit);  // "\n" may start a stop sequence
  EXPECT_EQ(out, "Hello world");
  EXPECT_FALSE(hit);
  out += f.push("\nQues", &hit);
  EXPECT_EQ(out, "Hello world");
  out += f.push("tion: more", &hit);
  EXPECT_TRUE(hit);
  EXPECT_EQ(out, "Hello world");
  EXPECT_EQ(f.finish(), "");

  StopFilter g({"END"});
  out = g.push("a EN", &hit);
  out += g.push("D? no, ENx", &hit);
  EXPECT_TRUE(hit);
  EXPECT_EQ(out, "a ");
  StopFilter h({"zz"});
  out = h.push("abz", &hit);
  out += h.finish();
  EXPECT_EQ(out, "abz");
  StopFilter none({});
  EXPECT_EQ(none.push("x", &hit), "x");
}

TEST(ServerEngine, ResponseKeysSeparateEverythingThatMatters) {
  JobParams a;
  a.task = Task::Query;
  a.text = "q";
  a.max_tokens = 10;
  const Key128 img = hash128("img", 3);
  const Key128 k = response_key(1, img, a);
  EXPECT_EQ(k, response_key(1, img, a));
  JobParams b = a;
  b.text = "q2";
  EXPECT_FALSE(k == response_key(1, img, b));
  b = a;
  b.max_tokens = 11;
  EXPECT_FALSE(k == response_key(1, img, b));
  b = a;
  b.stop = {"x"};
  EXPECT_FALSE(k == response_key(1, img, b));
  EXPECT_FALSE(k == response_key(2, img, a));
  EXPECT_FALSE(k == response_key(1, hash128("imh", 3), a));
  b = a;
  b.temperature = 0.9f;  // not part of the key: only deterministic requests are cached
  EXPECT_FALSE(b.deterministic());
  b.temperature = 0;
  EXPECT_TRUE(b.deterministic());
}

TEST(ServerCache, EvictionPassesOverEntriesStillHeld) {
  LruCache<int> c(100);
  const Key128 k1 = hash128("1", 1), k2 = hash128("2", 1), k3 = hash128("3", 1);
  c.put(k1, std::make_shared<int>(1), 40);
  c.put(k2, std::make_shared<int>(2), 40);
  auto held = c.get(k1);                    // k1 is in use (and now the most recent)
  c.get(k2);                                // k1 is the oldest again, but held
  c.put(k3, std::make_shared<int>(3), 40);  // over budget: evicts k2, not k1
  EXPECT_TRUE(c.get(k1, false));
  EXPECT_FALSE(c.get(k2, false));
  EXPECT_EQ(c.evict_unused(1000), 40u);  // only k3 can go
  EXPECT_EQ(c.stats().entries, 1u);
  held.reset();
  EXPECT_EQ(c.evict_unused(1), 40u);
  EXPECT_EQ(c.stats().entries, 0u);
}

TEST(ServerKvBudget, ReservationsEvictUnusedImagesAndNeverRunOver) {
  LruCache<EncodedImage> images(1000);
  KvBudget kv(&images);
  kv.set_max_bytes(100);
  EXPECT_TRUE(kv.try_reserve(60));
  EXPECT_FALSE(kv.try_reserve(41)) << "60 + 41 > 100";
  EXPECT_TRUE(kv.try_reserve(40));
  EXPECT_EQ(kv.used(), 100u);
  kv.release(60);
  // A cached image in use counts and cannot be evicted; an unused one can.
  const Key128 a = hash128("a", 1), b = hash128("b", 1);
  auto img_a = std::make_shared<EncodedImage>();
  images.put(a, img_a, 30);
  images.put(b, std::make_shared<EncodedImage>(), 25);
  kv.note();
  EXPECT_EQ(kv.used(), 95u);
  EXPECT_TRUE(kv.try_reserve(30)) << "evicts b (25 bytes)";
  EXPECT_FALSE(images.get(b, false));
  EXPECT_TRUE(images.get(a, false));
  EXPECT_EQ(kv.used(), 100u);
  EXPECT_FALSE(kv.try_reserve(1)) << "a is held: nothing left to evict";
  img_a.reset();
  EXPECT_TRUE(kv.try_reserve(1)) << "a is no longer held: evicted";
  EXPECT_FALSE(images.get(a, false));
  EXPECT_EQ(kv.used(), 71u);
  EXPECT_EQ(kv.peak(), 100u);
  kv.release(71);
  EXPECT_EQ(kv.used(), 0u);
}

TEST(ServerCache, LruEvictsByBytesAndCounts) {
  LruCache<int> c(100);
  const Key128 k1 = hash128("1", 1), k2 = hash128("2", 1), k3 = hash128("3", 1);
  EXPECT_TRUE(c.put(k1, std::make_shared<int>(1), 40));
  EXPECT_TRUE(c.put(k2, std::make_shared<int>(2), 40));
  ASSERT_TRUE(c.get(k1));                                // k1 is now the most recent
  EXPECT_TRUE(c.put(k3, std::make_shared<int>(3), 40));  // evicts k2
  EXPECT_FALSE(c.get(k2));
  auto held = c.get(k1);
  ASSERT_TRUE(held);
  EXPECT_EQ(*held, 1);
  EXPECT_FALSE(c.put(hash128("big", 3), std::make_shared<int>(4), 101));
  CacheStats s = c.stats();
  EXPECT_EQ(s.entries, 2u);
  EXPECT_EQ(s.bytes, 80u);
  EXPECT_EQ(s.hits, 2u);
  EXPECT_EQ(s.misses, 1u);
  EXPECT_EQ(s.evictions, 1u);
  c.set_max_bytes(50);
  EXPECT_EQ(c.stats().entries, 1u);
  c.clear();
  EXPECT_EQ(c.stats().entries, 0u);
  EXPECT_EQ(*held, 1);  // values handed out outlive eviction
  Hasher h1, h2;
  h1.add("ab").add("c");
  h2.add("a").add("bc");
  EXPECT_FALSE(h1.finish() == h2.finish()) << "fields are length-prefixed";
}

TEST(ServerMetrics, PrometheusText) {
  Metrics m;
  m.request("/v1/query", 200, 0.3);
  m.request("/v1/query", 400, 0.001);
  m.generation("query", 740, 20, 0.5, 0.01, "stop");
  const std::string t = m.render();
  EXPECT_NE(t.find("moondream_requests_total{endpoint=\"/v1/query\",status=\"200\"} 1"), std::string::npos) << t;
  EXPECT_NE(t.find("moondream_request_duration_seconds_bucket{endpoint=\"/v1/query\",le=\"0.5\"} 2"), std::string::npos)
      << t;
  EXPECT_NE(t.find("moondream_request_duration_seconds_count{endpoint=\"/v1/query\"} 2"), std::string::npos);
  EXPECT_NE(t.find("moondream_generated_tokens_total{task=\"query\"} 20"), std::string::npos);
  EXPECT_NE(t.find("moondream_decode_tokens_per_second 40"), std::string::npos);
  EXPECT_EQ(prom_label("a\"b\\c"), "a\\\"b\\\\c");
}

TEST(ServerProcess, PortOwnerOfAFreePortIsNobody) {
  EXPECT_EQ(find_port_owner(1).pid, 0);
  EXPECT_NE(describe_port_owner(8080, PortOwner{}).find("port 8080 is already in use"), std::string::npos);
  EXPECT_EQ(new_instance_id().size(), 32u);
}

}  // namespace
}  // namespace md::server
