// nablagrad/tensor_api.h - the Tensor frontend in libtorch's spelling.
//
// Defines the Tensor members declared in tensor.h that need autograd or the ops
// (backward, sum, reshape, relu, ...), the arithmetic and comparison operators, the
// tensor() helpers and operator<< (PyTorch's repr). nablagrad.h and tensor_operations.h
// include it, so user code never includes it directly.
//
//     using namespace nablagrad;
//     Tensor w = tensor({1, 2, 3, 4}, {2, 2}).requires_grad_();
//     Tensor loss = (w * w + 1.0).sum();         // a double scalar keeps float32 float32
//     loss.backward();
//     std::cout << w.grad() << "\n";             // tensor([[2., 4.],
//                                                //         [6., 8.]])
//     float l = loss.item<float>();
//
// Scalars on either side of an operator become 0-d tensors by scalar_like(): a floating
// scalar takes the tensor's float dtype (float32 stays float32; with an int64 or bool
// tensor it is float32), an integer takes a float tensor's dtype or int64 - the rule the
// Python bindings apply to Python numbers.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <initializer_list>
#include <ostream>
#include <string>
#include <type_traits>
#include <vector>

#include "autograd.h"
#include "ops/conv.h"
#include "ops/conv_options.h"
#include "ops/elementwise.h"
#include "ops/linalg.h"
#include "ops/nn.h"
#include "ops/reduction.h"
#include "ops/shape.h"
#include "tensor.h"

namespace nablagrad {

// ---------------------------------------------------------------------------------------
// Members declared in tensor.h
// ---------------------------------------------------------------------------------------
inline void Tensor::backward(const Tensor& grad, bool retain_graph) const {
  nablagrad::backward(*this, grad, retain_graph);
}
inline Tensor Tensor::to(DType dtype) const { return nablagrad::astype(*this, dtype); }
inline Tensor Tensor::sum(const std::vector<int64_t>& axes, bool keepdims) const {
  return nablagrad::sum(*this, axes, keepdims);
}
inline Tensor Tensor::mean(const std::vector<int64_t>& axes, bool keepdims) const {
  return nablagrad::mean(*this, axes, keepdims);
}
inline Tensor Tensor::max(const std::vector<int64_t>& axes, bool keepdims) const {
  return nablagrad::max(*this, axes, keepdims);
}
inline Tensor Tensor::min(const std::vector<int64_t>& axes, bool keepdims) const {
  return nablagrad::min(*this, axes, keepdims);
}
inline Tensor Tensor::reshape(const Shape& shape) const { return nablagrad::reshape(*this, shape); }
inline Tensor Tensor::view(const Shape& shape) const { return nablagrad::view(*this, shape); }
inline Tensor Tensor::flatten(int64_t start, int64_t end) const { return nablagrad::flatten(*this, start, end); }
inline Tensor Tensor::transpose(int64_t axis_a, int64_t axis_b) const {
  return nablagrad::transpose(*this, axis_a, axis_b);
}
inline Tensor Tensor::permute(const std::vector<int64_t>& dims) const { return nablagrad::permute(*this, dims); }
inline Tensor Tensor::contiguous() const { return nablagrad::contiguous(*this); }
inline Tensor Tensor::matmul(const Tensor& other) const { return nablagrad::matmul(*this, other); }
inline Tensor Tensor::relu() const { return nablagrad::relu(*this); }
inline Tensor Tensor::sigmoid() const { return nablagrad::sigmoid(*this); }
inline Tensor Tensor::tanh() const { return nablagrad::tanh(*this); }
inline Tensor Tensor::exp() const { return nablagrad::exp(*this); }
inline Tensor Tensor::log() const { return nablagrad::log(*this); }
inline Tensor Tensor::sqrt() const { return nablagrad::sqrt(*this); }
inline Tensor Tensor::abs() const { return nablagrad::abs(*this); }
inline Tensor Tensor::softmax(int64_t axis) const { return nablagrad::softmax(*this, axis); }
inline Tensor Tensor::log_softmax(int64_t axis) const { return nablagrad::log_softmax(*this, axis); }

// ---------------------------------------------------------------------------------------
// Scalars and construction
// ---------------------------------------------------------------------------------------
/// A 0-d tensor holding `value`, typed to combine with `like` without widening it: a
/// floating value takes like's float dtype (float32 for an int64 / bool tensor), an integer
/// takes like's float dtype or int64, a bool is bool.
template <typename S>
inline Tensor scalar_like(S value, const Tensor& like) {
  static_assert(std::is_arithmetic<S>::value, "scalar_like: value must be a number or bool");
  if constexpr (std::is_same<S, bool>::value) {
    return Tensor::scalar(value ? 1.0 : 0.0, DType::Bool);
  } else if constexpr (std::is_floating_point<S>::value) {
    return Tensor::scalar(static_cast<double>(value), is_floating(like.dtype()) ? like.dtype() : DType::Float32);
  } else {
    if (is_floating(like.dtype())) return Tensor::scalar(static_cast<double>(value), like.dtype());
    Tensor t = Tensor::empty({}, DType::Int64);
    *t.data<int64_t>() = static_cast<int64_t>(value);
    return t;
  }
}

/// A 1-D float32 tensor of the values: tensor({0.5, 1.5, 2.5}).
inline Tensor tensor(std::initializer_list<double> values) {
  return Tensor::from_vector(std::vector<double>(values), {static_cast<int64_t>(values.size())}, DType::Float32);
}
/// A tensor of `shape` holding the values in row-major order, converted to `dtype`:
/// tensor({1, 2, 3, 4}, {2, 2}), tensor({1, 0}, {2}, DType::Int64). std::invalid_argument
/// when the count does not match the shape. (A 0-d tensor: tensor({3.5}, {}).)
inline Tensor tensor(std::initializer_list<double> values, const Shape& shape, DType dtype = DType::Float32) {
  return Tensor::from_vector(std::vector<double>(values), shape, dtype);
}

// ---------------------------------------------------------------------------------------
// Operators: Tensor op Tensor, Tensor op scalar, scalar op Tensor
// ---------------------------------------------------------------------------------------
namespace detail {
template <typename S>
using enable_if_scalar = std::enable_if_t<std::is_arithmetic<S>::value, int>;
}  // namespace detail

#define NABLAGRAD_TENSOR_OPERATOR(OP, CALL)                                                   \
  inline Tensor operator OP(const Tensor& a, const Tensor& b) { return CALL(a, b); }          \
  template <typename S, detail::enable_if_scalar<S> = 0>                                      \
  inline Tensor operator OP(const Tensor& a, S b) { return CALL(a, scalar_like(b, a)); }     \
  template <typename S, detail::enable_if_scalar<S> = 0>                                      \
  inline Tensor operator OP(S a, const Tensor& b) { return CALL(scalar_like(a, b), b); }

namespace detail {
inline Tensor less(const Tensor& a, const Tensor& b) { return compare(CompareOp::Lt, a, b); }
inline Tensor less_equal(const Tensor& a, const Tensor& b) { return compare(CompareOp::Le, a, b); }
inline Tensor greater(const Tensor& a, const Tensor& b) { return compare(CompareOp::Gt, a, b); }
inline Tensor greater_equal(const Tensor& a, const Tensor& b) { return compare(CompareOp::Ge, a, b); }
inline Tensor equal(const Tensor& a, const Tensor& b) { return compare(CompareOp::Eq, a, b); }
inline Tensor not_equal(const Tensor& a, const Tensor& b) { return compare(CompareOp::Ne, a, b); }
}  // namespace detail

// Differentiable arithmetic (add, sub, mul, div of ops/elementwise.h).
NABLAGRAD_TENSOR_OPERATOR(+, add)
NABLAGRAD_TENSOR_OPERATOR(-, sub)
NABLAGRAD_TENSOR_OPERATOR(*, mul)
NABLAGRAD_TENSOR_OPERATOR(/, div)
// Elementwise comparisons: bool tensors (use item<bool>() or sum() to reduce them).
NABLAGRAD_TENSOR_OPERATOR(<, detail::less)
NABLAGRAD_TENSOR_OPERATOR(<=, detail::less_equal)
NABLAGRAD_TENSOR_OPERATOR(>, detail::greater)
NABLAGRAD_TENSOR_OPERATOR(>=, detail::greater_equal)
NABLAGRAD_TENSOR_OPERATOR(==, detail::equal)
NABLAGRAD_TENSOR_OPERATOR(!=, detail::not_equal)
#undef NABLAGRAD_TENSOR_OPERATOR

inline Tensor operator-(const Tensor& x) { return neg(x); }
inline Tensor operator+(const Tensor& x) { return x; }

template <typename S>
inline Tensor Tensor::pow(S exponent) const {
  static_assert(std::is_arithmetic<S>::value, "pow: the exponent must be a number or a Tensor");
  if (is_floating(dtype()) && !std::is_same<S, bool>::value)
    return nablagrad::pow_scalar(*this, static_cast<double>(exponent));
  return nablagrad::pow(*this, scalar_like(exponent, *this));
}
inline Tensor Tensor::pow(const Tensor& exponent) const { return nablagrad::pow(*this, exponent); }

// ---------------------------------------------------------------------------------------
// Printing: PyTorch's repr
// ---------------------------------------------------------------------------------------
namespace detail {

/// Formats the elements of a tensor as PyTorch does: one width for all; floats with 4
/// decimals, as "1." when all are integers, or in scientific notation when the magnitudes
/// span more than 1000x (or exceed 1e8, or go below 1e-4).
class ReprFormatter {
 public:
  ReprFormatter(DType dtype, const std::vector<double>& values) : dtype_(dtype) {
    if (!is_floating(dtype)) return;
    double lo = 0, hi = 0;
    bool any = false;
    for (double v : values) {
      if (!std::isfinite(v) || v == 0) continue;
      const double a = std::fabs(v);
      lo = any ? std::min(lo, a) : a;
      hi = any ? std::max(hi, a) : a;
      any = true;
      if (std::ceil(v) != v) int_mode_ = false;
    }
    if (any) sci_mode_ = hi / lo > 1000.0 || hi > 1e8 || (!int_mode_ && lo < 1e-4);
  }

  /// The column width: PyTorch measures floats over the nonzero finite values only (a
  /// longer "nan" or "-0." just sticks out), ints and bools over all.
  std::size_t width(const std::vector<double>& values, const std::vector<int64_t>& ints) const {
    std::size_t w = 1;
    for (std::size_t k = 0; k < values.size(); ++k) {
      if (is_floating(dtype_) && (!std::isfinite(values[k]) || values[k] == 0)) continue;
      w = std::max(w, format(values[k], ints[k]).size());
    }
    return w;
  }

  std::string format(double value, int64_t int_value) const {
    if (dtype_ == DType::Bool) return value != 0 ? "True" : "False";
    if (dtype_ == DType::Int64) return std::to_string(int_value);
    if (std::isnan(value)) return "nan";
    if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
    char buf[64];
    if (sci_mode_) {
      std::snprintf(buf, sizeof(buf), "%.4e", value);
    } else if (int_mode_) {
      std::snprintf(buf, sizeof(buf), "%.0f.", value);
    } else {
      std::snprintf(buf, sizeof(buf), "%.4f", value);
    }
    return buf;
  }

 private:
  DType dtype_;
  bool int_mode_ = true;
  bool sci_mode_ = false;
};

/// The indices printed along an axis of `size`: all, or the first and last `edge` with a
/// gap (-1) between them when summarising.
inline std::vector<int64_t> repr_indices(int64_t size, bool summarize, int64_t edge) {
  std::vector<int64_t> idx;
  if (summarize && size > 2 * edge) {
    for (int64_t i = 0; i < edge; ++i) idx.push_back(i);
    idx.push_back(-1);
    for (int64_t i = size - edge; i < size; ++i) idx.push_back(i);
  } else {
    for (int64_t i = 0; i < size; ++i) idx.push_back(i);
  }
  return idx;
}

}  // namespace detail

/// PyTorch's repr of a tensor: tensor([[1., 2.],\n        [3., 4.]], dtype=float64),
/// with more than 1000 elements summarised by the first and last 3 along each axis, and
/// requires_grad=True / grad_fn=<name> appended as PyTorch does. Float32, int64 and bool
/// print no dtype.
inline std::string tensor_repr(const Tensor& t) {
  if (!t.defined()) return "tensor(undefined)";
  constexpr int64_t kThreshold = 1000, kEdge = 3, kLineWidth = 80;
  const std::string prefix = "tensor(";
  const int64_t nd = t.dim();
  const bool summarize = t.numel() > kThreshold;
  const Shape& shape = t.shape();
  const Shape& strides = t.strides();
  auto read = [&](int64_t off, double& v, int64_t& iv) {
    dispatch_all(t.dtype(), [&](auto tag) {
      using T = typename decltype(tag)::type;
      const T x = static_cast<const T*>(t.raw_data())[off];
      v = static_cast<double>(x);
      iv = std::is_same<T, int64_t>::value ? static_cast<int64_t>(x) : 0;
    });
  };
  // The printed elements, in order (they choose the format and the column width).
  std::vector<double> values;
  std::vector<int64_t> ints;
  std::function<void(int64_t, int64_t)> collect = [&](int64_t d, int64_t off) {
    if (d == nd) {
      double v;
      int64_t iv;
      read(off, v, iv);
      values.push_back(v);
      ints.push_back(iv);
      return;
    }
    for (int64_t i : detail::repr_indices(shape[d], summarize, kEdge))
      if (i >= 0) collect(d + 1, off + i * strides[d]);
  };
  std::string body;
  if (t.numel() == 0) {
    body = nd > 1 ? "[], size=" + shape_str(shape) : "[]";
  } else {
    collect(0, 0);
    const detail::ReprFormatter fmt(t.dtype(), values);
    const std::size_t width = fmt.width(values, ints);
    auto element = [&](int64_t off) {
      double v;
      int64_t iv;
      read(off, v, iv);
      const std::string s = fmt.format(v, iv);
      return s.size() < width ? std::string(width - s.size(), ' ') + s : s;
    };
    // indent: the column of this level's '[' (as PyTorch's _tensor_str_with_formatter)
    std::function<std::string(int64_t, int64_t, int64_t)> render = [&](int64_t d, int64_t off,
                                                                        int64_t indent) -> std::string {
      if (d == nd) return element(off);
      const std::vector<int64_t> idx = detail::repr_indices(shape[d], summarize, kEdge);
      if (d == nd - 1) {
        std::vector<std::string> items;
        for (int64_t i : idx) items.push_back(i < 0 ? " ..." : element(off + i * strides[d]));
        const int64_t per_line =
            std::max<int64_t>(1, (kLineWidth - indent) / static_cast<int64_t>(width + 2));
        std::string out = "[";
        for (std::size_t k = 0; k < items.size(); ++k) {
          if (k > 0) out += static_cast<int64_t>(k) % per_line == 0 ? ",\n" + std::string(indent + 1, ' ') : ", ";
          out += items[k];
        }
        return out + "]";
      }
      const std::string sep = "," + std::string(static_cast<std::size_t>(nd - d - 1), '\n') +
                              std::string(static_cast<std::size_t>(indent + 1), ' ');
      std::string out = "[";
      bool first = true;
      for (int64_t i : idx) {
        if (!first) out += sep;
        first = false;
        out += i < 0 ? "..." : render(d + 1, off + i * strides[d], indent + 1);
      }
      return out + "]";
    };
    body = render(0, 0, static_cast<int64_t>(prefix.size()));
  }
  std::string suffix;
  if (t.dtype() == DType::Float64) suffix += ", dtype=float64";
  if (t.requires_grad()) {
    if (t.impl().grad_fn)
      suffix += std::string(", grad_fn=<") + t.impl().grad_fn->name + ">";
    else
      suffix += ", requires_grad=True";
  }
  return prefix + body + suffix + ")";
}

inline std::ostream& operator<<(std::ostream& os, const Tensor& t) { return os << tensor_repr(t); }

}  // namespace nablagrad
