// nablagrad/kernels/conv2d/microkernel.h - the register-blocked kernels of the convolution
// passes, one variant per SIMD level, and the table that picks them.
//
// Every fast pass (forward.h, backward_input.h, backward_weight.h, small_c.h) asks once per
// call for `conv_kernels<T>()`: a ConvKernels<T> holding the register tile (MR x NR), the
// depth slice KC and function pointers to the variants of the current simd_level()
// (portable C++, AVX2+FMA, AVX-512F). The passes never test the level themselves, so a new
// level is a new row of the table, not a new branch in every pass (as GemmConfig does for
// the matrix multiply in gemm.h). A level without its own variant of a kernel reuses the
// next lower one (the AVX2 kernels run at the AVX-512 level unless the table says otherwise).
//
// The kernels (all sum in a fixed order; see each comment):
//   tile       C[MR x NR] += A B             gather GEMM (im2col tile x packed kernel panel)
//   direct     out[MR x NR] = A B (+ bias)   A read in place from rows of a padded input
//   indirect   out[MR x NR] = A B (+ bias)   A's runs at a pointer per pixel and kernel row
//   dot        sum a[k] b[k]                 narrow outputs
//   narrow_row out[j] = sum_t <src[t], bt_j> narrow outputs straight from dY runs
//   smallc_dx  NP pixels x C channels        small-C input gradient (nullptr: not available)
//   smallc_dw  <= 12 taps x VL filters       small-C kernel gradient, register accumulators
// and, outside the table, chosen from it by the functions at the end of this file:
//   direct_s1_kernel  out[24 x W] stride-1 direct, one broadcast per input value (AVX-512)
//   dw_s1_kernels     one row's kernel-gradient sums, stride 1, the same idea (AVX-512)
//   sum_rows          column sums of dY (the bias gradient), per level
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "../simd.h"
#include "../vec.h"

namespace nablagrad {
namespace kernels {
namespace conv_detail {

// Largest register tile of any variant (MR * NR values): callers size stack buffers with it.
constexpr int64_t kMaxTileValues = 1024;
// Stride of the small-C kernel-gradient accumulator buffers (>= the widest VL).
constexpr int64_t kSmallCAccStride = 32;
// Rows (output pixels) of the AVX-512 one-vector tile (24 x 1 vector: its direct, indirect and
// stride-1 kernels); winograd_preferred's 5x5 rule counts how well output rows fill it.
constexpr int kAvx512OneVectorRows = 24;
// The rows of the 1-vector AVX2 direct tiles (ConvKernels::direct_one): 12 or 14 sums, the
// panel's vector and a broadcast in AVX2's 16 registers; 4 for the tails.
constexpr int kDirectOneRows = 12, kDirectOneWideRows = 14, kDirectOneTailRows = 4;

#if NABLAGRAD_X86
// Prefetches into L1 the line `bytes` past p. The address is formed as an integer, not as
// p + n: in a loop's last steps it lies past the end of the panel, and a pointer formed
// there would be undefined behaviour (a prefetch of any address is harmless).
inline void prefetch_ahead(const void* p, size_t bytes) {
  _mm_prefetch(reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(p) + bytes), _MM_HINT_T0);
}

// Rows at a runtime stride without a register per row. A 24-row tile whose rows lie a_rs
// apart needs 24 addresses per depth step; left to itself GCC keeps 24 row pointers, 13 of
// which spill, and the step then loads a pointer for every other broadcast (seen in objdump:
// the 24 x 1 direct kernel ran at 55% of peak on a Xeon with two 512-bit FMA ports). Here the
// rows go in groups of 8 from one base pointer per group, and x86's scaled addressing reaches
// the 8 rows of a group from 4 stride registers (rs, 3 rs, 5 rs, 7 rs): 0, rs, 2 rs, 3 rs,
// 4 rs, 5 rs, 2 (3 rs), 7 rs. The base pointers pass through an empty asm so that GCC cannot
// fold them back into per-row pointers. Only for 1-vector tiles, whose broadcasts are FMA
// memory operands: with 2 vectors each broadcast needs a register, and GCC then hoists all 12
// broadcasts of a step and spills accumulators (12 x 2 direct kernel: 161 -> 109 GF/s).
struct RowStrides {
  int64_t rs, rs3, rs5, rs7, rs8;  // bytes
  // The multiples pass through the asm too: knowing rs3 = 3 rs, GCC would rebuild the rows
  // as a chain of rs additions, one register each.
  explicit RowStrides(int64_t bytes) : rs(bytes), rs3(3 * bytes), rs5(5 * bytes), rs7(7 * bytes), rs8(8 * bytes) {
    __asm__("" : "+r"(rs), "+r"(rs3), "+r"(rs5), "+r"(rs7), "+r"(rs8));
  }
};

// Row j (< 8) of the group at p.
__attribute__((always_inline)) inline const char* group_row(const char* p, int j, const RowStrides& s) {
  switch (j) {
    case 0: return p;
    case 1: return p + s.rs;
    case 2: return p + 2 * s.rs;
    case 3: return p + s.rs3;
    case 4: return p + 4 * s.rs;
    case 5: return p + s.rs5;
    case 6: return p + 2 * s.rs3;
    default: return p + s.rs7;
  }
}

// The register-tile kernels written once over a vector type, per instruction set (see
// tile_kernel.inc).
namespace tile_detail {
namespace avx2 {
#define NABLAGRAD_TILE_TARGET NABLAGRAD_VEC_AVX2
#include "tile_kernel.inc"
#undef NABLAGRAD_TILE_TARGET
}  // namespace avx2
namespace avx512 {
#define NABLAGRAD_TILE_TARGET NABLAGRAD_VEC_AVX512
#include "tile_kernel.inc"
#undef NABLAGRAD_TILE_TARGET
}  // namespace avx512
}  // namespace tile_detail
#endif

// Pixels per block of the smallc_dx kernels: NP*C <= 8 accumulators.
inline int64_t smallc_dx_np(int64_t C) { return C == 1 ? 8 : C == 2 ? 4 : 2; }

// ============================================================================================
// Portable kernels (plain C++, any CPU).
// ============================================================================================

// C[MR x NR] (row stride ldc) += sum_{d < depth} A(i, d) * b[d*NR + j], A(i,d) = a[i*a_rs + d*a_cs].
template <typename T, int MR, int NR>
inline void micro_kernel_portable(int64_t depth, const T* a, int64_t a_rs, int64_t a_cs,
                                  const T* b, T* c, int64_t ldc) {
  PortableTile<T, MR, NR> tile;
  for (int64_t d = 0; d < depth; ++d) {
    T ad[MR];
    for (int i = 0; i < MR; ++i) ad[i] = a[i * a_rs + d * a_cs];
    tile.step(ad, b + d * NR);
  }
  tile.add_to(c, ldc);
}

// C[MR x NR] += A B where depth step d's column of A is MR consecutive values at its own
// pointer: A(i, d) = cols[d][off + i]. The kernel gradient's operand: column d is a pixel's run of
// one kernel row, wherever the pixel lies, so one call's depth runs on across output rows.
template <typename T, int64_t MR, int64_t NR>
inline void column_kernel_portable(int64_t depth, const T* const* cols, int64_t off,
                                   const T* b, T* c, int64_t ldc) {
  PortableTile<T, static_cast<int>(MR), static_cast<int>(NR)> tile;
  for (int64_t d = 0; d < depth; ++d) {
    T ad[MR];
    for (int64_t i = 0; i < MR; ++i) ad[i] = cols[d][off + i];
    tile.step(ad, b + d * NR);
  }
  tile.add_to(c, ldc);
}

// Stores a finished register tile: dst[i*ldd + j] = out[i*ldo + j] (+ bias[j]) for i < rows,
// j < n. The direct, indirect and phase kernels' outputs are large (a first layer writes
// MBs), and this loop is where their time goes; compiled per level (the same loop with the
// level's target, so the compiler vectorises it with that level's registers): AVX-512
// stores 64 bytes per instruction where baseline SSE stores 16, and four times fewer stores
// in flight per byte while lines are fetched: measured 0.27 -> 0.19 ms for the C = 1 3x3
// forward (64,28,28,1->32), 2 threads, Zen 5.
#define NG_STORE_TILE_BODY                                         \
  for (int64_t i = 0; i < rows; ++i) {                             \
    T* __restrict d = dst + i * ldd;                               \
    const T* __restrict o = out + i * ldo;                         \
    if (bias)                                                      \
      for (int64_t j = 0; j < n; ++j) d[j] = o[j] + bias[j];       \
    else                                                           \
      for (int64_t j = 0; j < n; ++j) d[j] = o[j];                 \
  }
template <typename T>
inline void store_tile_portable(const T* out, int64_t rows, int64_t ldo, T* dst, int64_t ldd,
                                const T* bias, int64_t n) {
  NG_STORE_TILE_BODY
}
#if NABLAGRAD_X86
template <typename T>
__attribute__((target("avx2,fma"))) inline void store_tile_avx2(const T* out, int64_t rows, int64_t ldo,
                                                                T* dst, int64_t ldd, const T* bias, int64_t n) {
  NG_STORE_TILE_BODY
}
template <typename T>
__attribute__((target("avx512f,avx2,fma"))) inline void store_tile_avx512(const T* out, int64_t rows,
                                                                          int64_t ldo, T* dst, int64_t ldd,
                                                                          const T* bias, int64_t n) {
  NG_STORE_TILE_BODY
}
#endif
#undef NG_STORE_TILE_BODY

// acc[j] += sum_{r < rows} src[r ld + j] for j < n, each sum in row order (the bias gradient's
// column sums of dY). Compiled per level like store_tile; the columns go in blocks of 64 whose
// sums stay in registers while the rows stream by (the plain loop re-loaded and re-stored acc
// for every row at baseline SSE width: 8% of the 1x1 kernel gradient's time).
#define NG_SUM_ROWS_BODY                                          \
  int64_t j0 = 0;                                                 \
  for (; j0 + 64 <= n; j0 += 64) {                                \
    T a[64];                                                      \
    for (int j = 0; j < 64; ++j) a[j] = acc[j0 + j];              \
    for (int64_t r = 0; r < rows; ++r) {                          \
      const T* __restrict s = src + r * ld + j0;                  \
      for (int j = 0; j < 64; ++j) a[j] += s[j];                  \
    }                                                             \
    for (int j = 0; j < 64; ++j) acc[j0 + j] = a[j];              \
  }                                                               \
  for (int64_t r = 0; r < rows; ++r)                              \
    for (int64_t j = j0; j < n; ++j) acc[j] += src[r * ld + j];
template <typename T>
inline void sum_rows_portable(const T* __restrict src, int64_t rows, int64_t ld, int64_t n, T* __restrict acc) {
  NG_SUM_ROWS_BODY
}
#if NABLAGRAD_X86
template <typename T>
__attribute__((target("avx2,fma"))) inline void sum_rows_avx2(const T* __restrict src, int64_t rows, int64_t ld,
                                                              int64_t n, T* __restrict acc) {
  NG_SUM_ROWS_BODY
}
template <typename T>
__attribute__((target("avx512f,avx2,fma"))) inline void sum_rows_avx512(const T* __restrict src, int64_t rows,
                                                                        int64_t ld, int64_t n, T* __restrict acc) {
  NG_SUM_ROWS_BODY
}
#endif
#undef NG_SUM_ROWS_BODY

/// sum_rows at the current simd_level(): the same bits at every level (each sum runs down the
/// rows in order; only the columns are spread over vector lanes).
template <typename T>
inline void sum_rows(const T* src, int64_t rows, int64_t ld, int64_t n, T* acc) {
#if NABLAGRAD_X86
  if (simd_at_least(SimdLevel::AVX512)) return sum_rows_avx512(src, rows, ld, n, acc);
  if (simd_at_least(SimdLevel::AVX2)) return sum_rows_avx2(src, rows, ld, n, acc);
#endif
  sum_rows_portable(src, rows, ld, n, acc);
}

// Dot product of length n (the narrow-output path), fixed summation order.
template <typename T>
inline T dot_portable(const T* a, const T* b, int64_t n) {
  T s[4] = {0, 0, 0, 0};
  int64_t k = 0;
  for (; k + 4 <= n; k += 4)
    for (int64_t l = 0; l < 4; ++l) s[l] += a[k + l] * b[k + l];
  T sum = (s[0] + s[1]) + (s[2] + s[3]);
  for (; k < n; ++k) sum += a[k] * b[k];
  return sum;
}

#if NABLAGRAD_X86
__attribute__((target("avx2,fma"))) inline float dot_avx2(const float* a, const float* b,
                                                          int64_t n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= n; k += 16) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + k), _mm256_loadu_ps(b + k), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + k + 8), _mm256_loadu_ps(b + k + 8), s1);
  }
  for (; k + 8 <= n; k += 8)
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + k), _mm256_loadu_ps(b + k), s0);
  alignas(32) float t[8];
  _mm256_store_ps(t, _mm256_add_ps(s0, s1));
  float sum = ((t[0] + t[1]) + (t[2] + t[3])) + ((t[4] + t[5]) + (t[6] + t[7]));
  for (; k < n; ++k) sum += a[k] * b[k];
  return sum;
}

__attribute__((target("avx2,fma"))) inline double dot_avx2(const double* a, const double* b,
                                                           int64_t n) {
  __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
  int64_t k = 0;
  for (; k + 8 <= n; k += 8) {
    s0 = _mm256_fmadd_pd(_mm256_loadu_pd(a + k), _mm256_loadu_pd(b + k), s0);
    s1 = _mm256_fmadd_pd(_mm256_loadu_pd(a + k + 4), _mm256_loadu_pd(b + k + 4), s1);
  }
  for (; k + 4 <= n; k += 4)
    s0 = _mm256_fmadd_pd(_mm256_loadu_pd(a + k), _mm256_loadu_pd(b + k), s0);
  alignas(32) double t[4];
  _mm256_store_pd(t, _mm256_add_pd(s0, s1));
  double sum = (t[0] + t[1]) + (t[2] + t[3]);
  for (; k < n; ++k) sum += a[k] * b[k];
  return sum;
}
#endif

// Narrow outputs (few columns, e.g. the input gradient of a C=1 or C=3 layer): no im2col
// copy at all. out[j] = sum_t sum_{q<len} src[t][q] * bt[j*K + t*len + q], src[t] == nullptr
// meaning a zero (padding) segment; vector partial sums run across all segments.
template <typename T>
inline void narrow_row_portable(const T* const* src, int64_t nseg, int64_t len, const T* bt,
                                int64_t K, int64_t ncols, T* out) {
  for (int64_t j = 0; j < ncols; ++j) {
    T s[4] = {0, 0, 0, 0};
    for (int64_t t = 0; t < nseg; ++t) {
      if (!src[t]) continue;
      const T* a = src[t];
      const T* b = bt + j * K + t * len;
      int64_t k = 0;
      for (; k + 4 <= len; k += 4)
        for (int64_t l = 0; l < 4; ++l) s[l] += a[k + l] * b[k + l];
      for (; k < len; ++k) s[0] += a[k] * b[k];
    }
    out[j] = (s[0] + s[1]) + (s[2] + s[3]);
  }
}

#if NABLAGRAD_X86
// All (<= 4) columns at once: each 8-float load of a dY run feeds NC FMAs.
template <int NC>
__attribute__((target("avx2,fma"))) inline void narrow_row_avx2_nc(const float* const* src,
                                                                   int64_t nseg, int64_t len,
                                                                   const float* bt, int64_t K,
                                                                   float* out) {
  __m256 s[NC];
  float tail[NC];
  for (int j = 0; j < NC; ++j) {
    s[j] = _mm256_setzero_ps();
    tail[j] = 0;
  }
  for (int64_t t = 0; t < nseg; ++t) {
    if (!src[t]) continue;
    const float* a = src[t];
    const float* b = bt + t * len;
    int64_t k = 0;
    for (; k + 8 <= len; k += 8) {
      const __m256 av = _mm256_loadu_ps(a + k);
      for (int j = 0; j < NC; ++j)
        s[j] = _mm256_fmadd_ps(av, _mm256_loadu_ps(b + j * K + k), s[j]);
    }
    for (; k < len; ++k)
      for (int j = 0; j < NC; ++j) tail[j] += a[k] * b[j * K + k];
  }
  for (int j = 0; j < NC; ++j) {
    alignas(32) float v[8];
    _mm256_store_ps(v, s[j]);
    out[j] = (((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7]))) + tail[j];
  }
}

__attribute__((target("avx2,fma"))) inline void narrow_row_avx2(const float* const* src,
                                                                int64_t nseg, int64_t len,
                                                                const float* bt, int64_t K,
                                                                int64_t ncols, float* out) {
  int64_t j = 0;
  for (; j + 4 <= ncols; j += 4) narrow_row_avx2_nc<4>(src, nseg, len, bt + j * K, K, out + j);
  switch (ncols - j) {
    case 3: narrow_row_avx2_nc<3>(src, nseg, len, bt + j * K, K, out + j); break;
    case 2: narrow_row_avx2_nc<2>(src, nseg, len, bt + j * K, K, out + j); break;
    case 1: narrow_row_avx2_nc<1>(src, nseg, len, bt + j * K, K, out + j); break;
    default: break;
  }
}
__attribute__((target("avx2,fma"))) inline void narrow_row_avx2(const double* const* src,
                                                                int64_t nseg, int64_t len,
                                                                const double* bt, int64_t K,
                                                                int64_t ncols, double* out) {
  for (int64_t j = 0; j < ncols; ++j) {
    __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
    double tail = 0;
    for (int64_t t = 0; t < nseg; ++t) {
      if (!src[t]) continue;
      const double* a = src[t];
      const double* b = bt + j * K + t * len;
      int64_t k = 0;
      for (; k + 8 <= len; k += 8) {
        s0 = _mm256_fmadd_pd(_mm256_loadu_pd(a + k), _mm256_loadu_pd(b + k), s0);
        s1 = _mm256_fmadd_pd(_mm256_loadu_pd(a + k + 4), _mm256_loadu_pd(b + k + 4), s1);
      }
      for (; k + 4 <= len; k += 4)
        s0 = _mm256_fmadd_pd(_mm256_loadu_pd(a + k), _mm256_loadu_pd(b + k), s0);
      for (; k < len; ++k) tail += a[k] * b[k];
    }
    alignas(32) double v[4];
    _mm256_store_pd(v, _mm256_add_pd(s0, s1));
    out[j] = ((v[0] + v[1]) + (v[2] + v[3])) + tail;
  }
}
#endif

// Direct micro-kernel for the small-depth forward pass (no im2col copy): the A operand is read
// straight from the zero-padded input, the depth being nh kernel rows of len = FW*C
// contiguous values each:
//   out[i*ldo + j] = sum_{h < nh} sum_{d < len} a[i*a_rs + h*a_hs + d] * b[(h*len + d)*NR + j]
//                    (+ bias[j] where bias is not null)
// for i < MR, j < NR; out is overwritten (one FMA chain per element, (h, d) ascending, which
// is the same order as the im2col GEMM, then the bias: store_tile's one addition). A caller
// whose tile lies wholly inside its output passes the output itself (ldo its row stride, the
// bias): the tile then goes from the registers to the output, not through a buffer and
// store_tile.
template <typename T, int MR, int NR>
inline void direct_kernel_portable(int64_t nh, int64_t len, const T* a, int64_t a_rs,
                                   int64_t a_hs, const T* b, T* out, int64_t ldo, const T* bias) {
  PortableTile<T, MR, NR> tile;
  for (int64_t h = 0; h < nh; ++h) {
    const T* ah = a + h * a_hs;
    const T* bh = b + h * len * NR;
    for (int64_t d = 0; d < len; ++d) {
      T ad[MR];
      for (int i = 0; i < MR; ++i) ad[i] = ah[i * a_rs + d];
      tile.step(ad, bh + d * NR);
    }
  }
  tile.store_to(out, ldo, bias);
}

// Indirect micro-kernel: the direct kernel's sum, but the run of kernel row h of pixel i
// starts at its own pointer rows[h*MR + i] (len values each), so the MR pixels need not be
// equally spaced: a block runs on across output rows, and a border pixel points at a
// zero-padded copy of its run (or at zeros), with no padded copy of the whole input:
//   out[i*ldo + j] = sum_{h < nh} sum_{d < len} rows[h*MR + i][d] * b[(h*len + d)*NR + j]
//                    (+ bias[j] where bias is not null)
// out is overwritten; one FMA chain per element, (h, d) ascending (the im2col GEMM's order),
// out and bias as for the direct kernel.
template <typename T, int MR, int NR>
inline void indirect_kernel_portable(int64_t nh, int64_t len, const T* const* rows, const T* b,
                                     T* out, int64_t ldo, const T* bias) {
  PortableTile<T, MR, NR> tile;
  for (int64_t h = 0; h < nh; ++h) {
    const T* const* rh = rows + h * MR;
    const T* bh = b + h * len * NR;
    for (int64_t d = 0; d < len; ++d) {
      T ad[MR];
      for (int i = 0; i < MR; ++i) ad[i] = rh[i][d];
      tile.step(ad, bh + d * NR);
    }
  }
  tile.store_to(out, ldo, bias);
}

#if NABLAGRAD_X86

// Input gradient for few input channels (C <= 4), NP consecutive pixels of one phase row at
// once. In a phase, tap t = (th, tw) of pixel ix + p reads the dY pixel src[t] + p*Q (the next
// output column), so one load of the flipped-kernel vector W_t[c, q-block] serves NP pixels:
//   out[p*ostride + c] = sum_t sum_q src[t][p*Q + q] * bt[c*K + t*Q + q]
// (the phase sum of conv2d_backward_input; src[t] == nullptr: the tap reads a padding row).
// NP*C vector accumulators, reduced in a fixed order at the end.
template <typename V, int C, int NP>
NABLAGRAD_VEC_AVX2 inline void smallc_dx_block_avx2(
    const typename V::T* const* src, int64_t ntap, int64_t Q, const typename V::T* bt,
    int64_t K, typename V::T* out, int64_t ostride) {
  using T = typename V::T;
  using VT = typename V::VT;
  constexpr int64_t L = V::W;
  VT acc[NP * C];
  T tail[NP * C];
#pragma GCC unroll 16
  for (int i = 0; i < NP * C; ++i) {
    acc[i] = V::zero();
    tail[i] = 0;
  }
  for (int64_t t = 0; t < ntap; ++t) {
    const T* a = src[t];
    if (!a) continue;
    const T* b = bt + t * Q;
    int64_t k = 0;
    for (; k + L <= Q; k += L) {
      VT wv[C];
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c) wv[c] = V::load(b + c * K + k);
#pragma GCC unroll 8
      for (int p = 0; p < NP; ++p) {
        const VT d = V::load(a + p * Q + k);
#pragma GCC unroll 4
        for (int c = 0; c < C; ++c) acc[p * C + c] = V::fma(d, wv[c], acc[p * C + c]);
      }
    }
    for (; k < Q; ++k)
      for (int p = 0; p < NP; ++p)
        for (int c = 0; c < C; ++c) tail[p * C + c] += a[p * Q + k] * b[c * K + k];
  }
  for (int p = 0; p < NP; ++p)
    for (int c = 0; c < C; ++c) {
      alignas(32) T v[L];
      V::store(v, acc[p * C + c]);
      T s = v[0];
      if (L == 8)
        s = ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4 % L] + v[5 % L]) + (v[6 % L] + v[7 % L]));
      else
        s = (v[0] + v[1]) + (v[2] + v[3]);
      out[p * ostride + c] = s + tail[p * C + c];
    }
}

template <typename T>
inline void smallc_dx_block(int64_t C, const T* const* src, int64_t ntap, int64_t Q,
                            const T* bt, int64_t K, T* out, int64_t ostride) {
  using V = VecAvx2<T>;
  switch (C) {
    case 1: return smallc_dx_block_avx2<V, 1, 8>(src, ntap, Q, bt, K, out, ostride);
    case 2: return smallc_dx_block_avx2<V, 2, 4>(src, ntap, Q, bt, K, out, ostride);
    case 3: return smallc_dx_block_avx2<V, 3, 2>(src, ntap, Q, bt, K, out, ostride);
    case 4: return smallc_dx_block_avx2<V, 4, 2>(src, ntap, Q, bt, K, out, ostride);
    default: break;
  }
}
#endif

// Kernel gradient for few input channels (C <= 4), no im2col and no GEMM packing:
//   dW[q, fh, fw, c] = sum_{(n,ho,wo)} dY[n,ho,wo,q] * Xp[n, ho*S_h + fh, wo*S_w + fw, c]
//   db[q]            = sum_{(n,ho,wo)} dY[n,ho,wo,q]
// (the document's dk(h,c,d,r) over the gamma = 1 entries of the dilated dY, and dL/db = sum G).
// The input is copied once into a zero-padded buffer Xp (one padded row = prow values), so a
// tap (fh, j = fw*C + c) of output pixel (n, ho, wo) is Xp_row(n, ho*S_h + fh)[wo*S_w*C + j]:
// the FW*C taps of one kernel row are one contiguous run. The taps are cut into blocks of
// NRW <= 4 kernel rows x NCL <= 3 consecutive run values (<= 12 taps), the filters into blocks
// of VL (one AVX2 vector: 8 floats / 4 doubles; two AVX-512 ones: 32 / 16; the last masked);
// for each (tap block, filter block) the <= 12 x (1 or 2) vector accumulators
// acc[t] += X(pixel, t) * dY(pixel, q-block) (plus the bias sum)
// stay in registers over all pixels of a chunk. Chunks are runs of whole output rows whose
// size depends on the shape only; each chunk writes its own partial (K x Q) and the partials
// are added in chunk order, so the result is the same for any thread count.
struct SmallCPlan {
  int64_t Hp, prow, xs, K, len;
  std::vector<int64_t> row_start, row_count, col_start, col_count;  // tap blocks
};

template <typename T>
inline void smallc_dw_block_portable_acc(const SmallCPlan& pl, const T* xp, const T* dy,
                                     int64_t Ho, int64_t Wo, int64_t S_h, int64_t Q, int64_t r0,
                                     int64_t r1, int64_t fh0, int64_t nrw, int64_t j0,
                                     int64_t ncl, int64_t q0, int64_t nq, T* acc, T* accb) {
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t n = r / Ho, ho = r % Ho;
    const T* xrow = xp + (n * pl.Hp + ho * S_h + fh0) * pl.prow + j0;
    const T* drow = dy + r * Wo * Q + q0;
    for (int64_t wo = 0; wo < Wo; ++wo) {
      // Indexed, not advanced after the last pixel: with a huge stride, one step past the
      // row would be an out-of-range pointer (UB, and UBSan reports it).
      const T* xb = xrow + wo * pl.xs;
      const T* d = drow + wo * Q;
      for (int64_t a = 0; a < nrw; ++a)
        for (int64_t b = 0; b < ncl; ++b) {
          const T xv = xb[a * pl.prow + b];
          T* ac = acc + (a * ncl + b) * kSmallCAccStride;
          for (int64_t l = 0; l < nq; ++l) ac[l] += xv * d[l];
        }
      if (accb)
        for (int64_t l = 0; l < nq; ++l) accb[l] += d[l];
    }
  }
}

#if NABLAGRAD_X86

// The tap blocks backward_weight_smallc cuts (1-4 kernel rows x 1-3 run values), for the
// switches of the vector levels' dispatchers: X(rows, values) for each.
#define NG_SMALLC_TAP_BLOCKS(X) \
  X(1, 1) X(1, 2) X(1, 3) X(2, 1) X(2, 2) X(2, 3) X(3, 1) X(3, 2) X(3, 3) X(4, 1) X(4, 2) X(4, 3)

// The small-C kernel-gradient blocks, once per instruction set (see small_c_kernel.inc).
namespace smallc_detail {
namespace avx2 {
#define NABLAGRAD_SMALLC_TARGET NABLAGRAD_VEC_AVX2
#include "small_c_kernel.inc"
#undef NABLAGRAD_SMALLC_TARGET
}  // namespace avx2
namespace avx512 {
#define NABLAGRAD_SMALLC_TARGET NABLAGRAD_VEC_AVX512
#include "small_c_kernel.inc"
#undef NABLAGRAD_SMALLC_TARGET
}  // namespace avx512
}  // namespace smallc_detail
#undef NG_SMALLC_TAP_BLOCKS
#endif

#if NABLAGRAD_X86
// ============================================================================================
// The AVX-512F stride-1 kernels (the level's other tiles are tile_kernel.inc's): 32 vector
// registers hold a tile's accumulators beside FW kernel vectors and broadcasts.
// ============================================================================================

// out[24 x NR] of a stride-1 direct convolution with one vector of filters (NR = W): the
// direct kernel's sums, but each input value is broadcast once and used for every tap that
// reaches an output of the tile. The direct kernel's depth step (tap kx, channel c) needs a
// broadcast per FMA, for each of the 24 pixels; here, per kernel row h and channel c, the FW
// vectors w[h, kx, c, :] stay in registers and the input pixels of the row are broadcast in
// turn: pixel s of a group of 12 outputs feeds outputs s - kx (kx < FW). Two groups of 12
// (pixels 0..11 and 12..23, stepped together so that an accumulator's successive FMAs are
// 2 FW FMAs apart: 10 for 5x5, 6 for 3x3): 24 accumulators + FW weights + 2 broadcasts
// <= 32 registers for FW <= 6 (on paper: GCC 12 still spills a few accumulators per step;
// 172-200 GF/s in L1 on the Xeon, 80-93% of its peak), and FW + 2 (11 + FW) loads per
// 24 FW FMAs (0.31 for 5x5) instead of 1.04. a: the tile's first pixel at channel 0 (pixels
// C apart, kernel rows a_hs apart, 23 + FW pixels readable per row); b: the direct kernel's
// packed panel (b[((h FW + kx) C + c) W + j]). Sum order per output: h, then c, then kx.
template <typename T, int FW>
__attribute__((target("avx512f,avx2,fma"))) inline void direct_s1_kernel_avx512(
    int64_t nh, int64_t C, const T* a, int64_t a_hs, const T* b, T* out, int64_t ldo, const T* bias) {
  using V = VecAvx512<T>;
  using VT = typename V::VT;
  constexpr int W = V::W, G = 12, S = G + FW - 1;  // S input pixels per group
  constexpr int NG = (G + S + 7) / 8;                       // groups of 8 input pixels
  static_assert(2 * G + FW + 2 <= 32, "direct_s1: the tile must fit the 32 vector registers");
  const RowStrides px(C * static_cast<int64_t>(sizeof(T)));
  VT acc[2 * G][1];
#pragma GCC unroll 32
  for (int i = 0; i < 2 * G; ++i) acc[i][0] = V::zero();
  for (int64_t h = 0; h < nh; ++h) {
    const char* ah = reinterpret_cast<const char*>(a + h * a_hs);
    const T* bh = b + h * FW * C * W;
    for (int64_t c = 0; c < C; ++c) {
      VT wv[FW];
#pragma GCC unroll 8
      for (int kx = 0; kx < FW; ++kx) wv[kx] = V::load(bh + (kx * C + c) * W);
      const char* pg[NG];
#pragma GCC unroll 8
      for (int j = 0; j < NG; ++j) {
        pg[j] = ah + c * static_cast<int64_t>(sizeof(T)) + j * px.rs8;
        __asm__("" : "+r"(pg[j]));
      }
#pragma GCC unroll 32
      for (int s = 0; s < S; ++s) {
        const VT x0 = V::bcast(reinterpret_cast<const T*>(group_row(pg[s / 8], s % 8, px)));
        const VT x1 = V::bcast(reinterpret_cast<const T*>(group_row(pg[(G + s) / 8], (G + s) % 8, px)));
#pragma GCC unroll 8
        for (int kx = 0; kx < FW; ++kx) {
          const int o = s - kx;
          if (o >= 0 && o < G) {
            acc[o][0] = V::fma(x0, wv[kx], acc[o][0]);
            acc[G + o][0] = V::fma(x1, wv[kx], acc[G + o][0]);
          }
        }
      }
    }
  }
  tile_detail::avx512::store_acc<VecAvx512<T>, 2 * G, 1>(acc, out, ldo, bias);
}

// The same for two vectors of filters (the 12 x 2-vector tile's outputs) and kernels 7 wide:
// per kernel row h and channel c the 7 x 2 vectors w[h, kx, c, :] in registers, and the G + 6
// input pixels of a group of G = 8 outputs broadcast in turn, pixel s feeding outputs s - kx:
// 16 accumulators + 14 weights + 1 broadcast of the 32 registers, and 14 + 14 loads per 112
// FMAs (0.25 a FMA) where the 12 x 2 tile's indirect and direct kernels load 14 per 24
// (0.58). In L1 on the Xeon 203-212 GFLOP/s against the indirect kernel's 182-193 (one core,
// (h, c) steps of 7x7 on 32-64 channels, the panel from L2 or L1 alike). a, b as for
// direct_s1_kernel_avx512 (G + 6 pixels readable per row); sum order per output: h, c, kx.
// A row's remainder past its blocks of 8 runs as blocks of G = 4 (kDirectS1TwoTail).
constexpr int64_t kDirectS1TwoRows = 8, kDirectS1TwoTail = 4;
template <typename T, int FW, int G = static_cast<int>(kDirectS1TwoRows)>
__attribute__((target("avx512f,avx2,fma"))) inline void direct_s1_two_kernel_avx512(
    int64_t nh, int64_t C, const T* a, int64_t a_hs, const T* b, T* out, int64_t ldo, const T* bias) {
  using V = VecAvx512<T>;
  using VT = typename V::VT;
  constexpr int W = V::W, S = G + FW - 1;
  static_assert(2 * G + 2 * FW + 1 <= 32, "direct_s1_two: the tile must fit the 32 vector registers");
  VT acc[G][2];
#pragma GCC unroll 16
  for (int i = 0; i < G; ++i) acc[i][0] = acc[i][1] = V::zero();
  for (int64_t h = 0; h < nh; ++h) {
    const T* ah = a + h * a_hs;
    const T* bh = b + h * FW * C * 2 * W;
    for (int64_t c = 0; c < C; ++c) {
      VT wv[FW][2];
#pragma GCC unroll 8
      for (int kx = 0; kx < FW; ++kx) {
        wv[kx][0] = V::load(bh + (kx * C + c) * 2 * W);
        wv[kx][1] = V::load(bh + (kx * C + c) * 2 * W + W);
      }
      const T* ac = ah + c;
#pragma GCC unroll 32
      for (int s = 0; s < S; ++s) {
        const VT x = V::bcast(ac + s * C);
#pragma GCC unroll 8
        for (int kx = 0; kx < FW; ++kx) {
          const int o = s - kx;
          if (o >= 0 && o < G) {
            acc[o][0] = V::fma(x, wv[kx][0], acc[o][0]);
            acc[o][1] = V::fma(x, wv[kx][1], acc[o][1]);
          }
        }
      }
    }
  }
  tile_detail::avx512::store_acc<VecAvx512<T>, G, 2>(acc, out, ldo, bias);
}

// The kernel gradient's counterpart (stride 1, NV vectors of filters): for nrows output rows
// r of np pixels each and CB channels c of one kernel row, p[kw p_kw + c p_c] += sum_r sum_j
// x[r x_rs + (j + kw) C + c] * dy[r dy_rs + j NV W + :] for kw < FW. The direct path's tile
// kernel broadcasts x[(j + kw) C + c] anew
// for every (j, kw, c); here the broadcast of input pixel i serves the FW steps j = i - kw that
// use it: the FW x CB broadcasts of pixels j .. j + FW - 1 stay in registers (slot i mod FW,
// so the loop is unrolled by FW), and a step loads NV dY vectors and the CB values of pixel
// j + FW - 1: (NV + CB) loads per FW CB NV FMAs (0.27 for 5x5 with CB = 3 on one vector, 0.21
// for 7x7 with CB = 1 on two) instead of ~1. Every step is a real pixel (no padding of dY, so
// no 0 x Inf), and each sum runs over r, then j, in ascending order from zero, then is added
// to p. Rows in one call: the 14 sums of a 7x7 call were loaded, added and stored into p
// (kernel rows apart, past L1) for every output row of 28 pixels: 10% of the kernel's time,
// its set-up another 2.5%. Registers: FW CB (NV + 1) + NV <= 32. x: pixel 0 of row 0's run at
// channel c0 (np + FW - 1 pixels C apart readable per row, rows x_rs apart); dy: np rows of NV
// vectors per output row, output rows dy_rs apart.
template <typename T, int FW, int CB, int NV = 1>
__attribute__((target("avx512f,avx2,fma"))) inline void dw_s1_kernel_avx512(
    int64_t np, int64_t nrows, const T* x, int64_t x_rs, int64_t C, const T* dy, int64_t dy_rs, T* p, int64_t p_kw,
    int64_t p_c) {
  using V = VecAvx512<T>;
  using VT = typename V::VT;
  constexpr int W = V::W;
  static_assert(FW * CB * (NV + 1) + NV <= 32, "dw_s1: the broadcasts and sums must fit the 32 vector registers");
  VT acc[FW][CB][NV], xb[FW][CB];
#pragma GCC unroll 8
  for (int k = 0; k < FW; ++k)
#pragma GCC unroll 8
    for (int c = 0; c < CB; ++c)
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) acc[k][c][v] = V::zero();
  for (int64_t r = 0; r < nrows; ++r, x += x_rs, dy += dy_rs) {
#pragma GCC unroll 8
    for (int k = 0; k + 1 < FW; ++k)
#pragma GCC unroll 8
      for (int c = 0; c < CB; ++c) xb[k][c] = V::bcast(x + k * C + c);
    const T* xn = x + (FW - 1) * C;  // the pixel that step j adds: j + FW - 1
    for (int64_t j0 = 0; j0 < np; j0 += FW) {
#pragma GCC unroll 8
      for (int u = 0; u < FW; ++u) {
        if (j0 + u >= np) break;
#pragma GCC unroll 8
        for (int c = 0; c < CB; ++c) xb[(u + FW - 1) % FW][c] = V::bcast(xn + c);
        xn += C;
        VT d[NV];
#pragma GCC unroll 2
        for (int v = 0; v < NV; ++v) d[v] = V::load(dy + ((j0 + u) * NV + v) * W);
#pragma GCC unroll 8
        for (int k = 0; k < FW; ++k)
#pragma GCC unroll 8
          for (int c = 0; c < CB; ++c)
#pragma GCC unroll 2
            for (int v = 0; v < NV; ++v) acc[k][c][v] = V::fma(xb[(u + k) % FW][c], d[v], acc[k][c][v]);
      }
    }
  }
#pragma GCC unroll 8
  for (int k = 0; k < FW; ++k)
#pragma GCC unroll 8
    for (int c = 0; c < CB; ++c)
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) {
        T* pk = p + k * p_kw + c * p_c + v * W;
        V::store(pk, V::add(V::load(pk), acc[k][c][v]));
      }
}

#endif

// Portable small-C kernel gradient block: acc (and accb) overwritten, as the vector variants do.
template <typename T>
inline void smallc_dw_block_portable(const SmallCPlan& pl, const T* xp, const T* dy, int64_t Ho,
                                     int64_t Wo, int64_t S_h, int64_t Q, int64_t r0, int64_t r1,
                                     int64_t fh0, int64_t nrw, int64_t j0, int64_t ncl,
                                     int64_t q0, int64_t nq, T* acc, T* accb) {
  std::fill(acc, acc + 12 * kSmallCAccStride, T(0));
  if (accb) std::fill(accb, accb + kSmallCAccStride, T(0));
  smallc_dw_block_portable_acc(pl, xp, dy, Ho, Wo, S_h, Q, r0, r1, fh0, nrw, j0, ncl, q0, nq,
                               acc, accb);
}

// ============================================================================================
// The table: one row per (type, SIMD level).
// ============================================================================================

template <typename T>
using TileKernel = void (*)(int64_t depth, const T* a, int64_t a_rs, int64_t a_cs, const T* b,
                            T* c, int64_t ldc);
template <typename T>
using DirectKernel = void (*)(int64_t nh, int64_t len, const T* a, int64_t a_rs, int64_t a_hs,
                              const T* b, T* out, int64_t ldo, const T* bias);
template <typename T>
using IndirectKernel = void (*)(int64_t nh, int64_t len, const T* const* rows, const T* b, T* out,
                                int64_t ldo, const T* bias);
template <typename T>
using ColumnKernel = void (*)(int64_t depth, const T* const* cols, int64_t off, const T* b, T* c,
                              int64_t ldc);
template <typename T>
using StoreTileKernel = void (*)(const T* out, int64_t rows, int64_t ldo, T* dst, int64_t ldd,
                                 const T* bias, int64_t n);
template <typename T>
using DotKernel = T (*)(const T* a, const T* b, int64_t n);
template <typename T>
using NarrowRowKernel = void (*)(const T* const* src, int64_t nseg, int64_t len, const T* bt,
                                 int64_t K, int64_t ncols, T* out);
template <typename T>
using SmallCDxKernel = void (*)(int64_t C, const T* const* src, int64_t ntap, int64_t Q,
                                const T* bt, int64_t K, T* out, int64_t ostride);
template <typename T>
using SmallCDwKernel = void (*)(const SmallCPlan& pl, const T* xp, const T* dy, int64_t Ho,
                                int64_t Wo, int64_t S_h, int64_t Q, int64_t r0, int64_t r1,
                                int64_t fh0, int64_t nrw, int64_t j0, int64_t ncl, int64_t q0,
                                int64_t nq, T* acc, T* accb);

/// The kernels of one (type, SIMD level), chosen once per call by conv_kernels<T>().
template <typename T>
struct ConvKernels {
  SimdLevel level;   // the variant these kernels belong to
  int64_t MR, NR;    // register tile of `tile` and `direct` (pixels x filters), MR*NR <= kMaxTileValues
  int64_t KC;        // depth slice of the gather GEMM (the packed A tile is MR.. x KC)
  int64_t VL;        // filters per block of smallc_dw (an AVX2 vector, two AVX-512 ones), <= kSmallCAccStride
  TileKernel<T> tile;
  DirectKernel<T> direct;
  IndirectKernel<T> indirect;
  ColumnKernel<T> column;
  StoreTileKernel<T> store_tile;
  DotKernel<T> dot;
  NarrowRowKernel<T> narrow_row;
  SmallCDxKernel<T> smallc_dx;  // nullptr where the level has no such kernel
  SmallCDwKernel<T> smallc_dw;
  // Rows of a shorter tile (0 / nullptr where the level has none) for the last block of a
  // kernel row in the kernel gradient (backward_weight_direct): 80 values (5x5 on 16
  // channels) are 3 x 24 + 8 rather than 4 x 24 with 16 rows of padding.
  int64_t MR_tail;
  TileKernel<T> tile_tail;
  ColumnKernel<T> column_tail;
  // A direct kernel of fewer rows (0 / nullptr where the level has none) for the last blocks
  // of an output row in forward_direct (direct_row_blocks): rows of 32 pixels run 4 x 6 + 2 x 4
  // on the 6-row AVX2 tile rather than 6 x 6, and 12 + 12 + 8 on the 12-row AVX-512 one
  // (which ran them as 4 x 8 before: per pixel the 8-row tile is ~4% slower).
  int64_t MR_direct_tail = 0;
  DirectKernel<T> direct_tail = nullptr;
  // A direct kernel of more rows (0 / nullptr where the level has none) for the full blocks
  // of rows that it cuts better (direct_row_blocks): 14 x 2 vectors at AVX-512 (28 of the 32
  // registers), rows of 28 as 14 + 14 instead of 12 + 8 + 8.
  int64_t MR_direct_wide = 0;
  DirectKernel<T> direct_wide = nullptr;
  // An indirect kernel of a wider tile (0 / nullptr where the level has none) for filters in
  // whole panels of it (forward_indirect): 6 x 4 vectors at AVX-512 read each input value
  // once per 4 vectors of filters rather than 2, and the forward of (8,112,112,32->64, 3x3
  // S 2) after a cache flush went 3.5 -> 3.1 ms, (8,56,56,64->128) 3.3 -> 3.1 (2 threads).
  int64_t MR_indirect_wide = 0, NR_indirect_wide = 0;
  IndirectKernel<T> indirect_wide = nullptr;
  // An indirect kernel of the same MR rows and NR_indirect_last < NR columns (0 / nullptr
  // where the row has none) for a last panel that it covers (forward_indirect): 56 filters
  // run 16 + 16 + 16 + 8 on the 6 x 2 AVX2 tile rather than 4 x 16, 40 run 24 + 16 on the
  // 4 x 3 one (4 x 2 for the last), 80 run 32 + 32 + 16 on the 12 x 2 AVX-512 one.
  int64_t NR_indirect_last = 0;
  IndirectKernel<T> indirect_last = nullptr;
  // An indirect kernel 3 vectors wide (0 / nullptr where the level has none) for filters in
  // whole panels of it or with a last panel at least two-thirds full (forward_indirect): 8 x 3
  // vectors at AVX-512 (24 accumulators) run 48 filters as one panel, not 32 + 16, and 40 as
  // one panel of 48 rather than 32 + 16: each input value read once.
  int64_t MR_indirect_three = 0, NR_indirect_three = 0;
  IndirectKernel<T> indirect_three = nullptr;
  // The direct kernel of that 3-vector tile (MR_indirect_three x NR_indirect_three; nullptr
  // where the row has none), for outputs in whole panels of it (use_direct_three): the direct
  // forward's filters, the strided input gradient's channels (backward_input_phases_direct).
  DirectKernel<T> direct_three = nullptr;
  // Direct kernels one AVX2 vector wide (NR_direct_one values of T; 0 / nullptr where the row
  // has none), for outputs no wider (use_direct_one): 12 x 1, 14 x 1 (rows they cut better)
  // and 4 x 1 (tails) ymm vectors, at AVX2 and AVX-512 alike. The 2-vector tiles would run
  // such outputs half empty, and the AVX-512 24 x 1 tile half-empty zmm vectors.
  int64_t NR_direct_one = 0;
  DirectKernel<T> direct_one = nullptr, direct_one_wide = nullptr, direct_one_tail = nullptr;
};

/// The kernels of `level` (which the CPU must support); `alt_tile` asks for the level's other
/// register tile, for widths its main tile would pad (conv_kernels_for_width, select.h):
/// AVX-512 24 x 1 vectors (main 12 x 2), AVX2 4 x 3 vectors (main 6 x 2); the portable level
/// has one.
template <typename T>
inline ConvKernels<T> conv_kernels(SimdLevel level, bool alt_tile = false) {
#if NABLAGRAD_X86
  // The AVX-512 rows: 12 x 2-vector tile and direct kernels, or with `alt_tile` (for outputs
  // whose width is not a multiple of 2 vectors, e.g. 16 or 48 filters) 24 x 1-vector ones; the
  // dot, narrow-row and small-C input-gradient kernels are the AVX2 ones (memory-bound: no gain
  // from zmm); the small-C kernel gradient takes 2 zmm vectors of filters (small_c_kernel.inc).
  // The AVX2 rows: 6 x 2 vectors, or with `alt_tile` (widths of 3 vectors but not of 2: 24 or
  // 72 filters, which the main tile pads to 32 and 80) 4 x 3 vectors, 12 accumulators beside
  // the 3 vectors of the kernel's panel and the broadcast (all 16 ymm registers).
  // One table for float and double: the tiles are counted in vectors (W5 / W2 values of T
  // per AVX-512 / AVX2 vector), the GEMM depth KC in 1 KiB of T.
  namespace z = tile_detail::avx512;
  namespace y = tile_detail::avx2;
  using V5 = VecAvx512<T>;
  using V2 = VecAvx2<T>;
  constexpr int64_t W5 = V5::W, W2 = V2::W, KC = 1024 / sizeof(T);
  // Every row: the 1-vector AVX2 direct kernels (use_direct_one).
  const auto with_one = [](ConvKernels<T> k) {
    k.NR_direct_one = W2;
    k.direct_one = &y::direct_kernel<V2, kDirectOneRows, 1>;
    k.direct_one_wide = &y::direct_kernel<V2, kDirectOneWideRows, 1>;
    k.direct_one_tail = &y::direct_kernel<V2, kDirectOneTailRows, 1>;
    return k;
  };
  if (level >= SimdLevel::AVX512) {
    if (alt_tile) {
      ConvKernels<T> k{SimdLevel::AVX512, kAvx512OneVectorRows, W5, KC, 2 * W5, &z::micro_kernel<V5, 24, 1>,
                       &z::direct_kernel<V5, 24, 1>, &z::indirect_kernel<V5, 24, 1>, &z::column_kernel<V5, 24, 1>,
                       &store_tile_avx512<T>, &dot_avx2, &narrow_row_avx2, &smallc_dx_block<T>,
                       &smallc_detail::avx512::smallc_dw_block_dispatch<V5, 2>,
                       8, &z::micro_kernel<V5, 8, 1>, &z::column_kernel<V5, 8, 1>};
      k.MR_direct_tail = 8;
      k.direct_tail = &z::direct_kernel<V5, 8, 1>;
      k.MR_indirect_three = 8;
      k.NR_indirect_three = 3 * W5;
      k.indirect_three = &z::indirect_kernel<V5, 8, 3>;
      k.direct_three = &z::direct_kernel<V5, 8, 3>;
      return with_one(k);
    }
    ConvKernels<T> k{SimdLevel::AVX512, 12, 2 * W5, KC, 2 * W5, &z::micro_kernel<V5, 12, 2>,
                     &z::direct_kernel<V5, 12, 2>, &z::indirect_kernel<V5, 12, 2>, &z::column_kernel<V5, 12, 2>,
                     &store_tile_avx512<T>, &dot_avx2, &narrow_row_avx2, &smallc_dx_block<T>,
                     &smallc_detail::avx512::smallc_dw_block_dispatch<V5, 2>,
                     4, &z::micro_kernel<V5, 4, 2>, &z::column_kernel<V5, 4, 2>};
    k.MR_direct_tail = 8;
    k.direct_tail = &z::direct_kernel<V5, 8, 2>;
    k.MR_direct_wide = 14;
    k.direct_wide = &z::direct_kernel<V5, 14, 2>;
    k.MR_indirect_wide = 6;
    k.NR_indirect_wide = 4 * W5;
    k.indirect_wide = &z::indirect_kernel<V5, 6, 4>;
    k.NR_indirect_last = W5;
    k.indirect_last = &z::indirect_kernel<V5, 12, 1>;
    k.MR_indirect_three = 8;
    k.NR_indirect_three = 3 * W5;
    k.indirect_three = &z::indirect_kernel<V5, 8, 3>;
    k.direct_three = &z::direct_kernel<V5, 8, 3>;
    return with_one(k);
  }
  if (level >= SimdLevel::AVX2) {
    if (alt_tile) {
      ConvKernels<T> k{SimdLevel::AVX2, 4, 3 * W2, KC, W2, &y::micro_kernel<V2, 4, 3>, &y::direct_kernel<V2, 4, 3>,
                       &y::indirect_kernel<V2, 4, 3>, &y::column_kernel<V2, 4, 3>, &store_tile_avx2<T>, &dot_avx2,
                       &narrow_row_avx2, &smallc_dx_block<T>, &smallc_detail::avx2::smallc_dw_block_dispatch<V2, 1>, 0,
                       nullptr, nullptr};
      k.NR_indirect_last = 2 * W2;
      k.indirect_last = &y::indirect_kernel<V2, 4, 2>;
      return with_one(k);
    }
    ConvKernels<T> k{SimdLevel::AVX2, 6, 2 * W2, KC, W2, &y::micro_kernel<V2, 6, 2>, &y::direct_kernel<V2, 6, 2>,
                     &y::indirect_kernel<V2, 6, 2>, &y::column_kernel<V2, 6, 2>, &store_tile_avx2<T>, &dot_avx2,
                     &narrow_row_avx2, &smallc_dx_block<T>, &smallc_detail::avx2::smallc_dw_block_dispatch<V2, 1>, 0,
                     nullptr, nullptr};
    k.MR_direct_tail = 4;
    k.direct_tail = &y::direct_kernel<V2, 4, 2>;
    k.NR_indirect_last = W2;
    k.indirect_last = &y::indirect_kernel<V2, 6, 1>;
    return with_one(k);
  }
#endif
  // The portable row: 6 x 64 bytes of T.
  (void)level, (void)alt_tile;
  constexpr int NRp = 64 / sizeof(T);
  return {SimdLevel::Portable, 6, NRp, 1024 / sizeof(T), NRp / 2, &micro_kernel_portable<T, 6, NRp>,
          &direct_kernel_portable<T, 6, NRp>, &indirect_kernel_portable<T, 6, NRp>, &column_kernel_portable<T, 6, NRp>,
          &store_tile_portable<T>, &dot_portable<T>, &narrow_row_portable<T>, nullptr, &smallc_dw_block_portable<T>, 0,
          nullptr, nullptr};
}

/// Whether cfg is the AVX-512 24 x 1-vector row, the one the stride-1 kernels below belong to.
template <typename T>
inline bool one_vector_avx512(const ConvKernels<T>& cfg) {
#if NABLAGRAD_X86
  return cfg.level == SimdLevel::AVX512 && cfg.MR == kAvx512OneVectorRows && cfg.NR == VecAvx512<T>::W;
#else
  (void)cfg;
  return false;
#endif
}

/// The direct kernel of cfg for blocks of mr pixels (cfg.MR, or the wide tile's
/// cfg.MR_direct_wide) whose input runs lie rs values apart (S_w C in forward_direct): for
/// floats on the 2-vector tiles (AVX-512 12 and 14 rows, AVX2 6), a copy with rs fixed at
/// compile time where rs is one of the few-channel first layers' (tile_kernel.inc's direct_kernel RS),
/// else the tile's own. At AVX2, whose 6 rows fit the registers anyway, in L1 3x3 S 2 on 3
/// channels 110 -> 117-120 GFLOP/s; whole forwards, 2 threads, 3 runs each (ms): (8,224,224,
/// 3->32, 3x3 S 2) 1.03-1.12 -> 1.00-1.09, (4,224,224,3->64, 7x7 S 2) 4.46-4.61 -> 4.26-4.39.
template <typename T>
inline DirectKernel<T> direct_kernel_for(const ConvKernels<T>& cfg, int64_t mr, int64_t rs) {
  const DirectKernel<T> own = mr == cfg.MR ? cfg.direct : cfg.direct_wide;
#if NABLAGRAD_X86
  if constexpr (std::is_same<T, float>::value) {
// The strides with a copy, listed once for both levels' switches.
#define NG_FIXED_STRIDES(X) X(1) X(2) X(3) X(4) X(6) X(8) X(12)
    if (cfg.level == SimdLevel::AVX512 && cfg.NR == 2 * VecAvx512<T>::W && (mr == 12 || mr == 14)) {
#define NG_FIXED_CASE(RS) \
  case RS:                                                                                    \
    return mr == 12 ? &tile_detail::avx512::direct_kernel<VecAvx512<T>, 12, 2, RS>                \
                    : &tile_detail::avx512::direct_kernel<VecAvx512<T>, 14, 2, RS>;
      switch (rs) {
        NG_FIXED_STRIDES(NG_FIXED_CASE)
        default: break;
      }
#undef NG_FIXED_CASE
    }
    if (cfg.level == SimdLevel::AVX2 && cfg.NR == 2 * VecAvx2<T>::W && mr == 6) {
#define NG_FIXED_CASE(RS) \
  case RS: return &tile_detail::avx2::direct_kernel<VecAvx2<T>, 6, 2, RS>;
      switch (rs) {
        NG_FIXED_STRIDES(NG_FIXED_CASE)
        default: break;
      }
#undef NG_FIXED_CASE
    }
#undef NG_FIXED_STRIDES
  }
#endif
  (void)rs;
  return own;
}

/// Whether an output ncols wide (the strided input gradient's phases: channels; the direct
/// forward: filters) runs on cfg's 3-vector direct tile (8 x 3 vectors at AVX-512): in whole
/// panels of it (48 floats, 24 doubles, ...), or with a last panel at least two-thirds full,
/// where the level's tiles of 1 or 2 vectors would read each input value 3 times (24 x 1) or
/// pad. AVX-512, 2 threads, C++, ms, 24 x 1 -> 8 x 3. Phases (backward_input_phases_direct):
/// (8,56,56,48->48, 3x3 S 2) 1.27-1.32 -> 1.05-1.12, (8,56,56,40->40) 1.04-1.10 -> 0.87-0.88,
/// (16,28,28,36->64) 0.91 -> 0.75-0.76, (8,28,28,48->96, 5x5 S 2) 1.68-1.71 -> 1.41-1.43,
/// (8,28,28,40->80, 5x5) 1.44-1.52 -> 1.19-1.23; 12 x 2 -> 8 x 3 (8,28,28,96->96) 1.06-1.08
/// vs 1.05-1.06. Forward (forward_direct): (8,112,112,3->48, 3x3 S 2) 0.37 -> 0.31-0.32,
/// (8,64,64,3->48, 7x7 S 2) 0.42-0.43 -> 0.33-0.35; over the stride-1 kernel of 24 x 1
/// (16,32,32,8->48) 0.42 -> 0.35-0.37, (8,64,64,4->48, 5x5) 1.19-1.20 -> 0.98-1.07,
/// (16,32,32,8->40) 0.42-0.44 -> 0.38-0.39; 12 x 2 -> 8 x 3 (8,64,64,3->144) 1.24 -> 1.06-1.09,
/// (8,56,56,8->96) 1.18-1.21 -> 1.13-1.18, (8,112,112,3->96, S 2) 0.58-0.59 either way.
template <typename T>
inline bool use_direct_three(const ConvKernels<T>& cfg, int64_t ncols) {
  if (!cfg.direct_three) return false;
  const int64_t r = ncols % cfg.NR_indirect_three;
  return r == 0 || 3 * r > 2 * cfg.NR_indirect_three;
}

/// Whether an output ncols wide (the direct forward's filters, the strided input gradient's
/// channels) runs on cfg's 1-vector AVX2 direct tiles (with_direct_one): at most one AVX2
/// vector of T, which the level's other tiles would run half empty or worse. 2 threads, C++,
/// ms, AVX2 (6 x 2 -> 12 / 14 x 1) / AVX-512 (24 x 1 zmm -> the same): forward (64,28,28,1->6,
/// 5x5 P 0) 0.202 -> 0.148 / 0.150 -> 0.145, (64,28,28,1->8, 5x5 P 2) 0.253 -> 0.121 / 0.204 ->
/// 0.121, (64,32,32,3->8) 0.356 -> 0.183 / 0.262 -> 0.188; strided dX (32,28,28,8->48, 7x7
/// S 2) 2.31 -> 1.13 / 1.63 -> 1.13, (16,32,32,8->32, S 2) 0.224 -> 0.149 / 0.197 -> 0.155,
/// (8,56,56,6->24, S 2) 0.274 -> 0.178 / 0.221 -> 0.181. As the main tile, 12 rows against
/// 8 and 14 (AVX2): (16,32,32,8->32) dX 0.151 (12) vs 0.145 (8) vs 0.170 (14), (32,28,28,8->48) 1.60
/// vs 1.47 vs 1.14 (rows of 14): hence 12, and 14 where it cuts a row better.
template <typename T>
inline bool use_direct_one(const ConvKernels<T>& cfg, int64_t ncols) {
  return cfg.direct_one != nullptr && ncols <= cfg.NR_direct_one;
}

/// cfg with the 1-vector AVX2 tiles as its direct kernels: blocks of kDirectOneRows, or of
/// kDirectOneWideRows where they cut the rows better, tails of kDirectOneTailRows.
template <typename T>
inline ConvKernels<T> with_direct_one(ConvKernels<T> cfg) {
  cfg.MR = kDirectOneRows;
  cfg.NR = cfg.NR_direct_one;
  cfg.direct = cfg.direct_one;
  cfg.MR_direct_wide = kDirectOneWideRows;
  cfg.direct_wide = cfg.direct_one_wide;
  cfg.MR_direct_tail = kDirectOneTailRows;
  cfg.direct_tail = cfg.direct_one_tail;
  return cfg;
}

/// cfg with the 3-vector tile as its direct kernel (MR_indirect_three x NR_indirect_three),
/// no shorter or taller variants.
template <typename T>
inline ConvKernels<T> with_direct_three(ConvKernels<T> cfg) {
  cfg.MR = cfg.MR_indirect_three;
  cfg.NR = cfg.NR_indirect_three;
  cfg.direct = cfg.direct_three;
  cfg.MR_direct_tail = cfg.MR_direct_wide = 0;
  cfg.direct_tail = cfg.direct_wide = nullptr;
  return cfg;
}

/// cfg with the direct tiles for an output ncols wide (the direct forward's filters, the
/// strided input gradient's phases' channels): the 3-vector tile where they fill its panels
/// (use_direct_three), else the 1-vector AVX2 tiles where they fit one vector (use_direct_one),
/// else cfg's own.
template <typename T>
inline ConvKernels<T> with_direct_tiles_for(const ConvKernels<T>& cfg, int64_t ncols) {
  if (use_direct_three(cfg, ncols)) return with_direct_three(cfg);
  if (use_direct_one(cfg, ncols)) return with_direct_one(cfg);
  return cfg;
}

/// Whether cfg (the AVX-512 12 x 2-vector row) has the 2-vector stride-1 kernel for kernels
/// FW wide (direct_s1_two_kernel_avx512: FW = 7), which runs blocks of kDirectS1TwoRows.
template <typename T>
inline bool direct_s1_two(const ConvKernels<T>& cfg, int64_t FW) {
#if NABLAGRAD_X86
  return cfg.level == SimdLevel::AVX512 && cfg.MR == 12 && cfg.NR == 2 * VecAvx512<T>::W && FW == 7;
#else
  (void)cfg, (void)FW;
  return false;
#endif
}

/// The stride-1 direct kernel of cfg for kernels FW wide (direct_s1_kernel_avx512), or
/// nullptr where there is none: only the 24 x 1-vector AVX-512 tile has one, for FW = 3 and 5
/// (5x5 on 16 channels, (4,96,96,16->16): forward 3.64 -> 3.03 ms at 1 thread, Xeon; FW <= 6
/// fits the registers).
template <typename T>
using DirectS1Kernel = void (*)(int64_t nh, int64_t C, const T* a, int64_t a_hs, const T* b, T* out,
                                int64_t ldo, const T* bias);
template <typename T>
inline DirectS1Kernel<T> direct_s1_kernel(const ConvKernels<T>& cfg, int64_t FW) {
#if NABLAGRAD_X86
  if (one_vector_avx512(cfg)) {
    if (FW == 3) return &direct_s1_kernel_avx512<T, 3>;
    if (FW == 5) return &direct_s1_kernel_avx512<T, 5>;
  }
#endif
  (void)cfg, (void)FW;
  return nullptr;
}

/// The kernel gradient's stride-1 kernels of cfg for kernels FW wide (dw_s1_kernel_avx512):
/// by_count[n] takes n <= cb channels at a time, for output rows of at least min_wo pixels;
/// cb = 0 where there are none. The 24 x 1-vector AVX-512 tile has them for FW = 3 and 5
/// (from rows of 16), the 12 x 2-vector one for FW = 7 (1 channel a call, 14 sums and 7
/// broadcasts), from rows of 24: the column kernel it replaces ran 64 pixels across rows a
/// call, and a call per row of 16 loads and stores its 14 sums too often. AVX-512, 2 threads,
/// C++, ms, column kernel -> this one: (8,32,32,32->32, 7x7) 2.86-3.05 -> 2.82-2.99,
/// (4,64,64,32->32) 5.58-5.60 -> 5.40-5.48, (8,32,32,64->64) 11.8 -> 11.2-11.3, (8,24,24,
/// 32->64) 3.79 -> 3.40-3.50, (8,28,28,32->32) 2.46-2.49 -> 2.30-2.34; even at rows of 20
/// ((16,20,20,32->32) 2.40-2.49 vs 2.38-2.55), slower at 16 ((8,16,16,32->64) 1.57-1.61 ->
/// 1.78-1.83).
template <typename T>
using DwS1Kernel = void (*)(int64_t np, int64_t nrows, const T* x, int64_t x_rs, int64_t C, const T* dy, int64_t dy_rs,
                            T* p, int64_t p_kw, int64_t p_c);
// Output rows a call of the stride-1 kernel-gradient kernels at most (backward_weight_direct).
constexpr int64_t kDwS1Rows = 4;
template <typename T>
struct DwS1Kernels {
  int64_t cb = 0, min_wo = 0;
  DwS1Kernel<T> by_count[6] = {};
};
template <typename T>
inline DwS1Kernels<T> dw_s1_kernels(const ConvKernels<T>& cfg, int64_t FW) {
  DwS1Kernels<T> k;
#if NABLAGRAD_X86
  if (direct_s1_two(cfg, FW)) k = {1, 24, {nullptr, &dw_s1_kernel_avx512<T, 7, 1, 2>}};
  if (one_vector_avx512(cfg)) {
    if (FW == 3)
      k = {5, 16, {nullptr, &dw_s1_kernel_avx512<T, 3, 1>, &dw_s1_kernel_avx512<T, 3, 2>, &dw_s1_kernel_avx512<T, 3, 3>,
                   &dw_s1_kernel_avx512<T, 3, 4>, &dw_s1_kernel_avx512<T, 3, 5>}};
    if (FW == 5)
      k = {3, 16,
           {nullptr, &dw_s1_kernel_avx512<T, 5, 1>, &dw_s1_kernel_avx512<T, 5, 2>, &dw_s1_kernel_avx512<T, 5, 3>}};
  }
#endif
  (void)cfg, (void)FW;
  return k;
}

/// The kernels of the current simd_level().
template <typename T>
inline ConvKernels<T> conv_kernels() {
  return conv_kernels<T>(simd_level());
}

}  // namespace conv_detail
}  // namespace kernels
}  // namespace nablagrad
