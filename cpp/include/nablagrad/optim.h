// nablagrad/optim.h - optimizers (namespace nablagrad::optim): SGD, Adam, AdamW, RMSprop.
//
// libtorch's C++ frontend, with PyTorch's update rules (see optim/functional.h for each rule
// and for the fused, multithreaded step that does the work):
//
//     #include <nablagrad/nablagrad.h>
//     using namespace nablagrad;
//     nn::Linear fc(4, 2);
//     optim::Adam opt(fc.parameters(), optim::AdamOptions(1e-3).betas({0.9, 0.999}));
//     for (...) {
//       opt.zero_grad();
//       Tensor loss = mse_loss(fc.forward(x), y);
//       loss.backward();
//       opt.step();        // one fused loop per parameter, no graph recorded
//     }
//
// Parameter groups carry their own options:
//
//     optim::SGD opt({optim::ParamGroup<optim::SGDOptions>(fc1.parameters(), optim::SGDOptions(0.1)),
//                     optim::ParamGroup<optim::SGDOptions>(fc2.parameters(), optim::SGDOptions(0.01).momentum(0.9))},
//                    optim::SGDOptions(0.1));
//     opt.param_groups()[1].options.lr(0.005);   // e.g. a learning-rate schedule
//
// Parameters whose gradient is undefined are skipped by step(). The per-parameter state
// (momentum_buffer, exp_avg, exp_avg_sq, square_avg, step as a 0-d float32 tensor - PyTorch's
// names and layout) is reachable through state(param). Invalid hyper-parameters, an empty
// parameter list, a non-leaf or non-float parameter, or one listed twice throw
// std::invalid_argument (std::domain_error for the dtype).
#pragma once

#include <array>
#include <memory>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "autograd.h"
#include "layer.h"  // NABLAGRAD_ARG
#include "optim/functional.h"
#include "tensor.h"

namespace nablagrad {
namespace optim {

/// SGD(lr, momentum=0, dampening=0, weight_decay=0, nesterov=false).
struct SGDOptions {
  explicit SGDOptions(double lr) : lr_(lr) {}
  NABLAGRAD_ARG(double, lr);
  NABLAGRAD_ARG(double, momentum) = 0.0;
  NABLAGRAD_ARG(double, dampening) = 0.0;
  NABLAGRAD_ARG(double, weight_decay) = 0.0;
  NABLAGRAD_ARG(bool, nesterov) = false;

 public:
  void validate(const char* /*who*/ = "SGD") const {
    if (!(lr_ >= 0)) throw std::invalid_argument("SGD: invalid learning rate: " + std::to_string(lr_));
    if (!(momentum_ >= 0)) throw std::invalid_argument("SGD: invalid momentum value: " + std::to_string(momentum_));
    if (!(weight_decay_ >= 0))
      throw std::invalid_argument("SGD: invalid weight_decay value: " + std::to_string(weight_decay_));
    if (nesterov_ && (momentum_ <= 0 || dampening_ != 0))
      throw std::invalid_argument("SGD: Nesterov momentum requires a momentum and zero dampening");
  }
};

/// Adam(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0).
struct AdamOptions {
  using Betas = std::array<double, 2>;
  explicit AdamOptions(double lr = 1e-3) : lr_(lr) {}
  NABLAGRAD_ARG(double, lr);
  NABLAGRAD_ARG(Betas, betas) = {0.9, 0.999};
  NABLAGRAD_ARG(double, eps) = 1e-8;
  NABLAGRAD_ARG(double, weight_decay) = 0.0;

 public:
  void validate(const char* who = "Adam") const {
    const std::string w(who);
    if (!(lr_ >= 0)) throw std::invalid_argument(w + ": invalid learning rate: " + std::to_string(lr_));
    if (!(eps_ >= 0)) throw std::invalid_argument(w + ": invalid epsilon value: " + std::to_string(eps_));
    for (int k = 0; k < 2; ++k)
      if (!(betas_[k] >= 0 && betas_[k] < 1))
        throw std::invalid_argument(w + ": invalid beta parameter at index " + std::to_string(k) + ": " +
                                    std::to_string(betas_[k]));
    if (!(weight_decay_ >= 0))
      throw std::invalid_argument(w + ": invalid weight_decay value: " + std::to_string(weight_decay_));
  }
};

/// AdamW(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2).
struct AdamWOptions : AdamOptions {
  explicit AdamWOptions(double lr = 1e-3) : AdamOptions(lr) { AdamOptions::weight_decay(1e-2); }
};

/// RMSprop(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0).
struct RMSpropOptions {
  explicit RMSpropOptions(double lr = 1e-2) : lr_(lr) {}
  NABLAGRAD_ARG(double, lr);
  NABLAGRAD_ARG(double, alpha) = 0.99;
  NABLAGRAD_ARG(double, eps) = 1e-8;
  NABLAGRAD_ARG(double, weight_decay) = 0.0;
  NABLAGRAD_ARG(double, momentum) = 0.0;

 public:
  void validate(const char* /*who*/ = "RMSprop") const {
    if (!(lr_ >= 0)) throw std::invalid_argument("RMSprop: invalid learning rate: " + std::to_string(lr_));
    if (!(eps_ >= 0)) throw std::invalid_argument("RMSprop: invalid epsilon value: " + std::to_string(eps_));
    if (!(momentum_ >= 0)) throw std::invalid_argument("RMSprop: invalid momentum value: " + std::to_string(momentum_));
    if (!(weight_decay_ >= 0))
      throw std::invalid_argument("RMSprop: invalid weight_decay value: " + std::to_string(weight_decay_));
    if (!(alpha_ >= 0)) throw std::invalid_argument("RMSprop: invalid alpha value: " + std::to_string(alpha_));
  }
};

/// Parameters that share one set of options.
template <class Options>
struct ParamGroup {
  ParamGroup(std::vector<Tensor> params_, Options options_) : params(std::move(params_)), options(std::move(options_)) {}
  std::vector<Tensor> params;
  Options options;
};

/// What every optimizer offers (so a training loop can hold any of them).
class Optimizer {
 public:
  virtual ~Optimizer() = default;
  /// One update of every parameter that has a gradient.
  virtual void step() = 0;
  /// Drops every parameter's gradient (set_to_none) or sets it to zeros.
  virtual void zero_grad(bool set_to_none = true) = 0;
  /// The learning rate of group `group`, and a setter (for schedules).
  virtual double lr(std::size_t group = 0) const = 0;
  virtual void set_lr(double lr, std::size_t group = 0) = 0;
};

/// The parameter-group bookkeeping shared by the optimizers; State is the per-parameter state.
template <class Options, class State>
class OptimizerBase : public Optimizer {
 public:
  std::vector<ParamGroup<Options>>& param_groups() { return groups_; }
  const std::vector<ParamGroup<Options>>& param_groups() const { return groups_; }
  const Options& defaults() const { return defaults_; }

  /// Adds a group (its parameters must not be in another group).
  void add_param_group(ParamGroup<Options> group) {
    group.options.validate(name_);
    if (group.params.empty()) throw std::invalid_argument(std::string(name_) + ": a parameter group is empty");
    for (const Tensor& p : group.params) {
      if (!p.defined()) throw std::invalid_argument(std::string(name_) + ": a parameter is undefined");
      if (!is_floating(p.dtype()))
        throw std::domain_error(std::string(name_) + ": can only optimize float32 or float64 tensors, got " +
                                dtype_name(p.dtype()));
      if (!p.is_leaf()) throw std::invalid_argument(std::string(name_) + ": can't optimize a non-leaf Tensor");
      for (const auto& g : groups_)
        for (const Tensor& q : g.params)
          if (q.impl_ptr() == p.impl_ptr())
            throw std::invalid_argument(std::string(name_) + ": some parameters appear in more than one parameter group");
    }
    std::unordered_set<const TensorImpl*> seen;
    for (const Tensor& p : group.params)
      if (!seen.insert(p.impl_ptr().get()).second)
        throw std::invalid_argument(std::string(name_) + ": a parameter group lists a parameter twice");
    groups_.push_back(std::move(group));
  }
  void add_param_group(std::vector<Tensor> params) { add_param_group(ParamGroup<Options>(std::move(params), defaults_)); }

  void zero_grad(bool set_to_none = true) override {
    for (auto& g : groups_)
      for (Tensor& p : g.params) {
        if (set_to_none) {
          p.reset_grad();
        } else if (p.grad().defined()) {
          p.set_grad(Tensor::zeros(p.shape(), p.dtype()));
        }
      }
  }

  double lr(std::size_t group = 0) const override { return groups_.at(group).options.lr(); }
  void set_lr(double lr, std::size_t group = 0) override { groups_.at(group).options.lr(lr); }

  /// The state of a parameter (nullptr before its first step).
  const State* state(const Tensor& param) const {
    auto it = state_.find(param.impl_ptr().get());
    return it == state_.end() ? nullptr : &it->second;
  }
  State* state(const Tensor& param) {
    auto it = state_.find(param.impl_ptr().get());
    return it == state_.end() ? nullptr : &it->second;
  }

 protected:
  OptimizerBase(const char* name, std::vector<ParamGroup<Options>> groups, Options defaults)
      : name_(name), defaults_(std::move(defaults)) {
    defaults_.validate(name_);
    if (groups.empty()) throw std::invalid_argument(std::string(name_) + ": optimizer got an empty parameter list");
    for (auto& g : groups) add_param_group(std::move(g));
  }

  /// Parameters of a group that have a gradient, with their gradients and (created on first
  /// use) states.
  struct Batch {
    std::vector<Tensor> params, grads;
    std::vector<State*> states;
  };
  template <class Init>
  Batch collect(const ParamGroup<Options>& group, Init init) {
    Batch b;
    for (const Tensor& p : group.params) {
      Tensor g = p.grad();
      if (!g.defined()) continue;
      auto it = state_.find(p.impl_ptr().get());
      if (it == state_.end()) it = state_.emplace(p.impl_ptr().get(), init(p)).first;
      b.params.push_back(p);
      b.grads.push_back(g);
      b.states.push_back(&it->second);
    }
    return b;
  }

  const char* name_;
  Options defaults_;
  std::vector<ParamGroup<Options>> groups_;
  // Keyed by the parameter's TensorImpl; the groups keep every parameter alive.
  std::unordered_map<const TensorImpl*, State> state_;
};

namespace detail {
template <class Options>
inline std::vector<ParamGroup<Options>> single_group(std::vector<Tensor> params, const Options& o) {
  std::vector<ParamGroup<Options>> g;
  if (!params.empty()) g.emplace_back(std::move(params), o);
  return g;
}
inline Tensor step_counter() { return Tensor::zeros({}, DType::Float32); }
}  // namespace detail

struct SGDParamState {
  Tensor momentum_buffer;  // undefined until the first step with momentum != 0
};

class SGD : public OptimizerBase<SGDOptions, SGDParamState> {
 public:
  SGD(std::vector<Tensor> params, SGDOptions options)
      : OptimizerBase("SGD", detail::single_group(std::move(params), options), options) {}
  SGD(std::vector<ParamGroup<SGDOptions>> groups, SGDOptions defaults)
      : OptimizerBase("SGD", std::move(groups), std::move(defaults)) {}

  void step() override {
    NoGradGuard no_grad;
    for (const auto& group : groups_) {
      Batch b = collect(group, [](const Tensor&) { return SGDParamState{}; });
      const SGDOptions& o = group.options;
      std::vector<Tensor> bufs;
      for (SGDParamState* s : b.states) bufs.push_back(s->momentum_buffer);
      sgd_step(b.params, b.grads, bufs, {o.lr(), o.momentum(), o.dampening(), o.weight_decay(), o.nesterov()});
      if (o.momentum() != 0)
        for (std::size_t i = 0; i < bufs.size(); ++i) b.states[i]->momentum_buffer = bufs[i];
    }
  }

};

struct AdamParamState {
  Tensor step;        // 0-d float32
  Tensor exp_avg;     // like the parameter
  Tensor exp_avg_sq;  // like the parameter
};

namespace detail {
inline AdamParamState adam_state(const Tensor& p) {
  return {step_counter(), Tensor::zeros(p.shape(), p.dtype()), Tensor::zeros(p.shape(), p.dtype())};
}
}  // namespace detail

class Adam : public OptimizerBase<AdamOptions, AdamParamState> {
 public:
  Adam(std::vector<Tensor> params, AdamOptions options = AdamOptions())
      : OptimizerBase("Adam", detail::single_group(std::move(params), options), options) {}
  Adam(std::vector<ParamGroup<AdamOptions>> groups, AdamOptions defaults)
      : OptimizerBase("Adam", std::move(groups), std::move(defaults)) {}

  void step() override { run(false); }

 protected:
  Adam(const char* name, std::vector<ParamGroup<AdamOptions>> groups, AdamOptions defaults)
      : OptimizerBase(name, std::move(groups), std::move(defaults)) {}
  void run(bool decoupled) {
    NoGradGuard no_grad;
    for (const auto& group : groups_) {
      Batch b = collect(group, detail::adam_state);
      std::vector<Tensor> m, v, steps;
      for (AdamParamState* s : b.states) {
        m.push_back(s->exp_avg);
        v.push_back(s->exp_avg_sq);
        steps.push_back(s->step);
      }
      const AdamOptions& o = group.options;
      adam_step(b.params, b.grads, m, v, steps,
                {o.lr(), o.betas()[0], o.betas()[1], o.eps(), o.weight_decay(), decoupled});
    }
  }
};

/// Adam with decoupled weight decay (p *= 1 - lr * weight_decay before the Adam update).
class AdamW : public Adam {
 public:
  AdamW(std::vector<Tensor> params, AdamOptions options = AdamWOptions())
      : Adam("AdamW", detail::single_group(std::move(params), options), options) {}
  AdamW(std::vector<ParamGroup<AdamOptions>> groups, AdamOptions defaults)
      : Adam("AdamW", std::move(groups), std::move(defaults)) {}

  void step() override { run(true); }
};

struct RMSpropParamState {
  Tensor step;             // 0-d float32
  Tensor square_avg;       // like the parameter
  Tensor momentum_buffer;  // like the parameter when momentum > 0, else undefined
};

class RMSprop : public OptimizerBase<RMSpropOptions, RMSpropParamState> {
 public:
  RMSprop(std::vector<Tensor> params, RMSpropOptions options = RMSpropOptions())
      : OptimizerBase("RMSprop", detail::single_group(std::move(params), options), options) {}
  RMSprop(std::vector<ParamGroup<RMSpropOptions>> groups, RMSpropOptions defaults)
      : OptimizerBase("RMSprop", std::move(groups), std::move(defaults)) {}

  void step() override {
    NoGradGuard no_grad;
    for (const auto& group : groups_) {
      const RMSpropOptions& o = group.options;
      Batch b = collect(group, [](const Tensor& p) {
        return RMSpropParamState{detail::step_counter(), Tensor::zeros(p.shape(), p.dtype()), Tensor()};
      });
      std::vector<Tensor> sq, bufs, steps;
      for (RMSpropParamState* s : b.states) {
        if (o.momentum() > 0 && !s->momentum_buffer.defined())
          s->momentum_buffer = Tensor::zeros(s->square_avg.shape(), s->square_avg.dtype());
        sq.push_back(s->square_avg);
        bufs.push_back(s->momentum_buffer);
        steps.push_back(s->step);
      }
      rmsprop_step(b.params, b.grads, sq, bufs, steps, {o.lr(), o.alpha(), o.eps(), o.weight_decay(), o.momentum()});
    }
  }

};

}  // namespace optim
}  // namespace nablagrad
