// Bindings of the recurrent layers (layers/rnn.h) as _core.nn.RNN / LSTM / GRU, and of the
// fused one-layer ops (ops/rnn.h) as _core.lstm_layer / gru_layer / rnn_layer. The layers'
// forward(x, h0=None) returns (output, h_n), the LSTM's (output, (h_n, c_n)), as PyTorch's.
#include "common.h"

namespace nablagrad {
namespace bindings {

namespace {

Tensor optional_arg(py::handle obj, const char* op, const char* name) {
  if (obj.is_none()) return Tensor();
  if (!py::isinstance<Tensor>(obj))
    throw py::type_error(std::string(op) + ": " + name + " must be a Tensor or None, got " +
                         std::string(py::str(py::type::handle_of(obj).attr("__name__"))));
  return obj.cast<Tensor>();
}

DType dtype_or_default(py::handle obj) { return obj.is_none() ? DType::Float32 : to_dtype(obj); }

template <class L>
py::tuple forward_h(L& layer, const Tensor& x, py::handle h0) {
  const Tensor h = optional_arg(h0, layer.name().c_str(), "h0");
  nn::RecurrentOutput r = without_gil_if_large(x.numel(), [&] { return layer.forward_with_state(x, h); });
  return py::make_tuple(r.output, r.h_n);
}

py::tuple forward_lstm(nn::LSTM& layer, const Tensor& x, py::handle hx) {
  Tensor h0, c0;
  if (!hx.is_none()) {
    if (!py::isinstance<py::tuple>(hx) && !py::isinstance<py::list>(hx))
      throw py::type_error("LSTM: hx must be a pair (h0, c0) of Tensors or None");
    const py::sequence seq = py::reinterpret_borrow<py::sequence>(hx);
    if (seq.size() != 2) throw py::value_error("LSTM: hx must be a pair (h0, c0), got " + std::to_string(seq.size()) + " items");
    h0 = optional_arg(seq[0], "LSTM", "h0");
    c0 = optional_arg(seq[1], "LSTM", "c0");
  }
  nn::RecurrentOutput r = without_gil_if_large(x.numel(), [&] { return layer.forward_with_state(x, h0, c0); });
  return py::make_tuple(r.output, py::make_tuple(r.h_n, r.c_n));
}

/// LSTM(...) / GRU(...) from Python's keyword arguments.
template <class L>
std::shared_ptr<L> make_gated(int64_t input_size, int64_t hidden_size, int64_t num_layers, bool bias,
                              py::object dtype) {
  return std::make_shared<L>(nn::GatedRecurrentOptions<L>(input_size, hidden_size)
                                 .num_layers(num_layers)
                                 .bias(bias)
                                 .dtype(dtype_or_default(dtype)));
}

template <class L, class Cls>
void common_properties(Cls& cls) {
  cls.def_property_readonly("input_size", [](const L& l) { return l.input_size(); })
      .def_property_readonly("hidden_size", [](const L& l) { return l.hidden_size(); })
      .def_property_readonly("num_layers", [](const L& l) { return l.num_layers(); })
      .def_property_readonly("bias", [](const L& l) { return l.has_bias(); });
}

}  // namespace

void bind_rnn(py::module_& m) {
  py::module_ nnm = m.attr("nn").cast<py::module_>();

  py::class_<nn::RNN, nn::Layer, std::shared_ptr<nn::RNN>> rnn(
      nnm, "RNN", "Elman RNN, batch first: h_t = act(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh).");
  rnn.def(py::init([](int64_t input_size, int64_t hidden_size, int64_t num_layers, const std::string& nonlinearity,
                      bool bias, py::object dtype) {
            return std::make_shared<nn::RNN>(nn::RNNOptions(input_size, hidden_size)
                                                 .num_layers(num_layers)
                                                 .nonlinearity(nonlinearity)
                                                 .bias(bias)
                                                 .dtype(dtype_or_default(dtype)));
          }),
          py::arg("input_size"), py::arg("hidden_size"), py::arg("num_layers") = 1, py::arg("nonlinearity") = "tanh",
          py::arg("bias") = true, py::arg("dtype") = py::none())
      .def("forward", &forward_h<nn::RNN>, py::arg("x"), py::arg("h0") = py::none(),
           "(output (N, T, H), h_n (num_layers, N, H)); h0 (num_layers, N, H) or None for zeros.")
      .def("__call__", &forward_h<nn::RNN>, py::arg("x"), py::arg("h0") = py::none())
      .def_property_readonly("nonlinearity", [](const nn::RNN& l) { return l.options().nonlinearity(); });
  common_properties<nn::RNN>(rnn);

  py::class_<nn::LSTM, nn::Layer, std::shared_ptr<nn::LSTM>> lstm(
      nnm, "LSTM", "LSTM, batch first, gates i, f, g, o: c_t = f*c_{t-1} + i*g, h_t = o*tanh(c_t).");
  lstm.def(py::init(&make_gated<nn::LSTM>),
           py::arg("input_size"), py::arg("hidden_size"), py::arg("num_layers") = 1, py::arg("bias") = true,
           py::arg("dtype") = py::none())
      .def("forward", &forward_lstm, py::arg("x"), py::arg("hx") = py::none(),
           "(output (N, T, H), (h_n, c_n) (num_layers, N, H) each); hx = (h0, c0) or None for zeros.")
      .def("__call__", &forward_lstm, py::arg("x"), py::arg("hx") = py::none());
  common_properties<nn::LSTM>(lstm);

  py::class_<nn::GRU, nn::Layer, std::shared_ptr<nn::GRU>> gru(
      nnm, "GRU", "GRU, batch first, gates r, z, n: n = tanh(W_in x + b_in + r*(W_hn h + b_hn)), "
                  "h_t = (1-z)*n + z*h_{t-1}.");
  gru.def(py::init(&make_gated<nn::GRU>),
          py::arg("input_size"), py::arg("hidden_size"), py::arg("num_layers") = 1, py::arg("bias") = true,
          py::arg("dtype") = py::none())
      .def("forward", &forward_h<nn::GRU>, py::arg("x"), py::arg("h0") = py::none(),
           "(output (N, T, H), h_n (num_layers, N, H)); h0 (num_layers, N, H) or None for zeros.")
      .def("__call__", &forward_h<nn::GRU>, py::arg("x"), py::arg("h0") = py::none());
  common_properties<nn::GRU>(gru);

  // The fused one-layer ops.
  m.def(
      "lstm_layer",
      [](const Tensor& x, py::object h0, py::object c0, const Tensor& w_ih, const Tensor& w_hh, py::object b_ih,
         py::object b_hh) {
        const Tensor h = optional_arg(h0, "lstm_layer", "h0"), c = optional_arg(c0, "lstm_layer", "c0");
        const Tensor bi = optional_arg(b_ih, "lstm_layer", "b_ih"), bh = optional_arg(b_hh, "lstm_layer", "b_hh");
        RnnLayerOutput r = without_gil_if_large(x.numel(), [&] { return lstm_layer(x, h, c, w_ih, w_hh, bi, bh); });
        return py::make_tuple(r.output, r.h_n, r.c_n);
      },
      py::arg("x"), py::arg("h0"), py::arg("c0"), py::arg("w_ih"), py::arg("w_hh"), py::arg("b_ih") = py::none(),
      py::arg("b_hh") = py::none(),
      "One fused LSTM layer: x (N, T, I), h0/c0 (N, H) or None -> (output (N, T, H), h_n, c_n).");
  m.def(
      "gru_layer",
      [](const Tensor& x, py::object h0, const Tensor& w_ih, const Tensor& w_hh, py::object b_ih, py::object b_hh) {
        const Tensor h = optional_arg(h0, "gru_layer", "h0");
        const Tensor bi = optional_arg(b_ih, "gru_layer", "b_ih"), bh = optional_arg(b_hh, "gru_layer", "b_hh");
        RnnLayerOutput r = without_gil_if_large(x.numel(), [&] { return gru_layer(x, h, w_ih, w_hh, bi, bh); });
        return py::make_tuple(r.output, r.h_n);
      },
      py::arg("x"), py::arg("h0"), py::arg("w_ih"), py::arg("w_hh"), py::arg("b_ih") = py::none(),
      py::arg("b_hh") = py::none(), "One fused GRU layer: x (N, T, I), h0 (N, H) or None -> (output, h_n).");
  m.def(
      "rnn_layer",
      [](const Tensor& x, py::object h0, const Tensor& w_ih, const Tensor& w_hh, py::object b_ih, py::object b_hh,
         const std::string& nonlinearity) {
        const Tensor h = optional_arg(h0, "rnn_layer", "h0");
        const Tensor bi = optional_arg(b_ih, "rnn_layer", "b_ih"), bh = optional_arg(b_hh, "rnn_layer", "b_hh");
        RnnLayerOutput r =
            without_gil_if_large(x.numel(), [&] { return rnn_layer(x, h, w_ih, w_hh, bi, bh, nonlinearity); });
        return py::make_tuple(r.output, r.h_n);
      },
      py::arg("x"), py::arg("h0"), py::arg("w_ih"), py::arg("w_hh"), py::arg("b_ih") = py::none(),
      py::arg("b_hh") = py::none(), py::arg("nonlinearity") = "tanh",
      "One fused Elman RNN layer (tanh or relu): x (N, T, I), h0 (N, H) or None -> (output, h_n).");
}

}  // namespace bindings
}  // namespace nablagrad
