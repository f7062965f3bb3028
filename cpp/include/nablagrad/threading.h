// nablagrad/threading.h - the persistent kernel thread pool.
//
// One process-wide pool of worker threads, created lazily and kept for the life of the
// process (threads are never spawned per call). Kernels hand it work with
//
//     nablagrad::parallel_for(begin, end, grain, [&](int64_t lo, int64_t hi) { ... });
//
// which splits [begin, end) into contiguous chunks of at least `grain` items. The caller
// thread takes part in the work. Rules that keep results deterministic:
//   * a kernel must write each output element from exactly one chunk, in a fixed order;
//   * reductions across chunks use a fixed chunking (see `fixed_chunks`) that does not
//     depend on the thread count, then combine the partials in chunk order.
// A task that throws does not hang the pool: the first exception is rethrown to the caller
// once every chunk has finished. A parallel_for called from inside a task runs inline
// (serially) instead of deadlocking. Any thread may call get/set_num_threads at any time,
// except set_num_threads from inside a task, which throws instead of waiting for itself.
#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

namespace nablagrad {

class ThreadPool {
 public:
  /// The process-wide pool. Its default size is std::thread::hardware_concurrency().
  static ThreadPool& instance() {
    static ThreadPool pool;
    return pool;
  }

  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;
  ~ThreadPool() { stop_workers(); }

  /// Number of threads that run a parallel region (the caller included), >= 1. Any thread
  /// may ask at any time, also while another resizes the pool.
  int num_threads() const { return num_threads_.load(std::memory_order_relaxed); }

  /// Resizes the pool; n < 1 is an error. Safe to call from any thread: it waits for the
  /// parallel region in progress to finish. Called from inside a task (where that wait could
  /// never end) it throws std::runtime_error.
  void set_num_threads(int n) {
    if (n < 1) throw std::invalid_argument("set_num_threads: n must be >= 1, got " + std::to_string(n));
    if (n > kMaxThreads)
      throw std::invalid_argument("set_num_threads: n must be <= " + std::to_string(kMaxThreads) + ", got " +
                                  std::to_string(n));
    if (in_task())
      throw std::runtime_error("set_num_threads: cannot resize the thread pool from inside a parallel region");
    std::lock_guard<std::mutex> guard(run_mutex_);
    if (n == num_threads()) return;
    stop_workers();
    num_threads_.store(n, std::memory_order_relaxed);
    try {
      start_workers();
    } catch (const std::system_error& e) {  // the OS refused a thread: fall back to one thread
      stop_workers();
      num_threads_.store(1, std::memory_order_relaxed);
      throw std::runtime_error(std::string("set_num_threads: could not start ") + std::to_string(n) +
                               " threads (" + e.what() + "); the pool now runs on 1 thread");
    }
  }

  /// Runs fn(i) for every i in [0, ntasks) and returns when all are done.
  void run(int64_t ntasks, const std::function<void(int64_t)>& fn) {
    if (ntasks <= 0) return;
    if (ntasks == 1 || num_threads() == 1 || in_task()) {
      for (int64_t i = 0; i < ntasks; ++i) fn(i);
      return;
    }
    std::lock_guard<std::mutex> guard(run_mutex_);  // one parallel region at a time
    // The region's state lives on this stack frame. Workers join it only under `mutex_`
    // while it is published, and the frame is not left before every joined worker has
    // left it again (`joined` back to 0): a late worker can never touch the next region's
    // state or a dead frame.
    Job job(fn, ntasks);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      current_ = &job;
      generation_.fetch_add(1, std::memory_order_release);
    }
    wake_.notify_all();
    work_on(job);
    // Wait for the chunks the workers picked up (spin briefly first: chunks of one region
    // usually end close together).
    for (int spin = 0; spin < kSpinIterations && job.pending.load(std::memory_order_acquire) != 0; ++spin)
      cpu_relax();
    if (job.pending.load(std::memory_order_acquire) != 0) {
      std::unique_lock<std::mutex> lock(mutex_);
      done_.wait(lock, [&] { return job.pending.load(std::memory_order_acquire) == 0; });
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      current_ = nullptr;  // no worker joins from now on
    }
    while (job.joined.load(std::memory_order_acquire) != 0) cpu_relax();  // they only check `next` and leave
    if (job.error) std::rethrow_exception(job.error);
  }

 private:
  ThreadPool() {
    unsigned hw = std::thread::hardware_concurrency();
    num_threads_.store(hw == 0 ? 1 : static_cast<int>(hw), std::memory_order_relaxed);
    start_workers();
  }

  static constexpr int kSpinIterations = 20000;

 public:
  static constexpr int kMaxThreads = 1024;

 private:

  static void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#else
    std::this_thread::yield();
#endif
  }

  static bool& in_task() {
    static thread_local bool flag = false;
    return flag;
  }

  struct Job {
    Job(const std::function<void(int64_t)>& f, int64_t n) : fn(f), ntasks(n), pending(n) {}
    const std::function<void(int64_t)>& fn;
    const int64_t ntasks;
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> pending;
    std::atomic<int> joined{0};  // workers currently inside work_on(*this)
    std::exception_ptr error;    // first exception, written under mutex_
  };

  void work_on(Job& job) {
    bool& flag = in_task();
    const bool was = flag;
    flag = true;
    for (;;) {
      const int64_t i = job.next.fetch_add(1);
      if (i >= job.ntasks) break;
      try {
        job.fn(i);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mutex_);
        if (!job.error) job.error = std::current_exception();
      }
      if (job.pending.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        std::lock_guard<std::mutex> lock(mutex_);
        done_.notify_all();
      }
    }
    flag = was;
  }

  void worker_loop() {
    uint64_t seen = 0;
    for (;;) {
      // Spin a little before sleeping: back-to-back regions (a GEMM's blocks, a training
      // step's ops) then start without a condition-variable wake-up (~100 us).
      for (int spin = 0; spin < kSpinIterations; ++spin) {
        if (generation_.load(std::memory_order_acquire) != seen || stopping_flag_.load(std::memory_order_relaxed)) break;
        cpu_relax();
      }
      Job* job = nullptr;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return stopping_ || generation_.load() != seen; });
        if (stopping_) return;
        seen = generation_.load();
        job = current_;  // null when the region already finished
        if (job) job->joined.fetch_add(1, std::memory_order_relaxed);
      }
      if (job) {
        work_on(*job);
        job->joined.fetch_sub(1, std::memory_order_release);  // last touch of *job
      }
    }
  }

  // Called with no worker running (first start, or after stop_workers() joined them all)
  // and, after construction, under run_mutex_, which also guards workers_.
  void start_workers() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = false;
      stopping_flag_.store(false);
    }
    const int n = num_threads();
    for (int i = 1; i < n; ++i) workers_.emplace_back([this] { worker_loop(); });
  }

  void stop_workers() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
      stopping_flag_.store(true);
    }
    wake_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
  }

  std::atomic<int> num_threads_{1};  // read without locks by every parallel_for; written under run_mutex_
  std::vector<std::thread> workers_;
  std::mutex run_mutex_;  // serialises parallel regions started by different user threads
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  Job* current_ = nullptr;  // the published region, guarded by mutex_
  std::atomic<uint64_t> generation_{0};
  bool stopping_ = false;
  std::atomic<bool> stopping_flag_{false};
};

inline int get_num_threads() { return ThreadPool::instance().num_threads(); }
inline void set_num_threads(int n) { ThreadPool::instance().set_num_threads(n); }

/// Splits [begin, end) into at most num_threads chunks of at least `grain` items and calls
/// fn(lo, hi) on each, in parallel. Each index is visited exactly once.
template <typename F>
inline void parallel_for(int64_t begin, int64_t end, int64_t grain, const F& fn) {
  const int64_t n = end - begin;
  if (n <= 0) return;
  if (grain < 1) grain = 1;
  const int64_t threads = get_num_threads();
  int64_t chunks = std::min<int64_t>(threads, (n + grain - 1) / grain);
  if (chunks <= 1) {
    fn(begin, end);
    return;
  }
  const int64_t per = (n + chunks - 1) / chunks;
  chunks = (n + per - 1) / per;
  ThreadPool::instance().run(chunks, [&](int64_t c) {
    const int64_t lo = begin + c * per;
    const int64_t hi = std::min(end, lo + per);
    fn(lo, hi);
  });
}

/// Calls fn(chunk, lo, hi) for fixed chunks of `chunk_size` items, in parallel. The chunking
/// depends only on n and chunk_size, never on the thread count, so per-chunk partial results
/// combined in chunk order are bitwise reproducible.
template <typename F>
inline void parallel_chunks(int64_t n, int64_t chunk_size, const F& fn) {
  if (n <= 0) return;
  if (chunk_size < 1) chunk_size = 1;
  const int64_t chunks = (n + chunk_size - 1) / chunk_size;
  if (chunks == 1) {
    fn(int64_t{0}, int64_t{0}, n);
    return;
  }
  ThreadPool::instance().run(chunks, [&](int64_t c) {
    const int64_t lo = c * chunk_size;
    fn(c, lo, std::min(n, lo + chunk_size));
  });
}

}  // namespace nablagrad
