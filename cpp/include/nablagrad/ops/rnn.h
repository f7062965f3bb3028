// nablagrad/ops/rnn.h - fused recurrent layers as differentiable ops: one graph node per
// layer (not one per gate per step), recorded with record_multi.
//
//     auto [y, h_n, c_n] = lstm_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh);
//     auto [y2, h2, unused] = gru_layer(x, h0, w_ih, w_hh, b_ih, b_hh);
//     auto [y3, h3, unused2] = rnn_layer(x, h0, w_ih, w_hh, b_ih, b_hh, "relu");
//
// Layouts (batch first, PyTorch's weight layouts):
//   x (N, T, I) with T >= 1; h0, c0 (N, H) or undefined Tensors for zeros;
//   w_ih (G*H, I), w_hh (G*H, H), b_ih, b_hh (G*H,) or undefined (no bias), where
//   G = 4 for the LSTM (gates i, f, g, o), 3 for the GRU (r, z, n), 1 for the Elman RNN.
//   Returns output (N, T, H) (the hidden state of every step), h_n (N, H) and, for the LSTM,
//   c_n (N, H). Every input that requires grad gets a gradient, through any of the outputs.
// The kernels (forward, and the backward through time beside it) are in kernels/rnn.h; the
// equations in docs/layers.md.
#pragma once

#include <stdexcept>
#include <string>
#include <vector>

#include "../autograd.h"
#include "../kernels/rnn.h"

namespace nablagrad {

/// What a fused recurrent layer returns; c_n is undefined except for the LSTM.
struct RnnLayerOutput {
  Tensor output;  // (N, T, H)
  Tensor h_n;     // (N, H)
  Tensor c_n;     // (N, H), LSTM only
};

namespace detail {

inline const char* rnn_mode_name(kernels::RnnMode mode) {
  switch (mode) {
    case kernels::RnnMode::RnnTanh: return "rnn_tanh_layer";
    case kernels::RnnMode::RnnRelu: return "rnn_relu_layer";
    case kernels::RnnMode::Lstm: return "lstm_layer";
    case kernels::RnnMode::Gru: return "gru_layer";
  }
  return "rnn_layer";
}

/// The shape checks shared by the forward and the backward of every recurrent layer op.
inline kernels::RnnDims rnn_check(kernels::RnnMode mode, const Tensor& x, const Tensor& h0, const Tensor& c0,
                                  const Tensor& w_ih, const Tensor& w_hh, const Tensor& b_ih, const Tensor& b_hh) {
  const std::string op = rnn_mode_name(mode);
  if (!x.defined() || !w_ih.defined() || !w_hh.defined())
    throw std::invalid_argument(op + ": x, w_ih and w_hh must be defined tensors");
  const DType dt = x.dtype();
  if (!is_floating(dt))
    throw std::domain_error(op + ": expected a float32 or float64 input, got " + dtype_name(dt));
  for (const Tensor* t : {&h0, &c0, &w_ih, &w_hh, &b_ih, &b_hh})
    if (t->defined() && t->dtype() != dt)
      throw std::domain_error(op + ": all tensors must have the input's dtype " + dtype_name(dt) + ", got " +
                              dtype_name(t->dtype()) + " (shape " + shape_str(t->shape()) + ")");
  if (x.dim() != 3)
    throw std::invalid_argument(op + ": input must be (N, T, I) (batch first), got shape " + shape_str(x.shape()));
  const int64_t N = x.shape()[0], T = x.shape()[1], I = x.shape()[2];
  const int64_t G = kernels::rnn_gate_count(mode);
  if (T < 1) throw std::invalid_argument(op + ": the sequence length must be at least 1, got input shape " + shape_str(x.shape()));
  if (w_hh.dim() != 2 || w_hh.shape()[0] % G != 0 || w_hh.shape()[1] < 1 || w_hh.shape()[0] != G * w_hh.shape()[1])
    throw std::invalid_argument(op + ": w_hh must be (" + std::to_string(G) + "*H, H) with H >= 1, got shape " +
                                shape_str(w_hh.shape()));
  const int64_t H = w_hh.shape()[1];
  if (w_ih.shape() != Shape{G * H, I})
    throw std::invalid_argument(op + ": w_ih must be (" + std::to_string(G * H) + ", " + std::to_string(I) +
                                ") for input shape " + shape_str(x.shape()) + " and hidden size " + std::to_string(H) +
                                ", got " + shape_str(w_ih.shape()));
  for (const Tensor* b : {&b_ih, &b_hh})
    if (b->defined() && b->shape() != Shape{G * H})
      throw std::invalid_argument(op + ": biases must be (" + std::to_string(G * H) + ",), got " + shape_str(b->shape()));
  const Shape state{N, H};
  if (h0.defined() && h0.shape() != state)
    throw std::invalid_argument(op + ": h0 must be " + shape_str(state) + " for input " + shape_str(x.shape()) +
                                " and hidden size " + std::to_string(H) + ", got " + shape_str(h0.shape()));
  if (c0.defined()) {
    if (mode != kernels::RnnMode::Lstm) throw std::invalid_argument(op + ": only the LSTM has a cell state c0");
    if (c0.shape() != state)
      throw std::invalid_argument(op + ": c0 must be " + shape_str(state) + ", got " + shape_str(c0.shape()));
  }
  return {N, T, I, H};
}

template <typename T>
inline const T* ptr_or_null(const Tensor& t) {
  return t.defined() ? t.data<T>() : nullptr;
}

/// The one implementation behind lstm_layer / gru_layer / rnn_layer.
inline RnnLayerOutput rnn_layer_impl(kernels::RnnMode mode, const Tensor& x_in, const Tensor& h0_in,
                                     const Tensor& c0_in, const Tensor& w_ih_in, const Tensor& w_hh_in,
                                     const Tensor& b_ih_in, const Tensor& b_hh_in) {
  const kernels::RnnDims d = rnn_check(mode, x_in, h0_in, c0_in, w_ih_in, w_hh_in, b_ih_in, b_hh_in);
  auto contig = [](const Tensor& t) { return t.defined() ? t.contiguous_data().alias() : Tensor(); };
  const Tensor x = contig(x_in), h0 = contig(h0_in), c0 = contig(c0_in), w_ih = contig(w_ih_in),
               w_hh = contig(w_hh_in), b_ih = contig(b_ih_in), b_hh = contig(b_hh_in);
  const bool lstm = mode == kernels::RnnMode::Lstm;
  const DType dt = x.dtype();
  const bool grad = any_requires_grad({&x_in, &h0_in, &c0_in, &w_ih_in, &w_hh_in, &b_ih_in, &b_hh_in});
  RnnLayerOutput res;
  res.output = Tensor::empty({d.N, d.T, d.H}, dt);
  res.h_n = Tensor::empty({d.N, d.H}, dt);
  if (lstm) res.c_n = Tensor::empty({d.N, d.H}, dt);
  Tensor gates, cells;
  if (grad) {
    const int64_t gs = kernels::rnn_saved_gates_size(mode, d), cs = kernels::rnn_saved_cells_size(mode, d);
    if (gs > 0) gates = Tensor::empty({gs}, dt);
    if (cs > 0) cells = Tensor::empty({cs}, dt);
  }
  dispatch_float(dt, rnn_mode_name(mode), [&](auto tag) {
    using T = typename decltype(tag)::type;
    const kernels::RnnWeights<T> w{w_ih.data<T>(), w_hh.data<T>(), ptr_or_null<T>(b_ih), ptr_or_null<T>(b_hh)};
    kernels::rnn_layer_forward<T>(mode, d, x.data<T>(), ptr_or_null<T>(h0), ptr_or_null<T>(c0), w,
                                  res.output.data<T>(), res.h_n.data<T>(), lstm ? res.c_n.data<T>() : nullptr,
                                  gates.defined() ? gates.data<T>() : nullptr,
                                  cells.defined() ? cells.data<T>() : nullptr);
  });
  if (!grad) return res;

  auto wants = [](const Tensor& t) { return t.defined() && t.requires_grad(); };
  const bool need[7] = {wants(x_in), wants(h0_in), wants(c0_in), wants(w_ih_in),
                        wants(w_hh_in), wants(b_ih_in), wants(b_hh_in)};
  const Tensor out = res.output.alias();
  std::vector<Tensor*> outs{&res.output, &res.h_n};
  if (lstm) outs.push_back(&res.c_n);
  record_multi(outs, rnn_mode_name(mode), {x_in, h0_in, c0_in, w_ih_in, w_hh_in, b_ih_in, b_hh_in},
               [mode, d, x, h0, c0, w_ih, w_hh, b_ih, b_hh, out, gates, cells, need, lstm](
                   const std::vector<Tensor>& grads, std::vector<Tensor>& gi) {
    const DType dt = x.dtype();
    const Tensor d_out = grads[0].contiguous_data(), d_hn = grads[1].contiguous_data();
    const Tensor d_cn = lstm ? grads[2].contiguous_data() : Tensor();
    const Shape shapes[7] = {x.shape(), {d.N, d.H}, {d.N, d.H}, w_ih.shape(), w_hh.shape(),
                             {w_ih.shape()[0]}, {w_ih.shape()[0]}};
    for (int i = 0; i < 7; ++i)
      if (need[i]) gi[static_cast<std::size_t>(i)] = Tensor::empty(shapes[i], dt);
    dispatch_float(dt, rnn_mode_name(mode), [&](auto tag) {
      using T = typename decltype(tag)::type;
      auto o = [&](int i) { return need[i] ? gi[static_cast<std::size_t>(i)].template data<T>() : nullptr; };
      const kernels::RnnWeights<T> w{w_ih.data<T>(), w_hh.data<T>(), ptr_or_null<T>(b_ih), ptr_or_null<T>(b_hh)};
      kernels::rnn_layer_backward<T>(mode, d, x.data<T>(), ptr_or_null<T>(h0), ptr_or_null<T>(c0), w, out.data<T>(),
                                     ptr_or_null<T>(gates), ptr_or_null<T>(cells), d_out.data<T>(), d_hn.data<T>(),
                                     lstm ? d_cn.data<T>() : nullptr, o(0), o(1), o(2), o(3), o(4), o(5), o(6));
    });
  }, {x, h0, c0, w_ih, w_hh, out});
  return res;
}

}  // namespace detail

/// One fused LSTM layer (gates i, f, g, o): c_t = f*c_{t-1} + i*g, h_t = o*tanh(c_t).
/// h0 / c0 / biases may be undefined (zeros / no bias). Returns {output, h_n, c_n}.
inline RnnLayerOutput lstm_layer(const Tensor& x, const Tensor& h0, const Tensor& c0, const Tensor& w_ih,
                                 const Tensor& w_hh, const Tensor& b_ih = Tensor(), const Tensor& b_hh = Tensor()) {
  return detail::rnn_layer_impl(kernels::RnnMode::Lstm, x, h0, c0, w_ih, w_hh, b_ih, b_hh);
}

/// One fused GRU layer (gates r, z, n; PyTorch's n = tanh(W_in x + b_in + r*(W_hn h + b_hn)),
/// h_t = (1-z)*n + z*h_{t-1}). Returns {output, h_n, undefined}.
inline RnnLayerOutput gru_layer(const Tensor& x, const Tensor& h0, const Tensor& w_ih, const Tensor& w_hh,
                                const Tensor& b_ih = Tensor(), const Tensor& b_hh = Tensor()) {
  return detail::rnn_layer_impl(kernels::RnnMode::Gru, x, h0, Tensor(), w_ih, w_hh, b_ih, b_hh);
}

/// One fused Elman RNN layer: h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh), act "tanh" or
/// "relu". Returns {output, h_n, undefined}.
inline RnnLayerOutput rnn_layer(const Tensor& x, const Tensor& h0, const Tensor& w_ih, const Tensor& w_hh,
                                const Tensor& b_ih = Tensor(), const Tensor& b_hh = Tensor(),
                                const std::string& nonlinearity = "tanh") {
  kernels::RnnMode mode;
  if (nonlinearity == "tanh") mode = kernels::RnnMode::RnnTanh;
  else if (nonlinearity == "relu") mode = kernels::RnnMode::RnnRelu;
  else throw std::invalid_argument("rnn_layer: nonlinearity must be \"tanh\" or \"relu\", got \"" + nonlinearity + "\"");
  return detail::rnn_layer_impl(mode, x, h0, Tensor(), w_ih, w_hh, b_ih, b_hh);
}

}  // namespace nablagrad
