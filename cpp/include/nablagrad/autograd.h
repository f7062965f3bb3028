// nablagrad/autograd.h - the reverse-mode autograd engine.
//
// Every differentiable op that sees an input requiring grad (and grad mode on) records a
// Node on its output: the node holds one Edge per input (to the input's own grad_fn, or to
// the input itself when it is a leaf) and a backward closure written right beside the op's
// forward in tensor_operations.h. `backward(root)` then
//   1. walks the graph iteratively (no recursion) and counts each node's consumers,
//   2. runs the nodes in reverse topological order (Kahn's algorithm), so a node used by
//      several consumers receives the sum of their gradients before its own backward runs,
//   3. accumulates into the leaves' .grad (out of place: gradients are never mutated),
//   4. frees each node's saved tensors unless retain_graph is set; a second backward
//      through a freed node throws std::runtime_error.
// Closures must capture only `alias()`es of tensors (no grad_fn), never a tensor that owns
// the node itself, so the graph has no reference cycles. Node destruction is iterative too,
// so a 10^5-node chain is freed without deep recursion.
#pragma once

#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "tensor.h"

namespace nablagrad {

/// Whether ops record a graph on this thread (see NoGradGuard).
inline bool& grad_mode_flag() {
  static thread_local bool enabled = true;
  return enabled;
}
inline bool grad_enabled() { return grad_mode_flag(); }

/// RAII: no graph is recorded while it lives (Python's `with ng.no_grad():`).
class NoGradGuard {
 public:
  NoGradGuard() : previous_(grad_mode_flag()) { grad_mode_flag() = false; }
  ~NoGradGuard() { grad_mode_flag() = previous_; }
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool previous_;
};

struct Edge {
  std::shared_ptr<Node> node;        // the input's grad_fn, or
  std::shared_ptr<TensorImpl> leaf;  // the input itself when it is a leaf requiring grad
  uint32_t output_nr = 0;            // which output of `node` the input is
  bool active() const { return node || leaf; }
};

/// backward(grad_of_output, grads_of_inputs): fill grads_of_inputs[i] (pre-sized, undefined)
/// for each input i with node.needs(i); leave the others undefined.
using BackwardFn = std::function<void(const Tensor& grad, std::vector<Tensor>& input_grads)>;
/// The same for an op with several outputs (a fused LSTM's output, h_n, c_n): grads[j] is the
/// gradient of output j; an output that received none is passed as zeros, never undefined.
using MultiBackwardFn = std::function<void(const std::vector<Tensor>& grads, std::vector<Tensor>& input_grads)>;

struct Node {
  const char* name = "";
  std::vector<Edge> next;
  BackwardFn backward;             // single-output ops (record), or
  MultiBackwardFn backward_multi;  // multi-output ops (record_multi)
  bool released = false;
  // Shape and dtype of each output: every gradient flowing into the node is checked
  // against them before the backward closure trusts it.
  std::vector<Shape> out_shapes;
  std::vector<DType> out_dtypes;
  // The storages of exactly the tensors the backward closure reads (inputs, the output,
  // masks, labels) with their versions when the op ran. An in-place write to one of them
  // before backward would give a wrong gradient, so backward refuses to run; writes to
  // tensors the closure does not read are fine (PyTorch's saved-tensor contract).
  std::vector<std::pair<std::weak_ptr<Storage>, uint64_t>> saved_versions;

  bool needs(std::size_t i) const { return i < next.size() && next[i].active(); }

  Node() = default;
  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;
  ~Node() {
    // Free the chain iteratively: take over the edges of nodes we hold the last reference to.
    std::vector<std::shared_ptr<Node>> stack;
    for (auto& e : next)
      if (e.node) stack.push_back(std::move(e.node));
    while (!stack.empty()) {
      std::shared_ptr<Node> n = std::move(stack.back());
      stack.pop_back();
      if (n.use_count() == 1) {
        for (auto& e : n->next)
          if (e.node) stack.push_back(std::move(e.node));
      }
    }
  }
};

/// True when an op with these inputs must record a node.
inline bool any_requires_grad(std::initializer_list<const Tensor*> inputs) {
  if (!grad_enabled()) return false;
  for (const Tensor* t : inputs)
    if (t->defined() && t->requires_grad()) return true;
  return false;
}
inline bool any_requires_grad(const std::vector<Tensor>& inputs) {
  if (!grad_enabled()) return false;
  for (const Tensor& t : inputs)
    if (t.defined() && t.requires_grad()) return true;
  return false;
}

namespace detail {
/// The part of record() and record_multi() that links a node to its inputs and saved tensors.
inline std::shared_ptr<Node> make_node(const char* name, const std::vector<Tensor>& inputs,
                                       std::initializer_list<Tensor> saved) {
  auto node = std::make_shared<Node>();
  node->name = name;
  node->next.resize(inputs.size());
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    const Tensor& t = inputs[i];
    if (!t.defined() || !t.requires_grad()) continue;
    if (t.impl().grad_fn) {
      node->next[i].node = t.impl().grad_fn;
      node->next[i].output_nr = t.impl().output_nr;
    } else {
      node->next[i].leaf = t.impl_ptr();
    }
  }
  node->saved_versions.reserve(saved.size());
  for (const Tensor& t : saved)
    if (t.defined()) node->saved_versions.emplace_back(t.impl().storage, t.version());
  return node;
}
}  // namespace detail

/// Records `out = op(inputs)` in the graph. Call after computing `out`.
///   inputs: the op's differentiable inputs, in the order the closure fills input_grads;
///   fn:     the backward closure (captures only alias()es, see the top of this file);
///   saved:  every tensor the closure reads (aliases of inputs, of `out`, masks, labels...);
///           their versions are checked before backward runs. Pass nothing when the
///           backward reads only the incoming gradient (add, sum, reshape...).
inline void record(Tensor& out, const char* name, const std::vector<Tensor>& inputs, BackwardFn fn,
                   std::initializer_list<Tensor> saved = {}) {
  std::shared_ptr<Node> node = detail::make_node(name, inputs, saved);
  node->out_shapes.push_back(out.shape());
  node->out_dtypes.push_back(out.dtype());
  node->backward = std::move(fn);
  out.impl().requires_grad = true;
  out.impl().output_nr = 0;
  out.impl().grad_fn = std::move(node);
}

/// Records the outputs *outs[0..k) of ONE op as one node (a fused LSTM layer returns output,
/// h_n and c_n). In backward, grads[j] is the gradient of output j, zeros for an output that
/// received none; the node is skipped when none did. `saved` as for record().
inline void record_multi(const std::vector<Tensor*>& outs, const char* name, const std::vector<Tensor>& inputs,
                         MultiBackwardFn fn, std::initializer_list<Tensor> saved = {}) {
  if (outs.empty()) throw std::logic_error(std::string("record_multi: op '") + name + "' has no outputs");
  std::shared_ptr<Node> node = detail::make_node(name, inputs, saved);
  for (const Tensor* out : outs) {
    node->out_shapes.push_back(out->shape());
    node->out_dtypes.push_back(out->dtype());
  }
  node->backward_multi = std::move(fn);
  for (std::size_t j = 0; j < outs.size(); ++j) {
    outs[j]->impl().requires_grad = true;
    outs[j]->impl().output_nr = static_cast<uint32_t>(j);
    outs[j]->impl().grad_fn = node;
  }
}

namespace detail {
// Raw elementwise sum of two same-shape, same-dtype tensors (no graph): grad accumulation.
inline Tensor add_raw(const Tensor& a, const Tensor& b) {
  Tensor ac = a.contiguous_data(), bc = b.contiguous_data();
  Tensor out = Tensor::empty(a.shape(), a.dtype());
  dispatch_all(a.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* x = ac.data<T>();
    const T* y = bc.data<T>();
    T* o = out.data<T>();
    const int64_t n = out.numel();
    for (int64_t i = 0; i < n; ++i) o[i] = static_cast<T>(x[i] + y[i]);
  });
  return out;
}

/// A gradient must have exactly the shape and dtype of the tensor it is the gradient of;
/// kernels downstream trust both (an internal error, so std::logic_error -> RuntimeError).
inline void check_grad(const Tensor& g, const Shape& shape, DType dtype, const char* who) {
  if (g.shape() != shape || g.dtype() != dtype)
    throw std::logic_error(std::string("autograd: node '") + who + "' produced a gradient of shape " +
                           shape_str(g.shape()) + " " + dtype_name(g.dtype()) + " for a tensor of shape " +
                           shape_str(shape) + " " + dtype_name(dtype));
}
inline void check_grad(const Tensor& g, const TensorImpl& target, const char* who) {
  check_grad(g, target.shape, target.dtype, who);
}

/// Throws if a tensor the node's backward reads was written in place after the op ran.
inline void check_saved_versions(const Node& n) {
  for (const auto& sv : n.saved_versions) {
    const std::shared_ptr<Storage> st = sv.first.lock();
    if (!st) continue;
    const uint64_t now = st->version;
    if (now != sv.second)
      throw std::runtime_error(std::string("backward: one of the tensors needed for the gradient of '") + n.name +
                               "' was modified by an in-place operation after the op ran (its version is " +
                               std::to_string(now) + ", expected " + std::to_string(sv.second) +
                               "); the gradient would be wrong. Clone the tensor before modifying it, or "
                               "modify it after backward()");
  }
}

/// Adds `g` to the leaf's .grad, out of place (a .grad handed out earlier keeps its values).
/// Pass `g` by std::move: when no other handle or view refers to it, the leaf takes it over;
/// otherwise (the same gradient for two leaves, a user's grad argument) it gets a private copy.
inline void accumulate_leaf(TensorImpl& leaf, Tensor g) {
  std::shared_ptr<TensorImpl> replaced;  // released after the lock (see above)
  Tensor incoming;                       // likewise: `g` before it was copied
  {
    // The read-modify-write of .grad is serialised so no update is lost.
    std::lock_guard<std::mutex> lock(leaf_grad_mutex());
    if (!leaf.grad) {
      // Keep the gradient private: copy when the tensor or its storage is referenced elsewhere.
      if (!g.is_contiguous() || g.impl_ptr().use_count() > 1 || g.impl().storage.use_count() > 1) {
        incoming = std::move(g);
        g = Tensor::empty(incoming.shape(), incoming.dtype());
        Tensor::copy_into(g, incoming);
      }
      leaf.grad = g.impl_ptr();
    } else {
      Tensor total = add_raw(Tensor(leaf.grad), g);
      replaced = std::exchange(leaf.grad, total.impl_ptr());
    }
  }
}
}  // namespace detail

/// Back-propagates from `root` with output gradient `grad` (undefined: root must have one
/// element and the gradient is 1). Accumulates into the .grad of the leaves.
inline void backward(const Tensor& root, Tensor grad = Tensor(), bool retain_graph = false) {
  if (!root.requires_grad())
    throw std::runtime_error("backward: element 0 of tensors does not require grad and does not have a grad_fn");
  if (!grad.defined()) {
    if (root.numel() != 1)
      throw std::runtime_error("backward: grad can be implicitly created only for outputs with one element, got shape " +
                               shape_str(root.shape()));
    grad = Tensor::full(root.shape(), 1.0, root.dtype());
  } else if (grad.shape() != root.shape()) {
    throw std::invalid_argument("backward: gradient of shape " + shape_str(grad.shape()) +
                                " does not match the tensor's shape " + shape_str(root.shape()));
  } else if (grad.dtype() != root.dtype()) {
    Tensor converted = Tensor::empty(grad.shape(), root.dtype());
    Tensor::copy_into(converted, grad);
    grad = converted;
  }
  NoGradGuard no_grad;
  const std::shared_ptr<Node>& root_node = root.impl().grad_fn;
  if (!root_node) {  // a leaf
    detail::accumulate_leaf(root.impl(), std::move(grad));
    return;
  }
  // 1. Discover the graph and count consumers (iteratively).
  std::unordered_map<Node*, int> consumers;
  std::vector<Node*> stack{root_node.get()};
  consumers[root_node.get()] = 0;
  while (!stack.empty()) {
    Node* n = stack.back();
    stack.pop_back();
    if (n->released)
      throw std::runtime_error(std::string("backward: trying to backward through the graph a second time (node '") +
                               n->name + "'); its saved tensors were freed. Pass retain_graph=True to the first backward call.");
    detail::check_saved_versions(*n);  // all nodes are checked before any gradient is written
    for (const Edge& e : n->next) {
      if (!e.node) continue;
      auto it = consumers.find(e.node.get());
      if (it == consumers.end()) {
        consumers.emplace(e.node.get(), 1);
        stack.push_back(e.node.get());
      } else {
        ++it->second;
      }
    }
  }
  // 2. Run nodes whose consumers have all delivered their gradients (one pending slot per
  //    output of each node).
  std::unordered_map<Node*, std::vector<Tensor>> pending;
  {
    std::vector<Tensor>& slots = pending[root_node.get()];
    slots.resize(root_node->out_shapes.size());
    slots[root.impl().output_nr] = grad;
  }
  std::vector<Node*> ready{root_node.get()};
  std::vector<Tensor> input_grads;
  while (!ready.empty()) {
    Node* n = ready.back();
    ready.pop_back();
    std::vector<Tensor> grads;
    if (auto it = pending.find(n); it != pending.end()) {
      grads = std::move(it->second);
      pending.erase(it);
    }
    input_grads.assign(n->next.size(), Tensor());
    bool any = false;
    for (const Tensor& g : grads) any = any || g.defined();
    if (any) {  // else no gradient reached it: pass nothing on
      if (n->backward) {
        n->backward(grads[0], input_grads);
      } else {
        for (std::size_t j = 0; j < n->out_shapes.size(); ++j)  // an output nobody used: zeros
          if (!grads[j].defined()) grads[j] = Tensor::zeros(n->out_shapes[j], n->out_dtypes[j]);
        n->backward_multi(grads, input_grads);
      }
    }
    grads.clear();
    for (std::size_t i = 0; i < n->next.size(); ++i) {
      const Edge& e = n->next[i];
      if (!e.active()) continue;
      Tensor& gi = input_grads[i];
      if (e.leaf) {
        if (!gi.defined()) continue;
        detail::check_grad(gi, *e.leaf, n->name);
        detail::accumulate_leaf(*e.leaf, std::move(gi));
        continue;
      }
      Node* child = e.node.get();
      if (gi.defined()) {
        detail::check_grad(gi, child->out_shapes[e.output_nr], child->out_dtypes[e.output_nr], n->name);
        std::vector<Tensor>& slots = pending[child];
        if (slots.empty()) slots.resize(child->out_shapes.size());
        Tensor& slot = slots[e.output_nr];
        slot = slot.defined() ? detail::add_raw(slot, gi) : gi;
      }
      if (--consumers[child] == 0) ready.push_back(child);
    }
    input_grads.clear();
    if (!retain_graph) {
      n->backward = nullptr;  // frees the saved tensors
      n->backward_multi = nullptr;
      n->released = true;
    }
  }
}

}  // namespace nablagrad
