// nablagrad/kernels/vec.h - the vector types that the kernels written once over a vector type
// take: gemm.h's register tiles (gemm_kernel.inc), the conv kernels (conv2d/: tile_kernel.inc
// and small_c_kernel.inc in microkernel.h, narrow_kernel.inc in narrow.h,
// winograd_transforms.inc in winograd.h) and the AVX-512-only stride-1 kernels of
// microkernel.h. One per instruction set and type: VecPortable<T, W> (any
// power-of-two width: the narrow kernels take 4 lanes, Winograd 1 and 32 bytes' worth),
// VecAvx2F/D, VecAvx512F/D, each with W lanes in a VT and
//   zero, load, load_n (the first n < W values, the rest zero, nothing read past them),
//   bcast, store, fma (a b + c; one rounding on the AVX types), add, and sum (the lanes, in a
//   fixed order);
// all also sub, madd (a k + b for a scalar k; one rounding on the AVX types) and mul (by a
// scalar);
// the float AVX types also first(n) (the mask of the first n lanes), load_n_strided(p, stride,
// n) (n <= W lanes p[j * stride], zeros past them) and store_n(p, a, n) (the first n lanes).
// Each AVX member that takes or returns a vector carries its instruction set's target
// attribute (NABLAGRAD_VEC_AVX2, NABLAGRAD_VEC_AVX512), as must every function that holds them.
// Beside them PortableTile<T, MR, NR>, the portable level's register tile (gemm.h's and the conv
// kernels' portable micro-kernels) in 16-byte vectors of GCC's vector extension.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "nablagrad/kernels/simd.h"

namespace nablagrad {
namespace kernels {

// The portable vector: Wp lanes in an array, each operation a loop over them that the compiler
// may vectorise. fma and madd round twice (a product, then a sum), as scalar code does.
template <typename Tp, int Wp>
struct VecPortable {
  using T = Tp;
  static constexpr int W = Wp;
  static_assert(W > 0 && (W & (W - 1)) == 0, "sum pairs lanes: W is a power of two");
  struct VT {
    T v[W];
  };
  static VT zero() { return {}; }
  static VT load(const T* p) {
    VT r;
    for (int l = 0; l < W; ++l) r.v[l] = p[l];
    return r;
  }
  static VT load_n(const T* p, int64_t n) {
    VT r{};
    for (int l = 0; l < n; ++l) r.v[l] = p[l];
    return r;
  }
  static VT bcast(const T* p) {
    VT r;
    for (int l = 0; l < W; ++l) r.v[l] = *p;
    return r;
  }
  static void store(T* p, const VT& a) {
    for (int l = 0; l < W; ++l) p[l] = a.v[l];
  }
  static VT fma(const VT& a, const VT& b, VT c) {
    for (int l = 0; l < W; ++l) c.v[l] += a.v[l] * b.v[l];
    return c;
  }
  static VT add(VT a, const VT& b) {
    for (int l = 0; l < W; ++l) a.v[l] += b.v[l];
    return a;
  }
  static VT sub(VT a, const VT& b) {
    for (int l = 0; l < W; ++l) a.v[l] -= b.v[l];
    return a;
  }
  static VT madd(VT a, T k, const VT& b) {  // a k + b
    for (int l = 0; l < W; ++l) a.v[l] = a.v[l] * k + b.v[l];
    return a;
  }
  static VT mul(VT a, T k) {
    for (int l = 0; l < W; ++l) a.v[l] *= k;
    return a;
  }
  // Adjacent lanes in pairs, then pairs of those: (v0 + v1) + (v2 + v3) for 4 lanes.
  static T sum(VT a) {
    for (int n = W; n > 1; n /= 2)
      for (int l = 0; l < n / 2; ++l) a.v[l] = a.v[2 * l] + a.v[2 * l + 1];
    return a.v[0];
  }
};

// The portable register tile (gemm.h's and the conv kernels' portable micro-kernels): MR x NR
// sums of T held as MR x NR/L vectors of 16 bytes (GCC's vector extension: SSE2 or NEON
// registers, whichever the CPU has), a depth step adding a_i * b[j] to sum (i, j) by one
// multiplication and one addition, as scalar code does. Plain loops over i and j let GCC 12
// choose the vectors, and where a step's MR values of A lie together (the kernel gradient's
// columns) or a_rs apart (the direct kernel) it vectorised across them: shuffles, and the tile
// through the stack. x86-64 baseline, one thread, GFLOP/s, plain loops -> this tile: the
// conv kernel gradient's column kernel 2.1-2.5 -> 25-31 (float), 2.5-3.0 -> 13-15 (double);
// the indirect kernel 22-24 -> 32-35, 4.0-4.7 -> 16; the forward of (64,14,14,6->16, 5x5),
// direct kernel, 2 threads, 7.7 -> 0.57 ms.
template <typename T, int MR, int NR>
struct PortableTile {
  static constexpr int L = 16 / static_cast<int>(sizeof(T)), NV = NR / L;
  static_assert(NR % L == 0, "PortableTile: whole 16-byte vectors");
  typedef T VT __attribute__((vector_size(16)));
  VT acc[MR][NV];
  PortableTile() {
    for (int i = 0; i < MR; ++i)
      for (int v = 0; v < NV; ++v) acc[i][v] = VT{};
  }
  static VT load(const T* p) {
    VT r;
    std::memcpy(&r, p, sizeof(r));
    return r;
  }
  static void store(T* p, const VT& a) { std::memcpy(p, &a, sizeof(a)); }
  // Sum (i, j) += a[i] * b[j] for i < MR, j < NR: one depth step.
  void step(const T (&a)[MR], const T* b) {
    VT bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = load(b + v * L);
    for (int i = 0; i < MR; ++i) {
      const VT ai = a[i] - VT{};  // a[i] in every lane (x - 0 is x, -0 and NaN too)
      for (int v = 0; v < NV; ++v) acc[i][v] += ai * bv[v];
    }
  }
  // c[i*ldc + j] += sum (i, j).
  void add_to(T* c, int64_t ldc) const {
    for (int i = 0; i < MR; ++i)
      for (int v = 0; v < NV; ++v) store(c + i * ldc + v * L, load(c + i * ldc + v * L) + acc[i][v]);
  }
  // out[i*ldo + j] = sum (i, j) (+ bias[j]): the direct and indirect kernels' stores.
  void store_to(T* out, int64_t ldo, const T* bias) const {
    for (int i = 0; i < MR; ++i)
      for (int v = 0; v < NV; ++v) store(out + i * ldo + v * L, bias ? acc[i][v] + load(bias + v * L) : acc[i][v]);
  }
};

#if NABLAGRAD_X86
#define NABLAGRAD_VEC_AVX2 __attribute__((target("avx2,fma")))
#define NABLAGRAD_VEC_AVX512 __attribute__((target("avx512f,avx2,fma")))
struct VecAvx2F {
  using T = float;
  using VT = __m256;
  static constexpr int W = 8;
  NABLAGRAD_VEC_AVX2 static VT zero() { return _mm256_setzero_ps(); }
  NABLAGRAD_VEC_AVX2 static VT load(const T* p) { return _mm256_loadu_ps(p); }
  NABLAGRAD_VEC_AVX2 static VT load_n(const T* p, int64_t n) { return _mm256_maskload_ps(p, first(static_cast<int>(n))); }
  NABLAGRAD_VEC_AVX2 static VT bcast(const T* p) { return _mm256_broadcast_ss(p); }
  NABLAGRAD_VEC_AVX2 static void store(T* p, VT v) { _mm256_storeu_ps(p, v); }
  NABLAGRAD_VEC_AVX2 static VT fma(VT a, VT b, VT c) { return _mm256_fmadd_ps(a, b, c); }
  NABLAGRAD_VEC_AVX2 static VT add(VT a, VT b) { return _mm256_add_ps(a, b); }
  NABLAGRAD_VEC_AVX2 static VT sub(VT a, VT b) { return _mm256_sub_ps(a, b); }
  NABLAGRAD_VEC_AVX2 static VT madd(VT a, float k, VT b) { return _mm256_fmadd_ps(a, _mm256_set1_ps(k), b); }
  NABLAGRAD_VEC_AVX2 static VT mul(VT a, float k) { return _mm256_mul_ps(a, _mm256_set1_ps(k)); }
  // The mask of the first n <= W lanes; the first n lanes p[j * stride], zeros past n (strided:
  // scalar loads, cheaper than a gather on the Xeons measured); and their store to p[0, n).
  NABLAGRAD_VEC_AVX2 static __m256i first(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  NABLAGRAD_VEC_AVX2 static VT load_n_strided(const float* p, int64_t stride, int n) {
    if (stride == 1) return n == W ? load(p) : load_n(p, n);
    alignas(32) float b[W] = {};
    for (int j = 0; j < n; ++j) b[j] = p[j * stride];
    return _mm256_load_ps(b);
  }
  NABLAGRAD_VEC_AVX2 static void store_n(float* p, VT a, int n) {
    if (n == W)
      _mm256_storeu_ps(p, a);
    else
      _mm256_maskstore_ps(p, first(n), a);
  }
  NABLAGRAD_VEC_AVX2 static T sum(VT v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
  }
};
struct VecAvx2D {
  using T = double;
  using VT = __m256d;
  static constexpr int W = 4;
  NABLAGRAD_VEC_AVX2 static VT zero() { return _mm256_setzero_pd(); }
  NABLAGRAD_VEC_AVX2 static VT load(const T* p) { return _mm256_loadu_pd(p); }
  NABLAGRAD_VEC_AVX2 static VT load_n(const T* p, int64_t n) {
    const __m256i lane = _mm256_setr_epi64x(0, 1, 2, 3);
    return _mm256_maskload_pd(p, _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), lane));
  }
  NABLAGRAD_VEC_AVX2 static VT bcast(const T* p) { return _mm256_broadcast_sd(p); }
  NABLAGRAD_VEC_AVX2 static void store(T* p, VT v) { _mm256_storeu_pd(p, v); }
  NABLAGRAD_VEC_AVX2 static VT fma(VT a, VT b, VT c) { return _mm256_fmadd_pd(a, b, c); }
  NABLAGRAD_VEC_AVX2 static VT add(VT a, VT b) { return _mm256_add_pd(a, b); }
  NABLAGRAD_VEC_AVX2 static VT sub(VT a, VT b) { return _mm256_sub_pd(a, b); }
  NABLAGRAD_VEC_AVX2 static VT madd(VT a, double k, VT b) { return _mm256_fmadd_pd(a, _mm256_set1_pd(k), b); }
  NABLAGRAD_VEC_AVX2 static VT mul(VT a, double k) { return _mm256_mul_pd(a, _mm256_set1_pd(k)); }
  NABLAGRAD_VEC_AVX2 static T sum(VT v) {
    const __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
  }
};
struct VecAvx512F {
  using T = float;
  using VT = __m512;
  static constexpr int W = 16;
  NABLAGRAD_VEC_AVX512 static VT zero() { return _mm512_setzero_ps(); }
  NABLAGRAD_VEC_AVX512 static VT load(const T* p) { return _mm512_loadu_ps(p); }
  NABLAGRAD_VEC_AVX512 static VT load_n(const T* p, int64_t n) { return _mm512_maskz_loadu_ps(first(static_cast<int>(n)), p); }
  NABLAGRAD_VEC_AVX512 static VT bcast(const T* p) { return _mm512_set1_ps(*p); }
  NABLAGRAD_VEC_AVX512 static void store(T* p, VT v) { _mm512_storeu_ps(p, v); }
  NABLAGRAD_VEC_AVX512 static VT fma(VT a, VT b, VT c) { return _mm512_fmadd_ps(a, b, c); }
  NABLAGRAD_VEC_AVX512 static VT add(VT a, VT b) { return _mm512_add_ps(a, b); }
  NABLAGRAD_VEC_AVX512 static VT sub(VT a, VT b) { return _mm512_sub_ps(a, b); }
  NABLAGRAD_VEC_AVX512 static VT madd(VT a, float k, VT b) { return _mm512_fmadd_ps(a, _mm512_set1_ps(k), b); }
  NABLAGRAD_VEC_AVX512 static VT mul(VT a, float k) { return _mm512_mul_ps(a, _mm512_set1_ps(k)); }
  // As VecAvx2F's: the mask of the first n <= W lanes, and the loads and stores through it.
  static __mmask16 first(int n) { return static_cast<__mmask16>((1u << n) - 1); }
  NABLAGRAD_VEC_AVX512 static VT load_n_strided(const float* p, int64_t stride, int n) {
    if (stride == 1) return n == W ? load(p) : load_n(p, n);
    alignas(64) float b[W] = {};
    for (int j = 0; j < n; ++j) b[j] = p[j * stride];
    return _mm512_load_ps(b);
  }
  NABLAGRAD_VEC_AVX512 static void store_n(float* p, VT a, int n) {
    if (n == W)
      _mm512_storeu_ps(p, a);
    else
      _mm512_mask_storeu_ps(p, first(n), a);
  }
  // Folds of halves, quarters, pairs and neighbours (the maskz forms with every lane set:
  // GCC 12's unmasked shuffles and _mm512_reduce_add_* trip -Wuninitialized on their
  // _mm512_undefined_* operand, as vmath.h notes).
  NABLAGRAD_VEC_AVX512 static T sum(VT v) {
    const __mmask16 all = 0xFFFF;
    v = _mm512_add_ps(v, _mm512_maskz_shuffle_f32x4(all, v, v, 0x4E));
    v = _mm512_add_ps(v, _mm512_maskz_shuffle_f32x4(all, v, v, 0xB1));
    v = _mm512_add_ps(v, _mm512_maskz_permute_ps(all, v, 0x4E));
    return _mm512_cvtss_f32(_mm512_add_ps(v, _mm512_maskz_permute_ps(all, v, 0xB1)));
  }
};
struct VecAvx512D {
  using T = double;
  using VT = __m512d;
  static constexpr int W = 8;
  NABLAGRAD_VEC_AVX512 static VT zero() { return _mm512_setzero_pd(); }
  NABLAGRAD_VEC_AVX512 static VT load(const T* p) { return _mm512_loadu_pd(p); }
  NABLAGRAD_VEC_AVX512 static VT load_n(const T* p, int64_t n) {
    return _mm512_maskz_loadu_pd(static_cast<__mmask8>((1u << n) - 1u), p);
  }
  NABLAGRAD_VEC_AVX512 static VT bcast(const T* p) { return _mm512_set1_pd(*p); }
  NABLAGRAD_VEC_AVX512 static void store(T* p, VT v) { _mm512_storeu_pd(p, v); }
  NABLAGRAD_VEC_AVX512 static VT fma(VT a, VT b, VT c) { return _mm512_fmadd_pd(a, b, c); }
  NABLAGRAD_VEC_AVX512 static VT add(VT a, VT b) { return _mm512_add_pd(a, b); }
  NABLAGRAD_VEC_AVX512 static VT sub(VT a, VT b) { return _mm512_sub_pd(a, b); }
  NABLAGRAD_VEC_AVX512 static VT madd(VT a, double k, VT b) { return _mm512_fmadd_pd(a, _mm512_set1_pd(k), b); }
  NABLAGRAD_VEC_AVX512 static VT mul(VT a, double k) { return _mm512_mul_pd(a, _mm512_set1_pd(k)); }
  NABLAGRAD_VEC_AVX512 static T sum(VT v) {  // as VecAvx512F::sum
    const __mmask8 all = 0xFF;
    v = _mm512_add_pd(v, _mm512_maskz_shuffle_f64x2(all, v, v, 0x4E));
    v = _mm512_add_pd(v, _mm512_maskz_shuffle_f64x2(all, v, v, 0xB1));
    return _mm512_cvtsd_f64(_mm512_add_pd(v, _mm512_maskz_permute_pd(all, v, 0x55)));
  }
};
#endif

#if NABLAGRAD_X86
/// The vector type of a level for T.
template <typename T>
using VecAvx2 = std::conditional_t<std::is_same<T, float>::value, VecAvx2F, VecAvx2D>;
template <typename T>
using VecAvx512 = std::conditional_t<std::is_same<T, float>::value, VecAvx512F, VecAvx512D>;
#endif

}  // namespace kernels
}  // namespace nablagrad
