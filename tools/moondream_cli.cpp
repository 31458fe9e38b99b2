// moondream: run one Moondream2 task on one image from the command line.
//   moondream caption|query|detect|point|gaze --model DIR [--image PATH] [options]
// Text streams to stdout as it is generated; --json prints one JSON object.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <random>
#include <string>

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

int run(const Args& a) {
  if (a.max_tokens < 1) throw md::Error("--max-tokens must be at least 1");
  if (a.max_objects < 1) throw md::Error("--max-objects must be at least 1");
  if (!(a.temperature >= 0.0f)) throw md::Error("--temperature must be >= 0");
  if (!(a.top_p > 0.0f && a.top_p <= 1.0f)) throw md::Error("--top-p must be in (0, 1]");
  md::CaptionLength length;
  if (!md::parse_caption_length(a.length, &length)) throw md::Error("--length must be short, normal or long");
  if (a.task == "query" && a.question.empty()) throw md::Error("query needs --question");
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
    throw md::Error("--kv-cache must be bf16 or f32, got '" + a.kv_cache + "'");
  if (!md::parse_revision_choice(a.revision_profile, &lo.revision))
    throw md::Error("--revision-profile must be auto, 2025-01-09 or 2025-06-21");
  // A directory is used as is; a hub repo id ("vikhyatk/moondream2") is
  // found in, or downloaded to, the Hugging Face cache. So is the tokenizer
  // a 2025-06-21 checkpoint needs (moondream/starmie-v1).
  const std::string dir = md::resolve_model(a.model, a.revision);
  lo.tokenizer_path = md::tokenizer_for_model(dir, a.tokenizer, a.revision_profile);
  auto model = md::Moondream::load(dir, lo);
  // Bad options fail before the image is read.
  md::prepare_task(*model, rq, !a.image.empty());

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
  total.prefill_s += r.timings.prefill_s;
  total.decode_s = r.timings.decode_s;
  total.decode_tokens = r.timings.decode_tokens;

  nlohmann::json out;
  out["prompt_ids"] = r.prompt_ids;
  if (text_task) {
    if (!a.json) {
      std::fputc('\n', stdout);
      return 0;
    }
    out[a.task == "caption" ? "caption" : "answer"] = r.text;
    out["tokens"] = r.tokens;
    out["finish_reason"] = r.finish_reason;
    if (r.reasoning) {
      out["reasoning"] = md::reasoning_json(*r.reasoning);
      out["reasoning_tokens"] = r.reasoning->tokens;
    }
  } else if (a.task == "gaze") {
    out["gaze"] = r.gaze ? nlohmann::json{{"x", r.gaze->x}, {"y", r.gaze->y}} : nlohmann::json(nullptr);
    if (!a.json) {
      std::cout << nlohmann::json{{"gaze", out["gaze"]}}.dump() << "\n";
      return 0;
    }
  } else {
    if (a.task == "detect") {
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
    if (!a.json) {
      std::cout << out[a.task == "detect" ? "objects" : "points"].dump() << "\n";
      return 0;
    }
  }
  out["timings"] = timings_json(total);
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
    if (t != "query") image->required();
    sub->add_option("--threads", a.threads, "Threads (default: all cores)");
    sub->add_option("--quantization", a.quantization,
                    "Text-model weights: none (as stored), int8 or q4 (quantised at load)");
    sub->add_option("--kv-cache", a.kv_cache, "KV cache rows: bf16 (default, half the bytes) or f32 (exact fp32)");
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
