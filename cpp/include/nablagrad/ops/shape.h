// nablagrad/ops/shape.h - shape and view ops, indexing, concatenate/stack (+ backward).
// Included by tensor_operations.h; see that header for the conventions.
//
// Views share storage with their input and record a node whose backward puts the
// gradient back in the input's layout:
//   reshape / flatten / squeeze / unsqueeze   view when the strides allow, else a copy
//   transpose / permute                       permuted shape and strides
//   expand / broadcast_to                     stride 0 along broadcast dims; backward = sum_to
//   index (basic: ints, slices, None, ...)    strided view (negative steps: negative strides);
//                                             backward = zeros with g copied into the region
//   index (one int64 array or bool mask)      a copy (gather); backward = scatter-add, so
//                                             repeated indices accumulate
//   concatenate / stack                       a copy; each input gets its slice of g
//
//     using namespace nablagrad;
//     Tensor x = Tensor::zeros({4, 6});
//     Tensor v = index(x, {TensorIndex::slice(std::nullopt, std::nullopt, -2), TensorIndex::integer(1)});
//     // v: shape (2,), x[::-2, 1], strides (-12,), same storage as x
#pragma once

#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "../autograd.h"
#include "reduction.h"

namespace nablagrad {

namespace detail {

inline Shape drop_axis(const Shape& s, int64_t axis) {
  Shape out = s;
  out.erase(out.begin() + axis);
  return out;
}

/// The shape `spec` (with at most one -1) resolved against `numel` elements of `in`.
inline Shape infer_reshape(const Shape& in, const Shape& spec, const char* op) {
  const int64_t numel = shape_numel(in);
  int64_t infer = -1, known = 1;
  for (std::size_t i = 0; i < spec.size(); ++i) {
    if (spec[i] == -1) {
      if (infer >= 0)
        throw std::invalid_argument(std::string(op) + ": only one dimension can be -1, got shape " + shape_str(spec));
      infer = static_cast<int64_t>(i);
    } else if (spec[i] < 0) {
      throw std::invalid_argument(std::string(op) + ": invalid dimension " + std::to_string(spec[i]) + " in shape " +
                                  shape_str(spec));
    } else if (__builtin_mul_overflow(known, spec[i], &known)) {
      throw std::invalid_argument(std::string(op) + ": shape " + shape_str(spec) +
                                  " has too many elements (overflows int64)");
    }
  }
  Shape out = spec;
  if (infer >= 0) {
    if (known == 0 || numel % known != 0)
      throw std::invalid_argument(std::string(op) + ": cannot reshape a tensor of shape " + shape_str(in) + " (" +
                                  std::to_string(numel) + " elements) into shape " + shape_str(spec));
    out[infer] = numel / known;
  } else if (known != numel) {
    throw std::invalid_argument(std::string(op) + ": cannot reshape a tensor of shape " + shape_str(in) + " (" +
                                std::to_string(numel) + " elements) into shape " + shape_str(spec) + " (" +
                                std::to_string(known) + " elements)");
  }
  // A zero-size tensor matches any shape with a 0 in it, but the other sizes must still be
  // countable (NumPy's rule, which every later product of sizes relies on): (0, 2^62, 4) is
  // refused here instead of overflowing in flatten, strides or a reduction.
  shape_numel(out);
  return out;
}

/// Strides that view (old_shape, old_strides) as new_shape without copying, if possible
/// (PyTorch's computeStride). Works with negative strides.
inline bool view_strides(const Shape& old_shape, const Shape& old_strides, const Shape& new_shape, Shape& new_strides) {
  new_strides.assign(new_shape.size(), 0);
  if (shape_numel(old_shape) <= 1 || old_shape.empty()) {
    new_strides = contiguous_strides(new_shape);
    return true;
  }
  int64_t view_d = static_cast<int64_t>(new_shape.size()) - 1;
  int64_t chunk_base_stride = old_strides.back();
  int64_t tensor_numel = 1, view_numel = 1;
  for (int64_t d = static_cast<int64_t>(old_shape.size()) - 1; d >= 0; --d) {
    tensor_numel *= old_shape[d];
    if (d == 0 || (old_shape[d - 1] != 1 && old_strides[d - 1] != tensor_numel * chunk_base_stride)) {
      while (view_d >= 0 && (view_numel < tensor_numel || new_shape[view_d] == 1)) {
        new_strides[view_d] = view_numel * chunk_base_stride;
        view_numel *= new_shape[view_d];
        --view_d;
      }
      if (view_numel != tensor_numel) return false;
      if (d > 0) {
        chunk_base_stride = old_strides[d - 1];
        tensor_numel = 1;
        view_numel = 1;
      }
    }
  }
  return view_d == -1;
}

/// Raw dst += src (same shape, same dtype; any strides). No graph.
inline void add_into(const Tensor& dst, const Tensor& src) {
  dispatch_all(dst.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    T* d = static_cast<T*>(dst.raw_data());
    const T* s = static_cast<const T*>(src.raw_data());
    Tensor::for_each_offset2(dst.shape(), dst.strides(), src.strides(), [&](int64_t od, int64_t os) {
      d[od] = static_cast<T>(d[od] + s[os]);
    });
  });
}

/// A view of `src` broadcast to `shape` (stride 0 along broadcast dims; no checks).
inline Tensor broadcast_view(const Tensor& src, const Shape& shape) {
  Shape st(shape.size(), 0);
  const std::size_t lead = shape.size() - src.shape().size();
  for (std::size_t i = 0; i < src.shape().size(); ++i)
    st[lead + i] = src.shape()[i] == 1 && shape[lead + i] != 1 ? 0 : src.strides()[i];
  return src.as_strided(shape, st, src.offset());
}

}  // namespace detail

// ---------------------------------------------------------------------------------------
// reshape, flatten, squeeze, unsqueeze
// ---------------------------------------------------------------------------------------

/// x viewed (or copied, when the layout does not allow a view) with shape `shape`; one
/// entry may be -1 (inferred). Differentiable.
inline Tensor reshape(const Tensor& x, const Shape& shape_spec) {
  const Shape shape = detail::infer_reshape(x.shape(), shape_spec, "reshape");
  Shape strides;
  Tensor out;
  if (detail::view_strides(x.shape(), x.strides(), shape, strides)) {
    out = x.as_strided(shape, strides, x.offset());
  } else {
    const Tensor c = x.contiguous_data();
    out = c.as_strided(shape, contiguous_strides(shape), c.offset());
  }
  if (any_requires_grad({&x})) {
    const Shape in_shape = x.shape();
    record(out, "reshape", {x}, [in_shape](const Tensor& g, std::vector<Tensor>& gi) {
      const Tensor c = g.contiguous_data();
      gi[0] = c.as_strided(in_shape, contiguous_strides(in_shape), c.offset());
    });
  }
  return out;
}

/// Like reshape, but never copies: a layout that no strides can express as the new shape
/// (e.g. flattening a transposed matrix) raises std::runtime_error, as PyTorch's view does.
inline Tensor view(const Tensor& x, const Shape& shape_spec) {
  const Shape shape = detail::infer_reshape(x.shape(), shape_spec, "view");
  Shape strides;
  if (!detail::view_strides(x.shape(), x.strides(), shape, strides))
    throw std::runtime_error("view: a tensor of shape " + shape_str(x.shape()) + " and strides " +
                             shape_str(x.strides()) + " cannot be viewed as " + shape_str(shape) +
                             " without a copy; use reshape() (or contiguous() first)");
  return reshape(x, shape);  // takes the view branch; records the graph
}

/// Merges dims start..end (inclusive; negative counts from the end) into one. A 0-d
/// tensor becomes shape (1,).
inline Tensor flatten(const Tensor& x, int64_t start = 0, int64_t end = -1) {
  if (x.dim() == 0) {  // axes -1 and 0 name the tensor itself (as PyTorch)
    normalize_axis(start, 1, "flatten");
    normalize_axis(end, 1, "flatten");
    return reshape(x, {1});
  }
  const int64_t s = normalize_axis(start, x.dim(), "flatten"), e = normalize_axis(end, x.dim(), "flatten");
  if (s > e)
    throw std::invalid_argument("flatten: start dimension " + std::to_string(start) + " comes after end dimension " +
                                std::to_string(end) + " for a tensor of shape " + shape_str(x.shape()));
  Shape shape(x.shape().begin(), x.shape().begin() + s);
  const int64_t merged = shape_numel(Shape(x.shape().begin() + s, x.shape().begin() + e + 1));  // checked
  shape.push_back(merged);
  shape.insert(shape.end(), x.shape().begin() + e + 1, x.shape().end());
  return reshape(x, shape);
}

/// Removes the given size-1 axes (empty: every size-1 axis). An axis of another size is a
/// ValueError (as NumPy).
inline Tensor squeeze(const Tensor& x, const std::vector<int64_t>& axes_in = {}) {
  std::vector<bool> drop(x.dim(), false);
  if (axes_in.empty()) {
    for (int64_t i = 0; i < x.dim(); ++i) drop[i] = x.shape()[i] == 1;
  } else {
    for (int64_t a : axes_in) {
      const int64_t ax = normalize_axis(a, x.dim(), "squeeze");
      if (drop[ax]) throw std::invalid_argument("squeeze: repeated axis " + std::to_string(a));
      if (x.shape()[ax] != 1)
        throw std::invalid_argument("squeeze: cannot squeeze axis " + std::to_string(a) + " of size " +
                                    std::to_string(x.shape()[ax]) + " (tensor of shape " + shape_str(x.shape()) + ")");
      drop[ax] = true;
    }
  }
  Shape shape;
  for (int64_t i = 0; i < x.dim(); ++i)
    if (!drop[i]) shape.push_back(x.shape()[i]);
  return reshape(x, shape);
}

/// Inserts a size-1 axis at position `axis` (in [-ndim-1, ndim]).
inline Tensor unsqueeze(const Tensor& x, int64_t axis) {
  const int64_t ax = normalize_axis(axis, x.dim() + 1, "unsqueeze");
  Shape shape = x.shape();
  shape.insert(shape.begin() + ax, 1);
  return reshape(x, shape);
}

// ---------------------------------------------------------------------------------------
// transpose, permute
// ---------------------------------------------------------------------------------------

/// The view with axes reordered: result axis i is input axis dims[i]. Differentiable.
inline Tensor permute(const Tensor& x, const std::vector<int64_t>& dims) {
  const int64_t nd = x.dim();
  if (static_cast<int64_t>(dims.size()) != nd)
    throw std::invalid_argument("permute: got " + std::to_string(dims.size()) + " dims " + shape_str(dims) +
                                " for a tensor of shape " + shape_str(x.shape()));
  std::vector<int64_t> perm(nd), inverse(nd, -1);
  for (int64_t i = 0; i < nd; ++i) perm[i] = normalize_axis(dims[i], nd, "permute");  // range first, as NumPy
  for (int64_t i = 0; i < nd; ++i) {
    if (inverse[perm[i]] >= 0)
      throw std::invalid_argument("permute: dims " + shape_str(dims) + " are not a permutation (repeated axis " +
                                  std::to_string(dims[i]) + ")");
    inverse[perm[i]] = i;
  }
  Shape shape(nd), strides(nd);
  for (int64_t i = 0; i < nd; ++i) {
    shape[i] = x.shape()[perm[i]];
    strides[i] = x.strides()[perm[i]];
  }
  Tensor out = x.as_strided(shape, strides, x.offset());
  if (any_requires_grad({&x})) {
    record(out, "permute", {x}, [inverse](const Tensor& g, std::vector<Tensor>& gi) {
      Shape s(inverse.size()), st(inverse.size());
      for (std::size_t i = 0; i < inverse.size(); ++i) {
        s[i] = g.shape()[inverse[i]];
        st[i] = g.strides()[inverse[i]];
      }
      gi[0] = g.as_strided(s, st, g.offset()).contiguous_data();
    });
  }
  return out;
}

/// Swaps axes a and b (a view). Differentiable.
inline Tensor transpose(const Tensor& x, int64_t a, int64_t b) {
  std::vector<int64_t> dims(x.dim());
  for (int64_t i = 0; i < x.dim(); ++i) dims[i] = i;
  std::swap(dims[normalize_axis(a, x.dim(), "transpose")], dims[normalize_axis(b, x.dim(), "transpose")]);
  return permute(x, dims);
}

// ---------------------------------------------------------------------------------------
// expand / broadcast_to, contiguous
// ---------------------------------------------------------------------------------------

/// x broadcast to `shape` (NumPy rules; -1 keeps the size) as a stride-0 view. The result
/// must not be written to. Backward sums the gradient back over the broadcast dims.
inline Tensor expand(const Tensor& x, const Shape& shape_in) {
  if (shape_in.size() < x.shape().size())
    throw std::invalid_argument("expand: cannot broadcast a tensor of shape " + shape_str(x.shape()) +
                                " to the shape " + shape_str(shape_in) + " with fewer dimensions");
  Shape shape = shape_in;
  const std::size_t lead = shape.size() - x.shape().size();
  for (std::size_t i = 0; i < shape.size(); ++i) {
    const int64_t have = i < lead ? -2 : x.shape()[i - lead];
    if (shape[i] == -1 && have != -2) shape[i] = have;
    if (shape[i] < 0 || (have != -2 && have != 1 && have != shape[i]))
      throw std::invalid_argument("expand: cannot broadcast a tensor of shape " + shape_str(x.shape()) +
                                  " to shape " + shape_str(shape_in));
  }
  shape_numel(shape);  // a shape too large to count (overflow) is refused here, not by later ops
  Tensor out = detail::broadcast_view(x, shape);
  if (any_requires_grad({&x})) {
    const Shape in_shape = x.shape();
    record(out, "expand", {x}, [in_shape](const Tensor& g, std::vector<Tensor>& gi) {
      gi[0] = sum_to(g, in_shape);
    });
  }
  return out;
}

inline Tensor broadcast_to(const Tensor& x, const Shape& shape) { return expand(x, shape); }

/// x itself when already contiguous, else a contiguous copy (differentiable identity).
inline Tensor contiguous(const Tensor& x) {
  if (x.is_contiguous()) return x;
  Tensor out = x.contiguous_data();
  if (any_requires_grad({&x}))
    record(out, "contiguous", {x}, [](const Tensor& g, std::vector<Tensor>& gi) { gi[0] = g; });
  return out;
}

// ---------------------------------------------------------------------------------------
// indexing
// ---------------------------------------------------------------------------------------

/// One entry of an index tuple, as NumPy: an integer, a slice, None (new axis), Ellipsis,
/// or a tensor (int64: integer-array index along one axis; bool: mask over as many axes
/// as it has dims). At most one tensor entry per index.
struct TensorIndex {
  enum class Kind { Integer, Slice, NewAxis, Ellipsis, Array };
  Kind kind = Kind::Ellipsis;
  int64_t start = 0, stop = 0, step = 1;  // Integer: start; Slice: Python's unpacked form
  Tensor tensor;                          // Array

  static TensorIndex integer(int64_t i) {
    TensorIndex t;
    t.kind = Kind::Integer;
    t.start = i;
    return t;
  }
  /// start:stop:step with Python's defaults for omitted bounds. step 0 is a ValueError.
  static TensorIndex slice(std::optional<int64_t> start = std::nullopt, std::optional<int64_t> stop = std::nullopt,
                           int64_t step = 1) {
    constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
    if (step == 0) throw std::invalid_argument("index: slice step cannot be zero");
    return slice_unpacked(start ? *start : (step < 0 ? kMax : 0), stop ? *stop : (step < 0 ? -kMax - 1 : kMax), step);
  }
  /// From PySlice_Unpack's output (omitted bounds already replaced by +-max).
  static TensorIndex slice_unpacked(int64_t start, int64_t stop, int64_t step) {
    if (step == 0) throw std::invalid_argument("index: slice step cannot be zero");
    TensorIndex t;
    t.kind = Kind::Slice;
    t.start = start;
    t.stop = stop;
    t.step = std::max(step, -std::numeric_limits<int64_t>::max());
    return t;
  }
  static TensorIndex new_axis() {
    TensorIndex t;
    t.kind = Kind::NewAxis;
    return t;
  }
  static TensorIndex ellipsis() { return TensorIndex(); }
  static TensorIndex array(const Tensor& indices) {
    TensorIndex t;
    t.kind = Kind::Array;
    t.tensor = indices;
    return t;
  }
};

namespace detail {

/// One axis of the basic (view) part of an index, in output order.
struct ViewStep {
  enum class Kind { Select, Slice, NewAxis } kind;
  int64_t dim;    // input axis (Select, Slice)
  int64_t start;  // Select: the index; Slice: first element
  int64_t step;   // Slice
  int64_t len;    // Slice
};

/// The advanced part: `ndims` view axes starting at `axis` are replaced by the entries
/// `flat` (row-major positions within those axes), giving dims `index_shape` at
/// `out_axis` of the result (0 when NumPy moves them to the front).
struct AdvancedIndex {
  int64_t axis = 0, ndims = 0, out_axis = 0;
  Shape index_shape;
  std::shared_ptr<const std::vector<int64_t>> flat;
};

struct ResolvedIndex {
  std::vector<ViewStep> steps;
  Shape view_shape;  // shape after the basic steps
  bool advanced = false;
  AdvancedIndex adv;
  Shape out_shape;
};

/// Applies the basic steps to any tensor of the indexed shape (the input, or a zero
/// gradient buffer of the same shape), giving a view.
inline Tensor apply_view(const Tensor& t, const std::vector<ViewStep>& steps) {
  Shape shape, strides;
  int64_t offset = t.offset();
  for (const ViewStep& s : steps) {
    switch (s.kind) {
      case ViewStep::Kind::Select:
        offset += s.start * t.strides()[s.dim];
        break;
      case ViewStep::Kind::Slice:
        if (s.len > 0) offset += s.start * t.strides()[s.dim];
        shape.push_back(s.len);
        // With 2+ elements step*stride lies inside the storage; with 0 or 1 it is never used,
        // and a huge step (x[::2**62]) must not overflow forming it.
        strides.push_back(s.len > 1 ? s.step * t.strides()[s.dim] : t.strides()[s.dim]);
        break;
      case ViewStep::Kind::NewAxis:
        shape.push_back(1);
        strides.push_back(0);
        break;
    }
  }
  return t.as_strided(shape, strides, offset);
}

inline ResolvedIndex resolve_index(const Shape& in, const std::vector<TensorIndex>& items, const char* op) {
  using K = TensorIndex::Kind;
  const int64_t nd = static_cast<int64_t>(in.size());
  int64_t consumed = 0, ellipses = 0, arrays = 0;
  for (const TensorIndex& it : items) {
    if (it.kind == K::Integer || it.kind == K::Slice) ++consumed;
    if (it.kind == K::Ellipsis) ++ellipses;
    if (it.kind == K::Array) {
      ++arrays;
      consumed += it.tensor.dtype() == DType::Bool ? it.tensor.dim() : 1;
    }
  }
  if (ellipses > 1) throw std::out_of_range(std::string(op) + ": an index can only have a single ellipsis ('...')");
  if (arrays > 1)
    throw std::out_of_range(std::string(op) +
                            ": only one integer-array or boolean-mask index is supported per indexing operation");
  if (consumed > nd)
    throw std::out_of_range(std::string(op) + ": too many indices for a tensor of shape " + shape_str(in) + ": " +
                            std::to_string(nd) + " dimension(s), but " + std::to_string(consumed) + " indexed");
  ResolvedIndex r;
  int64_t dim = 0;  // next input axis
  // Item positions (in the expanded index) of the advanced entries: the array and, when an
  // array is present, the integers (NumPy treats them as advanced too for placement).
  std::vector<int64_t> adv_positions;
  int64_t position = 0;
  auto full = [&](int64_t d) {
    r.steps.push_back({ViewStep::Kind::Slice, d, 0, 1, in[d]});
    r.view_shape.push_back(in[d]);
  };
  for (const TensorIndex& it : items) {
    switch (it.kind) {
      case K::Integer: {
        const int64_t size = in[dim];
        const int64_t i = it.start < 0 ? it.start + size : it.start;
        if (i < 0 || i >= size)
          throw std::out_of_range(std::string(op) + ": index " + std::to_string(it.start) +
                                  " is out of bounds for axis " + std::to_string(dim) + " with size " +
                                  std::to_string(size) + " (tensor of shape " + shape_str(in) + ")");
        r.steps.push_back({ViewStep::Kind::Select, dim, i, 0, 0});
        adv_positions.push_back(position++);
        ++dim;
        break;
      }
      case K::Slice: {
        // PySlice_AdjustIndices.
        const int64_t len = in[dim], step = it.step;
        int64_t start = it.start, stop = it.stop;
        if (start < 0) {
          start += len;
          if (start < 0) start = step < 0 ? -1 : 0;
        } else if (start >= len) {
          start = step < 0 ? len - 1 : len;
        }
        if (stop < 0) {
          stop += len;
          if (stop < 0) stop = step < 0 ? -1 : 0;
        } else if (stop >= len) {
          stop = step < 0 ? len - 1 : len;
        }
        int64_t count = 0;
        if (step < 0) {
          if (stop < start) count = (start - stop - 1) / (-step) + 1;
        } else if (start < stop) {
          count = (stop - start - 1) / step + 1;
        }
        r.steps.push_back({ViewStep::Kind::Slice, dim, start, step, count});
        r.view_shape.push_back(count);
        ++dim;
        ++position;
        break;
      }
      case K::NewAxis:
        r.steps.push_back({ViewStep::Kind::NewAxis, 0, 0, 0, 0});
        r.view_shape.push_back(1);
        ++position;
        break;
      case K::Ellipsis:
        for (int64_t k = 0, n = nd - consumed; k < n; ++k) full(dim++);
        ++position;  // separates advanced entries even when it stands for no axis (as NumPy)
        break;
      case K::Array: {
        const Tensor& t = it.tensor;
        AdvancedIndex& a = r.adv;
        r.advanced = true;
        a.axis = static_cast<int64_t>(r.view_shape.size());
        auto flat = std::make_shared<std::vector<int64_t>>();
        if (t.dtype() == DType::Bool) {
          a.ndims = t.dim();
          for (int64_t k = 0; k < a.ndims; ++k)
            if (t.shape()[k] != in[dim + k])
              throw std::out_of_range(std::string(op) + ": boolean mask of shape " + shape_str(t.shape()) +
                                      " does not match the indexed tensor of shape " + shape_str(in) + " at axis " +
                                      std::to_string(dim + k));
          const int64_t n = t.numel();
          for (int64_t f = 0; f < n; ++f)
            if (t.item_at(f) != 0.0) flat->push_back(f);
          a.index_shape = {static_cast<int64_t>(flat->size())};
        } else if (t.dtype() == DType::Int64) {
          a.ndims = 1;
          const int64_t size = in[dim];
          const Tensor c = t.contiguous_data();
          const int64_t* p = c.data<int64_t>();
          flat->resize(static_cast<std::size_t>(c.numel()));
          for (int64_t f = 0, n = c.numel(); f < n; ++f) {
            const int64_t i = p[f] < 0 ? p[f] + size : p[f];
            if (i < 0 || i >= size)
              throw std::out_of_range(std::string(op) + ": index " + std::to_string(p[f]) +
                                      " is out of bounds for axis " + std::to_string(dim) + " with size " +
                                      std::to_string(size) + " (tensor of shape " + shape_str(in) + ")");
            (*flat)[f] = i;
          }
          a.index_shape = t.shape();
        } else {
          throw std::out_of_range(std::string(op) + ": tensors used as indices must be int64 or bool, got " +
                                  dtype_name(t.dtype()));
        }
        a.flat = std::move(flat);
        for (int64_t k = 0; k < a.ndims; ++k) full(dim++);
        adv_positions.push_back(position++);
        break;
      }
    }
  }
  while (dim < nd) full(dim++);
  if (!r.advanced) {
    r.out_shape = r.view_shape;
    return r;
  }
  // Advanced entries separated by basic ones: NumPy puts the index dims first.
  const bool adjacent = adv_positions.back() - adv_positions.front() + 1 == static_cast<int64_t>(adv_positions.size());
  AdvancedIndex& a = r.adv;
  a.out_axis = adjacent ? a.axis : 0;
  Shape rest(r.view_shape.begin(), r.view_shape.begin() + a.axis);
  rest.insert(rest.end(), r.view_shape.begin() + a.axis + a.ndims, r.view_shape.end());
  r.out_shape = rest;
  r.out_shape.insert(r.out_shape.begin() + a.out_axis, a.index_shape.begin(), a.index_shape.end());
  shape_numel(r.out_shape, [&] {
    return std::string(op) + ": indexing a tensor of shape " + shape_str(in) + " with an index of shape " +
           shape_str(a.index_shape);
  });
  return r;
}

/// For the advanced part on a view `v` (shape view_shape): the layout shared by every slab
/// (the view without the indexed axes) and each entry's offset within v.
struct SlabLayout {
  Shape shape, strides;
  std::vector<int64_t> offsets;  // absolute storage offsets, one per index entry
};

inline SlabLayout slab_layout(const Tensor& v, const AdvancedIndex& a) {
  SlabLayout s;
  for (int64_t d = 0; d < v.dim(); ++d) {
    if (d >= a.axis && d < a.axis + a.ndims) continue;
    s.shape.push_back(v.shape()[d]);
    s.strides.push_back(v.strides()[d]);
  }
  s.offsets.reserve(a.flat->size());
  for (int64_t f : *a.flat) {
    int64_t off = v.offset();
    for (int64_t k = a.ndims; k-- > 0;) {
      const int64_t size = v.shape()[a.axis + k];
      off += (f % size) * v.strides()[a.axis + k];
      f /= size;
    }
    s.offsets.push_back(off);
  }
  return s;
}

/// A contiguous buffer of the result's shape seen as slabs: slab j at offset j * stride.
struct SlabBuffer {
  Shape strides;   // of the slab layout within the buffer
  int64_t stride;  // between consecutive index entries
};

inline SlabBuffer slab_buffer(const Shape& slab_shape, int64_t out_axis, int64_t n) {
  Shape full = slab_shape;
  full.insert(full.begin() + out_axis, n);
  const Shape cs = contiguous_strides(full);
  return {drop_axis(cs, out_axis), cs[out_axis]};
}

}  // namespace detail

/// x[items] with NumPy semantics. Basic indices give a view sharing x's storage; an
/// int64/bool tensor entry gives a copy. Differentiable.
inline Tensor index(const Tensor& x, const std::vector<TensorIndex>& items) {
  auto r = std::make_shared<const detail::ResolvedIndex>(detail::resolve_index(x.shape(), items, "index"));
  const Tensor view = detail::apply_view(x, r->steps);
  Tensor out;
  if (!r->advanced) {
    out = view;
  } else {
    const detail::SlabLayout src = detail::slab_layout(view, r->adv);
    const int64_t n = static_cast<int64_t>(src.offsets.size());
    const detail::SlabBuffer buf = detail::slab_buffer(src.shape, r->adv.out_axis, n);
    out = Tensor::empty(r->out_shape, x.dtype());
    for (int64_t j = 0; j < n; ++j)
      Tensor::copy_into(out.as_strided(src.shape, buf.strides, j * buf.stride),
                        view.as_strided(src.shape, src.strides, src.offsets[j]));
  }
  if (any_requires_grad({&x})) {
    const Shape in_shape = x.shape();
    record(out, "index", {x}, [r, in_shape](const Tensor& g, std::vector<Tensor>& gi) {
      Tensor gx = Tensor::zeros(in_shape, g.dtype());
      const Tensor region = detail::apply_view(gx, r->steps);
      if (!r->advanced) {
        Tensor::copy_into(region, g);
      } else {
        const Tensor gc = g.contiguous_data();
        const detail::SlabLayout dst = detail::slab_layout(region, r->adv);
        const int64_t n = static_cast<int64_t>(dst.offsets.size());
        const detail::SlabBuffer buf = detail::slab_buffer(dst.shape, r->adv.out_axis, n);
        for (int64_t j = 0; j < n; ++j)  // in order: repeated indices accumulate deterministically
          detail::add_into(region.as_strided(dst.shape, dst.strides, dst.offsets[j]),
                           gc.as_strided(dst.shape, buf.strides, gc.offset() + j * buf.stride));
      }
      gi[0] = gx;
    });
  }
  return out;
}

/// self[items] = value (value broadcast to the indexed shape, converted to self's dtype).
/// Not differentiable: a leaf requiring grad may only be written inside no_grad.
inline void index_put_(const Tensor& self, const std::vector<TensorIndex>& items, const Tensor& value_in) {
  if (grad_enabled() && self.requires_grad()) {
    if (!self.impl().grad_fn)
      throw std::runtime_error("index_put_: a leaf tensor that requires grad cannot be modified in place outside "
                               "ng.no_grad()");
    throw std::runtime_error("index_put_: in-place changes to a tensor that is part of a graph are not supported");
  }
  const detail::ResolvedIndex r = detail::resolve_index(self.shape(), items, "index_put_");
  if (broadcast_shapes(r.out_shape, value_in.shape(), "index_put_") != r.out_shape)
    throw std::invalid_argument("index_put_: value of shape " + shape_str(value_in.shape()) +
                                " cannot be broadcast to the indexed shape " + shape_str(r.out_shape));
  Tensor value = value_in;
  if (value.impl().storage == self.impl().storage) {  // overlapping source: read it all first
    value = Tensor::empty(value_in.shape(), value_in.dtype());
    Tensor::copy_into(value, value_in);
  }
  const Tensor view = detail::apply_view(self, r.steps);
  // Any write into an expand()ed tensor (even to one row) changes the elements that alias it.
  for (int64_t d = 0; d < self.dim(); ++d)
    if (self.strides()[d] == 0 && self.shape()[d] > 1)
      throw std::runtime_error("index_put_: the tensor of shape " + shape_str(self.shape()) +
                               " has several elements sharing one memory location (an expand()ed tensor); "
                               "write to a contiguous() copy instead");
  if (!r.advanced) {
    Tensor::copy_into(view, detail::broadcast_view(value, r.out_shape));
  } else {
    Tensor vc = Tensor::empty(r.out_shape, value.dtype());
    Tensor::copy_into(vc, detail::broadcast_view(value, r.out_shape));
    const detail::SlabLayout dst = detail::slab_layout(view, r.adv);
    const int64_t n = static_cast<int64_t>(dst.offsets.size());
    const detail::SlabBuffer buf = detail::slab_buffer(dst.shape, r.adv.out_axis, n);
    for (int64_t j = 0; j < n; ++j)  // in order: the last of repeated indices wins (as NumPy)
      Tensor::copy_into(view.as_strided(dst.shape, dst.strides, dst.offsets[j]),
                        vc.as_strided(dst.shape, buf.strides, j * buf.stride));
  }
  self.bump_version();
}

// ---------------------------------------------------------------------------------------
// concatenate, stack
// ---------------------------------------------------------------------------------------

/// Joins tensors along an existing axis; dtypes promote. Each input gets its slice of the
/// gradient.
inline Tensor concatenate(const std::vector<Tensor>& xs, int64_t axis_in = 0) {
  if (xs.empty()) throw std::invalid_argument("concatenate: expected a non-empty list of tensors");
  const Shape& first = xs[0].shape();
  if (first.empty()) throw std::invalid_argument("concatenate: zero-dimensional tensors cannot be concatenated");
  const int64_t nd = static_cast<int64_t>(first.size());
  const int64_t axis = normalize_axis(axis_in, nd, "concatenate");
  DType dt = xs[0].dtype();
  Shape shape = first;
  shape[axis] = 0;
  for (std::size_t i = 0; i < xs.size(); ++i) {
    const Shape& s = xs[i].shape();
    bool ok = static_cast<int64_t>(s.size()) == nd;
    for (int64_t d = 0; ok && d < nd; ++d) ok = d == axis || s[d] == first[d];
    if (!ok)
      throw std::invalid_argument("concatenate: input " + std::to_string(i) + " has shape " + shape_str(s) +
                                  ", which does not match input 0's shape " + shape_str(first) +
                                  " outside axis " + std::to_string(axis));
    shape[axis] = checked_add(shape[axis], s[axis], [&] {
      return "concatenate: the joined axis " + std::to_string(axis) + " of " + std::to_string(xs.size()) +
             " inputs of shape " + shape_str(first) + " (at input " + std::to_string(i) + ", shape " + shape_str(s) +
             ") has too many elements";
    });
    dt = promote_types(dt, xs[i].dtype());
  }
  shape_numel(shape, [&] {
    return "concatenate: joining " + std::to_string(xs.size()) + " inputs of shape " + shape_str(first) +
           " along axis " + std::to_string(axis);
  });
  Tensor out = Tensor::empty(shape, dt);
  const Shape& ost = out.strides();
  std::vector<int64_t> starts;
  int64_t start = 0;
  for (const Tensor& x : xs) {
    starts.push_back(start);
    Tensor::copy_into(out.as_strided(x.shape(), ost, start * ost[axis]), x);
    start += x.shape()[axis];
  }
  if (any_requires_grad(xs)) {
    std::vector<Shape> shapes;
    std::vector<DType> dtypes;
    std::vector<bool> wanted;
    for (const Tensor& x : xs) {
      shapes.push_back(x.shape());
      dtypes.push_back(x.dtype());
      wanted.push_back(x.requires_grad());
    }
    record(out, "concatenate", xs, [shapes, dtypes, wanted, starts, axis](const Tensor& g, std::vector<Tensor>& gi) {
      for (std::size_t i = 0; i < shapes.size(); ++i) {
        if (!wanted[i]) continue;
        const Tensor part = g.as_strided(shapes[i], g.strides(), g.offset() + starts[i] * g.strides()[axis]);
        Tensor dst = Tensor::empty(shapes[i], dtypes[i]);
        Tensor::copy_into(dst, part);
        gi[i] = dst;
      }
    });
  }
  return out;
}

/// Joins same-shape tensors along a new axis (in [-ndim-1, ndim]).
inline Tensor stack(const std::vector<Tensor>& xs, int64_t axis_in = 0) {
  if (xs.empty()) throw std::invalid_argument("stack: expected a non-empty list of tensors");
  const int64_t axis = normalize_axis(axis_in, xs[0].dim() + 1, "stack");
  std::vector<Tensor> parts;
  for (std::size_t i = 0; i < xs.size(); ++i) {
    if (xs[i].shape() != xs[0].shape())
      throw std::invalid_argument("stack: input " + std::to_string(i) + " has shape " + shape_str(xs[i].shape()) +
                                  " but input 0 has shape " + shape_str(xs[0].shape()) +
                                  " (stack needs equal shapes)");
    parts.push_back(unsqueeze(xs[i], axis));
  }
  return concatenate(parts, axis);
}

}  // namespace nablagrad
