// gemm_bench.cpp - GFLOP/s of kernels::gemm<float> (square, row-major, C = A*B) for tuning.
//
//   g++ -std=c++17 -O3 -pthread -I cpp/include benchmarks/gemm_bench.cpp -o /tmp/gemm_bench
//   /tmp/gemm_bench [sizes...]        (default: 256 512 1024 2048)
//
// For every size, thread count (1, 2) and simd level (portable, AVX2 when available) it
// prints the best of several repetitions (the machine may be shared: best is the stable
// statistic) and the median.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "nablagrad/kernels/gemm.h"

namespace {

struct Timing {
  double best_gflops, median_gflops;
};

Timing time_gemm(int64_t n) {
  std::vector<float> a(n * n), b(n * n), c(n * n);
  std::mt19937 rng(42);
  std::uniform_real_distribution<float> dist(-1.f, 1.f);
  for (auto& x : a) x = dist(rng);
  for (auto& x : b) x = dist(rng);
  const double flops = 2.0 * n * n * n;
  auto run = [&] {
    nablagrad::kernels::gemm<float>(n, n, n, a.data(), n, 1, b.data(), n, 1, c.data(), n, false);
  };
  run();  // warm-up: buffers, pool threads, caches
  // Enough repetitions for ~0.5 s per case, at least 3.
  const auto t0 = std::chrono::steady_clock::now();
  run();
  const double once = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const int reps = std::max(3, std::min(50, static_cast<int>(0.5 / std::max(once, 1e-6))));
  std::vector<double> gflops;
  for (int r = 0; r < reps; ++r) {
    const auto s = std::chrono::steady_clock::now();
    run();
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - s).count();
    gflops.push_back(flops / dt * 1e-9);
  }
  std::sort(gflops.begin(), gflops.end());
  return {gflops.back(), gflops[gflops.size() / 2]};
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int64_t> sizes;
  for (int i = 1; i < argc; ++i) sizes.push_back(std::atoll(argv[i]));
  if (sizes.empty()) sizes = {256, 512, 1024, 2048};
  std::vector<nablagrad::SimdLevel> levels = {nablagrad::SimdLevel::Portable};
  if (nablagrad::cpu_has_avx2_fma()) levels.push_back(nablagrad::SimdLevel::AVX2);
  std::printf("%-9s %6s %8s %12s %14s\n", "simd", "n", "threads", "best GF/s", "median GF/s");
  for (auto level : levels) {
    nablagrad::set_simd_level(level);
    for (int64_t n : sizes) {
      for (int threads : {1, 2}) {
        nablagrad::set_num_threads(threads);
        const Timing t = time_gemm(n);
        std::printf("%-9s %6lld %8d %12.1f %14.1f\n",
                    level == nablagrad::SimdLevel::AVX2 ? "avx2" : "portable",
                    static_cast<long long>(n), threads, t.best_gflops, t.median_gflops);
        std::fflush(stdout);
      }
    }
  }
  return 0;
}
