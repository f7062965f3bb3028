// Bindings of the nn ops (ops/nn.h): softmax, log_softmax, linear, layer_norm, dropout and
// the losses. Argument order matches python/nablagrad/functional.py, which calls these.
#include "common.h"

namespace nablagrad {
namespace bindings {

namespace {

/// None -> undefined Tensor (an absent optional argument), else the Tensor itself.
Tensor optional_tensor(py::handle obj, const char* op, const char* name) {
  if (obj.is_none()) return Tensor();
  if (!py::isinstance<Tensor>(obj))
    throw py::type_error(std::string(op) + ": " + name + " must be a Tensor or None, got " +
                         std::string(py::str(py::type::handle_of(obj).attr("__name__"))));
  return obj.cast<Tensor>();
}

/// Loss targets may be NumPy arrays or nested lists as well as Tensors.
Tensor target_tensor(py::handle obj, const Tensor& like) {
  if (py::isinstance<Tensor>(obj)) return obj.cast<Tensor>();
  return to_tensor(obj, &like);
}

}  // namespace

void bind_nn_ops(py::module_& m) {
  m.def(
      "softmax",
      [](const Tensor& x, int64_t axis) {
        py::gil_scoped_release release;
        return softmax(x, axis);
      },
      py::arg("x"), py::arg("axis") = -1, "exp(x) / sum(exp(x)) along axis, max-shifted.");
  m.def(
      "log_softmax",
      [](const Tensor& x, int64_t axis) {
        py::gil_scoped_release release;
        return log_softmax(x, axis);
      },
      py::arg("x"), py::arg("axis") = -1, "x - logsumexp(x) along axis.");
  m.def(
      "linear",
      [](const Tensor& x, const Tensor& weight, py::object bias) {
        const Tensor b = optional_tensor(bias, "linear", "bias");
        py::gil_scoped_release release;
        return linear(x, weight, b);
      },
      py::arg("x"), py::arg("weight"), py::arg("bias") = py::none(),
      "x @ weight.T + bias with weight (out_features, in_features).");
  m.def(
      "layer_norm",
      [](const Tensor& x, const std::vector<int64_t>& normalized_shape, py::object weight, py::object bias,
         double eps) {
        const Tensor w = optional_tensor(weight, "layer_norm", "weight");
        const Tensor b = optional_tensor(bias, "layer_norm", "bias");
        py::gil_scoped_release release;
        return layer_norm(x, normalized_shape, w, b, eps);
      },
      py::arg("x"), py::arg("normalized_shape"), py::arg("weight") = py::none(), py::arg("bias") = py::none(),
      py::arg("eps") = 1e-5, "Layer normalisation over the trailing normalized_shape dims.");
  m.def(
      "dropout",
      [](const Tensor& x, double p) {
        py::gil_scoped_release release;
        return dropout(x, p);
      },
      py::arg("x"), py::arg("p"), "Training-mode dropout with the seeded default generator.");
  m.def(
      "mse_loss",
      [](const Tensor& pred, py::handle target, const std::string& reduction) {
        const Tensor t = target_tensor(target, pred);
        const Reduction red = parse_reduction(reduction, "mse_loss");
        py::gil_scoped_release release;
        return mse_loss(pred, t, red);
      },
      py::arg("pred"), py::arg("target"), py::arg("reduction") = "mean");
  m.def(
      "cross_entropy",
      [](const Tensor& logits, py::handle labels, const std::string& reduction) {
        const Tensor l = py::isinstance<Tensor>(labels) ? labels.cast<Tensor>() : to_tensor(labels);
        const Reduction red = parse_reduction(reduction, "cross_entropy");
        py::gil_scoped_release release;
        return cross_entropy(logits, l, red);
      },
      py::arg("logits"), py::arg("labels"), py::arg("reduction") = "mean");
  m.def(
      "nll_loss",
      [](const Tensor& log_probs, py::handle labels, const std::string& reduction) {
        const Tensor l = py::isinstance<Tensor>(labels) ? labels.cast<Tensor>() : to_tensor(labels);
        const Reduction red = parse_reduction(reduction, "nll_loss");
        py::gil_scoped_release release;
        return nll_loss(log_probs, l, red);
      },
      py::arg("log_probs"), py::arg("labels"), py::arg("reduction") = "mean");
  m.def(
      "binary_cross_entropy_with_logits",
      [](const Tensor& logits, py::handle target, const std::string& reduction) {
        const Tensor t = target_tensor(target, logits);
        const Reduction red = parse_reduction(reduction, "binary_cross_entropy_with_logits");
        py::gil_scoped_release release;
        return binary_cross_entropy_with_logits(logits, t, red);
      },
      py::arg("logits"), py::arg("target"), py::arg("reduction") = "mean");
}

}  // namespace bindings
}  // namespace nablagrad
