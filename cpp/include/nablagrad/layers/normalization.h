// nablagrad/layers/normalization.h - LayerNorm and BatchNorm2D (NHWC).
//
//     nn::LayerNorm ln({64});                                   // over the last axis of (..., 64)
//     nn::BatchNorm2D bn(16);                                   // x (N, H, W, 16)
//     nn::BatchNorm2D bn2(nn::BatchNorm2dOptions(16).momentum(0.01).affine(false));
//     Tensor y = bn.forward(x);  bn.eval();  Tensor z = bn.forward(x);   // running statistics
//
// BatchNorm2D normalises each channel over (N, H, W), i.e. over every axis but the last
// (PyTorch's BatchNorm2d normalises over (N, H, W) of (N, C, H, W)). As PyTorch:
//   training, or track_running_stats=false: the batch mean and the biased batch variance;
//     in training with tracking, the running statistics are updated in place with
//     running = (1 - momentum) * running + momentum * batch, using the unbiased variance
//     (momentum unset: the cumulative average, factor 1 / num_batches_tracked);
//   evaluation with tracking: the running statistics.
// The normalisation is composed of differentiable ops (mean, sub, mul, sqrt, div), so its
// gradient comes from autograd; the running-statistics update is raw, under no-grad.
#pragma once

#include <cmath>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>

#include "../layer.h"
#include "../tensor_operations.h"
#include "check.h"
#include "init.h"

namespace nablagrad {
namespace nn {

struct LayerNormOptions {
  explicit LayerNormOptions(Shape normalized_shape) : normalized_shape_(std::move(normalized_shape)) {}
  NABLAGRAD_ARG(Shape, normalized_shape);
  NABLAGRAD_ARG(double, eps) = 1e-5;
  /// Learnable weight (ones) and bias (zeros) of shape normalized_shape.
  NABLAGRAD_ARG(bool, elementwise_affine) = true;
  NABLAGRAD_ARG(DType, dtype) = DType::Float32;
};

class LayerNorm : public Layer {
 public:
  explicit LayerNorm(Shape normalized_shape) : LayerNorm(LayerNormOptions(std::move(normalized_shape))) {}
  explicit LayerNorm(const LayerNormOptions& options) : options_(options) {
    const Shape& s = options.normalized_shape();
    if (s.empty()) throw std::invalid_argument("LayerNorm: normalized_shape cannot be empty");
    for (int64_t d : s)
      if (d <= 0) throw std::invalid_argument("LayerNorm: normalized_shape must be positive, got " + shape_str(s));
    if (!(options.eps() >= 0.0)) throw std::invalid_argument("LayerNorm: eps must be >= 0, got " + std::to_string(options.eps()));
    detail::check_parameter_dtype(options.dtype(), "LayerNorm");
    if (options.elementwise_affine()) {
      weight = register_parameter("weight", Tensor::full(s, 1.0, options.dtype()));
      bias = register_parameter("bias", Tensor::zeros(s, options.dtype()));
    }
  }

  Tensor forward(const Tensor& x) override {
    const Shape& s = options_.normalized_shape();
    const int64_t k = static_cast<int64_t>(s.size());
    bool match = x.dim() >= k;
    for (int64_t i = 0; match && i < k; ++i) match = x.shape()[x.dim() - k + i] == s[i];
    if (!match)
      throw std::invalid_argument("LayerNorm: input shape " + shape_str(x.shape()) +
                                  " does not end with normalized_shape " + shape_str(s));
    return layer_norm(x, s, weight, bias, options_.eps());
  }

  std::string name() const override { return "LayerNorm"; }
  std::string extra_repr() const override {
    std::ostringstream r;
    r << shape_str(options_.normalized_shape()) << ", eps=" << options_.eps()
      << ", elementwise_affine=" << repr_bool(options_.elementwise_affine());
    return r.str();
  }
  const LayerNormOptions& options() const { return options_; }

  Tensor weight;  // normalized_shape, ones; undefined without elementwise_affine
  Tensor bias;    // normalized_shape, zeros; undefined without elementwise_affine

 private:
  LayerNormOptions options_;
};

struct BatchNorm2dOptions {
  BatchNorm2dOptions(int64_t num_features) : num_features_(num_features) {}  // NOLINT: implicit
  NABLAGRAD_ARG(int64_t, num_features);  // C, the last axis of the input
  NABLAGRAD_ARG(double, eps) = 1e-5;
  /// Weight of the new batch statistic in the running average; unset: cumulative average.
  NABLAGRAD_ARG(std::optional<double>, momentum) = 0.1;
  /// Learnable per-channel weight (ones) and bias (zeros).
  NABLAGRAD_ARG(bool, affine) = true;
  /// Keep running_mean / running_var / num_batches_tracked buffers and use them in eval().
  NABLAGRAD_ARG(bool, track_running_stats) = true;
  NABLAGRAD_ARG(DType, dtype) = DType::Float32;
};

class BatchNorm2D : public Layer {
 public:
  explicit BatchNorm2D(const BatchNorm2dOptions& options) : options_(options) {
    const int64_t c = options.num_features();
    if (c <= 0) throw std::invalid_argument("BatchNorm2D: num_features must be positive, got " + std::to_string(c));
    if (!(options.eps() >= 0.0)) throw std::invalid_argument("BatchNorm2D: eps must be >= 0, got " + std::to_string(options.eps()));
    if (options.momentum() && !(*options.momentum() >= 0.0 && *options.momentum() <= 1.0))
      throw std::invalid_argument("BatchNorm2D: momentum must be in [0, 1], got " + std::to_string(*options.momentum()));
    detail::check_parameter_dtype(options.dtype(), "BatchNorm2D");
    if (options.affine()) {
      weight = register_parameter("weight", Tensor::full({c}, 1.0, options.dtype()));
      bias = register_parameter("bias", Tensor::zeros({c}, options.dtype()));
    }
    if (options.track_running_stats()) {
      running_mean = register_buffer("running_mean", Tensor::zeros({c}, options.dtype()));
      running_var = register_buffer("running_var", Tensor::full({c}, 1.0, options.dtype()));
      num_batches_tracked = register_buffer("num_batches_tracked", Tensor::zeros({}, DType::Int64));
    }
  }

  /// Running statistics back to mean 0, variance 1, no batches seen.
  void reset_running_stats() {
    if (!options_.track_running_stats()) return;
    init::zeros_(running_mean);
    init::ones_(running_var);
    init::zeros_(num_batches_tracked);
  }

  Tensor forward(const Tensor& x) override {
    const int64_t c = options_.num_features();
    if (x.dim() != 4)
      throw std::invalid_argument("BatchNorm2D: input must be 4-D (N, H, W, C), got shape " + shape_str(x.shape()));
    if (x.shape()[3] != c)
      throw std::invalid_argument("BatchNorm2D: input has C=" + std::to_string(x.shape()[3]) +
                                  " channels but num_features=" + std::to_string(c) + " (input shape " +
                                  shape_str(x.shape()) + ", NHWC)");
    if (!is_floating(x.dtype()))
      throw std::domain_error(std::string("BatchNorm2D: input must be float32 or float64, got ") + dtype_name(x.dtype()));
    const Tensor& like = weight.defined() ? weight : running_mean;
    if (like.defined() && like.dtype() != x.dtype())
      throw std::domain_error(std::string("BatchNorm2D: input is ") + dtype_name(x.dtype()) + " but the layer is " +
                              dtype_name(like.dtype()) + "; convert one with astype or to()");
    const Tensor eps = Tensor::scalar(options_.eps(), x.dtype());
    const bool track = options_.track_running_stats();
    Tensor y;
    if (is_training() || !track) {
      const int64_t count = x.shape()[0] * x.shape()[1] * x.shape()[2];
      if (is_training() && count == 1)
        throw std::invalid_argument("BatchNorm2D: expected more than 1 value per channel when training, got input shape " +
                                    shape_str(x.shape()));
      if (count == 0) {
        // An empty batch (as PyTorch): an empty output, running statistics unchanged, the batch
        // still counted in num_batches_tracked.
        if (is_training() && track) {
          NoGradGuard no_grad;
          ++num_batches_tracked.data<int64_t>()[0];
          num_batches_tracked.bump_version();
        }
        y = sub(x, x);
        if (weight.defined()) y = add(mul(y, weight), bias);
        return y;
      }
      const Tensor mu = mean(x, {0, 1, 2});           // (C,)
      const Tensor centred = sub(x, mu);
      const Tensor var = mean(mul(centred, centred), {0, 1, 2});  // biased, (C,)
      y = div(centred, sqrt(add(var, eps)));
      if (is_training() && track) update_running_stats(mu, var, count);
    } else {
      y = div(sub(x, running_mean), sqrt(add(running_var, eps)));
    }
    if (weight.defined()) y = add(mul(y, weight), bias);
    return y;
  }

  std::string name() const override { return "BatchNorm2D"; }
  std::string extra_repr() const override {
    std::ostringstream r;
    r << options_.num_features() << ", eps=" << options_.eps() << ", momentum=";
    if (options_.momentum()) r << *options_.momentum();
    else r << "None";
    r << ", affine=" << repr_bool(options_.affine())
      << ", track_running_stats=" << repr_bool(options_.track_running_stats());
    return r.str();
  }
  const BatchNorm2dOptions& options() const { return options_; }

  Tensor weight, bias;                                    // (C,); undefined without affine
  Tensor running_mean, running_var, num_batches_tracked;  // undefined without tracking

 private:
  // running = (1 - f) * running + f * batch (unbiased variance), raw and in place.
  void update_running_stats(const Tensor& mu, const Tensor& var, int64_t count) {
    NoGradGuard no_grad;
    int64_t& batches = num_batches_tracked.data<int64_t>()[0];
    ++batches;
    num_batches_tracked.bump_version();
    const double f = options_.momentum() ? *options_.momentum() : 1.0 / static_cast<double>(batches);
    const double unbias = static_cast<double>(count) / static_cast<double>(count - 1);
    const int64_t c = options_.num_features();
    Tensor new_mean = Tensor::empty({c}, DType::Float64), new_var = Tensor::empty({c}, DType::Float64);
    for (int64_t i = 0; i < c; ++i) {
      new_mean.data<double>()[i] = (1.0 - f) * running_mean.item_at(i) + f * mu.item_at(i);
      new_var.data<double>()[i] = (1.0 - f) * running_var.item_at(i) + f * var.item_at(i) * unbias;
    }
    Tensor::copy_into(running_mean, new_mean);
    Tensor::copy_into(running_var, new_var);
    running_mean.bump_version();
    running_var.bump_version();
  }

  BatchNorm2dOptions options_;
};

using BatchNorm2d = BatchNorm2D;  // PyTorch's spelling

}  // namespace nn
}  // namespace nablagrad
