// Times nablagrad's fast NHWC conv2d (float32): forward, and forward + backward
// (backward_input + backward_weight with the fused bias gradient), at 1 and 2 threads.
// Median of several repeats (the machine is shared). The PyTorch comparison, in one run, is benchmarks/conv2d.py.
//
//   g++ -std=c++17 -O3 -pthread -I cpp/include benchmarks/conv_bench.cpp -o /tmp/conv_bench
//   /tmp/conv_bench [repeats]        (NG_THREADS=1 NG_CPUTIME=1: CPU time at 1 thread)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <ctime>
#include <vector>

#include "nablagrad/kernels/conv2d.h"

using namespace nablagrad::kernels;

namespace {
struct Shape { int64_t N, H, W, C, Q, F, S, P; };

// Wall clock, or with NG_CPUTIME=1 the process CPU time (less sensitive to other users'
// load on a shared machine; meaningful for 1 thread only).
double now_ms() {
  static const bool cpu = std::getenv("NG_CPUTIME") != nullptr;
  if (cpu) {
    timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
  }
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

template <typename F>
double median_ms(int repeats, const F& fn) {
  fn();  // warm-up
  std::vector<double> t;
  for (int r = 0; r < repeats; ++r) {
    const double t0 = now_ms();
    fn();
    t.push_back(now_ms() - t0);
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}
}  // namespace

int main(int argc, char** argv) {
  const int repeats = argc > 1 ? std::atoi(argv[1]) : 9;
  const Shape shapes[] = {{64, 28, 28, 1, 32, 3, 1, 1},
                          {32, 32, 32, 64, 64, 3, 1, 1},
                          {8, 56, 56, 64, 64, 3, 1, 1},
                          {16, 32, 32, 32, 64, 3, 2, 1},
                          {8, 64, 64, 3, 32, 7, 2, 3}};
  std::printf("simd=%s\n", nablagrad::simd_level() == nablagrad::SimdLevel::AVX2 ? "avx2" : "portable");
  std::printf("%-28s %3s %9s %8s %9s %9s %11s %8s\n", "shape (N,H,W,C->Q,F,S,P)", "thr",
              "fwd ms", "fwd GF/s", "bwd_in ms", "bwd_w ms", "fwd+bwd ms", "f+b GF/s");
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> dist(-1.f, 1.f);
  for (const Shape& s : shapes) {
    auto g = make_conv2d_geometry(s.N, s.H, s.W, s.C, s.Q, s.F, s.F, s.C, s.S, s.S, s.P, s.P,
                                  s.P, s.P);
    std::vector<float> x(g.N * g.H * g.W * g.C), w(g.Q * g.FH * g.FW * g.C), b(g.Q),
        y(g.N * g.Ho * g.Wo * g.Q), dy(y.size()), dx(x.size()), dw(w.size()), db(g.Q);
    for (auto* v : {&x, &w, &b, &dy})
      for (auto& e : *v) e = dist(rng);
    const double flops = 2.0 * g.N * g.Ho * g.Wo * g.Q * g.FH * g.FW * g.C;
    const char* thr_env = std::getenv("NG_THREADS");
    std::vector<int> thread_counts{1, 2};
    if (thr_env) thread_counts = {std::atoi(thr_env)};
    for (int threads : thread_counts) {
      nablagrad::set_num_threads(threads);
      const double fwd = median_ms(repeats, [&] { conv2d_forward(g, x.data(), w.data(), b.data(), y.data()); });
      const double bin = median_ms(repeats, [&] { conv2d_backward_input(g, dy.data(), w.data(), dx.data()); });
      const double bw = median_ms(repeats, [&] { conv2d_backward_weight(g, x.data(), dy.data(), dw.data(), db.data()); });
      const double all = median_ms(repeats, [&] {
        conv2d_forward(g, x.data(), w.data(), b.data(), y.data());
        conv2d_backward_input(g, dy.data(), w.data(), dx.data());
        conv2d_backward_weight(g, x.data(), dy.data(), dw.data(), db.data());
      });
      char name[64];
      std::snprintf(name, sizeof name, "(%lld,%lld,%lld,%lld->%lld,%lld,%lld,%lld)",
                    (long long)s.N, (long long)s.H, (long long)s.W, (long long)s.C,
                    (long long)s.Q, (long long)s.F, (long long)s.S, (long long)s.P);
      std::printf("%-28s %3d %9.3f %8.1f %9.3f %9.3f %11.3f %8.1f\n", name, threads, fwd,
                  flops / fwd * 1e-6, bin, bw, all, 3 * flops / all * 1e-6);
    }
  }
  return 0;
}
