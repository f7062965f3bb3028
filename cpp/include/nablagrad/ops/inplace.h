// nablagrad/ops/inplace.h - in-place tensor ops: add_ sub_ mul_ div_ addcmul_ addcdiv_ lerp_
// clamp_ fill_ zero_ (PyTorch's names and semantics).
//
//     using namespace nablagrad;
//     Tensor buf = Tensor::zeros({3});
//     add_(buf, Tensor{1.f, 2.f, 3.f}, 0.5);          // buf += 0.5 * other
//     mul_(buf, 0.9);                                 // buf *= 0.9
//     addcmul_(buf, g, g, 0.001);                     // buf += 0.001 * g * g
//     lerp_(buf, end, 0.1);                           // buf += 0.1 * (end - buf)
//
// Rules (all as PyTorch):
//   * The tensor written, `t`, keeps its shape: every other operand is broadcast to t's shape,
//     never the reverse (std::invalid_argument otherwise, naming both shapes).
//   * dtypes: the op is computed in the promoted type of t and the operands (a 0-d operand
//     does not widen t within its category, see result_type in tensor.h) and written back in
//     t's dtype; a result that cannot be cast to t's dtype (a float operand into an int64
//     tensor, a true division of int64 tensors) throws std::domain_error (Python TypeError).
//     Arithmetic on bool tensors is refused (std::domain_error); fill_ and zero_ take any dtype.
//     Scalar arguments (alpha, value, weight, double operands) into an int64 tensor must be
//     integral.
//   * Autograd: in-place ops are never recorded in the graph. Hence, while grad mode is on,
//     writing into a tensor that requires grad throws std::runtime_error - a leaf ("a leaf
//     Variable that requires grad is being used in an in-place operation", as PyTorch; wrap
//     parameter updates in NoGradGuard / ng.no_grad()) or a result of a recorded op (PyTorch
//     would record the op; here it is refused, use the out-of-place op) - and so does an
//     operand that requires grad (its gradient would be lost silently).
//   * Every op bumps t's version counter (shared by all views of the storage), so autograd
//     refuses a backward that would read the overwritten values.
//   * Operands that share memory with t are read from a copy (x.add_(x.T) is well defined);
//     a t with several elements at one address (an expand()ed tensor) is refused.
// The ops return t (a handle to the same TensorImpl) so calls chain: mul_(add_(t, x), 2.0).
#pragma once

#include <array>
#include <cmath>
#include <stdexcept>
#include <string>

#include "../autograd.h"
#include "../tensor.h"
#include "../threading.h"
#include "elementwise.h"

namespace nablagrad {
namespace detail {

/// Checks shared by every in-place op: autograd's rules (see the top of this file) and a
/// target without aliased elements. `operands` may hold undefined tensors (absent bounds).
template <std::size_t K>
inline void check_inplace(const Tensor& t, const char* op, const std::array<Tensor, K>& operands) {
  if (!t.defined()) throw std::invalid_argument(std::string(op) + ": the tensor is undefined");
  if (grad_enabled()) {
    if (t.requires_grad() && t.is_leaf())
      throw std::runtime_error(std::string(op) +
                               ": a leaf Variable that requires grad is being used in an in-place operation "
                               "(update parameters inside ng.no_grad() / NoGradGuard)");
    if (t.requires_grad())
      throw std::runtime_error(std::string(op) + ": the tensor is the result of a recorded op (shape " +
                               shape_str(t.shape()) +
                               "); in-place ops are not recorded by autograd, so it cannot be modified in place "
                               "while grad mode is on: use the out-of-place op");
    for (const Tensor& o : operands)
      if (o.defined() && o.requires_grad())
        throw std::runtime_error(std::string(op) +
                                 ": an operand requires grad but in-place ops are not recorded by autograd, so its "
                                 "gradient would be lost; use the out-of-place op, or run under ng.no_grad()");
  }
  for (std::size_t d = 0; d < t.shape().size(); ++d)
    if (t.strides()[d] == 0 && t.shape()[d] > 1)
      throw std::runtime_error(std::string(op) + ": the tensor of shape " + shape_str(t.shape()) +
                               " has several elements at one memory location (an expand()ed tensor); write into a "
                               "contiguous() copy instead");
}

/// The dtype the op computes in: PyTorch's result_type over t and the defined operands
/// (dimensioned operands promote fully; a 0-d operand decides only when its category is
/// higher). Throws std::domain_error when it cannot be cast back to t's dtype.
template <std::size_t K>
inline DType inplace_compute_dtype(const Tensor& t, const char* op, const std::array<Tensor, K>& operands,
                                   bool true_division) {
  if (t.dtype() == DType::Bool)
    throw std::domain_error(std::string(op) + ": in-place arithmetic on a bool tensor is not supported");
  bool has_dimmed = t.dim() > 0, has_zero = t.dim() == 0;
  DType dimmed = t.dtype(), zero = t.dtype();
  for (const Tensor& o : operands) {
    if (!o.defined()) continue;
    if (o.dim() > 0) {
      dimmed = has_dimmed ? promote_types(dimmed, o.dtype()) : o.dtype();
      has_dimmed = true;
    } else {
      zero = has_zero ? promote_types(zero, o.dtype()) : o.dtype();
      has_zero = true;
    }
  }
  DType c = !has_dimmed ? zero : !has_zero ? dimmed : (dtype_category(zero) > dtype_category(dimmed) ? zero : dimmed);
  if (true_division && !is_floating(c)) c = DType::Float32;  // int / int -> float, as torch.div
  if (dtype_category(c) > dtype_category(t.dtype()))
    throw std::domain_error(std::string(op) + ": result type " + dtype_name(c) +
                            " can't be cast to the desired output type " + dtype_name(t.dtype()));
  return c;
}

/// A scalar argument (alpha, value, weight) checked for an integer computation.
inline void check_integral_scalar(double v, DType compute, const char* op, const char* what) {
  if (!is_floating(compute) && v != std::trunc(v))
    throw std::domain_error(std::string(op) + ": for integral tensors, " + what +
                            " must not be a fractional number, got " + std::to_string(v));
}

/// A double operand as a 0-d tensor: t's float dtype, or int64 for an integral value into an
/// int64 tensor (a fractional one becomes float64 and fails the dtype check, as in PyTorch).
inline Tensor scalar_operand(double v, const Tensor& t) {
  if (is_floating(t.dtype())) return Tensor::scalar(v, t.dtype());
  if (std::isfinite(v) && v == std::trunc(v)) return Tensor::scalar(v, DType::Int64);
  return Tensor::scalar(v, DType::Float64);
}

/// An operand read by the loop: `data[i * stride]` for element i of t (stride 0 for one value).
template <typename C>
struct InplaceOperand {
  Tensor holder;  // keeps the (possibly converted or copied) data alive
  const C* data = nullptr;
  int64_t stride = 0;
};

/// Broadcasts `o` to t's shape and converts it to C. Operands sharing t's storage are copied
/// first, so the loop never reads a value it already overwrote.
template <typename C>
inline InplaceOperand<C> prepare_operand(const Tensor& o, const Tensor& t, const char* op) {
  const DType c = dtype_of<C>::value;
  if (broadcast_shapes(t.shape(), o.shape(), op) != t.shape())
    throw std::invalid_argument(std::string(op) + ": an operand of shape " + shape_str(o.shape()) +
                                " cannot be broadcast to the tensor's shape " + shape_str(t.shape()) +
                                " (an in-place op cannot change the tensor's shape)");
  InplaceOperand<C> r;
  if (o.numel() == 1) {
    r.holder = Tensor::empty({}, c);
    Tensor::copy_into(r.holder, o.as_strided({}, {}, o.offset()));
    r.stride = 0;
  } else if (o.shape() == t.shape() && o.is_contiguous() && o.dtype() == c &&
             o.impl().storage != t.impl().storage) {
    r.holder = o;
    r.stride = 1;
  } else {
    r.holder = Tensor::empty(t.shape(), c);
    if (r.holder.numel() > 0)
      Tensor::copy_into(r.holder, o.as_strided(t.shape(), broadcast_strides(o, t.shape()), o.offset()));
    r.stride = 1;
  }
  r.data = static_cast<const C*>(r.holder.raw_data());
  return r;
}

/// Runs t[i] = f(t[i], operand values...) over every element of t, computing in C and storing
/// in T. `make_fn(type_tag<C>)` returns the per-element functor
///     C fn(C x, const std::array<C, K>& v)
/// (scalars captured already converted to C). Undefined operands are passed as 0.
template <std::size_t K, typename MakeFn>
inline Tensor apply_inplace(const Tensor& t, const char* op, const std::array<Tensor, K>& operands, DType compute,
                            MakeFn make_fn) {
  const int64_t n = t.numel();
  if (n > 0) {
    dispatch_all(t.dtype(), [&](auto ttag) {
      using T = typename decltype(ttag)::type;
      if constexpr (!std::is_same<T, bool>::value) {
        auto run = [&](auto ctag) {
          using C = typename decltype(ctag)::type;
          std::array<InplaceOperand<C>, K> ops;
          for (std::size_t k = 0; k < K; ++k)
            if (operands[k].defined()) ops[k] = prepare_operand<C>(operands[k], t, op);
          const auto fn = make_fn(ctag);
          Tensor work = t.is_contiguous() ? t : t.contiguous_data();  // a copy, written back below
          T* out = static_cast<T*>(work.raw_data());
          parallel_for(0, n, kElementwiseGrain, [&](int64_t lo, int64_t hi) {
            std::array<C, K> v{};
            for (int64_t i = lo; i < hi; ++i) {
              for (std::size_t k = 0; k < K; ++k)
                if (ops[k].data) v[k] = ops[k].data[i * ops[k].stride];
              out[i] = static_cast<T>(fn(static_cast<C>(out[i]), v));
            }
          });
          if (!t.is_contiguous()) Tensor::copy_into(t, work);
        };
        if (compute == t.dtype())
          run(type_tag<T>{});
        else
          run(type_tag<double>{});  // only float32 t with a float64 operand computes in another type
      }
    });
  }
  t.bump_version();
  return t;
}

template <std::size_t K>
inline DType prepare_inplace(const Tensor& t, const char* op, const std::array<Tensor, K>& operands,
                             bool true_division = false) {
  check_inplace(t, op, operands);
  return inplace_compute_dtype(t, op, operands, true_division);
}

inline void require_float(DType compute, const char* op) {
  if (!is_floating(compute))
    throw std::domain_error(std::string(op) + ": expected float32 or float64 tensors, got " + dtype_name(compute));
}

}  // namespace detail

/// t += alpha * other (other broadcast to t's shape).
inline Tensor add_(const Tensor& t, const Tensor& other, double alpha = 1.0) {
  const std::array<Tensor, 1> ops{other};
  const DType c = detail::prepare_inplace(t, "add_", ops);
  detail::check_integral_scalar(alpha, c, "add_", "alpha");
  return detail::apply_inplace(t, "add_", ops, c, [&](auto tag) {
    using C = typename decltype(tag)::type;
    const C a = static_cast<C>(alpha);
    return [a](C x, const std::array<C, 1>& v) { return wrapping_add(x, wrapping_mul(a, v[0])); };
  });
}
/// t += value.
inline Tensor add_(const Tensor& t, double value) { return add_(t, detail::scalar_operand(value, t)); }

/// t -= alpha * other.
inline Tensor sub_(const Tensor& t, const Tensor& other, double alpha = 1.0) {
  const std::array<Tensor, 1> ops{other};
  const DType c = detail::prepare_inplace(t, "sub_", ops);
  detail::check_integral_scalar(alpha, c, "sub_", "alpha");
  return detail::apply_inplace(t, "sub_", ops, c, [&](auto tag) {
    using C = typename decltype(tag)::type;
    const C a = static_cast<C>(alpha);
    return [a](C x, const std::array<C, 1>& v) { return wrapping_sub(x, wrapping_mul(a, v[0])); };
  });
}
/// t -= value.
inline Tensor sub_(const Tensor& t, double value) { return sub_(t, detail::scalar_operand(value, t)); }

/// t *= other.
inline Tensor mul_(const Tensor& t, const Tensor& other) {
  const std::array<Tensor, 1> ops{other};
  const DType c = detail::prepare_inplace(t, "mul_", ops);
  return detail::apply_inplace(t, "mul_", ops, c, [](auto tag) {
    using C = typename decltype(tag)::type;
    return [](C x, const std::array<C, 1>& v) { return wrapping_mul(x, v[0]); };
  });
}
/// t *= value.
inline Tensor mul_(const Tensor& t, double value) { return mul_(t, detail::scalar_operand(value, t)); }

/// t /= other (true division: int64 tensors are refused, as the result is a float).
inline Tensor div_(const Tensor& t, const Tensor& other) {
  const std::array<Tensor, 1> ops{other};
  const DType c = detail::prepare_inplace(t, "div_", ops, /*true_division=*/true);
  return detail::apply_inplace(t, "div_", ops, c, [](auto tag) {
    using C = typename decltype(tag)::type;
    return [](C x, const std::array<C, 1>& v) { return static_cast<C>(x / v[0]); };
  });
}
/// t /= value.
inline Tensor div_(const Tensor& t, double value) { return div_(t, detail::scalar_operand(value, t)); }

/// t += value * a * b (evaluated as (value * a) * b, PyTorch's order).
inline Tensor addcmul_(const Tensor& t, const Tensor& a, const Tensor& b, double value = 1.0) {
  const std::array<Tensor, 2> ops{a, b};
  const DType c = detail::prepare_inplace(t, "addcmul_", ops);
  detail::check_integral_scalar(value, c, "addcmul_", "value");
  return detail::apply_inplace(t, "addcmul_", ops, c, [&](auto tag) {
    using C = typename decltype(tag)::type;
    const C s = static_cast<C>(value);
    return [s](C x, const std::array<C, 2>& v) { return wrapping_add(x, wrapping_mul(wrapping_mul(s, v[0]), v[1])); };
  });
}

/// t += value * a / b (float tensors only, as PyTorch).
inline Tensor addcdiv_(const Tensor& t, const Tensor& a, const Tensor& b, double value = 1.0) {
  const std::array<Tensor, 2> ops{a, b};
  const DType c = detail::prepare_inplace(t, "addcdiv_", ops);
  detail::require_float(c, "addcdiv_");
  return detail::apply_inplace(t, "addcdiv_", ops, c, [&](auto tag) {
    using C = typename decltype(tag)::type;
    const C s = static_cast<C>(value);
    return [s](C x, const std::array<C, 2>& v) { return static_cast<C>(x + s * (v[0] / v[1])); };
  });
}

namespace detail {
/// PyTorch's lerp: x + w * (e - x) for |w| < 0.5, else e - (e - x) * (1 - w) (exact at w = 1).
template <typename C>
inline C lerp_value(C x, C e, C w) {
  return std::abs(w) < C(0.5) ? static_cast<C>(x + w * (e - x)) : static_cast<C>(e - (e - x) * (C(1) - w));
}
}  // namespace detail

/// t = t + weight * (end - t) (float tensors only).
inline Tensor lerp_(const Tensor& t, const Tensor& end, double weight) {
  const std::array<Tensor, 1> ops{end};
  const DType c = detail::prepare_inplace(t, "lerp_", ops);
  detail::require_float(c, "lerp_");
  return detail::apply_inplace(t, "lerp_", ops, c, [&](auto tag) {
    using C = typename decltype(tag)::type;
    const C w = static_cast<C>(weight);
    return [w](C x, const std::array<C, 1>& v) { return detail::lerp_value<C>(x, v[0], w); };
  });
}
/// t = t + weight * (end - t) with an elementwise weight tensor.
inline Tensor lerp_(const Tensor& t, const Tensor& end, const Tensor& weight) {
  const std::array<Tensor, 2> ops{end, weight};
  const DType c = detail::prepare_inplace(t, "lerp_", ops);
  detail::require_float(c, "lerp_");
  return detail::apply_inplace(t, "lerp_", ops, c, [](auto tag) {
    using C = typename decltype(tag)::type;
    return [](C x, const std::array<C, 2>& v) { return detail::lerp_value<C>(x, v[0], v[1]); };
  });
}

/// Clamps t to [lo, hi] elementwise; an undefined bound is no bound (at least one is needed).
/// As PyTorch: min(max(x, lo), hi), so lo > hi gives hi; NaN elements stay NaN.
inline Tensor clamp_(const Tensor& t, const Tensor& lo, const Tensor& hi) {
  if (!lo.defined() && !hi.defined())
    throw std::invalid_argument("clamp_: at least one of the bounds (min, max) must be given");
  const std::array<Tensor, 2> ops{lo, hi};
  const DType c = detail::prepare_inplace(t, "clamp_", ops);
  const bool has_lo = lo.defined(), has_hi = hi.defined();
  return detail::apply_inplace(t, "clamp_", ops, c, [&](auto tag) {
    using C = typename decltype(tag)::type;
    return [has_lo, has_hi](C x, const std::array<C, 2>& v) {
      if (has_lo && x < v[0]) x = v[0];
      if (has_hi && x > v[1]) x = v[1];
      return x;
    };
  });
}
/// Clamps t to [lo, hi]; a NaN bound is no bound.
inline Tensor clamp_(const Tensor& t, double lo, double hi) {
  return clamp_(t, std::isnan(lo) ? Tensor() : detail::scalar_operand(lo, t),
                std::isnan(hi) ? Tensor() : detail::scalar_operand(hi, t));
}

/// Sets every element to `value` (converted to t's dtype, any dtype).
inline Tensor fill_(const Tensor& t, double value) {
  detail::check_inplace<0>(t, "fill_", {});
  Tensor target = t;
  target.fill(value);
  t.bump_version();
  return t;
}
/// Sets every element to the value of a one-element tensor.
inline Tensor fill_(const Tensor& t, const Tensor& value) {
  if (value.dim() != 0 && value.numel() != 1)
    throw std::invalid_argument("fill_: the value must be a 0-d tensor, got shape " + shape_str(value.shape()));
  detail::check_inplace<1>(t, "fill_", {value});
  const double v = value.item_at(0);
  Tensor target = t;
  target.fill(v);
  t.bump_version();
  return t;
}
/// Sets every element to zero.
inline Tensor zero_(const Tensor& t) { return fill_(t, 0.0); }

}  // namespace nablagrad
