// nablagrad/layers/conv.h - the 2-D convolution layer, NHWC.
//
//     nn::Conv2D conv(nn::Conv2dOptions(3, 16, 3).stride(2).padding(1).activation("relu"));
//     Tensor y = conv.forward(x);     // x (N, H, W, 3) -> (N, Ho, Wo, 16)
//     nn::Conv2D same(nn::Conv2dOptions(16, 16, {3, 5}).padding("same"));
//
// weight (Q, FH, FW, C) = (out_channels, kernel_h, kernel_w, in_channels); PyTorch's is
// (Q, C, FH, FW): permute (0, 2, 3, 1) to move one into the other. bias (Q,).
// padding: an int or (h, w) pair (the same on both sides), "valid" (0) or "same" (output
// size = input size; stride 1 only; an odd total padding puts the extra row/column at the
// bottom/right, as PyTorch). Initialisation as PyTorch: weight and bias ~
// U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = FH * FW * C.
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

/// Conv2D's padding: explicit (h, w) sizes, "valid" (none) or "same".
struct Conv2dPadding {
  enum class Mode { Explicit, Valid, Same };
  Mode mode = Mode::Explicit;
  Pair2 size{0, 0};

  Conv2dPadding() = default;
  Conv2dPadding(int64_t both) : size(both) {}  // NOLINT: implicit, `.padding(1)`
  Conv2dPadding(int64_t h, int64_t w) : size(h, w) {}
  Conv2dPadding(Pair2 p) : size(p) {}  // NOLINT
  Conv2dPadding(const std::string& name) { set_name(name); }  // NOLINT: `.padding("same")`
  template <std::size_t N>
  Conv2dPadding(const char (&name)[N]) { set_name(name); }  // NOLINT (a literal; 0 stays an int)

  std::string str() const {
    if (mode == Mode::Same) return "'same'";
    if (mode == Mode::Valid) return "'valid'";
    return size.str();
  }

 private:
  void set_name(const std::string& name) {
    if (name == "same") mode = Mode::Same;
    else if (name == "valid") mode = Mode::Valid;
    else throw std::invalid_argument("Conv2D: padding must be an int, a pair, 'same' or 'valid', got '" + name + "'");
  }
};

struct Conv2dOptions {
  Conv2dOptions(int64_t in_channels, int64_t out_channels, Pair2 kernel_size)
      : in_channels_(in_channels), out_channels_(out_channels), kernel_size_(kernel_size) {}
  NABLAGRAD_ARG(int64_t, in_channels);   // C
  NABLAGRAD_ARG(int64_t, out_channels);  // Q
  NABLAGRAD_ARG(Pair2, kernel_size);     // (FH, FW)
  NABLAGRAD_ARG(Pair2, stride) = 1;      // (SH, SW)
  NABLAGRAD_ARG(Conv2dPadding, padding) = 0;
  NABLAGRAD_ARG(bool, bias) = true;
  /// Activation applied to the output: "" / "none", "relu", "sigmoid", "tanh", "gelu", "softmax".
  NABLAGRAD_ARG(std::string, activation);
  NABLAGRAD_ARG(DType, dtype) = DType::Float32;
};

class Conv2D : public Layer {
 public:
  Conv2D(int64_t in_channels, int64_t out_channels, Pair2 kernel_size)
      : Conv2D(Conv2dOptions(in_channels, out_channels, kernel_size)) {}
  explicit Conv2D(const Conv2dOptions& options) : options_(options) {
    const Pair2 k = options.kernel_size(), s = options.stride();
    if (options.in_channels() <= 0 || options.out_channels() <= 0)
      throw std::invalid_argument("Conv2D: in_channels and out_channels must be positive, got in_channels=" +
                                  std::to_string(options.in_channels()) + ", out_channels=" +
                                  std::to_string(options.out_channels()));
    if (k.h <= 0 || k.w <= 0)
      throw std::invalid_argument("Conv2D: kernel_size must be positive, got " + k.str());
    if (s.h <= 0 || s.w <= 0) throw std::invalid_argument("Conv2D: stride must be positive, got " + s.str());
    const Conv2dPadding& p = options.padding();
    if (p.mode == Conv2dPadding::Mode::Explicit && (p.size.h < 0 || p.size.w < 0))
      throw std::invalid_argument("Conv2D: padding must be >= 0, got " + p.size.str());
    if (p.mode == Conv2dPadding::Mode::Same && (s.h != 1 || s.w != 1))
      throw std::invalid_argument("Conv2D: padding='same' is only supported with stride 1, got stride " + s.str());
    detail::check_parameter_dtype(options.dtype(), "Conv2D");
    activation_ = Activation::parse(options.activation(), "Conv2D");
    if (p.mode == Conv2dPadding::Mode::Same) {
      pad_top_ = (k.h - 1) / 2;
      pad_bottom_ = k.h - 1 - pad_top_;
      pad_left_ = (k.w - 1) / 2;
      pad_right_ = k.w - 1 - pad_left_;
    } else if (p.mode == Conv2dPadding::Mode::Explicit) {
      pad_top_ = pad_bottom_ = p.size.h;
      pad_left_ = pad_right_ = p.size.w;
    }
    weight = register_parameter(
        "weight", Tensor::empty({options.out_channels(), k.h, k.w, options.in_channels()}, options.dtype()));
    if (options.bias()) bias = register_parameter("bias", Tensor::empty({options.out_channels()}, options.dtype()));
    reset_parameters();
  }

  /// PyTorch's default initialisation, redrawn from the seeded generator.
  void reset_parameters() {
    init::kaiming_uniform_(weight, std::sqrt(5.0));
    if (bias.defined()) {
      const int64_t fan_in = init::calculate_fan_in_and_fan_out(weight).first;
      const double bound = 1.0 / std::sqrt(static_cast<double>(fan_in));
      init::uniform_(bias, -bound, bound);
    }
  }

  Tensor forward(const Tensor& x) override {
    if (!is_floating(x.dtype()))
      throw std::domain_error(std::string("Conv2D: input must be float32 or float64, got ") + dtype_name(x.dtype()) +
                              " (input shape " + shape_str(x.shape()) + ")");
    if (x.dim() != 4)
      throw std::invalid_argument("Conv2D: input must be 4-D (N, H, W, C), got shape " + shape_str(x.shape()));
    if (x.shape()[3] != options_.in_channels())
      throw std::invalid_argument("Conv2D: input has C=" + std::to_string(x.shape()[3]) +
                                  " channels but in_channels=" + std::to_string(options_.in_channels()) +
                                  " (input shape " + shape_str(x.shape()) + ", NHWC)");
    const Pair2 s = options_.stride();
    return activation_(conv2d(x, weight, bias, s.h, s.w, pad_top_, pad_bottom_, pad_left_, pad_right_));
  }

  std::string name() const override { return "Conv2D"; }
  std::string extra_repr() const override {
    std::string r = std::to_string(options_.in_channels()) + ", " + std::to_string(options_.out_channels()) +
                    ", kernel_size=" + options_.kernel_size().str() + ", stride=" + options_.stride().str();
    const Conv2dPadding& p = options_.padding();
    if (p.mode != Conv2dPadding::Mode::Explicit || p.size != Pair2(0)) r += ", padding=" + p.str();
    if (!bias.defined()) r += ", bias=False";
    if (activation_.kind != Activation::Kind::None) r += std::string(", activation=") + activation_.name();
    return r;
  }
  const Conv2dOptions& options() const { return options_; }

  Tensor weight;  // (Q, FH, FW, C)
  Tensor bias;    // (Q,), undefined when options.bias() is false

 private:
  Conv2dOptions options_;
  Activation activation_;
  int64_t pad_top_ = 0, pad_bottom_ = 0, pad_left_ = 0, pad_right_ = 0;
};

using Conv2d = Conv2D;  // PyTorch's spelling

}  // namespace nn
}  // namespace nablagrad
