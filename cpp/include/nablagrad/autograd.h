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
//
// Grad-ready hooks (what data-parallel training overlaps its communication with): a hook
// registered on a leaf with register_grad_ready_hook() runs once per backward() that
// accumulates into that leaf, right after its LAST accumulation of the pass, i.e. as soon as
// its .grad is final, while the rest of the graph is still being differentiated. A leaf used
// several times in one graph (RNN weights, tied embeddings) is accumulated several times: the
// discovery pass counts its edges, and the hook fires when the last one has delivered.
// queue_backward_callback() runs a function once when the current backward() has finished.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <iterator>
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
    for (int64_t i = 0; i < n; ++i) o[i] = static_cast<T>(wrapping_add(x[i], y[i]));
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

// ---------------------------------------------------------------------------------------
// Grad-ready hooks and post-backward callbacks (see the top of this file).
// ---------------------------------------------------------------------------------------

/// Called with the leaf once its .grad is final for the running backward() (the leaf's own
/// handle: read leaf.grad(), never write the leaf). It runs on the thread running backward(),
/// between two nodes; an exception it throws ends that backward() and propagates.
using GradReadyHook = std::function<void(const Tensor& leaf)>;

namespace detail {
/// The hooks of every leaf, keyed by its TensorImpl (TensorImpl itself stays hook-free: a
/// side table costs nothing to tensors that never get one). An entry whose leaf died is
/// stale (the address may be reused): it is recognised by its expired weak_ptr and pruned.
struct GradReadyHookTable {
  struct Entry {
    std::weak_ptr<TensorImpl> leaf;
    uint64_t id;
    std::shared_ptr<const GradReadyHook> fn;
  };
  std::mutex mutex;
  std::unordered_map<const TensorImpl*, std::vector<Entry>> by_leaf;
  std::atomic<std::size_t> count{0};  // registered entries; 0 lets backward skip all bookkeeping
  uint64_t next_id = 1;
};
inline GradReadyHookTable& grad_ready_hook_table() {
  static GradReadyHookTable* table = new GradReadyHookTable();  // never destroyed: hooks may own
  return *table;                                                // Python objects at exit
}

/// The hooks of `leaf` (copied out, so they run without the table's lock held).
inline std::vector<std::shared_ptr<const GradReadyHook>> grad_ready_hooks_of(const std::shared_ptr<TensorImpl>& leaf) {
  std::vector<std::shared_ptr<const GradReadyHook>> fns;
  GradReadyHookTable& t = grad_ready_hook_table();
  std::lock_guard<std::mutex> lock(t.mutex);
  auto it = t.by_leaf.find(leaf.get());
  if (it == t.by_leaf.end()) return fns;
  for (const auto& e : it->second)
    if (e.leaf.lock() == leaf) fns.push_back(e.fn);
  return fns;
}

/// The callbacks queued during the backward() running on this thread (null outside one).
inline std::vector<std::function<void()>>*& backward_callbacks() {
  static thread_local std::vector<std::function<void()>>* current = nullptr;
  return current;
}
}  // namespace detail

/// Registers `fn` to run once per backward() that accumulates into `leaf` (a tensor that
/// requires grad and has no grad_fn), right after its last accumulation of that pass.
/// Returns a handle for remove_grad_ready_hook(). Throws std::runtime_error for a non-leaf
/// or a tensor that does not require grad, std::invalid_argument for an empty fn.
inline uint64_t register_grad_ready_hook(const Tensor& leaf, GradReadyHook fn) {
  if (!leaf.defined() || !leaf.requires_grad() || leaf.impl().grad_fn)
    throw std::runtime_error("register_grad_ready_hook: the tensor must be a leaf that requires grad");
  if (!fn) throw std::invalid_argument("register_grad_ready_hook: empty hook");
  auto shared = std::make_shared<const GradReadyHook>(std::move(fn));
  std::vector<detail::GradReadyHookTable::Entry> stale;  // destroyed after the lock (hooks may own
  detail::GradReadyHookTable& t = detail::grad_ready_hook_table();  // objects whose deleter locks)
  std::lock_guard<std::mutex> lock(t.mutex);
  for (auto it = t.by_leaf.begin(); it != t.by_leaf.end();) {  // prune the hooks of dead leaves
    auto& v = it->second;
    for (auto& e : v)
      if (e.leaf.expired()) stale.push_back(std::move(e));
    v.erase(std::remove_if(v.begin(), v.end(), [](const auto& e) { return !e.fn; }), v.end());
    it = v.empty() ? t.by_leaf.erase(it) : std::next(it);
  }
  const uint64_t id = t.next_id++;
  t.by_leaf[leaf.impl_ptr().get()].push_back({leaf.impl_ptr(), id, std::move(shared)});
  std::size_t n = 0;
  for (const auto& kv : t.by_leaf) n += kv.second.size();
  t.count.store(n);
  return id;
}

/// Removes a hook registered by register_grad_ready_hook(); false when there is none with
/// that handle (already removed). A backward() already running may still call it once.
inline bool remove_grad_ready_hook(uint64_t id) {
  std::shared_ptr<const GradReadyHook> removed;  // destroyed after the lock
  detail::GradReadyHookTable& t = detail::grad_ready_hook_table();
  std::lock_guard<std::mutex> lock(t.mutex);
  for (auto it = t.by_leaf.begin(); it != t.by_leaf.end(); ++it) {
    auto& v = it->second;
    for (auto e = v.begin(); e != v.end(); ++e) {
      if (e->id != id) continue;
      removed = std::move(e->fn);
      v.erase(e);
      if (v.empty()) t.by_leaf.erase(it);
      t.count.fetch_sub(1);
      return true;
    }
  }
  return false;
}

/// Queues `fn` to run once when the backward() running on this thread has finished (every
/// gradient accumulated, every grad-ready hook run), in the order queued; a callback may
/// queue more. Callbacks of a backward() that throws are dropped. Call it from a grad-ready
/// hook or a node's backward; outside backward() it throws std::runtime_error.
inline void queue_backward_callback(std::function<void()> fn) {
  std::vector<std::function<void()>>* queue = detail::backward_callbacks();
  if (!queue) throw std::runtime_error("queue_backward_callback: no backward() is running on this thread");
  queue->push_back(std::move(fn));
}

namespace detail {
/// backward()'s bookkeeping of grad-ready hooks: how many edges still lead into each leaf
/// (counted in the discovery pass) and whether it received a gradient in this pass.
class LeafReadiness {
 public:
  explicit LeafReadiness(bool enabled) : enabled_(enabled) {}
  bool enabled() const { return enabled_; }
  void count_edge(const std::shared_ptr<TensorImpl>& leaf) {
    if (enabled_) ++state_[leaf.get()].remaining;
  }
  /// One edge into `leaf` has delivered (`accumulated`: with a gradient); runs its hooks
  /// when that was the last edge and some gradient arrived.
  void edge_done(const std::shared_ptr<TensorImpl>& leaf, bool accumulated) {
    if (!enabled_) return;
    State& s = state_[leaf.get()];
    s.accumulated = s.accumulated || accumulated;
    if (--s.remaining == 0 && s.accumulated) run_hooks(leaf);
  }
  static void run_hooks(const std::shared_ptr<TensorImpl>& leaf) {
    if (grad_ready_hook_table().count.load() == 0) return;
    const Tensor handle(leaf);
    for (const auto& fn : grad_ready_hooks_of(leaf)) (*fn)(handle);
  }

 private:
  struct State {
    int remaining = 0;
    bool accumulated = false;
  };
  bool enabled_;
  std::unordered_map<const TensorImpl*, State> state_;
};

/// Installs this backward()'s callback queue on the thread (restoring an enclosing one's).
class BackwardCallbackScope {
 public:
  BackwardCallbackScope() : previous_(backward_callbacks()) { backward_callbacks() = &queue_; }
  ~BackwardCallbackScope() { backward_callbacks() = previous_; }
  BackwardCallbackScope(const BackwardCallbackScope&) = delete;
  BackwardCallbackScope& operator=(const BackwardCallbackScope&) = delete;
  /// Runs the queued callbacks (and those they queue), then uninstalls the queue.
  void run() {
    for (std::size_t i = 0; i < queue_.size(); ++i) {
      std::function<void()> fn = std::move(queue_[i]);
      fn();
    }
    queue_.clear();
  }

 private:
  std::vector<std::function<void()>> queue_;
  std::vector<std::function<void()>>* previous_;
};
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
  detail::BackwardCallbackScope callbacks;
  const std::shared_ptr<Node>& root_node = root.impl().grad_fn;
  if (!root_node) {  // a leaf
    detail::accumulate_leaf(root.impl(), std::move(grad));
    detail::LeafReadiness::run_hooks(root.impl_ptr());
    callbacks.run();
    return;
  }
  // 1. Discover the graph and count consumers (iteratively), and the edges into each leaf
  //    when grad-ready hooks exist.
  detail::LeafReadiness leaves(detail::grad_ready_hook_table().count.load() != 0);
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
      if (e.leaf) leaves.count_edge(e.leaf);
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
        const bool delivered = gi.defined();
        if (delivered) {
          detail::check_grad(gi, *e.leaf, n->name);
          detail::accumulate_leaf(*e.leaf, std::move(gi));
        }
        leaves.edge_done(e.leaf, delivered);  // the leaf's last edge: its grad-ready hooks run
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
  callbacks.run();
}

}  // namespace nablagrad
