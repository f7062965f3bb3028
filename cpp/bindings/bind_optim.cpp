// Bindings of the in-place tensor ops (Tensor.add_, mul_, addcmul_, lerp_, ...) and of the
// fused optimizer steps (_core._sgd_step, _adam_step, _rmsprop_step) that nablagrad.optim
// calls once per parameter group.
#include <nablagrad/ops/inplace.h>
#include <nablagrad/optim/functional.h>

#include "common.h"

namespace nablagrad {
namespace bindings {
namespace {

/// A Python sequence of Tensors (None -> an undefined Tensor when allowed).
std::vector<Tensor> tensor_list(py::handle seq, const char* what, bool allow_none) {
  if (!py::isinstance<py::sequence>(seq))
    throw py::type_error(std::string(what) + " must be a list of tensors");
  std::vector<Tensor> out;
  for (py::handle item : seq) {
    if (item.is_none() && allow_none) {
      out.emplace_back();
    } else if (py::isinstance<Tensor>(item)) {
      out.push_back(item.cast<Tensor>());
    } else {
      throw py::type_error(std::string(what) + " must hold tensors, got " +
                           std::string(py::str(py::type::of(item).attr("__name__"))));
    }
  }
  return out;
}

/// A number argument (alpha, value, weight): int, float or a one-element tensor.
double number(py::handle obj, const char* op, const char* what) {
  if (py::isinstance<Tensor>(obj)) return obj.cast<Tensor>().item<double>();
  if (py::isinstance<py::float_>(obj) || py::isinstance<py::int_>(obj) || py::hasattr(obj, "__float__"))
    return obj.cast<double>();
  throw py::type_error(std::string(op) + ": " + what + " must be a number, got " +
                       std::string(py::str(py::type::of(obj).attr("__name__"))));
}

/// A bound of clamp_: None (no bound), a number or a tensor.
Tensor bound(py::handle obj, const Tensor& self) {
  if (obj.is_none()) return Tensor();
  return to_tensor(obj, &self);
}

}  // namespace

void bind_optim(py::module_& m) {
  auto cls = tensor_class(m);
  // In-place ops: each returns the tensor itself. Operands broadcast to self's shape.
  cls.def(
      "add_",
      [](const Tensor& self, py::handle other, py::handle alpha) {
        const Tensor o = to_tensor(other, &self);
        const double a = number(alpha, "add_", "alpha");
        return without_gil_if_large(self.numel(), [&] { return add_(self, o, a); });
      },
      py::arg("other"), py::kw_only(), py::arg("alpha") = 1, "self += alpha * other, in place.");
  cls.def(
      "sub_",
      [](const Tensor& self, py::handle other, py::handle alpha) {
        const Tensor o = to_tensor(other, &self);
        const double a = number(alpha, "sub_", "alpha");
        return without_gil_if_large(self.numel(), [&] { return sub_(self, o, a); });
      },
      py::arg("other"), py::kw_only(), py::arg("alpha") = 1, "self -= alpha * other, in place.");
  cls.def(
      "mul_",
      [](const Tensor& self, py::handle other) {
        const Tensor o = to_tensor(other, &self);
        return without_gil_if_large(self.numel(), [&] { return mul_(self, o); });
      },
      py::arg("other"), "self *= other, in place.");
  cls.def(
      "div_",
      [](const Tensor& self, py::handle other) {
        const Tensor o = to_tensor(other, &self);
        return without_gil_if_large(self.numel(), [&] { return div_(self, o); });
      },
      py::arg("other"), "self /= other (true division), in place.");
  cls.def(
      "addcmul_",
      [](const Tensor& self, py::handle t1, py::handle t2, py::handle value) {
        const Tensor a = to_tensor(t1, &self), b = to_tensor(t2, &self);
        const double v = number(value, "addcmul_", "value");
        return without_gil_if_large(self.numel(), [&] { return addcmul_(self, a, b, v); });
      },
      py::arg("tensor1"), py::arg("tensor2"), py::kw_only(), py::arg("value") = 1,
      "self += value * tensor1 * tensor2, in place.");
  cls.def(
      "addcdiv_",
      [](const Tensor& self, py::handle t1, py::handle t2, py::handle value) {
        const Tensor a = to_tensor(t1, &self), b = to_tensor(t2, &self);
        const double v = number(value, "addcdiv_", "value");
        return without_gil_if_large(self.numel(), [&] { return addcdiv_(self, a, b, v); });
      },
      py::arg("tensor1"), py::arg("tensor2"), py::kw_only(), py::arg("value") = 1,
      "self += value * tensor1 / tensor2, in place.");
  cls.def(
      "lerp_",
      [](const Tensor& self, py::handle end, py::handle weight) {
        const Tensor e = to_tensor(end, &self);
        if (py::isinstance<Tensor>(weight)) {
          const Tensor w = weight.cast<Tensor>();
          return without_gil_if_large(self.numel(), [&] { return lerp_(self, e, w); });
        }
        const double w = number(weight, "lerp_", "weight");
        return without_gil_if_large(self.numel(), [&] { return lerp_(self, e, w); });
      },
      py::arg("end"), py::arg("weight"), "self += weight * (end - self), in place.");
  cls.def(
      "clamp_",
      [](const Tensor& self, py::handle lo, py::handle hi) {
        const Tensor l = bound(lo, self), h = bound(hi, self);
        return without_gil_if_large(self.numel(), [&] { return clamp_(self, l, h); });
      },
      py::arg("min") = py::none(), py::arg("max") = py::none(),
      "Clamps to [min, max] in place (None: no bound; min > max gives max, as PyTorch).");
  cls.def(
      "fill_",
      [](const Tensor& self, py::handle value) {
        if (py::isinstance<Tensor>(value)) return fill_(self, value.cast<Tensor>());
        return fill_(self, number(value, "fill_", "value"));
      },
      py::arg("value"), "Sets every element to value, in place.");
  cls.def("zero_", [](const Tensor& self) { return zero_(self); }, "Sets every element to zero, in place.");

  // Fused optimizer steps: one call per parameter group, the GIL released while it runs.
  m.def(
      "_sgd_step",
      [](py::handle params, py::handle grads, py::handle bufs, double lr, double momentum, double dampening,
         double weight_decay, bool nesterov) {
        const std::vector<Tensor> p = tensor_list(params, "params", false), g = tensor_list(grads, "grads", false);
        std::vector<Tensor> b = tensor_list(bufs, "momentum_buffers", true);
        {
          py::gil_scoped_release release;
          optim::sgd_step(p, g, b, {lr, momentum, dampening, weight_decay, nesterov});
        }
        py::list out;
        for (const Tensor& t : b) out.append(t.defined() ? py::cast(t) : py::none());
        return out;
      },
      py::arg("params"), py::arg("grads"), py::arg("momentum_buffers"), py::arg("lr"), py::arg("momentum"),
      py::arg("dampening"), py::arg("weight_decay"), py::arg("nesterov"),
      "One fused SGD step; returns the momentum buffers (created on the first step).");
  m.def(
      "_adam_step",
      [](py::handle params, py::handle grads, py::handle exp_avgs, py::handle exp_avg_sqs, py::handle steps, double lr,
         double beta1, double beta2, double eps, double weight_decay, bool decoupled) {
        const std::vector<Tensor> p = tensor_list(params, "params", false), g = tensor_list(grads, "grads", false),
                                  m1 = tensor_list(exp_avgs, "exp_avgs", false),
                                  m2 = tensor_list(exp_avg_sqs, "exp_avg_sqs", false),
                                  s = tensor_list(steps, "steps", false);
        py::gil_scoped_release release;
        optim::adam_step(p, g, m1, m2, s, {lr, beta1, beta2, eps, weight_decay, decoupled});
      },
      py::arg("params"), py::arg("grads"), py::arg("exp_avgs"), py::arg("exp_avg_sqs"), py::arg("steps"),
      py::arg("lr"), py::arg("beta1"), py::arg("beta2"), py::arg("eps"), py::arg("weight_decay"),
      py::arg("decoupled_weight_decay"), "One fused Adam / AdamW step over lists of tensors.");
  m.def(
      "_rmsprop_step",
      [](py::handle params, py::handle grads, py::handle square_avgs, py::handle bufs, py::handle steps, double lr,
         double alpha, double eps, double weight_decay, double momentum) {
        const std::vector<Tensor> p = tensor_list(params, "params", false), g = tensor_list(grads, "grads", false),
                                  sq = tensor_list(square_avgs, "square_avgs", false),
                                  b = tensor_list(bufs, "momentum_buffers", true), s = tensor_list(steps, "steps", false);
        py::gil_scoped_release release;
        optim::rmsprop_step(p, g, sq, b, s, {lr, alpha, eps, weight_decay, momentum});
      },
      py::arg("params"), py::arg("grads"), py::arg("square_avgs"), py::arg("momentum_buffers"), py::arg("steps"),
      py::arg("lr"), py::arg("alpha"), py::arg("eps"), py::arg("weight_decay"), py::arg("momentum"),
      "One fused RMSprop step over lists of tensors.");
}

}  // namespace bindings
}  // namespace nablagrad
