// Bindings of the C++ layers (layer.h, layers/*.h) as the submodule _core.nn. The Python
// package's nablagrad.nn wraps these in Module classes; the tensors returned by
// named_parameters()/named_buffers() are the layers' own (writes through them, e.g.
// Tensor.copy_, are seen by the next forward). Constructor keywords use PyTorch's spelling.
#include "common.h"

namespace nablagrad {
namespace bindings {

namespace {

using LayerPtr = std::shared_ptr<nn::Layer>;

std::string type_name(py::handle obj) { return std::string(py::str(py::type::handle_of(obj).attr("__name__"))); }

int64_t int_arg(py::handle obj, const char* who, const char* name) {
  if (py::isinstance<py::bool_>(obj) || !(py::isinstance<py::int_>(obj) || py::hasattr(obj, "__index__")))
    throw py::type_error(std::string(who) + ": " + name + " must be an int or a pair of ints, got " + type_name(obj));
  return py::int_(py::reinterpret_borrow<py::object>(obj)).cast<int64_t>();
}

/// int -> (v, v); a sequence of two ints -> (h, w).
nn::Pair2 pair_arg(py::handle obj, const char* who, const char* name) {
  if (py::isinstance<py::sequence>(obj) && !py::isinstance<py::str>(obj)) {
    const py::sequence seq = py::reinterpret_borrow<py::sequence>(obj);
    if (seq.size() != 2)
      throw py::value_error(std::string(who) + ": " + name + " must be an int or a pair of ints, got " +
                            std::string(py::repr(obj)));
    return nn::Pair2(int_arg(seq[0], who, name), int_arg(seq[1], who, name));
  }
  return nn::Pair2(int_arg(obj, who, name));
}

py::tuple pair_tuple(const nn::Pair2& p) { return py::make_tuple(p.h, p.w); }

DType dtype_arg(py::handle obj) { return obj.is_none() ? DType::Float32 : to_dtype(obj); }

std::string activation_arg(py::handle obj, const char* who) {
  if (obj.is_none()) return "";
  if (!py::isinstance<py::str>(obj))
    throw py::type_error(std::string(who) + ": activation must be a str or None, got " + type_name(obj));
  return obj.cast<std::string>();
}

Shape shape_arg(py::handle obj, const char* who) {
  try {
    return to_shape(obj);
  } catch (const py::type_error& e) {
    throw py::type_error(std::string(who) + ": normalized_shape: " + e.what());
  }
}

Tensor forward_of(nn::Layer& layer, const Tensor& x) {
  return without_gil_if_large(x.numel(), [&] { return layer.forward(x); });
}

py::object optional_tensor(const Tensor& t) { return t.defined() ? py::cast(t) : py::none(); }

}  // namespace

void bind_layers(py::module_& m) {
  py::module_ nnm = m.def_submodule("nn", "C++ layers (layer.h, layers/*.h); nablagrad.nn wraps them in Modules.");

  py::class_<nn::Layer, LayerPtr>(nnm, "Layer",
                                  "Base of the C++ layers: named parameters, buffers and children, "
                                  "train/eval, zero_grad, to(dtype).")
      .def("forward", &forward_of, py::arg("x"), "The layer's computation (recorded for autograd).")
      .def("__call__", &forward_of, py::arg("x"))
      .def(
          "named_parameters", [](const nn::Layer& l, bool recurse) { return l.named_parameters(recurse); },
          py::arg("recurse") = true, "[(dotted name, Tensor)], this layer's own first, then each child's.")
      .def(
          "parameters", [](const nn::Layer& l, bool recurse) { return l.parameters(recurse); },
          py::arg("recurse") = true)
      .def(
          "named_buffers", [](const nn::Layer& l, bool recurse) { return l.named_buffers(recurse); },
          py::arg("recurse") = true, "[(dotted name, Tensor)] of the non-trainable state.")
      .def("buffers", [](const nn::Layer& l, bool recurse) { return l.buffers(recurse); }, py::arg("recurse") = true)
      .def("named_children", [](const nn::Layer& l) { return l.named_children(); }, "[(name, Layer)] direct sub-layers.")
      .def("named_modules", [](nn::Layer& l) { return l.named_modules(); },
           "[(dotted name, Layer)], the layer itself first under ''.")
      .def(
          "train", [](LayerPtr self, bool mode) { self->train(mode); return self; }, py::arg("mode") = true,
          "Training mode (or evaluation with mode=False) for this layer and its sub-layers; returns self.")
      .def("eval", [](LayerPtr self) { self->eval(); return self; }, "Evaluation mode; returns self.")
      .def("is_training", &nn::Layer::is_training)
      .def_property_readonly("training", &nn::Layer::is_training)
      .def("zero_grad", &nn::Layer::zero_grad, "Every parameter's .grad back to None.")
      .def(
          "to", [](LayerPtr self, py::handle dtype) { self->to(to_dtype(dtype)); return self; }, py::arg("dtype"),
          "Converts parameters and float buffers in place (the same Tensor objects); returns self.")
      .def("extra_repr", &nn::Layer::extra_repr)
      .def("__repr__", &nn::Layer::repr);

  py::class_<nn::Linear, nn::Layer, std::shared_ptr<nn::Linear>>(nnm, "Linear", "y = f(x @ weight.T + bias).")
      .def(py::init([](int64_t in_features, int64_t out_features, bool bias, py::object activation, py::object dtype) {
             return std::make_shared<nn::Linear>(nn::LinearOptions(in_features, out_features)
                                                     .bias(bias)
                                                     .activation(activation_arg(activation, "Linear"))
                                                     .dtype(dtype_arg(dtype)));
           }),
           py::arg("in_features"), py::arg("out_features"), py::arg("bias") = true,
           py::arg("activation") = py::none(), py::arg("dtype") = py::none())
      .def_property_readonly("in_features", [](const nn::Linear& l) { return l.options().in_features(); })
      .def_property_readonly("out_features", [](const nn::Linear& l) { return l.options().out_features(); })
      .def_property_readonly("weight", [](const nn::Linear& l) { return l.weight; })
      .def_property_readonly("bias", [](const nn::Linear& l) { return optional_tensor(l.bias); });

  py::class_<nn::Conv2D, nn::Layer, std::shared_ptr<nn::Conv2D>>(
      nnm, "Conv2d", "2-D convolution, NHWC: x (N, H, W, C), weight (Q, FH, FW, C).")
      .def(py::init([](int64_t in_channels, int64_t out_channels, py::handle kernel_size, py::handle stride,
                       py::handle padding, bool bias, py::object activation, py::object dtype) {
             nn::Conv2dOptions o(in_channels, out_channels, pair_arg(kernel_size, "Conv2d", "kernel_size"));
             o.stride(pair_arg(stride, "Conv2d", "stride")).bias(bias);
             if (py::isinstance<py::str>(padding))
               o.padding(nn::Conv2dPadding(padding.cast<std::string>()));
             else
               o.padding(nn::Conv2dPadding(pair_arg(padding, "Conv2d", "padding")));
             o.activation(activation_arg(activation, "Conv2d")).dtype(dtype_arg(dtype));
             return std::make_shared<nn::Conv2D>(o);
           }),
           py::arg("in_channels"), py::arg("out_channels"), py::arg("kernel_size"), py::arg("stride") = 1,
           py::arg("padding") = 0, py::arg("bias") = true, py::arg("activation") = py::none(),
           py::arg("dtype") = py::none())
      .def_property_readonly("in_channels", [](const nn::Conv2D& l) { return l.options().in_channels(); })
      .def_property_readonly("out_channels", [](const nn::Conv2D& l) { return l.options().out_channels(); })
      .def_property_readonly("kernel_size", [](const nn::Conv2D& l) { return pair_tuple(l.options().kernel_size()); })
      .def_property_readonly("stride", [](const nn::Conv2D& l) { return pair_tuple(l.options().stride()); })
      .def_property_readonly("padding",
                             [](const nn::Conv2D& l) -> py::object {
                               const nn::Conv2dPadding& p = l.options().padding();
                               if (p.mode == nn::Conv2dPadding::Mode::Same) return py::str("same");
                               if (p.mode == nn::Conv2dPadding::Mode::Valid) return py::str("valid");
                               return pair_tuple(p.size);
                             })
      .def_property_readonly("weight", [](const nn::Conv2D& l) { return l.weight; })
      .def_property_readonly("bias", [](const nn::Conv2D& l) { return optional_tensor(l.bias); });

  py::class_<nn::Sequential, nn::Layer, std::shared_ptr<nn::Sequential>>(nnm, "Sequential",
                                                                        "Layers applied in order, named '0', '1', ...")
      .def(py::init([](const std::vector<LayerPtr>& layers) {
             for (const auto& l : layers)
               if (!l) throw py::type_error("Sequential: layers cannot be None");
             return std::make_shared<nn::Sequential>(layers);
           }),
           py::arg("layers") = std::vector<LayerPtr>())
      .def(
          "append", [](std::shared_ptr<nn::Sequential> self, LayerPtr layer) {
            if (!layer) throw py::type_error("Sequential.append: layer cannot be None");
            self->push_back(std::move(layer));
            return self;
          },
          py::arg("layer"))
      .def("__len__", &nn::Sequential::size)
      .def("__getitem__", [](const nn::Sequential& s, int64_t i) { return s[i]; }, py::arg("index"));

  py::class_<nn::ReLU, nn::Layer, std::shared_ptr<nn::ReLU>>(nnm, "ReLU").def(py::init<>());
  py::class_<nn::Sigmoid, nn::Layer, std::shared_ptr<nn::Sigmoid>>(nnm, "Sigmoid").def(py::init<>());
  py::class_<nn::Tanh, nn::Layer, std::shared_ptr<nn::Tanh>>(nnm, "Tanh").def(py::init<>());
  py::class_<nn::GELU, nn::Layer, std::shared_ptr<nn::GELU>>(nnm, "GELU")
      .def(py::init<const std::string&>(), py::arg("approximate") = "none")
      .def_property_readonly("approximate", &nn::GELU::approximate);
  py::class_<nn::Softmax, nn::Layer, std::shared_ptr<nn::Softmax>>(nnm, "Softmax")
      .def(py::init<int64_t>(), py::arg("dim") = -1)
      .def_property_readonly("dim", &nn::Softmax::dim);
  py::class_<nn::LeakyReLU, nn::Layer, std::shared_ptr<nn::LeakyReLU>>(nnm, "LeakyReLU")
      .def(py::init<double>(), py::arg("negative_slope") = 0.01)
      .def_property_readonly("negative_slope", &nn::LeakyReLU::negative_slope);

  py::class_<nn::MaxPool2D, nn::Layer, std::shared_ptr<nn::MaxPool2D>>(nnm, "MaxPool2d", "Max pooling, NHWC.")
      .def(py::init([](py::handle kernel_size, py::handle stride, py::handle padding) {
             nn::MaxPool2dOptions o(pair_arg(kernel_size, "MaxPool2d", "kernel_size"));
             if (!stride.is_none()) o.stride(pair_arg(stride, "MaxPool2d", "stride"));
             o.padding(pair_arg(padding, "MaxPool2d", "padding"));
             return std::make_shared<nn::MaxPool2D>(o);
           }),
           py::arg("kernel_size"), py::arg("stride") = py::none(), py::arg("padding") = 0)
      .def_property_readonly("kernel_size", [](const nn::MaxPool2D& l) { return pair_tuple(l.options().kernel_size()); })
      .def_property_readonly("stride", [](const nn::MaxPool2D& l) { return pair_tuple(l.stride()); })
      .def_property_readonly("padding", [](const nn::MaxPool2D& l) { return pair_tuple(l.options().padding()); });
  py::class_<nn::AvgPool2D, nn::Layer, std::shared_ptr<nn::AvgPool2D>>(nnm, "AvgPool2d", "Average pooling, NHWC.")
      .def(py::init([](py::handle kernel_size, py::handle stride, py::handle padding, bool count_include_pad) {
             nn::AvgPool2dOptions o(pair_arg(kernel_size, "AvgPool2d", "kernel_size"));
             if (!stride.is_none()) o.stride(pair_arg(stride, "AvgPool2d", "stride"));
             o.padding(pair_arg(padding, "AvgPool2d", "padding")).count_include_pad(count_include_pad);
             return std::make_shared<nn::AvgPool2D>(o);
           }),
           py::arg("kernel_size"), py::arg("stride") = py::none(), py::arg("padding") = 0,
           py::arg("count_include_pad") = true)
      .def_property_readonly("kernel_size", [](const nn::AvgPool2D& l) { return pair_tuple(l.options().kernel_size()); })
      .def_property_readonly("stride", [](const nn::AvgPool2D& l) { return pair_tuple(l.stride()); })
      .def_property_readonly("padding", [](const nn::AvgPool2D& l) { return pair_tuple(l.options().padding()); })
      .def_property_readonly("count_include_pad", [](const nn::AvgPool2D& l) { return l.options().count_include_pad(); });

  py::class_<nn::Flatten, nn::Layer, std::shared_ptr<nn::Flatten>>(nnm, "Flatten")
      .def(py::init<int64_t, int64_t>(), py::arg("start_dim") = 1, py::arg("end_dim") = -1)
      .def_property_readonly("start_dim", &nn::Flatten::start_dim)
      .def_property_readonly("end_dim", &nn::Flatten::end_dim);
  py::class_<nn::Dropout, nn::Layer, std::shared_ptr<nn::Dropout>>(nnm, "Dropout")
      .def(py::init<double>(), py::arg("p") = 0.5)
      .def_property_readonly("p", &nn::Dropout::p);

  py::class_<nn::LayerNorm, nn::Layer, std::shared_ptr<nn::LayerNorm>>(nnm, "LayerNorm",
                                                                      "Normalisation over the trailing dims.")
      .def(py::init([](py::handle normalized_shape, double eps, bool elementwise_affine, py::object dtype) {
             return std::make_shared<nn::LayerNorm>(nn::LayerNormOptions(shape_arg(normalized_shape, "LayerNorm"))
                                                        .eps(eps)
                                                        .elementwise_affine(elementwise_affine)
                                                        .dtype(dtype_arg(dtype)));
           }),
           py::arg("normalized_shape"), py::arg("eps") = 1e-5, py::arg("elementwise_affine") = true,
           py::arg("dtype") = py::none())
      .def_property_readonly("normalized_shape",
                             [](const nn::LayerNorm& l) { return py::tuple(py::cast(l.options().normalized_shape())); })
      .def_property_readonly("eps", [](const nn::LayerNorm& l) { return l.options().eps(); })
      .def_property_readonly("elementwise_affine", [](const nn::LayerNorm& l) { return l.options().elementwise_affine(); })
      .def_property_readonly("weight", [](const nn::LayerNorm& l) { return optional_tensor(l.weight); })
      .def_property_readonly("bias", [](const nn::LayerNorm& l) { return optional_tensor(l.bias); });

  py::class_<nn::BatchNorm2D, nn::Layer, std::shared_ptr<nn::BatchNorm2D>>(
      nnm, "BatchNorm2d", "Batch normalisation over (N, H, W) of NHWC input, per channel (last axis).")
      .def(py::init([](int64_t num_features, double eps, std::optional<double> momentum, bool affine,
                       bool track_running_stats, py::object dtype) {
             nn::BatchNorm2dOptions o(num_features);
             o.eps(eps).momentum(momentum).affine(affine).track_running_stats(track_running_stats).dtype(dtype_arg(dtype));
             return std::make_shared<nn::BatchNorm2D>(o);
           }),
           py::arg("num_features"), py::arg("eps") = 1e-5, py::arg("momentum") = 0.1, py::arg("affine") = true,
           py::arg("track_running_stats") = true, py::arg("dtype") = py::none())
      .def_property_readonly("num_features", [](const nn::BatchNorm2D& l) { return l.options().num_features(); })
      .def_property_readonly("eps", [](const nn::BatchNorm2D& l) { return l.options().eps(); })
      .def_property_readonly("momentum", [](const nn::BatchNorm2D& l) { return l.options().momentum(); })
      .def_property_readonly("affine", [](const nn::BatchNorm2D& l) { return l.options().affine(); })
      .def_property_readonly("track_running_stats",
                             [](const nn::BatchNorm2D& l) { return l.options().track_running_stats(); })
      .def_property_readonly("weight", [](const nn::BatchNorm2D& l) { return optional_tensor(l.weight); })
      .def_property_readonly("bias", [](const nn::BatchNorm2D& l) { return optional_tensor(l.bias); })
      .def_property_readonly("running_mean", [](const nn::BatchNorm2D& l) { return optional_tensor(l.running_mean); })
      .def_property_readonly("running_var", [](const nn::BatchNorm2D& l) { return optional_tensor(l.running_var); })
      .def_property_readonly("num_batches_tracked",
                             [](const nn::BatchNorm2D& l) { return optional_tensor(l.num_batches_tracked); });

  py::class_<nn::Embedding, nn::Layer, std::shared_ptr<nn::Embedding>>(nnm, "Embedding",
                                                                      "Lookup table: int64 indices -> rows of weight.")
      .def(py::init([](int64_t num_embeddings, int64_t embedding_dim, py::object dtype) {
             return std::make_shared<nn::Embedding>(
                 nn::EmbeddingOptions(num_embeddings, embedding_dim).dtype(dtype_arg(dtype)));
           }),
           py::arg("num_embeddings"), py::arg("embedding_dim"), py::arg("dtype") = py::none())
      .def_property_readonly("num_embeddings", [](const nn::Embedding& l) { return l.options().num_embeddings(); })
      .def_property_readonly("embedding_dim", [](const nn::Embedding& l) { return l.options().embedding_dim(); })
      .def_property_readonly("weight", [](const nn::Embedding& l) { return l.weight; });
}

}  // namespace bindings
}  // namespace nablagrad
