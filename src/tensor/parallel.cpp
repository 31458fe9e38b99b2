#include "tensor/parallel.h"

#include <cblas.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

namespace md {
namespace {

// True on a thread that is already running a parallel_for chunk: nested calls
// then run serially instead of waiting for busy workers.
thread_local bool t_inside = false;

class Pool {
 public:
  explicit Pool(int n) { resize(n); }
  ~Pool() { stop(); }

  int size() const { return int(workers_.size()) + 1; }

  void resize(int n) {
    stop();
    stopping_ = false;
    // New workers must not mistake the last finished job for a new one.
    const uint64_t current = generation_;
    for (int i = 1; i < n; ++i) workers_.emplace_back([this, i, current] { worker(i, current); });
  }

  void run(size_t n, const std::function<void(size_t, size_t)>& fn) {
    const size_t parts = std::min<size_t>(n, size_t(size()));
    if (parts <= 1 || t_inside) {
      fn(0, n);
      return;
    }
    std::lock_guard<std::mutex> run_lock(run_mutex_);
    {
      std::lock_guard<std::mutex> lk(m_);
      job_ = &fn;
      job_n_ = n;
      job_parts_ = parts;
      pending_ = int(parts) - 1;
      ++generation_;
    }
    cv_.notify_all();
    t_inside = true;
    fn(0, n / parts);  // part 0 on the calling thread
    t_inside = false;
    std::unique_lock<std::mutex> lk(m_);
    done_cv_.wait(lk, [this] { return pending_ == 0; });
    job_ = nullptr;
  }

 private:
  void worker(int index, uint64_t seen) {
    for (;;) {
      const std::function<void(size_t, size_t)>* job;
      size_t n, parts;
      {
        std::unique_lock<std::mutex> lk(m_);
        cv_.wait(lk, [&] { return stopping_ || generation_ != seen; });
        if (stopping_) return;
        seen = generation_;
        job = job_;
        n = job_n_;
        parts = job_parts_;
      }
      if (size_t(index) < parts) {
        const size_t b = n * size_t(index) / parts, e = n * size_t(index + 1) / parts;
        t_inside = true;
        (*job)(b, e);
        t_inside = false;
        std::lock_guard<std::mutex> lk(m_);
        if (--pending_ == 0) done_cv_.notify_one();
      }
    }
  }

  void stop() {
    {
      std::lock_guard<std::mutex> lk(m_);
      stopping_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
  }

  std::mutex run_mutex_;
  std::mutex m_;
  std::condition_variable cv_, done_cv_;
  std::vector<std::thread> workers_;
  const std::function<void(size_t, size_t)>* job_ = nullptr;
  size_t job_n_ = 0, job_parts_ = 0;
  int pending_ = 0;
  uint64_t generation_ = 0;
  bool stopping_ = false;
};

int default_threads() {
  unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : int(n);
}

int g_threads = default_threads();

Pool& pool() {
  static Pool p(g_threads);
  return p;
}

}  // namespace

void set_num_threads(int n) {
  if (n <= 0) n = default_threads();
  g_threads = n;
  if (pool().size() != n) pool().resize(n);
  openblas_set_num_threads(n);
}

int num_threads() { return g_threads; }

void parallel_for(size_t n, const std::function<void(size_t, size_t)>& fn) {
  if (n == 0) return;
  pool().run(n, fn);
}

}  // namespace md
