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
//
// The default thread count is the number of CPUs this process may run on: its CPU affinity
// mask (sched_getaffinity, so `taskset` and container cpusets count), capped by a cgroup CPU
// quota (v2 cpu.max, v1 cpu.cfs_quota_us: ceil(quota / period)), at least 1. The
// environment variable NABLAGRAD_NUM_THREADS (a positive integer) overrides it.
// Idle workers spin for a bounded time (about a millisecond) after a region, then sleep on
// a condition variable: an idle process burns no CPU. A worker that finds itself on the CPU
// of the thread that started the region (Linux) moves off it (see move_off_cpu).
// fork(): only the forking thread exists in the child. A pthread_atfork child handler
// forgets the parent's workers (never joined: they do not exist there) and re-creates the
// pool's locks; the child starts fresh workers at its first parallel region.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cerrno>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <functional>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#define NABLAGRAD_HAS_PTHREAD_ATFORK 1
#endif
#if defined(__linux__)
#include <sched.h>
#endif

namespace nablagrad {

namespace detail {

// The CPU the calling thread runs on, or -1 where that is unknown.
inline int current_cpu() {
#if defined(__linux__)
  return sched_getcpu();
#else
  return -1;
#endif
}

// Moves the calling thread (a pool worker) off `cpu` (the region caller's) if it may run
// elsewhere. On VMs the scheduler wakes a sleeping worker on its waker's vCPU (a cache-hot,
// lightly loaded choice) and can leave it there for tens of milliseconds while the other vCPU
// idles: the region then runs at one thread's speed. Measured (2 vCPUs, a 0.13 ms
// convolution timed in blocks after 50 ms pauses): 0.22 ms in a quarter of the blocks, none
// with the move. The thread's affinity is narrowed to the other allowed CPUs (the kernel
// migrates it at once) and then restored (which moves nothing), so it is never left pinned.
// Returns whether it moved: false where there is no other CPU to go to (a worker then stops
// trying).
inline bool move_off_cpu(int cpu) {
#if defined(__linux__) && defined(CPU_COUNT_S)
  const int ncpu = 1024;
  cpu_set_t* all = CPU_ALLOC(ncpu);
  cpu_set_t* other = CPU_ALLOC(ncpu);
  bool moved = false;
  if (all && other) {
    const std::size_t size = CPU_ALLOC_SIZE(ncpu);
    CPU_ZERO_S(size, all);
    if (pthread_getaffinity_np(pthread_self(), size, all) == 0 && cpu >= 0 && cpu < ncpu) {
      std::memcpy(other, all, size);
      CPU_CLR_S(static_cast<std::size_t>(cpu), size, other);
      if (CPU_COUNT_S(size, other) > 0 && pthread_setaffinity_np(pthread_self(), size, other) == 0) {
        moved = true;
        pthread_setaffinity_np(pthread_self(), size, all);
      }
    }
  }
  if (all) CPU_FREE(all);
  if (other) CPU_FREE(other);
  return moved;
#else
  (void)cpu;
  return false;
#endif
}

/// The CPU limit of a cgroup CPU quota, ceil(quota / period), or 0 when there is none.
/// `proc_cgroup` is the text of /proc/self/cgroup, `root` the cgroup mount (/sys/fs/cgroup).
/// Every ancestor of the process's cgroup counts (a parent's quota limits its children):
/// the smallest limit found wins. Reads v2 cpu.max ("max 100000" or "200000 100000") under
/// root and root/unified, and v1 cpu.cfs_quota_us / cpu.cfs_period_us (-1 = none) under
/// root/cpu, root/cpu,cpuacct and root/cpuacct,cpu.
inline int cgroup_cpu_limit(const std::string& proc_cgroup, const std::string& root) {
  auto read_first_line = [](const std::string& path, std::string& out) {
    std::ifstream f(path);
    return static_cast<bool>(f) && static_cast<bool>(std::getline(f, out));
  };
  auto to_ll = [](const std::string& s, long long& out) {
    if (s.empty()) return false;
    char* end = nullptr;
    errno = 0;
    out = std::strtoll(s.c_str(), &end, 10);
    return errno == 0 && end != s.c_str();
  };
  auto limit_of = [](long long quota, long long period) -> int {
    if (quota <= 0 || period <= 0) return 0;
    const long long n = (quota + period - 1) / period;
    return n < 1 ? 1 : (n > (1 << 20) ? (1 << 20) : static_cast<int>(n));
  };
  int best = 0;
  auto consider = [&](int n) {
    if (n > 0 && (best == 0 || n < best)) best = n;
  };
  // Every cgroup path of this process and its ancestors, "" being the mount root itself.
  auto for_each_ancestor = [](std::string path, const auto& fn) {
    while (!path.empty() && path.back() == '/') path.pop_back();
    for (;;) {
      fn(path);
      if (path.empty()) break;
      const std::size_t slash = path.rfind('/');
      path = slash == std::string::npos ? std::string() : path.substr(0, slash);
    }
  };
  std::size_t pos = 0;
  while (pos < proc_cgroup.size()) {
    std::size_t eol = proc_cgroup.find('\n', pos);
    if (eol == std::string::npos) eol = proc_cgroup.size();
    const std::string line = proc_cgroup.substr(pos, eol - pos);
    pos = eol + 1;
    const std::size_t c1 = line.find(':');
    const std::size_t c2 = c1 == std::string::npos ? std::string::npos : line.find(':', c1 + 1);
    if (c2 == std::string::npos) continue;
    const std::string controllers = line.substr(c1 + 1, c2 - c1 - 1);
    const std::string path = line.substr(c2 + 1);
    if (controllers.empty()) {  // cgroup v2 (unified hierarchy)
      for (const char* mount : {"", "/unified"}) {
        for_each_ancestor(path, [&](const std::string& p) {
          std::string text;
          if (!read_first_line(root + mount + p + "/cpu.max", text)) return;
          const std::size_t sp = text.find(' ');
          long long quota = 0, period = 100000;
          if (text.compare(0, 3, "max") == 0) return;
          if (!to_ll(text.substr(0, sp), quota)) return;
          if (sp != std::string::npos && !to_ll(text.substr(sp + 1), period)) return;
          consider(limit_of(quota, period));
        });
      }
      continue;
    }
    bool has_cpu = false;  // cgroup v1: is "cpu" among this hierarchy's controllers?
    for (std::size_t a = 0; a <= controllers.size();) {
      std::size_t b = controllers.find(',', a);
      if (b == std::string::npos) b = controllers.size();
      if (controllers.compare(a, b - a, "cpu") == 0) has_cpu = true;
      a = b + 1;
    }
    if (!has_cpu) continue;
    for (const char* mount : {"/cpu", "/cpu,cpuacct", "/cpuacct,cpu"}) {
      for_each_ancestor(path, [&](const std::string& p) {
        std::string q, t;
        long long quota = 0, period = 0;
        if (read_first_line(root + mount + p + "/cpu.cfs_quota_us", q) &&
            read_first_line(root + mount + p + "/cpu.cfs_period_us", t) && to_ll(q, quota) && to_ll(t, period))
          consider(limit_of(quota, period));
      });
    }
  }
  return best;
}

/// CPUs in this process's affinity mask (0 when unknown).
inline int affinity_cpu_count() {
#if defined(__linux__) && defined(CPU_COUNT_S)
  for (int ncpu = 1024; ncpu <= (1 << 16); ncpu *= 2) {
    cpu_set_t* set = CPU_ALLOC(ncpu);
    if (set == nullptr) return 0;
    const std::size_t size = CPU_ALLOC_SIZE(ncpu);
    CPU_ZERO_S(size, set);
    const int rc = sched_getaffinity(0, size, set);
    const int n = rc == 0 ? CPU_COUNT_S(size, set) : 0;
    const int err = errno;
    CPU_FREE(set);
    if (rc == 0) return n;
    if (err != EINVAL) return 0;  // EINVAL: the kernel's mask is larger than ours; retry
  }
#endif
  return 0;
}

/// The default number of threads: NABLAGRAD_NUM_THREADS if set to a positive integer, else
/// the CPUs of the affinity mask (or hardware_concurrency) capped by the cgroup CPU quota.
inline int default_num_threads(int max_threads) {
  if (const char* env = std::getenv("NABLAGRAD_NUM_THREADS")) {
    char* end = nullptr;
    const long v = std::strtol(env, &end, 10);
    if (end != env && *end == '\0' && v >= 1) return static_cast<int>(v < max_threads ? v : max_threads);
  }
  int n = affinity_cpu_count();
  if (n <= 0) n = static_cast<int>(std::thread::hardware_concurrency());
  if (n <= 0) n = 1;
#if defined(__linux__)
  std::ifstream f("/proc/self/cgroup");
  if (f) {
    std::string text, line;
    while (std::getline(f, line)) text += line + "\n";
    const int quota = cgroup_cpu_limit(text, "/sys/fs/cgroup");
    if (quota > 0 && quota < n) n = quota;
  }
#endif
  return n < max_threads ? n : max_threads;
}

}  // namespace detail

class ThreadPool {
 public:
  /// The process-wide pool. Its default size is detail::default_num_threads() (see above).
  static ThreadPool& instance() {
    static ThreadPool pool;
    return pool;
  }

  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;
  ~ThreadPool() {
    live().store(nullptr);
    stop_workers();
  }

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
    if (n == num_threads() && workers_running_) return;
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
    if (!workers_running_ && !restart_workers()) {   // first region after fork() failed to start threads
      for (int64_t i = 0; i < ntasks; ++i) fn(i);
      return;
    }
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
    if (!spin_until([&] { return job.pending.load(std::memory_order_acquire) == 0; })) {
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
    num_threads_.store(detail::default_num_threads(kMaxThreads), std::memory_order_relaxed);
    start_workers();
    live().store(this);
#if defined(NABLAGRAD_HAS_PTHREAD_ATFORK)
    pthread_atfork(nullptr, nullptr, [] {
      if (ThreadPool* pool = live().load()) pool->reset_after_fork();
    });
#endif
  }

  static std::atomic<ThreadPool*>& live() {
    static std::atomic<ThreadPool*> p{nullptr};
    return p;
  }

  // In a fork()ed child only the forking thread exists: the parent's workers are gone and
  // any lock they held stays held forever. The std::thread objects are forgotten without
  // their destructors (joinable ones would terminate, and join would wait forever); the
  // locks and condition variables are constructed afresh over the old ones (destroying a
  // condition variable with waiters would block). Workers start at the next region.
  void reset_after_fork() noexcept {
    // Moved (no destructors run) into static storage that is never destroyed: the parent's
    // thread handles stay reachable (no leak report) and are never joined.
    alignas(std::vector<std::thread>) static unsigned char orphans[sizeof(std::vector<std::thread>)];
    new (orphans) std::vector<std::thread>(std::move(workers_));
    workers_.clear();  // moved-from: already empty
    new (&run_mutex_) std::mutex();
    new (&mutex_) std::mutex();
    new (&wake_) std::condition_variable();
    new (&done_) std::condition_variable();
    current_ = nullptr;
    stopping_ = false;
    stopping_flag_.store(false);
    workers_running_ = false;
    in_task() = false;
  }

  // Under run_mutex_, with no workers: starts them, or falls back to one thread.
  bool restart_workers() {
    try {
      start_workers();
      return true;
    } catch (const std::system_error&) {
      stop_workers();
      num_threads_.store(1, std::memory_order_relaxed);
      workers_running_ = true;
      return false;
    }
  }

  // How long a thread spins before it sleeps: a worker after a region, the caller waiting for
  // the workers' chunks. Measured in time, not PAUSEs: a PAUSE takes ~10 ns on one CPU here
  // and ~40 on another, and 20000 of them (0.2 ms on the first) were too short. A worker that
  // sleeps between the regions of one training step has to be woken (~100 us) and, on VMs
  // whose scheduler packs lightly loaded threads onto one vCPU, was then run on the caller's
  // vCPU: both threads time-shared one CPU and a 2-thread convolution ran at 1-thread speed
  // (measured: 1x1 forward 0.72 -> 1.4 ms in 40% of the blocks that followed a 50 ms pause;
  // with 1 ms of spinning, 0.72 -> at most 0.77 in 75% of them). OpenMP runtimes spin for
  // longer (libgomp: 300000 PAUSEs).
  static constexpr int64_t kSpinNanoseconds = 1000000;

  // Spins (PAUSE) until done() or kSpinNanoseconds have passed; returns done().
  template <typename Done>
  static bool spin_until(const Done& done) {
    const auto start = std::chrono::steady_clock::now();
    for (;;) {
      for (int i = 0; i < 64; ++i) {  // the clock is read once per 64 PAUSEs (~1-3 us)
        if (done()) return true;
        cpu_relax();
      }
      if (std::chrono::steady_clock::now() - start > std::chrono::nanoseconds(kSpinNanoseconds)) return done();
    }
  }

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
    int caller_cpu = detail::current_cpu();  // where the region's caller runs (-1: unknown)
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
    bool may_move = true;  // false once move_off_cpu found no other CPU
    for (;;) {
      // Spin a little before sleeping: back-to-back regions (a GEMM's blocks, a training
      // step's ops) then start without a condition-variable wake-up (~100 us).
      spin_until([&] {
        return generation_.load(std::memory_order_acquire) != seen || stopping_flag_.load(std::memory_order_relaxed);
      });
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
        if (may_move && job->caller_cpu >= 0 && detail::current_cpu() == job->caller_cpu)
          may_move = detail::move_off_cpu(job->caller_cpu);
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
    workers_running_ = true;
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
  bool workers_running_ = false;  // false after fork() until the next region starts workers; under run_mutex_
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
