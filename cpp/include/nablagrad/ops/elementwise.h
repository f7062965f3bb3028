// nablagrad/ops/elementwise.h - broadcasting elementwise ops (forward + backward together).
// Included by tensor_operations.h; see that header for the conventions.
#pragma once

#include <cmath>

#include "../autograd.h"
#include "../kernels/vmath.h"
#include "../threading.h"
#include "reduction.h"

namespace nablagrad {

/// Copy converted to another dtype (raw: no graph). Returns `t` itself if the dtype matches.
inline Tensor cast_raw(const Tensor& t, DType dtype) {
  if (t.dtype() == dtype) return t;
  Tensor out = Tensor::empty(t.shape(), dtype);
  Tensor::copy_into(out, t);
  return out;
}

namespace detail {

constexpr int64_t kElementwiseGrain = 1 << 15;

/// Strides of `t` broadcast to `out_shape` (0 along broadcast dimensions).
inline Shape broadcast_strides(const Tensor& t, const Shape& out_shape) {
  const std::size_t n = out_shape.size(), k = t.shape().size();
  Shape st(n, 0);
  for (std::size_t i = 0; i < k; ++i)
    if (t.shape()[i] != 1) st[n - k + i] = t.strides()[i];
  return st;
}

/// out = f(a, b) with broadcasting. a and b are of type A, B; out is a fresh contiguous R tensor.
template <typename A, typename B, typename R, typename F>
inline Tensor binary_map(const Tensor& a, const Tensor& b, const Shape& out_shape, DType out_dtype, F f) {
  Tensor out = Tensor::empty(out_shape, out_dtype);
  const int64_t n = out.numel();
  if (n == 0) return out;
  R* o = static_cast<R*>(out.raw_data());
  const A* pa = static_cast<const A*>(a.raw_data());
  const B* pb = static_cast<const B*>(b.raw_data());
  const bool a_full = a.shape() == out_shape && a.is_contiguous();
  const bool b_full = b.shape() == out_shape && b.is_contiguous();
  if (a_full && b_full) {
    parallel_for(0, n, kElementwiseGrain, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) o[i] = f(pa[i], pb[i]);
    });
  } else if (a_full && b.numel() == 1) {
    const B s = pb[0];
    parallel_for(0, n, kElementwiseGrain, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) o[i] = f(pa[i], s);
    });
  } else if (b_full && a.numel() == 1) {
    const A s = pa[0];
    parallel_for(0, n, kElementwiseGrain, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) o[i] = f(s, pb[i]);
    });
  } else {
    const Shape sa = broadcast_strides(a, out_shape), sb = broadcast_strides(b, out_shape);
    int64_t i = 0;
    Tensor::for_each_offset2(out_shape, sa, sb, [&](int64_t oa, int64_t ob) { o[i++] = f(pa[oa], pb[ob]); });
  }
  return out;
}

/// out = f(x) elementwise, same shape, output dtype R.
template <typename T, typename R, typename F>
inline Tensor unary_map(const Tensor& x, DType out_dtype, F f) {
  Tensor out = Tensor::empty(x.shape(), out_dtype);
  const int64_t n = out.numel();
  R* o = static_cast<R*>(out.raw_data());
  const T* px = static_cast<const T*>(x.raw_data());
  if (x.is_contiguous()) {
    parallel_for(0, n, kElementwiseGrain, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) o[i] = f(px[i]);
    });
  } else {
    int64_t i = 0;
    Tensor::for_each_offset(x.shape(), x.strides(), [&](int64_t off) { o[i++] = f(px[off]); });
  }
  return out;
}

/// Elementwise combination of three same-shape contiguous tensors (backward helpers).
template <typename T, typename F>
inline Tensor ternary_map_same(const Tensor& a, const Tensor& b, const Tensor& c, F f) {
  Tensor ac = a.contiguous_data(), bc = b.contiguous_data(), cc = c.contiguous_data();
  Tensor out = Tensor::empty(a.shape(), a.dtype());
  const T* pa = ac.data<T>();
  const T* pb = bc.data<T>();
  const T* pc = cc.data<T>();
  T* o = out.data<T>();
  parallel_for(0, out.numel(), kElementwiseGrain, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) o[i] = f(pa[i], pb[i], pc[i]);
  });
  return out;
}

template <typename T, typename F>
inline Tensor binary_map_same(const Tensor& a, const Tensor& b, F f) {
  return binary_map<T, T, T>(a, b, a.shape(), a.dtype(), f);
}

enum class BinaryOp { Add, Sub, Mul, Div, Pow };

inline const char* binary_op_name(BinaryOp op) {
  switch (op) {
    case BinaryOp::Add: return "add";
    case BinaryOp::Sub: return "sub";
    case BinaryOp::Mul: return "mul";
    case BinaryOp::Div: return "div";
    case BinaryOp::Pow: return "pow";
  }
  return "?";
}

template <typename T>
inline Tensor arith_forward(BinaryOp op, const Tensor& a, const Tensor& b, const Shape& shape, DType dt) {
  switch (op) {
    case BinaryOp::Add: return binary_map<T, T, T>(a, b, shape, dt, [](T x, T y) { return wrapping_add(x, y); });
    case BinaryOp::Sub: return binary_map<T, T, T>(a, b, shape, dt, [](T x, T y) { return wrapping_sub(x, y); });
    case BinaryOp::Mul: return binary_map<T, T, T>(a, b, shape, dt, [](T x, T y) { return wrapping_mul(x, y); });
    case BinaryOp::Div: return binary_map<T, T, T>(a, b, shape, dt, [](T x, T y) { return static_cast<T>(x / y); });
    case BinaryOp::Pow:
      return binary_map<T, T, T>(a, b, shape, dt, [](T x, T y) {
        if constexpr (std::is_floating_point<T>::value) {
          return static_cast<T>(std::pow(x, y));
        } else {
          // integer power by squaring; negative exponents give 0 (PyTorch errors on those)
          if (y < 0) return static_cast<T>(x == 1 ? 1 : 0);
          T r = 1, base = x;
          for (T e = y; e > 0; e >>= 1) {
            if (e & 1) r = wrapping_mul(r, base);
            base = wrapping_mul(base, base);
          }
          return r;
        }
      });
  }
  return Tensor();
}

}  // namespace detail

/// a OP b with NumPy broadcasting and PyTorch type promotion. Int64/bool division gives float32.
inline Tensor arith(detail::BinaryOp op, const Tensor& a_in, const Tensor& b_in) {
  using detail::BinaryOp;
  const char* name = detail::binary_op_name(op);
  const Shape shape = broadcast_shapes(a_in.shape(), b_in.shape(), name);
  DType dt = result_type(a_in, b_in);
  if (dt == DType::Bool && (op == BinaryOp::Add || op == BinaryOp::Sub || op == BinaryOp::Pow || op == BinaryOp::Mul))
    dt = DType::Int64;  // bool arithmetic computes in int64 (PyTorch: add/mul give bool; keep it simple and exact)
  if (op == BinaryOp::Div && !is_floating(dt)) dt = DType::Float32;
  const Tensor a = cast_raw(a_in, dt), b = cast_raw(b_in, dt);
  if (op == BinaryOp::Pow && dt == DType::Int64 && b.numel() > 0) {  // NumPy and PyTorch refuse these
    const Tensor bc = b.contiguous_data();
    const int64_t* pb = bc.data<int64_t>();
    for (int64_t i = 0, n = bc.numel(); i < n; ++i)
      if (pb[i] < 0)
        throw std::invalid_argument("pow: integers to negative integer powers are not allowed (exponent " +
                                    std::to_string(pb[i]) + "); use a float tensor");
  }
  Tensor out = dispatch_all(dt, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (std::is_same<T, bool>::value) {
      return Tensor();
    } else {
      return detail::arith_forward<T>(op, a, b, shape, dt);
    }
  });
  if (!any_requires_grad({&a_in, &b_in})) return out;
  // Keep only what the gradients of the inputs that need one will read: an add keeps
  // nothing alive, a mul keeps the other operand, and so on.
  const bool need_a = a_in.requires_grad(), need_b = b_in.requires_grad();
  const bool keep_a = (op == BinaryOp::Mul && need_b) || op == BinaryOp::Pow;
  const bool keep_b = (op == BinaryOp::Mul && need_a) || op == BinaryOp::Div || op == BinaryOp::Pow;
  const bool keep_out = (op == BinaryOp::Div || op == BinaryOp::Pow) && need_b;
  const Tensor sa = keep_a ? a.alias() : Tensor(), sb = keep_b ? b.alias() : Tensor();
  const Tensor so = keep_out ? out.alias() : Tensor();
  const Shape shape_a = a_in.shape(), shape_b = b_in.shape();
  const DType dtype_a = a_in.dtype(), dtype_b = b_in.dtype();
  record(out, name, {a_in, b_in},
         [op, need_a, need_b, sa, sb, so, shape_a, shape_b, dtype_a, dtype_b](const Tensor& g, std::vector<Tensor>& gi) {
    dispatch_float(g.dtype(), "backward", [&](auto tag) {
      using T = typename decltype(tag)::type;
      using detail::binary_map;
      const Shape& s = g.shape();
      auto to_a = [&](const Tensor& full) { return cast_raw(sum_to(full, shape_a), dtype_a); };
      auto to_b = [&](const Tensor& full) { return cast_raw(sum_to(full, shape_b), dtype_b); };
      switch (op) {
        case BinaryOp::Add:
          if (need_a) gi[0] = to_a(g);
          if (need_b) gi[1] = to_b(g);
          break;
        case BinaryOp::Sub:
          if (need_a) gi[0] = to_a(g);
          if (need_b) gi[1] = to_b(binary_map<T, T, T>(g, g, s, g.dtype(), [](T x, T) { return -x; }));
          break;
        case BinaryOp::Mul:
          if (need_a) gi[0] = to_a(binary_map<T, T, T>(g, sb, s, g.dtype(), [](T x, T y) { return x * y; }));
          if (need_b) gi[1] = to_b(binary_map<T, T, T>(g, sa, s, g.dtype(), [](T x, T y) { return x * y; }));
          break;
        case BinaryOp::Div: {
          Tensor ga = binary_map<T, T, T>(g, sb, s, g.dtype(), [](T x, T y) { return x / y; });
          if (need_a) gi[0] = to_a(ga);
          // d(a/b)/db = -a / b^2 = -out / b, so the gradient is -(g / b) * out
          if (need_b) gi[1] = to_b(binary_map<T, T, T>(ga, so, s, g.dtype(), [](T x, T y) { return -x * y; }));
          break;
        }
        case BinaryOp::Pow: {
          if (need_a) {
            // d(a^b)/da = b * a^(b-1)
            Tensor ab = binary_map<T, T, T>(sa, sb, s, g.dtype(), [](T x, T y) {
              return y == T(0) ? T(0) : y * std::pow(x, y - T(1));
            });
            gi[0] = to_a(binary_map<T, T, T>(g, ab, s, g.dtype(), [](T x, T y) { return x * y; }));
          }
          if (need_b) {
            // d(a^b)/db = out * log(a); at a == 0 it is taken as 0 (as PyTorch), not out * log(0)
            Tensor la = binary_map<T, T, T>(so, sa, s, g.dtype(), [](T o, T x) {
              return (o == T(0) || x == T(0)) ? T(0) : o * std::log(x);
            });
            gi[1] = to_b(binary_map<T, T, T>(g, la, s, g.dtype(), [](T x, T y) { return x * y; }));
          }
          break;
        }
      }
    });
  }, {sa, sb, so});
  return out;
}

inline Tensor add(const Tensor& a, const Tensor& b) { return arith(detail::BinaryOp::Add, a, b); }
inline Tensor sub(const Tensor& a, const Tensor& b) { return arith(detail::BinaryOp::Sub, a, b); }
inline Tensor mul(const Tensor& a, const Tensor& b) { return arith(detail::BinaryOp::Mul, a, b); }
inline Tensor div(const Tensor& a, const Tensor& b) { return arith(detail::BinaryOp::Div, a, b); }
inline Tensor pow(const Tensor& a, const Tensor& b) { return arith(detail::BinaryOp::Pow, a, b); }

/// x ** p for a constant exponent (no gradient for p).
inline Tensor pow_scalar(const Tensor& x, double p) {
  return dispatch_float(x.dtype(), "pow", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T e = static_cast<T>(p);
    Tensor out;
    if (p == 2.0)
      out = detail::unary_map<T, T>(x, x.dtype(), [](T v) { return v * v; });
    else
      out = detail::unary_map<T, T>(x, x.dtype(), [e](T v) { return static_cast<T>(std::pow(v, e)); });
    if (any_requires_grad({&x})) {
      const Tensor sx = x.alias();
      record(out, "pow", {x}, [sx, e](const Tensor& g, std::vector<Tensor>& gi) {
        gi[0] = detail::binary_map_same<T>(g, sx, [e](T gv, T v) {
          return e == T(0) ? T(0) : gv * e * static_cast<T>(std::pow(v, e - T(1)));
        });
      }, {sx});
    }
    return out;
  });
}

// ---------------------------------------------------------------------------------------
// Unary float ops. Each: forward map, and the derivative expressed from (x, y=f(x)).
// ---------------------------------------------------------------------------------------
namespace detail {
/// float32 y = op(x) with the vectorised kernels of kernels/vmath.h, by blocks in parallel
/// (elementwise, so the split never changes results).
inline Tensor vmap_f32(const Tensor& x_in, kernels::VOp op) {
  const Tensor x = x_in.contiguous_data();
  Tensor y = Tensor::empty(x.shape(), x.dtype());
  const float* px = x.data<float>();
  float* py = y.data<float>();
  parallel_for(0, y.numel(), kElementwiseGrain, [&](int64_t lo, int64_t hi) { kernels::vmap(op, px + lo, py + lo, hi - lo); });
  return y;
}

/// float32 out = g * op(x) (g and x of the same shape), as vmap_f32.
inline Tensor vmap_mul_f32(const Tensor& g_in, const Tensor& x_in, kernels::VOp op) {
  const Tensor g = g_in.contiguous_data(), x = x_in.contiguous_data();
  Tensor out = Tensor::empty(g.shape(), g.dtype());
  const float* pg = g.data<float>();
  const float* px = x.data<float>();
  float* po = out.data<float>();
  parallel_for(0, out.numel(), kElementwiseGrain,
               [&](int64_t lo, int64_t hi) { kernels::vmap_mul(op, pg + lo, px + lo, po + lo, hi - lo); });
  return out;
}

/// Records y = f(x) with dy/dx = der(x, y). The derivative reads either the input or the
/// output, never both (`der_uses_output`): only that one is saved, and only its in-place
/// modification invalidates the gradient; der gets 0 for the other argument.
/// For float32, `fast_fwd` (and `fast_der`, a derivative in terms of the input, only when
/// !der_uses_output) name vectorised kernels that replace fwd (der); VOp::None keeps fwd (der).
template <typename T, typename Fwd, typename Der>
inline Tensor unary_float_op(const Tensor& x, const char* name, bool der_uses_output, Fwd fwd, Der der,
                             kernels::VOp fast_fwd = kernels::VOp::None, kernels::VOp fast_der = kernels::VOp::None) {
  constexpr bool is_f32 = std::is_same<T, float>::value;
  if (!is_f32) fast_fwd = fast_der = kernels::VOp::None;
  Tensor y = fast_fwd != kernels::VOp::None ? vmap_f32(x, fast_fwd) : unary_map<T, T>(x, x.dtype(), fwd);
  if (any_requires_grad({&x})) {
    const Tensor saved = der_uses_output ? y.alias() : x.alias();
    record(y, name, {x}, [saved, der, der_uses_output, fast_der](const Tensor& g, std::vector<Tensor>& gi) {
      if (der_uses_output)
        gi[0] = binary_map_same<T>(g, saved, [der](T gv, T yv) { return gv * der(T(0), yv); });
      else if (fast_der != kernels::VOp::None)
        gi[0] = vmap_mul_f32(g, saved, fast_der);
      else
        gi[0] = binary_map_same<T>(g, saved, [der](T gv, T xv) { return gv * der(xv, T(0)); });
    }, {saved});
  }
  return y;
}
}  // namespace detail

// DER is written in v (the input) and y (the output) but reads only one of them: the output
// when USES_OUTPUT is true, else the input. FAST: the float32 vectorised forward (VOp::None: FWD).
#define NABLAGRAD_UNARY_FLOAT_OP(NAME, FWD, DER, USES_OUTPUT, FAST)                            \
  inline Tensor NAME(const Tensor& x) {                                                         \
    return dispatch_float(x.dtype(), #NAME, [&](auto tag) {                                     \
      using T = typename decltype(tag)::type;                                                   \
      return detail::unary_float_op<T>(x, #NAME, USES_OUTPUT, [](T v) -> T { return FWD; },     \
                                       [](T v, T y) -> T { (void)v; (void)y; return DER; },     \
                                       kernels::VOp::FAST);                                     \
    });                                                                                         \
  }

NABLAGRAD_UNARY_FLOAT_OP(exp, std::exp(v), y, true, Exp)
NABLAGRAD_UNARY_FLOAT_OP(log, std::log(v), T(1) / v, false, None)
NABLAGRAD_UNARY_FLOAT_OP(sqrt, std::sqrt(v), T(0.5) / y, true, None)
NABLAGRAD_UNARY_FLOAT_OP(tanh, std::tanh(v), T(1) - y * y, true, Tanh)
NABLAGRAD_UNARY_FLOAT_OP(sigmoid, v >= T(0) ? T(1) / (T(1) + std::exp(-v)) : std::exp(v) / (T(1) + std::exp(v)),
                         y * (T(1) - y), true, Sigmoid)
#undef NABLAGRAD_UNARY_FLOAT_OP

/// relu: NaN stays NaN. The gradient is PyTorch's threshold_backward, a select rather than a
/// product (dy where x > 0 or x is NaN, else 0, so an infinite dy does not become NaN), written
/// branch-free so that it vectorises: the backward of every conv and linear layer's relu runs it.
inline Tensor relu(const Tensor& x) {
  return dispatch_float(x.dtype(), "relu", [&](auto tag) {
    using T = typename decltype(tag)::type;
    Tensor y = detail::unary_map<T, T>(x, x.dtype(), [](T v) { return ((v > T(0)) | (v != v)) ? v : T(0); });
    if (any_requires_grad({&x})) {
      const Tensor saved = x.alias();
      record(y, "relu", {x}, [saved](const Tensor& g, std::vector<Tensor>& gi) {
        gi[0] = detail::binary_map_same<T>(g.contiguous_data(), saved.contiguous_data(),
                                           [](T gv, T xv) { return xv <= T(0) ? T(0) : gv; });
      }, {saved});
    }
    return y;
  });
}

inline Tensor leaky_relu(const Tensor& x, double slope = 0.01) {
  return dispatch_float(x.dtype(), "leaky_relu", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T s = static_cast<T>(slope);
    return detail::unary_float_op<T>(x, "leaky_relu", false, [s](T v) { return v > T(0) ? v : s * v; },
                                     [s](T v, T) { return v > T(0) ? T(1) : s; });
  });
}

/// GELU: exact x * Phi(x) (approximate=false) or the tanh approximation.
inline Tensor gelu(const Tensor& x, bool tanh_approximation = false) {
  return dispatch_float(x.dtype(), "gelu", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T inv_sqrt2 = T(0.70710678118654752440), inv_sqrt2pi = T(0.39894228040143267794);
    const T k = T(0.79788456080286535588), c = T(0.044715);  // sqrt(2/pi)
    if (!tanh_approximation)
      return detail::unary_float_op<T>(
          x, "gelu", false, [=](T v) { return T(0.5) * v * (T(1) + std::erf(v * inv_sqrt2)); },
          [=](T v, T) { return T(0.5) * (T(1) + std::erf(v * inv_sqrt2)) + v * inv_sqrt2pi * std::exp(T(-0.5) * v * v); },
          kernels::VOp::Gelu, kernels::VOp::GeluDer);
    return detail::unary_float_op<T>(
        x, "gelu", false, [=](T v) { return T(0.5) * v * (T(1) + std::tanh(k * (v + c * v * v * v))); },
        [=](T v, T) {
          const T t = std::tanh(k * (v + c * v * v * v));
          return T(0.5) * (T(1) + t) + T(0.5) * v * (T(1) - t * t) * k * (T(1) + T(3) * c * v * v);
        },
        kernels::VOp::GeluTanh, kernels::VOp::GeluTanhDer);
  });
}

/// |x|; the gradient at 0 is 0 (as PyTorch). Works on int64 too (no gradient there).
inline Tensor abs(const Tensor& x) {
  if (!is_floating(x.dtype())) {
    if (x.dtype() == DType::Bool) return x.contiguous_data();
    return detail::unary_map<int64_t, int64_t>(x, x.dtype(), [](int64_t v) { return v < 0 ? wrapping_neg(v) : v; });  // |int64 min| wraps, as NumPy
  }
  return dispatch_float(x.dtype(), "abs", [&](auto tag) {
    using T = typename decltype(tag)::type;
    return detail::unary_float_op<T>(x, "abs", false, [](T v) { return std::fabs(v); },
                                     [](T v, T) { return v > T(0) ? T(1) : (v < T(0) ? T(-1) : T(0)); });
  });
}

/// -x (any dtype but bool).
inline Tensor neg(const Tensor& x) {
  if (x.dtype() == DType::Bool) throw std::domain_error("neg: negation is not supported for bool tensors");
  if (x.dtype() == DType::Int64)
    return detail::unary_map<int64_t, int64_t>(x, x.dtype(), [](int64_t v) { return wrapping_neg(v); });
  return dispatch_float(x.dtype(), "neg", [&](auto tag) {
    using T = typename decltype(tag)::type;
    Tensor y = detail::unary_map<T, T>(x, x.dtype(), [](T v) { return -v; });
    if (any_requires_grad({&x}))
      record(y, "neg", {x}, [](const Tensor& g, std::vector<Tensor>& gi) {
        gi[0] = detail::unary_map<T, T>(g, g.dtype(), [](T v) { return -v; });
      });
    return y;
  });
}

/// Clamps to [lo, hi]; NaN bounds mean "no bound". Gradient 1 strictly inside, else 0... at the
/// bounds themselves PyTorch passes the gradient (lo <= x <= hi); we do the same.
inline Tensor clip(const Tensor& x, double lo, double hi) {
  return dispatch_float(x.dtype(), "clip", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const bool has_lo = !std::isnan(lo), has_hi = !std::isnan(hi);
    const T l = static_cast<T>(lo), h = static_cast<T>(hi);
    return detail::unary_float_op<T>(
        x, "clip", false,
        [=](T v) {
          if (std::isnan(v)) return v;
          if (has_lo && v < l) v = l;
          if (has_hi && v > h) v = h;
          return v;
        },
        [=](T v, T) { return ((!has_lo || v >= l) && (!has_hi || v <= h)) ? T(1) : T(0); });
  });
}

/// Converts to another dtype; differentiable between float dtypes.
inline Tensor astype(const Tensor& x, DType dtype) {
  Tensor out = Tensor::empty(x.shape(), dtype);
  Tensor::copy_into(out, x);
  if (is_floating(dtype) && is_floating(x.dtype()) && any_requires_grad({&x})) {
    const DType src = x.dtype();
    record(out, "astype", {x}, [src](const Tensor& g, std::vector<Tensor>& gi) { gi[0] = cast_raw(g, src); });
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// Comparisons (bool results, not differentiable) and where.
// ---------------------------------------------------------------------------------------
enum class CompareOp { Lt, Le, Gt, Ge, Eq, Ne };

inline Tensor compare(CompareOp op, const Tensor& a_in, const Tensor& b_in) {
  const Shape shape = broadcast_shapes(a_in.shape(), b_in.shape(), "compare");
  const DType dt = result_type(a_in, b_in);
  const Tensor a = cast_raw(a_in, dt), b = cast_raw(b_in, dt);
  return dispatch_all(dt, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using detail::binary_map;
    switch (op) {
      case CompareOp::Lt: return binary_map<T, T, bool>(a, b, shape, DType::Bool, [](T x, T y) { return x < y; });
      case CompareOp::Le: return binary_map<T, T, bool>(a, b, shape, DType::Bool, [](T x, T y) { return x <= y; });
      case CompareOp::Gt: return binary_map<T, T, bool>(a, b, shape, DType::Bool, [](T x, T y) { return x > y; });
      case CompareOp::Ge: return binary_map<T, T, bool>(a, b, shape, DType::Bool, [](T x, T y) { return x >= y; });
      case CompareOp::Eq: return binary_map<T, T, bool>(a, b, shape, DType::Bool, [](T x, T y) { return x == y; });
      case CompareOp::Ne: break;
    }
    return binary_map<T, T, bool>(a, b, shape, DType::Bool, [](T x, T y) { return x != y; });
  });
}

/// cond ? a : b with broadcasting of all three; differentiable in a and b.
inline Tensor where(const Tensor& cond_in, const Tensor& a_in, const Tensor& b_in) {
  const Shape shape = broadcast_shapes(broadcast_shapes(cond_in.shape(), a_in.shape(), "where"), b_in.shape(), "where");
  const DType dt = result_type(a_in, b_in);
  const Tensor a = cast_raw(a_in, dt), b = cast_raw(b_in, dt);
  const Tensor cond = cast_raw(cond_in, DType::Bool);
  // Select via a broadcast walk over all three operands.
  Tensor out = Tensor::empty(shape, dt);
  const Shape sc = detail::broadcast_strides(cond, shape), sa = detail::broadcast_strides(a, shape),
              sb = detail::broadcast_strides(b, shape);
  const bool* pc = static_cast<const bool*>(cond.raw_data());
  dispatch_all(dt, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* pa = static_cast<const T*>(a.raw_data());
    const T* pb = static_cast<const T*>(b.raw_data());
    T* o = static_cast<T*>(out.raw_data());
    // walk cond+a jointly, b with a second counter
    int64_t i = 0;
    Shape sab(shape.size());
    Tensor::for_each_offset2(shape, sc, sa, [&](int64_t oc, int64_t oa) { o[i++] = pc[oc] ? pa[oa] : T(0); });
    i = 0;
    Tensor::for_each_offset2(shape, sc, sb, [&](int64_t oc, int64_t ob) {
      if (!pc[oc]) o[i] = pb[ob];
      ++i;
    });
  });
  if (any_requires_grad({&a_in, &b_in})) {
    const Tensor sc_mask = cond.alias();
    const bool need_a = a_in.requires_grad(), need_b = b_in.requires_grad();
    const Shape shape_a = a_in.shape(), shape_b = b_in.shape();
    const DType dtype_a = a_in.dtype(), dtype_b = b_in.dtype();
    record(out, "where", {a_in, b_in},
           [sc_mask, need_a, need_b, shape_a, shape_b, dtype_a, dtype_b](const Tensor& g, std::vector<Tensor>& gi) {
      dispatch_float(g.dtype(), "where", [&](auto tag) {
        using T = typename decltype(tag)::type;
        using detail::binary_map;
        const Shape& s = g.shape();
        if (need_a)
          gi[0] = cast_raw(sum_to(binary_map<T, bool, T>(g, sc_mask, s, g.dtype(), [](T v, bool c) { return c ? v : T(0); }),
                                  shape_a), dtype_a);
        if (need_b)
          gi[1] = cast_raw(sum_to(binary_map<T, bool, T>(g, sc_mask, s, g.dtype(), [](T v, bool c) { return c ? T(0) : v; }),
                                  shape_b), dtype_b);
      });
    }, {sc_mask});
  }
  return out;
}

}  // namespace nablagrad
