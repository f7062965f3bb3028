// nablagrad/kernels/conv2d/narrow.h - the forward pass and the kernel gradient for outputs of
// a few filters (an image decoder's RGB or mask output, a bottleneck of 8 channels): vectors
// along each pixel's runs instead of a register tile across the filters.
//
//   Y[(n,ho,wo), q] = b[q] + sum_{fh} sum_{d < FW*C} X[n, ho*S_h+fh-pt, wo*S_w-pl + d/C, d%C] * W[q, fh, d]
//
// (the forward equation of forward.h, the taps of one kernel row taken as one run). The
// register tiles of microkernel.h run across the filters, 16 to 32 of them: with 1 to 8
// filters most of every FMA is padding. Here the vectors run along the depth instead. In
// NHWC a kernel row's FW*C input values for one pixel are one contiguous run, and W[q, fh, :]
// is another, so a block of P pixels x QB filters keeps P*QB vector sums (narrow_kernel.inc),
// and reduces each to a scalar once at the end. The runs come from the indirect kernel's
// pointer table (forward.h: in x itself, a zero run for the rows in the top or bottom
// padding, a zero-padded copy at the left and right borders). The kernel gradient
// (backward_weight_narrow) is the transpose: the sums of a few filters' kernel rows along the
// runs, dY broadcast. Which shapes run them: select.h.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "../simd.h"
#include "forward.h"
#include "geometry.h"
#include "../vec.h"

namespace nablagrad {
namespace kernels {
namespace conv_detail {
namespace narrow_detail {

template <typename T>
using NarrowKernel = void (*)(int64_t nh, int64_t len, const T* const* rows, const T* w, int64_t K, T* out,
                              int64_t ldo, const T* bias);

/// The kernels of one call: blocks of P pixels; by_q[n] takes n filters at a time (n <= 4;
/// nullptr for the counts the call never needs).
template <typename T>
struct NarrowKernels {
  int64_t P = 0;
  NarrowKernel<T> by_q[5] = {};
};

template <typename T>
using NarrowDwKernel = void (*)(int64_t np, const T* const* cols, int64_t off, const T* dy, int64_t ldy, T* out,
                                int64_t ldo);

/// The kernel gradient's kernels: NV vectors of W values at a time (full), or one (one), for
/// by_q[n] n <= 4 filters.
template <typename T>
struct NarrowDwKernels {
  int64_t W = 0, NV = 0;
  NarrowDwKernel<T> full[5] = {}, one[5] = {};
};

// The kernels and their tables, once per instruction set (see narrow_kernel.inc).
namespace portable {
#define NABLAGRAD_NARROW_TARGET
#include "narrow_kernel.inc"
#undef NABLAGRAD_NARROW_TARGET
}  // namespace portable
#if NABLAGRAD_X86
namespace avx2 {
#define NABLAGRAD_NARROW_TARGET NABLAGRAD_VEC_AVX2
#include "narrow_kernel.inc"
#undef NABLAGRAD_NARROW_TARGET
}  // namespace avx2
namespace avx512 {
#define NABLAGRAD_NARROW_TARGET NABLAGRAD_VEC_AVX512
#include "narrow_kernel.inc"
#undef NABLAGRAD_NARROW_TARGET
}  // namespace avx512
#endif
}  // namespace narrow_detail

/// The narrow kernels of `level` for Q filters. P, the pixels of a block, is the most that
/// keep the P*QB sums and one step's operands in the registers: P*QB <= 24 of the 32 vectors
/// at AVX-512, <= 12 of the 16 at AVX2, 16 scalars portable. From 4 filters P is the 4-filter
/// block's and the filters go 4 at a time, the last block 1-3. Measured (AVX-512, 2 threads,
/// ms): (8,28,28,64->8) 6 x 4 0.30, 4 x 4 0.34, 3 x 8 0.49, 2 x 8 0.51; (4,64,64,32->3)
/// 8 x 3 0.31, 4 x 3 0.34; (4,64,64,64->1) 16 x 1 0.27, 12 x 1 0.28.
template <typename T>
inline narrow_detail::NarrowKernels<T> narrow_kernels(SimdLevel level, int64_t Q) {
#if NABLAGRAD_X86
  using Z = VecAvx512<T>;
  using Y = VecAvx2<T>;
  if (level >= SimdLevel::AVX512) return narrow_detail::avx512::narrow_table<Z, 6, 8, 12, 16>(Q);
  if (level >= SimdLevel::AVX2) return narrow_detail::avx2::narrow_table<Y, 3, 4, 6, 8>(Q);
#endif
  (void)level;
  return narrow_detail::portable::narrow_table<VecPortable<T, 4>, 4, 4, 8, 16>(Q);
}

/// Forward by the narrow kernels: the output pixels walked flat in blocks of P with the
/// indirect kernel's pointer tables (for_each_indirect_block), the filters 4 at a time. Each output element is computed by one block in a fixed order, whatever thread
/// runs it.
template <typename T>
void forward_narrow(const narrow_detail::NarrowKernels<T>& nk, const Conv2dGeometry& g, const T* x, const T* w, const T* bias,
                    T* y) {
  const int64_t P = nk.P, Q = g.Q, len = g.FW * g.C, K = g.FH * len;
  for_each_indirect_block(g, x, P, [&](int64_t r0, int64_t nr, int64_t nh, const T* const* ph, int64_t h0) {
    for (int64_t q0 = 0; q0 < Q; q0 += 4) {
      const int64_t nq = std::min<int64_t>(4, Q - q0);
      const narrow_detail::NarrowKernel<T> kernel = nk.by_q[nq];
      const T* wq = w + q0 * K + h0 * len;
      const T* bq = bias ? bias + q0 : nullptr;
      if (nr == P) {
        kernel(nh, len, ph, wq, K, y + r0 * Q + q0, Q, bq);
        continue;
      }
      T out[16 * 4];  // the last block's P <= 16 pixels x <= 4 filters
      kernel(nh, len, ph, wq, K, out, nq, bq);
      for (int64_t i = 0; i < nr; ++i) copy_run(y + (r0 + i) * Q + q0, out + i * nq, nq);
    }
  });
}

/// The narrow kernel-gradient kernels of `level`: 4 vectors at a time at AVX-512 (4 x 4 sums,
/// 16 of the 32 registers), 2 at AVX2 and portable.
template <typename T>
inline narrow_detail::NarrowDwKernels<T> narrow_dw_kernels(SimdLevel level) {
#if NABLAGRAD_X86
  using Z = VecAvx512<T>;
  using Y = VecAvx2<T>;
  if (level >= SimdLevel::AVX512) return narrow_detail::avx512::narrow_dw_table<Z, 4>();
  if (level >= SimdLevel::AVX2) return narrow_detail::avx2::narrow_dw_table<Y, 2>();
#endif
  (void)level;
  return narrow_detail::portable::narrow_dw_table<VecPortable<T, 4>, 2>();
}

/// Kernel (and bias) gradient for a few filters, the transpose of forward_narrow's layout:
///   dW[q, fh, d] = sum_{pixels p} dY[p, q] * run(p, fh)[d],   d < FW*C,
/// vectors along the run d (a zero-padded copy of the input holds every run whole), dY
/// broadcast, the sums in registers over blocks of 256 pixels (narrow_dw_kernel). Fixed chunks
/// of pixels (a function of the shape only) sum into their own partials, added in chunk
/// order: the same result for any thread count.
template <typename T>
void backward_weight_narrow(const narrow_detail::NarrowDwKernels<T>& nk, const Conv2dGeometry& g, const T* x,
                            const T* dy, T* dw, T* db) {
  const int64_t VW = nk.W, NV = nk.NV, FH = g.FH, Q = g.Q, C = g.C;
  const int64_t len = g.FW * C, lenp = round_up(len, VW), K = FH * len, Kp = FH * lenp, nvec = lenp / VW;
  const int64_t Hp = g.H + g.pad_top + g.pad_bottom, prow = (g.W + g.pad_left + g.pad_right) * C;
  // The padded copy, and VW zeros after it for the last run's last vector.
  Scratch<T> xp(g.N * Hp * prow + VW, "conv2d backward: padded input copy");
  copy_padded_input(g, x, prow, xp.get());
  std::fill(xp.get() + g.N * Hp * prow, xp.get() + g.N * Hp * prow + VW, T(0));
  constexpr int64_t PT = 256;  // pixels per block: one pointer table, the sums' span in registers
  const int64_t pixels = g.N * g.Ho * g.Wo;
  const PixelChunks chunks = dw_pixel_chunks(pixels, PT, Q * Kp * static_cast<int64_t>(sizeof(T)));
  const int64_t chunk = chunks.size, nchunks = chunks.count;
  const char* const what_p = "conv2d backward: weight partial sums";
  const char* const what_b = "conv2d backward: bias partial sums";
  Scratch<T> partial(checked_product({nchunks, Q, Kp}, what_p), what_p, /*zero=*/pixels == 0);
  Scratch<T> dbpartial(checked_product({nchunks, Q}, what_b), what_b, /*zero=*/pixels == 0);
  parallel_chunks(pixels, chunk, [&](int64_t ci, int64_t lo, int64_t hi) {
    T* P = partial.get() + ci * Q * Kp;  // P[q*Kp + fh*lenp + d]
    T* dbp = dbpartial.get() + ci * Q;
    std::fill(P, P + Q * Kp, T(0));
    std::fill(dbp, dbp + Q, T(0));
    const T** cols = scratch<const T*, 0>(static_cast<size_t>(PT));
    for (int64_t p0 = lo; p0 < hi; p0 += PT) {
      const int64_t np = std::min(PT, hi - p0);
      for_each_window(g, xp.get(), Hp, prow, p0, np, [&](int64_t i, const T* run) { cols[i] = run; });
      const T* drows = dy + p0 * Q;
      sum_rows(drows, np, Q, Q, dbp);
      for (int64_t fh = 0; fh < FH; ++fh)
        for (int64_t q0 = 0; q0 < Q; q0 += 4) {
          const int64_t nq = std::min<int64_t>(4, Q - q0);
          T* out = P + q0 * Kp + fh * lenp;
          int64_t v = 0;
          for (; v + NV <= nvec; v += NV) nk.full[nq](np, cols, fh * prow + v * VW, drows + q0, Q, out + v * VW, Kp);
          for (; v < nvec; ++v) nk.one[nq](np, cols, fh * prow + v * VW, drows + q0, Q, out + v * VW, Kp);
        }
    }
  });
  // Partials in chunk order: dW[q, fh*len + d] = sum_c P_c[q*Kp + fh*lenp + d].
  parallel_for(0, Q * FH, std::max<int64_t>(1, 4096 / std::max<int64_t>(1, len * nchunks)), [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      const int64_t q = r / FH, fh = r % FH;
      const T* src = partial.get() + q * Kp + fh * lenp;
      T* dst = dw + q * K + fh * len;
      std::copy(src, src + len, dst);
      sum_rows(src + Q * Kp, nchunks - 1, Q * Kp, len, dst);
    }
  });
  if (db) sum_bias_partials(dbpartial.get(), nchunks, Q, db);
}

}  // namespace conv_detail
}  // namespace kernels
}  // namespace nablagrad
