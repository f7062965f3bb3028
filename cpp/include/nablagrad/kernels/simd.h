// nablagrad/kernels/simd.h - run-time choice of CPU-specific kernels.
//
// Kernels come in up to three variants: a portable one (plain C++, any CPU), an AVX2+FMA one
// compiled with __attribute__((target("avx2,fma"))) and an AVX-512F one compiled with
// __attribute__((target("avx512f,avx2,fma"))), so that the rest of the program needs no -m
// flag. `simd_level()` says which variant to run: the best the CPU has, unless the user (or a
// test) asked for a lower one with set_simd_level() or the environment variable
// NABLAGRAD_SIMD=portable|avx2|avx512. Kernels test `simd_at_least(SimdLevel::AVX2)` so that a
// kernel without an AVX-512 variant runs its AVX2 one at the AVX-512 level.
#pragma once

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#if defined(__x86_64__) || defined(__i386__)
#define NABLAGRAD_X86 1
#include <immintrin.h>
#if defined(__GNUC__) || defined(__clang__)
#include <cpuid.h>
#endif
#else
#define NABLAGRAD_X86 0
#endif

namespace nablagrad {

enum class SimdLevel : int { Portable = 0, AVX2 = 1, AVX512 = 2 };

/// True when this CPU supports AVX2 and FMA.
inline bool cpu_has_avx2_fma() {
#if NABLAGRAD_X86 && (defined(__GNUC__) || defined(__clang__))
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
#else
  return false;
#endif
}

/// True when this CPU supports AVX-512F (and AVX2+FMA, which every AVX-512 CPU has).
inline bool cpu_has_avx512f() {
#if NABLAGRAD_X86 && (defined(__GNUC__) || defined(__clang__))
  static const bool has = cpu_has_avx2_fma() && __builtin_cpu_supports("avx512f");
  return has;
#else
  return false;
#endif
}

/// True when this CPU's AVX-512 units are 256 bits wide, taking a 512-bit multiply-add in two
/// halves: AMD Zen 4 (family 19h; Zen 3, the same family, has no AVX-512). Its 512-bit FMAs then
/// do no more lanes per cycle than its 256-bit ones (measured 113 vs 135 GFLOP/s per core:
/// the clock drops; ../shared/PERFORMANCE.md), so AVX-512 speeds kernels bound by
/// multiply-adds less than on CPUs with full-width units (Intel's, Zen 5), and shape rules
/// that weigh such kernels against memory-bound ones (Winograd's transforms) ask
/// avx512_half_rate().
inline bool cpu_avx512_half_rate() {
#if NABLAGRAD_X86 && (defined(__GNUC__) || defined(__clang__))
  static const bool half = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!cpu_has_avx512f() || !__get_cpuid(0, &a, &b, &c, &d)) return false;
    const bool amd = b == 0x68747541u && d == 0x69746e65u && c == 0x444d4163u;  // "AuthenticAMD"
    if (!amd || !__get_cpuid(1, &a, &b, &c, &d)) return false;
    const unsigned base = (a >> 8) & 0xfu, family = base == 0xfu ? base + ((a >> 20) & 0xffu) : base;
    return family == 0x19u;
  }();
  return half;
#else
  return false;
#endif
}

/// The best level this CPU supports.
inline SimdLevel cpu_simd_level() {
  if (cpu_has_avx512f()) return SimdLevel::AVX512;
  return cpu_has_avx2_fma() ? SimdLevel::AVX2 : SimdLevel::Portable;
}

/// "portable", "avx2" or "avx512".
inline const char* simd_level_name(SimdLevel level) {
  switch (level) {
    case SimdLevel::AVX512: return "avx512";
    case SimdLevel::AVX2: return "avx2";
    default: return "portable";
  }
}

/// Parses "portable", "avx2" or "avx512"; anything else throws std::invalid_argument.
inline SimdLevel parse_simd_level(const std::string& name) {
  if (name == "portable") return SimdLevel::Portable;
  if (name == "avx2") return SimdLevel::AVX2;
  if (name == "avx512") return SimdLevel::AVX512;
  throw std::invalid_argument("simd level must be 'portable', 'avx2' or 'avx512', got '" + name + "'");
}

namespace detail {
inline std::atomic<int>& simd_level_setting() {
  static std::atomic<int> level{[] {
    const int best = static_cast<int>(cpu_simd_level());
    const char* env = std::getenv("NABLAGRAD_SIMD");
    if (env == nullptr || *env == '\0') return best;
    int want = best;
    if (std::strcmp(env, "portable") == 0) want = 0;
    else if (std::strcmp(env, "avx2") == 0) want = 1;
    else if (std::strcmp(env, "avx512") == 0) want = 2;
    return want < best ? want : best;  // never above what the CPU has
  }()};
  return level;
}
}  // namespace detail

/// The kernel variant in use.
inline SimdLevel simd_level() {
  return static_cast<SimdLevel>(detail::simd_level_setting().load(std::memory_order_relaxed));
}

/// True when the kernel variant in use is `level` or a higher one.
inline bool simd_at_least(SimdLevel level) {
  return detail::simd_level_setting().load(std::memory_order_relaxed) >= static_cast<int>(level);
}

namespace detail {
inline std::atomic<bool>& avx512_half_rate_setting() {
  static std::atomic<bool> half{cpu_avx512_half_rate()};
  return half;
}
}  // namespace detail

/// Whether the shape rules take AVX-512 to run at half rate (cpu_avx512_half_rate, unless set).
/// Only the AVX-512 level asks it.
inline bool avx512_half_rate() { return detail::avx512_half_rate_setting().load(std::memory_order_relaxed); }

/// Sets what avx512_half_rate() answers (tests check the rules of both kinds of CPU anywhere).
inline void set_avx512_half_rate(bool half) { detail::avx512_half_rate_setting().store(half); }

/// Chooses the kernel variant (tests use it to run every level the CPU has). Asking for a
/// level the CPU does not support throws std::invalid_argument.
inline void set_simd_level(SimdLevel level) {
  if (static_cast<int>(level) > static_cast<int>(cpu_simd_level()))
    throw std::invalid_argument(std::string("set_simd_level: this CPU does not support ") +
                                simd_level_name(level));
  detail::simd_level_setting().store(static_cast<int>(level));
}

}  // namespace nablagrad
