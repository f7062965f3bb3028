// nablagrad/kernels/gemm.h - dense matrix multiply, C = (accumulate ? C : 0) + A * B.
//
// Overview
//   gemm<T>() is the engine's one general matrix multiply (T = float or double). Operands
//   are described by a pointer and two strides, so a transposed operand (or any strided
//   view) is passed without a copy:
//
//     // C[M,N] = A[M,K] * B[K,N], all row-major and contiguous:
//     kernels::gemm<float>(M, N, K, A, K, 1, B, N, 1, C, N, /*accumulate=*/false);
//     // C[M,N] += A^T * B where A is stored row-major as [K,M]:
//     kernels::gemm<float>(M, N, K, A, 1, M, B, N, 1, C, N, /*accumulate=*/true);
//
//   gemm_reference<T>() has the same signature: the naive triple loop, kept as the oracle
//   the tests compare the fast kernel against.
//
// How the fast path works (BLIS / GotoBLAS structure)
//   for each NC-wide column block of B                 (B block lives in L3)
//     for each KC-deep slice of K (fixed order)        pack B slice into NR-wide panels
//       for each MC-tall row block of A                pack A block into MR-tall panels (L2)
//         for each NR panel of B, MR panel of A        micro-kernel: an MR x NR tile of C is
//                                                      held in registers across the KC loop
//   The AVX2+FMA micro-kernels are 6x16 (float) and 6x8 (double): 12 ymm accumulators; 4x24
//   / 4x12 for column counts in whole panels of those that 6x16 / 6x8 would pad (24, 72) and
//   8x8 / 8x4 for at most one vector of columns (gemm_config_for()).
//   The AVX-512F ones are 6x64 / 6x32 (24 zmm accumulators), or 8x32 / 8x16 for products
//   with fewer than 48 rows (gemm_config()), or 8x48 / 8x24 or 8x32 / 8x16 where that pads
//   the column count less (gemm_config_for(): 48 or 96 columns, not 64 or 128).
//   Row-major and column-major A are read in place (AMode), other layouts are packed.
//   gemm_indirect() runs the same loops on an A that is not a matrix: for each depth slice,
//   every row at a pointer of its own (AMode::Ptrs), e.g. a convolution's output pixels' input
//   runs, read where they lie (conv2d/forward.h) instead of gathered into im2col rows.
//   The AVX2 and AVX-512 tiles are one template over vec.h's vector types (gemm_kernel.inc,
//   compiled once per instruction set), except the packed 6x16 / 6x8 AVX2 ones, hand-written.
//   A portable C++ micro-kernel (plain loops, auto-vectorised by the compiler) is used on
//   other CPUs or when simd_level() is SimdLevel::Portable.
//
// Determinism
//   Threads split the M and N ranges (never K). Every element of C is computed by one
//   thread as: for each KC slice in ascending order, acc = sum over k of the slice (one
//   FMA chain started from zero, k ascending), then C = C + acc (C = acc for the first
//   slice when !accumulate). The slicing of K depends on K only, and partial (edge) tiles
//   run the same micro-kernel as full ones, so the result is bitwise identical for any
//   thread count (for a given simd_level()).
//
// Threading and reentrancy
//   Large products run on the process-wide pool (threading.h). Packing buffers are
//   thread_local, 64-byte aligned and reused across calls, so gemm may be called
//   concurrently from several user threads (the pool serialises parallel regions; a caller
//   whose region is waiting simply blocks). Small products (M*N*K below
//   gemm_parallel_threshold()) run on the calling thread with no pool round trip, and tiny
//   ones (M*N*K <= kGemmDirectThreshold) skip packing altogether.
// Include guard rather than #pragma once so that the header can also be compiled as a main
// file (g++ -fsyntax-only -x c++ gemm.h) under -Werror.
#ifndef NABLAGRAD_KERNELS_GEMM_H
#define NABLAGRAD_KERNELS_GEMM_H

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <new>
#include <type_traits>
#include <vector>

#include "nablagrad/checked.h"
#include "nablagrad/kernels/simd.h"
#include "nablagrad/kernels/vec.h"
#include "nablagrad/threading.h"

namespace nablagrad {
namespace kernels {

/// Products with M*N*K below this many multiply-adds run single-threaded on the caller.
/// The pool's workers spin briefly between regions (threading.h), so back-to-back products
/// start without a sleeping-thread wake-up; from roughly 100^3 on a second thread pays. Tests set it to 0 to push small shapes through the threaded path. The split
/// never changes results, so this is a speed knob only.
inline std::atomic<int64_t>& gemm_parallel_threshold() {
  static std::atomic<int64_t> threshold{int64_t{1} << 20};
  return threshold;
}

/// Products with M*N*K at or below this skip packing and run the plain triple loop (faster
/// than packing for a handful of elements).
constexpr int64_t kGemmDirectThreshold = 512;

/// The oracle: C[M,N] = (accumulate ? C : 0) + A[M,K] * B[K,N], naive triple loop with the
/// sum over k in ascending order (in T).
///   M, N, K     : problem sizes (>= 0)
///   A, a_rs,a_cs: A(i,k) = A[i*a_rs + k*a_cs]
///   B, b_rs,b_cs: B(k,j) = B[k*b_rs + j*b_cs]
///   C, ldc      : C(i,j) = C[i*ldc + j] (row-major, leading dimension ldc)
///   accumulate  : add to the existing C instead of overwriting it
template <typename T>
void gemm_reference(int64_t M, int64_t N, int64_t K,
                    const T* A, int64_t a_rs, int64_t a_cs,
                    const T* B, int64_t b_rs, int64_t b_cs,
                    T* C, int64_t ldc, bool accumulate) {
  static_assert(std::is_same<T, float>::value || std::is_same<T, double>::value,
                "gemm_reference: T must be float or double");
  for (int64_t i = 0; i < M; ++i) {
    for (int64_t j = 0; j < N; ++j) {
      T sum = T(0);
      for (int64_t k = 0; k < K; ++k) sum += A[i * a_rs + k * a_cs] * B[k * b_rs + j * b_cs];
      C[i * ldc + j] = accumulate ? C[i * ldc + j] + sum : sum;
    }
  }
}

namespace gemm_detail {

// ---------------------------------------------------------------------------------------
// Thread-local, 64-byte aligned scratch buffers, grown on demand and kept for reuse.
// ---------------------------------------------------------------------------------------
class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  ~AlignedBuffer() { std::free(data_); }

  /// Returns at least `bytes` bytes, 64-byte aligned. Previous contents are not kept.
  void* get(size_t bytes) {
    if (bytes > capacity_) {
      std::free(data_);
      data_ = nullptr;
      capacity_ = 0;
      const size_t rounded = (bytes + 4095) & ~size_t{4095};
      data_ = std::aligned_alloc(64, rounded);
      if (data_ == nullptr) throw std::bad_alloc();
      capacity_ = rounded;
    }
    return data_;
  }

 private:
  void* data_ = nullptr;
  size_t capacity_ = 0;
};

inline AlignedBuffer& packed_a_buffer() {
  static thread_local AlignedBuffer buffer;
  return buffer;
}
inline AlignedBuffer& packed_b_buffer() {
  static thread_local AlignedBuffer buffer;
  return buffer;
}

// A micro-kernel computes one MR x NR tile: acc = sum_{k<kc} Ap[k*MR + i] * Bp[k*NR + j]
// (one chain per element, k ascending, starting from zero), then C = add ? C + acc : acc, or
// C = bias + acc where bias (NR values, only with !add) is not null: the tile starts from the
// bias row without writing it to C first (filling C with the bias and adding made a
// 3136 x 256 x 128 product with a bias, the 1x1 convolution's forward, 16% slower than
// without at AVX2: 1.005 vs 0.866 ms at 2 threads; 8% at AVX-512).
template <typename T>
using MicroKernel = void (*)(int64_t kc, const T* Ap, const T* Bp, T* C, int64_t ldc, bool add, const T* bias);
// The same tile with A read in place, row-major (A(i, k) = A[i*lda + k]) instead of packed:
// the same arithmetic (one FMA chain per element, k ascending), so the same bits.
// Also the type of the tile with A read in place column-major (A(i, k) = A[i + k*lda]: a
// transposed operand, e.g. dY^T in a kernel gradient), likewise the same bits.
template <typename T>
using MicroKernelRows = void (*)(int64_t kc, const T* A, int64_t lda, const T* Bp, T* C, int64_t ldc, bool add,
                                 const T* bias);

// The same tile with row i of A at rows[i] (A(i, k) = rows[i][k]): rows gathered from anywhere
// (gemm_indirect), the Rows tile's arithmetic, so the same bits.
template <typename T>
using MicroKernelPtrs = void (*)(int64_t kc, const T* const* rows, const T* Bp, T* C, int64_t ldc, bool add,
                                 const T* bias);

/// How a micro-kernel reads A: the packed panel Ap[k*MR + i], in place row-major
/// A[i*lda + k], in place column-major A[i + k*lda], or through row pointers rows[i][k].
enum class AMode { Packed, Rows, Cols, Ptrs };

/// Block sizes and micro-kernel of one (type, simd level) variant.
template <typename T>
struct GemmConfig {
  int64_t MR, NR;  // register tile
  int64_t MC;      // rows of A packed per block (multiple of MR): MC x KC sits in L2
  int64_t KC;      // depth of a packed slice: an NR x KC panel of B sits in L1
  int64_t NC;      // columns of B packed per block (multiple of NR): KC x NC sits in L3
  MicroKernel<T> kernel;
  MicroKernelRows<T> kernel_rows;  // nullptr where the level has none: row-major A is packed
  MicroKernelRows<T> kernel_cols;  // nullptr where the level has none: column-major A is packed
  MicroKernelPtrs<T> kernel_ptrs;  // nullptr where the level has none: gemm_indirect packs the rows
};

// ---------------------------------------------------------------------------------------
// Portable micro-kernel: the portable register tile (vec.h's PortableTile).
// ---------------------------------------------------------------------------------------
template <typename T, int MR, int NR>
inline void micro_kernel_portable(int64_t kc, const T* Ap, const T* Bp, T* C, int64_t ldc,
                                  bool add, const T* bias) {
  PortableTile<T, MR, NR> tile;
  for (int64_t k = 0; k < kc; ++k) {
    T a[MR];
    for (int i = 0; i < MR; ++i) a[i] = Ap[k * MR + i];
    tile.step(a, Bp + k * NR);
  }
  if (add)
    tile.add_to(C, ldc);
  else
    tile.store_to(C, ldc, bias);
}

// ---------------------------------------------------------------------------------------
// AVX2 + FMA and AVX-512F micro-kernels: one template over the vector type (vec.h), compiled
// per instruction set (gemm_kernel.inc) and chosen at run time. AVX2 tiles are MR x NV vectors
// of 8 floats / 4 doubles in 16 ymm registers (6 x 2: 12 accumulators, 2 B vectors, the
// broadcast); AVX-512 ones MR x NV of 16 floats / 8 doubles in 32 zmm (6 x 4: 24
// accumulators). The loops over MR and NV have constant trip counts and are unrolled, so the
// accumulators live in registers.
// ---------------------------------------------------------------------------------------
#if NABLAGRAD_X86
// The packed 6 x 2-vector AVX2 tiles (gemm_config's main ones) stay hand-written: the
// template's code for them moves accumulators between registers (16 ymm hold the 12 sums, 2
// B vectors and the broadcast only just) and ran 6-8% slower (one Xeon core held to AVX2,
// 512^2 to 1024^2 and 3136 x 256 x 128, prefetch distances 8 and 16 alike).
// float, 6 x 16: 12 ymm accumulators, 2 ymm for the B row, 1 for the broadcast of A.
__attribute__((target("avx2,fma"))) inline void micro_kernel_avx2_f32_6x16(
    int64_t kc, const float* Ap, const float* Bp, float* C, int64_t ldc, bool add, const float* bias) {
  __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps();
  __m256 c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();
  __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps();
  __m256 c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
  __m256 c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps();
  __m256 c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
  for (int i = 0; i < 6; ++i) _mm_prefetch(reinterpret_cast<const char*>(C + i * ldc), _MM_HINT_T0);
  for (int i = 0; i < 6; ++i)
    _mm_prefetch(reinterpret_cast<const char*>(C + i * ldc + 15), _MM_HINT_T0);

#define NABLAGRAD_GEMM_F32_STEP(a, b)                           \
  do {                                                          \
    const __m256 b0 = _mm256_load_ps(b);                        \
    const __m256 b1 = _mm256_load_ps((b) + 8);                  \
    __m256 av = _mm256_broadcast_ss(a);                         \
    c00 = _mm256_fmadd_ps(av, b0, c00);                         \
    c01 = _mm256_fmadd_ps(av, b1, c01);                         \
    av = _mm256_broadcast_ss((a) + 1);                          \
    c10 = _mm256_fmadd_ps(av, b0, c10);                         \
    c11 = _mm256_fmadd_ps(av, b1, c11);                         \
    av = _mm256_broadcast_ss((a) + 2);                          \
    c20 = _mm256_fmadd_ps(av, b0, c20);                         \
    c21 = _mm256_fmadd_ps(av, b1, c21);                         \
    av = _mm256_broadcast_ss((a) + 3);                          \
    c30 = _mm256_fmadd_ps(av, b0, c30);                         \
    c31 = _mm256_fmadd_ps(av, b1, c31);                         \
    av = _mm256_broadcast_ss((a) + 4);                          \
    c40 = _mm256_fmadd_ps(av, b0, c40);                         \
    c41 = _mm256_fmadd_ps(av, b1, c41);                         \
    av = _mm256_broadcast_ss((a) + 5);                          \
    c50 = _mm256_fmadd_ps(av, b0, c50);                         \
    c51 = _mm256_fmadd_ps(av, b1, c51);                         \
  } while (0)

  int64_t k = 0;
  for (; k + 4 <= kc; k += 4) {
    _mm_prefetch(reinterpret_cast<const char*>(Ap + 96), _MM_HINT_T0);
    NABLAGRAD_GEMM_F32_STEP(Ap, Bp);
    NABLAGRAD_GEMM_F32_STEP(Ap + 6, Bp + 16);
    _mm_prefetch(reinterpret_cast<const char*>(Ap + 112), _MM_HINT_T0);
    NABLAGRAD_GEMM_F32_STEP(Ap + 12, Bp + 32);
    NABLAGRAD_GEMM_F32_STEP(Ap + 18, Bp + 48);
    Ap += 24;
    Bp += 64;
  }
  for (; k < kc; ++k) {
    NABLAGRAD_GEMM_F32_STEP(Ap, Bp);
    Ap += 6;
    Bp += 16;
  }
#undef NABLAGRAD_GEMM_F32_STEP

  float* c0 = C;
  float* c1 = C + ldc;
  float* c2 = C + 2 * ldc;
  float* c3 = C + 3 * ldc;
  float* c4 = C + 4 * ldc;
  float* c5 = C + 5 * ldc;
  if (add) {
    c00 = _mm256_add_ps(_mm256_loadu_ps(c0), c00);
    c01 = _mm256_add_ps(_mm256_loadu_ps(c0 + 8), c01);
    c10 = _mm256_add_ps(_mm256_loadu_ps(c1), c10);
    c11 = _mm256_add_ps(_mm256_loadu_ps(c1 + 8), c11);
    c20 = _mm256_add_ps(_mm256_loadu_ps(c2), c20);
    c21 = _mm256_add_ps(_mm256_loadu_ps(c2 + 8), c21);
    c30 = _mm256_add_ps(_mm256_loadu_ps(c3), c30);
    c31 = _mm256_add_ps(_mm256_loadu_ps(c3 + 8), c31);
    c40 = _mm256_add_ps(_mm256_loadu_ps(c4), c40);
    c41 = _mm256_add_ps(_mm256_loadu_ps(c4 + 8), c41);
    c50 = _mm256_add_ps(_mm256_loadu_ps(c5), c50);
    c51 = _mm256_add_ps(_mm256_loadu_ps(c5 + 8), c51);
  } else if (bias) {
    const __m256 b0 = _mm256_loadu_ps(bias), b1 = _mm256_loadu_ps(bias + 8);
    c00 = _mm256_add_ps(b0, c00);
    c01 = _mm256_add_ps(b1, c01);
    c10 = _mm256_add_ps(b0, c10);
    c11 = _mm256_add_ps(b1, c11);
    c20 = _mm256_add_ps(b0, c20);
    c21 = _mm256_add_ps(b1, c21);
    c30 = _mm256_add_ps(b0, c30);
    c31 = _mm256_add_ps(b1, c31);
    c40 = _mm256_add_ps(b0, c40);
    c41 = _mm256_add_ps(b1, c41);
    c50 = _mm256_add_ps(b0, c50);
    c51 = _mm256_add_ps(b1, c51);
  }
  _mm256_storeu_ps(c0, c00);
  _mm256_storeu_ps(c0 + 8, c01);
  _mm256_storeu_ps(c1, c10);
  _mm256_storeu_ps(c1 + 8, c11);
  _mm256_storeu_ps(c2, c20);
  _mm256_storeu_ps(c2 + 8, c21);
  _mm256_storeu_ps(c3, c30);
  _mm256_storeu_ps(c3 + 8, c31);
  _mm256_storeu_ps(c4, c40);
  _mm256_storeu_ps(c4 + 8, c41);
  _mm256_storeu_ps(c5, c50);
  _mm256_storeu_ps(c5 + 8, c51);
}

// double, 6 x 8: 12 ymm accumulators.
__attribute__((target("avx2,fma"))) inline void micro_kernel_avx2_f64_6x8(
    int64_t kc, const double* Ap, const double* Bp, double* C, int64_t ldc, bool add, const double* bias) {
  __m256d c00 = _mm256_setzero_pd(), c01 = _mm256_setzero_pd();
  __m256d c10 = _mm256_setzero_pd(), c11 = _mm256_setzero_pd();
  __m256d c20 = _mm256_setzero_pd(), c21 = _mm256_setzero_pd();
  __m256d c30 = _mm256_setzero_pd(), c31 = _mm256_setzero_pd();
  __m256d c40 = _mm256_setzero_pd(), c41 = _mm256_setzero_pd();
  __m256d c50 = _mm256_setzero_pd(), c51 = _mm256_setzero_pd();
  for (int i = 0; i < 6; ++i) _mm_prefetch(reinterpret_cast<const char*>(C + i * ldc), _MM_HINT_T0);
  for (int i = 0; i < 6; ++i)
    _mm_prefetch(reinterpret_cast<const char*>(C + i * ldc + 7), _MM_HINT_T0);

#define NABLAGRAD_GEMM_F64_STEP(a, b)                           \
  do {                                                          \
    const __m256d b0 = _mm256_load_pd(b);                       \
    const __m256d b1 = _mm256_load_pd((b) + 4);                 \
    __m256d av = _mm256_broadcast_sd(a);                        \
    c00 = _mm256_fmadd_pd(av, b0, c00);                         \
    c01 = _mm256_fmadd_pd(av, b1, c01);                         \
    av = _mm256_broadcast_sd((a) + 1);                          \
    c10 = _mm256_fmadd_pd(av, b0, c10);                         \
    c11 = _mm256_fmadd_pd(av, b1, c11);                         \
    av = _mm256_broadcast_sd((a) + 2);                          \
    c20 = _mm256_fmadd_pd(av, b0, c20);                         \
    c21 = _mm256_fmadd_pd(av, b1, c21);                         \
    av = _mm256_broadcast_sd((a) + 3);                          \
    c30 = _mm256_fmadd_pd(av, b0, c30);                         \
    c31 = _mm256_fmadd_pd(av, b1, c31);                         \
    av = _mm256_broadcast_sd((a) + 4);                          \
    c40 = _mm256_fmadd_pd(av, b0, c40);                         \
    c41 = _mm256_fmadd_pd(av, b1, c41);                         \
    av = _mm256_broadcast_sd((a) + 5);                          \
    c50 = _mm256_fmadd_pd(av, b0, c50);                         \
    c51 = _mm256_fmadd_pd(av, b1, c51);                         \
  } while (0)

  int64_t k = 0;
  for (; k + 4 <= kc; k += 4) {
    _mm_prefetch(reinterpret_cast<const char*>(Ap + 48), _MM_HINT_T0);
    NABLAGRAD_GEMM_F64_STEP(Ap, Bp);
    NABLAGRAD_GEMM_F64_STEP(Ap + 6, Bp + 8);
    _mm_prefetch(reinterpret_cast<const char*>(Ap + 56), _MM_HINT_T0);
    NABLAGRAD_GEMM_F64_STEP(Ap + 12, Bp + 16);
    _mm_prefetch(reinterpret_cast<const char*>(Ap + 64), _MM_HINT_T0);
    NABLAGRAD_GEMM_F64_STEP(Ap + 18, Bp + 24);
    Ap += 24;
    Bp += 32;
  }
  for (; k < kc; ++k) {
    NABLAGRAD_GEMM_F64_STEP(Ap, Bp);
    Ap += 6;
    Bp += 8;
  }
#undef NABLAGRAD_GEMM_F64_STEP

  double* c0 = C;
  double* c1 = C + ldc;
  double* c2 = C + 2 * ldc;
  double* c3 = C + 3 * ldc;
  double* c4 = C + 4 * ldc;
  double* c5 = C + 5 * ldc;
  if (add) {
    c00 = _mm256_add_pd(_mm256_loadu_pd(c0), c00);
    c01 = _mm256_add_pd(_mm256_loadu_pd(c0 + 4), c01);
    c10 = _mm256_add_pd(_mm256_loadu_pd(c1), c10);
    c11 = _mm256_add_pd(_mm256_loadu_pd(c1 + 4), c11);
    c20 = _mm256_add_pd(_mm256_loadu_pd(c2), c20);
    c21 = _mm256_add_pd(_mm256_loadu_pd(c2 + 4), c21);
    c30 = _mm256_add_pd(_mm256_loadu_pd(c3), c30);
    c31 = _mm256_add_pd(_mm256_loadu_pd(c3 + 4), c31);
    c40 = _mm256_add_pd(_mm256_loadu_pd(c4), c40);
    c41 = _mm256_add_pd(_mm256_loadu_pd(c4 + 4), c41);
    c50 = _mm256_add_pd(_mm256_loadu_pd(c5), c50);
    c51 = _mm256_add_pd(_mm256_loadu_pd(c5 + 4), c51);
  } else if (bias) {
    const __m256d b0 = _mm256_loadu_pd(bias), b1 = _mm256_loadu_pd(bias + 4);
    c00 = _mm256_add_pd(b0, c00);
    c01 = _mm256_add_pd(b1, c01);
    c10 = _mm256_add_pd(b0, c10);
    c11 = _mm256_add_pd(b1, c11);
    c20 = _mm256_add_pd(b0, c20);
    c21 = _mm256_add_pd(b1, c21);
    c30 = _mm256_add_pd(b0, c30);
    c31 = _mm256_add_pd(b1, c31);
    c40 = _mm256_add_pd(b0, c40);
    c41 = _mm256_add_pd(b1, c41);
    c50 = _mm256_add_pd(b0, c50);
    c51 = _mm256_add_pd(b1, c51);
  }
  _mm256_storeu_pd(c0, c00);
  _mm256_storeu_pd(c0 + 4, c01);
  _mm256_storeu_pd(c1, c10);
  _mm256_storeu_pd(c1 + 4, c11);
  _mm256_storeu_pd(c2, c20);
  _mm256_storeu_pd(c2 + 4, c21);
  _mm256_storeu_pd(c3, c30);
  _mm256_storeu_pd(c3 + 4, c31);
  _mm256_storeu_pd(c4, c40);
  _mm256_storeu_pd(c4 + 4, c41);
  _mm256_storeu_pd(c5, c50);
  _mm256_storeu_pd(c5 + 4, c51);
}

namespace avx2 {
#define NABLAGRAD_GEMM_TARGET NABLAGRAD_VEC_AVX2
#include "gemm_kernel.inc"
#undef NABLAGRAD_GEMM_TARGET
}  // namespace avx2
namespace avx512 {
#define NABLAGRAD_GEMM_TARGET NABLAGRAD_VEC_AVX512
#include "gemm_kernel.inc"
#undef NABLAGRAD_GEMM_TARGET
}  // namespace avx512

/// The GemmConfig of the MR x NV-vector tile of V (its level's micro-kernels in the three A
/// modes) with block sizes MC, KC, NC.
template <typename V, int MR, int NV>
inline GemmConfig<typename V::T> simd_tile(int64_t MC, int64_t KC, int64_t NC) {
  using T = typename V::T;
  if constexpr (V::W * sizeof(T) == 64)
    return {MR, NV * V::W, MC, KC, NC, &avx512::micro_kernel_packed<V, MR, NV>, &avx512::micro_kernel_rows<V, MR, NV>,
            &avx512::micro_kernel_cols<V, MR, NV>, &avx512::micro_kernel_ptrs<V, MR, NV>};
  else
    return {MR, NV * V::W, MC, KC, NC, &avx2::micro_kernel_packed<V, MR, NV>, &avx2::micro_kernel_rows<V, MR, NV>,
            &avx2::micro_kernel_cols<V, MR, NV>, &avx2::micro_kernel_ptrs<V, MR, NV>};
}
/// cfg with its packed-A kernel replaced.
template <typename T>
inline GemmConfig<T> with_kernel(GemmConfig<T> cfg, MicroKernel<T> packed) {
  cfg.kernel = packed;
  return cfg;
}
#endif  // NABLAGRAD_X86

/// The variant to run for T at the current simd_level(), for a product with M rows
/// (M < 0: unknown, i.e. large). MC and NC must be multiples of MR and NR, MR <= 16, NR <= 64.
/// Every variant of one level has the same KC, and the result of an element depends only on
/// the K slicing (KC) and the FMA order, not on the tile shape, so the choice by M never
/// changes a result (the tests check this), only the speed.
///   AVX2: BLIS's Zen block sizes (L1 32 KiB: a 16 x 256 float panel of B is 16 KiB; L2
///     512 KiB: a 144 x 256 block of A is 144 KiB); measured on the 2-core Zen 3 dev machine,
///     KC in 256..512 and MC in 72..240 were all within its run-to-run noise.
///   AVX-512 (measured on the 2-core Zen 5 dev machine, family 26, full-width 512-bit FMAs,
///     under load; benchmarks/RESULTS.md): 6 x 64 float (24 zmm accumulators, 4 B loads and
///     6 broadcasts per 24 FMAs) beat 14x32, 12x32 and 8x48 on square shapes, 186 vs 150-170
///     GFLOP/s at n=256 on one core (AVX2 6x16: 100); for few rows (M < 48, the recurrent
///     step products of an LSTM) 8 x 32 wastes no rows at M=16 and was ~10% faster there.
///     double: 6 x 32 and 8 x 16 likewise.
template <typename T>
inline GemmConfig<T> gemm_config(int64_t M);

template <>
inline GemmConfig<float> gemm_config<float>(int64_t M) {
#if NABLAGRAD_X86
  if (simd_at_least(SimdLevel::AVX512)) {
    if (M >= 0 && M < 48)
      return simd_tile<VecAvx512F, 8, 2>(128, 256, 4064);
    return simd_tile<VecAvx512F, 6, 4>(144, 256, 4032);
  }
  if (simd_at_least(SimdLevel::AVX2))
    return with_kernel(simd_tile<VecAvx2F, 6, 2>(144, 256, 4080), &micro_kernel_avx2_f32_6x16);
#endif
  (void)M;
  return {4, 8, 128, 256, 4080, &micro_kernel_portable<float, 4, 8>, nullptr, nullptr, nullptr};
}

template <>
inline GemmConfig<double> gemm_config<double>(int64_t M) {
#if NABLAGRAD_X86
  if (simd_at_least(SimdLevel::AVX512)) {
    if (M >= 0 && M < 48)
      return simd_tile<VecAvx512D, 8, 2>(64, 256, 4064);
    return simd_tile<VecAvx512D, 6, 4>(72, 256, 4064);
  }
  if (simd_at_least(SimdLevel::AVX2))
    return with_kernel(simd_tile<VecAvx2D, 6, 2>(72, 256, 4080), &micro_kernel_avx2_f64_6x8);
#endif
  (void)M;
  return {4, 4, 96, 256, 4080, &micro_kernel_portable<double, 4, 4>, nullptr, nullptr, nullptr};
}

/// The variant for a product of unknown (large) row count.
template <typename T>
inline GemmConfig<T> gemm_config() {
  return gemm_config<T>(-1);
}

/// The variant for many products of exactly `rows` rows each (a recurrent layer's per-step
/// product, on one thread's share of the batch): a register tile as tall as the rows where
/// that wastes none (4 rows: a 4 x 64 float tile instead of a 6-row tile one third empty).
/// Every variant has the same KC, so each element's sum runs the same order whatever the
/// tile: results do not depend on the choice.
template <typename T>
inline GemmConfig<T> gemm_config_rows(int64_t rows) {
#if NABLAGRAD_X86
  if (rows >= 1 && rows <= 4 && simd_at_least(SimdLevel::AVX512)) {
    const int64_t nr = 4 * VecAvx512<T>::W;
    return simd_tile<VecAvx512<T>, 4, 4>(32 * (64 / nr) * 4, 256, (4096 / nr - 1) * nr);
  }
#endif
  return gemm_config<T>(rows);
}

/// The variant for a product of M rows and N columns: gemm_config(M), unless at AVX-512 a
/// tile of another width pads N with fewer zero columns: 8 x 3 vectors (48 floats / 24
/// doubles) or 8 x 2 vectors, and for at most one vector of columns 8 x 1. The 6 x 64 float
/// tile runs 96 columns as 128 and 48 as 64: a quarter to a third of its multiply-adds on
/// zeros (the Winograd products of a 48 -> 96 channel convolution); 8 x 2 ran 6-16 columns
/// as 32. One Xeon, AVX-512, 2 threads (ms, 8 x 2 -> 8 x 1): 25088 x 6 x 32 0.181 -> 0.117,
/// 25088 x 12 x 64 0.362 -> 0.270, 25088 x 16 x 64 0.354 -> 0.242, 512 x 10 x 784 0.071 ->
/// 0.046 (16 x 1: 0.126, 0.294, 0.280, 0.047; 24 x 1 spills: 2x slower). At AVX2 likewise an
/// 8 x 1-vector tile for at most 8 floats / 4 doubles (the 6 x 2-vector one ran them at most
/// half full): 25088 x 6 x 32 0.155 -> 0.118, 25088 x 8 x 64 0.286 -> 0.216, 512 x 8 x 784
/// 0.066 -> 0.038 (12 x 1 about the same); and 4 x 3 vectors for 24 or 72 floats (below).
/// Same KC, so the same bits whichever is chosen.
template <typename T>
inline GemmConfig<T> gemm_config_for(int64_t M, int64_t N) {
  const GemmConfig<T> cfg = gemm_config<T>(M);
#if NABLAGRAD_X86
  if (simd_at_least(SimdLevel::AVX512) && N > 0) {
    constexpr int64_t W = VecAvx512<T>::W;
    if (N <= W)  // one vector wide: 8 x 1 vector
      return simd_tile<VecAvx512<T>, 8, 1>(128, cfg.KC, (4096 / W - 1) * W);
    auto padded = [N](int64_t nr) { return (N + nr - 1) / nr * nr; };
    const int64_t best = std::min(padded(2 * W), padded(3 * W));  // 4W never pads less than 2W
    if (padded(cfg.NR) == best) return cfg;
    if (padded(3 * W) == best)
      return simd_tile<VecAvx512<T>, 8, 3>(128, cfg.KC, (4096 / (3 * W)) * 3 * W);
    return gemm_config<T>(0);  // the 8 x 2-vector tile
  }
  if (simd_level() == SimdLevel::AVX2 && N > 0) {
    constexpr int64_t W = VecAvx2<T>::W;
    if (N <= W)  // 8 x 1 vector
      return simd_tile<VecAvx2<T>, 8, 1>(144, cfg.KC, (4096 / W - 1) * W);
    // 4 x 3 vectors for whole panels of them that 6 x 2 would pad (24, 72, 120 floats: the
    // conv kernels' rule, conv_kernels_for_width). 1x1 convolutions at AVX2, 2 threads (ms,
    // 6 x 2 -> 4 x 3; forward, dX, dW): (8,56,56,24->24) 0.21 -> 0.14, 0.21 -> 0.14, 0.43 ->
    // 0.35; (8,28,28,144->24) forward 0.26 -> 0.20; (8,14,14,72->72) 0.086 -> 0.074 each. Not
    // where the last panel is partial: (8,56,56,20->20) dX 0.19 -> 0.23.
    if (N % (3 * W) == 0 && N % (2 * W) != 0)
      return simd_tile<VecAvx2<T>, 4, 3>(144, cfg.KC, (4096 / (3 * W)) * 3 * W);
  }
#endif
  (void)N;
  return cfg;
}

/// The time per multiply-add of gemm_indirect_config's tile of `rows` rows against the level's
/// default tile, in percent (see gemm_indirect_config): a plan (conv_detail::pixel_rows_plan)
/// weighs shorter tiles that skip more against taller ones by it.
inline int64_t gemm_indirect_tile_cost(int64_t rows) {
  return rows == 4 && simd_level() == SimdLevel::AVX2 ? 110 : 100;
}

/// gemm_indirect's variant for M x N with register tiles of `rows` rows where the level has them
/// (else, and for rows 0, gemm_config_for(M, N)): the 4-row tile in place of the 6-row one of the
/// same columns and KC (the same bits), 4 x 4 vectors at AVX-512 and 4 x 2 at AVX2. Its smaller
/// tiles can hold a convolution's pixels of one class (forward_rows_plan). On Zen 4 at AVX-512
/// it runs as fast per multiply-add (the FMAs at half rate bound both): (4,7,7,64->256, 7x7
/// P 3) 1.13 -> 0.95 ms. At AVX2 its 8 accumulators keep the FMAs less busy than 6 x 2's 12
/// (gemm_indirect_tile_cost charges it 10% more): (4,7,7,64->256) forward 1.10 -> 1.00 and dX
/// 1.26 -> 1.14, while (32,8,8,256->512, 3x3 S 2), whose 4-row plan prices a few % lower, ran
/// 4.92 -> 5.28 on it uncharged (Zen 4, 2 threads, alternating processes).
template <typename T>
inline GemmConfig<T> gemm_indirect_config(int64_t M, int64_t N, int64_t rows) {
  const GemmConfig<T> cfg = gemm_config_for<T>(M, N);
  if (rows == 4 && cfg.MR == 6) {
    GemmConfig<T> four = gemm_config_rows<T>(4);
#if NABLAGRAD_X86
    if (simd_level() == SimdLevel::AVX2) four = simd_tile<VecAvx2<T>, 4, 2>(cfg.MC, cfg.KC, cfg.NC);
#endif
    if (four.MR == 4 && four.NR == cfg.NR && four.KC == cfg.KC) return four;
  }
  return cfg;
}

// ---------------------------------------------------------------------------------------
// Packing. Both write whole panels, zero-padding the rows/columns past the matrix edge, so
// the micro-kernel always runs on full MR x NR tiles.
// ---------------------------------------------------------------------------------------

/// pack_a's column-major case (rs == 1) with the panel height known at compile time: each k's
/// run of MRc rows is a fixed-size copy (the runtime-length loop cost more than the copy).
template <typename T, int MRc>
inline void pack_a_cols(int64_t mc, int64_t kc, const T* A, int64_t cs, T* out) {
  const int64_t full = mc / MRc, rest = mc - full * MRc;
  for (int64_t k = 0; k < kc; ++k) {
    const T* src = A + k * cs;
    T* dst = out + k * MRc;
    for (int64_t p = 0; p < full; ++p) {
      T* d = dst + p * MRc * kc;
      const T* s = src + p * MRc;
      for (int i = 0; i < MRc; ++i) d[i] = s[i];
    }
    if (rest > 0) {
      T* d = dst + full * MRc * kc;
      const T* s = src + full * MRc;
      for (int64_t i = 0; i < rest; ++i) d[i] = s[i];
      for (int64_t i = rest; i < MRc; ++i) d[i] = T(0);
    }
  }
}

/// Packs the mc x kc block A(i,k) = A[i*rs + k*cs] into ceil(mc/MR) panels; panel p holds
/// rows p*MR.. as Ap[p*MR*kc + k*MR + i].
template <typename T>
inline void pack_a(int64_t mc, int64_t kc, const T* A, int64_t rs, int64_t cs, int64_t MR,
                   T* out) {
  if (rs == 1 && (MR == 4 || MR == 6 || MR == 8)) {
    if (MR == 4) pack_a_cols<T, 4>(mc, kc, A, cs, out);
    else if (MR == 6) pack_a_cols<T, 6>(mc, kc, A, cs, out);
    else pack_a_cols<T, 8>(mc, kc, A, cs, out);
    return;
  }
  if (rs == 1) {
    // Column-major block (A transposed): each k is a contiguous run of the mc rows, read once
    // and dealt out to every panel. (Panel by panel, k by k, would read each run's cache line
    // again per panel, and with a power-of-two stride cs all those lines fall in one cache
    // set: an LSTM's dG^T with 4H = 1024 ran this loop at memory speed.)
    const int64_t panels = (mc + MR - 1) / MR;
    for (int64_t k = 0; k < kc; ++k) {
      const T* src = A + k * cs;
      for (int64_t p = 0; p < panels; ++p) {
        const int64_t mr = std::min(MR, mc - p * MR);
        T* dst = out + p * MR * kc + k * MR;
        for (int64_t i = 0; i < mr; ++i) dst[i] = src[p * MR + i];
        for (int64_t i = mr; i < MR; ++i) dst[i] = T(0);
      }
    }
    return;
  }
  for (int64_t ir = 0; ir < mc; ir += MR) {
    const int64_t mr = std::min(MR, mc - ir);
    const T* a = A + ir * rs;
    if (mr == MR && MR == 6) {
      const T* r0 = a;
      const T* r1 = a + rs;
      const T* r2 = a + 2 * rs;
      const T* r3 = a + 3 * rs;
      const T* r4 = a + 4 * rs;
      const T* r5 = a + 5 * rs;
      T* dst = out;
      for (int64_t k = 0; k < kc; ++k) {
        const int64_t o = k * cs;
        dst[0] = r0[o];
        dst[1] = r1[o];
        dst[2] = r2[o];
        dst[3] = r3[o];
        dst[4] = r4[o];
        dst[5] = r5[o];
        dst += 6;
      }
    } else {
      for (int64_t i = 0; i < mr; ++i) {
        const T* src = a + i * rs;
        for (int64_t k = 0; k < kc; ++k) out[k * MR + i] = src[k * cs];
      }
      for (int64_t k = 0; k < kc; ++k)
        for (int64_t i = mr; i < MR; ++i) out[k * MR + i] = T(0);
    }
    out += MR * kc;
  }
}

#if NABLAGRAD_X86
// out[k*NR + j] = b[j*cs + k] for j < 8, k < kc8 (a multiple of 8): pack_b's transposed case
// (B column-major, e.g. a convolution kernel W (Q x K) read as W^T) in 8 x 8 blocks
// transposed in registers. The scalar loop wrote one value per store, NR*4 bytes apart: it was
// a third of a deep layer's forward ((8,14,14,256->512, 3x3 S 2): 392 x 512 x 2304 ran at
// 144 GFLOP/s on one core against 199 with B row-major).
__attribute__((target("avx2,fma"))) inline void pack_b_cols8_avx2(int64_t kc8, const float* b, int64_t cs,
                                                                  int64_t NR, float* out) {
  for (int64_t k = 0; k < kc8; k += 8) {
    const __m256 r0 = _mm256_loadu_ps(b + k), r1 = _mm256_loadu_ps(b + cs + k);
    const __m256 r2 = _mm256_loadu_ps(b + 2 * cs + k), r3 = _mm256_loadu_ps(b + 3 * cs + k);
    const __m256 r4 = _mm256_loadu_ps(b + 4 * cs + k), r5 = _mm256_loadu_ps(b + 5 * cs + k);
    const __m256 r6 = _mm256_loadu_ps(b + 6 * cs + k), r7 = _mm256_loadu_ps(b + 7 * cs + k);
    const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
    const __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
    const __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
    const __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
    const __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    const __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    const __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    const __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    float* o = out + k * NR;
    _mm256_storeu_ps(o, _mm256_permute2f128_ps(s0, s4, 0x20));
    _mm256_storeu_ps(o + NR, _mm256_permute2f128_ps(s1, s5, 0x20));
    _mm256_storeu_ps(o + 2 * NR, _mm256_permute2f128_ps(s2, s6, 0x20));
    _mm256_storeu_ps(o + 3 * NR, _mm256_permute2f128_ps(s3, s7, 0x20));
    _mm256_storeu_ps(o + 4 * NR, _mm256_permute2f128_ps(s0, s4, 0x31));
    _mm256_storeu_ps(o + 5 * NR, _mm256_permute2f128_ps(s1, s5, 0x31));
    _mm256_storeu_ps(o + 6 * NR, _mm256_permute2f128_ps(s2, s6, 0x31));
    _mm256_storeu_ps(o + 7 * NR, _mm256_permute2f128_ps(s3, s7, 0x31));
  }
}
#endif

/// Packs the kc x nc block B(k,j) = B[k*rs + j*cs] into ceil(nc/NR) panels; panel p holds
/// columns p*NR.. as Bp[p*NR*kc + k*NR + j].
template <typename T>
inline void pack_b(int64_t kc, int64_t nc, const T* B, int64_t rs, int64_t cs, int64_t NR,
                   T* out) {
  for (int64_t jr = 0; jr < nc; jr += NR) {
    const int64_t nr = std::min(NR, nc - jr);
    const T* b = B + jr * cs;
    if (cs == 1) {  // row-major block: each k is a contiguous run of columns
      if (nr == NR) {
        for (int64_t k = 0; k < kc; ++k) std::memcpy(out + k * NR, b + k * rs, sizeof(T) * NR);
      } else {
        for (int64_t k = 0; k < kc; ++k) {
          const T* src = b + k * rs;
          T* dst = out + k * NR;
          for (int64_t j = 0; j < nr; ++j) dst[j] = src[j];
          for (int64_t j = nr; j < NR; ++j) dst[j] = T(0);
        }
      }
    } else {  // read each column along k (contiguous when B is transposed, rs == 1)
      int64_t j0 = 0;
#if NABLAGRAD_X86
      if constexpr (std::is_same<T, float>::value) {
        if (rs == 1 && simd_at_least(SimdLevel::AVX2)) {  // 8 columns at a time, then the k tail
          const int64_t kc8 = kc / 8 * 8;
          for (; j0 + 8 <= nr; j0 += 8) pack_b_cols8_avx2(kc8, b + j0 * cs, cs, NR, out + j0);
          for (int64_t k = kc8; k < kc; ++k)
            for (int64_t j = 0; j < j0; ++j) out[k * NR + j] = b[j * cs + k];
        }
      }
#endif
      for (int64_t j = j0; j < nr; ++j) {
        const T* src = b + j * cs;
        for (int64_t k = 0; k < kc; ++k) out[k * NR + j] = src[k * rs];
      }
      for (int64_t k = 0; k < kc; ++k)
        for (int64_t j = nr; j < NR; ++j) out[k * NR + j] = T(0);
    }
    out += NR * kc;
  }
}

/// Row i < mr of a tile computed into scratch (e, NR apart) stored to its row of C, c_row(i):
/// C = C + acc (add), bias + acc, or acc, on the nr columns that exist (macro_tiles' partial
/// and scattered tiles): the micro-kernel's own per-element arithmetic.
template <typename T, typename RowFn>
inline void store_tile_rows(const T* e, int64_t NR, int64_t mr, int64_t nr, const RowFn& c_row, bool add,
                            const T* bias) {
  for (int64_t i = 0; i < mr; ++i) {
    T* ci = c_row(i);
    const T* ei = e + i * NR;
    if (add) {
      for (int64_t j = 0; j < nr; ++j) ci[j] = ci[j] + ei[j];
    } else if (bias) {
      for (int64_t j = 0; j < nr; ++j) ci[j] = bias[j] + ei[j];
    } else {
      for (int64_t j = 0; j < nr; ++j) ci[j] = ei[j];
    }
  }
}

/// The loop of a macro-kernel over an mc x nc block of C against the packed B panels:
/// tile(ir, b, c, ldc, add, bias) runs one micro-kernel call for the MR rows from ir against
/// panel b. A partial tile (fewer than MR rows or NR columns) runs the same call into scratch
/// (same per-element arithmetic), then C = C + acc (or acc) on the part that exists.
/// With `bias` (the block's first nc of gemm's row vector) and !add, C = bias + acc: the
/// micro-kernel adds a full tile's bias from the row itself, a partial tile's is added here.
/// With c_rows, row ir + i of the block goes to C row c_rows[ir + i] (gemm_indirect's row
/// order): a whole tile whose rows lie evenly spaced in C is run there (its ldc the spacing
/// times ldc), any other into scratch and stored row by row, as a partial tile.
template <typename T, typename Tile>
inline void macro_tiles(const GemmConfig<T>& cfg, int64_t mc, int64_t nc, int64_t kc, const T* Bp, T* C,
                        int64_t ldc, bool add, const T* bias, const Tile& tile, const int64_t* c_rows = nullptr) {
  const int64_t MR = cfg.MR, NR = cfg.NR;
  const bool init = !add && bias != nullptr;
  alignas(64) T edge[16 * 64];  // MR x NR scratch for partial tiles (MR <= 16, NR <= 64)
  for (int64_t jr = 0; jr < nc; jr += NR) {
    const int64_t nr = std::min(NR, nc - jr);
    const T* b = Bp + jr * kc;
    const T* bias_jr = init ? bias + jr : nullptr;
    for (int64_t ir = 0; ir < mc; ir += MR) {
      const int64_t mr = std::min(MR, mc - ir);
      const int64_t* r = c_rows ? c_rows + ir : nullptr;
      const int64_t step = r && mr > 1 ? r[1] - r[0] : 1;  // C rows between the tile's rows
      bool whole = mr == MR && nr == NR && step > 0;
      for (int64_t i = 2; r && whole && i < mr; ++i) whole = r[i] - r[i - 1] == step;
      T* c = C + (r ? r[0] : ir) * ldc + jr;
      if (whole) {
        tile(ir, b, c, step * ldc, add, bias_jr);
      } else {
        tile(ir, b, edge, NR, false, nullptr);
        store_tile_rows(
            edge, NR, mr, nr, [&](int64_t i) { return r ? C + r[i] * ldc + jr : c + i * ldc; }, add, bias_jr);
      }
    }
  }
}

/// Runs the micro-kernel over a packed mc x nc block: C[0:mc, 0:nc] (+)= Ap * Bp.
template <typename T>
inline void macro_kernel(const GemmConfig<T>& cfg, int64_t mc, int64_t nc, int64_t kc,
                         const T* Ap, const T* Bp, T* C, int64_t ldc, bool add, const T* bias = nullptr) {
  macro_tiles(cfg, mc, nc, kc, Bp, C, ldc, add, bias, [&](int64_t ir, const T* b, T* c, int64_t ldc_, bool add_, const T* bias_) {
    cfg.kernel(kc, Ap + ir * kc, b, c, ldc_, add_, bias_);
  });
}

/// macro_kernel with A read in place (row-major, lda apart) by cfg.kernel_rows: no packing of
/// A. The last panel's rows past mc do not exist, so a partial last panel is packed (zero-padded)
/// into Ap and runs macro_kernel. Same arithmetic as packing everything: same bits.
template <typename T>
inline void macro_kernel_rows(const GemmConfig<T>& cfg, int64_t mc, int64_t nc, int64_t kc, const T* A,
                              int64_t lda, T* Ap, const T* Bp, T* C, int64_t ldc, bool add,
                              const T* bias = nullptr) {
  const int64_t mfull = mc / cfg.MR * cfg.MR;
  macro_tiles(cfg, mfull, nc, kc, Bp, C, ldc, add, bias, [&](int64_t ir, const T* b, T* c, int64_t ldc_, bool add_, const T* bias_) {
    cfg.kernel_rows(kc, A + ir * lda, lda, b, c, ldc_, add_, bias_);
  });
  if (mfull < mc) {
    pack_a(mc - mfull, kc, A + mfull * lda, lda, int64_t{1}, cfg.MR, Ap);
    macro_kernel(cfg, mc - mfull, nc, kc, Ap, Bp, C + mfull * ldc, ldc, add, bias);
  }
}

/// The same with A read in place column-major (A(i, k) = A[i + k*lda]) by cfg.kernel_cols.
template <typename T>
inline void macro_kernel_cols(const GemmConfig<T>& cfg, int64_t mc, int64_t nc, int64_t kc, const T* A,
                              int64_t lda, T* Ap, const T* Bp, T* C, int64_t ldc, bool add,
                              const T* bias = nullptr) {
  const int64_t mfull = mc / cfg.MR * cfg.MR;
  macro_tiles(cfg, mfull, nc, kc, Bp, C, ldc, add, bias, [&](int64_t ir, const T* b, T* c, int64_t ldc_, bool add_, const T* bias_) {
    cfg.kernel_cols(kc, A + ir, lda, b, c, ldc_, add_, bias_);
  });
  if (mfull < mc) {
    pack_a(mc - mfull, kc, A + mfull, int64_t{1}, lda, cfg.MR, Ap);
    macro_kernel(cfg, mc - mfull, nc, kc, Ap, Bp, C + mfull * ldc, ldc, add, bias);
  }
}

/// Number and size of the K slices: depends on K only (never on the thread count), and
/// balanced so that no slice is much thinner than the others.
inline int64_t k_slice_depth(int64_t K, int64_t KC) {
  const int64_t slices = (K + KC - 1) / KC;
  return (K + slices - 1) / slices;
}

/// Computes the block C[m0:m1, n0:n1] on the calling thread.
template <typename T>
inline void gemm_block(const GemmConfig<T>& cfg, int64_t m0, int64_t m1, int64_t n0, int64_t n1,
                       int64_t K, const T* A, int64_t a_rs, int64_t a_cs, const T* B,
                       int64_t b_rs, int64_t b_cs, T* C, int64_t ldc, bool accumulate,
                       const T* bias) {
  const int64_t MR = cfg.MR, NR = cfg.NR;
  const int64_t kc_max = k_slice_depth(K, cfg.KC);
  const int64_t m_len = m1 - m0, n_len = n1 - n0;
  const int64_t mc_max = std::min(cfg.MC, (m_len + MR - 1) / MR * MR);
  const int64_t nc_max = std::min(cfg.NC, (n_len + NR - 1) / NR * NR);
  T* Ap = static_cast<T*>(packed_a_buffer().get(sizeof(T) * mc_max * kc_max));
  T* Bp = static_cast<T*>(packed_b_buffer().get(sizeof(T) * nc_max * kc_max));
  // Row-major A (unit column stride) is read in place where the level has such a kernel:
  // packing it was a third of a 3136 x 128 x 256 product's time (a scalar transpose).
  const bool a_in_place = a_cs == 1 && cfg.kernel_rows != nullptr;
  // Column-major A (a transposed operand, unit row stride) likewise: packing dY^T was a sixth
  // of the 1x1 convolution's kernel gradient (256 x 128 x 3136).
  const bool a_in_place_cols = !a_in_place && a_rs == 1 && cfg.kernel_cols != nullptr;

  for (int64_t jc = n0; jc < n1; jc += cfg.NC) {
    const int64_t nc = std::min(cfg.NC, n1 - jc);
    for (int64_t pc = 0; pc < K; pc += kc_max) {
      const int64_t kc = std::min(kc_max, K - pc);
      const bool add = accumulate || pc > 0;
      const T* bias_jc = bias ? bias + jc : nullptr;
      pack_b(kc, nc, B + pc * b_rs + jc * b_cs, b_rs, b_cs, NR, Bp);
      for (int64_t ic = m0; ic < m1; ic += cfg.MC) {
        const int64_t mc = std::min(cfg.MC, m1 - ic);
        if (a_in_place) {
          macro_kernel_rows(cfg, mc, nc, kc, A + ic * a_rs + pc, a_rs, Ap, Bp, C + ic * ldc + jc, ldc, add, bias_jc);
        } else if (a_in_place_cols) {
          macro_kernel_cols(cfg, mc, nc, kc, A + ic + pc * a_cs, a_cs, Ap, Bp, C + ic * ldc + jc, ldc, add, bias_jc);
        } else {
          pack_a(mc, kc, A + ic * a_rs + pc * a_cs, a_rs, a_cs, MR, Ap);
          macro_kernel(cfg, mc, nc, kc, Ap, Bp, C + ic * ldc + jc, ldc, add, bias_jc);
        }
      }
    }
  }
}

/// Runs fn(m0, m1, n0, n1) for the blocks of an M x N product of `work` multiply-adds on the
/// tile of cfg: on the calling thread when the product is small (gemm_parallel_threshold()) or
/// there is one thread, else one block per thread of a tm x tn grid whose edges fall on tile
/// boundaries. The grid is the one whose largest block costs least: its tiles' multiply-adds
/// (MR NR per tile and k) plus its packing, bm MR rows of A and bn NR columns of B per k, each
/// packed value priced at 16 multiply-adds (a scalar copy per cycle against 32 FMA lanes).
/// Counting tiles alone split a 256 x 128 x 3136 product (the 1x1 conv's kernel gradient) into
/// two 256 x 64 halves: each thread packed all of A to use it once, and 2 threads ran only 1.4x
/// faster than 1. a_pack_cost is that price per row of A: 0 where A is read in place by pointer
/// tiles (gemm_indirect), so that such a product splits N where it can. Each thread then packs
/// its part of B, not all of it, and has all the rows: forward_rows_plan puts a layer's tiles
/// of padding together, which split by rows gave one thread most of them.
template <typename T, typename Fn>
inline void for_each_gemm_block(const GemmConfig<T>& cfg, int64_t M, int64_t N, int64_t work, const Fn& fn,
                                int64_t a_pack_cost = 16) {
  const int64_t threshold = gemm_parallel_threshold().load(std::memory_order_relaxed);
  int64_t threads = get_num_threads();
  if (work < threshold || threads <= 1) {
    fn(int64_t{0}, M, int64_t{0}, N);
    return;
  }
  // Give every thread at least ~threshold/2 of work.
  if (threshold > 0) threads = std::min<int64_t>(threads, std::max<int64_t>(1, saturating_mul(2, work) / threshold));
  const int64_t m_tiles = (M + cfg.MR - 1) / cfg.MR;
  const int64_t n_tiles = (N + cfg.NR - 1) / cfg.NR;
  int64_t best_tm = 1, best_tn = 1, best_cost = -1;
  for (int64_t tm = 1; tm <= threads; ++tm) {
    const int64_t tn = threads / tm;
    if (tm * tn != threads || tm > m_tiles || tn > n_tiles) continue;
    const int64_t bm = (m_tiles + tm - 1) / tm, bn = (n_tiles + tn - 1) / tn;
    const int64_t cost = bm * bn * cfg.MR * cfg.NR + a_pack_cost * bm * cfg.MR + 16 * bn * cfg.NR;
    if (best_cost < 0 || cost < best_cost) best_tm = tm, best_tn = tn, best_cost = cost;
  }
  if (best_cost < 0) {  // e.g. a prime thread count larger than both tile counts
    best_tm = std::min(threads, m_tiles);
    best_tn = 1;
  }
  const int64_t tm = best_tm, tn = best_tn;
  const int64_t bm = (m_tiles + tm - 1) / tm, bn = (n_tiles + tn - 1) / tn;
  parallel_for(0, tm * tn, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t t = lo; t < hi; ++t) {
      const int64_t m0 = std::min(M, (t / tn) * bm * cfg.MR);
      const int64_t m1 = std::min(M, m0 + bm * cfg.MR);
      const int64_t n0 = std::min(N, (t % tn) * bn * cfg.NR);
      const int64_t n1 = std::min(N, n0 + bn * cfg.NR);
      if (m0 < m1 && n0 < n1) fn(m0, m1, n0, n1);
    }
  });
}

}  // namespace gemm_detail

/// C[M,N] (row-major with leading dimension ldc) = (accumulate ? C : 0) + A[M,K] * B[K,N].
/// A(i,k) = A[i*a_rs + k*a_cs], B(k,j) = B[k*b_rs + j*b_cs]: arbitrary strides, so transposed
/// operands need no copy (the packing step absorbs them).
///   M, N, K      : sizes (>= 0). M or N == 0 is a no-op; K == 0 zeroes C (or leaves it
///                  unchanged when accumulate).
///   A, a_rs, a_cs: left operand and its row / column strides (in elements)
///   B, b_rs, b_cs: right operand and its row / column strides (in elements)
///   C, ldc       : output, C(i,j) = C[i*ldc + j]; must not overlap A or B
///   accumulate   : C += A*B instead of C = A*B
///   bias         : nullptr, or N values b: C = b (in every row) + A*B, the same bits as
///                  filling C with b and accumulating, without the extra pass over C.
///                  Only with !accumulate.
/// Results are bitwise identical for any thread count (see the header comment).
template <typename T>  // T = float or double
void gemm(int64_t M, int64_t N, int64_t K,
          const T* A, int64_t a_rs, int64_t a_cs,
          const T* B, int64_t b_rs, int64_t b_cs,
          T* C, int64_t ldc, bool accumulate, const T* bias = nullptr) {
  static_assert(std::is_same<T, float>::value || std::is_same<T, double>::value,
                "gemm: T must be float or double");
  if (accumulate && bias) throw std::invalid_argument("gemm: a bias needs accumulate == false");
  if (M <= 0 || N <= 0) return;
  // Multiply-adds, saturated: it only picks a schedule (a wrapped product would send a huge
  // problem down the single-threaded naive loop).
  const int64_t work = saturating_mul(saturating_mul(M, N), K);
  if (K <= 0 || work <= kGemmDirectThreshold) {
    if (bias)  // C = b, then C += A*B: the fast path's bits (one rounding, b + acc)
      for (int64_t i = 0; i < M; ++i) std::copy(bias, bias + N, C + i * ldc);
    else if (K <= 0 && !accumulate)
      for (int64_t i = 0; i < M; ++i) std::fill(C + i * ldc, C + i * ldc + N, T(0));
    if (K > 0) gemm_reference(M, N, K, A, a_rs, a_cs, B, b_rs, b_cs, C, ldc, accumulate || bias);
    return;
  }
  // The tile by rows and columns: 96 columns on the 6 x 64 float tile ran as 128 (3136 x 96
  // x 128: 134 -> 173 GFLOP/s on 8 x 48; 512 x 10 x 784: 30 -> 54 on 8 x 32; one Xeon core).
  const gemm_detail::GemmConfig<T> cfg = gemm_detail::gemm_config_for<T>(M, N);
  gemm_detail::for_each_gemm_block(cfg, M, N, work, [&](int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
    gemm_detail::gemm_block(cfg, m0, m1, n0, n1, K, A, a_rs, a_cs, B, b_rs, b_cs, C, ldc, accumulate, bias);
  });
}

/// One depth slice of gemm_indirect: rows k0 .. k0 + kc - 1 of B.
struct KSlice {
  int64_t k0, kc;
};

/// The part [lo, hi) of a row's values of a depth slice that may be nonzero (gemm_indirect).
struct KSpan {
  int64_t lo, hi;
};

namespace gemm_detail {

/// The pointer tile's result where no row has values in the slice (each points at the zero run,
/// or its span is empty): each FMA chain sums products 0 * b from +0, which is +0 for finite b,
/// so c + 0 (add), bias + 0 or +0 are its bits, without the kc-deep chains. A convolution's
/// padding (gemm_indirect's doc).
template <typename T>
inline void zero_rows_tile(int64_t MR, int64_t NR, T* c, int64_t ldc, bool add, const T* bias) {
  for (int64_t i = 0; i < MR; ++i) {
    T* ci = c + i * ldc;
    for (int64_t j = 0; j < NR; ++j) ci[j] = add ? ci[j] + T(0) : (bias ? bias[j] + T(0) : T(0));
  }
}

/// gemm_indirect's block C[m0:m1, n0:n1] on the calling thread: gemm_block's loops, with each
/// slice's rows of A found by `rows` (MC at a time) and read through their pointers, each tile's
/// chains run over the union of its rows' spans only.
template <typename T, typename RowsFn, typename KeepFn>
inline void gemm_indirect_block(const GemmConfig<T>& cfg, int64_t m0, int64_t m1, int64_t n0, int64_t n1,
                                const std::vector<KSlice>& slices, int64_t kc_max, const RowsFn& rows,
                                const T* zeros, const T* B, int64_t b_rs, int64_t b_cs, T* C, int64_t ldc,
                                const T* bias, const int64_t* c_rows, const KeepFn& keep) {
  const int64_t MR = cfg.MR, NR = cfg.NR;
  const int64_t mc_max = std::min(cfg.MC, (m1 - m0 + MR - 1) / MR * MR);
  const int64_t nc_max = std::min(cfg.NC, (n1 - n0 + NR - 1) / NR * NR);
  T* Bp = static_cast<T*>(packed_b_buffer().get(sizeof(T) * nc_max * kc_max));
  // The rows' copies (rows' edge), then where the level has no pointer tile the packed panels.
  const int64_t edge_values = mc_max * kc_max;
  T* edge = static_cast<T*>(packed_a_buffer().get(sizeof(T) * edge_values * (cfg.kernel_ptrs ? 1 : 2)));
  T* Ap = edge + edge_values;
  std::vector<const T*> ptrs(static_cast<size_t>(mc_max));
  std::vector<KSpan> spans(static_cast<size_t>(mc_max)), tile_span(static_cast<size_t>(mc_max / MR));
  for (int64_t jc = n0; jc < n1; jc += cfg.NC) {
    const int64_t nc = std::min(cfg.NC, n1 - jc);
    const T* bias_jc = bias ? bias + jc : nullptr;
    for (size_t s = 0; s < slices.size(); ++s) {
      const int64_t k0 = slices[s].k0, kc = slices[s].kc;
      pack_b(kc, nc, B + k0 * b_rs + jc * b_cs, b_rs, b_cs, NR, Bp);
      for (int64_t ic = m0; ic < m1; ic += cfg.MC) {
        const int64_t mc = std::min(cfg.MC, m1 - ic), mc_tiles = (mc + MR - 1) / MR * MR;
        std::fill(spans.begin(), spans.begin() + mc, KSpan{0, kc});
        const bool partial = rows(s, ic, mc, ptrs.data(), spans.data(), edge, zeros);
        std::fill(ptrs.begin() + mc, ptrs.begin() + mc_tiles, zeros);  // a last tile's missing rows
        if (cfg.kernel_ptrs == nullptr)  // the packed panels: Ap[p kc + k MR + i]
          for (int64_t p = 0; p < mc_tiles; p += MR)
            for (int64_t k = 0; k < kc; ++k)
              for (int64_t i = 0; i < MR; ++i) Ap[p * kc + k * MR + i] = ptrs[static_cast<size_t>(p + i)][k];
        // Each tile's chains run over the union [lo, hi) of its rows' spans (outside it every
        // product is 0 * b): its row pointers advanced to lo once for all column panels.
        for (int64_t t = 0; t < mc_tiles; t += MR) {
          if (!partial && t + MR <= mc) {
            tile_span[static_cast<size_t>(t / MR)] = {0, kc};
            continue;
          }
          int64_t lo = kc, hi = 0;
          for (int64_t i = t; i < std::min(t + MR, mc); ++i)
            if (ptrs[static_cast<size_t>(i)] != zeros) {
              lo = std::min(lo, spans[static_cast<size_t>(i)].lo);
              hi = std::max(hi, spans[static_cast<size_t>(i)].hi);
            }
          tile_span[static_cast<size_t>(t / MR)] = {lo, hi};
          if (lo < hi && lo > 0)
            for (int64_t i = t; i < t + MR; ++i) ptrs[static_cast<size_t>(i)] += lo;
        }
        const auto tile = [&](int64_t ir, const T* b, T* ct, int64_t ldc_, bool add_, const T* bias_) {
          if constexpr (!std::is_same_v<KeepFn, std::nullptr_t>) {
            const int64_t jr = (b - Bp) / kc;  // the panel's first column in the block
            if (!keep(ic + ir, std::min(MR, mc - ir), jc + jr, std::min(NR, nc - jr))) {
              zero_rows_tile(MR, NR, ct, ldc_, add_, bias_);  // no chains; defined values in C
              return;
            }
          }
          const KSpan sp = tile_span[static_cast<size_t>(ir / MR)];
          if (sp.lo >= sp.hi)
            zero_rows_tile(MR, NR, ct, ldc_, add_, bias_);
          else if (cfg.kernel_ptrs != nullptr)
            cfg.kernel_ptrs(sp.hi - sp.lo, ptrs.data() + ir, b + sp.lo * NR, ct, ldc_, add_, bias_);
          else  // macro_kernel's tile
            cfg.kernel(sp.hi - sp.lo, Ap + ir * kc + sp.lo * MR, b + sp.lo * NR, ct, ldc_, add_, bias_);
        };
        if (c_rows == nullptr)
          macro_tiles(cfg, mc, nc, kc, Bp, C + ic * ldc + jc, ldc, s > 0, bias_jc, tile);
        else
          macro_tiles(cfg, mc, nc, kc, Bp, C + jc, ldc, s > 0, bias_jc, tile, c_rows + ic);
      }
    }
  }
}

}  // namespace gemm_detail

/// C[M,N] = bias + A B (bias: nullptr or N values; B(k, j) = B[k*b_rs + j*b_cs]) where A is not
/// stored as a matrix: an indirect GEMM (as XNNPACK's for convolutions). K is cut into `slices`
/// (in order, covering 0 .. K), and for slice s, rows(s, i0, m, ptrs, spans, edge, zeros) sets
/// ptrs[i] (i < m) to the start of row i0 + i's kc values of the slice, contiguous: in place, at
/// `zeros` (as many zeros as the deepest slice), or at a copy it writes in `edge` (room for m kc
/// values, the calling thread's own). spans[i] comes in as {0, kc}; the function may narrow it
/// to the part of the row that may be nonzero (the row's values outside it must be zero). It
/// returns whether it set any row to `zeros` or narrowed any span (false: the tiles do not look,
/// and run every product, which for finite B gives the same bits). A convolution's rows are its
/// output pixels' input runs, read in place: no im2col matrix (forward_gemm). Every element of C
/// is, slice by slice in order, one FMA chain from zero added to C (to the bias, or 0, for the
/// first slice): the same bits for any thread count. Threads split M and N as gemm() does; B is
/// packed slice by slice as there.
/// A register tile runs its chains over the union of its rows' spans only, and none where every
/// row points at `zeros` or has an empty span (zero_rows_tile): a convolution's padding (a
/// kernel row above or below the input, taps left or right of it). The products left out are
/// 0 * b, which leave a chain from +0 unchanged, so these are the bits of the whole chain where
/// B is finite; and B's inf or NaN is not multiplied by the zeros outside the union (as the
/// convolution's direct and indirect kernels skip the padded taps; a row's zeros inside its
/// tile's union are). Tiles are MR rows from row 0 whatever the thread count, so that holds for
/// any thread count too.
/// With c_rows (M distinct row indices of C, or nullptr: row i), row i of the product is
/// stored to C row c_rows[i]: rows ordered so that a tile's rows share their padding
/// (forward_rows_plan) while C keeps its own order. It changes no element's chain. tile_rows
/// picks the register tile's rows where the level has such a tile (gemm_indirect_config).
/// With keep, keep(i0, m, j0, n) says whether the tile of rows i0 .. i0 + m - 1 and columns
/// j0 .. j0 + n - 1 is wanted at all: one it rejects runs no chains and is stored as if its
/// rows were zero (zero_rows_tile), whatever they are: dY.W's columns of taps in the padding,
/// which col2im never reads.
template <typename T, typename RowsFn, typename KeepFn = std::nullptr_t>
void gemm_indirect(int64_t M, int64_t N, const std::vector<KSlice>& slices, const RowsFn& rows, const T* B,
                   int64_t b_rs, int64_t b_cs, T* C, int64_t ldc, const T* bias, const int64_t* c_rows = nullptr,
                   int64_t tile_rows = 0, const KeepFn& keep = nullptr) {
  if (M <= 0 || N <= 0) return;
  int64_t K = 0, kc_max = 0;
  for (const KSlice& s : slices) {
    K += s.kc;
    kc_max = std::max(kc_max, s.kc);
  }
  if (K == 0) {
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = bias ? bias[j] : T(0);
    return;
  }
  const gemm_detail::GemmConfig<T> cfg = gemm_detail::gemm_indirect_config<T>(M, N, tile_rows);
  const std::vector<T> zeros(static_cast<size_t>(kc_max), T(0));
  const int64_t work = saturating_mul(saturating_mul(M, N), K);
  gemm_detail::for_each_gemm_block(cfg, M, N, work, [&](int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
    gemm_detail::gemm_indirect_block(cfg, m0, m1, n0, n1, slices, kc_max, rows, zeros.data(), B, b_rs, b_cs, C,
                                     ldc, bias, c_rows, keep);
  }, cfg.kernel_ptrs ? 0 : 16);
}

// A kernel header lists its entry points as LIST(PREFIX, T); where NABLAGRAD_EXTERN_KERNELS is
// defined, NABLAGRAD_EXTERN_KERNEL_INSTANCES(LIST) declares them `extern template` for float and
// double, and one unit of the program defines them (kernels/instances.h).
#ifdef NABLAGRAD_EXTERN_KERNELS
#define NABLAGRAD_EXTERN_KERNEL_INSTANCES(LIST) LIST(extern template, float) LIST(extern template, double)
#else
#define NABLAGRAD_EXTERN_KERNEL_INSTANCES(LIST)
#endif

#define NABLAGRAD_GEMM_INSTANCES(PREFIX, T)                                                                  \
  PREFIX void gemm<T>(int64_t, int64_t, int64_t, const T*, int64_t, int64_t, const T*, int64_t, int64_t, T*, \
                      int64_t, bool, const T*);
NABLAGRAD_EXTERN_KERNEL_INSTANCES(NABLAGRAD_GEMM_INSTANCES)

}  // namespace kernels
}  // namespace nablagrad

#endif  // NABLAGRAD_KERNELS_GEMM_H
