// nablagrad/layers/container.h - Sequential (layers applied in order) and Flatten.
//
//     nn::Sequential net(nn::Conv2D(1, 8, 3), nn::ReLU(), nn::Flatten(), nn::Linear(8 * 26 * 26, 10));
//     net.push_back(std::make_shared<nn::Softmax>());
//     Tensor y = net.forward(x);     // children are named "0", "1", ...: "3.weight"
//
// Layers passed by value are moved into shared_ptrs; pass a shared_ptr to keep a handle.
#pragma once

#include <memory>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "../layer.h"
#include "../tensor_operations.h"

namespace nablagrad {
namespace nn {

namespace detail {
template <typename T>
struct is_layer_arg : std::is_base_of<Layer, T> {};
template <typename T>
struct is_layer_arg<std::shared_ptr<T>> : std::is_base_of<Layer, T> {};
}  // namespace detail

class Sequential : public Layer {
 public:
  Sequential() = default;
  /// Each argument is a std::shared_ptr to a layer or a layer (moved in).
  template <typename... Ls,
            typename = std::enable_if_t<(sizeof...(Ls) > 0) && (detail::is_layer_arg<std::decay_t<Ls>>::value && ...)>>
  explicit Sequential(Ls&&... layers) {
    (push_back(std::forward<Ls>(layers)), ...);
  }
  explicit Sequential(const std::vector<std::shared_ptr<Layer>>& layers) {
    for (const auto& l : layers) push_back(l);
  }

  /// Appends a layer under the next index name ("0", "1", ...).
  template <typename L>
  std::shared_ptr<L> push_back(std::shared_ptr<L> layer) {
    static_assert(std::is_base_of<Layer, L>::value, "Sequential: elements must derive from nn::Layer");
    auto held = register_module(std::to_string(layers_.size()), std::move(layer));
    layers_.push_back(held);
    return held;
  }
  template <typename L, typename = std::enable_if_t<std::is_base_of<Layer, std::decay_t<L>>::value>>
  std::shared_ptr<std::decay_t<L>> push_back(L&& layer) {
    static_assert(!std::is_lvalue_reference<L>::value,
                  "Sequential: pass a layer as a temporary or with std::move, or pass a std::shared_ptr");
    return push_back(std::make_shared<std::decay_t<L>>(std::move(layer)));
  }

  Tensor forward(const Tensor& x) override {
    Tensor y = x;
    for (const auto& l : layers_) y = l->forward(y);
    return y;
  }

  std::size_t size() const { return layers_.size(); }
  bool empty() const { return layers_.empty(); }
  /// The i-th layer; negative i counts from the end. std::out_of_range outside.
  std::shared_ptr<Layer> operator[](int64_t i) const {
    const int64_t n = static_cast<int64_t>(layers_.size());
    const int64_t j = i < 0 ? i + n : i;
    if (j < 0 || j >= n)
      throw std::out_of_range("Sequential: index " + std::to_string(i) + " is out of range for " + std::to_string(n) +
                              " layer(s)");
    return layers_[static_cast<std::size_t>(j)];
  }
  const std::vector<std::shared_ptr<Layer>>& layers() const { return layers_; }

  std::string name() const override { return "Sequential"; }

 private:
  std::vector<std::shared_ptr<Layer>> layers_;
};

/// Flattens dims start_dim..end_dim into one (torch.nn.Flatten). On NHWC images the
/// features come out in (H, W, C) order, not PyTorch's (C, H, W) order.
class Flatten : public Layer {
 public:
  explicit Flatten(int64_t start_dim = 1, int64_t end_dim = -1) : start_dim_(start_dim), end_dim_(end_dim) {}
  Tensor forward(const Tensor& x) override { return flatten(x, start_dim_, end_dim_); }
  std::string name() const override { return "Flatten"; }
  std::string extra_repr() const override {
    return "start_dim=" + std::to_string(start_dim_) + ", end_dim=" + std::to_string(end_dim_);
  }
  int64_t start_dim() const { return start_dim_; }
  int64_t end_dim() const { return end_dim_; }

 private:
  int64_t start_dim_, end_dim_;
};

}  // namespace nn
}  // namespace nablagrad
