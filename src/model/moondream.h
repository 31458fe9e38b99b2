#pragma once
// The Moondream2 model: one object per loaded model directory, answering
// caption / query / detect / point on encoded images. Data flows one way:
// image → crops → vision features → image embeddings → KV cache → tokens.
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/image.h"
#include "model/region.h"
#include "model/sampling.h"
#include "model/text.h"
#include "model/tokenizer.h"
#include "model/weights.h"

namespace md {

struct Timings {
  double decode_image_s = 0;  // bytes → RGB
  double vision_s = 0;        // crops → image embeddings
  double prefill_s = 0;       // image prefix and prompt through the text model
  double decode_s = 0;        // token-by-token generation
  int decode_tokens = 0;
  double decode_tokens_per_s() const { return decode_s > 0 ? decode_tokens / decode_s : 0.0; }
};

// An image run through the vision encoder and the 730-position prefix. Every
// task continues from a copy of `cache`, so one encoded image serves many.
struct EncodedImage {
  KVCache cache;
  Tiling tiling;
  int crop_count = 0;
  int width = 0, height = 0;
  Timings timings;  // decode_image_s, vision_s, prefill_s of the prefix
};

enum class CaptionLength { Short, Normal, Long };
bool parse_caption_length(const std::string& s, CaptionLength* out);

struct TextOptions {
  int max_tokens = 768;
  SamplingParams sampling;
  // Called with each streamed chunk (docs/MODEL.md section 8); return false to stop.
  std::function<bool(const std::string& chunk)> on_chunk;
};

struct TextResult {
  std::string text;
  std::vector<int> tokens;  // generated ids, eos excluded
  int prompt_tokens = 0;
  std::string finish_reason;  // "stop" (eos), "length" (max_tokens) or "cancelled"
  Timings timings;            // prefill_s (prompt) and decode_s of this task
};

// Normalised to [0, 1] of the image (may run past the edges, as the model says).
struct DetectedObject {
  double x_min, y_min, x_max, y_max;
};
struct DetectedPoint {
  double x, y;
};
struct RegionResult {
  std::vector<DetectedObject> objects;  // detect
  std::vector<DetectedPoint> points;    // point
  int prompt_tokens = 0;
  Timings timings;
};

struct LoadOptions {
  int threads = 0;  // 0 = all cores
  Quantization quantization = Quantization::None;
  // How KV caches hold their rows: bf16 by default (half the bytes a decode
  // step reads); f32 reproduces the fp32 reference exactly (fidelity tests).
  KVFormat kv_cache = KVFormat::BF16;
  // Image prefixes whose KV memory is touched at load (see Moondream::load).
  int reserve_kv_images = 2;
  RevisionChoice revision = RevisionChoice::kAuto;
  // tokenizer.json to use instead of the model directory's; required for a
  // starmie-era revision (its bundled file is a stale GPT-2 one). The front
  // ends resolve it (server/hub.h: tokenizer_for_model).
  std::string tokenizer_path;
};

class Moondream {
 public:
  // Loads config.json, the weights and tokenizer.json from a model directory.
  static std::unique_ptr<Moondream> load(const std::string& model_dir, const LoadOptions& opts = {});

  const ModelConfig& config() const { return cfg_; }
  const RevisionProfile& revision() const { return cfg_.revision; }
  const std::string& tokenizer_path() const { return tokenizer_path_; }
  const Tokenizer& tokenizer() const { return tokenizer_; }
  const TextModel& text() const { return *text_; }
  const RegionModel& region() const { return *region_; }
  const ModelWeights& weights() const { return *weights_; }
  KVFormat kv_format() const { return kv_format_; }
  CropParams crop_params() const;

  EncodedImage encode_image(const RgbImage& image) const;
  EncodedImage encode_crops(const Crops& crops) const;

  // Stages, exposed for tests and benchmarks.
  // (Large buffers come from the pool of tensor/buffer_pool.h: fresh pages
  // cost ~3 ms per MB on the VMs measured; the pool reuses freed blocks.)
  PooledVector<float> vision_features(const Crops& crops) const;  // [n, grid², enc_dim]
  PooledVector<float> image_embeddings(std::span<const float> features, Tiling tiling) const;
  KVCache prefill_prefix(std::span<const float> embeddings) const;  // 730 positions

  // Shortcuts to run_task (model/tasks.h), the one entry of every task.
  TextResult caption(const EncodedImage& img, CaptionLength length, const TextOptions& opts) const;
  TextResult query(const EncodedImage& img, const std::string& question, const TextOptions& opts) const;
  TextResult generate(const EncodedImage& img, const std::vector<int>& prompt, const TextOptions& opts) const;
  RegionResult detect(const EncodedImage& img, const std::string& object, int max_objects = 50) const;
  RegionResult point(const EncodedImage& img, const std::string& object, int max_objects = 50) const;

  std::vector<int> caption_prompt(CaptionLength length) const;

 private:
  Moondream() = default;
  RegionResult locate(const EncodedImage& img, const std::vector<int>& prompt, bool with_size, int max_objects) const;
  ModelConfig cfg_;
  std::string tokenizer_path_;
  Tokenizer tokenizer_;
  std::unique_ptr<ModelWeights> weights_;
  std::unique_ptr<TextModel> text_;
  std::unique_ptr<RegionModel> region_;
  KVFormat kv_format_ = KVFormat::BF16;
};

}  // namespace md
