// nablagrad/layers/rnn.h - recurrent layers: RNN (tanh or relu), LSTM, GRU. Batch first.
//
//     nn::LSTM lstm(nn::LSTMOptions(64, 128).num_layers(2));
//     Tensor y = lstm.forward(x);                          // x (N, T, 64) -> y (N, T, 128)
//     auto [out, h_n, c_n] = lstm.forward_with_state(x, h0, c0);   // h0, c0 (2, N, 128)
//     nn::RNN rnn(nn::RNNOptions(8, 16).nonlinearity("relu").bias(false));
//     nn::GRU gru(8, 16);
//
// Each of num_layers layers is one fused op (ops/rnn.h: the time loop and its backward run in
// C++, one graph node per layer); layer k > 0 reads layer k-1's output sequence.
// Parameters per layer k, PyTorch's names and layouts (state dicts map one to one):
//   weight_ih_l{k} (G*H, in), weight_hh_l{k} (G*H, H), bias_ih_l{k}, bias_hh_l{k} (G*H,)
// with G = 1 (RNN), 4 (LSTM, gates i, f, g, o), 3 (GRU, gates r, z, n), in = input_size for
// k = 0 and H otherwise. Initialisation as PyTorch: every weight and bias ~ U(-1/sqrt(H), 1/sqrt(H)).
// Unbatched input (T, in) with states (num_layers, H) is accepted too, as in PyTorch.
#pragma once

#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "../layer.h"
#include "../ops/rnn.h"
#include "../tensor_operations.h"
#include "check.h"
#include "init.h"

namespace nablagrad {
namespace nn {

struct RNNOptions {
  RNNOptions(int64_t input_size, int64_t hidden_size) : input_size_(input_size), hidden_size_(hidden_size) {}
  NABLAGRAD_ARG(int64_t, input_size);
  NABLAGRAD_ARG(int64_t, hidden_size);
  NABLAGRAD_ARG(int64_t, num_layers) = 1;
  /// "tanh" or "relu".
  NABLAGRAD_ARG(std::string, nonlinearity) = "tanh";
  NABLAGRAD_ARG(bool, bias) = true;
  NABLAGRAD_ARG(DType, dtype) = DType::Float32;
};

class LSTM;
class GRU;

/// The options of LSTM and GRU (RNNOptions adds nonlinearity). One template, so that
/// LSTMOptions and GRUOptions stay distinct types, each layer taking only its own.
template <class RecurrentLayer>
struct GatedRecurrentOptions {
  GatedRecurrentOptions(int64_t input_size, int64_t hidden_size) : input_size_(input_size), hidden_size_(hidden_size) {}
  NABLAGRAD_ARG(int64_t, input_size);
  NABLAGRAD_ARG(int64_t, hidden_size);
  NABLAGRAD_ARG(int64_t, num_layers) = 1;
  NABLAGRAD_ARG(bool, bias) = true;
  NABLAGRAD_ARG(DType, dtype) = DType::Float32;
};
using LSTMOptions = GatedRecurrentOptions<LSTM>;
using GRUOptions = GatedRecurrentOptions<GRU>;

/// What forward_with_state returns: the last layer's output sequence (N, T, H) and the final
/// states of every layer (num_layers, N, H); c_n is undefined except for the LSTM.
struct RecurrentOutput {
  Tensor output;
  Tensor h_n;
  Tensor c_n;
};

/// The part RNN, LSTM and GRU share: parameters of every layer and the stacked forward.
class RecurrentBase : public Layer {
 public:
  /// Redraws every weight and bias from U(-1/sqrt(H), 1/sqrt(H)) (PyTorch's default).
  void reset_parameters() {
    const double bound = 1.0 / std::sqrt(static_cast<double>(hidden_size_));
    for (const auto& p : named_parameters(false)) init::uniform_(p.second, -bound, bound);
  }

  int64_t input_size() const { return input_size_; }
  int64_t hidden_size() const { return hidden_size_; }
  int64_t num_layers() const { return num_layers_; }
  bool has_bias() const { return bias_; }

  /// The output sequence (N, T, H) of the last layer, from zero initial states.
  Tensor forward(const Tensor& x) override { return run(x, Tensor(), Tensor()).output; }

  /// Per layer k: weight_ih_l{k}, weight_hh_l{k}, bias_ih_l{k}, bias_hh_l{k} (biases undefined
  /// without bias). The same tensors as named_parameters().
  std::vector<Tensor> weight_ih, weight_hh, bias_ih, bias_hh;

  std::string extra_repr() const override {
    std::string s = std::to_string(input_size_) + ", " + std::to_string(hidden_size_);
    if (num_layers_ != 1) s += ", num_layers=" + std::to_string(num_layers_);
    if (!bias_) s += ", bias=False";
    if (mode_ == kernels::RnnMode::RnnRelu) s += ", nonlinearity='relu'";
    return s;
  }

 protected:
  /// From RNNOptions, LSTMOptions or GRUOptions.
  template <class Options>
  RecurrentBase(kernels::RnnMode mode, const char* who, const Options& o)
      : RecurrentBase(mode, who, o.input_size(), o.hidden_size(), o.num_layers(), o.bias(), o.dtype()) {}

  RecurrentBase(kernels::RnnMode mode, const char* who, int64_t input_size, int64_t hidden_size, int64_t num_layers,
                bool bias, DType dtype)
      : mode_(mode), who_(who), input_size_(input_size), hidden_size_(hidden_size), num_layers_(num_layers), bias_(bias) {
    if (input_size <= 0 || hidden_size <= 0 || num_layers <= 0)
      throw std::invalid_argument(std::string(who) + ": input_size, hidden_size and num_layers must be positive, got " +
                                  std::to_string(input_size) + ", " + std::to_string(hidden_size) + ", " +
                                  std::to_string(num_layers));
    detail::check_parameter_dtype(dtype, who);
    const int64_t GH = kernels::rnn_gate_count(mode) * hidden_size;
    for (int64_t k = 0; k < num_layers; ++k) {
      const std::string sfx = "_l" + std::to_string(k);
      const int64_t in = k == 0 ? input_size : hidden_size;
      weight_ih.push_back(register_parameter("weight_ih" + sfx, Tensor::empty({GH, in}, dtype)));
      weight_hh.push_back(register_parameter("weight_hh" + sfx, Tensor::empty({GH, hidden_size}, dtype)));
      if (bias) {
        bias_ih.push_back(register_parameter("bias_ih" + sfx, Tensor::empty({GH}, dtype)));
        bias_hh.push_back(register_parameter("bias_hh" + sfx, Tensor::empty({GH}, dtype)));
      } else {
        bias_ih.emplace_back();
        bias_hh.emplace_back();
      }
    }
    reset_parameters();
  }

  /// The stacked forward. x (N, T, in) or unbatched (T, in); h0, c0 (num_layers, N, H) or
  /// (num_layers, H) for unbatched input, or undefined for zeros.
  RecurrentOutput run(const Tensor& x_in, const Tensor& h0_in, const Tensor& c0_in) const {
    const std::string who = who_;
    const DType dt = weight_ih[0].dtype();
    if (!is_floating(x_in.dtype()))
      throw std::domain_error(who + ": input must be float32 or float64, got " + dtype_name(x_in.dtype()) +
                              " (input shape " + shape_str(x_in.shape()) + ")");
    if (x_in.dtype() != dt)
      throw std::domain_error(who + ": input dtype " + dtype_name(x_in.dtype()) + " differs from the parameters' " +
                              dtype_name(dt) + "; convert one with astype / to()");
    if (x_in.dim() != 2 && x_in.dim() != 3)
      throw std::invalid_argument(who + ": input must be (N, T, " + std::to_string(input_size_) +
                                  ") (batch first) or unbatched (T, " + std::to_string(input_size_) + "), got shape " +
                                  shape_str(x_in.shape()));
    if (x_in.shape().back() != input_size_)
      throw std::invalid_argument(who + ": input has " + std::to_string(x_in.shape().back()) +
                                  " features but input_size=" + std::to_string(input_size_) + " (input shape " +
                                  shape_str(x_in.shape()) + ")");
    const bool unbatched = x_in.dim() == 2;
    const Tensor x = unbatched ? unsqueeze(x_in, 0) : x_in;
    const int64_t N = x.shape()[0];
    auto state = [&](const Tensor& s, const char* name) {
      if (!s.defined()) return s;
      const Shape want = unbatched ? Shape{num_layers_, hidden_size_} : Shape{num_layers_, N, hidden_size_};
      if (s.shape() != want)
        throw std::invalid_argument(who + ": " + name + " must be " + shape_str(want) + " for input " +
                                    shape_str(x_in.shape()) + ", got " + shape_str(s.shape()));
      if (s.dtype() != dt)
        throw std::domain_error(who + ": " + name + " has dtype " + dtype_name(s.dtype()) + ", expected " + dtype_name(dt));
      return unbatched ? unsqueeze(s, 1) : s;
    };
    const Tensor h0 = state(h0_in, "h0"), c0 = state(c0_in, "c0");
    const bool lstm = mode_ == kernels::RnnMode::Lstm;
    if (c0.defined() && !lstm) throw std::invalid_argument(who + ": only the LSTM has a cell state c0");

    Tensor seq = x;
    std::vector<Tensor> hs, cs;
    for (int64_t k = 0; k < num_layers_; ++k) {
      const std::size_t l = static_cast<std::size_t>(k);
      const Tensor h0k = h0.defined() ? index(h0, {TensorIndex::integer(k)}) : Tensor();
      const Tensor c0k = c0.defined() ? index(c0, {TensorIndex::integer(k)}) : Tensor();
      RnnLayerOutput r = nablagrad::detail::rnn_layer_impl(mode_, seq, h0k, c0k, weight_ih[l], weight_hh[l], bias_ih[l], bias_hh[l]);
      seq = r.output;
      hs.push_back(r.h_n);
      if (lstm) cs.push_back(r.c_n);
    }
    RecurrentOutput res{seq, stack(hs, 0), lstm ? stack(cs, 0) : Tensor()};
    if (unbatched) {
      res.output = squeeze(res.output, {0});
      res.h_n = squeeze(res.h_n, {1});
      if (lstm) res.c_n = squeeze(res.c_n, {1});
    }
    return res;
  }

  kernels::RnnMode mode_;
  const char* who_;
  int64_t input_size_, hidden_size_, num_layers_;
  bool bias_;
};

/// Elman RNN: h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh), act tanh or relu.
class RNN : public RecurrentBase {
 public:
  RNN(int64_t input_size, int64_t hidden_size) : RNN(RNNOptions(input_size, hidden_size)) {}
  explicit RNN(const RNNOptions& o) : RecurrentBase(parse_mode(o.nonlinearity()), "RNN", o), options_(o) {}

  /// {output (N, T, H), h_n (num_layers, N, H)}; h0 (num_layers, N, H) or undefined for zeros.
  RecurrentOutput forward_with_state(const Tensor& x, const Tensor& h0 = Tensor()) const { return run(x, h0, Tensor()); }

  std::string name() const override { return "RNN"; }
  const RNNOptions& options() const { return options_; }

 private:
  static kernels::RnnMode parse_mode(const std::string& nonlinearity) {
    if (nonlinearity == "tanh") return kernels::RnnMode::RnnTanh;
    if (nonlinearity == "relu") return kernels::RnnMode::RnnRelu;
    throw std::invalid_argument("RNN: nonlinearity must be \"tanh\" or \"relu\", got \"" + nonlinearity + "\"");
  }
  RNNOptions options_;
};

/// LSTM (gates i, f, g, o): c_t = f*c_{t-1} + i*g, h_t = o*tanh(c_t).
class LSTM : public RecurrentBase {
 public:
  LSTM(int64_t input_size, int64_t hidden_size) : LSTM(LSTMOptions(input_size, hidden_size)) {}
  explicit LSTM(const LSTMOptions& o) : RecurrentBase(kernels::RnnMode::Lstm, "LSTM", o), options_(o) {}

  /// {output (N, T, H), h_n, c_n (num_layers, N, H)}; h0, c0 (num_layers, N, H) or undefined.
  RecurrentOutput forward_with_state(const Tensor& x, const Tensor& h0 = Tensor(), const Tensor& c0 = Tensor()) const {
    return run(x, h0, c0);
  }

  std::string name() const override { return "LSTM"; }
  const LSTMOptions& options() const { return options_; }

 private:
  LSTMOptions options_;
};

/// GRU (gates r, z, n): n = tanh(W_in x + b_in + r*(W_hn h + b_hn)), h_t = (1-z)*n + z*h_{t-1}.
class GRU : public RecurrentBase {
 public:
  GRU(int64_t input_size, int64_t hidden_size) : GRU(GRUOptions(input_size, hidden_size)) {}
  explicit GRU(const GRUOptions& o) : RecurrentBase(kernels::RnnMode::Gru, "GRU", o), options_(o) {}

  /// {output (N, T, H), h_n (num_layers, N, H)}; h0 (num_layers, N, H) or undefined.
  RecurrentOutput forward_with_state(const Tensor& x, const Tensor& h0 = Tensor()) const { return run(x, h0, Tensor()); }

  std::string name() const override { return "GRU"; }
  const GRUOptions& options() const { return options_; }

 private:
  GRUOptions options_;
};

}  // namespace nn
}  // namespace nablagrad
