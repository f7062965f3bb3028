// nablagrad/kernels/conv2d/forward.h - the forward pass as an implicit GEMM (im2col of a tile
// of output pixels at a time, packed kernel, the `tile` micro-kernel of microkernel.h).
//
//   Y[(n,ho,wo), q] = sum_{(fh,fw,c)} X[n, ho*S_h+fh-pt, wo*S_w+fw-pl, c] * W[q, fh, fw, c] + b[q]
//
// the document's first multi-channel equation (R(v,i,j,f)) with padding read as zeros:
// rows = N*Ho*Wo output pixels, columns = Q filters, depth = FH*FW*C. Which forward kernel runs
// for which shape is decided in select.h; the small-C direct forward is in small_c.h.
#pragma once

#include <cstdint>
#include <cstring>

#include "../gemm.h"
#include "gather_gemm.h"
#include "geometry.h"
#include "microkernel.h"

namespace nablagrad {
namespace kernels {
namespace conv_detail {

// im2col of output pixels [r0, r1) of the forward pass into tile (row r: FH*FW*C values,
// tap-major then channel, matching the kernel's (Q, FH, FW, C) layout). Padding reads as 0.
template <typename T>
void forward_im2col(const Conv2dGeometry& g, const T* x, int64_t r0, int64_t r1, T* tile,
                    int64_t lda) {
  const int64_t C = g.C, FW = g.FW;
  int64_t n = r0 / (g.Ho * g.Wo), ho = (r0 % (g.Ho * g.Wo)) / g.Wo, wo = r0 % g.Wo;
  for (int64_t r = r0; r < r1; ++r) {
    T* row = tile + (r - r0) * lda;
    const int64_t iw0 = wo * g.stride_w - g.pad_left;
    const bool w_inside = iw0 >= 0 && iw0 + FW <= g.W;
    for (int64_t fh = 0; fh < g.FH; ++fh) {
      T* dst = row + fh * FW * C;
      const int64_t ih = ho * g.stride_h + fh - g.pad_top;
      if (ih < 0 || ih >= g.H) {
        zero_run(dst, FW * C);
        continue;
      }
      const T* src = x + ((n * g.H + ih) * g.W) * C;
      if (w_inside) {  // FW taps of one input row are one contiguous run in NHWC
        copy_run(dst, src + iw0 * C, FW * C);
        continue;
      }
      for (int64_t fw = 0; fw < FW; ++fw) {
        const int64_t iw = iw0 + fw;
        if (iw < 0 || iw >= g.W)
          zero_run(dst + fw * C, C);
        else
          copy_run(dst + fw * C, src + iw * C, C);
      }
    }
    if (++wo == g.Wo) {
      wo = 0;
      if (++ho == g.Ho) {
        ho = 0;
        ++n;
      }
    }
  }
}

/// Forward as an implicit GEMM over tiles of im2col rows; bias added in the store.
template <typename T>
void forward_im2col_gemm(const ConvKernels<T>& cfg, const Conv2dGeometry& g, const T* x,
                         const T* w, const T* bias, T* y) {
  const int64_t K = g.FH * g.FW * g.C, Q = g.Q;
  PackedB<T> B;
  B.pack(cfg, K, Q, [&](int64_t k, int64_t q) { return w[q * K + k]; });
  const int64_t rows = g.N * g.Ho * g.Wo;
  gather_gemm<T>(
      cfg, rows, B,
      [&](int64_t r0, int64_t r1, T* tile, int64_t lda) { forward_im2col(g, x, r0, r1, tile, lda); },
      [&](int64_t r0, int64_t r1, const T* ctile, int64_t ldc) {
        for (int64_t r = r0; r < r1; ++r) {
          const T* src = ctile + (r - r0) * ldc;
          T* dst = y + r * Q;
          if (bias)
            for (int64_t q = 0; q < Q; ++q) dst[q] = src[q] + bias[q];
          else
            std::memcpy(dst, src, sizeof(T) * Q);
        }
      },
      y, bias);
}

/// 1x1 forward without padding, straight to the GEMM: Y (N*Ho*Wo x Q) = X (N*Ho*Wo x C) W^T,
/// W (Q x C) read transposed through its strides. With a bias, Y is first filled with b and
/// the GEMM accumulates into it (Y = b + X W^T; one rounding per K slice, as gemm documents).
template <typename T>
void forward_pointwise(const Conv2dGeometry& g, const T* x, const T* w, const T* bias, T* y) {
  const int64_t C = g.C, Q = g.Q, rows = g.N * g.Ho * g.Wo;
  const T* a = x;
  Scratch<T> gathered(g.stride_h == 1 && g.stride_w == 1 ? 1 : rows * C, "conv2d: 1x1 gathered rows");
  if (g.stride_h != 1 || g.stride_w != 1) {
    pointwise_gather(g, x, gathered.get());
    a = gathered.get();
  }
  if (bias)
    parallel_for(0, rows, std::max<int64_t>(1, (int64_t{1} << 16) / Q), [&](int64_t lo, int64_t hi) {
      for (int64_t r = lo; r < hi; ++r) std::memcpy(y + r * Q, bias, sizeof(T) * static_cast<size_t>(Q));
    });
  gemm<T>(rows, Q, C, a, C, 1, w, 1, C, y, Q, /*accumulate=*/bias != nullptr);
}

}  // namespace conv_detail
}  // namespace kernels
}  // namespace nablagrad
