// nablagrad/layers/linear.h - the fully connected layer: y = f(x W^T + b).
//
//     nn::Linear fc(4, 3);                                           // weight (3, 4), bias (3,)
//     nn::Linear head(nn::LinearOptions(128, 10).bias(false).activation("softmax"));
//     Tensor y = fc.forward(x);                                      // x (..., 4) -> (..., 3)
//
// Initialisation as PyTorch: weight and bias ~ U(-1/sqrt(in_features), 1/sqrt(in_features))
// (kaiming_uniform_ with a = sqrt(5)), from the seeded default generator.
#pragma once

#include <cmath>
#include <stdexcept>
#include <string>

#include "../layer.h"
#include "../tensor_operations.h"
#include "activation.h"
#include "check.h"
#include "init.h"

namespace nablagrad {
namespace nn {

struct LinearOptions {
  LinearOptions(int64_t in_features, int64_t out_features) : in_features_(in_features), out_features_(out_features) {}
  NABLAGRAD_ARG(int64_t, in_features);
  NABLAGRAD_ARG(int64_t, out_features);
  /// Whether the layer has a bias (out_features,).
  NABLAGRAD_ARG(bool, bias) = true;
  /// Activation applied to the output: "" / "none", "relu", "sigmoid", "tanh", "gelu", "softmax".
  NABLAGRAD_ARG(std::string, activation);
  /// dtype of the parameters (float32 or float64).
  NABLAGRAD_ARG(DType, dtype) = DType::Float32;
};

class Linear : public Layer {
 public:
  Linear(int64_t in_features, int64_t out_features) : Linear(LinearOptions(in_features, out_features)) {}
  explicit Linear(const LinearOptions& options) : options_(options) {
    if (options.in_features() <= 0 || options.out_features() <= 0)
      throw std::invalid_argument("Linear: in_features and out_features must be positive, got in_features=" +
                                  std::to_string(options.in_features()) + ", out_features=" +
                                  std::to_string(options.out_features()));
    detail::check_parameter_dtype(options.dtype(), "Linear");
    activation_ = Activation::parse(options.activation(), "Linear");
    weight = register_parameter("weight", Tensor::empty({options.out_features(), options.in_features()}, options.dtype()));
    if (options.bias()) bias = register_parameter("bias", Tensor::empty({options.out_features()}, options.dtype()));
    reset_parameters();
  }

  /// PyTorch's default initialisation, redrawn from the seeded generator.
  void reset_parameters() {
    init::kaiming_uniform_(weight, std::sqrt(5.0));
    if (bias.defined()) {
      const double bound = 1.0 / std::sqrt(static_cast<double>(options_.in_features()));
      init::uniform_(bias, -bound, bound);
    }
  }

  Tensor forward(const Tensor& x) override {
    if (!is_floating(x.dtype()))
      throw std::domain_error(std::string("Linear: input must be float32 or float64, got ") + dtype_name(x.dtype()) +
                              " (input shape " + shape_str(x.shape()) + ")");
    if (x.dim() == 0 || x.shape().back() != options_.in_features())
      throw std::invalid_argument("Linear: input has " + (x.dim() ? std::to_string(x.shape().back()) : std::string("no")) +
                                  " features but in_features=" + std::to_string(options_.in_features()) +
                                  " (input shape " + shape_str(x.shape()) + ")");
    return activation_(linear(x, weight, bias));
  }

  std::string name() const override { return "Linear"; }
  std::string extra_repr() const override {
    std::string s = "in_features=" + std::to_string(options_.in_features()) +
                    ", out_features=" + std::to_string(options_.out_features()) + ", bias=" + repr_bool(bias.defined());
    if (activation_.kind != Activation::Kind::None) s += std::string(", activation=") + activation_.name();
    return s;
  }
  const LinearOptions& options() const { return options_; }

  Tensor weight;  // (out_features, in_features)
  Tensor bias;    // (out_features,), undefined when options.bias() is false

 private:
  LinearOptions options_;
  Activation activation_;
};

}  // namespace nn
}  // namespace nablagrad
