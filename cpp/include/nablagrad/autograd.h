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
  bool active() const { return node || leaf; }
};

/// backward(grad_of_output, grads_of_inputs): fill grads_of_inputs[i] (pre-sized, undefined)
/// for each input i with node.needs(i); leave the others undefined.
using BackwardFn = std::function<void(const Tensor& grad, std::vector<Tensor>& input_grads)>;

struct Node {
  const char* name = "";
  std::vector<Edge> next;
  BackwardFn backward;
  bool released = false;
  // The inputs' storages and their versions when the op ran: closures read saved inputs,
  // so an in-place write to one of them before backward would give a wrong gradient.
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

/// Records `out = op(inputs)` in the graph when needed. Call after computing `out`.
inline void record(Tensor& out, const char* name, const std::vector<Tensor>& inputs, BackwardFn fn) {
  auto node = std::make_shared<Node>();
  node->name = name;
  node->next.resize(inputs.size());
  node->saved_versions.reserve(inputs.size());
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    const Tensor& t = inputs[i];
    if (t.defined()) node->saved_versions.emplace_back(t.impl().storage, t.version());
    if (!t.defined() || !t.requires_grad()) continue;
    if (t.impl().grad_fn)
      node->next[i].node = t.impl().grad_fn;
    else
      node->next[i].leaf = t.impl_ptr();
  }
  node->backward = std::move(fn);
  out.impl().requires_grad = true;
  out.impl().grad_fn = std::move(node);
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

inline void check_grad(const Tensor& g, const TensorImpl& target, const char* who) {
  if (g.shape() != target.shape || g.dtype() != target.dtype)
    throw std::logic_error(std::string("autograd: node '") + who + "' produced a gradient of shape " +
                           shape_str(g.shape()) + " " + dtype_name(g.dtype()) + " for a tensor of shape " +
                           shape_str(target.shape) + " " + dtype_name(target.dtype));
}

/// Pass `g` by std::move: when no other handle or view refers to it, the leaf takes it over;
/// otherwise (the same gradient for two leaves, a user's grad argument) it gets a private copy.
inline std::mutex& leaf_grad_mutex() {
  static std::mutex m;
  return m;
}

inline void accumulate_leaf(TensorImpl& leaf, Tensor g) {
  // Several threads may run backward through graphs sharing a leaf (e.g. Hogwild-style
  // training): the read-modify-write of .grad is serialised so no update is lost.
  std::lock_guard<std::mutex> lock(leaf_grad_mutex());
  if (!leaf.grad) {
    // Keep the gradient private: copy when the tensor or its storage is referenced elsewhere.
    if (!g.is_contiguous() || g.impl_ptr().use_count() > 1 || g.impl().storage.use_count() > 1) {
      Tensor c = Tensor::empty(g.shape(), g.dtype());
      Tensor::copy_into(c, g);
      g = c;
    }
    leaf.grad = g.impl_ptr();
  } else {
    leaf.grad = add_raw(Tensor(leaf.grad), g).impl_ptr();
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
  // 2. Run nodes whose consumers have all delivered their gradients.
  std::unordered_map<Node*, Tensor> pending;
  pending[root_node.get()] = grad;
  std::vector<Node*> ready{root_node.get()};
  std::vector<Tensor> input_grads;
  while (!ready.empty()) {
    Node* n = ready.back();
    ready.pop_back();
    Tensor g = std::move(pending[n]);
    pending.erase(n);
    input_grads.assign(n->next.size(), Tensor());
    for (const auto& sv : n->saved_versions) {
      const std::shared_ptr<Storage> st = sv.first.lock();
      if (st && st->version != sv.second)
        throw std::runtime_error(std::string("backward: an input of '") + n->name +
                                 "' was modified in place after the op used it (its version is " +
                                 std::to_string(st->version) + ", expected " + std::to_string(sv.second) +
                                 "); the gradient would be wrong. Clone the tensor before modifying it, "
                                 "or modify it after backward()");
    }
    if (g.defined()) n->backward(g, input_grads);  // else no gradient reached it: pass nothing on
    g = Tensor();
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
        auto it = pending.find(child);
        if (it == pending.end() || !it->second.defined())
          pending[child] = gi;
        else
          it->second = detail::add_raw(it->second, gi);
      }
      if (--consumers[child] == 0) ready.push_back(child);
    }
    input_grads.clear();
    if (!retain_graph) {
      n->backward = nullptr;  // frees the saved tensors
      n->released = true;
    }
  }
}

}  // namespace nablagrad
