#include "model/decode_batcher.h"

#include <algorithm>
#include <cstring>

#include "tensor/error.h"
#include "tensor/parallel.h"

namespace md {

void InlineRunner::step(const float* x, KVCache& cache, float* hidden, float* logits) {
  const PooledVector<float> h = text_.forward(x, 1, cache);
  std::copy(h.begin(), h.end(), hidden);
  if (logits) {
    const std::vector<float> l = text_.logits(h.data());
    std::copy(l.begin(), l.end(), logits);
  }
}

namespace {
// The batcher whose compute thread this is (yield_point's target).
thread_local DecodeBatcher* t_batcher = nullptr;
}  // namespace

DecodeBatcher::DecodeBatcher(const TextModel& text, int max_rows)
    : text_(text), max_rows_(std::clamp(max_rows, 1, TextModel::kMaxBatchRows)) {
  const int threads = num_threads();
  thread_ = std::thread([this, threads] {
    // OpenMP's thread count is per calling thread: this one runs every team.
    set_num_threads(threads);
    t_batcher = this;
    loop();
  });
}

DecodeBatcher::~DecodeBatcher() {
  {
    std::lock_guard<std::mutex> lock(m_);
    stopping_ = true;
  }
  work_cv_.notify_all();
  thread_.join();
}

template <class P>
void DecodeBatcher::hand_in(std::deque<P*>& queue, P& p) {
  std::unique_lock<std::mutex> lock(m_);
  if (stopping_) throw Error("the decode batcher is stopping");
  queue.push_back(&p);
  work_cv_.notify_all();
  done_cv_.wait(lock, [&] { return p.done; });
  if (p.error) std::rethrow_exception(p.error);
}

void DecodeBatcher::run(const std::function<void()>& work) {
  if (t_batcher == this) {  // already on the compute thread
    work();
    return;
  }
  PendingWork w;
  w.work = &work;
  hand_in(works_, w);
}

void DecodeBatcher::step(const float* x, KVCache& cache, float* hidden, float* logits) {
  PendingStep s;
  s.x = x;
  s.cache = &cache;
  s.hidden = hidden;
  s.logits = logits;
  hand_in(steps_, s);
}

void DecodeBatcher::sit() {
  std::lock_guard<std::mutex> lock(m_);
  ++seated_;
}

void DecodeBatcher::stand() {
  {
    std::lock_guard<std::mutex> lock(m_);
    --seated_;
  }
  work_cv_.notify_all();  // the others may be all that a step waited for
}

DecodeBatcher::Stats DecodeBatcher::stats() const {
  std::lock_guard<std::mutex> lock(m_);
  Stats s = stats_;
  s.seated = seated_;
  s.pending = int(steps_.size());
  return s;
}

bool DecodeBatcher::step_ready() const {
  const int n = int(steps_.size());
  return n > 0 && (n >= seated_ || n >= max_rows_);
}

void DecodeBatcher::loop() {
  std::unique_lock<std::mutex> lock(m_);
  for (;;) {
    work_cv_.wait(lock, [&] { return stopping_ || step_ready() || !works_.empty(); });
    if (step_ready()) {
      run_step(lock);
    } else if (!works_.empty()) {
      PendingWork* w = works_.front();
      works_.pop_front();
      const double steps_before = stats_.step_seconds;
      lock.unlock();
      slice_start_ = std::chrono::steady_clock::now();
      const auto work_start = slice_start_;
      try {
        (*w->work)();
      } catch (...) {
        w->error = std::current_exception();
      }
      lock.lock();
      stats_.work_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - work_start).count() -
                             (stats_.step_seconds - steps_before);
      ++stats_.works;
      w->done = true;
      done_cv_.notify_all();
    } else if (stopping_) {
      // Nothing ready: a step still pending waits for seats that cannot come.
      for (PendingStep* s : steps_) {
        s->error = std::make_exception_ptr(Error("the decode batcher stopped"));
        s->done = true;
      }
      steps_.clear();
      done_cv_.notify_all();
      return;
    }
  }
}

void DecodeBatcher::run_step(std::unique_lock<std::mutex>& lock) {
  const int n = std::min(int(steps_.size()), max_rows_);
  std::vector<PendingStep*> batch(steps_.begin(), steps_.begin() + n);
  steps_.erase(steps_.begin(), steps_.begin() + n);
  lock.unlock();
  in_step_ = true;
  const auto start = std::chrono::steady_clock::now();
  std::exception_ptr error;
  try {
    const int D = text_.config().dim, V = text_.config().vocab_size;
    std::vector<float> x(size_t(n) * size_t(D));
    std::vector<KVCache*> caches(size_t(n), nullptr);
    for (int i = 0; i < n; ++i) {
      std::memcpy(x.data() + size_t(i) * D, batch[size_t(i)]->x, sizeof(float) * size_t(D));
      caches[size_t(i)] = batch[size_t(i)]->cache;
    }
    const PooledVector<float> h = text_.decode_step(x.data(), caches);
    // Logits for the rows that want them, in one pass over lm_head.
    std::vector<float> wanted;
    std::vector<int> rows;
    for (int i = 0; i < n; ++i) {
      std::memcpy(batch[size_t(i)]->hidden, h.data() + size_t(i) * D, sizeof(float) * size_t(D));
      if (batch[size_t(i)]->logits) {
        rows.push_back(i);
        wanted.insert(wanted.end(), h.data() + size_t(i) * D, h.data() + size_t(i + 1) * D);
      }
    }
    if (!rows.empty()) {
      const std::vector<float> l = text_.logits_rows(wanted.data(), int(rows.size()));
      for (size_t r = 0; r < rows.size(); ++r)
        std::memcpy(batch[size_t(rows[r])]->logits, l.data() + r * size_t(V), sizeof(float) * size_t(V));
    }
  } catch (...) {
    error = std::current_exception();
  }
  in_step_ = false;
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  lock.lock();
  stats_.step_seconds += seconds;
  ++stats_.steps;
  stats_.rows += uint64_t(n);
  ++stats_.steps_of_size[size_t(n)];
  for (PendingStep* s : batch) {
    s->error = error;
    s->done = true;
  }
  done_cv_.notify_all();
}

void DecodeBatcher::yield_here() {
  // A work runs at least kMinSlice between steps: a short prompt (a question
  // on a cached image, ~0.1 s) finishes and joins the batch instead of
  // waiting out the running sequences' steps one layer at a time.
  if (std::chrono::steady_clock::now() - slice_start_ < kMinSlice) return;
  std::unique_lock<std::mutex> lock(m_);
  if (!step_ready()) return;
  ++stats_.yields;
  run_step(lock);
  lock.unlock();
  slice_start_ = std::chrono::steady_clock::now();
}

void DecodeBatcher::yield_point() {
  DecodeBatcher* b = t_batcher;
  if (!b || b->in_step_ || in_parallel_region()) return;
  b->yield_here();
}

}  // namespace md
