// The thread pool's process-level behaviour: the default thread count (cgroup CPU quotas
// read from a fake cgroup tree, the affinity mask), fork() with live workers, and a pool
// that survives many throwing regions and resizes between them.
#include <nablagrad/nablagrad.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <initializer_list>
#include <cstring>
#include <fstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test_util.h"

using namespace nablagrad;

namespace {

std::string make_tree() {
  char tmpl[] = "/tmp/ng_cgroup_XXXXXX";
  const char* dir = mkdtemp(tmpl);
  return dir ? std::string(dir) : std::string();
}

void mkdirs(const std::string& path) {
  std::string cur;
  for (std::size_t i = 0; i <= path.size(); ++i) {
    if (i == path.size() || (path[i] == '/' && i > 0)) {
      cur = path.substr(0, i);
      mkdir(cur.c_str(), 0755);
    }
  }
}

void write(const std::string& path, const std::string& text) {
  std::ofstream(path) << text;
}

void rm_rf(const std::string& path) {
  if (path.rfind("/tmp/ng_cgroup_", 0) != 0) return;
  const std::string cmd = "rm -rf '" + path + "'";
  if (std::system(cmd.c_str()) != 0) std::printf("could not remove %s\n", path.c_str());
}

}  // namespace

void test_cgroup_v2() {
  const std::string root = make_tree();
  CHECK(!root.empty());
  mkdirs(root + "/kubepods/pod1/ctr");
  write(root + "/cpu.max", "max 100000\n");
  write(root + "/kubepods/cpu.max", "max 100000\n");
  write(root + "/kubepods/pod1/cpu.max", "250000 100000\n");  // 2.5 CPUs -> 3
  write(root + "/kubepods/pod1/ctr/cpu.max", "max 100000\n");
  CHECK(detail::cgroup_cpu_limit("0::/kubepods/pod1/ctr\n", root) == 3);
  write(root + "/kubepods/pod1/ctr/cpu.max", "50000 100000\n");  // half a CPU -> at least 1
  CHECK(detail::cgroup_cpu_limit("0::/kubepods/pod1/ctr\n", root) == 1);
  CHECK(detail::cgroup_cpu_limit("0::/\n", root) == 0);             // "max": no limit
  CHECK(detail::cgroup_cpu_limit("0::/elsewhere\n", root) == 0);    // missing files: no limit
  write(root + "/cpu.max", "400000 100000\n");                      // a namespaced container's own root
  CHECK(detail::cgroup_cpu_limit("0::/\n", root) == 4);
  CHECK(detail::cgroup_cpu_limit("garbage\n\n0:\n", root) == 0);
  rm_rf(root);
}

void test_cgroup_v1() {
  const std::string root = make_tree();
  CHECK(!root.empty());
  mkdirs(root + "/cpu,cpuacct/docker/abc");
  write(root + "/cpu,cpuacct/cpu.cfs_quota_us", "-1\n");
  write(root + "/cpu,cpuacct/cpu.cfs_period_us", "100000\n");
  write(root + "/cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "150000\n");  // 1.5 CPUs -> 2
  write(root + "/cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000\n");
  const std::string proc = "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/docker/abc\n";
  CHECK(detail::cgroup_cpu_limit(proc, root) == 2);
  CHECK(detail::cgroup_cpu_limit("4:cpuacct:/docker/abc\n", root) == 0);  // not the cpu controller
  write(root + "/cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "-1\n");
  CHECK(detail::cgroup_cpu_limit(proc, root) == 0);
  rm_rf(root);
}

void test_default_num_threads() {
  const int n = detail::default_num_threads(ThreadPool::kMaxThreads);
  CHECK(n >= 1);
  const int aff = detail::affinity_cpu_count();
  if (aff > 0) CHECK(n <= aff);
  CHECK(detail::default_num_threads(1) == 1);
}

// move_off_cpu (a pool worker that finds itself on its caller's CPU leaves it): the thread
// ends up off that CPU where it may run elsewhere, with its affinity mask as it was (never
// left pinned); with a single allowed CPU it reports that it cannot move and changes nothing.
void test_move_off_cpu() {
#if defined(__linux__) && defined(CPU_COUNT_S)
  auto mask = [] {
    cpu_set_t set;
    CPU_ZERO(&set);
    CHECK(pthread_getaffinity_np(pthread_self(), sizeof(set), &set) == 0);
    return set;
  };
  std::thread([&] {
    const cpu_set_t before = mask();
    const int allowed = CPU_COUNT(&before);
    int moved_off = 0;
    for (int i = 0; i < 5; ++i) {
      const int cpu = detail::current_cpu();
      const bool moved = detail::move_off_cpu(cpu);
      CHECK(moved == (allowed > 1));
      if (detail::current_cpu() != cpu) ++moved_off;
      const cpu_set_t after = mask();
      CHECK(CPU_EQUAL(&before, &after));
    }
    if (allowed > 1) CHECK(moved_off >= 1);  // the kernel migrates at once; allow a move back
    // Pinned to one CPU: nowhere to go, and the mask stays.
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(detail::current_cpu(), &one);
    CHECK(pthread_setaffinity_np(pthread_self(), sizeof(one), &one) == 0);
    CHECK(!detail::move_off_cpu(detail::current_cpu()));
    const cpu_set_t still = mask();
    CHECK(CPU_EQUAL(&one, &still));
  }).join();
  // The pool still runs regions on every thread count afterwards.
  for (int n = 1; n <= 3; ++n) {
    set_num_threads(n);
    std::atomic<int64_t> total{0};
    parallel_for(0, 1000, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) total += i;
    });
    CHECK(total.load() == int64_t{1000} * 999 / 2);
  }
  set_num_threads(2);
#endif
}

// Each region throws from some chunks; the pool keeps working, at every size, and resizing
// between regions never loses or repeats a chunk.
void test_pool_survives_throws_and_resizes() {
  for (int round = 0; round < 50; ++round) {
    const int n = 1 + round % 4;
    set_num_threads(n);
    CHECK(get_num_threads() == n);
    CHECK_THROWS(parallel_for(0, 64, 1, [&](int64_t lo, int64_t hi) {
                   for (int64_t i = lo; i < hi; ++i)
                     if (i % 7 == round % 7) throw std::runtime_error("kernel failure");
                 }),
                 std::runtime_error);
    std::atomic<int64_t> total{0};
    parallel_for(0, 10000, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) total += i;
    });
    CHECK(total.load() == int64_t{10000} * 9999 / 2);
  }
  set_num_threads(2);
}

// fork() with live workers, also while another thread is inside parallel regions: the child
// runs regions on fresh workers (a hang here would be killed by the alarm and fail).
void test_fork_child_gets_a_working_pool() {
  if (std::getenv("NABLAGRAD_TEST_NO_FORK")) {  // ThreadSanitizer cannot follow a multi-threaded fork
    std::printf("fork test skipped (NABLAGRAD_TEST_NO_FORK)\n");
    return;
  }
  set_num_threads(3);
  Tensor a = randn({128, 96});
  Tensor b = randn({96, 64});
  const Tensor expected = matmul(a, b);
  std::atomic<bool> stop{false};
  std::thread busy([&] {
    Tensor x = randn({200, 200});
    while (!stop.load()) {
      Tensor y = matmul(x, x);
      Tensor r = rand({64, 1024});  // 256 KiB: the block cache, under the generator lock
      (void)y;
      (void)r;
    }
  });
  for (int i = 0; i < 8; ++i) {
    const pid_t pid = fork();
    if (pid == 0) {
      alarm(60);
      int ok = 1;
      for (int threads : {3, 2, 4}) {
        set_num_threads(threads);
        const Tensor got = matmul(a, b);
        ok &= std::memcmp(got.raw_data(), expected.raw_data(), static_cast<std::size_t>(got.numel()) * 4) == 0;
        Tensor w = Tensor::full({64}, 0.5).requires_grad_();
        Tensor loss = (matmul(a, b) * w).sum();
        loss.backward();
        ok &= w.grad().defined();
        Tensor r = rand({64, 1024});
        ok &= r.numel() == 64 * 1024;
      }
      _exit(ok ? 0 : 3);
    }
    CHECK(pid > 0);
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0))
      std::printf("fork child %d: status %d (signal %d)\n", i, status, WIFSIGNALED(status) ? WTERMSIG(status) : 0);
  }
  stop.store(true);
  busy.join();
  const Tensor again = matmul(a, b);  // the parent's pool is untouched
  CHECK(std::memcmp(again.raw_data(), expected.raw_data(), static_cast<std::size_t>(again.numel()) * 4) == 0);
  set_num_threads(2);
}

namespace {

struct SeqModel {  // an LSTM feeding self-attention
  explicit SeqModel(uint64_t seed) : lstm(seeded(seed, 8), 32), mha(32, 4) {}
  static int64_t seeded(uint64_t seed, int64_t v) {  // seeds the generator before the members initialise
    manual_seed(seed);
    return v;
  }
  Tensor forward(const Tensor& x) {
    const Tensor h = lstm.forward(x);
    return mha.forward(h, h, h, nn::MultiHeadAttentionForwardOptions().need_weights(false).is_causal(true)).first;
  }
  std::vector<Tensor> grads(const Tensor& x) {
    lstm.zero_grad();
    mha.zero_grad();
    forward(x).sum().backward();
    std::vector<Tensor> out;
    for (auto* layer : std::initializer_list<nn::Layer*>{&lstm, &mha})
      for (const Tensor& p : layer->parameters()) out.push_back(p.grad());
    return out;
  }
  nn::LSTM lstm;
  nn::MultiHeadAttention mha;
};

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.defined() && b.defined() && a.shape() == b.shape() && a.dtype() == b.dtype() &&
         std::memcmp(a.raw_data(), b.raw_data(), static_cast<std::size_t>(a.numel()) * dtype_size(a.dtype())) == 0;
}

}  // namespace

// Three threads run inference on one recurrent + attention model (no grad) while a fourth
// trains (forward + backward) another: every result equals the one computed alone.
void test_concurrent_inference_and_training() {
  set_num_threads(2);
  SeqModel shared(3), trained(4);
  manual_seed(5);
  const Tensor x = randn({4, 10, 8});
  Tensor ref;
  {
    NoGradGuard g;
    ref = shared.forward(x);
  }
  const std::vector<Tensor> ref_grads = trained.grads(x);
  std::vector<int> ok(4, 1);
  std::vector<std::thread> threads;
  for (int t = 0; t < 3; ++t)
    threads.emplace_back([&, t] {
      NoGradGuard g;
      for (int rep = 0; rep < 6; ++rep) ok[t] &= same_bits(shared.forward(x), ref);
    });
  threads.emplace_back([&] {
    for (int rep = 0; rep < 3; ++rep) {
      const std::vector<Tensor> g = trained.grads(x);
      ok[3] &= g.size() == ref_grads.size();
      for (std::size_t i = 0; i < g.size() && i < ref_grads.size(); ++i) ok[3] &= same_bits(g[i], ref_grads[i]);
    }
  });
  for (auto& th : threads) th.join();
  for (int t = 0; t < 4; ++t) CHECK(ok[t] == 1);
}

int main() {
  test_concurrent_inference_and_training();
  test_cgroup_v2();
  test_cgroup_v1();
  test_default_num_threads();
  test_move_off_cpu();
  test_pool_survives_throws_and_resizes();
  test_fork_child_gets_a_working_pool();
  return test_util::finish();
}
