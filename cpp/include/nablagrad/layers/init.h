// nablagrad/layers/init.h - nn::init: in-place parameter initialisation, as torch.nn.init.
//
// Every function fills its tensor in place (any strides) with numbers from the seeded
// default generator (nablagrad::manual_seed), drawn sequentially in row-major order, so a
// seed reproduces a model exactly. No graph is recorded, and the tensor's version counter is
// bumped (a graph that saved the old values refuses to backward). Each returns its argument.
//
// Fan rules (nablagrad's layouts: the output features come first, the input features last):
//   Linear weight (out, in)             fan_in = in,          fan_out = out
//   Conv2D weight (Q, FH, FW, C)        fan_in = FH * FW * C, fan_out = Q * FH * FW
//   in general (out, k1, ..., kr, in):  receptive = k1 * ... * kr,
//                                       fan_in = in * receptive, fan_out = out * receptive
//
//     nn::Linear fc(256, 128);
//     nn::init::kaiming_normal_(fc.weight, 0.0, "fan_out", "relu");
//     nn::init::zeros_(fc.bias);
#pragma once

#include <cmath>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>

#include "../autograd.h"
#include "../random.h"
#include "../tensor.h"

namespace nablagrad {
namespace nn {
namespace init {

namespace detail {

/// Writes gen() (a double) into every element of t, in row-major order, under the
/// generator's lock; float dtypes only (std::domain_error otherwise).
template <typename Draw>
inline void fill_random(const Tensor& t, const char* op, Draw&& draw) {
  NoGradGuard no_grad;
  dispatch_float(t.dtype(), op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    T* base = static_cast<T*>(t.impl().storage->data()) + t.offset();
    Generator& gen = default_generator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    Tensor::for_each_offset(t.shape(), t.strides(), [&](int64_t off) { base[off] = static_cast<T>(draw(gen)); });
  });
  t.bump_version();
}

inline void check_defined(const Tensor& t, const char* op) {
  if (!t.defined()) throw std::invalid_argument(std::string(op) + ": the tensor is undefined");
}

}  // namespace detail

/// Recommended gain for a nonlinearity (torch.nn.init.calculate_gain): linear, conv*,
/// sigmoid -> 1; tanh -> 5/3; relu -> sqrt(2); leaky_relu -> sqrt(2 / (1 + param^2))
/// (param = negative slope, default 0.01); selu -> 3/4.
inline double calculate_gain(const std::string& nonlinearity, double param = 0.01) {
  if (nonlinearity == "linear" || nonlinearity == "conv1d" || nonlinearity == "conv2d" ||
      nonlinearity == "conv3d" || nonlinearity == "conv_transpose1d" || nonlinearity == "conv_transpose2d" ||
      nonlinearity == "conv_transpose3d" || nonlinearity == "sigmoid")
    return 1.0;
  if (nonlinearity == "tanh") return 5.0 / 3.0;
  if (nonlinearity == "relu") return std::sqrt(2.0);
  if (nonlinearity == "leaky_relu") return std::sqrt(2.0 / (1.0 + param * param));
  if (nonlinearity == "selu") return 0.75;
  throw std::invalid_argument("calculate_gain: unsupported nonlinearity '" + nonlinearity + "'");
}

/// (fan_in, fan_out) of a weight with at least 2 dims, by the rules in the header comment.
inline std::pair<int64_t, int64_t> calculate_fan_in_and_fan_out(const Tensor& t) {
  detail::check_defined(t, "calculate_fan_in_and_fan_out");
  if (t.dim() < 2)
    throw std::invalid_argument("calculate_fan_in_and_fan_out: fan in and fan out cannot be computed for a tensor "
                                "with fewer than 2 dimensions, got shape " + shape_str(t.shape()));
  int64_t receptive = 1;
  for (int64_t d = 1; d + 1 < t.dim(); ++d) receptive *= t.shape()[d];
  return {t.shape().back() * receptive, t.shape().front() * receptive};
}

/// fan_in or fan_out of t according to mode ("fan_in" / "fan_out").
inline int64_t calculate_correct_fan(const Tensor& t, const std::string& mode) {
  const auto fans = calculate_fan_in_and_fan_out(t);
  if (mode == "fan_in") return fans.first;
  if (mode == "fan_out") return fans.second;
  throw std::invalid_argument("init: mode must be 'fan_in' or 'fan_out', got '" + mode + "'");
}

/// U(a, b).
inline Tensor uniform_(const Tensor& t, double a = 0.0, double b = 1.0) {
  detail::check_defined(t, "uniform_");
  if (!(a <= b)) throw std::invalid_argument("uniform_: expected a <= b, got a=" + std::to_string(a) + ", b=" + std::to_string(b));
  detail::fill_random(t, "uniform_", [a, b](Generator& g) { return a + (b - a) * g.uniform(); });
  return t;
}

/// N(mean, std^2).
inline Tensor normal_(const Tensor& t, double mean = 0.0, double std = 1.0) {
  detail::check_defined(t, "normal_");
  if (!(std >= 0.0)) throw std::invalid_argument("normal_: std must be >= 0, got " + std::to_string(std));
  detail::fill_random(t, "normal_", [mean, std](Generator& g) { return mean + std * g.normal(); });
  return t;
}

/// Every element = value (any dtype).
inline Tensor constant_(const Tensor& t, double value) {
  detail::check_defined(t, "constant_");
  NoGradGuard no_grad;
  Tensor handle = t;
  handle.fill(value);
  t.bump_version();
  return t;
}
inline Tensor zeros_(const Tensor& t) { return constant_(t, 0.0); }
inline Tensor ones_(const Tensor& t) { return constant_(t, 1.0); }

/// Glorot uniform: U(-a, a), a = gain * sqrt(6 / (fan_in + fan_out)).
inline Tensor xavier_uniform_(const Tensor& t, double gain = 1.0) {
  const auto fans = calculate_fan_in_and_fan_out(t);
  const double std = gain * std::sqrt(2.0 / static_cast<double>(fans.first + fans.second));
  const double a = std::sqrt(3.0) * std;
  return uniform_(t, -a, a);
}

/// Glorot normal: N(0, std^2), std = gain * sqrt(2 / (fan_in + fan_out)).
inline Tensor xavier_normal_(const Tensor& t, double gain = 1.0) {
  const auto fans = calculate_fan_in_and_fan_out(t);
  return normal_(t, 0.0, gain * std::sqrt(2.0 / static_cast<double>(fans.first + fans.second)));
}

/// He uniform: U(-bound, bound), bound = gain * sqrt(3 / fan), gain = calculate_gain(
/// nonlinearity, a) (a: negative slope of the rectifier after this layer).
inline Tensor kaiming_uniform_(const Tensor& t, double a = 0.0, const std::string& mode = "fan_in",
                               const std::string& nonlinearity = "leaky_relu") {
  const int64_t fan = calculate_correct_fan(t, mode);
  if (fan == 0) return t;  // PyTorch: initializing a zero-element tensor is a no-op
  const double bound = calculate_gain(nonlinearity, a) * std::sqrt(3.0 / static_cast<double>(fan));
  return uniform_(t, -bound, bound);
}

/// He normal: N(0, std^2), std = gain / sqrt(fan).
inline Tensor kaiming_normal_(const Tensor& t, double a = 0.0, const std::string& mode = "fan_in",
                              const std::string& nonlinearity = "leaky_relu") {
  const int64_t fan = calculate_correct_fan(t, mode);
  if (fan == 0) return t;
  return normal_(t, 0.0, calculate_gain(nonlinearity, a) / std::sqrt(static_cast<double>(fan)));
}

}  // namespace init
}  // namespace nn
}  // namespace nablagrad
