// nablagrad/layers/activation.h - activation layers (ReLU, Sigmoid, Tanh, GELU, Softmax,
// LeakyReLU) and the activation-by-name used by Linear and Conv2D.
//
//     nn::Sequential net(nn::Linear(4, 8), nn::ReLU(), nn::Linear(8, 3), nn::Softmax(-1));
//     Tensor y = nn::Activation::parse("gelu", "MyLayer")(x);      // by name, as Linear uses it
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

#include "../layer.h"
#include "../tensor_operations.h"

namespace nablagrad {
namespace nn {

/// An activation chosen by name: "" or "none" (identity), "relu", "sigmoid", "tanh",
/// "gelu" (exact), "softmax" (over the last axis).
struct Activation {
  enum class Kind { None, ReLU, Sigmoid, Tanh, GELU, Softmax };
  Kind kind = Kind::None;

  /// Parses a name; std::invalid_argument naming `who` for an unknown one.
  static Activation parse(const std::string& name, const char* who) {
    Activation a;
    if (name.empty() || name == "none") a.kind = Kind::None;
    else if (name == "relu") a.kind = Kind::ReLU;
    else if (name == "sigmoid") a.kind = Kind::Sigmoid;
    else if (name == "tanh") a.kind = Kind::Tanh;
    else if (name == "gelu") a.kind = Kind::GELU;
    else if (name == "softmax") a.kind = Kind::Softmax;
    else
      throw std::invalid_argument(std::string(who) + ": unknown activation '" + name +
                                  "' (expected none, relu, sigmoid, tanh, gelu or softmax)");
    return a;
  }

  /// The canonical name ("" for none).
  const char* name() const {
    switch (kind) {
      case Kind::None: return "";
      case Kind::ReLU: return "relu";
      case Kind::Sigmoid: return "sigmoid";
      case Kind::Tanh: return "tanh";
      case Kind::GELU: return "gelu";
      case Kind::Softmax: return "softmax";
    }
    return "";
  }

  Tensor operator()(const Tensor& x) const {
    switch (kind) {
      case Kind::None: return x;
      case Kind::ReLU: return relu(x);
      case Kind::Sigmoid: return sigmoid(x);
      case Kind::Tanh: return tanh(x);
      case Kind::GELU: return gelu(x);
      case Kind::Softmax: return softmax(x, -1);
    }
    return x;
  }
};

/// max(x, 0) elementwise (torch.nn.ReLU).
class ReLU : public Layer {
 public:
  Tensor forward(const Tensor& x) override { return relu(x); }
  std::string name() const override { return "ReLU"; }
};

/// 1 / (1 + exp(-x)) elementwise (torch.nn.Sigmoid).
class Sigmoid : public Layer {
 public:
  Tensor forward(const Tensor& x) override { return sigmoid(x); }
  std::string name() const override { return "Sigmoid"; }
};

/// tanh(x) elementwise (torch.nn.Tanh).
class Tanh : public Layer {
 public:
  Tensor forward(const Tensor& x) override { return tanh(x); }
  std::string name() const override { return "Tanh"; }
};

/// x * Phi(x) (approximate "none") or its tanh approximation ("tanh") (torch.nn.GELU).
class GELU : public Layer {
 public:
  explicit GELU(const std::string& approximate = "none") : approximate_(approximate) {
    if (approximate != "none" && approximate != "tanh")
      throw std::invalid_argument("GELU: approximate must be 'none' or 'tanh', got '" + approximate + "'");
  }
  Tensor forward(const Tensor& x) override { return gelu(x, approximate_ == "tanh"); }
  std::string name() const override { return "GELU"; }
  std::string extra_repr() const override { return "approximate='" + approximate_ + "'"; }
  const std::string& approximate() const { return approximate_; }

 private:
  std::string approximate_;
};

/// softmax along `dim` (torch.nn.Softmax; dim -1 is the last axis).
class Softmax : public Layer {
 public:
  explicit Softmax(int64_t dim = -1) : dim_(dim) {}
  Tensor forward(const Tensor& x) override { return softmax(x, dim_); }
  std::string name() const override { return "Softmax"; }
  std::string extra_repr() const override { return "dim=" + std::to_string(dim_); }
  int64_t dim() const { return dim_; }

 private:
  int64_t dim_;
};

/// x for x > 0, negative_slope * x otherwise (torch.nn.LeakyReLU).
class LeakyReLU : public Layer {
 public:
  explicit LeakyReLU(double negative_slope = 0.01) : negative_slope_(negative_slope) {}
  Tensor forward(const Tensor& x) override { return leaky_relu(x, negative_slope_); }
  std::string name() const override { return "LeakyReLU"; }
  std::string extra_repr() const override {
    std::ostringstream s;
    s << "negative_slope=" << negative_slope_;
    return s.str();
  }
  double negative_slope() const { return negative_slope_; }

 private:
  double negative_slope_;
};

}  // namespace nn
}  // namespace nablagrad
