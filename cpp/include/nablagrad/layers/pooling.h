// nablagrad/layers/pooling.h - MaxPool2D and AvgPool2D layers, NHWC (no parameters).
//
//     nn::MaxPool2D pool(2);                                             // kernel 2, stride 2
//     nn::AvgPool2D avg(nn::AvgPool2dOptions(3).stride(1).padding(1).count_include_pad(false));
//     Tensor y = pool.forward(x);   // x (N, H, W, C) -> (N, H/2, W/2, C)
//
// PyTorch semantics (floor mode; padding <= kernel/2): the stride defaults to the kernel
// size. PyTorch's input is (N, C, H, W); ours is (N, H, W, C).
#pragma once

#include <stdexcept>
#include <string>

#include "../layer.h"
#include "../tensor_operations.h"

namespace nablagrad {
namespace nn {

struct MaxPool2dOptions {
  MaxPool2dOptions(Pair2 kernel_size) : kernel_size_(kernel_size) {}  // NOLINT: implicit
  NABLAGRAD_ARG(Pair2, kernel_size);
  /// (0, 0) = the kernel size (PyTorch's stride=None).
  NABLAGRAD_ARG(Pair2, stride) = 0;
  NABLAGRAD_ARG(Pair2, padding) = 0;
};

struct AvgPool2dOptions {
  AvgPool2dOptions(Pair2 kernel_size) : kernel_size_(kernel_size) {}  // NOLINT: implicit
  NABLAGRAD_ARG(Pair2, kernel_size);
  /// (0, 0) = the kernel size (PyTorch's stride=None).
  NABLAGRAD_ARG(Pair2, stride) = 0;
  NABLAGRAD_ARG(Pair2, padding) = 0;
  /// Whether zero padding counts in the divisor.
  NABLAGRAD_ARG(bool, count_include_pad) = true;
};

namespace detail {

/// Validates pooling options at construction (the op checks them against the input again)
/// and resolves a zero stride to the kernel size.
inline Pair2 check_pool_options(const char* who, Pair2 k, Pair2 s, Pair2 p) {
  if (k.h <= 0 || k.w <= 0) throw std::invalid_argument(std::string(who) + ": kernel_size must be positive, got " + k.str());
  if (s.h < 0 || s.w < 0 || (s.h == 0) != (s.w == 0))
    throw std::invalid_argument(std::string(who) + ": stride must be positive, got " + s.str());
  if (p.h < 0 || p.w < 0) throw std::invalid_argument(std::string(who) + ": padding must be >= 0, got " + p.str());
  if (2 * p.h > k.h || 2 * p.w > k.w)
    throw std::invalid_argument(std::string(who) + ": padding should be at most half of the kernel size, got padding " +
                                p.str() + " and kernel_size " + k.str());
  return s.h == 0 ? k : s;
}

}  // namespace detail

class MaxPool2D : public Layer {
 public:
  explicit MaxPool2D(Pair2 kernel_size) : MaxPool2D(MaxPool2dOptions(kernel_size)) {}
  explicit MaxPool2D(const MaxPool2dOptions& options) : options_(options) {
    stride_ = detail::check_pool_options("MaxPool2D", options.kernel_size(), options.stride(), options.padding());
  }
  Tensor forward(const Tensor& x) override {
    const Pair2 k = options_.kernel_size(), p = options_.padding();
    return max_pool2d(x, k.h, k.w, stride_.h, stride_.w, p.h, p.w);
  }
  std::string name() const override { return "MaxPool2D"; }
  std::string extra_repr() const override {
    return "kernel_size=" + options_.kernel_size().str() + ", stride=" + stride_.str() +
           ", padding=" + options_.padding().str();
  }
  const MaxPool2dOptions& options() const { return options_; }
  /// The stride in use (the kernel size when the options leave it unset).
  Pair2 stride() const { return stride_; }

 private:
  MaxPool2dOptions options_;
  Pair2 stride_;
};

class AvgPool2D : public Layer {
 public:
  explicit AvgPool2D(Pair2 kernel_size) : AvgPool2D(AvgPool2dOptions(kernel_size)) {}
  explicit AvgPool2D(const AvgPool2dOptions& options) : options_(options) {
    stride_ = detail::check_pool_options("AvgPool2D", options.kernel_size(), options.stride(), options.padding());
  }
  Tensor forward(const Tensor& x) override {
    const Pair2 k = options_.kernel_size(), p = options_.padding();
    return avg_pool2d(x, k.h, k.w, stride_.h, stride_.w, p.h, p.w, options_.count_include_pad());
  }
  std::string name() const override { return "AvgPool2D"; }
  std::string extra_repr() const override {
    std::string r = "kernel_size=" + options_.kernel_size().str() + ", stride=" + stride_.str() +
                    ", padding=" + options_.padding().str();
    if (!options_.count_include_pad()) r += ", count_include_pad=False";
    return r;
  }
  const AvgPool2dOptions& options() const { return options_; }
  /// The stride in use (the kernel size when the options leave it unset).
  Pair2 stride() const { return stride_; }

 private:
  AvgPool2dOptions options_;
  Pair2 stride_;
};

using MaxPool2d = MaxPool2D;  // PyTorch's spelling
using AvgPool2d = AvgPool2D;

}  // namespace nn
}  // namespace nablagrad
