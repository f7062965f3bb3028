// The pybind11 module nablagrad._core: the Tensor class, dtypes, conversions, and the
// elementwise / reduction / matmul ops. Other op groups are bound in bind_*.cpp.
#include <cstring>
#include <sstream>

#include "common.h"

namespace nablagrad {
namespace bindings {

// ---------------------------------------------------------------------------------------
// conversions
// ---------------------------------------------------------------------------------------
namespace {

DType numpy_dtype_to_dtype(const py::dtype& dt, bool allow_convert) {
  const char kind = dt.kind();
  const char order = dt.byteorder();  // '=' native, '|' not applicable, '<' / '>' explicit
  if (order != '=' && order != '|')  // NumPy reports native order as '=' even when spelled '<' / '>'
    throw py::type_error("NumPy dtype " + std::string(py::str(dt)) +
                         " has non-native byte order; convert it with a.astype(a.dtype.newbyteorder('='))");
  const auto size = dt.itemsize();
  if (kind == 'f' && size == 4) return DType::Float32;
  if (kind == 'f' && size == 8) return DType::Float64;
  if (kind == 'b') return DType::Bool;
  if (kind == 'i' && size == 8) return DType::Int64;
  if (allow_convert && (kind == 'i' || kind == 'u')) return DType::Int64;
  throw py::type_error("unsupported NumPy dtype " + std::string(py::str(dt)) +
                       " (nablagrad supports float32, float64, int64 and bool)");
}

py::dtype dtype_to_numpy(DType d) {
  switch (d) {
    case DType::Float32: return py::dtype::of<float>();
    case DType::Float64: return py::dtype::of<double>();
    case DType::Int64: return py::dtype::of<int64_t>();
    case DType::Bool: return py::dtype::of<bool>();
  }
  return py::dtype::of<float>();
}

/// Shares the memory of a NumPy array (non-negative strides that are multiples of the item size,
/// aligned data). `writable`: the tensor may be written to, so a read-only array is refused.
Tensor share_numpy(py::array arr, DType dt, bool writable) {
  const auto item = static_cast<int64_t>(arr.itemsize());
  if (writable && !arr.writeable())
    throw py::value_error("from_numpy: the array is read-only (not writeable), and a tensor sharing its memory "
                          "could be written to; use ng.tensor(a) to copy it, or pass a writeable array");
  if (reinterpret_cast<std::uintptr_t>(arr.data()) % static_cast<std::uintptr_t>(item) != 0)
    throw py::value_error("from_numpy: the array's data is not aligned to its item size; "
                          "pass np.ascontiguousarray(a) or ng.tensor(a) to copy it");
  Shape shape(arr.ndim()), strides(arr.ndim());
  const bool empty = arr.size() == 0;
  for (py::ssize_t i = 0; i < arr.ndim(); ++i) {
    shape[i] = arr.shape(i);
    const int64_t st = arr.strides(i);
    // The stride of an axis of length 1 (or of an empty array) is never used: NumPy calls
    // np.zeros(1)[::-1] C-contiguous, so ng.tensor and from_numpy accept it.
    if (shape[i] > 1 && !empty && (st < 0 || st % item != 0))
      throw py::value_error("from_numpy: arrays with negative or unaligned strides cannot be shared; "
                            "pass np.ascontiguousarray(a)");
    strides[i] = shape[i] == 1 ? 0 : st / item;
  }
  for (py::ssize_t i = 0; i < arr.ndim(); ++i)
    if (shape[i] == 1 || empty) strides[i] = contiguous_strides(shape)[i];
  auto owner = std::shared_ptr<void>(new py::object(arr), [](void* p) {
    py::gil_scoped_acquire gil;
    delete static_cast<py::object*>(p);
  });
  return Tensor::from_blob(const_cast<void*>(arr.data()), shape, strides, dt, std::move(owner));
}

}  // namespace

py::array to_numpy(const Tensor& t) {
  // The capsule keeps the storage alive as long as the array lives.
  auto* keep = new std::shared_ptr<Storage>(t.impl().storage);
  py::capsule base(keep, [](void* p) { delete static_cast<std::shared_ptr<Storage>*>(p); });
  const auto item = static_cast<py::ssize_t>(dtype_size(t.dtype()));
  std::vector<py::ssize_t> shape(t.shape().begin(), t.shape().end()), strides;
  for (int64_t s : t.strides()) strides.push_back(static_cast<py::ssize_t>(s) * item);
  py::array arr(dtype_to_numpy(t.dtype()), shape, strides, t.raw_data(), base);
  // A NumPy write would bypass the version counter that autograd checks, so the view of a
  // tensor that requires grad is read-only (as PyTorch refuses .numpy() there); the view of
  // t.detach() stays writable, and its writes are the user's explicit choice.
  if (t.requires_grad()) arr.attr("setflags")(py::arg("write") = false);
  return arr;
}

DType to_dtype(py::handle obj) {
  if (py::isinstance<DType>(obj)) return obj.cast<DType>();
  if (obj.is_none()) throw py::type_error("expected a dtype, got None");
  if (py::isinstance<py::str>(obj)) {
    const std::string s = obj.cast<std::string>();
    if (s == "float32" || s == "float") return DType::Float32;
    if (s == "float64" || s == "double") return DType::Float64;
    if (s == "int64" || s == "long") return DType::Int64;
    if (s == "bool") return DType::Bool;
    throw py::type_error("unknown dtype '" + s + "'");
  }
  if (obj.is(py::type::of(py::bool_()))) return DType::Bool;
  if (obj.is(py::type::of(py::float_()))) return DType::Float32;
  if (obj.is(py::type::of(py::int_()))) return DType::Int64;
  try {
    return numpy_dtype_to_dtype(py::dtype::from_args(py::reinterpret_borrow<py::object>(obj)), false);
  } catch (const py::error_already_set&) {
    throw py::type_error("not a dtype: " + std::string(py::repr(obj)));
  }
}

Tensor to_tensor(py::handle obj, const Tensor* like) {
  if (py::isinstance<Tensor>(obj)) return obj.cast<Tensor>();
  if (py::isinstance<py::bool_>(obj)) {
    return Tensor::scalar(obj.cast<bool>() ? 1.0 : 0.0, DType::Bool);
  }
  if (py::isinstance<py::int_>(obj)) {
    if (like && is_floating(like->dtype())) return Tensor::scalar(obj.cast<double>(), like->dtype());
    int64_t v = 0;
    try {
      v = obj.cast<int64_t>();
    } catch (const py::cast_error&) {
      throw std::overflow_error("Python int " + std::string(py::repr(obj)) + " does not fit in int64");
    }
    Tensor t = Tensor::empty({}, DType::Int64);
    *t.data<int64_t>() = v;
    return t;
  }
  if (py::isinstance<py::float_>(obj)) {
    DType d = DType::Float32;
    if (like && is_floating(like->dtype())) d = like->dtype();
    return Tensor::scalar(obj.cast<double>(), d);
  }
  // NumPy arrays, NumPy scalars, lists: the Python-level converter owns the inference rules.
  py::object conv = py::module_::import("nablagrad._tensor").attr("_as_tensor");
  return conv(obj).cast<Tensor>();
}

namespace {
/// One axis: an int (or an object with __index__); a huge one is out of range (IndexError).
int64_t to_axis(py::handle a) {
  if (py::isinstance<py::bool_>(a) || (!py::isinstance<py::int_>(a) && !py::hasattr(a, "__index__")))
    throw py::type_error("axis must be an int, a tuple of ints or None, got " +
                         std::string(py::str(py::type::of(a).attr("__name__"))));
  const py::int_ v(py::reinterpret_borrow<py::object>(a));
  try {
    return v.cast<int64_t>();
  } catch (const py::cast_error&) {
    throw py::index_error("axis " + std::string(py::str(v)) + " is out of range");
  }
}
}  // namespace

std::vector<int64_t> to_axes(py::handle axis) {
  if (axis.is_none()) return {};
  if (!py::isinstance<py::tuple>(axis) && !py::isinstance<py::list>(axis)) return {to_axis(axis)};
  std::vector<int64_t> out;
  for (py::handle a : axis) out.push_back(to_axis(a));
  if (out.empty()) throw py::value_error("axis: an empty tuple of axes is not allowed (use None for all axes)");
  return out;
}

Shape to_shape(py::handle obj) {
  if (py::isinstance<py::int_>(obj) && !py::isinstance<py::bool_>(obj)) return to_shape(py::make_tuple(obj));
  if (!py::isinstance<py::sequence>(obj) || py::isinstance<py::str>(obj))
    throw py::type_error("a shape must be an int or a sequence of ints, got " +
                         std::string(py::str(py::type::of(obj).attr("__name__"))));
  Shape s;
  for (py::handle d : obj) {
    if (!py::isinstance<py::int_>(d) && !py::hasattr(d, "__index__"))
      throw py::type_error("shape entries must be integers, got " + std::string(py::repr(d)));
    if (py::isinstance<py::bool_>(d))
      throw py::type_error("shape entries must be integers, got " + std::string(py::repr(d)));
    const py::int_ v(py::reinterpret_borrow<py::object>(d));
    try {
      s.push_back(v.cast<int64_t>());
    } catch (const py::cast_error&) {
      throw py::value_error("shape entry " + std::string(py::str(v)) + " is too large");
    }
  }
  return s;
}

// ---------------------------------------------------------------------------------------
// Tensor class
// ---------------------------------------------------------------------------------------
namespace {

void check_can_require_grad(const Tensor& t, bool flag) {
  if (flag && !is_floating(t.dtype()))
    throw std::runtime_error(std::string("only floating point tensors can require gradients, got dtype ") +
                             dtype_name(t.dtype()));
  if (t.impl().grad_fn && !flag)
    throw std::runtime_error("requires_grad can only be changed on leaf tensors; use detach() on a result of an op");
}

py::object item(const Tensor& t) {
  if (t.numel() != 1)
    throw py::value_error("item(): only a tensor with one element can be converted to a Python scalar, got shape " +
                          shape_str(t.shape()));
  const double v = t.item_at(0);
  switch (t.dtype()) {
    case DType::Int64: return py::int_(*static_cast<const int64_t*>(t.raw_data()));
    case DType::Bool: return py::bool_(v != 0.0);
    default: return py::float_(v);
  }
}

/// In-place copy from a Tensor / array (broadcast to self's shape, dtype converted).
void copy_from(Tensor& self, py::handle src_obj) {
  if (self.requires_grad() && !self.impl().grad_fn && grad_enabled())
    throw std::runtime_error("copy_: a leaf tensor that requires grad cannot be modified in place outside "
                             "ng.no_grad()");
  if (self.impl().grad_fn && grad_enabled())
    throw std::runtime_error("copy_: in-place changes to a tensor that is part of a graph are not supported");
  for (int64_t d = 0; d < self.dim(); ++d)
    if (self.strides()[d] == 0 && self.shape()[d] > 1)
      throw std::runtime_error("copy_: the tensor has several elements sharing one memory location (an expand()ed "
                               "tensor of shape " + shape_str(self.shape()) + "); copy into a contiguous() copy instead");
  Tensor src = to_tensor(src_obj, &self);
  const Shape bs = broadcast_shapes(self.shape(), src.shape(), "copy_");
  if (bs != self.shape())
    throw std::invalid_argument("copy_: source of shape " + shape_str(src.shape()) +
                                " cannot be broadcast to the tensor's shape " + shape_str(self.shape()));
  Tensor tmp = Tensor::empty(self.shape(), src.dtype());
  // expand src to self's shape, then convert into self
  Shape st(bs.size(), 0);
  for (std::size_t i = 0; i < src.shape().size(); ++i) {
    const std::size_t j = bs.size() - src.shape().size() + i;
    st[j] = src.shape()[i] == 1 ? 0 : src.strides()[i];
  }
  Tensor::copy_into(tmp, src.as_strided(bs, st, src.offset()));
  Tensor::copy_into(self, tmp);
  self.bump_version();
}

}  // namespace

void bind_tensor(py::module_& m) {
  py::enum_<DType>(m, "dtype", "Element type of a tensor.")
      .value("float32", DType::Float32)
      .value("float64", DType::Float64)
      .value("int64", DType::Int64)
      .value("bool", DType::Bool)
      .def_property_readonly("itemsize", [](DType d) { return dtype_size(d); })
      .def_property_readonly("is_floating_point", [](DType d) { return is_floating(d); })
      .def_property_readonly("numpy_dtype", [](DType d) { return dtype_to_numpy(d); })
      .def("__repr__", [](DType d) { return std::string("nablagrad.") + dtype_name(d); })
      .def("__str__", [](DType d) { return std::string("nablagrad.") + dtype_name(d); });

  // TensorHolder (common.h) keeps the TensorImpl -> wrapper identity table up to date.
  py::class_<Tensor, TensorHolder<Tensor>> cls(m, "Tensor", "An n-dimensional array with reverse-mode autograd.");
  // Tensor(t) aliases t's data as a new leaf; anything else is converted (copied). With
  // _share_impl=True (nn.Parameter wrapping a C++ layer's tensor) the new object wraps t's own
  // TensorImpl and becomes its Python identity. Written as pybind11's new-style constructor so
  // the new wrapper can be entered in the identity table.
  cls.def(
      "__init__",
      [](py::detail::value_and_holder& v_h, py::handle data, bool share_impl) {
        Tensor t;
        if (py::isinstance<Tensor>(data)) {
          t = share_impl ? data.cast<Tensor>() : data.cast<Tensor>().alias();
        } else {
          if (share_impl) throw py::type_error("Tensor(data, _share_impl=True) needs a Tensor");
          t = to_tensor(data).alias();
        }
        v_h.value_ptr() = new Tensor(std::move(t));
        v_h.type->init_instance(v_h.inst, nullptr);  // constructs the holder
        identity::remember(py::handle(reinterpret_cast<PyObject*>(v_h.inst)));
      },
      py::detail::is_new_style_constructor(), py::arg("data"), py::kw_only(), py::arg("_share_impl") = false);
  cls.def_property_readonly("shape", [](const Tensor& t) { return py::tuple(py::cast(t.shape())); })
      .def_property_readonly("ndim", &Tensor::dim)
      .def_property_readonly("dtype", &Tensor::dtype)
      .def_property_readonly("size", &Tensor::numel, "Number of elements (as NumPy's ndarray.size).")
      .def("numel", &Tensor::numel)
      .def("__len__", [](const Tensor& t) {
        if (t.dim() == 0) throw py::type_error("len() of a 0-d tensor");
        return t.shape()[0];
      })
      .def_property_readonly("strides", [](const Tensor& t) { return py::tuple(py::cast(t.strides())); },
                             "Strides in elements.")
      .def_property(
          "requires_grad", &Tensor::requires_grad,
          [](Tensor& t, bool flag) {
            check_can_require_grad(t, flag);
            t.impl().requires_grad = flag;
          })
      .def_property_readonly("is_leaf", [](const Tensor& t) { return !t.impl().grad_fn; })
      .def_property_readonly("grad_fn_name", [](const Tensor& t) -> py::object {
        if (!t.impl().grad_fn) return py::none();
        return py::str(t.impl().grad_fn->name);
      })
      .def_property(
          "grad",
          // Another thread may be running backward into this leaf (GIL released): .grad is
          // read and replaced only through the locked helpers, which hold the leaf mutex
          // briefly and release a replaced gradient after it (see autograd.h's lock order).
          [](const Tensor& t) -> py::object {
            std::shared_ptr<TensorImpl> g = detail::get_leaf_grad(t.impl());
            if (!g) return py::none();
            return py::cast(Tensor(std::move(g)));
          },
          [](Tensor& t, py::object g) {
            if (g.is_none()) {
              detail::set_leaf_grad(t.impl(), nullptr);
              return;
            }
            Tensor gt = to_tensor(g, &t);
            if (gt.shape() != t.shape())
              throw std::invalid_argument("grad: assigned gradient has shape " + shape_str(gt.shape()) +
                                          " but the tensor has shape " + shape_str(t.shape()));
            if (gt.dtype() != t.dtype())
              throw std::domain_error(std::string("grad: assigned gradient has dtype ") + dtype_name(gt.dtype()) +
                                      " but the tensor has dtype " + dtype_name(t.dtype()));
            detail::set_leaf_grad(t.impl(), gt.impl_ptr());
          })
      .def(
          "backward",
          [](const Tensor& t, py::object grad, bool retain_graph) {
            Tensor g;
            if (!grad.is_none()) g = to_tensor(grad, &t);
            py::gil_scoped_release release;
            backward(t, g, retain_graph);
          },
          py::arg("grad") = py::none(), py::arg("retain_graph") = false,
          "Back-propagates from this tensor, accumulating into the leaves' .grad.")
      .def("detach", &Tensor::alias, "The same data without autograd history (shares memory).")
      .def("item", &item)
      .def("numpy", &to_numpy, "A NumPy array sharing this tensor's memory.")
      .def(
          "__array__",
          [](const Tensor& t, py::object dtype, py::object copy) -> py::object {
            py::object arr = to_numpy(t);
            if (!dtype.is_none()) arr = arr.attr("astype")(dtype, py::arg("copy") = false);
            if (!copy.is_none() && copy.cast<bool>()) arr = arr.attr("copy")();
            return arr;
          },
          py::arg("dtype") = py::none(), py::arg("copy") = py::none())
      .def("copy_", [](Tensor& self, py::handle src) -> Tensor& {
        copy_from(self, src);
        return self;
      }, py::arg("src"))
      .def("is_contiguous", &Tensor::is_contiguous)
      .def_property_readonly("_version", [](const Tensor& t) { return t.version(); })
      .def("_data_ptr", [](const Tensor& t) { return reinterpret_cast<std::uintptr_t>(t.raw_data()); })
      .def("_same_storage", [](const Tensor& a, const Tensor& b) { return a.impl().storage == b.impl().storage; });
  // NumPy must defer binary operators to the Tensor (ndarray * tensor -> Tensor.__rmul__).
  cls.attr("__array_ufunc__") = py::none();
  cls.attr("__array_priority__") = 1000;

  m.def("from_numpy", [](py::array arr) { return share_numpy(arr, numpy_dtype_to_dtype(arr.dtype(), false), true); },
        py::arg("array"), "A tensor sharing memory with a NumPy array (float32, float64, int64 or bool).");
  m.def("_copy_from_numpy",
        [](py::array arr, DType dt) {
          Tensor shared = share_numpy(arr, numpy_dtype_to_dtype(arr.dtype(), true), false);  // read only
          Tensor out = Tensor::empty(shared.shape(), dt);
          Tensor::copy_into(out, shared);
          return out;
        },
        py::arg("array"), py::arg("dtype"));
  m.def("_dtype_of_numpy", [](py::dtype dt) { return numpy_dtype_to_dtype(dt, true); });
}

// ---------------------------------------------------------------------------------------
// math ops
// ---------------------------------------------------------------------------------------
void bind_math_ops(py::module_& m) {
  auto cls = tensor_class(m);
  using detail::BinaryOp;
  // Binary arithmetic with scalars/arrays on either side.
  auto binop = [&](const char* name, const char* rname, BinaryOp op) {
    cls.def(name, [op](const Tensor& a, py::handle b) {
      const Tensor bt = to_tensor(b, &a);
      return without_gil_if_large(saturating_add(a.numel(), bt.numel()), [&] { return arith(op, a, bt); });
    }, py::is_operator());
    cls.def(rname, [op](const Tensor& a, py::handle b) {
      const Tensor bt = to_tensor(b, &a);
      return without_gil_if_large(saturating_add(a.numel(), bt.numel()), [&] { return arith(op, bt, a); });
    }, py::is_operator());
  };
  binop("__add__", "__radd__", BinaryOp::Add);
  binop("__sub__", "__rsub__", BinaryOp::Sub);
  binop("__mul__", "__rmul__", BinaryOp::Mul);
  binop("__truediv__", "__rtruediv__", BinaryOp::Div);
  cls.def("__pow__", [](const Tensor& a, py::handle b) {
    if ((py::isinstance<py::float_>(b) || py::isinstance<py::int_>(b)) && !py::isinstance<py::bool_>(b) &&
        is_floating(a.dtype()))
      return pow_scalar(a, b.cast<double>());
    return pow(a, to_tensor(b, &a));
  }, py::is_operator());
  cls.def("__rpow__", [](const Tensor& a, py::handle b) { return pow(to_tensor(b, &a), a); }, py::is_operator());
  cls.def("__neg__", &neg);
  cls.def("__pos__", [](const Tensor& a) { return a; });
  cls.def("__abs__", &abs);
  cls.def("__matmul__", [](const Tensor& a, py::handle b) {
    Tensor bt = to_tensor(b, &a);
    py::gil_scoped_release release;
    return matmul(a, bt);
  }, py::is_operator());
  cls.def("__rmatmul__", [](const Tensor& a, py::handle b) {
    Tensor bt = to_tensor(b, &a);
    py::gil_scoped_release release;
    return matmul(bt, a);
  }, py::is_operator());
  auto cmp = [&](const char* name, CompareOp op) {
    cls.def(name, [op](const Tensor& a, py::handle b) -> py::object {
      // t == None (and other non-numeric operands of == / !=) fall back to identity, as in PyTorch
      if (b.is_none() && (op == CompareOp::Eq || op == CompareOp::Ne)) return py::reinterpret_borrow<py::object>(Py_NotImplemented);
      return py::cast(compare(op, a, to_tensor(b, &a)));
    }, py::is_operator());
  };
  cmp("__lt__", CompareOp::Lt);
  cmp("__le__", CompareOp::Le);
  cmp("__gt__", CompareOp::Gt);
  cmp("__ge__", CompareOp::Ge);
  cmp("__eq__", CompareOp::Eq);
  cmp("__ne__", CompareOp::Ne);
  // __eq__ is elementwise (as NumPy and PyTorch) while hashing is by identity (as PyTorch),
  // so tensors can key dicts and sets (optimizer state, de-duplicating tied parameters).
  cls.attr("__hash__") = py::module_::import("builtins").attr("object").attr("__hash__");
  cls.def("__bool__", [](const Tensor& t) {
    if (t.numel() != 1)
      throw py::value_error(std::string("the truth value of a tensor with ") +
                            (t.numel() == 0 ? "no elements" : "more than one element") + " is ambiguous (shape " +
                            shape_str(t.shape()) + ")");
    return t.item_at(0) != 0.0;
  });
  cls.def("__float__", [](const Tensor& t) {
    if (t.numel() != 1) throw py::value_error("only one-element tensors can be converted to float");
    return t.item_at(0);
  });
  cls.def("__int__", [](const Tensor& t) -> py::object {
    if (t.numel() != 1) throw py::value_error("only one-element tensors can be converted to int");
    if (t.dtype() == DType::Int64) return item(t);
    // Python's own float -> int: truncates; NaN raises ValueError, inf OverflowError.
    return py::int_(py::float_(t.item_at(0)));
  });

  // Unary ops: methods and module functions.
  auto unary = [&](const char* name, Tensor (*fn)(const Tensor&)) {
    auto f = [fn](const Tensor& x) { return without_gil_if_large(x.numel(), [&] { return fn(x); }); };
    cls.def(name, f);
    m.def(name, f, py::arg("x"));
  };
  unary("exp", &exp);
  unary("log", &log);
  unary("sqrt", &sqrt);
  unary("abs", &abs);
  unary("tanh", &tanh);
  unary("sigmoid", &sigmoid);
  unary("relu", &relu);
  unary("neg", &neg);
  m.def("leaky_relu", &leaky_relu, py::arg("x"), py::arg("slope") = 0.01);
  m.def("gelu", &gelu, py::arg("x"), py::arg("tanh_approximation") = false);
  auto clip_fn = [](const Tensor& x, py::object lo, py::object hi) {
    for (const py::object* b : {&lo, &hi})
      if (!b->is_none() && (py::isinstance<py::bool_>(*b) || !(py::isinstance<py::float_>(*b) ||
                                                               py::isinstance<py::int_>(*b) ||
                                                               py::hasattr(*b, "__float__"))))
        throw py::type_error("clip: bounds must be numbers or None, got " +
                             std::string(py::str(py::type::of(*b).attr("__name__"))));
    const double nan = std::numeric_limits<double>::quiet_NaN();
    const double l = lo.is_none() ? nan : lo.cast<double>(), h = hi.is_none() ? nan : hi.cast<double>();
    // lo > hi is allowed and gives hi everywhere (gradient 0), as NumPy and PyTorch.
    return clip(x, l, h);
  };
  cls.def("clip", clip_fn, py::arg("lo") = py::none(), py::arg("hi") = py::none());
  m.def("clip", clip_fn, py::arg("x"), py::arg("lo") = py::none(), py::arg("hi") = py::none());
  cls.def("astype", [](const Tensor& x, py::handle dt) { return astype(x, to_dtype(dt)); }, py::arg("dtype"));
  m.def("pow", [](const Tensor& a, py::handle b) { return pow(a, to_tensor(b, &a)); });
  m.def("where", [](py::handle c, py::handle a, py::handle b) {
    Tensor ct = to_tensor(c);
    Tensor at, bt;
    if (py::isinstance<Tensor>(a)) {
      at = a.cast<Tensor>();
      bt = to_tensor(b, &at);
    } else if (py::isinstance<Tensor>(b)) {
      bt = b.cast<Tensor>();
      at = to_tensor(a, &bt);
    } else {
      at = to_tensor(a);
      bt = to_tensor(b);
    }
    return where(ct, at, bt);
  }, py::arg("cond"), py::arg("a"), py::arg("b"));

  // Reductions.
  auto reduction = [&](const char* name, Tensor (*fn)(const Tensor&, const std::vector<int64_t>&, bool)) {
    auto f = [fn](const Tensor& x, py::object axis, bool keepdims) {
      const std::vector<int64_t> axes = to_axes(axis);
      return without_gil_if_large(x.numel(), [&] { return fn(x, axes, keepdims); });
    };
    cls.def(name, f, py::arg("axis") = py::none(), py::arg("keepdims") = false);
    m.def(name, f, py::arg("x"), py::arg("axis") = py::none(), py::arg("keepdims") = false);
  };
  reduction("sum", &sum);
  reduction("mean", &mean);
  reduction("max", &max);
  reduction("min", &min);

  m.def("matmul", [](const Tensor& a, const Tensor& b) { return matmul(a, b); }, py::arg("a"), py::arg("b"),
        py::call_guard<py::gil_scoped_release>());

  // Factories, generator, threads, grad mode.
  m.def("empty", [](py::handle shape, DType dt) { return Tensor::empty(to_shape(shape), dt); });
  m.def("zeros", [](py::handle shape, DType dt) { return Tensor::zeros(to_shape(shape), dt); });
  m.def("full", [](py::handle shape, double v, DType dt) { return Tensor::full(to_shape(shape), v, dt); });
  m.def("rand", [](py::handle shape, DType dt) { return rand(to_shape(shape), dt); });
  m.def("randn", [](py::handle shape, DType dt) { return randn(to_shape(shape), dt); });
  m.def("manual_seed", &manual_seed, py::arg("seed"));
  m.def("set_num_threads", &set_num_threads, py::arg("n"));
  m.def("get_num_threads", &get_num_threads);
  m.def("is_grad_enabled", &grad_enabled);
  m.def("_set_grad_enabled", [](bool flag) {
    const bool prev = grad_mode_flag();
    grad_mode_flag() = flag;
    return prev;
  });
  m.def("_cached_bytes", []() { return BlockCache::instance().cached_bytes(); },
        "Bytes held by the large-block cache for reuse.");
  m.def("_empty_cache", []() { BlockCache::instance().release_cached(); },
        "Returns every cached large block to the system allocator.");
  m.def("_simd_level", []() { return std::string(simd_level_name(simd_level())); },
        "The kernel variant in use: 'portable', 'avx2' or 'avx512'.");
  m.def("_cpu_simd_level", []() { return std::string(simd_level_name(cpu_simd_level())); },
        "The best kernel variant this CPU supports.");
  m.def("_set_simd_level", [](const std::string& level) { set_simd_level(parse_simd_level(level)); },
        "Chooses the kernel variant; a level above the CPU's raises ValueError.");
  m.def("_avx512_half_rate", []() { return avx512_half_rate(); },
        "Whether the shape rules take AVX-512 to run at half rate (Zen 4's 256-bit units).");
  m.def("_set_avx512_half_rate", [](bool half) { set_avx512_half_rate(half); },
        "Sets what _avx512_half_rate answers (for tests).");
}

}  // namespace bindings
}  // namespace nablagrad

PYBIND11_MODULE(_core, m) {
  namespace nb = nablagrad::bindings;
  m.doc() = "nablagrad's C++ core (bindings only; use the nablagrad package).";
  pybind11::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const std::domain_error& e) {  // dtype problems
      PyErr_SetString(PyExc_TypeError, e.what());
    } catch (const std::length_error& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    } catch (const nablagrad::OutOfMemory& e) {
      PyErr_SetString(PyExc_MemoryError, e.what());
    } catch (const std::bad_alloc&) {
      PyErr_SetString(PyExc_MemoryError, "nablagrad: out of memory");
    }
  });
  nb::bind_tensor(m);
  nb::bind_math_ops(m);
  nb::bind_shape_ops(m);
  nb::bind_nn_ops(m);
  nb::bind_conv_ops(m);
  nb::bind_identity(m);
  nb::bind_optim(m);
  nb::bind_layers(m);
  nb::bind_rnn(m);  // after bind_layers: adds to _core.nn
  nb::bind_attention(m);  // after bind_layers: adds to _core.nn
  nb::bind_dlpack(m);
  nb::bind_hooks(m);
}
