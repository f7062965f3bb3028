// nablagrad/ops/conv_options.h - option structs for the functional conv2d and pools.
//
// The positional forms (conv2d(x, w, b, 1, 1, 1, 1, 1, 1), max_pool2d(x, 2, 2, 2, 2, 0, 0))
// take six to nine integers; these option structs name them instead, in libtorch's style:
//
//     Tensor y = conv2d(x, w, b, Conv2dFuncOptions().stride(2).padding(1));
//     Tensor z = conv2d(x, w, b, Conv2dFuncOptions().padding("same"));  // stride 1 only
//     Tensor p = max_pool2d(y, Pool2dOptions(2));                        // kernel 2, stride 2
//     Tensor a = avg_pool2d(y, Pool2dOptions(3).stride(1).padding(1).count_include_pad(false));
//
// Each setter takes one value for both spatial dimensions or one per dimension (h, w);
// conv2d padding also takes four (top, bottom, left, right).
#pragma once

#include <array>
#include <stdexcept>
#include <string>

#include "conv.h"

namespace nablagrad {

/// Stride and padding of the functional conv2d (defaults: stride 1, no padding).
struct Conv2dFuncOptions {
  enum class Padding { Explicit, Same, Valid };

  Conv2dFuncOptions& stride(int64_t s) { return stride(s, s); }
  Conv2dFuncOptions& stride(int64_t stride_h, int64_t stride_w) {
    stride_ = {stride_h, stride_w};
    return *this;
  }
  Conv2dFuncOptions& padding(int64_t p) { return padding(p, p); }
  Conv2dFuncOptions& padding(int64_t pad_h, int64_t pad_w) { return padding(pad_h, pad_h, pad_w, pad_w); }
  Conv2dFuncOptions& padding(int64_t top, int64_t bottom, int64_t left, int64_t right) {
    padding_ = {top, bottom, left, right};
    mode_ = Padding::Explicit;
    return *this;
  }
  /// "same" (output as large as the input; stride 1 only; an odd total puts the extra row
  /// and column at the bottom and right, as PyTorch) or "valid" (no padding).
  Conv2dFuncOptions& padding(const std::string& mode) {
    if (mode == "same") {
      mode_ = Padding::Same;
    } else if (mode == "valid") {
      padding_ = {0, 0, 0, 0};
      mode_ = Padding::Valid;
    } else {
      throw std::invalid_argument("conv2d: padding must be \"same\", \"valid\" or integers, got \"" + mode + "\"");
    }
    return *this;
  }

  const std::array<int64_t, 2>& stride() const { return stride_; }
  /// (top, bottom, left, right); for "same" see resolved_padding().
  const std::array<int64_t, 4>& padding() const { return padding_; }
  Padding padding_mode() const { return mode_; }

  /// The padding for a kernel of fh x fw: the explicit values, or "same"'s.
  std::array<int64_t, 4> resolved_padding(int64_t fh, int64_t fw) const {
    if (mode_ != Padding::Same) return padding_;
    if (stride_[0] != 1 || stride_[1] != 1)
      throw std::invalid_argument("conv2d: padding=\"same\" needs stride 1, got stride (" +
                                  std::to_string(stride_[0]) + ", " + std::to_string(stride_[1]) + ")");
    return {(fh - 1) / 2, fh - 1 - (fh - 1) / 2, (fw - 1) / 2, fw - 1 - (fw - 1) / 2};
  }

 private:
  std::array<int64_t, 2> stride_{{1, 1}};
  std::array<int64_t, 4> padding_{{0, 0, 0, 0}};
  Padding mode_ = Padding::Explicit;
};

/// conv2d (ops/conv.h) with named options: x (N, H, W, C), w (Q, FH, FW, C), bias (Q,) or an
/// undefined Tensor().
inline Tensor conv2d(const Tensor& x, const Tensor& w, const Tensor& bias,
                     const Conv2dFuncOptions& options = Conv2dFuncOptions()) {
  const std::array<int64_t, 4> pad =
      w.dim() == 4 ? options.resolved_padding(w.shape()[1], w.shape()[2]) : options.padding();
  return conv2d(x, w, bias, options.stride()[0], options.stride()[1], pad[0], pad[1], pad[2], pad[3]);
}

/// Kernel, stride (default: the kernel size, as PyTorch), symmetric padding and, for average
/// pooling, whether the padding counts in the divisor (default true).
struct Pool2dOptions {
  explicit Pool2dOptions(int64_t kernel_size) : Pool2dOptions(kernel_size, kernel_size) {}
  Pool2dOptions(int64_t kernel_h, int64_t kernel_w) : kernel_{{kernel_h, kernel_w}}, stride_{{kernel_h, kernel_w}} {}

  Pool2dOptions& stride(int64_t s) { return stride(s, s); }
  Pool2dOptions& stride(int64_t stride_h, int64_t stride_w) {
    stride_ = {stride_h, stride_w};
    return *this;
  }
  Pool2dOptions& padding(int64_t p) { return padding(p, p); }
  Pool2dOptions& padding(int64_t pad_h, int64_t pad_w) {
    padding_ = {pad_h, pad_w};
    return *this;
  }
  Pool2dOptions& count_include_pad(bool on) {
    count_include_pad_ = on;
    return *this;
  }

  const std::array<int64_t, 2>& kernel_size() const { return kernel_; }
  const std::array<int64_t, 2>& stride() const { return stride_; }
  const std::array<int64_t, 2>& padding() const { return padding_; }
  bool count_include_pad() const { return count_include_pad_; }

 private:
  std::array<int64_t, 2> kernel_;
  std::array<int64_t, 2> stride_;
  std::array<int64_t, 2> padding_{{0, 0}};
  bool count_include_pad_ = true;
};

/// max_pool2d (ops/conv.h) with named options; count_include_pad is ignored.
inline Tensor max_pool2d(const Tensor& x, const Pool2dOptions& o) {
  return max_pool2d(x, o.kernel_size()[0], o.kernel_size()[1], o.stride()[0], o.stride()[1], o.padding()[0],
                    o.padding()[1]);
}

/// avg_pool2d (ops/conv.h) with named options.
inline Tensor avg_pool2d(const Tensor& x, const Pool2dOptions& o) {
  return avg_pool2d(x, o.kernel_size()[0], o.kernel_size()[1], o.stride()[0], o.stride()[1], o.padding()[0],
                    o.padding()[1], o.count_include_pad());
}

}  // namespace nablagrad
