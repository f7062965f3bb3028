// nablagrad/ops/nn.h - neural-network ops: softmax, log_softmax, linear, layer_norm, dropout
// and the losses (mse_loss, cross_entropy, nll_loss, binary_cross_entropy_with_logits).
// Included by tensor_operations.h; see that header for the conventions.
//
// Each op is fused: the forward loops over raw data and the backward is hand-written right
// below it, so a loss over a (N, K) batch records one node, not a dozen. Row-wise kernels
// (softmax, layer_norm, losses) accumulate in double, visit each row in a fixed order and
// split only whole rows between threads, so results never depend on the thread count.
//
//     using namespace nablagrad;
//     Tensor logits = randn({4, 10}); logits.impl().requires_grad = true;
//     Tensor labels = Tensor::zeros({4}, DType::Int64);
//     Tensor loss = cross_entropy(logits, labels, Reduction::Mean);
//     backward(loss);   // logits.grad = (softmax(logits) - onehot(labels)) / 4
#pragma once

#include <cmath>
#include <limits>
#include <string>

#include "../autograd.h"
#include "../random.h"
#include "../threading.h"
#include "elementwise.h"
#include "linalg.h"
#include "reduction.h"

namespace nablagrad {

// ---------------------------------------------------------------------------------------
// Helpers shared by the ops of this file.
// ---------------------------------------------------------------------------------------
namespace detail {

/// A contiguous tensor seen as (outer, n, inner) around one axis: the n elements of "row"
/// r = o * inner + i sit at o * n * inner + i + k * inner, k = 0..n-1.
struct AxisLayout {
  int64_t outer = 1, n = 1, inner = 1;
  int64_t rows() const { return outer * inner; }
  int64_t base(int64_t row) const { return (row / inner) * n * inner + row % inner; }
};

inline AxisLayout axis_layout(const Shape& shape, int64_t axis) {
  AxisLayout l;
  for (int64_t i = 0; i < axis; ++i) l.outer *= shape[i];
  l.n = shape[axis];
  for (int64_t i = axis + 1; i < static_cast<int64_t>(shape.size()); ++i) l.inner *= shape[i];
  return l;
}

/// Rows per parallel task so each task touches roughly 16k elements.
inline int64_t row_grain(int64_t row_length) { return std::max<int64_t>(1, (1 << 14) / std::max<int64_t>(row_length, 1)); }

inline void check_same_float_dtype(const char* op, const Tensor& a, const char* a_name, const Tensor& b,
                                   const char* b_name) {
  if (!b.defined()) return;
  if (!is_floating(b.dtype()))
    throw std::domain_error(std::string(op) + ": " + b_name + " must be float32 or float64, got " +
                            dtype_name(b.dtype()));
  if (a.dtype() != b.dtype())
    throw std::domain_error(std::string(op) + ": " + a_name + " is " + dtype_name(a.dtype()) + " but " + b_name +
                            " is " + dtype_name(b.dtype()) + "; convert one with astype");
}

}  // namespace detail

// ---------------------------------------------------------------------------------------
// softmax / log_softmax
// ---------------------------------------------------------------------------------------
namespace detail {

/// Forward of softmax (log = false) or log_softmax (log = true) along `axis` of a contiguous x.
/// Max-shifted: exp never sees a positive argument, so huge inputs do not overflow.
template <typename T>
inline Tensor softmax_forward(const Tensor& x, int64_t axis, bool log) {
  Tensor y = Tensor::empty(x.shape(), x.dtype());
  if (x.numel() == 0) return y;
  const AxisLayout l = axis_layout(x.shape(), axis);
  const T* px = x.data<T>();
  T* py = y.data<T>();
  parallel_for(0, l.rows(), row_grain(l.n), [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      const T* xr = px + l.base(r);
      T* yr = py + l.base(r);
      T m = xr[0];
      for (int64_t k = 1; k < l.n; ++k) m = std::max(m, xr[k * l.inner]);
      if (std::isinf(m) && m < T(0)) m = T(0);  // all -inf: avoid -inf - -inf (the row is 0/0 = NaN, as PyTorch)
      double s = 0.0;
      for (int64_t k = 0; k < l.n; ++k) s += std::exp(static_cast<double>(xr[k * l.inner] - m));
      if (log) {
        // (x - m) - log(s), not x - (m + log(s)): m + log(s) rounded to T loses log(s)'s
        // low bits when |m| is large (logits of 1e4 gave -0.69336 for log(1/2)).
        const double ls = std::log(s);
        for (int64_t k = 0; k < l.n; ++k)
          yr[k * l.inner] = static_cast<T>(static_cast<double>(xr[k * l.inner] - m) - ls);
      } else {
        const double inv = 1.0 / s;
        for (int64_t k = 0; k < l.n; ++k)
          yr[k * l.inner] = static_cast<T>(std::exp(static_cast<double>(xr[k * l.inner] - m)) * inv);
      }
    }
  });
  return y;
}

/// Backward of softmax: gx = y * (g - sum(g * y)); of log_softmax: gx = g - exp(y) * sum(g).
template <typename T>
inline Tensor softmax_backward(const Tensor& g_in, const Tensor& y, int64_t axis, bool log) {
  const Tensor g = g_in.contiguous_data();
  Tensor gx = Tensor::empty(y.shape(), y.dtype());
  if (y.numel() == 0) return gx;
  const AxisLayout l = axis_layout(y.shape(), axis);
  const T* pg = g.data<T>();
  const T* py = y.data<T>();
  T* pgx = gx.data<T>();
  parallel_for(0, l.rows(), row_grain(l.n), [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      const int64_t b = l.base(r);
      double s = 0.0;
      for (int64_t k = 0; k < l.n; ++k) {
        const int64_t o = b + k * l.inner;
        s += log ? static_cast<double>(pg[o]) : static_cast<double>(pg[o]) * static_cast<double>(py[o]);
      }
      for (int64_t k = 0; k < l.n; ++k) {
        const int64_t o = b + k * l.inner;
        pgx[o] = log ? static_cast<T>(pg[o] - std::exp(static_cast<double>(py[o])) * s)
                     : static_cast<T>(py[o] * (pg[o] - s));
      }
    }
  });
  return gx;
}

inline Tensor softmax_impl(const Tensor& x, int64_t axis_in, bool log) {
  const char* name = log ? "log_softmax" : "softmax";
  return dispatch_float(x.dtype(), name, [&](auto tag) {
    using T = typename decltype(tag)::type;
    // A 0-d tensor is one row of one element (axis 0 or -1, as PyTorch allows).
    const bool scalar = x.dim() == 0 && (axis_in == 0 || axis_in == -1);
    const int64_t axis = scalar ? 0 : normalize_axis(axis_in, x.dim(), name);
    const Shape work = scalar ? Shape{1} : x.shape();
    Tensor y = reshape_raw(softmax_forward<T>(reshape_raw(x, work), axis, log), x.shape());
    if (any_requires_grad({&x})) {
      const Tensor sy = y.alias();
      record(y, name, {x}, [sy, axis, log, work](const Tensor& g, std::vector<Tensor>& gi) {
        gi[0] = reshape_raw(softmax_backward<T>(reshape_raw(g, work), reshape_raw(sy, work), axis, log), sy.shape());
      }, {sy});
    }
    return y;
  });
}

}  // namespace detail

/// softmax(x)_i = exp(x_i - max) / sum_j exp(x_j - max) along `axis` (negative counts from
/// the end). Float dtypes; a bad axis throws std::out_of_range.
inline Tensor softmax(const Tensor& x, int64_t axis = -1) { return detail::softmax_impl(x, axis, false); }

/// log_softmax(x)_i = x_i - logsumexp(x) along `axis`, computed stably.
inline Tensor log_softmax(const Tensor& x, int64_t axis = -1) { return detail::softmax_impl(x, axis, true); }

// ---------------------------------------------------------------------------------------
// linear
// ---------------------------------------------------------------------------------------

/// y = x @ weight^T + bias.
///   x       (..., in_features)   any number of leading dims (1-D x gives a 1-D result)
///   weight  (out_features, in_features)
///   bias    (out_features,) or an undefined Tensor for none
/// The leading dims of x fold into the rows of one GEMM against a transposed *view* of the
/// weight (no copy); the backward is three GEMM/reductions: dx = g @ W, dW = g^T @ x,
/// db = sum of g over the rows.
inline Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias = Tensor()) {
  if (!is_floating(x.dtype()))
    throw std::domain_error(std::string("linear: x must be float32 or float64, got ") + dtype_name(x.dtype()));
  detail::check_same_float_dtype("linear", x, "x", weight, "weight");
  detail::check_same_float_dtype("linear", x, "x", bias, "bias");
  if (weight.dim() != 2)
    throw std::invalid_argument("linear: weight must be 2-D (out_features, in_features), got shape " +
                                shape_str(weight.shape()));
  const int64_t out_f = weight.shape()[0], in_f = weight.shape()[1];
  if (x.dim() == 0 || x.shape().back() != in_f)
    throw std::invalid_argument("linear: x has " + (x.dim() ? std::to_string(x.shape().back()) : std::string("no")) +
                                " input features but weight expects " + std::to_string(in_f) + " (x " +
                                shape_str(x.shape()) + ", weight " + shape_str(weight.shape()) + ")");
  if (bias.defined() && (bias.dim() != 1 || bias.shape()[0] != out_f))
    throw std::invalid_argument("linear: bias must have shape (" + std::to_string(out_f) + ",), got " +
                                shape_str(bias.shape()) + " (weight " + shape_str(weight.shape()) + ")");
  const int64_t M = shape_numel(Shape(x.shape().begin(), x.shape().end() - 1));  // rows of the GEMM
  const Tensor x2 = detail::reshape_raw(x, {M, in_f});
  Tensor out = detail::bmm_raw(x2, detail::swap_last_two(weight));  // (M, out), fresh
  if (bias.defined()) {
    dispatch_float(x.dtype(), "linear", [&](auto tag) {
      using T = typename decltype(tag)::type;
      const Tensor bc = bias.contiguous_data();
      const T* pb = bc.data<T>();
      T* po = out.data<T>();
      parallel_for(0, M, detail::row_grain(out_f), [&](int64_t lo, int64_t hi) {
        for (int64_t i = lo; i < hi; ++i)
          for (int64_t j = 0; j < out_f; ++j) po[i * out_f + j] += pb[j];
      });
    });
  }
  Shape out_shape(x.shape().begin(), x.shape().end() - 1);
  out_shape.push_back(out_f);
  out = out.as_strided(out_shape, contiguous_strides(out_shape), 0);
  if (any_requires_grad({&x, &weight, &bias})) {
    const Shape x_shape = x.shape();
    const bool need_x = x.requires_grad(), need_w = weight.requires_grad();
    const bool need_b = bias.defined() && bias.requires_grad();
    // dx reads the weight, dW reads x: keep only what the inputs requiring grad need.
    const Tensor sx = need_w ? x2.alias() : Tensor(), sw = need_x ? weight.alias() : Tensor();
    record(out, "linear", {x, weight, bias}, [sx, sw, x_shape, need_x, need_w, need_b, M, out_f](
                                                 const Tensor& g_in, std::vector<Tensor>& gi) {
      const Tensor g = detail::reshape_raw(g_in, {M, out_f});
      if (need_x) gi[0] = detail::reshape_raw(detail::bmm_raw(g, sw), x_shape);
      if (need_w) gi[1] = detail::bmm_raw(detail::swap_last_two(g), sx);
      if (need_b) gi[2] = detail::reduce_raw(g, {0}, false, detail::ReduceKind::Sum);
    }, {sx, sw});
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// layer_norm
// ---------------------------------------------------------------------------------------

/// Normalises x over its trailing dims equal to `normalized_shape`, with the biased variance:
///   y = (x - mean) / sqrt(var + eps) * weight + bias
/// weight and bias (each optional: undefined Tensor) have shape `normalized_shape`.
inline Tensor layer_norm(const Tensor& x, const Shape& normalized_shape, const Tensor& weight = Tensor(),
                         const Tensor& bias = Tensor(), double eps = 1e-5) {
  if (!is_floating(x.dtype()))
    throw std::domain_error(std::string("layer_norm: x must be float32 or float64, got ") + dtype_name(x.dtype()));
  detail::check_same_float_dtype("layer_norm", x, "x", weight, "weight");
  detail::check_same_float_dtype("layer_norm", x, "x", bias, "bias");
  const int64_t k = static_cast<int64_t>(normalized_shape.size());
  bool trailing_match = k >= 1 && k <= x.dim();
  for (int64_t i = 0; trailing_match && i < k; ++i)
    trailing_match = x.shape()[x.dim() - k + i] == normalized_shape[i];
  if (!trailing_match)
    throw std::invalid_argument("layer_norm: normalized_shape " + shape_str(normalized_shape) +
                                " does not match the trailing dimensions of x " + shape_str(x.shape()));
  if (weight.defined() && weight.shape() != normalized_shape)
    throw std::invalid_argument("layer_norm: weight has shape " + shape_str(weight.shape()) + ", expected " +
                                shape_str(normalized_shape));
  if (bias.defined() && bias.shape() != normalized_shape)
    throw std::invalid_argument("layer_norm: bias has shape " + shape_str(bias.shape()) + ", expected " +
                                shape_str(normalized_shape));
  if (!(eps >= 0.0)) throw std::invalid_argument("layer_norm: eps must be >= 0, got " + std::to_string(eps));
  return dispatch_float(x.dtype(), "layer_norm", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const int64_t D = shape_numel(normalized_shape);
    const int64_t rows = shape_numel(Shape(x.shape().begin(), x.shape().end() - k));
    const Tensor xc = x.contiguous_data();
    const Tensor wc = weight.defined() ? weight.contiguous_data() : Tensor();
    const Tensor bc = bias.defined() ? bias.contiguous_data() : Tensor();
    Tensor y = Tensor::empty(x.shape(), x.dtype());
    Tensor xhat = Tensor::empty(x.shape(), x.dtype());  // saved for the backward
    Tensor rstd = Tensor::empty({rows}, DType::Float64);
    const T* px = xc.data<T>();
    const T* pw = weight.defined() ? wc.data<T>() : nullptr;
    const T* pb = bias.defined() ? bc.data<T>() : nullptr;
    T* py = y.data<T>();
    T* ph = xhat.data<T>();
    double* pr = rstd.data<double>();
    parallel_for(0, rows, detail::row_grain(D), [&](int64_t lo, int64_t hi) {
      for (int64_t r = lo; r < hi; ++r) {
        const T* xr = px + r * D;
        double mean = 0.0;
        for (int64_t j = 0; j < D; ++j) mean += static_cast<double>(xr[j]);
        mean /= static_cast<double>(D);
        double var = 0.0;
        for (int64_t j = 0; j < D; ++j) {
          const double d = static_cast<double>(xr[j]) - mean;
          var += d * d;
        }
        var /= static_cast<double>(D);
        const double rs = 1.0 / std::sqrt(var + eps);
        pr[r] = rs;
        for (int64_t j = 0; j < D; ++j) {
          const T h = static_cast<T>((static_cast<double>(xr[j]) - mean) * rs);
          ph[r * D + j] = h;
          T v = h;
          if (pw) v = v * pw[j];
          if (pb) v = v + pb[j];
          py[r * D + j] = v;
        }
      }
    });
    if (any_requires_grad({&x, &weight, &bias})) {
      const Tensor sh = xhat.alias(), sr = rstd.alias(), sw = weight.defined() ? wc.alias() : Tensor();
      const bool need_x = x.requires_grad(), need_w = weight.defined() && weight.requires_grad();
      const bool need_b = bias.defined() && bias.requires_grad();
      const Shape norm_shape = normalized_shape;
      record(y, "layer_norm", {x, weight, bias}, [sh, sr, sw, need_x, need_w, need_b, rows, D, norm_shape](
                                                     const Tensor& g_in, std::vector<Tensor>& gi) {
        const Tensor g = g_in.contiguous_data();
        const T* pg = g.data<T>();
        const T* ph = sh.data<T>();
        const T* pw = sw.defined() ? sw.data<T>() : nullptr;
        const double* pr = sr.data<double>();
        const Tensor g2 = g.as_strided({rows, D}, {D, 1}, g.offset());
        if (need_w) {  // dweight = sum over rows of g * xhat
          const Tensor gh = detail::binary_map_same<T>(g2, sh.as_strided({rows, D}, {D, 1}, sh.offset()),
                                                       [](T a, T b) { return a * b; });
          const Tensor gw = detail::reduce_raw(gh, {0}, false, detail::ReduceKind::Sum);
          gi[1] = gw.as_strided(norm_shape, contiguous_strides(norm_shape), gw.offset());
        }
        if (need_b) {  // dbias = sum over rows of g
          const Tensor gb = detail::reduce_raw(g2, {0}, false, detail::ReduceKind::Sum);
          gi[2] = gb.as_strided(norm_shape, contiguous_strides(norm_shape), gb.offset());
        }
        if (!need_x) return;
        // dx = rstd * (gh - mean(gh) - xhat * mean(gh * xhat)), gh = g * weight
        Tensor gx = Tensor::empty(sh.shape(), sh.dtype());
        T* pgx = gx.data<T>();
        parallel_for(0, rows, detail::row_grain(D), [&](int64_t lo, int64_t hi) {
          for (int64_t r = lo; r < hi; ++r) {
            const T* gr = pg + r * D;
            const T* hr = ph + r * D;
            double s1 = 0.0, s2 = 0.0;
            for (int64_t j = 0; j < D; ++j) {
              const double gh = static_cast<double>(gr[j]) * (pw ? static_cast<double>(pw[j]) : 1.0);
              s1 += gh;
              s2 += gh * static_cast<double>(hr[j]);
            }
            s1 /= static_cast<double>(D);
            s2 /= static_cast<double>(D);
            for (int64_t j = 0; j < D; ++j) {
              const double gh = static_cast<double>(gr[j]) * (pw ? static_cast<double>(pw[j]) : 1.0);
              pgx[r * D + j] = static_cast<T>(pr[r] * (gh - s1 - static_cast<double>(hr[j]) * s2));
            }
          }
        });
        gi[0] = gx;
      }, {sh, sr, sw});
    }
    return y;
  });
}

// ---------------------------------------------------------------------------------------
// dropout
// ---------------------------------------------------------------------------------------

/// Training-mode dropout: each element is kept with probability 1 - p and scaled by
/// 1 / (1 - p), else zeroed (p == 1 zeroes everything). The mask is drawn sequentially from
/// default_generator() in row-major order, so manual_seed makes it reproducible for any
/// thread count. The backward multiplies by the same mask.
inline Tensor dropout(const Tensor& x, double p) {
  if (!(p >= 0.0 && p <= 1.0)) throw std::invalid_argument("dropout: p must be in [0, 1], got " + std::to_string(p));
  return dispatch_float(x.dtype(), "dropout", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const int64_t n = x.numel();
    Tensor mask = Tensor::empty(x.shape(), x.dtype());  // 0 or 1 / (1 - p)
    T* pm = mask.data<T>();
    const T scale = p < 1.0 ? static_cast<T>(1.0 / (1.0 - p)) : T(0);
    {
      Generator& gen = default_generator();
      std::lock_guard<std::mutex> lock(gen.mutex());
      for (int64_t i = 0; i < n; ++i) pm[i] = gen.uniform() >= p ? scale : T(0);
    }
    const Tensor xc = x.contiguous_data();
    Tensor y = detail::binary_map_same<T>(xc, mask, [](T a, T m) { return a * m; });
    if (any_requires_grad({&x})) {
      const Tensor sm = mask.alias();
      record(y, "dropout", {x}, [sm](const Tensor& g, std::vector<Tensor>& gi) {
        gi[0] = detail::binary_map_same<T>(g.contiguous_data(), sm, [](T a, T m) { return a * m; });
      }, {sm});
    }
    return y;
  });
}

// ---------------------------------------------------------------------------------------
// Losses. Each computes per-element losses (shape S) in one fused loop; the reduction
// ("mean", "sum" or "none") is applied on top, and the backward first turns the output
// gradient into a per-element gradient of shape S, then applies the loss's derivative.
// ---------------------------------------------------------------------------------------
enum class Reduction { Mean, Sum, None };

inline Reduction parse_reduction(const std::string& s, const char* op) {
  if (s == "mean") return Reduction::Mean;
  if (s == "sum") return Reduction::Sum;
  if (s == "none") return Reduction::None;
  throw std::invalid_argument(std::string(op) + ": reduction must be 'mean', 'sum' or 'none', got '" + s + "'");
}

namespace detail {

/// Reduces per-element losses `elem` (contiguous, fresh) as asked. Sums run over a fixed order.
template <typename T>
inline Tensor reduce_loss(const Tensor& elem, Reduction red) {
  if (red == Reduction::None) return elem;
  std::vector<int64_t> all;
  for (int64_t i = 0; i < elem.dim(); ++i) all.push_back(i);
  Tensor s = reduce_raw(elem, all, false, ReduceKind::Sum);
  if (red == Reduction::Mean) {
    const int64_t n = elem.numel();
    s.data<T>()[0] = n == 0 ? std::numeric_limits<T>::quiet_NaN() : static_cast<T>(s.data<T>()[0] / static_cast<T>(n));
  }
  return s;
}

/// Gradient of each per-element loss (shape `shape`) from the gradient of the reduced output.
template <typename T>
inline Tensor per_element_grad(const Tensor& g, const Shape& shape, Reduction red) {
  if (red == Reduction::None) return g.contiguous_data();
  const int64_t n = shape_numel(shape);
  T v = g.contiguous_data().data<T>()[0];
  if (red == Reduction::Mean) v = static_cast<T>(v / static_cast<T>(n));
  return Tensor::full(shape, static_cast<double>(v), g.dtype());
}

/// Checks labels for (N, K) scores: int64, shape (N,), every value in [0, K).
inline Tensor check_class_labels(const char* op, const Tensor& scores, const char* scores_name, const Tensor& labels) {
  if (!is_floating(scores.dtype()))
    throw std::domain_error(std::string(op) + ": " + scores_name + " must be float32 or float64, got " +
                            dtype_name(scores.dtype()));
  if (labels.dtype() != DType::Int64)
    throw std::domain_error(std::string(op) + ": labels must be int64 class indices, got " + dtype_name(labels.dtype()));
  if (scores.dim() != 2)
    throw std::invalid_argument(std::string(op) + ": " + scores_name + " must be 2-D (N, K), got shape " +
                                shape_str(scores.shape()));
  if (labels.dim() != 1 || labels.shape()[0] != scores.shape()[0])
    throw std::invalid_argument(std::string(op) + ": labels must have shape (" + std::to_string(scores.shape()[0]) +
                                ",) to match " + scores_name + " " + shape_str(scores.shape()) + ", got " +
                                shape_str(labels.shape()));
  const Tensor lc = labels.contiguous_data();
  const int64_t* pl = lc.data<int64_t>();
  const int64_t K = scores.shape()[1];
  for (int64_t i = 0, n = lc.numel(); i < n; ++i)
    if (pl[i] < 0 || pl[i] >= K)
      throw std::out_of_range(std::string(op) + ": label " + std::to_string(pl[i]) + " at index " + std::to_string(i) +
                              " is out of range for " + std::to_string(K) + " classes (" + scores_name + " " +
                              shape_str(scores.shape()) + ")");
  return lc;
}

/// Promotes two same-shape loss operands to a common float dtype.
inline DType loss_pair_dtype(const char* op, const Tensor& a, const char* a_name, const Tensor& b, const char* b_name) {
  if (a.shape() != b.shape())
    throw std::invalid_argument(std::string(op) + ": " + a_name + " " + shape_str(a.shape()) + " and " + b_name + " " +
                                shape_str(b.shape()) + " must have the same shape");
  if (!is_floating(a.dtype()))
    throw std::domain_error(std::string(op) + ": " + a_name + " must be float32 or float64, got " +
                            dtype_name(a.dtype()));
  return promote_types(a.dtype(), b.dtype());
}

}  // namespace detail

/// Mean squared error: per element (pred - target)^2, reduced. Shapes must match exactly
/// (no broadcasting, to catch (N,1) vs (N,) slips). Differentiable in both inputs.
inline Tensor mse_loss(const Tensor& pred, const Tensor& target, Reduction red = Reduction::Mean) {
  const DType dt = detail::loss_pair_dtype("mse_loss", pred, "pred", target, "target");
  return dispatch_float(dt, "mse_loss", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const Tensor p = cast_raw(pred, dt).contiguous_data(), t = cast_raw(target, dt).contiguous_data();
    const Tensor diff = detail::binary_map_same<T>(p, t, [](T a, T b) { return a - b; });
    Tensor out = detail::reduce_loss<T>(detail::unary_map<T, T>(diff, dt, [](T d) { return d * d; }), red);
    if (any_requires_grad({&pred, &target})) {
      // The gradient reads only the difference: the inputs' dtypes suffice, not their data.
      const Tensor sd = diff.alias();
      const DType pred_dtype = pred.dtype(), target_dtype = target.dtype();
      record(out, "mse_loss", {pred, target}, [sd, pred_dtype, target_dtype, red](const Tensor& g, std::vector<Tensor>& gi) {
        const Tensor ge = detail::per_element_grad<T>(g, sd.shape(), red);
        const Tensor gp = detail::binary_map_same<T>(ge, sd, [](T a, T d) { return T(2) * a * d; });
        gi[0] = cast_raw(gp, pred_dtype);
        if (is_floating(target_dtype))
          gi[1] = cast_raw(detail::unary_map<T, T>(gp, gp.dtype(), [](T v) { return -v; }), target_dtype);
      }, {sd});
    }
    return out;
  });
}

/// Softmax cross-entropy of logits (N, K) against int64 class labels (N,), fused:
///   loss_n = logsumexp(logits_n) - logits_n[label_n]     (max-shifted: finite for huge logits)
/// Gradient: softmax(logits) - onehot(labels), times the per-element output gradient.
inline Tensor cross_entropy(const Tensor& logits, const Tensor& labels, Reduction red = Reduction::Mean) {
  const Tensor lc = detail::check_class_labels("cross_entropy", logits, "logits", labels);
  return dispatch_float(logits.dtype(), "cross_entropy", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const int64_t N = logits.shape()[0], K = logits.shape()[1];
    const Tensor xc = logits.contiguous_data();
    Tensor elem = Tensor::empty({N}, logits.dtype());
    Tensor lse = Tensor::empty({N}, DType::Float64);  // saved for the backward
    const T* px = xc.data<T>();
    const int64_t* pl = lc.data<int64_t>();
    T* pe = elem.data<T>();
    double* ps = lse.data<double>();
    parallel_for(0, N, detail::row_grain(K), [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        const T* row = px + i * K;
        double m = static_cast<double>(row[0]);
        for (int64_t k = 1; k < K; ++k) m = std::max(m, static_cast<double>(row[k]));
        if (std::isinf(m)) m = 0.0;  // keeps exp finite; the loss is then inf/NaN as it should be
        double s = 0.0;
        for (int64_t k = 0; k < K; ++k) s += std::exp(static_cast<double>(row[k]) - m);
        ps[i] = m + std::log(s);
        pe[i] = static_cast<T>(ps[i] - static_cast<double>(row[pl[i]]));
      }
    });
    Tensor out = detail::reduce_loss<T>(elem, red);
    if (any_requires_grad({&logits})) {
      const Tensor sx = xc.alias(), sl = lc.alias(), ss = lse.alias();
      record(out, "cross_entropy", {logits}, [sx, sl, ss, red, N, K](const Tensor& g, std::vector<Tensor>& gi) {
        const Tensor ge = detail::per_element_grad<T>(g, {N}, red);
        const T* pg = ge.data<T>();
        const T* px = sx.data<T>();
        const int64_t* pl = sl.data<int64_t>();
        const double* ps = ss.data<double>();
        Tensor gx = Tensor::empty({N, K}, sx.dtype());
        T* pgx = gx.data<T>();
        parallel_for(0, N, detail::row_grain(K), [&](int64_t lo, int64_t hi) {
          for (int64_t i = lo; i < hi; ++i) {
            const double gv = static_cast<double>(pg[i]);
            for (int64_t k = 0; k < K; ++k) {
              const double prob = std::exp(static_cast<double>(px[i * K + k]) - ps[i]);
              pgx[i * K + k] = static_cast<T>(gv * (prob - (k == pl[i] ? 1.0 : 0.0)));
            }
          }
        });
        gi[0] = gx;
      }, {sx, sl, ss});
    }
    return out;
  });
}

/// Negative log-likelihood: loss_n = -log_probs[n, label_n] for log_probs (N, K) and int64
/// labels (N,). Pair with log_softmax (cross_entropy fuses the two).
inline Tensor nll_loss(const Tensor& log_probs, const Tensor& labels, Reduction red = Reduction::Mean) {
  const Tensor lc = detail::check_class_labels("nll_loss", log_probs, "log_probs", labels);
  return dispatch_float(log_probs.dtype(), "nll_loss", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const int64_t N = log_probs.shape()[0], K = log_probs.shape()[1];
    const Tensor xc = log_probs.contiguous_data();
    Tensor elem = Tensor::empty({N}, log_probs.dtype());
    const T* px = xc.data<T>();
    const int64_t* pl = lc.data<int64_t>();
    T* pe = elem.data<T>();
    for (int64_t i = 0; i < N; ++i) pe[i] = -px[i * K + pl[i]];
    Tensor out = detail::reduce_loss<T>(elem, red);
    if (any_requires_grad({&log_probs})) {
      const Tensor sl = lc.alias();
      record(out, "nll_loss", {log_probs}, [sl, red, N, K](const Tensor& g, std::vector<Tensor>& gi) {
        const Tensor ge = detail::per_element_grad<T>(g, {N}, red);
        const T* pg = ge.data<T>();
        const int64_t* pl = sl.data<int64_t>();
        Tensor gx = Tensor::zeros({N, K}, g.dtype());
        T* pgx = gx.data<T>();
        for (int64_t i = 0; i < N; ++i) pgx[i * K + pl[i]] = -pg[i];
        gi[0] = gx;
      }, {sl});
    }
    return out;
  });
}

/// Sigmoid + binary cross-entropy in one stable expression, per element:
///   max(x, 0) - x * t + log1p(exp(-|x|))
/// target has the logits' shape (ValueError otherwise). d/dx = sigmoid(x) - t, d/dt = -x.
inline Tensor binary_cross_entropy_with_logits(const Tensor& logits, const Tensor& target,
                                               Reduction red = Reduction::Mean) {
  const DType dt =
      detail::loss_pair_dtype("binary_cross_entropy_with_logits", logits, "logits", target, "target");
  return dispatch_float(dt, "binary_cross_entropy_with_logits", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const Tensor x = cast_raw(logits, dt).contiguous_data(), t = cast_raw(target, dt).contiguous_data();
    const Tensor elem = detail::binary_map_same<T>(x, t, [](T xv, T tv) {
      return std::max(xv, T(0)) - xv * tv + std::log1p(std::exp(-std::fabs(xv)));
    });
    Tensor out = detail::reduce_loss<T>(elem, red);
    if (any_requires_grad({&logits, &target})) {
      const Tensor sx = x.alias(), st = t.alias();
      const DType logits_dtype = logits.dtype(), target_dtype = target.dtype();
      record(out, "binary_cross_entropy_with_logits", {logits, target},
             [sx, st, logits_dtype, target_dtype, red](const Tensor& g, std::vector<Tensor>& gi) {
               const Tensor ge = detail::per_element_grad<T>(g, sx.shape(), red);
               gi[0] = cast_raw(detail::ternary_map_same<T>(ge, sx, st, [](T gv, T xv, T tv) {
                                  const T sig = xv >= T(0) ? T(1) / (T(1) + std::exp(-xv))
                                                           : std::exp(xv) / (T(1) + std::exp(xv));
                                  return gv * (sig - tv);
                                }),
                                logits_dtype);
               if (is_floating(target_dtype))
                 gi[1] = cast_raw(detail::binary_map_same<T>(ge, sx, [](T gv, T xv) { return -gv * xv; }), target_dtype);
             }, {sx, st});
    }
    return out;
  });
}

}  // namespace nablagrad
