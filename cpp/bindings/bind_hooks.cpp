// Autograd hooks for Python: Tensor.register_post_accumulate_grad_hook (the engine's
// grad-ready hook, autograd.h), _queue_backward_callback, and _bump_version (an in-place
// write done outside the engine, e.g. by MPI into a tensor's buffer, must still bump the
// version counter that backward checks). nablagrad.nn.parallel builds data parallelism on these.
#include <cstdint>
#include <memory>

#include "common.h"

namespace nablagrad {
namespace bindings {
namespace {

/// A Python callable owned from C++: backward() runs with the GIL released, so the callable
/// is called, and finally destroyed, with the GIL taken.
std::shared_ptr<py::function> own(py::function fn) {
  return std::shared_ptr<py::function>(new py::function(std::move(fn)), [](py::function* p) {
    py::gil_scoped_acquire gil;
    delete p;
  });
}

/// What register_post_accumulate_grad_hook returns: `handle.remove()` unregisters the hook.
struct GradHookHandle {
  uint64_t id;
  bool remove() const { return remove_grad_ready_hook(id); }
};

}  // namespace

void bind_hooks(py::module_& m) {
  py::class_<GradHookHandle>(m, "GradHookHandle", "Handle of a grad-ready hook; remove() unregisters it.")
      .def_readonly("id", &GradHookHandle::id)
      .def("remove", &GradHookHandle::remove, "Unregisters the hook; False when it was already removed.");
  tensor_class(m).def(
      "register_post_accumulate_grad_hook",
      [](const Tensor& t, py::function fn) {
        std::shared_ptr<py::function> f = own(std::move(fn));
        return GradHookHandle{register_grad_ready_hook(t, [f](const Tensor& leaf) {
          py::gil_scoped_acquire gil;
          (*f)(leaf);  // the leaf's own Python object (identity table)
        })};
      },
      py::arg("hook"),
      "Calls hook(tensor) once per backward() that accumulates into this leaf, as soon as its\n"
      ".grad is final for that pass (after its last accumulation, even when the leaf is used\n"
      "several times in the graph), while backward continues with the rest of the graph.\n"
      "Returns a handle whose remove() unregisters the hook.");
  m.def(
      "_queue_backward_callback",
      [](py::function fn) {
        std::shared_ptr<py::function> f = own(std::move(fn));
        queue_backward_callback([f] {
          py::gil_scoped_acquire gil;
          (*f)();
        });
      },
      py::arg("callback"),
      "Runs callback() once when the backward() running on this thread has finished (call it from a hook).");
  m.def(
      "_bump_version", [](const Tensor& t) { t.bump_version(); }, py::arg("tensor"),
      "Marks the tensor's storage as written in place (autograd's saved-tensor check sees it).");
}

}  // namespace bindings
}  // namespace nablagrad
