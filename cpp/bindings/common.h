// Shared helpers of the binding translation units (cpp/bindings/*.cpp). Bindings only bind:
// argument conversion from Python objects, then one call into the C++ core.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <nablagrad/kernels/simd.h>
#include <nablagrad/nablagrad.h>

// ---------------------------------------------------------------------------------------
// Tensor identity (as PyTorch's "pyobj slot", kept here so the core knows nothing of Python):
// while a Python wrapper of a TensorImpl is alive, every Tensor handle to that impl returned
// to Python is that same object (`m.weight is m.weight`, a Parameter subclass instance comes
// back as itself). The side table (bind_identity.cpp) maps TensorImpl* -> wrapper; it is only
// touched with the GIL held. Entries are added when a wrapper is made (the type_caster below,
// Tensor.__init__) and removed by the wrapper's holder when Python deallocates it.
// ---------------------------------------------------------------------------------------
namespace nablagrad {
namespace bindings {
namespace identity {
/// The live wrapper of `impl` (borrowed reference), or nullptr.
PyObject* find(const TensorImpl* impl) noexcept;
/// Makes `wrapper` (a Tensor instance, or an instance of a Python subclass) the wrapper of
/// its TensorImpl, replacing any previous one.
void remember(pybind11::handle wrapper);
/// Called by a wrapper's holder on deallocation: drops the entry if it still names `value`.
void forget(const void* key, const void* value) noexcept;
/// Number of live entries (tests).
std::size_t size() noexcept;
}  // namespace identity

/// Holder of the Tensor inside its Python wrapper: owns it like std::unique_ptr and
/// unregisters the wrapper from the identity table when Python deallocates it.
template <typename T>
class TensorHolder {
 public:
  using element_type = T;
  TensorHolder() = default;
  explicit TensorHolder(T* p) : p_(p) {}
  TensorHolder(TensorHolder&& o) noexcept : p_(std::move(o.p_)), key_(o.key_) { o.key_ = nullptr; }
  TensorHolder(const TensorHolder&) = delete;
  TensorHolder& operator=(const TensorHolder&) = delete;
  TensorHolder& operator=(TensorHolder&&) = delete;
  ~TensorHolder() {
    if (key_) identity::forget(key_, p_.get());
  }
  T* get() const { return p_.get(); }
  const void* key() const { return key_; }
  void set_key(const void* k) { key_ = k; }

 private:
  std::unique_ptr<T> p_;
  const void* key_ = nullptr;  // the TensorImpl this wrapper is registered under
};

}  // namespace bindings
}  // namespace nablagrad

PYBIND11_DECLARE_HOLDER_TYPE(T, nablagrad::bindings::TensorHolder<T>)

namespace pybind11 {
namespace detail {
/// Tensor -> Python: the live wrapper of the same TensorImpl when there is one, else a new
/// wrapper (a copy of the handle: Tensors are cheap shared handles) entered in the table.
template <>
class type_caster<nablagrad::Tensor> : public type_caster_base<nablagrad::Tensor> {
  using Base = type_caster_base<nablagrad::Tensor>;

 public:
  static handle cast(const nablagrad::Tensor& src, return_value_policy, handle parent) {
    if (src.defined())
      if (PyObject* o = nablagrad::bindings::identity::find(src.impl_ptr().get())) return handle(o).inc_ref();
    handle h = Base::cast(src, return_value_policy::copy, parent);
    if (h && src.defined()) nablagrad::bindings::identity::remember(h);
    return h;
  }
  static handle cast(nablagrad::Tensor&& src, return_value_policy, handle parent) {
    // A fresh op result is the only handle to its impl (use_count 1): no wrapper can exist.
    if (src.defined() && src.impl_ptr().use_count() > 1)
      if (PyObject* o = nablagrad::bindings::identity::find(src.impl_ptr().get())) return handle(o).inc_ref();
    const bool defined = src.defined();
    handle h = Base::cast(std::move(src), return_value_policy::move, parent);
    if (h && defined) nablagrad::bindings::identity::remember(h);
    return h;
  }
  static handle cast(const nablagrad::Tensor* src, return_value_policy policy, handle parent) {
    if (!src) return Base::cast(src, policy, parent);
    return cast(*src, policy, parent);
  }
};
}  // namespace detail
}  // namespace pybind11

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
void bind_layers(py::module_& m);  // bind_layers.cpp: the _core.nn submodule (C++ layers)
void bind_rnn(py::module_& m);  // bind_rnn.cpp: _core.nn.RNN/LSTM/GRU and the fused layer ops
void bind_identity(py::module_& m);  // bind_identity.cpp: Tensor identity helpers
void bind_optim(py::module_& m);  // bind_optim.cpp: in-place ops and fused optimizer steps
void bind_attention(py::module_& m);  // bind_attention.cpp: scaled_dot_product_attention, _core.nn.MultiheadAttention
void bind_dlpack(py::module_& m);  // bind_dlpack.cpp: Tensor.__dlpack__, _from_dlpack_capsule
void bind_hooks(py::module_& m);  // bind_hooks.cpp: grad-ready hooks, backward callbacks, _bump_version

}  // namespace bindings
}  // namespace nablagrad
