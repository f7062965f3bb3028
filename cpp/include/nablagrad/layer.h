// nablagrad/layer.h - the abstract neural-network layer (namespace nablagrad::nn).
//
// A layer maps an input tensor to an output tensor with differentiable ops, so autograd
// derives its backward pass; a layer never writes a backward of its own. Concrete layers
// live in layers/*.h (Linear, Conv2D, pooling, normalisation, Embedding, activations,
// Sequential); this header is the contract they all follow.
//
// What a subclass MUST override:
//   Tensor forward(const Tensor& x)     the computation, a few calls to ops (ops/*.h)
//   std::string name() const            the class name shown by repr(): "Linear"
// What a subclass MAY override:
//   std::string extra_repr() const      the arguments shown in repr(): "in_features=2, ..."
//   void train(bool on)                 call Layer::train(on) too, to keep the propagation
// What it gets for free (after registering its tensors and sub-layers in its constructor):
//   operator()(x)                                 = forward(x)
//   named_parameters() / parameters()             "fc1.weight", "0.bias", ... in order,
//   named_buffers() / named_children() / named_modules()   parent before children
//   train() / eval() / is_training()              propagated to every sub-layer
//   zero_grad()                                   every parameter's .grad back to none
//   to(dtype)                                     parameters and float buffers converted
//                                                 in place (the same TensorImpl objects)
//   repr()                                        PyTorch-like printable tree
//
// A custom layer in ten lines:
//
//     struct TwoLayerNet : nablagrad::nn::Layer {
//       std::shared_ptr<nn::Linear> fc1, fc2;
//       Tensor scale;
//       TwoLayerNet() {
//         fc1 = register_module("fc1", std::make_shared<nn::Linear>(4, 8));
//         fc2 = register_module("fc2", std::make_shared<nn::Linear>(8, 2));
//         scale = register_parameter("scale", Tensor::full({2}, 1.0));
//       }
//       Tensor forward(const Tensor& x) override { return mul(fc2->forward(relu(fc1->forward(x))), scale); }
//       std::string name() const override { return "TwoLayerNet"; }
//     };
//     // named_parameters(): scale, fc1.weight, fc1.bias, fc2.weight, fc2.bias
//
// Re-entrancy (concurrent inference): forward must not stash activations or scratch space
// in members. Two threads may call forward on one model under NoGradGuard at the same time;
// only training-mode side effects (BatchNorm2D's running statistics) write to a layer.
#pragma once

#include <deque>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "autograd.h"
#include "tensor.h"

/// Declares a chainable option of an options struct, libtorch style:
///     NABLAGRAD_ARG(int64_t, stride) = 1;   ->  opts.stride(2) sets, opts.stride() reads.
#define NABLAGRAD_ARG(T, NAME)                          \
 public:                                                \
  auto NAME(const T& v)->decltype(*this) {              \
    this->NAME##_ = v;                                  \
    return *this;                                       \
  }                                                     \
  const T& NAME() const { return NAME##_; }             \
                                                        \
 private:                                               \
  T NAME##_

namespace nablagrad {
namespace nn {

/// An (h, w) pair of an option: one int for both (`3`) or two (`{3, 5}`), as PyTorch's
/// kernel_size=3 / kernel_size=(3, 5).
struct Pair2 {
  int64_t h = 0, w = 0;
  Pair2() = default;
  Pair2(int64_t both) : h(both), w(both) {}  // NOLINT: implicit, so `.stride(2)` reads naturally
  Pair2(int64_t h_, int64_t w_) : h(h_), w(w_) {}
  bool operator==(const Pair2& o) const { return h == o.h && w == o.w; }
  bool operator!=(const Pair2& o) const { return !(*this == o); }
  /// "(3, 5)", as PyTorch prints a pair.
  std::string str() const { return "(" + std::to_string(h) + ", " + std::to_string(w) + ")"; }
};

namespace detail {

/// Converts a tensor's data to `dtype` in place: the TensorImpl keeps its identity (every
/// handle, including Python wrappers, sees the new data) but gets a fresh contiguous storage.
/// Its requires_grad flag is kept and an existing .grad is converted too.
inline void convert_in_place(const Tensor& t, DType dtype) {
  if (!t.defined()) return;
  TensorImpl& impl = t.impl();
  if (impl.dtype != dtype) {
    Tensor converted = Tensor::empty(impl.shape, dtype);
    Tensor::copy_into(converted, t);
    impl.storage = converted.impl().storage;
    impl.strides = converted.impl().strides;
    impl.offset = 0;
    impl.dtype = dtype;
  }
  const Tensor g = t.grad();  // read and replaced under the leaf-grad mutex
  if (g.defined() && g.dtype() != dtype) {
    Tensor converted = Tensor::empty(g.shape(), dtype);
    Tensor::copy_into(converted, g);
    nablagrad::detail::set_leaf_grad(impl, converted.impl_ptr());
  }
}

inline std::string indent_lines(const std::string& text, const std::string& pad) {
  std::string out;
  std::size_t start = 0;
  bool first = true;
  while (start <= text.size()) {
    const std::size_t end = text.find('\n', start);
    const std::string line = text.substr(start, end == std::string::npos ? std::string::npos : end - start);
    if (!first) out += "\n" + pad;
    out += line;
    first = false;
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return out;
}

}  // namespace detail

/// Python spelling of a flag inside extra_repr() ("True"/"False", as PyTorch prints it).
inline const char* repr_bool(bool v) { return v ? "True" : "False"; }

class Layer : public std::enable_shared_from_this<Layer> {
 public:
  using NamedTensors = std::vector<std::pair<std::string, Tensor>>;
  using NamedLayers = std::vector<std::pair<std::string, std::shared_ptr<Layer>>>;

  virtual ~Layer() = default;

  /// The layer's computation. Must not store activations or scratch in members.
  virtual Tensor forward(const Tensor& x) = 0;
  Tensor operator()(const Tensor& x) { return forward(x); }

  /// Class name shown in repr(), e.g. "Linear".
  virtual std::string name() const = 0;
  /// One-line description of the arguments, e.g. "in_features=2, out_features=3, bias=True".
  virtual std::string extra_repr() const { return ""; }

  /// PyTorch-like tree: "Name(extra)" for a leaf layer, otherwise
  ///     Name(
  ///       (child): ChildRepr
  ///     )
  std::string repr() const {
    const std::string extra = extra_repr();
    if (children_.empty()) return name() + "(" + extra + ")";
    std::string out = name() + "(";
    if (!extra.empty()) out += "\n  " + detail::indent_lines(extra, "  ");
    for (const auto& c : children_) out += "\n  (" + c.first + "): " + detail::indent_lines(c.second->repr(), "  ");
    return out + "\n)";
  }

  // ---- registration (call from the subclass's constructor) ----------------------------
  /// Registers a parameter under `name` (unique among this layer's parameters, buffers and
  /// children; no '.'). A leaf tensor keeps its identity and is made to require grad; a
  /// non-leaf is detached first. Float dtypes only (std::domain_error otherwise).
  Tensor& register_parameter(const std::string& name, Tensor t) {
    check_new_name(name, "register_parameter");
    if (!t.defined()) throw std::invalid_argument("register_parameter: '" + name + "' is an undefined tensor");
    if (!is_floating(t.dtype()))
      throw std::domain_error("register_parameter: '" + name + "' has dtype " + dtype_name(t.dtype()) +
                              "; only float32/float64 tensors can be parameters (they require grad)");
    if (t.impl().grad_fn) t = t.alias();
    t.impl().requires_grad = true;
    parameters_.emplace_back(name, std::move(t));
    return parameters_.back().second;
  }

  /// Registers non-trainable state (saved and converted with the layer; never requires grad).
  Tensor& register_buffer(const std::string& name, Tensor t) {
    check_new_name(name, "register_buffer");
    if (!t.defined()) throw std::invalid_argument("register_buffer: '" + name + "' is an undefined tensor");
    if (t.impl().grad_fn) t = t.alias();
    t.impl().requires_grad = false;
    buffers_.emplace_back(name, std::move(t));
    return buffers_.back().second;
  }

  /// Registers a sub-layer; its parameters appear as "<name>.<their name>".
  template <class L>
  std::shared_ptr<L> register_module(const std::string& name, std::shared_ptr<L> module) {
    static_assert(std::is_base_of<Layer, L>::value, "register_module: L must derive from nn::Layer");
    check_new_name(name, "register_module");
    if (!module) throw std::invalid_argument("register_module: '" + name + "' is a null layer");
    if (module.get() == this) throw std::invalid_argument("register_module: a layer cannot contain itself");
    children_.emplace_back(name, module);
    return module;
  }

  // ---- walks ---------------------------------------------------------------------------
  /// Parameters with dotted names, this layer's own first, then each child's in order.
  NamedTensors named_parameters(bool recurse = true) const {
    NamedTensors out;
    collect(out, "", recurse, &Layer::parameters_);
    return out;
  }
  std::vector<Tensor> parameters(bool recurse = true) const {
    std::vector<Tensor> out;
    for (auto& p : named_parameters(recurse)) out.push_back(p.second);
    return out;
  }
  NamedTensors named_buffers(bool recurse = true) const {
    NamedTensors out;
    collect(out, "", recurse, &Layer::buffers_);
    return out;
  }
  std::vector<Tensor> buffers(bool recurse = true) const {
    std::vector<Tensor> out;
    for (auto& b : named_buffers(recurse)) out.push_back(b.second);
    return out;
  }
  /// The direct sub-layers, in registration order.
  const NamedLayers& named_children() const { return children_; }
  /// Every sub-layer at any depth with its dotted name, preorder; the layer itself is
  /// included under "" only when it is owned by a shared_ptr (else it is skipped).
  NamedLayers named_modules() {
    NamedLayers out;
    std::shared_ptr<Layer> self = weak_from_this().lock();
    if (self) out.emplace_back("", self);
    collect_modules(out, "");
    return out;
  }

  /// The parameter or buffer registered on this layer (not children) under `name`.
  Tensor& parameter(const std::string& name) { return find(parameters_, name, "parameter"); }
  Tensor& buffer(const std::string& name) { return find(buffers_, name, "buffer"); }

  // ---- modes and state -----------------------------------------------------------------
  /// Training mode (the default) or evaluation mode, for this layer and every sub-layer.
  virtual void train(bool on = true) {
    training_ = on;
    for (auto& c : children_) c.second->train(on);
  }
  void eval() { train(false); }
  bool is_training() const { return training_; }

  /// Resets every parameter's gradient to none (PyTorch's set_to_none=True).
  void zero_grad() {
    for (auto& p : named_parameters()) p.second.reset_grad();
  }

  /// Converts every parameter and every float buffer to `dtype` (float32 or float64) in
  /// place: the same TensorImpl objects get converted storage, so handles stay valid.
  /// Integer and bool buffers (e.g. BatchNorm2D's num_batches_tracked) are left as they are.
  void to(DType dtype) {
    if (!is_floating(dtype))
      throw std::domain_error(std::string("Layer.to: parameters must be float32 or float64, got ") + dtype_name(dtype));
    NoGradGuard no_grad;
    for (auto& p : named_parameters()) detail::convert_in_place(p.second, dtype);
    for (auto& b : named_buffers())
      if (is_floating(b.second.dtype())) detail::convert_in_place(b.second, dtype);
  }

 protected:
  Layer() = default;
  Layer(Layer&&) = default;
  Layer& operator=(Layer&&) = default;
  Layer(const Layer&) = delete;
  Layer& operator=(const Layer&) = delete;

 private:
  void check_new_name(const std::string& name, const char* what) const {
    if (name.empty()) throw std::invalid_argument(std::string(what) + ": the name cannot be empty");
    if (name.find('.') != std::string::npos)
      throw std::invalid_argument(std::string(what) + ": name '" + name + "' cannot contain '.'");
    auto taken = [&](const auto& list) {
      for (const auto& e : list)
        if (e.first == name) return true;
      return false;
    };
    if (taken(parameters_) || taken(buffers_) || taken(children_))
      throw std::invalid_argument(std::string(what) + ": '" + name + "' is already registered on " + this->name());
  }

  static Tensor& find(std::deque<std::pair<std::string, Tensor>>& list, const std::string& name, const char* what) {
    for (auto& e : list)
      if (e.first == name) return e.second;
    throw std::out_of_range(std::string("Layer: no ") + what + " named '" + name + "'");
  }

  void collect(NamedTensors& out, const std::string& prefix, bool recurse,
               std::deque<std::pair<std::string, Tensor>> Layer::*list) const {
    for (const auto& e : this->*list) out.emplace_back(prefix + e.first, e.second);
    if (!recurse) return;
    for (const auto& c : children_) c.second->collect(out, prefix + c.first + ".", true, list);
  }

  void collect_modules(NamedLayers& out, const std::string& prefix) const {
    for (const auto& c : children_) {
      out.emplace_back(prefix + c.first, c.second);
      c.second->collect_modules(out, prefix + c.first + ".");
    }
  }

  // deques: references returned by register_* stay valid as more entries are added.
  std::deque<std::pair<std::string, Tensor>> parameters_;
  std::deque<std::pair<std::string, Tensor>> buffers_;
  NamedLayers children_;
  bool training_ = true;
};

}  // namespace nn
}  // namespace nablagrad
