// nablagrad/random.h - the seeded random generator behind rand, randn and dropout.
//
// One process-wide xoshiro256** generator, seeded by manual_seed(s) (default seed 0 at
// start-up, so programs are reproducible unless they seed otherwise). Numbers are drawn
// sequentially on the calling thread, so results never depend on the thread count.
#pragma once

#include <cmath>
#include <cstdint>
#include <mutex>

#include "tensor.h"

namespace nablagrad {

class Generator {
 public:
  explicit Generator(uint64_t seed = 0) { seed_with(seed); }

  void seed_with(uint64_t seed) {
    uint64_t x = seed;
    for (uint64_t& s : state_) {  // splitmix64 expands the seed
      x += 0x9E3779B97F4A7C15ull;
      uint64_t z = x;
      z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
      z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
      s = z ^ (z >> 31);
    }
  }

  /// Reseeds and forgets the cached normal value.
  void reset(uint64_t seed) {
    seed_with(seed);
    has_spare_ = false;
  }

  uint64_t next_u64() {
    const uint64_t result = rotl(state_[1] * 5, 7) * 9;
    const uint64_t t = state_[1] << 17;
    state_[2] ^= state_[0];
    state_[3] ^= state_[1];
    state_[1] ^= state_[2];
    state_[0] ^= state_[3];
    state_[2] ^= t;
    state_[3] = rotl(state_[3], 45);
    return result;
  }

  /// Uniform in [0, 1) with 53 random bits.
  double uniform() { return static_cast<double>(next_u64() >> 11) * (1.0 / 9007199254740992.0); }

  /// Standard normal (Box-Muller; both values of a pair are used).
  double normal() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    double u1 = uniform();
    while (u1 <= 0.0) u1 = uniform();
    const double u2 = uniform();
    const double r = std::sqrt(-2.0 * std::log(u1));
    const double th = 6.283185307179586476925 * u2;
    spare_ = r * std::sin(th);
    has_spare_ = true;
    return r * std::cos(th);
  }

  std::mutex& mutex() { return mutex_; }

 private:
  static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  uint64_t state_[4] = {0, 0, 0, 0};
  double spare_ = 0.0;
  bool has_spare_ = false;
  std::mutex mutex_;
};

/// The process-wide generator. fork(): its lock is taken around fork() and released on
/// both sides, so a child never inherits it held by another thread; the child continues
/// the parent's stream (as NumPy and PyTorch do: reseed in the child for distinct streams).
inline Generator& default_generator() {
  static Generator& gen = *[] {
    // The block cache registers its fork handlers first, so its prepare handler runs after
    // ours: the locks are taken generator -> cache, the order of code that allocates while
    // holding the generator.
    BlockCache::instance();
    static Generator g(0);
#if defined(__unix__) || defined(__APPLE__)
    pthread_atfork([] { default_generator().mutex().lock(); }, [] { default_generator().mutex().unlock(); },
                   [] { default_generator().mutex().unlock(); });
#endif
    return &g;
  }();
  return gen;
}

/// Reseeds the default generator.
inline void manual_seed(uint64_t seed) {
  Generator& g = default_generator();
  std::lock_guard<std::mutex> lock(g.mutex());
  g.reset(seed);
}

/// Uniform [0, 1) tensor of a float dtype.
inline Tensor rand(const Shape& shape, DType dtype = DType::Float32) {
  Tensor t = Tensor::empty(shape, dtype);
  Generator& g = default_generator();
  std::lock_guard<std::mutex> lock(g.mutex());
  dispatch_float(dtype, "rand", [&](auto tag) {
    using T = typename decltype(tag)::type;
    T* p = t.data<T>();
    for (int64_t i = 0, n = t.numel(); i < n; ++i) {
      T v = static_cast<T>(g.uniform());
      if (v >= T(1)) v = std::nextafter(T(1), T(0));  // float rounding must not reach 1
      p[i] = v;
    }
  });
  return t;
}

/// Standard normal tensor of a float dtype.
inline Tensor randn(const Shape& shape, DType dtype = DType::Float32) {
  Tensor t = Tensor::empty(shape, dtype);
  Generator& g = default_generator();
  std::lock_guard<std::mutex> lock(g.mutex());
  dispatch_float(dtype, "randn", [&](auto tag) {
    using T = typename decltype(tag)::type;
    T* p = t.data<T>();
    for (int64_t i = 0, n = t.numel(); i < n; ++i) p[i] = static_cast<T>(g.normal());
  });
  return t;
}

}  // namespace nablagrad
