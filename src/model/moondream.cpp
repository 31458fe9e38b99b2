#include "model/moondream.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <limits>

#include "model/tasks.h"
#include "model/vision.h"
#include "tensor/buffer_pool.h"
#include "tensor/error.h"
#include "tensor/parallel.h"

namespace md {
namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

bool parse_caption_length(const std::string& s, CaptionLength* out) {
  if (s == "short")
    *out = CaptionLength::Short;
  else if (s == "normal")
    *out = CaptionLength::Normal;
  else if (s == "long")
    *out = CaptionLength::Long;
  else
    return false;
  return true;
}

std::unique_ptr<Moondream> Moondream::load(const std::string& model_dir, const LoadOptions& opts) {
  if (!std::filesystem::is_directory(model_dir)) throw Error("model: '" + model_dir + "' is not a directory");
  set_num_threads(opts.threads);
  std::unique_ptr<Moondream> m(new Moondream());
  m->cfg_ = load_model_config(model_dir, opts.revision);
  const RevisionProfile& rev = m->cfg_.revision;
  if (!opts.tokenizer_path.empty()) {
    m->tokenizer_path_ = opts.tokenizer_path;
  } else if (!rev.tokenizer_repo.empty()) {
    throw Error("model: " + model_dir + " is revision " + rev.name + " (" + rev.detected_by + "): it needs the " +
                rev.tokenizer_repo + " tokenizer, not its bundled tokenizer.json (a stale GPT-2 one); give its path");
  } else {
    m->tokenizer_path_ = (std::filesystem::path(model_dir) / "tokenizer.json").string();
  }
  m->tokenizer_ = Tokenizer::load(m->tokenizer_path_);
  m->weights_ = load_weights(model_dir, m->cfg_, opts.quantization);
  m->kv_format_ = opts.kv_cache;
  m->text_ = std::make_unique<TextModel>(*m->weights_, m->cfg_.text);
  m->region_ = std::make_unique<RegionModel>(*m->weights_, m->cfg_.region);
  // KV memory for image prefixes (287 MB each at full size) touched in the
  // background from now on: a first touch would otherwise add ~0.6-0.9 s to
  // a new image's prefill on the VMs measured (see tensor/buffer_pool.h).
  // Two: the image being encoded and the last one, still cached for
  // follow-up questions; caches evicted later return their memory to the
  // pool for the next image.
  if (opts.reserve_kv_images > 0) {
    pool_reserve_in_background(KVCache::cache_bytes(m->cfg_.text, m->cfg_.text.prefix_attn, m->kv_format_),
                               opts.reserve_kv_images);
  }
  return m;
}

CropParams Moondream::crop_params() const {
  CropParams p;
  p.crop_size = cfg_.vision.crop_size;
  p.patch_size = cfg_.vision.enc_patch_size;
  p.overlap_margin = cfg_.vision.overlap_margin;
  p.max_crops = cfg_.vision.max_crops;
  return p;
}

PooledVector<float> Moondream::vision_features(const Crops& crops) const {
  const VisionConfig& v = cfg_.vision;
  const int S = crops.crop_size, grid = S / v.enc_patch_size;
  const size_t crop_px = size_t(S) * S * 3, per_crop = size_t(grid) * grid * v.enc_dim;
  // With a 1×1 tiling the local crop is the global crop resized to the same
  // size: pixel-identical, so one encoder pass serves both.
  int n = crops.count;
  const bool duplicate = crops.count == 2 && std::memcmp(crops.crop(0), crops.crop(1), crop_px) == 0;
  if (duplicate) n = 1;
  PooledVector<float> chw(size_t(n) * crop_px);
  for (int i = 0; i < n; ++i) normalize_crop(crops.crop(i), S, chw.data() + i * crop_px);
  PooledVector<float> features = run_vision_encoder(*weights_, v, chw.data(), n);
  if (duplicate) {
    features.resize(2 * per_crop);
    std::copy(features.begin(), features.begin() + per_crop, features.begin() + per_crop);
  }
  return features;
}

PooledVector<float> Moondream::image_embeddings(std::span<const float> features, Tiling tiling) const {
  return project_features(*weights_, cfg_.vision, features.data(), tiling);
}

KVCache Moondream::prefill_prefix(std::span<const float> embeddings) const {
  const int D = cfg_.text.dim, n_img = int(embeddings.size() / D);
  const int prefix = 1 + n_img;
  PooledVector<float> x(size_t(prefix) * D);
  const int bos = cfg_.tokenizer.bos_id;
  text_->embed(&bos, 1, x.data());
  std::copy(embeddings.begin(), embeddings.end(), x.begin() + D);
  KVCache cache(cfg_.text, prefix, kv_format_);
  text_->forward(x.data(), prefix, cache);
  return cache;
}

EncodedImage Moondream::encode_crops(const Crops& crops) const {
  EncodedImage out;
  out.tiling = crops.tiling;
  out.crop_count = crops.count;
  auto t0 = std::chrono::steady_clock::now();
  const PooledVector<float> features = vision_features(crops);
  const PooledVector<float> emb = image_embeddings(features, crops.tiling);
  out.timings.vision_s = seconds_since(t0);
  t0 = std::chrono::steady_clock::now();
  out.cache = prefill_prefix(emb);
  out.timings.prefill_s = seconds_since(t0);
  return out;
}

EncodedImage Moondream::encode_image(const RgbImage& image) const {
  const Crops crops = make_crops(image, crop_params());
  EncodedImage out = encode_crops(crops);
  out.width = image.width;
  out.height = image.height;
  return out;
}

// The prompts and loops live in tasks.cpp; these are the typed shortcuts.
namespace {

TextResult text_result(TaskResult&& r) {
  TextResult t;
  t.text = std::move(r.text);
  t.tokens = std::move(r.tokens);
  t.prompt_tokens = r.prompt_tokens();
  t.finish_reason = std::move(r.finish_reason);
  t.timings = r.timings;
  return t;
}

RegionResult region_result(TaskResult&& r) {
  RegionResult g;
  g.objects = std::move(r.objects);
  g.points = std::move(r.points);
  g.prompt_tokens = r.prompt_tokens();
  g.timings = r.timings;
  return g;
}

TaskRequest text_request(TaskKind kind, const EncodedImage& img, const TextOptions& opts) {
  TaskRequest rq;
  rq.kind = kind;
  rq.image = &img;
  rq.max_tokens = opts.max_tokens;
  rq.sampling = opts.sampling;
  return rq;
}

TaskRequest region_request(TaskKind kind, const EncodedImage& img, const std::string& object, int max_objects) {
  TaskRequest rq;
  rq.kind = kind;
  rq.image = &img;
  rq.text = object;
  rq.max_objects = max_objects;
  return rq;
}

}  // namespace

std::vector<int> Moondream::caption_prompt(CaptionLength length) const {
  TaskRequest rq;
  rq.kind = TaskKind::kCaption;
  rq.length = length;
  return prepare_task(*this, rq, true);
}

TextResult Moondream::caption(const EncodedImage& img, CaptionLength length, const TextOptions& opts) const {
  TaskRequest rq = text_request(TaskKind::kCaption, img, opts);
  rq.length = length;
  return text_result(run_task(*this, rq, {opts.on_chunk, nullptr}));
}

TextResult Moondream::query(const EncodedImage& img, const std::string& question, const TextOptions& opts) const {
  TaskRequest rq = text_request(TaskKind::kQuery, img, opts);
  rq.text = question;
  return text_result(run_task(*this, rq, {opts.on_chunk, nullptr}));
}

TextResult Moondream::generate(const EncodedImage& img, const std::vector<int>& prompt, const TextOptions& opts) const {
  return text_result(
      generate_from_prompt(*this, &img, prompt, text_request(TaskKind::kQuery, img, opts), {opts.on_chunk, nullptr}));
}

RegionResult Moondream::detect(const EncodedImage& img, const std::string& object, int max_objects) const {
  return region_result(run_task(*this, region_request(TaskKind::kDetect, img, object, max_objects)));
}

RegionResult Moondream::point(const EncodedImage& img, const std::string& object, int max_objects) const {
  return region_result(run_task(*this, region_request(TaskKind::kPoint, img, object, max_objects)));
}

}  // namespace md
