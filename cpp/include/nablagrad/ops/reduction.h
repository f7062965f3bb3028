// nablagrad/ops/reduction.h - sum / mean / max / min over any set of axes (+ backward).
//
// Kernel layout: the reduced axes are moved last (a view), the data made contiguous when it
// is not already, and each output element sums one contiguous block. Reducing a leading
// prefix of axes (bias gradients: sum over the batch) takes a vectorisable column path.
// Sums accumulate in double; the order of accumulation depends only on the shape.
#pragma once

#include <cmath>
#include <limits>

#include "../autograd.h"
#include "../threading.h"

namespace nablagrad {

/// Sorted, unique, normalised axes; an empty list means "all axes".
inline std::vector<int64_t> normalize_axes(const std::vector<int64_t>& axes, int64_t ndim, const char* op) {
  std::vector<int64_t> out;
  if (axes.empty()) {
    for (int64_t i = 0; i < ndim; ++i) out.push_back(i);
    return out;
  }
  for (int64_t a : axes) out.push_back(normalize_axis(a, ndim, op));
  std::sort(out.begin(), out.end());
  if (std::adjacent_find(out.begin(), out.end()) != out.end())
    throw std::invalid_argument(std::string(op) + ": repeated axis in the axes list");
  return out;
}

namespace detail {

enum class ReduceKind { Sum, Max, Min };

inline Shape reduced_shape(const Shape& shape, const std::vector<int64_t>& axes, bool keepdims) {
  Shape out;
  std::size_t k = 0;
  for (int64_t i = 0; i < static_cast<int64_t>(shape.size()); ++i) {
    if (k < axes.size() && axes[k] == i) {
      ++k;
      if (keepdims) out.push_back(1);
    } else {
      out.push_back(shape[i]);
    }
  }
  return out;
}

/// Raw reduction (no graph). `axes` normalised and sorted. Output has `keepdims` shape.
inline Tensor reduce_raw(const Tensor& x, const std::vector<int64_t>& axes, bool keepdims, ReduceKind kind) {
  const Shape& shape = x.shape();
  const int64_t nd = x.dim();
  const Shape out_shape = reduced_shape(shape, axes, keepdims);
  Tensor out = Tensor::empty(out_shape, x.dtype());
  int64_t inner = 1;  // product of reduced dims
  for (int64_t a : axes) inner *= shape[a];
  const int64_t outer = out.numel();
  if (kind != ReduceKind::Sum && inner == 0)
    throw std::invalid_argument(std::string(kind == ReduceKind::Max ? "max" : "min") +
                                ": cannot reduce over a zero-size dimension of a tensor of shape " + shape_str(shape));
  // Is it a leading prefix of axes on a contiguous tensor?
  bool prefix = x.is_contiguous() && !axes.empty() && axes.back() == static_cast<int64_t>(axes.size()) - 1;
  dispatch_all(x.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    using Acc = typename std::conditional<std::is_floating_point<T>::value, double, int64_t>::type;
    T* o = static_cast<T*>(out.raw_data());
    if (prefix && outer > 1) {
      const T* px = static_cast<const T*>(x.raw_data());
      parallel_for(0, outer, 256, [&](int64_t lo, int64_t hi) {
        std::vector<Acc> acc(static_cast<std::size_t>(hi - lo));
        for (int64_t j = lo; j < hi; ++j) acc[j - lo] = inner ? static_cast<Acc>(px[j]) : Acc(0);
        for (int64_t i = 1; i < inner; ++i) {
          const T* row = px + i * outer;
          for (int64_t j = lo; j < hi; ++j) {
            const Acc v = static_cast<Acc>(row[j]);
            Acc& a = acc[j - lo];
            if (kind == ReduceKind::Sum) a = wrapping_add(a, v);
            else if (kind == ReduceKind::Max) a = (v > a || v != v) ? (a != a ? a : v) : a;
            else a = (v < a || v != v) ? (a != a ? a : v) : a;
          }
        }
        for (int64_t j = lo; j < hi; ++j) o[j] = static_cast<T>(acc[j - lo]);
      });
      return;
    }
    // Move reduced axes last, make contiguous, reduce blocks of `inner`.
    Shape perm_shape, perm_strides;
    std::size_t k = 0;
    for (int64_t i = 0; i < nd; ++i) {
      if (k < axes.size() && axes[k] == i) { ++k; continue; }
      perm_shape.push_back(shape[i]);
      perm_strides.push_back(x.strides()[i]);
    }
    for (int64_t a : axes) {
      perm_shape.push_back(shape[a]);
      perm_strides.push_back(x.strides()[a]);
    }
    const Tensor xc = x.as_strided(perm_shape, perm_strides, x.offset()).contiguous_data();
    const T* px = static_cast<const T*>(xc.raw_data());
    parallel_for(0, outer, std::max<int64_t>(1, (1 << 14) / std::max<int64_t>(inner, 1)), [&](int64_t lo, int64_t hi) {
      for (int64_t j = lo; j < hi; ++j) {
        const T* blk = px + j * inner;
        if (kind == ReduceKind::Sum) {
          Acc a0 = 0, a1 = 0, a2 = 0, a3 = 0;
          int64_t i = 0;
          for (; i + 4 <= inner; i += 4) {
            a0 = wrapping_add(a0, static_cast<Acc>(blk[i]));  // (int64 sums wrap, as NumPy)
            a1 = wrapping_add(a1, static_cast<Acc>(blk[i + 1]));
            a2 = wrapping_add(a2, static_cast<Acc>(blk[i + 2]));
            a3 = wrapping_add(a3, static_cast<Acc>(blk[i + 3]));
          }
          for (; i < inner; ++i) a0 = wrapping_add(a0, static_cast<Acc>(blk[i]));
          o[j] = static_cast<T>(wrapping_add(wrapping_add(a0, a1), wrapping_add(a2, a3)));
        } else {
          T a = blk[0];
          for (int64_t i = 1; i < inner; ++i) {
            const T v = blk[i];
            if (a != a) break;  // NaN propagates
            if (v != v || (kind == ReduceKind::Max ? v > a : v < a)) a = v;
          }
          o[j] = a;
        }
      }
    });
  });
  return out;
}

/// Shape with 1s re-inserted at the reduced axes (for broadcasting a reduced result back).
inline Shape keepdim_shape(const Shape& shape, const std::vector<int64_t>& axes) {
  return reduced_shape(shape, axes, true);
}

/// Broadcasts `t` (which has the keepdims shape, maybe without the 1s) to `shape`, contiguous.
inline Tensor expand_raw(const Tensor& t, const Shape& keep_shape, const Shape& shape) {
  const Tensor v = t.as_strided(keep_shape, contiguous_strides(keep_shape), t.offset());
  Shape st(shape.size(), 0);
  const Shape cs = contiguous_strides(keep_shape);
  for (std::size_t i = 0; i < shape.size(); ++i) st[i] = keep_shape[i] == 1 ? 0 : cs[i];
  Tensor out = Tensor::empty(shape, t.dtype());
  Tensor::copy_into(out, v.as_strided(shape, st, v.offset()));
  return out;
}

}  // namespace detail

/// Sums a broadcast gradient back to `shape` (the inverse of broadcasting `shape` to g's shape).
inline Tensor sum_to(const Tensor& g, const Shape& shape) {
  if (g.shape() == shape) return g;
  const int64_t lead = g.dim() - static_cast<int64_t>(shape.size());
  std::vector<int64_t> axes;
  for (int64_t i = 0; i < g.dim(); ++i)
    if (i < lead || (shape[i - lead] == 1 && g.shape()[i] != 1)) axes.push_back(i);
  if (axes.empty()) return g.contiguous_data().as_strided(shape, contiguous_strides(shape), 0);
  Tensor r = detail::reduce_raw(g.contiguous_data(), axes, false, detail::ReduceKind::Sum);
  return r.as_strided(shape, contiguous_strides(shape), r.offset());
}

/// Sum over `axes` (empty: all). Float results keep the dtype; bool sums to int64.
inline Tensor sum(const Tensor& x_in, const std::vector<int64_t>& axes_in = {}, bool keepdims = false) {
  const Tensor x = x_in.dtype() == DType::Bool ? [&] {
    Tensor t = Tensor::empty(x_in.shape(), DType::Int64);
    Tensor::copy_into(t, x_in);
    return t;
  }() : x_in;
  const std::vector<int64_t> axes = normalize_axes(axes_in, x.dim(), "sum");
  Tensor out = detail::reduce_raw(x, axes, keepdims, detail::ReduceKind::Sum);
  if (any_requires_grad({&x_in})) {
    const Shape in_shape = x.shape(), keep = detail::keepdim_shape(x.shape(), axes);
    record(out, "sum", {x_in}, [in_shape, keep](const Tensor& g, std::vector<Tensor>& gi) {
      gi[0] = detail::expand_raw(g.contiguous_data(), keep, in_shape);
    });
  }
  return out;
}

/// Mean over `axes`; float dtypes only.
inline Tensor mean(const Tensor& x, const std::vector<int64_t>& axes_in = {}, bool keepdims = false) {
  return dispatch_float(x.dtype(), "mean", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const std::vector<int64_t> axes = normalize_axes(axes_in, x.dim(), "mean");
    int64_t count = 1;
    for (int64_t a : axes) count *= x.shape()[a];
    Tensor out = detail::reduce_raw(x, axes, keepdims, detail::ReduceKind::Sum);
    const T inv = count == 0 ? std::numeric_limits<T>::quiet_NaN() : T(1) / static_cast<T>(count);
    T* o = out.data<T>();
    for (int64_t i = 0, n = out.numel(); i < n; ++i) o[i] = count == 0 ? inv : static_cast<T>(o[i] * inv);
    if (any_requires_grad({&x})) {
      const Shape in_shape = x.shape(), keep = detail::keepdim_shape(x.shape(), axes);
      record(out, "mean", {x}, [in_shape, keep, inv](const Tensor& g, std::vector<Tensor>& gi) {
        Tensor e = detail::expand_raw(g.contiguous_data(), keep, in_shape);
        T* p = e.data<T>();
        for (int64_t i = 0, n = e.numel(); i < n; ++i) p[i] *= inv;
        gi[0] = e;
      });
    }
    return out;
  });
}

namespace detail {
inline Tensor extremum(const Tensor& x, const std::vector<int64_t>& axes_in, bool keepdims, ReduceKind kind) {
  const char* name = kind == ReduceKind::Max ? "max" : "min";
  const std::vector<int64_t> axes = normalize_axes(axes_in, x.dim(), name);
  int64_t reduced = 1;
  for (int64_t a : axes) reduced *= x.shape()[a];
  if (reduced == 0)  // no identity for max/min; an empty result over other axes is fine (NumPy)
    throw std::invalid_argument(std::string(name) + ": cannot reduce over a zero-size dimension of a tensor of shape " +
                                shape_str(x.shape()));
  Tensor out = reduce_raw(x, axes, keepdims, kind);
  if (any_requires_grad({&x})) {
    const Tensor sx = x.alias(), so = out.alias();
    const Shape keep = keepdim_shape(x.shape(), axes);
    const std::vector<int64_t> ax = axes;
    record(out, name, {x}, [sx, so, keep, ax](const Tensor& g, std::vector<Tensor>& gi) {
      dispatch_float(g.dtype(), "max", [&](auto tag) {
        using T = typename decltype(tag)::type;
        // The gradient is shared evenly among the elements equal to the extremum.
        const Tensor m = expand_raw(so.contiguous_data(), keep, sx.shape());
        const Tensor xc = sx.contiguous_data();
        Tensor mask = Tensor::empty(sx.shape(), sx.dtype());
        const T* pm = m.data<T>();
        const T* px = xc.data<T>();
        T* pk = mask.data<T>();
        for (int64_t i = 0, n = mask.numel(); i < n; ++i) pk[i] = (px[i] == pm[i] || (px[i] != px[i] && pm[i] != pm[i])) ? T(1) : T(0);
        Tensor count = reduce_raw(mask, ax, true, ReduceKind::Sum);
        const Tensor ge = expand_raw(g.contiguous_data(), keep, sx.shape());
        const Tensor ce = expand_raw(count, keep, sx.shape());
        const T* pg = ge.data<T>();
        const T* pc = ce.data<T>();
        for (int64_t i = 0, n = mask.numel(); i < n; ++i) pk[i] = pk[i] * pg[i] / pc[i];
        gi[0] = mask;
      });
    }, {sx, so});
  }
  return out;
}
}  // namespace detail

inline Tensor max(const Tensor& x, const std::vector<int64_t>& axes = {}, bool keepdims = false) {
  return detail::extremum(x, axes, keepdims, detail::ReduceKind::Max);
}
inline Tensor min(const Tensor& x, const std::vector<int64_t>& axes = {}, bool keepdims = false) {
  return detail::extremum(x, axes, keepdims, detail::ReduceKind::Min);
}

}  // namespace nablagrad
