// nablagrad/kernels/simd.h - run-time choice of CPU-specific kernels.
//
// Kernels come in two variants: a portable one (plain C++, any CPU) and an AVX2+FMA one
// compiled with __attribute__((target("avx2,fma"))) so that the rest of the program needs
// no -mavx2 flag. `simd_level()` says which variant to run: AVX2 when the CPU has it,
// unless the user (or a test) asked for the portable path with set_simd_level() or the
// environment variable NABLAGRAD_SIMD=portable.
#pragma once

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

#if defined(__x86_64__) || defined(__i386__)
#define NABLAGRAD_X86 1
#include <immintrin.h>
#else
#define NABLAGRAD_X86 0
#endif

namespace nablagrad {

enum class SimdLevel : int { Portable = 0, AVX2 = 1 };

/// True when this CPU supports AVX2 and FMA.
inline bool cpu_has_avx2_fma() {
#if NABLAGRAD_X86 && (defined(__GNUC__) || defined(__clang__))
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
#else
  return false;
#endif
}

namespace detail {
inline std::atomic<int>& simd_level_setting() {
  static std::atomic<int> level{[] {
    const char* env = std::getenv("NABLAGRAD_SIMD");
    if (env != nullptr && std::strcmp(env, "portable") == 0) return 0;
    return cpu_has_avx2_fma() ? 1 : 0;
  }()};
  return level;
}
}  // namespace detail

/// The kernel variant in use.
inline SimdLevel simd_level() {
  return static_cast<SimdLevel>(detail::simd_level_setting().load(std::memory_order_relaxed));
}

/// Chooses the kernel variant (tests use it to run the portable fallback on an AVX2 CPU).
/// Asking for AVX2 on a CPU without it throws std::invalid_argument.
inline void set_simd_level(SimdLevel level) {
  if (level == SimdLevel::AVX2 && !cpu_has_avx2_fma())
    throw std::invalid_argument("set_simd_level: this CPU does not support AVX2+FMA");
  detail::simd_level_setting().store(static_cast<int>(level));
}

}  // namespace nablagrad
