// nablagrad/kernels/conv2d.h - 2-D convolution on contiguous NHWC buffers (float, double).
//
// The implementation lives in kernels/conv2d/, one file per pass (docs/convolution.md maps
// every equation to a function):
//   geometry.h         Conv2dGeometry, make_conv2d_geometry, the reference passes (the design
//                      document literally: pad, dilate, flip_kernel, stride-1 conv, crop)
//   microkernel.h      register-blocked kernels per SIMD level and their table (ConvKernels)
//   gather_gemm.h      the im2col-tile GEMM driver the GEMM-shaped passes share
//   forward.h          forward as an implicit GEMM
//   backward_input.h   input gradient: phase decomposition; dY.W GEMM + col2im
//   backward_weight.h  kernel + bias gradient: chunked pixel reduction
//   small_c.h          few input channels: direct forward, dot-product dX, register-blocked dW
//   narrow.h           few filters: forward and kernel gradient with vectors along the runs
//   select.h           which kernel for which shape, the algorithm setting, and the entry
//                      points conv2d_forward / conv2d_backward_input / conv2d_backward_weight
//
//     auto g = make_conv2d_geometry(N, H, W, C, Q, FH, FW, C, 1, 1, 1, 1, 1, 1);
//     std::vector<float> y(g.N * g.Ho * g.Wo * g.Q);
//     conv2d_forward(g, x.data(), w.data(), b.data(), y.data());
//     conv2d_backward_input(g, dy.data(), w.data(), dx.data());
//     conv2d_backward_weight(g, x.data(), dy.data(), dw.data(), db.data());
//
// All output buffers are overwritten (not accumulated into). Buffers must not alias.
#pragma once

#include "conv2d/geometry.h"
#include "conv2d/select.h"
