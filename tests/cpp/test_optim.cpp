// Optimizers (optim.h, optim/functional.h) against hand-computed steps and a plain reference
// loop in double, bitwise independence of the thread count, and the in-place ops
// (ops/inplace.h): values, broadcasting, dtype rules, autograd's rules and version bumps.
#include <nablagrad/nablagrad.h>
#include <nablagrad/ops/inplace.h>
#include <nablagrad/optim.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "test_util.h"

using namespace nablagrad;

namespace {

Tensor vec(std::vector<double> v) { return Tensor::from_vector(v, {static_cast<int64_t>(v.size())}); }

/// A float64 leaf requiring grad, with its gradient set to `grad`.
Tensor param_with_grad(std::vector<double> value, std::vector<double> grad) {
  Tensor p = vec(value);
  p.requires_grad_();
  p.set_grad(vec(grad));
  return p;
}

void test_sgd_hand_computed() {
  // lr 0.1, momentum 0.9, weight decay 0.1, the same gradient twice:
  // step 1: d = g + 0.1 p = (0.6, -0.8); buf = d; p = p - 0.1 d = (0.94, 2.08)
  // step 2: d = (0.594, -0.792); buf = 0.9 buf + d = (1.134, -1.512); p = (0.8266, 2.2312)
  Tensor p = param_with_grad({1.0, 2.0}, {0.5, -1.0});
  optim::SGD opt({p}, optim::SGDOptions(0.1).momentum(0.9).weight_decay(0.1));
  const uint64_t v0 = p.version();
  opt.step();
  CHECK_NEAR(p.item_at(0), 0.94, 1e-15);
  CHECK_NEAR(p.item_at(1), 2.08, 1e-15);
  CHECK(p.version() == v0 + 1);
  opt.step();
  CHECK_NEAR(p.item_at(0), 0.8266, 1e-14);
  CHECK_NEAR(p.item_at(1), 2.2312, 1e-14);
  CHECK_NEAR(opt.state(p)->momentum_buffer.item_at(0), 1.134, 1e-14);
  // Nesterov, no weight decay: p -= lr * (g + momentum * buf)
  Tensor q = param_with_grad({1.0}, {2.0});
  optim::SGD nest({q}, optim::SGDOptions(0.5).momentum(0.5).nesterov(true));
  nest.step();  // buf = 2; d = 2 + 0.5 * 2 = 3; q = 1 - 1.5
  CHECK_NEAR(q.item_at(0), -0.5, 1e-15);
  // dampening: buf = momentum * buf + (1 - dampening) * g from the second step on
  Tensor r = param_with_grad({0.0}, {1.0});
  optim::SGD damp({r}, optim::SGDOptions(1.0).momentum(0.5).dampening(0.5));
  damp.step();  // buf = 1, r = -1
  damp.step();  // buf = 0.5 + 0.5 = 1, r = -2
  CHECK_NEAR(r.item_at(0), -2.0, 1e-15);
}

/// Adam / AdamW in plain double arithmetic, straight from the paper + PyTorch's bias correction.
std::vector<double> adam_reference(std::vector<double> p, const std::vector<std::vector<double>>& grads, double lr,
                                   double b1, double b2, double eps, double wd, bool decoupled) {
  std::vector<double> m(p.size(), 0.0), v(p.size(), 0.0);
  for (std::size_t t = 1; t <= grads.size(); ++t) {
    for (std::size_t i = 0; i < p.size(); ++i) {
      double g = grads[t - 1][i];
      if (decoupled) p[i] *= 1 - lr * wd;
      else g += wd * p[i];
      m[i] = b1 * m[i] + (1 - b1) * g;
      v[i] = b2 * v[i] + (1 - b2) * g * g;
      const double mhat = m[i] / (1 - std::pow(b1, double(t)));
      const double denom = std::sqrt(v[i]) / std::sqrt(1 - std::pow(b2, double(t))) + eps;
      p[i] -= lr * mhat / denom;
    }
  }
  return p;
}

void test_adam_against_reference() {
  for (bool decoupled : {false, true}) {
    const std::vector<double> init{1.0, -2.0, 0.5};
    std::vector<std::vector<double>> grads;
    for (int t = 0; t < 25; ++t) grads.push_back({std::sin(t + 1.0), 0.3 * std::cos(2.0 * t), -0.7 + 0.05 * t});
    Tensor p = vec(init);
    p.requires_grad_();
    optim::AdamOptions opts(0.05);
    opts.betas({0.8, 0.99}).eps(1e-6).weight_decay(0.1);
    std::unique_ptr<optim::Optimizer> opt;
    if (decoupled) opt = std::make_unique<optim::AdamW>(std::vector<Tensor>{p}, opts);
    else opt = std::make_unique<optim::Adam>(std::vector<Tensor>{p}, opts);
    for (const auto& g : grads) {
      p.set_grad(vec(g));
      opt->step();
    }
    const std::vector<double> want = adam_reference(init, grads, 0.05, 0.8, 0.99, 1e-6, 0.1, decoupled);
    for (std::size_t i = 0; i < want.size(); ++i) CHECK_NEAR(p.item_at(static_cast<int64_t>(i)), want[i], 1e-12);
  }
  // First Adam step by hand: m = 0.05, v = 0.00025, step size lr / 0.1 = 1, denom = 0.5 + 1e-8
  Tensor q = param_with_grad({1.0}, {0.5});
  optim::Adam adam({q}, optim::AdamOptions(0.1));
  adam.step();
  CHECK_NEAR(q.item_at(0), 1.0 - 0.05 / (0.5 + 1e-8), 1e-15);
  CHECK(adam.state(q)->step.item<float>() == 1.0f);
  CHECK_NEAR(adam.state(q)->exp_avg.item_at(0), 0.05, 1e-15);
}

void test_rmsprop_hand_computed() {
  // alpha 0.9: sq = 0.1 * 4 = 0.4; avg = sqrt(0.4) + eps; p = 1 - 0.01 * 2 / avg
  Tensor p = param_with_grad({1.0}, {2.0});
  optim::RMSprop opt({p}, optim::RMSpropOptions(0.01).alpha(0.9).eps(0.0));
  opt.step();
  CHECK_NEAR(p.item_at(0), 1.0 - 0.01 * 2.0 / std::sqrt(0.4), 1e-15);
  // with momentum 0.5: buf = g / avg; second step buf = 0.5 buf + g / avg'
  Tensor q = param_with_grad({1.0}, {2.0});
  optim::RMSprop mom({q}, optim::RMSpropOptions(0.01).alpha(0.9).eps(0.0).momentum(0.5));
  mom.step();
  mom.step();
  const double b1 = 2.0 / std::sqrt(0.4), sq2 = 0.9 * 0.4 + 0.1 * 4.0, b2 = 0.5 * b1 + 2.0 / std::sqrt(sq2);
  CHECK_NEAR(q.item_at(0), 1.0 - 0.01 * b1 - 0.01 * b2, 1e-14);
}

void test_groups_skip_and_zero_grad() {
  Tensor a = param_with_grad({1.0}, {1.0});
  Tensor b = param_with_grad({1.0}, {1.0});
  Tensor c = vec({5.0});
  c.requires_grad_();  // no gradient: skipped
  optim::SGD opt({optim::ParamGroup<optim::SGDOptions>({a}, optim::SGDOptions(0.1)),
                  optim::ParamGroup<optim::SGDOptions>({b, c}, optim::SGDOptions(0.01))},
                 optim::SGDOptions(0.1));
  opt.step();
  CHECK_NEAR(a.item_at(0), 0.9, 1e-15);
  CHECK_NEAR(b.item_at(0), 0.99, 1e-15);
  CHECK(c.item_at(0) == 5.0);
  opt.set_lr(0.5, 1);
  CHECK(opt.lr(1) == 0.5);
  opt.zero_grad(false);
  CHECK(a.grad().defined() && a.grad().item_at(0) == 0.0);
  opt.zero_grad();
  CHECK(!a.grad().defined() && !b.grad().defined());
  opt.step();  // nothing has a gradient: nothing changes
  CHECK_NEAR(a.item_at(0), 0.9, 1e-15);
}

void test_errors() {
  Tensor p = param_with_grad({1.0}, {1.0});
  CHECK_THROWS(optim::SGD({p}, optim::SGDOptions(-0.1)), std::invalid_argument);
  CHECK_THROWS(optim::SGD(std::vector<Tensor>{}, optim::SGDOptions(0.1)), std::invalid_argument);
  CHECK_THROWS(optim::SGD({p}, optim::SGDOptions(0.1).nesterov(true)), std::invalid_argument);
  CHECK_THROWS(optim::Adam({p}, optim::AdamOptions().betas({1.0, 0.9})), std::invalid_argument);
  CHECK_THROWS(optim::Adam({p, p}), std::invalid_argument);
  Tensor nonleaf = mul(p, p);
  CHECK_THROWS(optim::Adam({nonleaf}), std::invalid_argument);
  CHECK_THROWS(optim::RMSprop({Tensor::zeros({2}, DType::Int64)}), std::domain_error);
  // The functional step checks every tensor before writing anything.
  Tensor q = vec({1.0, 2.0});
  std::vector<Tensor> bufs(1);
  CHECK_THROWS(optim::sgd_step({q}, {vec({1.0})}, bufs, {0.1, 0.0, 0.0, 0.0, false}), std::invalid_argument);
  CHECK_THROWS(optim::sgd_step({q}, {Tensor::zeros({2}, DType::Float32)}, bufs, {0.1, 0.0, 0.0, 0.0, false}),
               std::domain_error);
  CHECK(q.item_at(0) == 1.0);
}

void test_threads_bitwise_and_float32() {
  // A parameter large enough to be split across threads, plus a small one: results must be
  // bitwise equal for 1 and 4 threads.
  const int64_t n = 200003;
  auto run = [&](int threads) {
    set_num_threads(threads);
    manual_seed(7);
    Tensor big = randn({n}), small = randn({3});
    big.requires_grad_();
    small.requires_grad_();
    optim::Adam opt({big, small}, optim::AdamOptions(1e-2).weight_decay(0.01));
    for (int s = 0; s < 3; ++s) {
      manual_seed(100 + s);
      big.set_grad(randn({n}));
      small.set_grad(randn({3}));
      opt.step();
    }
    return std::vector<Tensor>{big, small};
  };
  const int before = get_num_threads();
  std::vector<Tensor> one = run(1), four = run(4);
  set_num_threads(before);
  CHECK(std::memcmp(one[0].raw_data(), four[0].raw_data(), n * sizeof(float)) == 0);
  CHECK(std::memcmp(one[1].raw_data(), four[1].raw_data(), 3 * sizeof(float)) == 0);
  CHECK(one[0].dtype() == DType::Float32);
}

void test_lanes_match_scalar_tail() {
  // Equal elements must stay bitwise equal whether a step computes them in SIMD lanes or in
  // the scalar tail (9 = 2 x 4 lanes + 1, or 4 x 2 + 1 for float64).
  for (DType dt : {DType::Float32, DType::Float64}) {
    Tensor p = Tensor::full({9}, 0.37, dt);
    p.requires_grad_();
    for (const bool decoupled : {false, true}) {
      optim::AdamOptions o(0.01);
      o.betas({0.3, 0.9}).weight_decay(0.1);  // beta1 0.3: lerp weight 0.7, the other branch
      std::unique_ptr<optim::Optimizer> opt;
      if (decoupled) opt = std::make_unique<optim::AdamW>(std::vector<Tensor>{p}, o);
      else opt = std::make_unique<optim::Adam>(std::vector<Tensor>{p}, optim::AdamOptions(0.01).weight_decay(0.1));
      for (int s = 0; s < 5; ++s) {
        p.set_grad(Tensor::full({9}, 0.1 * (s + 1) - 0.25, dt));
        opt->step();
      }
    }
    for (int64_t i = 1; i < 9; ++i) CHECK(p.item_at(i) == p.item_at(0));
    CHECK(p.item_at(0) != 0.37);
    for (const double momentum : {0.0, 0.9}) {
      Tensor q = Tensor::full({9}, 0.37, dt);
      q.requires_grad_();
      optim::RMSprop rms({q}, optim::RMSpropOptions(0.01).momentum(momentum).weight_decay(0.1));
      for (int s = 0; s < 5; ++s) {
        q.set_grad(Tensor::full({9}, 0.1 * (s + 1) - 0.25, dt));
        rms.step();
      }
      for (int64_t i = 1; i < 9; ++i) CHECK(q.item_at(i) == q.item_at(0));
      CHECK(q.item_at(0) != 0.37);
    }
  }
}

void test_non_contiguous_param() {
  // A transposed view as a parameter: updated through a copy that is written back.
  Tensor base = Tensor::from_vector(std::vector<double>{1, 2, 3, 4, 5, 6}, {2, 3});
  Tensor p = base.as_strided({3, 2}, {1, 3}, 0);
  std::vector<Tensor> bufs(1);
  optim::sgd_step({p}, {Tensor::full({3, 2}, 1.0, DType::Float64)}, bufs, {0.5, 0.0, 0.0, 0.0, false});
  CHECK(base.item_at(0) == 0.5 && base.item_at(5) == 5.5);
}

void test_inplace_values() {
  Tensor t = Tensor::from_vector(std::vector<float>{1, 2, 3, 4, 5, 6}, {2, 3});
  const uint64_t v0 = t.version();
  add_(t, Tensor{10.f, 20.f, 30.f}, 0.5);  // broadcast (3,) over (2, 3)
  CHECK(t.item_at(0) == 6.0 && t.item_at(5) == 21.0);
  CHECK(t.version() == v0 + 1);
  mul_(t, 2.0);
  CHECK(t.item_at(0) == 12.0);
  sub_(t, 2.0);
  div_(t, Tensor{2.f});
  CHECK(t.item_at(0) == 5.0);
  Tensor a = Tensor::full({2, 3}, 2.0), b = Tensor::full({2, 3}, 4.0);
  Tensor z = Tensor::zeros({2, 3});
  addcmul_(z, a, b, 0.5);
  CHECK(z.item_at(3) == 4.0);
  addcdiv_(z, a, b, 2.0);
  CHECK(z.item_at(3) == 5.0);
  lerp_(z, Tensor::full({2, 3}, 9.0), 0.25);
  CHECK(z.item_at(0) == 6.0);
  lerp_(z, Tensor::full({2, 3}, 10.0), 1.0);  // exact at weight 1
  CHECK(z.item_at(0) == 10.0);
  clamp_(z, 0.0, 3.0);
  CHECK(z.item_at(0) == 3.0);
  clamp_(z, 5.0, 4.0);  // min > max gives max
  CHECK(z.item_at(0) == 4.0);
  zero_(z);
  CHECK(z.item_at(2) == 0.0);
  fill_(z, 1.5);
  CHECK(z.item_at(2) == 1.5);
  // An operand aliasing the target: x += x.T reads the original values.
  Tensor x = Tensor::from_vector(std::vector<double>{1, 2, 3, 4}, {2, 2});
  add_(x, x.as_strided({2, 2}, {1, 2}, 0));
  CHECK(x.item_at(1) == 5.0 && x.item_at(2) == 5.0 && x.item_at(0) == 2.0);
  // A non-contiguous target
  Tensor base = Tensor::from_vector(std::vector<double>{1, 2, 3, 4}, {2, 2});
  mul_(base.as_strided({2}, {2}, 0), 10.0);  // the first column
  CHECK(base.item_at(0) == 10.0 && base.item_at(2) == 30.0 && base.item_at(1) == 2.0);
  // float32 target, float64 operand: computed in double, stored in float
  Tensor f = Tensor::full({2}, 1.0);
  add_(f, Tensor::full({2}, 1e-9, DType::Float64));
  CHECK(f.dtype() == DType::Float32 && f.item_at(0) == static_cast<double>(static_cast<float>(1.0 + 1e-9)));
  // int64 targets take integer operands
  Tensor i = Tensor::from_vector(std::vector<int64_t>{1, 2}, {2});
  add_(i, 3.0);
  mul_(i, Tensor::from_vector(std::vector<int64_t>{2, 3}, {2}));
  CHECK(i.item_at(0) == 8.0 && i.item_at(1) == 15.0);
}

void test_inplace_errors_and_autograd() {
  Tensor i = Tensor::from_vector(std::vector<int64_t>{1, 2}, {2});
  CHECK_THROWS(add_(i, 0.5), std::domain_error);
  CHECK_THROWS(add_(i, Tensor::full({2}, 1.0)), std::domain_error);
  CHECK_THROWS(div_(i, 2.0), std::domain_error);
  CHECK_THROWS(add_(i, i, 0.5), std::domain_error);
  CHECK_THROWS(lerp_(i, i, 0.5), std::domain_error);
  CHECK_THROWS(add_(Tensor::zeros({2}, DType::Bool), 1.0), std::domain_error);
  CHECK_THROWS(add_(Tensor::zeros({3}), Tensor::zeros({2, 3})), std::invalid_argument);
  CHECK_THROWS(add_(Tensor::zeros({3}), Tensor::zeros({2})), std::invalid_argument);
  CHECK_THROWS(mul_(Tensor::zeros({1}).as_strided({3}, {0}, 0), 2.0), std::runtime_error);
  // autograd: a leaf requiring grad only under no-grad
  Tensor w = Tensor::full({2}, 1.0);
  w.requires_grad_();
  CHECK_THROWS(mul_(w, 2.0), std::runtime_error);
  CHECK(w.item_at(0) == 1.0);
  {
    NoGradGuard guard;
    mul_(w, 2.0);
  }
  CHECK(w.item_at(0) == 2.0);
  CHECK_THROWS(add_(Tensor::zeros({2}), w), std::runtime_error);  // the gradient to w would be lost
  Tensor y = exp(w);
  CHECK_THROWS(mul_(y, 2.0), std::runtime_error);  // a result of a recorded op
  // writing into data an op saved (exp saves its output) makes backward refuse
  mul_(y.detach(), 2.0);
  CHECK_THROWS(sum(y).backward(), std::runtime_error);
}

}  // namespace

int main() {
  RUN_TEST(test_sgd_hand_computed);
  RUN_TEST(test_adam_against_reference);
  RUN_TEST(test_rmsprop_hand_computed);
  RUN_TEST(test_groups_skip_and_zero_grad);
  RUN_TEST(test_errors);
  RUN_TEST(test_threads_bitwise_and_float32);
  RUN_TEST(test_lanes_match_scalar_tail);
  RUN_TEST(test_non_contiguous_param);
  RUN_TEST(test_inplace_values);
  RUN_TEST(test_inplace_errors_and_autograd);
  return test_util::finish();
}
