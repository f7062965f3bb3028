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
  // The algorithm setting (kernels/conv2d/select.h); Python: nablagrad.backends.conv_algorithm.
  m.def("_conv_algorithm", [] { return std::string(kernels::conv_algorithm_name(kernels::conv_algorithm())); },
        "The convolution algorithm setting: 'auto', 'direct' or 'winograd'.");
  m.def(
      "_set_conv_algorithm",
      [](const std::string& name) { kernels::set_conv_algorithm(kernels::parse_conv_algorithm(name)); },
      py::arg("name"), "Sets the convolution algorithm ('auto', 'direct' or 'winograd'; else ValueError).");
  // Which kernel each pass would run for a shape now (SIMD level and algorithm setting in force).
  m.def(
      "_conv_algorithm_for",
      [](const std::vector<int64_t>& x_shape, const std::vector<int64_t>& w_shape, int64_t sh,
         int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr, const std::string& dtype) {
        if (x_shape.size() != 4 || w_shape.size() != 4)
          throw std::invalid_argument("_conv_algorithm_for: x_shape (N, H, W, C) and w_shape (Q, FH, FW, C) must have 4 sizes");
        const auto g = kernels::make_conv2d_geometry(x_shape[0], x_shape[1], x_shape[2], x_shape[3],
                                                     w_shape[0], w_shape[1], w_shape[2], w_shape[3],
                                                     sh, sw, pt, pb, pl, pr);
        kernels::ConvKernelChoice c{};
        if (dtype == "float32") c = kernels::conv_kernel_choice<float>(g);
        else if (dtype == "float64") c = kernels::conv_kernel_choice<double>(g);
        else throw std::invalid_argument("_conv_algorithm_for: dtype must be 'float32' or 'float64', got '" + dtype + "'");
        py::dict d;
        d["forward"] = c.forward;
        d["backward_input"] = c.backward_input;
        d["backward_weight"] = c.backward_weight;
        return d;
      },
      py::arg("x_shape"), py::arg("w_shape"), py::arg("stride_h"), py::arg("stride_w"),
      py::arg("pad_top"), py::arg("pad_bottom"), py::arg("pad_left"), py::arg("pad_right"),
      py::arg("dtype") = "float32");
}

}  // namespace bindings
}  // namespace nablagrad
