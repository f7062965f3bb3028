// Shared helpers of the binding translation units (cpp/bindings/*.cpp). Bindings only bind:
// argument conversion from Python objects, then one call into the C++ core.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <nablagrad/kernels/simd.h>
#include <nablagrad/nablagrad.h>

namespace nablagrad {
namespace bindings {

namespace py = pybind11;

/// Python scalar / NumPy array / nested list / Tensor -> Tensor. Python scalars take the
/// dtype that never widens `like` (PyTorch's rule); arrays keep their own dtype.
Tensor to_tensor(py::handle obj, const Tensor* like = nullptr);

/// None -> {} (all axes); int -> {int}; sequence -> list.
std::vector<int64_t> to_axes(py::handle axis);

/// dtype argument: nablagrad dtype, NumPy dtype or type, or a string like "float32".
DType to_dtype(py::handle obj);

/// Shape argument: a sequence of ints or ints passed as *args.
Shape to_shape(py::handle obj);

/// NumPy array sharing the tensor's memory.
py::array to_numpy(const Tensor& t);

/// Runs fn() with the GIL released when the op touches at least this many elements, so
/// other Python threads keep running; small ops keep it (releasing costs ~0.1 us).
constexpr int64_t kGilFreeElements = int64_t{1} << 16;

template <typename F>
inline auto without_gil_if_large(int64_t elements, F&& fn) -> decltype(fn()) {
  if (elements >= kGilFreeElements) {
    py::gil_scoped_release release;
    return fn();
  }
  return fn();
}

/// The Python class object of Tensor, to add methods from other translation units.
inline py::class_<Tensor> tensor_class(py::module_& m) {
  return py::reinterpret_borrow<py::class_<Tensor>>(m.attr("Tensor"));
}

// Each translation unit binds one group of ops; module.cpp calls these in order.
void bind_tensor(py::module_& m);
void bind_math_ops(py::module_& m);
void bind_shape_ops(py::module_& m);
void bind_nn_ops(py::module_& m);
void bind_conv_ops(py::module_& m);

}  // namespace bindings
}  // namespace nablagrad
