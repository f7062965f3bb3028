// Bindings of the conv ops (see common.h): conv2d, max_pool2d, avg_pool2d and the conv2d
// oracle used by the tests. Argument order is the one python/nablagrad/functional.py uses.
#include "common.h"

namespace nablagrad {
namespace bindings {

namespace {
Tensor optional_tensor(py::handle obj, const Tensor& like) {
  if (obj.is_none()) return Tensor();
  return to_tensor(obj, &like);
}
}  // namespace

void bind_conv_ops(py::module_& m) {
  m.def(
      "conv2d",
      [](const Tensor& x, const Tensor& w, py::handle bias, int64_t sh, int64_t sw, int64_t pt,
         int64_t pb, int64_t pl, int64_t pr) {
        const Tensor b = optional_tensor(bias, x);
        py::gil_scoped_release release;
        return conv2d(x, w, b, sh, sw, pt, pb, pl, pr);
      },
      py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("stride_h"), py::arg("stride_w"),
      py::arg("pad_top"), py::arg("pad_bottom"), py::arg("pad_left"), py::arg("pad_right"));
  m.def(
      "max_pool2d",
      [](const Tensor& x, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw) {
        py::gil_scoped_release release;
        return max_pool2d(x, kh, kw, sh, sw, ph, pw);
      },
      py::arg("x"), py::arg("kh"), py::arg("kw"), py::arg("stride_h"), py::arg("stride_w"),
      py::arg("pad_h"), py::arg("pad_w"));
  m.def(
      "avg_pool2d",
      [](const Tensor& x, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
         bool count_include_pad) {
        py::gil_scoped_release release;
        return avg_pool2d(x, kh, kw, sh, sw, ph, pw, count_include_pad);
      },
      py::arg("x"), py::arg("kh"), py::arg("kw"), py::arg("stride_h"), py::arg("stride_w"),
      py::arg("pad_h"), py::arg("pad_w"), py::arg("count_include_pad"));
  m.def(
      "conv2d_reference",
      [](const Tensor& x, const Tensor& w, py::handle bias, int64_t sh, int64_t sw, int64_t pt,
         int64_t pb, int64_t pl, int64_t pr) {
        const Tensor b = optional_tensor(bias, x);
        py::gil_scoped_release release;
        return conv2d_reference(x, w, b, sh, sw, pt, pb, pl, pr);
      },
      py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("stride_h"), py::arg("stride_w"),
      py::arg("pad_top"), py::arg("pad_bottom"), py::arg("pad_left"), py::arg("pad_right"));
  m.def(
      "conv2d_reference_backward",
      [](const Tensor& x, const Tensor& w, const Tensor& dy, int64_t sh, int64_t sw, int64_t pt,
         int64_t pb, int64_t pl, int64_t pr) {
        py::gil_scoped_release release;
        return conv2d_reference_backward(x, w, dy, sh, sw, pt, pb, pl, pr);
      },
      py::arg("x"), py::arg("weight"), py::arg("dy"), py::arg("stride_h"), py::arg("stride_w"),
      py::arg("pad_top"), py::arg("pad_bottom"), py::arg("pad_left"), py::arg("pad_right"));
}

}  // namespace bindings
}  // namespace nablagrad
