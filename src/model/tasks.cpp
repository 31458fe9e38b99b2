// Every task, once: prompts (docs/MODEL.md section 8 and, for 2025-06-21, R2-R7),
// the generation and region loops, grounded reasoning, spatial references,
// text-only questions and gaze.
#include "model/tasks.h"

#include <chrono>
#include <cmath>
#include <limits>
#include <optional>

#include "model/unicode_text.h"

namespace md {
namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

[[noreturn]] void fail(TaskErrorKind k, const std::string& msg) { throw TaskError(k, msg); }

std::vector<int> encode(const Tokenizer& tok, const std::string& s) {
  const std::vector<int32_t> ids = tok.encode(s);
  return {ids.begin(), ids.end()};
}

void append(std::vector<int>& out, const std::vector<int>& more) { out.insert(out.end(), more.begin(), more.end()); }

struct Runner {
  const Moondream& m;
  const ModelConfig& cfg;
  const RevisionProfile& rev;
  const TokenizerConfig& ids;
  const Tokenizer& tok;
  const TextModel& text;
  const RegionModel& region;
  const int D, V;
  StepRunner& compute;  // where the model's computations run (alone, or batched with other tasks)

  Runner(const Moondream& model, StepRunner& compute)
      : m(model),
        cfg(model.config()),
        rev(model.revision()),
        ids(model.config().tokenizer),
        tok(model.tokenizer()),
        text(model.text()),
        region(model.region()),
        D(model.config().text.dim),
        V(model.config().text.vocab_size),
        compute(compute) {}

  // ---- prompts

  std::vector<int> spatial_placeholders(const std::vector<SpatialRef>& refs) const {
    std::vector<int> out;
    for (const SpatialRef& r : refs) {
      out.push_back(ids.coord_id);
      out.push_back(ids.coord_id);
      if (r.size() == 4) out.push_back(ids.size_id);
    }
    return out;
  }

  std::vector<int> question_ids(const std::string& q) const {
    return encode(tok, rev.question_leading_space ? " " + q : q);
  }

  // query: prefix + S + Q + suffix (+ the answer or thinking marker, starmie era).
  std::vector<int> query_prompt(const std::string& q, const std::vector<SpatialRef>& refs, bool reasoning) const {
    std::vector<int> p = ids.query_prefix;
    append(p, spatial_placeholders(refs));
    append(p, question_ids(q));
    append(p, ids.query_suffix);
    // Starmie era: the suffix again (it is the answer marker: [3, 3]), or the
    // thinking marker before reasoning (as the official code builds it).
    if (rev.family == TokenizerFamily::kStarmie) {
      if (reasoning)
        p.push_back(ids.thinking_id);
      else
        append(p, ids.query_suffix);
    }
    return p;
  }

  std::vector<int> caption_prompt(CaptionLength l) const {
    return l == CaptionLength::Short  ? ids.caption_short
           : l == CaptionLength::Long ? ids.caption_long
                                      : ids.caption_normal;
  }

  std::vector<int> region_prompt(bool detect, const std::string& object, const std::vector<SpatialRef>& refs) const {
    std::vector<int> p = detect ? ids.detect_prefix : ids.point_prefix;
    append(p, spatial_placeholders(refs));
    append(p, encode(tok, " " + object));
    append(p, detect ? ids.detect_suffix : ids.point_suffix);
    return p;
  }

  // Input embeddings of a prompt; with spatial references, the k-th coord id
  // takes coord_encoder(fourier(v_k)) (v: a point's x, y; a box's centre) and
  // the j-th size id size_encoder(fourier([w_j, h_j])) (docs/MODEL.md section R5).
  std::vector<float> embeddings(const std::vector<int>& prompt, const std::vector<SpatialRef>& refs) const {
    std::vector<float> x(prompt.size() * size_t(D));
    text.embed(prompt.data(), int(prompt.size()), x.data());
    if (refs.empty()) return x;
    std::vector<float> coords;
    std::vector<std::pair<float, float>> sizes;
    for (const SpatialRef& r : refs) {
      if (r.size() == 2) {
        coords.push_back(float(r[0]));
        coords.push_back(float(r[1]));
      } else {
        coords.push_back(float((r[0] + r[2]) / 2));
        coords.push_back(float((r[1] + r[3]) / 2));
        sizes.emplace_back(float(r[2] - r[0]), float(r[3] - r[1]));
      }
    }
    size_t ci = 0, si = 0;
    for (size_t i = 0; i < prompt.size(); ++i) {
      std::vector<float> e;
      if (prompt[i] == ids.coord_id && ci < coords.size())
        e = region.encode_coordinate(coords[ci++]);
      else if (prompt[i] == ids.size_id && si < sizes.size())
        e = region.encode_size(sizes[si].first, sizes[si].second), ++si;
      else
        continue;
      std::copy(e.begin(), e.end(), x.begin() + i * size_t(D));
    }
    return x;
  }

  // ---- caches

  // A cache continuing the image (or empty, purely causal, for a text-only
  // prompt) with room for the prompt and `extra` more positions.
  KVCache start(const EncodedImage* img, int prompt_len, int extra) const {
    const int base = img ? img->cache.length : 0;
    if (base + prompt_len > cfg.text.max_context)
      fail(TaskErrorKind::kContextOverflow,
           "prompt too long: " + std::to_string(prompt_len) + " tokens do not fit the context of " +
               std::to_string(cfg.text.max_context) + " after the image's " + std::to_string(base) + " positions");
    const int capacity = int(std::min<int64_t>(cfg.text.max_context, int64_t(base) + prompt_len + int64_t(extra)));
    if (img) return KVCache::extending(img->cache, capacity);
    KVCache c(cfg.text, capacity, m.kv_format());
    c.prefix = 0;
    return c;
  }

  // ---- loops

  // The answer loop from the logits of the prompt's last position: stop at
  // eos (not emitted) or max_tokens; starmie era: the answer id banned after
  // the first token (docs/MODEL.md section R3).
  void answer(KVCache& cache, std::vector<float> logits, int max_tokens, const SamplingParams& sp,
              const TaskCallbacks& cb, TaskResult& res) const {
    auto t0 = std::chrono::steady_clock::now();
    Sampler sampler(sp);
    int next = sampler.next(logits.data(), V);
    TextStreamer streamer(tok);
    std::vector<float> x(static_cast<size_t>(D)), h(static_cast<size_t>(D));
    res.finish_reason = "stop";
    DecodeSeat seat(compute);
    for (;;) {
      if (next == ids.eos_id) break;
      if (int(res.tokens.size()) >= max_tokens) {
        res.finish_reason = "length";
        break;
      }
      res.tokens.push_back(next);
      const std::string chunk = streamer.push(next);
      if (!chunk.empty() && cb.on_chunk && !cb.on_chunk(chunk)) {
        res.finish_reason = "cancelled";
        break;
      }
      // The last allowed token needs no forward pass: its successor is never used.
      if (int(res.tokens.size()) >= max_tokens || cache.length >= cache.capacity) {
        res.finish_reason = "length";
        break;
      }
      text.embed(&next, 1, x.data());
      compute.step(x.data(), cache, h.data(), logits.data());
      if (rev.ban_answer_after_first && ids.answer_id >= 0 && ids.answer_id < V)
        logits[size_t(ids.answer_id)] = -std::numeric_limits<float>::infinity();
      next = sampler.next(logits.data(), V);
    }
    const std::string rest = streamer.finish();
    if (!rest.empty() && cb.on_chunk && res.finish_reason != "cancelled") cb.on_chunk(rest);
    res.text = tok.decode(std::vector<int32_t>(res.tokens.begin(), res.tokens.end()));
    res.timings.decode_s += seconds_since(t0);
    res.timings.decode_tokens += int(res.tokens.size());
  }

  // Prefill `x` (prompt embeddings); returns the last hidden state and, when
  // `logits` is not null, its logits.
  std::vector<float> prefill(KVCache& cache, const std::vector<float>& x, TaskResult& res,
                             std::vector<float>* logits = nullptr) const {
    const int n = int(x.size() / size_t(D));
    std::vector<float> last;
    double seconds = 0;
    compute.run([&] {
      auto t0 = std::chrono::steady_clock::now();
      const PooledVector<float> h = text.forward(x.data(), n, cache);
      last.assign(h.end() - D, h.end());
      if (logits) *logits = text.logits(last.data());
      seconds = seconds_since(t0);
    });
    // The time it ran, not the time it waited for the compute thread.
    res.timings.prefill_s += seconds;
    return last;
  }

  void generate(const EncodedImage* img, const std::vector<int>& prompt, const std::vector<SpatialRef>& refs,
                const TaskRequest& rq, const TaskCallbacks& cb, TaskResult& res) const {
    if (prompt.empty()) fail(TaskErrorKind::kInvalidRequest, "empty prompt");
    res.prompt_ids = prompt;
    KVCache cache = start(img, int(prompt.size()), rq.max_tokens);
    std::vector<float> logits;
    prefill(cache, embeddings(prompt, refs), res, &logits);
    answer(cache, std::move(logits), rq.max_tokens, rq.sampling, cb, res);
  }

  // Grounded reasoning (docs/MODEL.md section R4), then the answer.
  void reason(const EncodedImage* img, std::vector<int> prompt, const TaskRequest& rq, const TaskCallbacks& cb,
              TaskResult& res) const {
    res.prompt_ids = prompt;
    // Room for the reasoning, the answer marker and the answer.
    KVCache cache = start(img, int(prompt.size()), room_after_prompt(rq));
    std::vector<float> logits;
    std::vector<float> h = prefill(cache, embeddings(prompt, rq.spatial_refs), res, &logits);
    auto t0 = std::chrono::steady_clock::now();
    Sampler sampler(rq.sampling);
    int t = sampler.next(logits.data(), V);
    struct Chunk {
      std::vector<int32_t> ids;
      std::vector<float> coords;
    };
    std::vector<Chunk> chunks(1);
    Reasoning r;
    std::vector<float> x(static_cast<size_t>(D));
    std::optional<DecodeSeat> seat(std::in_place, compute);
    while (t != ids.answer_id && int(r.tokens.size()) < rq.max_tokens &&
           cache.length + int(ids.query_suffix.size()) < cache.capacity) {
      if (t == ids.start_ground_points_id || t == ids.end_ground_id) chunks.emplace_back();
      chunks.back().ids.push_back(t);
      r.tokens.push_back(t);
      if (t == ids.coord_id) {
        const float c = region.decode_coordinate(h.data());
        chunks.back().coords.push_back(c);
        x = region.encode_coordinate(c);
      } else {
        text.embed(&t, 1, x.data());
      }
      compute.step(x.data(), cache, h.data(), logits.data());
      for (int banned : {ids.eos_id, ids.size_id})
        if (banned >= 0 && banned < V) logits[size_t(banned)] = -std::numeric_limits<float>::infinity();
      t = sampler.next(logits.data(), V);
    }
    seat.reset();
    int offset = 0;
    for (const Chunk& c : chunks) {
      const std::string s = tok.decode(c.ids);
      const int len = int(text::count_code_points(s));
      if (c.coords.size() >= 2) {
        GroundingSpan g;
        g.start_idx = offset;
        g.end_idx = offset + len;
        for (size_t i = 0; i + 1 < c.coords.size(); i += 2) g.points.push_back({c.coords[i], c.coords[i + 1]});
        r.grounding.push_back(std::move(g));
      }
      r.text += s;
      offset += len;
    }
    res.timings.decode_s += seconds_since(t0);
    res.timings.decode_tokens += int(r.tokens.size());
    res.reasoning = r;
    if (cb.on_reasoning) cb.on_reasoning(*res.reasoning);
    // The answer: the query suffix (the answer marker) at the next positions,
    // then the answer loop.
    const std::vector<int>& marker = ids.query_suffix;
    if (marker.empty()) fail(TaskErrorKind::kInvalidRequest, "the query template has no suffix to end reasoning");
    if (cache.length + int(marker.size()) > cache.capacity)
      fail(TaskErrorKind::kContextOverflow, "the reasoning filled the context: no room left for the answer");
    prefill(cache, embeddings(marker, {}), res, &logits);
    answer(cache, std::move(logits), rq.max_tokens, rq.sampling, cb, res);
  }

  // The region loop (docs/MODEL.md section 8) from prompt embeddings.
  void locate(const EncodedImage& img, const std::vector<float>& x, bool with_size, int max_objects,
              TaskResult& res) const {
    const int steps_per_object = with_size ? 3 : 2;
    const int n = int(x.size() / size_t(D));
    KVCache cache = start(&img, n, steps_per_object * max_objects);
    std::vector<float> logits;
    std::vector<float> h = prefill(cache, x, res, &logits);
    int next = argmax_token(logits.data(), V);
    auto t0 = std::chrono::steady_clock::now();
    int steps = 0;
    DecodeSeat seat(compute);
    // An object's last step also gives the logits that decide whether
    // another follows.
    auto step = [&](const std::vector<float>& emb, bool last) {
      compute.step(emb.data(), cache, h.data(), last ? logits.data() : nullptr);
      ++steps;
    };
    while (next != ids.eos_id && int(res.objects.size() + res.points.size()) < max_objects &&
           cache.length + steps_per_object <= cache.capacity) {
      const float cx = region.decode_coordinate(h.data());
      step(region.encode_coordinate(cx), false);
      const float cy = region.decode_coordinate(h.data());
      if (with_size) {
        step(region.encode_coordinate(cy), false);
        float w = 0, hh = 0;
        region.decode_size(h.data(), &w, &hh);
        const double dx = cx, dy = cy, hw = double(w) / 2, hh2 = double(hh) / 2;
        res.objects.push_back({dx - hw, dy - hh2, dx + hw, dy + hh2});
        step(region.encode_size(w, hh), true);
      } else {
        res.points.push_back({cx, cy});
        step(region.encode_coordinate(cy), true);
      }
      next = argmax_token(logits.data(), V);
    }
    res.timings.decode_s += seconds_since(t0);
    res.timings.decode_tokens += steps;
  }

  // The text prompt after the image prefix (before it, for a text-only
  // query: the bos token first, positions from 0; docs/MODEL.md section R6).
  std::vector<int> prompt_for(const TaskRequest& rq, bool has_image) const {
    std::vector<int> p;
    switch (rq.kind) {
      case TaskKind::kCaption: return caption_prompt(rq.length);
      case TaskKind::kQuery:
        if (!has_image) p.push_back(ids.bos_id);
        append(p, query_prompt(rq.text, rq.spatial_refs, rq.reasoning));
        return p;
      case TaskKind::kChat:
        if (!has_image) p.push_back(ids.bos_id);
        for (const auto& [q, a] : rq.history) {
          append(p, query_prompt(q, {}, false));
          append(p, question_ids(a));
        }
        append(p, query_prompt(rq.text, {}, false));
        return p;
      case TaskKind::kDetect:
      case TaskKind::kPoint: return region_prompt(rq.kind == TaskKind::kDetect, rq.text, rq.spatial_refs);
      case TaskKind::kGaze:
        if (rev.gaze == GazeMethod::kPointWithSpatialRef) return region_prompt(false, "gaze", {gaze_eye(rq)});
        // (the text ids; the eye's two coordinate embeddings sit between them)
        p = gaze_before();
        append(p, gaze_after());
        return p;
    }
    return p;
  }
  // Positions a task may write after its prompt: the room its KV cache gets.
  int room_after_prompt(const TaskRequest& rq) const {
    switch (rq.kind) {
      case TaskKind::kQuery:
        // The reasoning, the answer marker and the answer.
        if (rq.reasoning) return 2 * rq.max_tokens + int(ids.query_suffix.size());
        return rq.max_tokens;
      case TaskKind::kCaption:
      case TaskKind::kChat: return rq.max_tokens;
      case TaskKind::kDetect: return 3 * rq.max_objects;  // x, y, size per object (locate)
      case TaskKind::kPoint: return 2 * rq.max_objects;
      case TaskKind::kGaze: return 2;  // one point
    }
    return rq.max_tokens;
  }
  // Prompt positions: the prompt's ids, plus the eye's two coordinate
  // embeddings of the older revisions' gaze prompt.
  int prompt_positions(const TaskRequest& rq, const std::vector<int>& prompt) const {
    const bool eye_between = rq.kind == TaskKind::kGaze && rev.gaze != GazeMethod::kPointWithSpatialRef;
    return int(prompt.size()) + (eye_between ? 2 : 0);
  }
  std::vector<int> gaze_before() const { return encode(tok, "\n\nPoint:"); }
  std::vector<int> gaze_after() const { return encode(tok, " gaze\n\n"); }
  static SpatialRef gaze_eye(const TaskRequest& rq) { return {rq.eye_x, rq.eye_y}; }

  // ---- checks

  const EncodedImage& need_image(const TaskRequest& rq) const {
    if (!rq.image) fail(TaskErrorKind::kInvalidRequest, std::string(task_kind_name(rq.kind)) + " needs an image");
    return *rq.image;
  }

  void check_refs(const TaskRequest& rq, bool has_image) const {
    if (rq.spatial_refs.empty()) return;
    if (rq.kind != TaskKind::kQuery && rq.kind != TaskKind::kPoint)
      fail(TaskErrorKind::kInvalidRequest,
           std::string("spatial_refs are for query and point, not ") + task_kind_name(rq.kind));
    if (!rev.spatial_refs || ids.coord_id < 0 || ids.size_id < 0)
      fail(TaskErrorKind::kUnsupported,
           "spatial_refs need revision 2025-06-21; the loaded model is revision " + rev.name);
    if (!has_image) fail(TaskErrorKind::kInvalidRequest, "spatial_refs need an image");
    for (size_t i = 0; i < rq.spatial_refs.size(); ++i)
      validate_spatial_ref(rq.spatial_refs[i], "spatial_refs[" + std::to_string(i) + "]");
  }

  void check(const TaskRequest& rq, bool has_image) const {
    if (rq.max_tokens < 0) fail(TaskErrorKind::kInvalidRequest, "max_tokens must not be negative");
    if (rq.max_objects < 0) fail(TaskErrorKind::kInvalidRequest, "max_objects must not be negative");
    if (rq.reasoning) {
      if (rq.kind != TaskKind::kQuery)
        fail(TaskErrorKind::kInvalidRequest, std::string("reasoning is for query, not ") + task_kind_name(rq.kind));
      if (!rev.reasoning || ids.thinking_id < 0 || ids.answer_id < 0 || ids.coord_id < 0)
        fail(TaskErrorKind::kUnsupported,
             "reasoning needs revision 2025-06-21; the loaded model is revision " + rev.name);
    }
    const bool text_task = rq.kind == TaskKind::kQuery || rq.kind == TaskKind::kChat;
    if (!has_image && !text_task)
      fail(TaskErrorKind::kInvalidRequest, std::string(task_kind_name(rq.kind)) + " needs an image");
    if (text_task && !has_image && !rev.text_only)
      fail(TaskErrorKind::kUnsupported,
           "questions without an image need revision 2025-06-21; the loaded model is revision " + rev.name);
    if (rq.kind == TaskKind::kGaze) validate_spatial_ref(gaze_eye(rq), "eye");
    check_refs(rq, has_image);
  }
};

}  // namespace

const char* task_kind_name(TaskKind k) {
  switch (k) {
    case TaskKind::kCaption: return "caption";
    case TaskKind::kQuery: return "query";
    case TaskKind::kChat: return "chat";
    case TaskKind::kDetect: return "detect";
    case TaskKind::kPoint: return "point";
    case TaskKind::kGaze: return "gaze";
  }
  return "?";
}

const char* task_error_code(TaskErrorKind k) {
  switch (k) {
    case TaskErrorKind::kInvalidRequest: return "invalid_request";
    case TaskErrorKind::kUnsupported: return "unsupported";
    case TaskErrorKind::kContextOverflow: return "context_length_exceeded";
    case TaskErrorKind::kInvalidImage: return "invalid_image";
  }
  return "invalid_request";
}

nlohmann::json reasoning_json(const Reasoning& r) {
  nlohmann::json g = nlohmann::json::array();
  for (const GroundingSpan& s : r.grounding) {
    nlohmann::json pts = nlohmann::json::array();
    for (const DetectedPoint& p : s.points) pts.push_back({p.x, p.y});
    g.push_back({{"start_idx", s.start_idx}, {"end_idx", s.end_idx}, {"points", pts}});
  }
  return {{"text", r.text}, {"grounding", g}};
}

void validate_spatial_ref(const SpatialRef& r, const std::string& what) {
  if (r.size() != 2 && r.size() != 4)
    fail(TaskErrorKind::kInvalidRequest, what + " must be a point [x, y] or a box [x_min, y_min, x_max, y_max], got " +
                                             std::to_string(r.size()) + " values");
  for (double v : r)
    if (!std::isfinite(v) || v < 0 || v > 1)
      fail(TaskErrorKind::kInvalidRequest, what + ": every value must be a finite number in [0, 1]");
  if (r.size() == 4 && (r[0] > r[2] || r[1] > r[3]))
    fail(TaskErrorKind::kInvalidRequest, what + ": a box needs x_min <= x_max and y_min <= y_max");
}

TaskResult generate_from_prompt(const Moondream& model, const EncodedImage* image, const std::vector<int>& prompt,
                                const TaskRequest& settings, const TaskCallbacks& cb) {
  InlineRunner inline_compute(model.text());
  const Runner run(model, inline_compute);
  TaskResult res;
  res.kind = settings.kind;
  run.generate(image, prompt, {}, settings, cb, res);
  return res;
}

std::vector<int> prepare_task(const Moondream& model, const TaskRequest& rq, bool has_image) {
  InlineRunner inline_compute(model.text());
  const Runner run(model, inline_compute);
  run.check(rq, has_image);
  std::vector<int> p = run.prompt_for(rq, has_image);
  const TextConfig& t = model.config().text;
  const int base = has_image ? t.prefix_attn : 0;
  if (base + int(p.size()) >= t.max_context)
    fail(TaskErrorKind::kContextOverflow, "the prompt is " + std::to_string(p.size()) + " tokens; at most " +
                                              std::to_string(t.max_context - base - 1) + " fit");
  return p;
}

int task_kv_positions(const Moondream& model, const TaskRequest& rq, bool has_image) {
  InlineRunner inline_compute(model.text());
  const Runner run(model, inline_compute);
  const TextConfig& t = model.config().text;
  const int64_t base = has_image ? t.prefix_attn : 0;
  const int64_t wanted =
      base + run.prompt_positions(rq, run.prompt_for(rq, has_image)) + std::max<int64_t>(0, run.room_after_prompt(rq));
  return int(std::min<int64_t>(t.max_context, wanted) - base);
}

TaskResult run_task(const Moondream& model, const TaskRequest& rq, const TaskCallbacks& cb, StepRunner* compute) {
  InlineRunner inline_compute(model.text());
  const Runner run(model, compute ? *compute : inline_compute);
  const bool has_image = rq.image != nullptr;
  run.check(rq, has_image);
  TaskResult res;
  res.kind = rq.kind;
  const std::vector<int> prompt = run.prompt_for(rq, has_image);
  switch (rq.kind) {
    case TaskKind::kCaption:
    case TaskKind::kChat: run.generate(rq.image, prompt, {}, rq, cb, res); break;
    case TaskKind::kQuery:
      if (rq.reasoning)
        run.reason(rq.image, prompt, rq, cb, res);
      else
        run.generate(rq.image, prompt, rq.spatial_refs, rq, cb, res);
      break;
    case TaskKind::kDetect:
    case TaskKind::kPoint:
      res.prompt_ids = prompt;
      run.locate(*rq.image, run.embeddings(prompt, rq.spatial_refs), rq.kind == TaskKind::kDetect, rq.max_objects, res);
      break;
    case TaskKind::kGaze: {
      res.prompt_ids = prompt;
      const SpatialRef eye = Runner::gaze_eye(rq);
      if (run.rev.gaze == GazeMethod::kPointWithSpatialRef) {
        // Starmie era: point "gaze" with the eye as a spatial reference, the
        // first result (docs/MODEL.md section R7).
        run.locate(*rq.image, run.embeddings(prompt, {eye}), false, 1, res);
      } else {
        // Older revisions: the official detect_gaze ("\n\nPoint:", the eye's
        // x and y coordinate embeddings, " gaze\n\n", then one point).
        std::vector<float> x = run.embeddings(run.gaze_before(), {});
        for (double c : eye) {
          const std::vector<float> e = run.region.encode_coordinate(float(c));
          x.insert(x.end(), e.begin(), e.end());
        }
        const std::vector<float> xa = run.embeddings(run.gaze_after(), {});
        x.insert(x.end(), xa.begin(), xa.end());
        run.locate(*rq.image, x, false, 1, res);
      }
      if (!res.points.empty()) res.gaze = res.points.front();
      res.points.clear();
      break;
    }
  }
  return res;
}

}  // namespace md
