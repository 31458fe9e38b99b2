#include "model/moondream.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <limits>

#include "model/vision.h"
#include "tensor/buffer_pool.h"
#include "tensor/error.h"
#include "tensor/parallel.h"

namespace md {
namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

std::vector<int> concat(std::initializer_list<const std::vector<int>*> parts) {
  std::vector<int> out;
  for (const auto* p : parts) out.insert(out.end(), p->begin(), p->end());
  return out;
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
  m->text_ = std::make_unique<TextModel>(*m->weights_, m->cfg_.text);
  m->region_ = std::make_unique<RegionModel>(*m->weights_, m->cfg_.region);
  // KV memory for image prefixes (287 MB each at full size) touched in the
  // background from now on: a first touch would otherwise add ~0.6-0.9 s to
  // a new image's prefill on the VMs measured (see tensor/buffer_pool.h).
  // Two: the image being encoded and the last one, still cached for
  // follow-up questions; caches evicted later return their memory to the
  // pool for the next image.
  if (opts.reserve_kv_images > 0) {
    pool_reserve_in_background(KVCache::layer_bytes(m->cfg_.text, m->cfg_.text.prefix_attn),
                               2 * m->cfg_.text.n_layers * opts.reserve_kv_images);
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
  KVCache cache(cfg_.text, prefix);
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

std::vector<int> Moondream::caption_prompt(CaptionLength length) const {
  const TokenizerConfig& t = cfg_.tokenizer;
  switch (length) {
    case CaptionLength::Short: return t.caption_short;
    case CaptionLength::Long: return t.caption_long;
    default: return t.caption_normal;
  }
}

std::vector<int> Moondream::query_prompt(const std::string& question) const {
  const RevisionProfile& rev = cfg_.revision;
  const std::vector<int32_t> q = tokenizer_.encode(rev.question_leading_space ? " " + question : question);
  const std::vector<int> qi(q.begin(), q.end());
  std::vector<int> p = concat({&cfg_.tokenizer.query_prefix, &qi, &cfg_.tokenizer.query_suffix});
  // Starmie era: the answer marker follows the suffix (which is itself the
  // answer marker: it really is there twice, contract 2025-06-21 section 2).
  if (rev.family == TokenizerFamily::kStarmie) p.push_back(cfg_.tokenizer.answer_id);
  return p;
}

std::vector<int> Moondream::detect_prompt(const std::string& object) const {
  const std::vector<int32_t> o = tokenizer_.encode(" " + object);
  const std::vector<int> oi(o.begin(), o.end());
  return concat({&cfg_.tokenizer.detect_prefix, &oi, &cfg_.tokenizer.detect_suffix});
}

std::vector<int> Moondream::point_prompt(const std::string& object) const {
  const std::vector<int32_t> o = tokenizer_.encode(" " + object);
  const std::vector<int> oi(o.begin(), o.end());
  return concat({&cfg_.tokenizer.point_prefix, &oi, &cfg_.tokenizer.point_suffix});
}

TextResult Moondream::caption(const EncodedImage& img, CaptionLength length, const TextOptions& opts) const {
  return generate(img, caption_prompt(length), opts);
}

TextResult Moondream::query(const EncodedImage& img, const std::string& question, const TextOptions& opts) const {
  return generate(img, query_prompt(question), opts);
}

TextResult Moondream::generate(const EncodedImage& img, const std::vector<int>& prompt, const TextOptions& opts) const {
  if (prompt.empty()) throw Error("empty prompt");
  if (opts.max_tokens < 0) throw Error("max_tokens must not be negative");
  const int D = cfg_.text.dim, V = cfg_.text.vocab_size;
  const int capacity = std::min(cfg_.text.max_context, img.cache.length + int(prompt.size()) + opts.max_tokens);
  if (img.cache.length + int(prompt.size()) > cfg_.text.max_context)
    throw Error("prompt too long: " + std::to_string(prompt.size()) + " tokens do not fit the context of " +
                std::to_string(cfg_.text.max_context));
  KVCache cache = KVCache::extending(img.cache, capacity);

  TextResult res;
  res.prompt_tokens = int(prompt.size());
  auto t0 = std::chrono::steady_clock::now();
  std::vector<float> x(prompt.size() * D);
  text_->embed(prompt.data(), int(prompt.size()), x.data());
  PooledVector<float> hidden = text_->forward(x.data(), int(prompt.size()), cache);
  std::vector<float> logits = text_->logits(hidden.data() + (prompt.size() - 1) * D);
  Sampler sampler(opts.sampling);
  int next = sampler.next(logits.data(), V);
  res.timings.prefill_s = seconds_since(t0);

  t0 = std::chrono::steady_clock::now();
  TextStreamer streamer(tokenizer_);
  res.finish_reason = "stop";
  for (;;) {
    if (next == cfg_.tokenizer.eos_id) break;
    if (int(res.tokens.size()) >= opts.max_tokens) {
      res.finish_reason = "length";
      break;
    }
    res.tokens.push_back(next);
    const std::string chunk = streamer.push(next);
    if (!chunk.empty() && opts.on_chunk && !opts.on_chunk(chunk)) {
      res.finish_reason = "cancelled";
      break;
    }
    // The last allowed token needs no forward pass: its successor is never used.
    if (int(res.tokens.size()) >= opts.max_tokens || cache.length >= cache.capacity) {
      res.finish_reason = "length";
      break;
    }
    text_->embed(&next, 1, x.data());
    hidden = text_->forward(x.data(), 1, cache);
    logits = text_->logits(hidden.data());
    // Starmie era: after the first token the answer marker is banned.
    if (cfg_.revision.ban_answer_after_first && cfg_.tokenizer.answer_id >= 0 && cfg_.tokenizer.answer_id < V)
      logits[size_t(cfg_.tokenizer.answer_id)] = -std::numeric_limits<float>::infinity();
    next = sampler.next(logits.data(), V);
  }
  const std::string rest = streamer.finish();
  if (!rest.empty() && opts.on_chunk && res.finish_reason != "cancelled") opts.on_chunk(rest);
  res.text = tokenizer_.decode(std::vector<int32_t>(res.tokens.begin(), res.tokens.end()));
  res.timings.decode_s = seconds_since(t0);
  res.timings.decode_tokens = int(res.tokens.size());
  return res;
}

RegionResult Moondream::detect(const EncodedImage& img, const std::string& object, int max_objects) const {
  return locate(img, detect_prompt(object), true, max_objects);
}

RegionResult Moondream::point(const EncodedImage& img, const std::string& object, int max_objects) const {
  return locate(img, point_prompt(object), false, max_objects);
}

RegionResult Moondream::locate(const EncodedImage& img, const std::vector<int>& prompt, bool with_size,
                               int max_objects) const {
  if (max_objects < 0) throw Error("max_objects must not be negative");
  const int D = cfg_.text.dim, V = cfg_.text.vocab_size;
  const int steps_per_object = with_size ? 3 : 2;
  const int capacity =
      std::min(cfg_.text.max_context, img.cache.length + int(prompt.size()) + steps_per_object * max_objects);
  if (img.cache.length + int(prompt.size()) > cfg_.text.max_context)
    throw Error("object name too long for the context");
  KVCache cache = KVCache::extending(img.cache, capacity);

  RegionResult res;
  res.prompt_tokens = int(prompt.size());
  auto t0 = std::chrono::steady_clock::now();
  std::vector<float> x(prompt.size() * D);
  text_->embed(prompt.data(), int(prompt.size()), x.data());
  PooledVector<float> hidden = text_->forward(x.data(), int(prompt.size()), cache);
  std::vector<float> h(hidden.end() - D, hidden.end());
  std::vector<float> logits = text_->logits(h.data());
  int next = argmax_token(logits.data(), V);
  res.timings.prefill_s = seconds_since(t0);

  t0 = std::chrono::steady_clock::now();
  int steps = 0;
  auto step = [&](const std::vector<float>& emb) {
    const PooledVector<float> out = text_->forward(emb.data(), 1, cache);
    h.assign(out.begin(), out.end());
    ++steps;
  };
  const int count_limit = max_objects;
  while (next != cfg_.tokenizer.eos_id && int(res.objects.size() + res.points.size()) < count_limit &&
         cache.length + steps_per_object <= cache.capacity) {
    const float cx = region_->decode_coordinate(h.data());
    step(region_->encode_coordinate(cx));
    const float cy = region_->decode_coordinate(h.data());
    if (with_size) {
      step(region_->encode_coordinate(cy));
      float w = 0, hh = 0;
      region_->decode_size(h.data(), &w, &hh);
      const double dx = cx, dy = cy, hw = double(w) / 2, hh2 = double(hh) / 2;
      res.objects.push_back({dx - hw, dy - hh2, dx + hw, dy + hh2});
      step(region_->encode_size(w, hh));
    } else {
      res.points.push_back({cx, cy});
      step(region_->encode_coordinate(cy));
    }
    logits = text_->logits(h.data());
    next = argmax_token(logits.data(), V);
  }
  res.timings.decode_s = seconds_since(t0);
  res.timings.decode_tokens = steps;
  return res;
}

}  // namespace md
