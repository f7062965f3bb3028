// Shared autograd and pool state across threads. Run in the normal suite, and under
// ThreadSanitizer by tests/test_cpp_tsan.py (which fails on any report: a data race, or a
// lock-order inversion that could deadlock).
//
// 1. One thread reads, clears and replaces a leaf's .grad through detail::get_leaf_grad /
//    set_leaf_grad (what the Python getter and setter do) while another runs backward into
//    the same leaf. The "Python" thread holds a stand-in for the GIL while it does so, and the
//    gradients it assigns own memory whose deleter takes that stand-in (a NumPy array's owner
//    takes the GIL): if backward destroyed a replaced gradient while holding the leaf mutex,
//    the two locks would be taken in opposite orders (TSan reports it; a run can deadlock).
// 2. Two threads run backward into one leaf while a third reads it: no update is lost, and
//    every snapshot read is whole (all elements equal) and never smaller than the one before.
// 3. One thread writes a tensor in place (bumping its storage's version) while another runs
//    backward through graphs that saved it (reading the version).
// 4. Threads resize the pool and read its size while another runs parallel_for.
#include <nablagrad/nablagrad.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

#include "test_util.h"

using namespace nablagrad;

namespace {

// Fails the run instead of hanging when the threads deadlock.
class Watchdog {
 public:
  explicit Watchdog(const char* what, int seconds = 120)
      : thread_([this, what, seconds] {
          std::unique_lock<std::mutex> lock(mutex_);
          if (!cv_.wait_for(lock, std::chrono::seconds(seconds), [this] { return done_; })) {
            std::printf("DEADLOCK: %s did not finish within %d s\n", what, seconds);
            std::fflush(stdout);
            std::_Exit(3);
          }
        }) {}
  ~Watchdog() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      done_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  bool done_ = false;
  std::thread thread_;  // last: starts after the members it uses
};

// Lets the threads of a test start together, so their loops overlap.
class StartGate {
 public:
  explicit StartGate(int threads) : waiting_(threads) {}
  void arrive_and_wait() {
    waiting_.fetch_sub(1);
    while (waiting_.load() > 0) std::this_thread::yield();
  }

 private:
  std::atomic<int> waiting_;
};

// The stand-in for the GIL: re-entrant, as PyGILState_Ensure is.
std::recursive_mutex& fake_gil() {
  static std::recursive_mutex m;
  return m;
}

// A tensor whose memory is owned like a NumPy array shared with from_numpy: releasing it
// takes the fake GIL.
Tensor numpy_like(const Shape& shape, double value) {
  auto* buffer = new std::vector<double>(static_cast<std::size_t>(shape_numel(shape)), value);
  std::shared_ptr<void> owner(buffer, [](void* p) {
    std::lock_guard<std::recursive_mutex> gil(fake_gil());
    delete static_cast<std::vector<double>*>(p);
  });
  return Tensor::from_blob(buffer->data(), shape, contiguous_strides(shape), DType::Float64, std::move(owner));
}

Tensor make_leaf(const Shape& shape) {
  Tensor t = Tensor::zeros(shape, DType::Float64);
  t.impl().requires_grad = true;
  return t;
}

// The value every element of a gradient snapshot shares; -1 if the elements differ.
double uniform_value(const std::shared_ptr<TensorImpl>& g) {
  Tensor t(g);
  const double first = t.item_at(0);
  for (int64_t i = 1; i < t.numel(); ++i)
    if (t.item_at(i) != first) return -1;
  return first;
}

void test_grad_get_set_while_backward() {
  const Shape shape{16, 16};
  Tensor w = make_leaf(shape);
  const Tensor ones = Tensor::full(shape, 1.0, DType::Float64);
  const int kBackward = 300, kPython = 300;
  std::atomic<int> torn{0};
  Watchdog watchdog("grad get/set while backward");
  StartGate gate(2);
  std::thread backward_thread([&] {  // a Python thread inside Tensor.backward (GIL released)
    gate.arrive_and_wait();
    for (int i = 0; i < kBackward; ++i) backward(sum(mul(w, ones)));  // adds 1 to every element
  });
  std::thread python_thread([&] {  // a Python thread using .grad (GIL held)
    gate.arrive_and_wait();
    for (int i = 0; i < kPython; ++i) {
      std::lock_guard<std::recursive_mutex> gil(fake_gil());
      std::shared_ptr<TensorImpl> g = detail::get_leaf_grad(w.impl());
      if (g && uniform_value(g) < 0) ++torn;
      g.reset();
      if (i % 3 == 0) detail::set_leaf_grad(w.impl(), nullptr);
      else detail::set_leaf_grad(w.impl(), numpy_like(shape, 1000.0 * i).impl_ptr());
    }
  });
  backward_thread.join();
  python_thread.join();
  CHECK(torn.load() == 0);
  // Whatever the interleaving, the final gradient is whole: (last assigned value or 0) + the
  // backward passes that came after it.
  std::shared_ptr<TensorImpl> g = detail::get_leaf_grad(w.impl());
  if (g) {
    const double v = uniform_value(g);
    CHECK(v >= 0);
    CHECK(v <= 1000.0 * (kPython - 1) + kBackward);
  }
  detail::set_leaf_grad(w.impl(), nullptr);
  // Once the threads are gone, backward accumulates as usual into an assigned gradient.
  detail::set_leaf_grad(w.impl(), numpy_like(shape, 5.0).impl_ptr());
  backward(sum(mul(w, ones)));
  CHECK(uniform_value(detail::get_leaf_grad(w.impl())) == 6.0);
}

void test_no_lost_updates() {
  const Shape shape{8, 8};
  Tensor w = make_leaf(shape);
  const Tensor ones = Tensor::full(shape, 1.0, DType::Float64);
  const int kPerThread = 200;
  std::atomic<bool> running{true};
  std::atomic<int> bad_snapshots{0};
  Watchdog watchdog("concurrent backward");
  StartGate gate(3);
  auto run = [&] {
    gate.arrive_and_wait();
    for (int i = 0; i < kPerThread; ++i) backward(sum(mul(w, ones)));
  };
  std::thread reader([&] {
    gate.arrive_and_wait();
    double last = 0;
    while (running.load()) {
      std::shared_ptr<TensorImpl> g = detail::get_leaf_grad(w.impl());
      if (!g) continue;
      const double v = uniform_value(g);
      if (v < last) ++bad_snapshots;  // torn (-1) or going backwards
      last = v;
    }
  });
  std::thread a(run), b(run);
  a.join();
  b.join();
  running = false;
  reader.join();
  CHECK(bad_snapshots.load() == 0);
  CHECK(uniform_value(detail::get_leaf_grad(w.impl())) == 2.0 * kPerThread);
}

void test_version_read_while_written() {
  Tensor w = make_leaf({32});
  Tensor x = Tensor::full({32}, 2.0, DType::Float64);  // saved by mul's backward
  const int kIters = 300;
  std::atomic<int> refused{0}, done{0};
  Watchdog watchdog("in-place writes while backward");
  StartGate gate(2);
  std::thread writer([&] {
    gate.arrive_and_wait();
    for (int i = 0; i < kIters; ++i) x.bump_version();  // what every in-place op does
  });
  std::thread trainer([&] {
    gate.arrive_and_wait();
    for (int i = 0; i < kIters; ++i) {
      try {
        backward(sum(mul(w, x)));
        ++done;
      } catch (const std::runtime_error&) {  // x was written between the op and backward
        ++refused;
      }
    }
  });
  writer.join();
  trainer.join();
  CHECK(done.load() + refused.load() == kIters);
  CHECK(x.version() >= static_cast<uint64_t>(kIters));
}

void test_pool_resized_while_running() {
  const int original = get_num_threads();
  std::atomic<bool> running{true};
  std::atomic<int> wrong{0}, wrong_count{0};
  Watchdog watchdog("set_num_threads while parallel_for runs");
  std::thread worker([&] {
    std::vector<int64_t> out(4096);
    for (int rep = 0; rep < 200; ++rep) {
      std::fill(out.begin(), out.end(), 0);
      parallel_for(0, static_cast<int64_t>(out.size()), 64, [&](int64_t lo, int64_t hi) {
        for (int64_t i = lo; i < hi; ++i) out[static_cast<std::size_t>(i)] += i * 3 + rep;
      });
      for (std::size_t i = 0; i < out.size(); ++i)
        if (out[i] != static_cast<int64_t>(i) * 3 + rep) ++wrong;
    }
    running = false;
  });
  std::thread resizer([&] {
    int n = 1;
    while (running.load()) {
      set_num_threads(n);
      n = n % 3 + 1;
      std::this_thread::yield();
    }
  });
  std::thread reader([&] {
    while (running.load()) {
      const int n = get_num_threads();
      if (!(n >= 1 && n <= 3) && n != original) ++wrong_count;
    }
  });
  worker.join();
  resizer.join();
  reader.join();
  CHECK(wrong.load() == 0);
  CHECK(wrong_count.load() == 0);

  // Resizing from inside a task would wait for its own region to end: refused, not a hang.
  set_num_threads(2);
  std::atomic<int> refused{0};
  parallel_for(0, 64, 1, [&](int64_t, int64_t) {
    try {
      set_num_threads(3);
    } catch (const std::runtime_error&) {
      ++refused;
    }
  });
  CHECK(refused.load() == 2);  // both chunks
  CHECK(get_num_threads() == 2);
  set_num_threads(original);
  CHECK(get_num_threads() == original);
}

}  // namespace

int main() {
  test_grad_get_set_while_backward();
  test_no_lost_updates();
  test_version_read_while_written();
  test_pool_resized_while_running();
  return test_util::finish();
}
