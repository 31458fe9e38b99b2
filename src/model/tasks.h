#pragma once
// One entry for every task: a request in, a result out, with streaming
// callbacks. The CLI, the server and the bench all call run_task; prompts,
// the checks of a request against the loaded revision, the context-length
// check and the error kinds live here once (docs/REVISIONS.md, docs/API.md).
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "model/decode_batcher.h"
#include "model/moondream.h"
#include "tensor/error.h"

namespace md {

enum class TaskKind { kCaption, kQuery, kChat, kDetect, kPoint, kGaze };
const char* task_kind_name(TaskKind k);

// What went wrong, for the front ends to map (the server: one table to HTTP
// status codes). Messages are for people; kinds are for code.
enum class TaskErrorKind {
  kInvalidRequest,   // a malformed option (a spatial reference out of [0, 1], ...)
  kUnsupported,      // an option or skill the loaded revision does not have
  kContextOverflow,  // the prompt does not fit the context
  kInvalidImage,     // the image cannot be encoded
};
const char* task_error_code(TaskErrorKind k);  // "invalid_request", "unsupported", ...

class TaskError : public Error {
 public:
  TaskError(TaskErrorKind kind, const std::string& msg) : Error(msg), kind_(kind) {}
  TaskErrorKind kind() const { return kind_; }

 private:
  TaskErrorKind kind_;
};

// A point {x, y} or a box {x_min, y_min, x_max, y_max}, normalised to [0, 1].
using SpatialRef = std::vector<double>;
// Throws TaskError(kInvalidRequest) unless 2 or 4 finite values in [0, 1],
// x_min <= x_max, y_min <= y_max. `what` names it in the message.
void validate_spatial_ref(const SpatialRef& r, const std::string& what);

struct TaskRequest {
  TaskKind kind = TaskKind::kCaption;
  const EncodedImage* image = nullptr;  // null: a text-only query (starmie era)
  CaptionLength length = CaptionLength::Normal;
  std::string text;                                          // question (query, chat) or object (detect, point)
  std::vector<std::pair<std::string, std::string>> history;  // chat: earlier (question, answer) turns
  bool reasoning = false;                                    // query: grounded reasoning
  std::vector<SpatialRef> spatial_refs;                      // query, point
  double eye_x = 0, eye_y = 0;                               // gaze
  int max_tokens = 768;
  int max_objects = 50;
  SamplingParams sampling;
};

// A span of the reasoning text (Unicode code point offsets) and the points
// the model grounded it on.
struct GroundingSpan {
  int start_idx = 0, end_idx = 0;
  std::vector<DetectedPoint> points;
};
struct Reasoning {
  std::string text;
  std::vector<GroundingSpan> grounding;
  std::vector<int> tokens;  // generated before the answer (the final answer marker excluded)
};

// {"text", "grounding": [{"start_idx", "end_idx", "points": [[x, y], ...]}]}, the
// form of docs/MODEL.md section R4 that the API and the CLI print.
nlohmann::json reasoning_json(const Reasoning& r);

struct TaskCallbacks {
  // Each streamed answer chunk; return false to stop.
  std::function<bool(const std::string& chunk)> on_chunk;
  // Once, with the whole reasoning, before the first answer chunk.
  std::function<void(const Reasoning&)> on_reasoning;
};

struct TaskResult {
  TaskKind kind = TaskKind::kCaption;
  std::string text;             // caption or answer
  std::vector<int> tokens;      // generated answer ids, eos excluded
  std::vector<int> prompt_ids;  // the text prompt after the image prefix
  std::optional<Reasoning> reasoning;
  std::vector<DetectedObject> objects;  // detect
  std::vector<DetectedPoint> points;    // point
  std::optional<DetectedPoint> gaze;    // gaze (none: not found)
  std::string finish_reason;            // stop, length, cancelled
  Timings timings;                      // of this task (not of encoding the image)
  int prompt_tokens() const { return int(prompt_ids.size()); }
};

// `compute`: where the model's computations run (null: on this thread; a
// DecodeBatcher: batched with other tasks' decode steps, the same results).
TaskResult run_task(const Moondream& model, const TaskRequest& request, const TaskCallbacks& callbacks = {},
                    StepRunner* compute = nullptr);

// The checks of run_task and the context-length check, before an image is
// encoded (`has_image`: one will be): returns the text prompt's ids; throws
// TaskError. Lets a front end answer a bad request at once.
std::vector<int> prepare_task(const Moondream& model, const TaskRequest& request, bool has_image);

// The most KV positions `request` writes after the image prefix (`has_image`:
// one will precede it): its prompt and all it may generate, within the
// context. What a scheduler reserves before running it (model::KVCache has
// the bytes per position).
int task_kv_positions(const Moondream& model, const TaskRequest& request, bool has_image);

// The answer loop on a prompt of token ids (max_tokens and sampling from
// `settings`), for tests and tools that build their own prompts.
TaskResult generate_from_prompt(const Moondream& model, const EncodedImage* image, const std::vector<int>& prompt,
                                const TaskRequest& settings, const TaskCallbacks& callbacks = {});

}  // namespace md
