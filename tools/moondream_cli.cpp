// moondream: run one Moondream2 task on one image from the command line.
//   moondream caption|query|detect|point|gaze --model DIR [--image PATH] [options]
// Text streams to stdout as it is generated; --json prints one JSON object.
//   moondream caption|... --model DIR --images DIR|GLOB|@list.txt --out results.jsonl [--batch N]
// Many images through the batching engine (model/decode_batcher.h): one JSON
// line per image, appended as each finishes; a rerun skips the images the
// file already answers.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <glob.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>

#include "model/decode_batcher.h"
#include "model/image.h"
#include "model/moondream.h"
#include "model/tasks.h"
#include "server/hub.h"
#include "tensor/error.h"

namespace {

struct Args {
  std::string task;
  std::string model;
  std::string revision = "2025-06-21";  // the hub's current default; pin another with --revision
  std::string tokenizer;
  std::string revision_profile = "auto";
  std::string image;
  std::string images;  // batch: DIR, GLOB or @list.txt
  std::string out;     // batch: the JSON-lines file
  int batch = 8;       // batch: images in flight at once
  std::string length = "normal";
  std::string question;
  std::string object;
  bool reasoning = false;
  std::vector<std::string> spatial_refs;  // "X,Y" or "X1,Y1,X2,Y2"
  std::string eye;                        // gaze: "X,Y"
  int max_tokens = 768;
  int max_objects = 50;
  float temperature = 0.5f;
  float top_p = 0.3f;
  long long seed = -1;
  int threads = 0;
  std::string quantization = "none";
  std::string kv_cache = "bf16";
  bool json = false;
};

nlohmann::json timings_json(const md::Timings& t) {
  return {{"decode_image_s", t.decode_image_s},
          {"vision_s", t.vision_s},
          {"prefill_s", t.prefill_s},
          {"decode_s", t.decode_s},
          {"decode_tokens_per_s", t.decode_tokens_per_s()}};
}

// A task's result as the CLI prints it (--json, and each line of a batch).
nlohmann::json result_json(const std::string& task, const md::TaskResult& r) {
  nlohmann::json out;
  out["prompt_ids"] = r.prompt_ids;
  if (task == "caption" || task == "query") {
    out[task == "caption" ? "caption" : "answer"] = r.text;
    out["tokens"] = r.tokens;
    out["finish_reason"] = r.finish_reason;
    if (r.reasoning) {
      out["reasoning"] = md::reasoning_json(*r.reasoning);
      out["reasoning_tokens"] = r.reasoning->tokens;
    }
  } else if (task == "gaze") {
    out["gaze"] = r.gaze ? nlohmann::json{{"x", r.gaze->x}, {"y", r.gaze->y}} : nlohmann::json(nullptr);
  } else {
    if (task == "detect") {
      nlohmann::json objs = nlohmann::json::array();
      for (const auto& o : r.objects)
        objs.push_back({{"x_min", o.x_min}, {"y_min", o.y_min}, {"x_max", o.x_max}, {"y_max", o.y_max}});
      out["objects"] = objs;
    } else {
      nlohmann::json pts = nlohmann::json::array();
      for (const auto& p : r.points) pts.push_back({{"x", p.x}, {"y", p.y}});
      out["points"] = pts;
    }
    out["tokens"] = nlohmann::json::array();
  }
  return out;
}

// The images of --images: a directory's JPEG/PNG/WebP files, a glob, or
// @file with one path per line (blank lines and # comments skipped); sorted
// (a list file: in its order), duplicates dropped.
std::vector<std::string> batch_items(const std::string& spec) {
  std::vector<std::string> items;
  std::error_code ec;
  if (!spec.empty() && spec[0] == '@') {
    std::ifstream in(spec.substr(1));
    if (!in) throw md::Error("--images: cannot read the list " + spec.substr(1));
    for (std::string line; std::getline(in, line);) {
      while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
      if (!line.empty() && line[0] != '#') items.push_back(line);
    }
  } else if (std::filesystem::is_directory(spec, ec)) {
    for (const auto& e : std::filesystem::directory_iterator(spec)) {
      std::string ext = e.path().extension().string();
      for (char& c : ext) c = char(std::tolower(static_cast<unsigned char>(c)));
      if (e.is_regular_file() && (ext == ".jpg" || ext == ".jpeg" || ext == ".png" || ext == ".webp"))
        items.push_back(e.path().string());
    }
    std::sort(items.begin(), items.end());
  } else {
    glob_t g{};
    const int rc = glob(spec.c_str(), 0, nullptr, &g);
    if (rc == 0)
      for (size_t i = 0; i < g.gl_pathc; ++i) items.emplace_back(g.gl_pathv[i]);
    globfree(&g);
    if (rc != 0 && rc != GLOB_NOMATCH) throw md::Error("--images: cannot expand " + spec);
  }
  std::vector<std::string> unique;
  std::set<std::string> seen;
  for (std::string& i : items)
    if (seen.insert(i).second) unique.push_back(std::move(i));
  if (unique.empty()) throw md::Error("--images " + spec + ": no images");
  return unique;
}

// Batch mode: every image of --images through one DecodeBatcher, --batch at
// a time, each result appended to --out as a JSON line the moment it is done.
int run_batch(const Args& a, const md::Moondream& model, const md::TaskRequest& base) {
  const std::vector<std::string> all = batch_items(a.images);
  // Resumable: images the file already answers (a line without "error") are skipped.
  std::set<std::string> done;
  {
    std::ifstream in(a.out);
    for (std::string line; std::getline(in, line);) {
      const nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
      if (j.is_object() && j.contains("image") && j["image"].is_string() && !j.contains("error"))
        done.insert(j["image"].get<std::string>());
    }
  }
  std::vector<std::string> todo;
  for (const std::string& i : all)
    if (!done.count(i)) todo.push_back(i);
  std::FILE* out = std::fopen(a.out.c_str(), "a");
  if (!out) throw md::Error("--out: cannot append to " + a.out);
  const bool bar = isatty(fileno(stderr)) != 0;
  std::fprintf(stderr, "moondream: %zu images, %zu already in %s, %zu to do\n", all.size(), all.size() - todo.size(),
               a.out.c_str(), todo.size());

  // (--batch is checked to 1..kMaxBatchRows by the option parser.)
  md::DecodeBatcher batcher(model.text(), a.batch);
  std::mutex m;
  std::atomic<size_t> next{0};
  size_t finished = 0, failed = 0;
  const auto t0 = std::chrono::steady_clock::now();
  auto progress = [&] {  // with m held
    if (!bar) return;
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double rate = s > 0 ? double(finished) / s : 0;
    const int width = 30, fill = todo.empty() ? width : int(width * finished / todo.size());
    std::fprintf(stderr, "\r[%s%s] %zu/%zu  %.2f images/s  ETA %.0f s  %zu failed   ",
                 std::string(size_t(fill), '#').c_str(), std::string(size_t(width - fill), '.').c_str(), finished,
                 todo.size(), rate, rate > 0 ? double(todo.size() - finished) / rate : 0.0, failed);
    std::fflush(stderr);
  };
  std::vector<std::thread> workers;
  for (int w = 0; w < a.batch; ++w) {
    workers.emplace_back([&] {
      for (size_t i = next++; i < todo.size(); i = next++) {
        nlohmann::json line;
        line["image"] = todo[i];
        try {
          const md::RgbImage img = md::load_image_file(todo[i]);
          md::EncodedImage enc;
          batcher.run([&] { enc = model.encode_image(img); });
          md::TaskRequest rq = base;
          rq.image = &enc;
          const md::TaskResult r = md::run_task(model, rq, {}, &batcher);
          line.update(result_json(a.task, r));
          line.erase("prompt_ids");
        } catch (const std::exception& e) {
          line = {{"image", todo[i]}, {"error", e.what()}};
        }
        const std::string text = line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
        std::lock_guard<std::mutex> lock(m);
        std::fwrite(text.data(), 1, text.size(), out);
        std::fflush(out);
        ++finished;
        failed += line.contains("error");
        progress();
      }
    });
  }
  for (std::thread& t : workers) t.join();
  std::fclose(out);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (bar) std::fputc('\n', stderr);
  std::fprintf(stderr, "moondream: %zu images in %.1f s (%.2f images/min), %zu failed; results in %s\n", finished, s,
               s > 0 ? double(finished) * 60.0 / s : 0.0, failed, a.out.c_str());
  return failed == 0 ? 0 : 1;
}

int run(const Args& a) {
  if (a.max_tokens < 1) throw md::Error("--max-tokens must be at least 1");
  if (a.max_objects < 1) throw md::Error("--max-objects must be at least 1");
  if (!(a.temperature >= 0.0f)) throw md::Error("--temperature must be >= 0");
  if (!(a.top_p > 0.0f && a.top_p <= 1.0f)) throw md::Error("--top-p must be in (0, 1]");
  md::CaptionLength length;
  if (!md::parse_caption_length(a.length, &length)) throw md::Error("--length must be short, normal or long");
  if (a.task == "query" && a.question.empty()) throw md::Error("query needs --question");
  if (a.task != "query" && a.image.empty() && a.images.empty()) throw md::Error(a.task + " needs --image or --images");
  if ((a.task == "detect" || a.task == "point") && a.object.empty()) throw md::Error(a.task + " needs --object");
  auto numbers = [](const std::string& s, const std::string& what) {
    std::vector<double> v;
    size_t i = 0;
    while (i <= s.size()) {
      const size_t j = std::min(s.find(',', i), s.size());
      try {
        size_t used = 0;
        v.push_back(std::stod(s.substr(i, j - i), &used));
        if (used != j - i) throw std::invalid_argument("trailing");
      } catch (const std::exception&) {
        throw md::Error(what + " must be numbers separated by commas, got '" + s + "'");
      }
      i = j + 1;
    }
    return v;
  };

  md::TaskRequest rq;
  rq.kind = a.task == "caption"  ? md::TaskKind::kCaption
            : a.task == "query"  ? md::TaskKind::kQuery
            : a.task == "detect" ? md::TaskKind::kDetect
            : a.task == "point"  ? md::TaskKind::kPoint
                                 : md::TaskKind::kGaze;
  rq.length = length;
  rq.text = a.task == "query" ? a.question : a.object;
  rq.reasoning = a.reasoning;
  for (const std::string& r : a.spatial_refs) {
    rq.spatial_refs.push_back(numbers(r, "--spatial-ref"));
    md::validate_spatial_ref(rq.spatial_refs.back(), "--spatial-ref " + r);
  }
  if (a.task == "gaze") {
    const std::vector<double> e = numbers(a.eye, "--eye");
    if (e.size() != 2) throw md::Error("--eye must be X,Y");
    rq.eye_x = e[0];
    rq.eye_y = e[1];
  }
  rq.max_tokens = a.max_tokens;
  rq.max_objects = a.max_objects;
  rq.sampling.temperature = a.temperature;
  rq.sampling.top_p = a.top_p;
  rq.sampling.seed = a.seed >= 0 ? uint64_t(a.seed) : std::random_device{}();

  md::LoadOptions lo;
  lo.threads = a.threads;
  if (!md::parse_quantization(a.quantization, &lo.quantization))
    throw md::Error("--quantization must be none, int8 or q4");
  if (!md::parse_kv_format(a.kv_cache, &lo.kv_cache))
    throw md::Error("--kv-cache must be bf16, f32 or int8, got '" + a.kv_cache + "'");
  if (!md::parse_revision_choice(a.revision_profile, &lo.revision))
    throw md::Error("--revision-profile must be auto, 2025-01-09 or 2025-06-21");
  // A directory is used as is; a hub repo id ("vikhyatk/moondream2") is
  // found in, or downloaded to, the Hugging Face cache. So is the tokenizer
  // a 2025-06-21 checkpoint needs (moondream/starmie-v1).
  const std::string dir = md::resolve_model(a.model, a.revision);
  lo.tokenizer_path = md::tokenizer_for_model(dir, a.tokenizer, a.revision_profile);
  auto model = md::Moondream::load(dir, lo);
  // Bad options fail before the image is read.
  md::prepare_task(*model, rq, !a.image.empty() || !a.images.empty());
  if (!a.images.empty()) return run_batch(a, *model, rq);

  md::Timings total;
  std::optional<md::EncodedImage> enc;
  if (!a.image.empty()) {
    auto t0 = std::chrono::steady_clock::now();
    const md::RgbImage img = md::load_image_file(a.image);
    const double decode_image_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    enc = model->encode_image(img);
    enc->timings.decode_image_s = decode_image_s;
    total = enc->timings;
    rq.image = &*enc;
  }

  const bool text_task = a.task == "caption" || a.task == "query";
  md::TaskCallbacks cb;
  if (!a.json && text_task) {
    cb.on_chunk = [](const std::string& chunk) {
      std::fwrite(chunk.data(), 1, chunk.size(), stdout);
      std::fflush(stdout);
      return true;
    };
    cb.on_reasoning = [](const md::Reasoning& r) {
      std::fprintf(stdout, "[reasoning] %s\n", r.text.c_str());
      std::fflush(stdout);
    };
  }
  const md::TaskResult r = md::run_task(*model, rq, cb);
  if (!a.json && text_task) {
    std::fputc('\n', stdout);
    return 0;
  }
  total.prefill_s += r.timings.prefill_s;
  total.decode_s = r.timings.decode_s;
  total.decode_tokens = r.timings.decode_tokens;

  nlohmann::json out = result_json(a.task, r);
  out["timings"] = timings_json(total);
  if (!a.json) {
    // Region tasks print their results alone.
    if (a.task == "gaze")
      std::cout << nlohmann::json{{"gaze", out["gaze"]}}.dump() << "\n";
    else
      std::cout << out[a.task == "detect" ? "objects" : "points"].dump() << "\n";
    return 0;
  }
  // Random or truncated generations may end mid-character: replace invalid
  // UTF-8 rather than fail.
  std::cout << out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Moondream2 on the CPU: caption, query, detect or point on one image"};
  app.require_subcommand(1, 1);
  Args a;
  for (const char* task : {"caption", "query", "detect", "point", "gaze"}) {
    CLI::App* sub = app.add_subcommand(task, std::string(task) + " the image");
    sub->add_option("--model", a.model,
                    "Model directory (config.json, model.safetensors, tokenizer.json) or hub repo id")
        ->required();
    sub->add_option("--revision", a.revision, "Hub revision when --model is a repo id (default 2025-06-21)");
    sub->add_option("--tokenizer", a.tokenizer,
                    "tokenizer.json file, its directory or hub repo id (default: what the revision needs)");
    sub->add_option("--revision-profile", a.revision_profile, "auto (default), 2025-01-09 or 2025-06-21");
    const std::string t = task;
    auto* image = sub->add_option("--image", a.image, "Image file (JPEG, PNG or WebP)");
    auto* images = sub->add_option("--images", a.images,
                                   "Many images: a directory, a glob (quoted) or @list.txt (batch mode, needs --out)");
    images->excludes(image);
    auto* out = sub->add_option("--out", a.out,
                                "Batch mode: append one JSON line per image here (reruns skip "
                                "images already in it)");
    images->needs(out);
    out->needs(images);
    sub->add_option("--batch", a.batch,
                    "Batch mode: images in flight at once, their decode steps batched (1-8, "
                    "default 8)")
        ->check(CLI::Range(1, md::TextModel::kMaxBatchRows));
    sub->add_option("--threads", a.threads, "Threads (default: all cores)");
    sub->add_option("--quantization", a.quantization,
                    "Text-model weights: none (as stored), int8 or q4 (quantised at load)");
    sub->add_option("--kv-cache", a.kv_cache,
                    "KV cache rows: bf16 (default, half the bytes), f32 (exact fp32) or int8 (a quarter)");
    sub->add_flag("--json", a.json, "Print one JSON object instead of streaming text");
    if (t == "caption") sub->add_option("--length", a.length, "short, normal or long");
    if (t == "query") sub->add_flag("--reasoning", a.reasoning, "Grounded reasoning before the answer (2025-06-21)");
    if (t == "query" || t == "point")
      sub->add_option("--spatial-ref", a.spatial_refs,
                      "A point X,Y or a box X1,Y1,X2,Y2 in [0, 1] (repeatable; 2025-06-21)");
    if (t == "gaze") sub->add_option("--eye", a.eye, "The eye (or face centre) X,Y in [0, 1]")->required();
    if (t == "query") sub->add_option("--question", a.question, "The question")->required();
    if (t == "detect" || t == "point") {
      sub->add_option("--object", a.object, "What to find")->required();
      sub->add_option("--max-objects", a.max_objects, "At most this many results (default 50)");
    }
    if (t == "caption" || t == "query") {
      sub->add_option("--max-tokens", a.max_tokens, "At most this many tokens (default 768)");
      sub->add_option("--temperature", a.temperature, "0 = greedy (default 0.5)");
      sub->add_option("--top-p", a.top_p, "Nucleus mass (default 0.3)");
      sub->add_option("--seed", a.seed, "Sampling seed (default: random)");
    }
    sub->callback([&a, t] { a.task = t; });
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);
    std::fprintf(stderr, "moondream: %s\n", e.what());
    return 2;
  }
  try {
    return run(a);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moondream: error: %s\n", e.what());
    return 1;
  }
}
