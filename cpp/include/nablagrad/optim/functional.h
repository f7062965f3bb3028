// nablagrad/optim/functional.h - the fused optimizer steps (SGD, Adam/AdamW, RMSprop).
//
// Each step updates a list of parameters from their gradients and state tensors with ONE
// loop per parameter (per chunk of a large parameter), reading and writing every element
// once, instead of a dozen tensor ops per parameter. These functions are what the optimizer
// classes of optim.h and the Python optimizers (nablagrad.optim, through _core._adam_step
// etc.) call; they know nothing of parameter groups.
//
//     std::vector<Tensor> params = model.parameters(), grads, exp_avgs, exp_avg_sqs, steps;
//     ...  // grads[i] = params[i].grad(); state tensors zeros_like(params[i]); steps 0-d float32
//     optim::adam_step(params, grads, exp_avgs, exp_avg_sqs, steps, {lr, 0.9, 0.999, 1e-8, 0.0, false});
//
// The update rules are PyTorch's single-tensor ones (torch/optim/sgd.py, adam.py, rmsprop.py,
// foreach=False), with the float operations in the same order: in float32 every intermediate
// is rounded to float32 and the Python-float hyper-parameters are rounded to float32 where
// PyTorch's kernels do (lr, betas, eps, ...), while Adam's bias corrections are computed in
// double as PyTorch's Python code does. Results agree with torch.optim to a few float32 ulps
// (PyTorch's vectorised kernels fuse some multiply-adds).
//
// Layouts and checks: params are float32/float64 tensors (a non-contiguous one is updated
// through a contiguous copy); grads have each param's shape and dtype; state tensors have the
// param's shape and dtype and are contiguous (they are created by the optimizer); steps are
// 0-d float32 tensors (PyTorch's state layout), incremented here. Everything is checked
// before anything is written (std::invalid_argument for shapes, std::domain_error for dtypes).
// No graph is recorded; every parameter and state tensor written gets its version bumped.
//
// Threads: the elements of all parameters are split into chunks of at most kOptimChunk and
// the chunks run on the thread pool when there are enough elements. Every element is
// computed by the same arithmetic whatever the split, so results are bitwise independent of
// the thread count.
#pragma once

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "../tensor.h"
#include "../threading.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#define NABLAGRAD_OPTIM_SSE2 1
#else
#define NABLAGRAD_OPTIM_SSE2 0
#endif

namespace nablagrad {
namespace optim {

/// Elements per parallel task of a step.
constexpr int64_t kOptimChunk = int64_t{1} << 15;

struct SGDStepOptions {
  double lr = 0.0;
  double momentum = 0.0;
  double dampening = 0.0;
  double weight_decay = 0.0;
  bool nesterov = false;
};

struct AdamStepOptions {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
  bool decoupled_weight_decay = false;  // true: AdamW
};

struct RMSpropStepOptions {
  double lr = 1e-2;
  double alpha = 0.99;
  double eps = 1e-8;
  double weight_decay = 0.0;
  double momentum = 0.0;
};

// ---------------------------------------------------------------------------------------
// Per-element kernels on raw pointers (no Tensor, no graph): elements [lo, hi).
// The scalars arrive already converted to T where PyTorch's kernels convert them.
// ---------------------------------------------------------------------------------------
namespace kernels {

template <typename T>
struct SGDScalars {
  T weight_decay, momentum, one_minus_dampening, neg_lr;
  bool use_weight_decay, use_momentum, nesterov, first;  // first: the buffer starts as the gradient
};

template <typename T>
inline void sgd_update(T* p, const T* g, T* buf, int64_t lo, int64_t hi, const SGDScalars<T>& s) {
  for (int64_t i = lo; i < hi; ++i) {
    T d = g[i];
    if (s.use_weight_decay) d = static_cast<T>(d + s.weight_decay * p[i]);  // grad.add(param, alpha=wd)
    if (s.use_momentum) {
      T b;
      if (s.first) {
        b = d;  // buf = grad.clone()
      } else {
        b = static_cast<T>(buf[i] * s.momentum);      // buf.mul_(momentum)
        b = static_cast<T>(b + s.one_minus_dampening * d);  // .add_(grad, alpha=1 - dampening)
      }
      buf[i] = b;
      d = s.nesterov ? static_cast<T>(d + s.momentum * b) : b;  // grad.add(buf, alpha=momentum)
    }
    p[i] = static_cast<T>(p[i] + s.neg_lr * d);  // param.add_(grad, alpha=-lr)
  }
}

template <typename T>
struct AdamScalars {
  T weight_decay, decay_factor, beta1_weight, beta2, one_minus_beta2, bias_correction2_sqrt, eps, neg_step_size;
  bool coupled_weight_decay, decoupled_weight_decay;
};

#if NABLAGRAD_OPTIM_SSE2
// SSE2 (every x86-64 CPU) lanes for the loops whose square root keeps the compiler from
// vectorising them (std::sqrt may set errno). Lane arithmetic is IEEE single operations, the
// same as the scalar tail's, so results do not depend on where a chunk starts.
struct LanesF32 {
  using V = __m128;
  static constexpr int width = 4;
  static V load(const float* p) { return _mm_loadu_ps(p); }
  static void store(float* p, V x) { _mm_storeu_ps(p, x); }
  static V set1(float x) { return _mm_set1_ps(x); }
  static V add(V a, V b) { return _mm_add_ps(a, b); }
  static V sub(V a, V b) { return _mm_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm_mul_ps(a, b); }
  static V div(V a, V b) { return _mm_div_ps(a, b); }
  static V sqrt(V a) { return _mm_sqrt_ps(a); }
};
struct LanesF64 {
  using V = __m128d;
  static constexpr int width = 2;
  static V load(const double* p) { return _mm_loadu_pd(p); }
  static void store(double* p, V x) { _mm_storeu_pd(p, x); }
  static V set1(double x) { return _mm_set1_pd(x); }
  static V add(V a, V b) { return _mm_add_pd(a, b); }
  static V sub(V a, V b) { return _mm_sub_pd(a, b); }
  static V mul(V a, V b) { return _mm_mul_pd(a, b); }
  static V div(V a, V b) { return _mm_div_pd(a, b); }
  static V sqrt(V a) { return _mm_sqrt_pd(a); }
};
template <typename T> struct LanesOf;
template <> struct LanesOf<float> { using type = LanesF32; };
template <> struct LanesOf<double> { using type = LanesF64; };

/// The lanes part of adam_update: returns the first element it did not process.
template <typename T>
inline int64_t adam_update_lanes(T* p, const T* g, T* m, T* v, int64_t lo, int64_t hi, const AdamScalars<T>& s,
                                 bool small_weight) {
  using L = typename LanesOf<T>::type;
  using V = typename L::V;
  const V decay = L::set1(s.decay_factor), wd = L::set1(s.weight_decay), w = L::set1(s.beta1_weight),
          one_minus_w = L::set1(T(1) - s.beta1_weight), b2 = L::set1(s.beta2), omb2 = L::set1(s.one_minus_beta2),
          bc2 = L::set1(s.bias_correction2_sqrt), eps = L::set1(s.eps), nss = L::set1(s.neg_step_size);
  int64_t i = lo;
  for (; i + L::width <= hi; i += L::width) {
    V x = L::load(p + i);
    V d = L::load(g + i);
    if (s.decoupled_weight_decay) x = L::mul(x, decay);
    if (s.coupled_weight_decay) d = L::add(d, L::mul(wd, x));
    const V mi = L::load(m + i);
    const V mn = small_weight ? L::add(mi, L::mul(w, L::sub(d, mi))) : L::sub(d, L::mul(L::sub(d, mi), one_minus_w));
    V vn = L::mul(L::load(v + i), b2);
    vn = L::add(vn, L::mul(L::mul(omb2, d), d));
    const V denom = L::add(L::div(L::sqrt(vn), bc2), eps);
    L::store(m + i, mn);
    L::store(v + i, vn);
    L::store(p + i, L::add(x, L::mul(nss, L::div(mn, denom))));
  }
  return i;
}
#endif

template <typename T>
inline void adam_update(T* p, const T* g, T* m, T* v, int64_t lo, int64_t hi, const AdamScalars<T>& s) {
  const bool small_weight = std::abs(s.beta1_weight) < T(0.5);
#if NABLAGRAD_OPTIM_SSE2
  lo = adam_update_lanes(p, g, m, v, lo, hi, s, small_weight);
#endif
  for (int64_t i = lo; i < hi; ++i) {
    T x = p[i];
    T d = g[i];
    if (s.decoupled_weight_decay) x = static_cast<T>(x * s.decay_factor);          // param.mul_(1 - lr*wd)
    if (s.coupled_weight_decay) d = static_cast<T>(d + s.weight_decay * x);         // grad.add(param, alpha=wd)
    const T mi = m[i];                                                               // exp_avg.lerp_(grad, 1-beta1)
    const T mn = small_weight ? static_cast<T>(mi + s.beta1_weight * (d - mi))
                              : static_cast<T>(d - (d - mi) * (T(1) - s.beta1_weight));
    T vn = static_cast<T>(v[i] * s.beta2);                                           // exp_avg_sq.mul_(beta2)
    vn = static_cast<T>(vn + static_cast<T>(s.one_minus_beta2 * d) * d);            // .addcmul_(grad, grad, 1-beta2)
    const T denom = static_cast<T>(static_cast<T>(std::sqrt(vn) / s.bias_correction2_sqrt) + s.eps);
    m[i] = mn;
    v[i] = vn;
    p[i] = static_cast<T>(x + s.neg_step_size * static_cast<T>(mn / denom));        // addcdiv_(m, denom, -step_size)
  }
}

template <typename T>
struct RMSpropScalars {
  T weight_decay, alpha, one_minus_alpha, eps, momentum, neg_lr;
  bool use_weight_decay, use_momentum;
};

#if NABLAGRAD_OPTIM_SSE2
/// The lanes part of rmsprop_update: returns the first element it did not process.
template <typename T>
inline int64_t rmsprop_update_lanes(T* p, const T* g, T* sq, T* buf, int64_t lo, int64_t hi,
                                    const RMSpropScalars<T>& s) {
  using L = typename LanesOf<T>::type;
  using V = typename L::V;
  const V wd = L::set1(s.weight_decay), alpha = L::set1(s.alpha), oma = L::set1(s.one_minus_alpha),
          eps = L::set1(s.eps), mom = L::set1(s.momentum), neg_lr = L::set1(s.neg_lr);
  int64_t i = lo;
  for (; i + L::width <= hi; i += L::width) {
    const V x = L::load(p + i);
    V d = L::load(g + i);
    if (s.use_weight_decay) d = L::add(d, L::mul(wd, x));
    V a = L::mul(L::load(sq + i), alpha);
    a = L::add(a, L::mul(L::mul(oma, d), d));
    L::store(sq + i, a);
    const V avg = L::add(L::sqrt(a), eps);
    if (s.use_momentum) {
      const V b = L::add(L::mul(L::load(buf + i), mom), L::div(d, avg));
      L::store(buf + i, b);
      L::store(p + i, L::add(x, L::mul(neg_lr, b)));
    } else {
      L::store(p + i, L::add(x, L::mul(neg_lr, L::div(d, avg))));
    }
  }
  return i;
}
#endif

template <typename T>
inline void rmsprop_update(T* p, const T* g, T* sq, T* buf, int64_t lo, int64_t hi, const RMSpropScalars<T>& s) {
#if NABLAGRAD_OPTIM_SSE2
  lo = rmsprop_update_lanes(p, g, sq, buf, lo, hi, s);
#endif
  for (int64_t i = lo; i < hi; ++i) {
    T d = g[i];
    if (s.use_weight_decay) d = static_cast<T>(d + s.weight_decay * p[i]);           // grad.add(param, alpha=wd)
    T a = static_cast<T>(sq[i] * s.alpha);                                           // square_avg.mul_(alpha)
    a = static_cast<T>(a + static_cast<T>(s.one_minus_alpha * d) * d);              // .addcmul_(grad, grad, 1-alpha)
    sq[i] = a;
    const T avg = static_cast<T>(std::sqrt(a) + s.eps);                              // square_avg.sqrt().add_(eps)
    if (s.use_momentum) {
      T b = static_cast<T>(buf[i] * s.momentum);                                     // buf.mul_(momentum)
      b = static_cast<T>(b + static_cast<T>(d / avg));                               // .addcdiv_(grad, avg)
      buf[i] = b;
      p[i] = static_cast<T>(p[i] + s.neg_lr * b);                                    // param.add_(buf, alpha=-lr)
    } else {
      p[i] = static_cast<T>(p[i] + s.neg_lr * static_cast<T>(d / avg));              // param.addcdiv_(grad, avg, -lr)
    }
  }
}

}  // namespace kernels

namespace detail {

inline std::string param_label(const char* op, std::size_t i) {
  return std::string(op) + ": parameter " + std::to_string(i);
}

/// A parameter (float, without aliased elements).
inline void check_param(const Tensor& p, const char* op, std::size_t i) {
  if (!p.defined()) throw std::invalid_argument(param_label(op, i) + " is undefined");
  if (!is_floating(p.dtype()))
    throw std::domain_error(param_label(op, i) + " has dtype " + dtype_name(p.dtype()) +
                            "; optimizers update float32 or float64 tensors");
  for (std::size_t d = 0; d < p.shape().size(); ++d)
    if (p.strides()[d] == 0 && p.shape()[d] > 1)
      throw std::invalid_argument(param_label(op, i) + " of shape " + shape_str(p.shape()) +
                                  " has several elements at one memory location (an expand()ed tensor)");
}

/// A tensor that must match the parameter's shape and dtype (a gradient or a state tensor).
inline void check_like(const Tensor& t, const Tensor& p, const char* op, std::size_t i, const char* what,
                       bool need_contiguous) {
  if (!t.defined()) throw std::invalid_argument(param_label(op, i) + ": its " + what + " is undefined");
  if (t.shape() != p.shape())
    throw std::invalid_argument(param_label(op, i) + " has shape " + shape_str(p.shape()) + " but its " + what +
                                " has shape " + shape_str(t.shape()));
  if (t.dtype() != p.dtype())
    throw std::domain_error(param_label(op, i) + " has dtype " + dtype_name(p.dtype()) + " but its " + what +
                            " has dtype " + dtype_name(t.dtype()));
  if (need_contiguous && !t.is_contiguous())
    throw std::invalid_argument(param_label(op, i) + ": its " + what + " must be contiguous");
}

inline void check_step(const Tensor& s, const char* op, std::size_t i) {
  if (!s.defined() || s.dtype() != DType::Float32 || s.numel() != 1)
    throw std::invalid_argument(param_label(op, i) + ": its step count must be a one-element float32 tensor");
}

inline void check_count(std::size_t got, std::size_t want, const char* op, const char* what) {
  if (got != want)
    throw std::invalid_argument(std::string(op) + ": " + std::to_string(want) + " parameters but " +
                                std::to_string(got) + " " + what);
}

/// The contiguous tensor a step writes: the parameter itself, or a copy written back later.
inline Tensor writable(const Tensor& p) { return p.is_contiguous() ? p : p.contiguous_data(); }

/// The contiguous buffers every step works on, once the arguments are checked.
struct StepWork {
  std::vector<Tensor> params;  // writable(params[i])
  std::vector<Tensor> grads;   // contiguous gradients
  std::vector<int64_t> sizes;  // elements of params[i]
};
inline StepWork prepare_step(const std::vector<Tensor>& params, const std::vector<Tensor>& grads) {
  StepWork w;
  for (std::size_t i = 0; i < params.size(); ++i) {
    w.params.push_back(writable(params[i]));
    w.grads.push_back(grads[i].contiguous_data());
    w.sizes.push_back(params[i].numel());
  }
  return w;
}

/// Calls fn(i, lo, hi) over chunks of every tensor i (sizes[i] elements), in parallel when the
/// total is large. Chunks never span two tensors; the split does not change any result.
template <typename F>
inline void for_each_chunk(const std::vector<int64_t>& sizes, const F& fn) {
  int64_t total = 0;
  for (int64_t n : sizes) total += n;
  if (total < kOptimChunk || get_num_threads() == 1) {
    for (std::size_t i = 0; i < sizes.size(); ++i)
      if (sizes[i] > 0) fn(i, int64_t{0}, sizes[i]);
    return;
  }
  struct Chunk {
    std::size_t tensor;
    int64_t lo, hi;
  };
  std::vector<Chunk> chunks;
  for (std::size_t i = 0; i < sizes.size(); ++i)
    for (int64_t lo = 0; lo < sizes[i]; lo += kOptimChunk) chunks.push_back({i, lo, std::min(sizes[i], lo + kOptimChunk)});
  ThreadPool::instance().run(static_cast<int64_t>(chunks.size()), [&](int64_t c) {
    const Chunk& k = chunks[static_cast<std::size_t>(c)];
    fn(k.tensor, k.lo, k.hi);
  });
}

/// Writes back the parameters updated through copies, and bumps every version.
inline void finish_step(const std::vector<Tensor>& params, const std::vector<Tensor>& work,
                        std::initializer_list<const std::vector<Tensor>*> states) {
  for (std::size_t i = 0; i < params.size(); ++i) {
    if (work[i].impl_ptr() != params[i].impl_ptr()) Tensor::copy_into(params[i], work[i]);
    params[i].bump_version();
  }
  for (const std::vector<Tensor>* s : states)
    if (s)
      for (const Tensor& t : *s)
        if (t.defined()) t.bump_version();
}

inline void check_hyper(bool ok, const char* op, const std::string& what) {
  if (!ok) throw std::invalid_argument(std::string(op) + ": invalid " + what);
}

}  // namespace detail

/// One SGD step (PyTorch's rule):
///     g = grad + weight_decay * p
///     buf = g on the first step, else momentum * buf + (1 - dampening) * g    (momentum != 0)
///     g = g + momentum * buf if nesterov else buf                             (momentum != 0)
///     p = p - lr * g
/// momentum_buffers: one per parameter (ignored when momentum == 0, may then be empty); an
/// undefined entry means "first step": a new buffer is created and stored in it.
inline void sgd_step(const std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                     std::vector<Tensor>& momentum_buffers, const SGDStepOptions& o) {
  const char* op = "sgd_step";
  detail::check_hyper(o.lr >= 0, op, "learning rate " + std::to_string(o.lr));
  detail::check_hyper(o.momentum >= 0, op, "momentum " + std::to_string(o.momentum));
  detail::check_hyper(o.weight_decay >= 0, op, "weight_decay " + std::to_string(o.weight_decay));
  detail::check_hyper(!o.nesterov || (o.momentum > 0 && o.dampening == 0), op,
                      "nesterov setting: Nesterov momentum requires a momentum and zero dampening");
  const std::size_t n = params.size();
  const bool use_momentum = o.momentum != 0;
  detail::check_count(grads.size(), n, op, "gradients");
  if (use_momentum) detail::check_count(momentum_buffers.size(), n, op, "momentum buffers");
  for (std::size_t i = 0; i < n; ++i) {
    detail::check_param(params[i], op, i);
    detail::check_like(grads[i], params[i], op, i, "gradient", false);
    if (use_momentum && momentum_buffers[i].defined())
      detail::check_like(momentum_buffers[i], params[i], op, i, "momentum buffer", true);
  }
  const detail::StepWork w = detail::prepare_step(params, grads);
  std::vector<bool> first(n, false);
  for (std::size_t i = 0; i < n; ++i) {
    if (use_momentum && !momentum_buffers[i].defined()) {
      momentum_buffers[i] = Tensor::empty(params[i].shape(), params[i].dtype());
      first[i] = true;
    }
  }
  detail::for_each_chunk(w.sizes, [&](std::size_t i, int64_t lo, int64_t hi) {
    dispatch_float(params[i].dtype(), op, [&](auto tag) {
      using T = typename decltype(tag)::type;
      const kernels::SGDScalars<T> s{static_cast<T>(o.weight_decay), static_cast<T>(o.momentum),
                                     static_cast<T>(1.0 - o.dampening), static_cast<T>(-o.lr),
                                     o.weight_decay != 0, use_momentum, o.nesterov, first[i]};
      T* buf = use_momentum ? static_cast<T*>(momentum_buffers[i].raw_data()) : nullptr;
      kernels::sgd_update<T>(static_cast<T*>(w.params[i].raw_data()), static_cast<const T*>(w.grads[i].raw_data()),
                             buf, lo, hi, s);
    });
  });
  detail::finish_step(params, w.params, {use_momentum ? &momentum_buffers : nullptr});
}

/// One Adam (decoupled_weight_decay = false) or AdamW (true) step, PyTorch's rule:
///     step += 1
///     p = p * (1 - lr * weight_decay)                     (AdamW)
///     g = grad + weight_decay * p                         (Adam)
///     m = lerp(m, g, 1 - beta1);  v = beta2 * v + (1 - beta2) * g * g
///     p = p - lr / (1 - beta1^step) * m / (sqrt(v) / sqrt(1 - beta2^step) + eps)
/// exp_avgs, exp_avg_sqs: state tensors like the params (zeros before the first step);
/// steps: 0-d float32 step counts (0 before the first step).
inline void adam_step(const std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                      const std::vector<Tensor>& exp_avgs, const std::vector<Tensor>& exp_avg_sqs,
                      const std::vector<Tensor>& steps, const AdamStepOptions& o) {
  const char* op = o.decoupled_weight_decay ? "adamw_step" : "adam_step";
  detail::check_hyper(o.lr >= 0, op, "learning rate " + std::to_string(o.lr));
  detail::check_hyper(o.eps >= 0, op, "epsilon value " + std::to_string(o.eps));
  detail::check_hyper(o.beta1 >= 0 && o.beta1 < 1, op, "beta parameter at index 0: " + std::to_string(o.beta1));
  detail::check_hyper(o.beta2 >= 0 && o.beta2 < 1, op, "beta parameter at index 1: " + std::to_string(o.beta2));
  detail::check_hyper(o.weight_decay >= 0, op, "weight_decay value " + std::to_string(o.weight_decay));
  const std::size_t n = params.size();
  detail::check_count(grads.size(), n, op, "gradients");
  detail::check_count(exp_avgs.size(), n, op, "exp_avg tensors");
  detail::check_count(exp_avg_sqs.size(), n, op, "exp_avg_sq tensors");
  detail::check_count(steps.size(), n, op, "step counts");
  for (std::size_t i = 0; i < n; ++i) {
    detail::check_param(params[i], op, i);
    detail::check_like(grads[i], params[i], op, i, "gradient", false);
    detail::check_like(exp_avgs[i], params[i], op, i, "exp_avg", true);
    detail::check_like(exp_avg_sqs[i], params[i], op, i, "exp_avg_sq", true);
    detail::check_step(steps[i], op, i);
  }
  const detail::StepWork w = detail::prepare_step(params, grads);
  // Per-parameter scalars (the step counts may differ between parameters).
  std::vector<double> neg_step_size(n), bc2_sqrt(n);
  for (std::size_t i = 0; i < n; ++i) {
    float& step_t = *static_cast<float*>(steps[i].raw_data());
    step_t += 1.0f;  // step_t += 1 (a float32 tensor in PyTorch)
    const double step = static_cast<double>(step_t);
    const double bias_correction1 = 1.0 - std::pow(o.beta1, step);
    const double bias_correction2 = 1.0 - std::pow(o.beta2, step);
    neg_step_size[i] = -(o.lr / bias_correction1);
    bc2_sqrt[i] = std::pow(bias_correction2, 0.5);  // Python's bias_correction2 ** 0.5
  }
  const bool decoupled = o.decoupled_weight_decay && o.weight_decay != 0;
  const bool coupled = !o.decoupled_weight_decay && o.weight_decay != 0;
  detail::for_each_chunk(w.sizes, [&](std::size_t i, int64_t lo, int64_t hi) {
    dispatch_float(params[i].dtype(), op, [&](auto tag) {
      using T = typename decltype(tag)::type;
      const kernels::AdamScalars<T> s{static_cast<T>(o.weight_decay), static_cast<T>(1.0 - o.lr * o.weight_decay),
                                      static_cast<T>(1.0 - o.beta1),  static_cast<T>(o.beta2),
                                      static_cast<T>(1.0 - o.beta2),  static_cast<T>(bc2_sqrt[i]),
                                      static_cast<T>(o.eps),          static_cast<T>(neg_step_size[i]),
                                      coupled,                        decoupled};
      kernels::adam_update<T>(static_cast<T*>(w.params[i].raw_data()), static_cast<const T*>(w.grads[i].raw_data()),
                              static_cast<T*>(exp_avgs[i].raw_data()), static_cast<T*>(exp_avg_sqs[i].raw_data()),
                              lo, hi, s);
    });
  });
  detail::finish_step(params, w.params, {&exp_avgs, &exp_avg_sqs, &steps});
}

/// One RMSprop step (PyTorch's rule, centered=False):
///     step += 1;  g = grad + weight_decay * p
///     sq = alpha * sq + (1 - alpha) * g * g;  avg = sqrt(sq) + eps
///     buf = momentum * buf + g / avg;  p = p - lr * buf     (momentum > 0)
///     p = p - lr * g / avg                                   (otherwise)
/// momentum_buffers: like the params (zeros before the first step); may be empty when
/// momentum == 0.
inline void rmsprop_step(const std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                         const std::vector<Tensor>& square_avgs, const std::vector<Tensor>& momentum_buffers,
                         const std::vector<Tensor>& steps, const RMSpropStepOptions& o) {
  const char* op = "rmsprop_step";
  detail::check_hyper(o.lr >= 0, op, "learning rate " + std::to_string(o.lr));
  detail::check_hyper(o.eps >= 0, op, "epsilon value " + std::to_string(o.eps));
  detail::check_hyper(o.momentum >= 0, op, "momentum value " + std::to_string(o.momentum));
  detail::check_hyper(o.weight_decay >= 0, op, "weight_decay value " + std::to_string(o.weight_decay));
  detail::check_hyper(o.alpha >= 0, op, "alpha value " + std::to_string(o.alpha));
  const std::size_t n = params.size();
  const bool use_momentum = o.momentum > 0;
  detail::check_count(grads.size(), n, op, "gradients");
  detail::check_count(square_avgs.size(), n, op, "square_avg tensors");
  detail::check_count(steps.size(), n, op, "step counts");
  if (use_momentum) detail::check_count(momentum_buffers.size(), n, op, "momentum buffers");
  for (std::size_t i = 0; i < n; ++i) {
    detail::check_param(params[i], op, i);
    detail::check_like(grads[i], params[i], op, i, "gradient", false);
    detail::check_like(square_avgs[i], params[i], op, i, "square_avg", true);
    if (use_momentum) detail::check_like(momentum_buffers[i], params[i], op, i, "momentum buffer", true);
    detail::check_step(steps[i], op, i);
  }
  const detail::StepWork w = detail::prepare_step(params, grads);
  for (std::size_t i = 0; i < n; ++i) *static_cast<float*>(steps[i].raw_data()) += 1.0f;
  detail::for_each_chunk(w.sizes, [&](std::size_t i, int64_t lo, int64_t hi) {
    dispatch_float(params[i].dtype(), op, [&](auto tag) {
      using T = typename decltype(tag)::type;
      const kernels::RMSpropScalars<T> s{static_cast<T>(o.weight_decay), static_cast<T>(o.alpha),
                                         static_cast<T>(1.0 - o.alpha),  static_cast<T>(o.eps),
                                         static_cast<T>(o.momentum),     static_cast<T>(-o.lr),
                                         o.weight_decay != 0,            use_momentum};
      T* buf = use_momentum ? static_cast<T*>(momentum_buffers[i].raw_data()) : nullptr;
      kernels::rmsprop_update<T>(static_cast<T*>(w.params[i].raw_data()), static_cast<const T*>(w.grads[i].raw_data()),
                                 static_cast<T*>(square_avgs[i].raw_data()), buf, lo, hi, s);
    });
  });
  detail::finish_step(params, w.params, {&square_avgs, use_momentum ? &momentum_buffers : nullptr, &steps});
}

}  // namespace optim
}  // namespace nablagrad
