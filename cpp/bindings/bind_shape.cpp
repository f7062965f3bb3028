// Bindings of the shape ops (ops/shape.h): reshape/transpose/permute/flatten/squeeze/
// unsqueeze/expand/contiguous as Tensor methods and module functions, __getitem__ and
// __setitem__ (the index tuple is parsed here, then one call into C++), concatenate, stack.
#include "common.h"

namespace nablagrad {
namespace bindings {

namespace {

/// reshape(2, 3) and reshape((2, 3)) alike.
Shape shape_from_args(const py::args& args) {
  if (args.size() == 1 && !py::isinstance<py::int_>(args[0]) && !py::hasattr(args[0], "__index__"))
    return to_shape(args[0]);
  return to_shape(args);
}

TensorIndex to_index_item(py::handle obj) {
  if (obj.is_none()) return TensorIndex::new_axis();
  if (obj.is(py::ellipsis())) return TensorIndex::ellipsis();
  if (PySlice_Check(obj.ptr())) {
    Py_ssize_t start = 0, stop = 0, step = 0;
    if (PySlice_Unpack(obj.ptr(), &start, &stop, &step) < 0) throw py::error_already_set();
    return TensorIndex::slice_unpacked(start, stop, step);
  }
  if (py::isinstance<Tensor>(obj)) return TensorIndex::array(obj.cast<Tensor>());
  // Python / NumPy bools are 0-d masks (x[True] adds an axis, as NumPy); check before ints.
  if (py::isinstance<py::bool_>(obj) || py::isinstance(obj, py::module_::import("numpy").attr("bool_")))
    return TensorIndex::array(Tensor::scalar(obj.cast<bool>() ? 1.0 : 0.0, DType::Bool));
  if (!py::isinstance<py::array>(obj) && PyIndex_Check(obj.ptr())) {
    const Py_ssize_t i = PyNumber_AsSsize_t(obj.ptr(), PyExc_IndexError);
    if (i == -1 && PyErr_Occurred()) throw py::error_already_set();
    return TensorIndex::integer(i);
  }
  if (py::isinstance<py::list>(obj) && py::len(obj) == 0) return TensorIndex::array(Tensor::empty({0}, DType::Int64));
  if (py::isinstance<py::list>(obj) || py::isinstance<py::array>(obj)) return TensorIndex::array(to_tensor(obj));
  throw py::index_error("index: only integers, slices, None, Ellipsis, int64/bool tensors, lists and NumPy arrays "
                        "are valid indices, got " + std::string(py::str(py::type::of(obj).attr("__name__"))));
}

std::vector<TensorIndex> to_index(py::handle idx) {
  std::vector<TensorIndex> items;
  if (py::isinstance<py::tuple>(idx)) {
    for (py::handle it : idx) items.push_back(to_index_item(it));
  } else {
    items.push_back(to_index_item(idx));
  }
  return items;
}

std::vector<Tensor> to_tensor_list(py::handle seq, const char* op) {
  if (py::isinstance<Tensor>(seq) || !py::isinstance<py::sequence>(seq))
    throw py::type_error(std::string(op) + ": expected a list or tuple of tensors");
  std::vector<Tensor> xs;
  for (py::handle h : seq) xs.push_back(to_tensor(h));
  return xs;
}

}  // namespace

void bind_shape_ops(py::module_& m) {
  py::class_<Tensor> cls = tensor_class(m);

  cls.def("reshape", [](const Tensor& x, const py::args& args) { return reshape(x, shape_from_args(args)); },
          "A tensor of the given shape (one entry may be -1): a view when the layout allows, else a copy.");
  m.def("reshape", [](const Tensor& x, py::handle shape) { return reshape(x, to_shape(shape)); }, py::arg("x"),
        py::arg("shape"));
  cls.def("view", [](const Tensor& x, const py::args& args) { return view(x, shape_from_args(args)); },
          "A view with the given shape (one entry may be -1), sharing storage; RuntimeError when the "
          "layout needs a copy (use reshape then).");

  cls.def("transpose", &transpose, py::arg("a"), py::arg("b"), "Swaps axes a and b (a view).");
  m.def("transpose", &transpose, py::arg("x"), py::arg("a"), py::arg("b"));

  cls.def("permute", [](const Tensor& x, const py::args& args) { return permute(x, shape_from_args(args)); },
          "Reorders the axes (a view): result axis i is input axis dims[i].");
  m.def("permute", [](const Tensor& x, py::handle dims) { return permute(x, to_shape(dims)); }, py::arg("x"),
        py::arg("dims"));

  cls.def("flatten", &flatten, py::arg("start") = 0, py::arg("end") = -1,
          "Merges axes start..end (inclusive) into one.");
  m.def("flatten", &flatten, py::arg("x"), py::arg("start") = 0, py::arg("end") = -1);

  auto squeeze_fn = [](const Tensor& x, py::object axis) { return squeeze(x, to_axes(axis)); };
  cls.def("squeeze", squeeze_fn, py::arg("axis") = py::none(), "Removes size-1 axes (all when axis is None).");
  m.def("squeeze", squeeze_fn, py::arg("x"), py::arg("axis") = py::none());
  cls.def("unsqueeze", &unsqueeze, py::arg("axis"), "Inserts a size-1 axis.");
  m.def("unsqueeze", &unsqueeze, py::arg("x"), py::arg("axis"));

  cls.def("expand", [](const Tensor& x, const py::args& args) { return expand(x, shape_from_args(args)); },
          "A stride-0 broadcast view (-1 keeps a size); do not write to it.");
  m.def("expand", [](const Tensor& x, py::handle shape) { return expand(x, to_shape(shape)); }, py::arg("x"),
        py::arg("shape"));
  m.def("broadcast_to", [](const Tensor& x, py::handle shape) { return broadcast_to(x, to_shape(shape)); },
        py::arg("x"), py::arg("shape"));

  cls.def("contiguous", &contiguous, "The tensor itself when contiguous, else a contiguous copy.");
  m.def("contiguous", &contiguous, py::arg("x"));

  cls.def("__getitem__", [](const Tensor& x, py::handle idx) { return index(x, to_index(idx)); });
  cls.def("__setitem__", [](const Tensor& x, py::handle idx, py::handle value) {
    const std::vector<TensorIndex> items = to_index(idx);
    index_put_(x, items, to_tensor(value, &x));
  });

  m.def("concatenate", [](py::handle xs, int64_t axis) { return concatenate(to_tensor_list(xs, "concatenate"), axis); },
        py::arg("tensors"), py::arg("axis") = 0);
  m.def("stack", [](py::handle xs, int64_t axis) { return stack(to_tensor_list(xs, "stack"), axis); },
        py::arg("tensors"), py::arg("axis") = 0);
}

}  // namespace bindings
}  // namespace nablagrad
