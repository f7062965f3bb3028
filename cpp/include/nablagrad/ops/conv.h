// nablagrad/ops/conv.h - conv2d, max_pool2d, avg_pool2d (NHWC) with their backward passes.
//
// The arithmetic lives in kernels/conv2d.h and kernels/pool2d.h (see docs/convolution.md for
// the derivation); this file checks arguments, makes the inputs contiguous, and records the
// autograd node. The backward closure only computes the gradients of the inputs that
// required grad when the op was recorded.
//
//     Tensor y = conv2d(x, w, b, 1, 1, 1, 1, 1, 1);          // x (N,H,W,C), w (Q,3,3,C), b (Q,)
//     Tensor p = max_pool2d(y, 2, 2, 2, 2, 0, 0);            // (N, H/2, W/2, Q)
//     Tensor a = avg_pool2d(y, 3, 3, 1, 1, 1, 1, false);      // padding not counted
#pragma once

#include <string>
#include <tuple>

#include "../autograd.h"
#include "../kernels/conv2d.h"
#include "../kernels/pool2d.h"

namespace nablagrad {

namespace detail {

inline void conv_check_rank(const Tensor& t, int64_t rank, const char* op, const char* what,
                            const char* layout) {
  if (t.dim() != rank)
    throw std::invalid_argument(std::string(op) + ": " + what + " must be " + std::to_string(rank) +
                                "-D " + layout + ", got shape " + shape_str(t.shape()));
}

inline void conv_check_dtype(const Tensor& t, DType want, const char* op, const char* what) {
  if (!is_floating(t.dtype()))
    throw std::domain_error(std::string(op) + ": " + what + " must be float32 or float64, got " +
                            dtype_name(t.dtype()));
  if (t.dtype() != want)
    throw std::domain_error(std::string(op) + ": dtypes differ (input " + dtype_name(want) + ", " +
                            what + " " + dtype_name(t.dtype()) + "); convert one with astype");
}

/// Validates conv2d's arguments (ranks, dtypes, bias shape, geometry) and returns the geometry.
inline kernels::Conv2dGeometry conv2d_check(const Tensor& x, const Tensor& w, const Tensor& bias,
                                            int64_t sh, int64_t sw, int64_t pt, int64_t pb,
                                            int64_t pl, int64_t pr) {
  conv_check_rank(x, 4, "conv2d", "input", "(N, H, W, C)");
  conv_check_rank(w, 4, "conv2d", "weight", "(Q, FH, FW, C)");
  if (!is_floating(x.dtype()))
    throw std::domain_error(std::string("conv2d: input must be float32 or float64, got ") +
                            dtype_name(x.dtype()));
  conv_check_dtype(w, x.dtype(), "conv2d", "weight");
  const Shape& xs = x.shape();
  const Shape& ws = w.shape();
  kernels::Conv2dGeometry g = kernels::make_conv2d_geometry(
      xs[0], xs[1], xs[2], xs[3], ws[0], ws[1], ws[2], ws[3], sh, sw, pt, pb, pl, pr);
  if (bias.defined()) {
    conv_check_dtype(bias, x.dtype(), "conv2d", "bias");
    if (bias.dim() != 1 || bias.shape()[0] != ws[0])
      throw std::invalid_argument("conv2d: bias must have shape (" + std::to_string(ws[0]) +
                                  ",) (one value per filter), got " + shape_str(bias.shape()) +
                                  " (kernel " + shape_str(ws) + ")");
  }
  return g;
}

inline Tensor conv2d_forward_raw(const kernels::Conv2dGeometry& g, const Tensor& xc,
                                 const Tensor& wc, const Tensor& bc, bool reference) {
  Tensor out = Tensor::empty({g.N, g.Ho, g.Wo, g.Q}, xc.dtype());
  dispatch_float(xc.dtype(), "conv2d", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* b = bc.defined() ? bc.data<T>() : nullptr;
    if (reference)
      kernels::conv2d_reference_forward<T>(g, xc.data<T>(), wc.data<T>(), b, out.data<T>());
    else
      kernels::conv2d_forward<T>(g, xc.data<T>(), wc.data<T>(), b, out.data<T>());
  });
  return out;
}

/// Rewrites pool2d geometry errors with the op's own name.
template <typename F>
inline auto with_op_name(const char* op, const F& fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (const std::invalid_argument& e) {
    std::string m = e.what();
    if (m.rfind("pool2d:", 0) == 0) m = std::string(op) + m.substr(6);
    throw std::invalid_argument(m);
  }
}

inline kernels::Pool2dGeometry pool2d_check(const Tensor& x, const char* op, int64_t kh,
                                            int64_t kw, int64_t sh, int64_t sw, int64_t ph,
                                            int64_t pw) {
  conv_check_rank(x, 4, op, "input", "(N, H, W, C)");
  if (!is_floating(x.dtype()))
    throw std::domain_error(std::string(op) + ": input must be float32 or float64, got " +
                            dtype_name(x.dtype()));
  if (sh < 1 || sw < 1)  // the kernel's "0 = kernel size" is resolved in Python (stride=None)
    throw std::invalid_argument(std::string(op) + ": stride must be >= 1, got (" +
                                std::to_string(sh) + "," + std::to_string(sw) + ") (input " +
                                shape_str(x.shape()) + ")");
  const Shape& s = x.shape();
  return with_op_name(op, [&] {
    return kernels::make_pool2d_geometry(s[0], s[1], s[2], s[3], kh, kw, sh, sw, ph, pw);
  });
}

}  // namespace detail

/// 2-D convolution, NHWC: x (N, H, W, C), w (Q, FH, FW, C), bias (Q,) or undefined
/// -> (N, Ho, Wo, Q), Ho = (H + pad_top + pad_bottom - FH) / stride_h + 1.
/// Shapes and arguments: std::invalid_argument; dtypes (x, w, bias the same float dtype):
/// std::domain_error.
inline Tensor conv2d(const Tensor& x, const Tensor& w, const Tensor& bias, int64_t stride_h,
                     int64_t stride_w, int64_t pad_top, int64_t pad_bottom, int64_t pad_left,
                     int64_t pad_right) {
  const kernels::Conv2dGeometry g = detail::conv2d_check(x, w, bias, stride_h, stride_w, pad_top,
                                                         pad_bottom, pad_left, pad_right);
  const Tensor xc = x.contiguous_data(), wc = w.contiguous_data();
  const Tensor bc = bias.defined() ? bias.contiguous_data() : Tensor();
  Tensor out = detail::conv2d_forward_raw(g, xc, wc, bc, false);
  const bool has_bias = bias.defined();
  if (has_bias ? any_requires_grad({&x, &w, &bias}) : any_requires_grad({&x, &w})) {
    const bool need_x = x.requires_grad(), need_w = w.requires_grad();
    const bool need_b = has_bias && bias.requires_grad();
    // Save only what the needed gradients read: dX needs W, dW needs X.
    const Tensor xs = need_w ? xc.alias() : Tensor(), wsv = need_x ? wc.alias() : Tensor();
    std::vector<Tensor> inputs{x, w};
    if (has_bias) inputs.push_back(bias);
    record(out, "conv2d", inputs,
           [g, xs, wsv, need_x, need_w, need_b](const Tensor& grad, std::vector<Tensor>& gi) {
             const Tensor dy = grad.contiguous_data();
             const DType dt = dy.dtype();
             dispatch_float(dt, "conv2d", [&](auto tag) {
               using T = typename decltype(tag)::type;
               if (need_x) {
                 Tensor dx = Tensor::empty({g.N, g.H, g.W, g.C}, dt);
                 kernels::conv2d_backward_input<T>(g, dy.data<T>(), wsv.data<T>(), dx.data<T>());
                 gi[0] = dx;
               }
               Tensor db = need_b ? Tensor::empty({g.Q}, dt) : Tensor();
               if (need_w) {
                 Tensor dw = Tensor::empty({g.Q, g.FH, g.FW, g.C}, dt);
                 kernels::conv2d_backward_weight<T>(g, xs.data<T>(), dy.data<T>(), dw.data<T>(),
                                                    need_b ? db.data<T>() : nullptr);
                 gi[1] = dw;
               } else if (need_b) {  // bias only: sum dY over the pixels
                 T* o = db.data<T>();
                 const T* d = dy.data<T>();
                 for (int64_t q = 0; q < g.Q; ++q) o[q] = T(0);
                 const int64_t pixels = g.N * g.Ho * g.Wo;
                 for (int64_t p = 0; p < pixels; ++p)
                   for (int64_t q = 0; q < g.Q; ++q) o[q] += d[p * g.Q + q];
               }
               if (need_b) gi[2] = db;
             });
           },
           {xs, wsv});
  }
  return out;
}

/// The oracle (kernels::conv2d_reference_forward, the design document literally); no graph.
inline Tensor conv2d_reference(const Tensor& x, const Tensor& w, const Tensor& bias,
                               int64_t stride_h, int64_t stride_w, int64_t pad_top,
                               int64_t pad_bottom, int64_t pad_left, int64_t pad_right) {
  const kernels::Conv2dGeometry g = detail::conv2d_check(x, w, bias, stride_h, stride_w, pad_top,
                                                         pad_bottom, pad_left, pad_right);
  const Tensor bc = bias.defined() ? bias.contiguous_data() : Tensor();
  return detail::conv2d_forward_raw(g, x.contiguous_data(), w.contiguous_data(), bc, true);
}

/// The oracle's gradients (dx, dw, db) for output gradient dy; no graph.
inline std::tuple<Tensor, Tensor, Tensor> conv2d_reference_backward(
    const Tensor& x, const Tensor& w, const Tensor& dy, int64_t stride_h, int64_t stride_w,
    int64_t pad_top, int64_t pad_bottom, int64_t pad_left, int64_t pad_right) {
  const kernels::Conv2dGeometry g = detail::conv2d_check(x, w, Tensor(), stride_h, stride_w,
                                                         pad_top, pad_bottom, pad_left, pad_right);
  const Shape want{g.N, g.Ho, g.Wo, g.Q};
  if (dy.shape() != want)
    throw std::invalid_argument("conv2d_reference_backward: dy must have shape " +
                                shape_str(want) + ", got " + shape_str(dy.shape()));
  detail::conv_check_dtype(dy, x.dtype(), "conv2d_reference_backward", "dy");
  const Tensor xc = x.contiguous_data(), wc = w.contiguous_data(), dyc = dy.contiguous_data();
  Tensor dx = Tensor::empty(x.shape(), x.dtype()), dw = Tensor::empty(w.shape(), x.dtype());
  Tensor db = Tensor::empty({g.Q}, x.dtype());
  dispatch_float(x.dtype(), "conv2d_reference_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    kernels::conv2d_reference_backward_input<T>(g, dyc.data<T>(), wc.data<T>(), dx.data<T>());
    kernels::conv2d_reference_backward_weight<T>(g, xc.data<T>(), dyc.data<T>(), dw.data<T>(),
                                                 db.data<T>());
  });
  return {dx, dw, db};
}

/// Max pooling, NHWC (PyTorch semantics, floor mode; padding acts as -inf, pad <= kernel/2).
/// The argmax of every output element is saved for the backward pass.
inline Tensor max_pool2d(const Tensor& x, int64_t kh, int64_t kw, int64_t stride_h,
                         int64_t stride_w, int64_t pad_h, int64_t pad_w) {
  const kernels::Pool2dGeometry g =
      detail::pool2d_check(x, "max_pool2d", kh, kw, stride_h, stride_w, pad_h, pad_w);
  const Tensor xc = x.contiguous_data();
  Tensor out = Tensor::empty({g.N, g.Ho, g.Wo, g.C}, x.dtype());
  const bool grad = any_requires_grad({&x});
  Tensor argmax = grad ? Tensor::empty({g.N, g.Ho, g.Wo, g.C}, DType::Int64) : Tensor();
  dispatch_float(x.dtype(), "max_pool2d", [&](auto tag) {
    using T = typename decltype(tag)::type;
    kernels::max_pool2d_forward<T>(g, xc.data<T>(), out.data<T>(),
                                   grad ? argmax.data<int64_t>() : nullptr);
  });
  if (grad) {
    record(out, "max_pool2d", {x}, [g, argmax](const Tensor& grad_in, std::vector<Tensor>& gi) {
      const Tensor dy = grad_in.contiguous_data();
      Tensor dx = Tensor::empty({g.N, g.H, g.W, g.C}, dy.dtype());
      dispatch_float(dy.dtype(), "max_pool2d", [&](auto tag) {
        using T = typename decltype(tag)::type;
        kernels::max_pool2d_backward<T>(g, dy.data<T>(), argmax.data<int64_t>(), dx.data<T>());
      });
      gi[0] = dx;
    });
  }
  return out;
}

/// Average pooling, NHWC (PyTorch semantics, floor mode); count_include_pad chooses whether
/// the padding counts in the divisor.
inline Tensor avg_pool2d(const Tensor& x, int64_t kh, int64_t kw, int64_t stride_h,
                         int64_t stride_w, int64_t pad_h, int64_t pad_w, bool count_include_pad) {
  const kernels::Pool2dGeometry g =
      detail::pool2d_check(x, "avg_pool2d", kh, kw, stride_h, stride_w, pad_h, pad_w);
  const Tensor xc = x.contiguous_data();
  Tensor out = Tensor::empty({g.N, g.Ho, g.Wo, g.C}, x.dtype());
  dispatch_float(x.dtype(), "avg_pool2d", [&](auto tag) {
    using T = typename decltype(tag)::type;
    kernels::avg_pool2d_forward<T>(g, xc.data<T>(), out.data<T>(), count_include_pad);
  });
  if (any_requires_grad({&x})) {
    record(out, "avg_pool2d", {x},
           [g, count_include_pad](const Tensor& grad_in, std::vector<Tensor>& gi) {
             const Tensor dy = grad_in.contiguous_data();
             Tensor dx = Tensor::empty({g.N, g.H, g.W, g.C}, dy.dtype());
             dispatch_float(dy.dtype(), "avg_pool2d", [&](auto tag) {
               using T = typename decltype(tag)::type;
               kernels::avg_pool2d_backward<T>(g, dy.data<T>(), dx.data<T>(), count_include_pad);
             });
             gi[0] = dx;
           });
  }
  return out;
}

}  // namespace nablagrad
