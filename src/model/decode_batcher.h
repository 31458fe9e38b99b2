#pragma once
// Where a task's model computations run (docs/API.md "Batching").
// Alone, a task runs them on its own thread. Under DecodeBatcher, tasks on
// many threads hand them to one compute thread, which runs the one-position
// decode steps of every task in its decode loop together, one pass over the
// weights for all of them (TextModel::decode_step), and runs prompts and
// image encodings between steps, yielding to ready steps between layers.
#include <array>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "model/text.h"

namespace md {

class StepRunner {
 public:
  virtual ~StepRunner() = default;
  // Runs `work` (an image's encoding, a prompt's prefill) where the model's
  // computations run; returns when it has run; rethrows what it threw.
  virtual void run(const std::function<void()>& work) = 0;
  // One position of `cache` (its next, embedding x [dim]): the hidden state
  // [dim] into `hidden` and, when `logits` is not null, the logits [vocab].
  virtual void step(const float* x, KVCache& cache, float* hidden, float* logits) = 0;
  // A task's decode loop begins / ends (DecodeSeat): while it is seated, a
  // batched step waits for its next position.
  virtual void sit() {}
  virtual void stand() {}
};

// Runs everything at once on the calling thread (the CLI, tests, the bench).
class InlineRunner final : public StepRunner {
 public:
  explicit InlineRunner(const TextModel& text) : text_(text) {}
  void run(const std::function<void()>& work) override { work(); }
  void step(const float* x, KVCache& cache, float* hidden, float* logits) override;

 private:
  const TextModel& text_;
};

// A task's decode loop, seated for its lifetime.
class DecodeSeat {
 public:
  explicit DecodeSeat(StepRunner& r) : r_(r) { r_.sit(); }
  ~DecodeSeat() { r_.stand(); }
  DecodeSeat(const DecodeSeat&) = delete;
  DecodeSeat& operator=(const DecodeSeat&) = delete;

 private:
  StepRunner& r_;
};

class DecodeBatcher final : public StepRunner {
 public:
  // At most `max_rows` (1..TextModel::kMaxBatchRows) positions per step.
  DecodeBatcher(const TextModel& text, int max_rows);
  ~DecodeBatcher() override;  // runs what was handed in, then stops
  DecodeBatcher(const DecodeBatcher&) = delete;
  DecodeBatcher& operator=(const DecodeBatcher&) = delete;

  void run(const std::function<void()>& work) override;
  void step(const float* x, KVCache& cache, float* hidden, float* logits) override;
  void sit() override;
  void stand() override;

  struct Stats {
    uint64_t steps = 0, rows = 0, works = 0;
    uint64_t yields = 0;  // steps run between the layers of a work
    // The compute thread's time in decode steps (their logits included) and
    // in works (images, prompts; minus the steps run between their layers):
    // what is left of the wall time it waited for tasks to hand in.
    double step_seconds = 0, work_seconds = 0;
    std::array<uint64_t, TextModel::kMaxBatchRows + 1> steps_of_size{};  // [rows] → steps
    int seated = 0;
    int pending = 0;  // positions handed in, not yet run
  };
  Stats stats() const;

  // Called between layers of a long computation (vision, a prompt's layers):
  // on the batcher's compute thread, runs the step waiting there if it is
  // ready and the work has run kMinSlice since it started or last yielded;
  // elsewhere, or inside a step or a parallel region, does nothing.
  static void yield_point();

 private:
  // What a task hands in and waits on: done (and what it threw) under m_.
  struct Pending {
    bool done = false;
    std::exception_ptr error;
  };
  struct PendingStep : Pending {
    const float* x = nullptr;
    KVCache* cache = nullptr;
    float* hidden = nullptr;
    float* logits = nullptr;
  };
  struct PendingWork : Pending {
    const std::function<void()>* work = nullptr;
  };

  // Queues `p` for the compute thread and waits until it is done; rethrows its error.
  template <class P>
  void hand_in(std::deque<P*>& queue, P& p);
  void loop();
  // With m_ held: a step can run (every seated task has handed in its next
  // position, or max_rows have).
  bool step_ready() const;
  // Takes the first max_rows pending positions and runs them (drops the lock meanwhile).
  void run_step(std::unique_lock<std::mutex>& lock);
  void yield_here();

  const TextModel& text_;
  const int max_rows_;
  mutable std::mutex m_;
  std::condition_variable work_cv_;  // the compute thread waits here
  std::condition_variable done_cv_;  // tasks wait here
  std::deque<PendingStep*> steps_;
  std::deque<PendingWork*> works_;
  int seated_ = 0;
  bool stopping_ = false;
  bool in_step_ = false;  // compute thread only
  // When the running work last started or resumed (compute thread only).
  std::chrono::steady_clock::time_point slice_start_;
  static constexpr std::chrono::milliseconds kMinSlice{40};
  Stats stats_;
  std::thread thread_;
};

}  // namespace md
