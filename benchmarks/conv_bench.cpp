// Times nablagrad's fast NHWC conv2d (float32): forward, and forward + backward
// (backward_input + backward_weight with the fused bias gradient), at 1 and 2 threads.
// Median of several repeats (the machine is shared), every SIMD level from AVX2 up that the CPU
// has, alternating round by round (the kernels of the levels compared in the same run), with
// the kernels chosen for each pass. The PyTorch comparison, in one run, is benchmarks/conv2d.py.
//
//   g++ -std=c++17 -O3 -pthread -I cpp/include benchmarks/conv_bench.cpp -o /tmp/conv_bench
//   /tmp/conv_bench [repeats]        (NG_THREADS=1 NG_CPUTIME=1: CPU time at 1 thread;
//                                     NG_LEVELS=avx2,avx512: the levels to compare)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
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

}  // namespace

int main(int argc, char** argv) {
  const int repeats = argc > 1 ? std::atoi(argv[1]) : 9;
  const Shape shapes[] = {{64, 28, 28, 1, 32, 3, 1, 1},    {32, 32, 32, 64, 64, 3, 1, 1},
                          {8, 56, 56, 64, 64, 3, 1, 1},    {16, 32, 32, 32, 64, 3, 2, 1},
                          {8, 64, 64, 3, 32, 7, 2, 3},     {16, 14, 14, 128, 256, 1, 1, 0},
                          {4, 96, 96, 16, 16, 5, 1, 2},    {32, 16, 16, 48, 96, 3, 1, 0}};
  // Every SIMD level from AVX2 up that the CPU has (or NG_LEVELS=portable,avx2,...), measured
  // in alternation round by round, so that the levels' kernels are compared in the same run.
  std::vector<nablagrad::SimdLevel> levels;
  if (const char* env = std::getenv("NG_LEVELS")) {
    std::string list = env;
    for (size_t pos = 0; pos <= list.size();) {
      const size_t end = std::min(list.find(',', pos), list.size());
      levels.push_back(nablagrad::parse_simd_level(list.substr(pos, end - pos)));
      pos = end + 1;
    }
  } else {
    for (int l = std::min<int>(1, static_cast<int>(nablagrad::cpu_simd_level()));
         l <= static_cast<int>(nablagrad::cpu_simd_level()); ++l)
      levels.push_back(static_cast<nablagrad::SimdLevel>(l));
  }
  std::printf("cpu simd=%s\n", nablagrad::simd_level_name(nablagrad::cpu_simd_level()));
  std::printf("%-28s %-8s %3s %9s %8s %9s %9s %11s %8s  %s\n", "shape (N,H,W,C->Q,F,S,P)", "simd",
              "thr", "fwd ms", "fwd GF/s", "bwd_in ms", "bwd_w ms", "fwd+bwd ms", "f+b GF/s",
              "kernels fwd / dX / dW");
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
      // times[level][pass] over rounds; each round runs every level once per pass.
      std::vector<std::vector<std::vector<double>>> times(levels.size(), std::vector<std::vector<double>>(3));
      for (int r = 0; r <= repeats; ++r)
        for (size_t li = 0; li < levels.size(); ++li) {
          nablagrad::set_simd_level(levels[li]);
          const double t0 = now_ms();
          conv2d_forward(g, x.data(), w.data(), b.data(), y.data());
          const double t1 = now_ms();
          conv2d_backward_input(g, dy.data(), w.data(), dx.data());
          const double t2 = now_ms();
          conv2d_backward_weight(g, x.data(), dy.data(), dw.data(), db.data());
          const double t3 = now_ms();
          if (r == 0) continue;  // warm-up round
          times[li][0].push_back(t1 - t0);
          times[li][1].push_back(t2 - t1);
          times[li][2].push_back(t3 - t2);
        }
      for (size_t li = 0; li < levels.size(); ++li) {
        nablagrad::set_simd_level(levels[li]);
        auto med = [](std::vector<double> v) {
          std::sort(v.begin(), v.end());
          return v[v.size() / 2];
        };
        const double fwd = med(times[li][0]), bin = med(times[li][1]), bw = med(times[li][2]);
        const double all = fwd + bin + bw;
        const ConvKernelChoice k = conv_kernel_choice<float>(g);
        char name[64];
        std::snprintf(name, sizeof name, "(%lld,%lld,%lld,%lld->%lld,%lld,%lld,%lld)",
                      (long long)s.N, (long long)s.H, (long long)s.W, (long long)s.C,
                      (long long)s.Q, (long long)s.F, (long long)s.S, (long long)s.P);
        std::printf("%-28s %-8s %3d %9.3f %8.1f %9.3f %9.3f %11.3f %8.1f  %s / %s / %s\n", name,
                    nablagrad::simd_level_name(levels[li]), threads, fwd, flops / fwd * 1e-6, bin,
                    bw, all, 3 * flops / all * 1e-6, k.forward, k.backward_input, k.backward_weight);
      }
    }
  }
  return 0;
}
