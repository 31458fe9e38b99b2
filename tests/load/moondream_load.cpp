// moondream_load: the load test at any scale against a running server on
// loopback (the CI runs it small through server_load_ref_test).
//   moondream_load --port 8080 --clients 64 --seconds 300 --image a.jpg [--image b.png] [--api-key K]
// Prints the report as JSON; exits 1 if any request failed or hung, or the
// server was not healthy afterwards.
//   moondream_load --table --port 8080 [--clients 8] [--new-images 12] [--max-tokens 100] [--follow-ups N]
// Issue 16's throughput table (docs/BENCHMARKS.md): new 378x378 JPEGs
// captioned by one client, then by N; the N-client answers checked against
// the same requests served alone; follow-up questions on the cached images by
// one client, then by N (--follow-ups questions, 4 per client by default). Run it against a server with image_caching
// on and response_caching off (the check must not be answered from the cache). With --cli BIN --model DIR it adds the
// batch CLI row (one --images run with --batch 8 against one run per image); with --soak-seconds S, a run of
// --soak-clients (64) clients over every task, reporting errors, hangs, 503s,
// peak RSS and the KV memory's peak against performance.kv_cache_mb.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include <vips/vips.h>

#include "load_runner.h"
#include "server/image_input.h"
#include "throughput.h"

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

// A new 378x378 JPEG for every index: smooth colour fields whose phase and
// frequency depend on the index (every image decodes to different pixels).
std::string new_image_jpeg(int index) {
  const int S = 378;
  std::vector<unsigned char> rgb(size_t(S) * S * 3);
  for (int y = 0; y < S; ++y)
    for (int x = 0; x < S; ++x)
      for (int c = 0; c < 3; ++c) {
        const double v = std::sin(0.013 * (index % 7 + 1) * x + 0.021 * (c + 1) * y + 0.7 * index) * 0.5 + 0.5;
        rgb[(size_t(y) * S + x) * 3 + size_t(c)] = (unsigned char)(40 + 180 * v + (x * y + index) % 16);
      }
  VipsImage* im = vips_image_new_from_memory_copy(rgb.data(), rgb.size(), S, S, 3, VIPS_FORMAT_UCHAR);
  void* buf = nullptr;
  size_t len = 0;
  if (!im || vips_jpegsave_buffer(im, &buf, &len, "Q", 90, nullptr) != 0) {
    std::fprintf(stderr, "moondream_load: cannot make a JPEG: %s\n", vips_error_buffer());
    std::exit(2);
  }
  const std::string bytes(static_cast<const char*>(buf), len);
  g_free(buf);
  g_object_unref(im);
  return bytes;
}

std::string new_image_uri(int index) {
  return "data:image/jpeg;base64," + md::server::base64_encode(new_image_jpeg(index));
}

// `count` of those images as JPEG files in `dir` (created): prefix0000.jpg,
// ... from image `first`. Returns their paths.
std::vector<std::filesystem::path> write_new_images(const std::filesystem::path& dir, const char* prefix, int count,
                                                    int first) {
  std::filesystem::create_directories(dir);
  std::vector<std::filesystem::path> paths;
  for (int i = 0; i < count; ++i) {
    char name[48];
    std::snprintf(name, sizeof name, "%s%04d.jpg", prefix, i);
    paths.push_back(dir / name);
    std::ofstream(paths.back(), std::ios::binary) << new_image_jpeg(first + i);
  }
  return paths;
}

struct TableOptions {
  std::string cli, model, quantization = "int8";  // the batch CLI row: --cli BIN --model DIR
  int cli_images = 12;
  double soak_seconds = 0;  // the many-clients row: --soak-seconds S [--soak-clients N]
  int soak_clients = 64;
  int follow_ups = 0;  // N-client follow-up questions (0: 4 per client)
};

// The batch CLI row: `images` new JPEGs captioned (short, greedy, ≤ 32
// tokens) by one `cli caption --images DIR --batch 8` run against one
// `cli caption --image FILE` run per image. Returns (batched, separate)
// images/min; (0, 0) when a run failed.
std::pair<double, double> batch_cli_row(const TableOptions& t) {
  namespace fs = std::filesystem;
  const int images = t.cli_images;
  const fs::path dir = fs::temp_directory_path() / ("moondream_load_cli_" + std::to_string(getpid()));
  fs::remove_all(dir);
  const std::vector<fs::path> files = write_new_images(dir / "images", "cli", images, 9000);
  const std::string common =
      " --model '" + t.model + "' --quantization " + t.quantization + " --length short --max-tokens 32 --temperature 0";
  auto timed = [](const std::string& cmd) {
    const auto t0 = std::chrono::steady_clock::now();
    const int rc = std::system((cmd + " > /dev/null 2>&1").c_str());
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return rc == 0 ? s : -1.0;
  };
  std::fprintf(stderr, "batch CLI: %d images with --batch 8...\n", images);
  const double batched = timed("'" + t.cli + "' caption" + common + " --images '" + (dir / "images").string() +
                               "' --out '" + (dir / "out.jsonl").string() + "' --batch 8");
  std::fprintf(stderr, "batch CLI: the same images, one run each...\n");
  double separate = 0;
  for (const fs::path& f : files) {
    const double s = timed("'" + t.cli + "' caption" + common + " --image '" + f.string() + "'");
    if (s < 0) {
      separate = -1;
      break;
    }
    separate += s;
  }
  fs::remove_all(dir);
  if (batched <= 0 || separate <= 0) return {0, 0};
  return {images * 60.0 / batched, images * 60.0 / separate};
}

// Issue 16's table; returns the exit status (1: an error, or an answer that
// differs from the same request served alone).
int throughput_table(const std::string& host, int port, int clients, int new_images, int max_tokens,
                     const TableOptions& t) {
  using md::load::Job;
  using md::load::JobsReport;
  using md::load::percentile;
  if (VIPS_INIT("moondream_load") != 0) return 2;
  auto health = [&] {
    httplib::Client c(host, port);
    c.set_read_timeout(30, 0);
    auto r = c.Get("/health");
    return r && r->status == 200 ? nlohmann::json::parse(r->body, nullptr, false) : nlohmann::json();
  };
  const nlohmann::json h0 = health();
  if (!h0.is_object()) {
    std::fprintf(stderr, "moondream_load: no healthy server on %s:%d\n", host.c_str(), port);
    return 2;
  }
  if (!h0["cache"].value("enabled", false) || h0["response_cache"].value("enabled", false)) {
    std::fprintf(stderr,
                 "moondream_load: --table needs performance.image_caching on and performance.response_caching off\n");
    return 2;
  }
  auto caption = [&](int image) {
    return Job{"/v1/caption",
               {{"image_url", new_image_uri(image)},
                {"length", "normal"},
                {"stream", true},
                {"settings", {{"temperature", 0}, {"max_tokens", max_tokens}}}}};
  };
  // Round 0: the one-client run; rounds 1+: the N-client run, a new
  // question each time it returns to an image.
  static const char* const kQuestions[] = {"What is in the picture?", "What colours does the picture have?",
                                           "What is on the left?", "What is on the right?", "Describe the background."};
  constexpr int kRounds = int(sizeof(kQuestions) / sizeof(kQuestions[0]));
  auto question = [&](int image, int round) {
    return Job{"/v1/query",
               {{"image_url", new_image_uri(image)},
                {"question", std::string(kQuestions[round % kRounds]) + (round >= kRounds ? " (again)" : "")},
                {"stream", true},
                {"settings", {{"temperature", 0}, {"max_tokens", max_tokens}}}}};
  };
  const int n1 = std::max(2, new_images / 2), nn = new_images;
  std::vector<Job> alone_jobs, many_jobs, q1, q2;
  for (int i = 0; i < n1; ++i) alone_jobs.push_back(caption(i));
  for (int i = 0; i < nn; ++i) many_jobs.push_back(caption(1000 + i));
  for (int i = 0; i < nn; ++i) q1.push_back(question(1000 + i, 0));
  // Enough N-client questions (4 per client by default) that the run is
  // mostly N in flight, not its last few stragglers; consecutive ones about
  // different images, as separate users' follow-ups.
  const int follow_ups = t.follow_ups > 0 ? t.follow_ups : 4 * clients;
  for (int i = 0; i < follow_ups; ++i) q2.push_back(question(1000 + i % nn, 1 + i / nn));

  std::fprintf(stderr, "new images, 1 client (%d images)...\n", n1);
  const JobsReport one = md::load::run_jobs(host, port, alone_jobs, 1);
  std::fprintf(stderr, "new images, %d clients (%d images)...\n", clients, nn);
  const JobsReport many = md::load::run_jobs(host, port, many_jobs, clients);
  const nlohmann::json h1 = health();
  if (h1["cache"].value("entries", 0) < nn) {
    std::fprintf(stderr,
                 "moondream_load: the image cache holds %d of the %d images: raise performance.cache_max_mb or lower "
                 "--new-images\n",
                 h1["cache"].value("entries", 0), nn);
    return 2;
  }
  std::fprintf(stderr, "the same %d requests one at a time (cached images)...\n", nn);
  const JobsReport check = md::load::run_jobs(host, port, many_jobs, 1);
  std::fprintf(stderr, "follow-ups on cached images, 1 client...\n");
  const JobsReport f1 = md::load::run_jobs(host, port, q1, 1);
  std::fprintf(stderr, "follow-ups on cached images, %d clients (%d questions)...\n", clients, follow_ups);
  const JobsReport fn = md::load::run_jobs(host, port, q2, clients);

  int equal = 0;
  for (size_t i = 0; i < many.answers.size(); ++i)
    equal += !many.answers[i].is_null() && many.answers[i] == check.answers[i];
  const double itl1 = percentile(one.gaps_s, 0.5), itln = percentile(many.gaps_s, 0.95);
  std::printf("| what | 1 client | %d clients | ratio |\n|---|---|---|---|\n", clients);
  std::printf("| new 378x378 images, normal captions <= %d tokens: images/min | %.2f | %.2f | %.2fx |\n", max_tokens,
              one.per_minute(), many.per_minute(), many.per_minute() / one.per_minute());
  std::printf("| ... answers equal to the same request alone | | %d of %zu | |\n", equal, many.answers.size());
  std::printf(
      "| inter-token latency: 1 client median, %d clients p95 (while new images prefill), s | %.3f | %.3f | "
      "%.2fx |\n",
      clients, itl1, itln, itl1 > 0 ? itln / itl1 : 0.0);
  std::printf("| time to first piece, median, s | %.2f | %.2f | |\n", percentile(one.first_piece_s, 0.5),
              percentile(many.first_piece_s, 0.5));
  std::printf("| follow-up questions on cached images: answers/min | %.2f | %.2f | %.2fx |\n", f1.per_minute(),
              fn.per_minute(), fn.per_minute() / f1.per_minute());
  std::printf("| ... generated tokens/s in all (decode, with the questions' short prefills) | %.1f | %.1f | %.2fx |\n",
              f1.tokens_per_s(), fn.tokens_per_s(),
              f1.tokens_per_s() > 0 ? fn.tokens_per_s() / f1.tokens_per_s() : 0.0);
  long errors = 0;
  if (!t.cli.empty()) {
    const auto [batched, separate] = batch_cli_row(t);
    if (batched <= 0) {
      std::fprintf(stderr, "moondream_load: a batch CLI run failed\n");
      ++errors;
    }
    std::printf(
        "| batch CLI, %d new images, short captions: images/min (one run per image \\| --batch 8) | %.2f | "
        "%.2f | %.2fx |\n",
        t.cli_images, separate, batched, separate > 0 ? batched / separate : 0.0);
  }
  if (t.soak_seconds > 0) {
    md::load::LoadOptions o;
    o.host = host;
    o.port = port;
    o.clients = t.soak_clients;
    o.seconds = t.soak_seconds;
    o.request_timeout_s = 600;
    for (int i = 0; i < 4; ++i) o.image_uris.push_back(new_image_uri(2000 + i));
    std::fprintf(stderr, "%d clients, mixed tasks, for %.0f s...\n", o.clients, o.seconds);
    const md::load::LoadReport r = md::load::run_load(o);
    const nlohmann::json h = health();
    const double budget = h.is_object() ? h["kv_budget"].value("budget_bytes", 0.0) : 0.0;
    const double kv_peak = h.is_object() ? h["kv_budget"].value("peak_bytes", 0.0) : 0.0;
    std::printf(
        "| %d clients for %.0f s, mixed tasks: answered, 503 + Retry-After, errors, hung | %ld answered, %ld "
        "503s | %ld errors, %ld hung | |\n",
        o.clients, o.seconds, r.completed, r.rejected_503, r.errors, r.hung);
    std::printf("| ... peak RSS, GB; KV in use at its peak, GB, of the budget | %.2f | %.2f of %.2f | |\n",
                r.peak_rss_bytes / 1e9, kv_peak / 1e9, budget / 1e9);
    for (const std::string& e : r.error_samples) std::fprintf(stderr, "soak error: %s\n", e.c_str());
    errors += r.errors + r.hung + (r.healthy_after ? 0 : 1) + (kv_peak > budget ? 1 : 0);
  }
  for (const JobsReport* r : {&one, &many, &check, &f1, &fn}) {
    errors += r->errors;
    for (const std::string& e : r->error_samples) std::fprintf(stderr, "error: %s\n", e.c_str());
  }
  std::printf("errors: %ld\n", errors);
  return errors == 0 && equal == int(many.answers.size()) ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  md::load::LoadOptions o;
  bool table = false;
  int new_images = 12, max_tokens = 100, clients = -1;
  TableOptions t;
  std::string make_images;  // --make-images DIR: write --new-images JPEGs there and exit
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
      clients = std::stoi(next());
    else if (a == "--table")
      table = true;
    else if (a == "--make-images")
      make_images = next();
    else if (a == "--new-images")
      new_images = std::stoi(next());
    else if (a == "--max-tokens")
      max_tokens = std::stoi(next());
    else if (a == "--seconds")
      o.seconds = std::stod(next());
    else if (a == "--timeout")
      o.request_timeout_s = std::stod(next());
    else if (a == "--image")
      o.image_uris.push_back(data_uri(next()));
    else if (a == "--api-key")
      o.api_key = next();
    else if (a == "--cli")
      t.cli = next();
    else if (a == "--model")
      t.model = next();
    else if (a == "--quantization")
      t.quantization = next();
    else if (a == "--cli-images")
      t.cli_images = std::stoi(next());
    else if (a == "--soak-seconds")
      t.soak_seconds = std::stod(next());
    else if (a == "--soak-clients")
      t.soak_clients = std::stoi(next());
    else if (a == "--follow-ups")
      t.follow_ups = std::stoi(next());
    else {
      std::fprintf(stderr,
                   "usage: moondream_load [--host H] [--port P] [--clients N] [--seconds S] [--timeout S] --image "
                   "FILE... [--api-key K]\n"
                   "       moondream_load --table [--host H] [--port P] [--clients N] [--new-images N] "
                   "[--max-tokens N] [--follow-ups N]\n"
                   "                      [--cli BIN --model DIR [--quantization Q] [--cli-images N]]\n"
                   "                      [--soak-seconds S [--soak-clients N]]\n"
                   "       moondream_load --make-images DIR [--new-images N]\n");
      return 2;
    }
  }
  if (o.host != "127.0.0.1" && o.host != "localhost" && o.host != "::1") {
    std::fprintf(stderr, "moondream_load: loopback only\n");
    return 2;
  }
  if (!make_images.empty()) {
    // The same images as files (the batch CLI's benchmark).
    if (VIPS_INIT("moondream_load") != 0) return 2;
    write_new_images(make_images, "new", new_images, 5000);
    return 0;
  }
  if (!t.cli.empty() && t.model.empty()) {
    std::fprintf(stderr, "moondream_load: --cli needs --model DIR (the server's model)\n");
    return 2;
  }
  if (table) return throughput_table(o.host, o.port, clients > 0 ? clients : 8, new_images, max_tokens, t);
  if (clients > 0) o.clients = clients;
  if (o.image_uris.empty()) {
    std::fprintf(stderr, "moondream_load: give at least one --image\n");
    return 2;
  }
  const md::load::LoadReport r = md::load::run_load(o);
  std::printf("%s\n", r.to_json().dump(2).c_str());
  return r.errors == 0 && r.healthy_after ? 0 : 1;
}
