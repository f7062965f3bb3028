// Tests of the fused recurrent layer ops (ops/rnn.h, kernels/rnn.h): the forward against a
// naive per-step reference written from the equations, every gradient (input, initial
// states, weights, biases) against central finite differences in float64 for the LSTM, the
// GRU and both Elman RNNs, gradients that reach the node through only one of its outputs
// (multi-output node), inference == training forward, bitwise determinism over thread
// counts, and the argument errors.
#include "nablagrad/nablagrad.h"
#include "nablagrad/layers/rnn.h"
#include "nablagrad/ops/rnn.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "test_util.h"

using namespace nablagrad;
using kernels::RnnMode;

namespace {

int64_t gates_of(RnnMode m) { return kernels::rnn_gate_count(m); }

struct Case {
  RnnMode mode;
  int64_t N, T, I, H;
  bool bias, h0, c0;
};

struct Inputs {
  Tensor x, h0, c0, w_ih, w_hh, b_ih, b_hh;
  std::vector<Tensor*> all() { return {&x, &h0, &c0, &w_ih, &w_hh, &b_ih, &b_hh}; }
};

Inputs make_inputs(const Case& c, DType dt, bool requires_grad) {
  const int64_t GH = gates_of(c.mode) * c.H;
  Inputs in;
  in.x = randn({c.N, c.T, c.I}, dt);
  if (c.h0) in.h0 = randn({c.N, c.H}, dt) * 0.5;
  if (c.c0 && c.mode == RnnMode::Lstm) in.c0 = randn({c.N, c.H}, dt) * 0.5;
  in.w_ih = randn({GH, c.I}, dt) * 0.4;
  in.w_hh = randn({GH, c.H}, dt) * 0.4;
  if (c.bias) {
    in.b_ih = randn({GH}, dt) * 0.3;
    in.b_hh = randn({GH}, dt) * 0.3;
  }
  for (Tensor* t : in.all())
    if (t->defined()) {
      *t = t->detach();
      if (requires_grad) t->requires_grad_();
    }
  return in;
}

RnnLayerOutput run(RnnMode mode, const Inputs& in) {
  switch (mode) {
    case RnnMode::Lstm: return lstm_layer(in.x, in.h0, in.c0, in.w_ih, in.w_hh, in.b_ih, in.b_hh);
    case RnnMode::Gru: return gru_layer(in.x, in.h0, in.w_ih, in.w_hh, in.b_ih, in.b_hh);
    case RnnMode::RnnTanh: return rnn_layer(in.x, in.h0, in.w_ih, in.w_hh, in.b_ih, in.b_hh, "tanh");
    case RnnMode::RnnRelu: return rnn_layer(in.x, in.h0, in.w_ih, in.w_hh, in.b_ih, in.b_hh, "relu");
  }
  return {};
}

double sigmoid_d(double v) { return 1.0 / (1.0 + std::exp(-v)); }

/// The recurrences written out step by step in double (the oracle of the forward).
void reference_forward(RnnMode mode, const Inputs& in, std::vector<double>& out, std::vector<double>& hn,
                       std::vector<double>& cn) {
  const int64_t N = in.x.shape()[0], T = in.x.shape()[1], I = in.x.shape()[2], H = in.w_hh.shape()[1];
  auto at = [](const Tensor& t, int64_t i) { return t.defined() ? t.item_at(i) : 0.0; };
  out.assign(static_cast<size_t>(N * T * H), 0.0);
  hn.assign(static_cast<size_t>(N * H), 0.0);
  cn.assign(static_cast<size_t>(N * H), 0.0);
  for (int64_t n = 0; n < N; ++n) {
    std::vector<double> h(static_cast<size_t>(H)), c(static_cast<size_t>(H));
    for (int64_t j = 0; j < H; ++j) h[j] = at(in.h0, n * H + j), c[j] = at(in.c0, n * H + j);
    for (int64_t t = 0; t < T; ++t) {
      const int64_t G = gates_of(mode);
      std::vector<double> gi(static_cast<size_t>(G * H)), gh(static_cast<size_t>(G * H));
      for (int64_t r = 0; r < G * H; ++r) {
        double a = at(in.b_ih, r), b = at(in.b_hh, r);
        for (int64_t k = 0; k < I; ++k) a += in.w_ih.item_at(r * I + k) * in.x.item_at((n * T + t) * I + k);
        for (int64_t k = 0; k < H; ++k) b += in.w_hh.item_at(r * H + k) * h[k];
        gi[r] = a, gh[r] = b;
      }
      std::vector<double> hnew(static_cast<size_t>(H));
      for (int64_t j = 0; j < H; ++j) {
        if (mode == RnnMode::Lstm) {
          const double i = sigmoid_d(gi[j] + gh[j]), f = sigmoid_d(gi[H + j] + gh[H + j]);
          const double g = std::tanh(gi[2 * H + j] + gh[2 * H + j]), o = sigmoid_d(gi[3 * H + j] + gh[3 * H + j]);
          c[j] = f * c[j] + i * g;
          hnew[j] = o * std::tanh(c[j]);
        } else if (mode == RnnMode::Gru) {
          const double r = sigmoid_d(gi[j] + gh[j]), z = sigmoid_d(gi[H + j] + gh[H + j]);
          const double nn = std::tanh(gi[2 * H + j] + r * gh[2 * H + j]);
          hnew[j] = (1 - z) * nn + z * h[j];
        } else {
          const double p = gi[j] + gh[j];
          hnew[j] = mode == RnnMode::RnnTanh ? std::tanh(p) : (p > 0 ? p : 0.0);
        }
      }
      h = hnew;
      for (int64_t j = 0; j < H; ++j) out[static_cast<size_t>((n * T + t) * H + j)] = h[j];
    }
    for (int64_t j = 0; j < H; ++j) hn[n * H + j] = h[j], cn[n * H + j] = c[j];
  }
}

double tol_for(DType dt) { return dt == DType::Float64 ? 1e-12 : 2e-5; }

void check_forward(const Case& c, DType dt) {
  manual_seed(7);
  Inputs in = make_inputs(c, dt, false);
  RnnLayerOutput r = run(c.mode, in);
  std::vector<double> out, hn, cn;
  reference_forward(c.mode, in, out, hn, cn);
  CHECK(r.output.shape() == (Shape{c.N, c.T, c.H}));
  CHECK(r.h_n.shape() == (Shape{c.N, c.H}));
  for (int64_t i = 0; i < r.output.numel(); ++i) CHECK_NEAR(r.output.item_at(i), out[i], tol_for(dt));
  for (int64_t i = 0; i < r.h_n.numel(); ++i) CHECK_NEAR(r.h_n.item_at(i), hn[i], tol_for(dt));
  if (c.mode == RnnMode::Lstm)
    for (int64_t i = 0; i < r.c_n.numel(); ++i) CHECK_NEAR(r.c_n.item_at(i), cn[i], tol_for(dt));
  else
    CHECK(!r.c_n.defined());
}

void test_forward_matches_reference() {
  for (RnnMode m : {RnnMode::Lstm, RnnMode::Gru, RnnMode::RnnTanh, RnnMode::RnnRelu})
    for (DType dt : {DType::Float64, DType::Float32}) {
      check_forward({m, 3, 4, 5, 6, true, true, true}, dt);
      check_forward({m, 2, 1, 3, 17, false, false, false}, dt);  // T = 1, no bias, zero state
      check_forward({m, 1, 6, 9, 8, true, false, true}, dt);     // batch 1, tail of the vector exp
    }
}

/// loss = sum(out * R0) + sum(h_n * R1) + sum(c_n * R2) with weights w_out, w_h, w_c (0 drops a term).
double loss_value(RnnMode mode, const Inputs& in, const std::vector<Tensor>& R, const double w[3]) {
  NoGradGuard ng;
  RnnLayerOutput r = run(mode, in);
  const Tensor outs[3] = {r.output, r.h_n, r.c_n};
  double s = 0;
  for (int k = 0; k < 3; ++k)
    if (w[k] != 0 && outs[k].defined())
      for (int64_t i = 0; i < outs[k].numel(); ++i) s += w[k] * outs[k].item_at(i) * R[k].item_at(i);
  return s;
}

void check_gradients(const Case& c, const double w[3]) {
  manual_seed(11);
  Inputs in = make_inputs(c, DType::Float64, true);
  RnnLayerOutput r = run(c.mode, in);
  std::vector<Tensor> R = {randn(r.output.shape(), DType::Float64), randn(r.h_n.shape(), DType::Float64),
                           randn({c.N, c.H}, DType::Float64)};
  Tensor loss;
  const Tensor outs[3] = {r.output, r.h_n, r.c_n};
  for (int k = 0; k < 3; ++k) {
    if (w[k] == 0 || !outs[k].defined()) continue;
    Tensor term = sum(mul(outs[k], R[k] * w[k]));
    loss = loss.defined() ? add(loss, term) : term;
  }
  backward(loss);
  const char* names[7] = {"x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh"};
  std::vector<Tensor*> all = in.all();
  for (size_t k = 0; k < all.size(); ++k) {
    Tensor& p = *all[k];
    if (!p.defined()) continue;
    Tensor g = p.grad();
    CHECK(g.defined());
    if (!g.defined()) continue;
    CHECK(g.shape() == p.shape());
    double* data = p.data<double>();
    for (int64_t i = 0; i < p.numel(); ++i) {
      const double keep = data[i], eps = 1e-6;
      data[i] = keep + eps;
      const double lp = loss_value(c.mode, in, R, w);
      data[i] = keep - eps;
      const double lm = loss_value(c.mode, in, R, w);
      data[i] = keep;
      const double fd = (lp - lm) / (2 * eps);
      if (!(std::fabs(g.item_at(i) - fd) <= 1e-6 * (1 + std::fabs(fd))))
        std::printf("  mode %d %s[%lld]: analytic %.12g, numeric %.12g\n", static_cast<int>(c.mode), names[k],
                    static_cast<long long>(i), g.item_at(i), fd);
      CHECK_NEAR(g.item_at(i), fd, 1e-6);
    }
  }
}

void test_gradients_finite_differences() {
  const double all[3] = {1, 1, 1};
  for (RnnMode m : {RnnMode::Lstm, RnnMode::Gru, RnnMode::RnnTanh, RnnMode::RnnRelu}) {
    check_gradients({m, 2, 3, 3, 4, true, true, true}, all);
    check_gradients({m, 1, 1, 2, 3, false, true, true}, all);   // T = 1, batch 1, no bias
    check_gradients({m, 3, 2, 1, 2, true, false, false}, all);  // zero initial state
  }
}

void test_gradient_through_one_output() {
  // Only h_n (or only c_n) reaches the loss: the node gets zeros for the other outputs.
  const double only_h[3] = {0, 1, 0}, only_c[3] = {0, 0, 1}, only_out[3] = {1, 0, 0};
  check_gradients({RnnMode::Lstm, 2, 3, 2, 3, true, true, true}, only_h);
  check_gradients({RnnMode::Lstm, 2, 3, 2, 3, true, true, true}, only_c);
  check_gradients({RnnMode::Lstm, 2, 3, 2, 3, true, true, true}, only_out);
  check_gradients({RnnMode::Gru, 2, 3, 2, 3, true, true, false}, only_h);
  check_gradients({RnnMode::RnnTanh, 2, 3, 2, 3, true, true, false}, only_h);
}

void test_one_node_for_all_outputs() {
  manual_seed(3);
  Inputs in = make_inputs({RnnMode::Lstm, 2, 5, 3, 4, true, true, true}, DType::Float32, true);
  RnnLayerOutput r = run(RnnMode::Lstm, in);
  CHECK(r.output.impl().grad_fn != nullptr);
  CHECK(r.output.impl().grad_fn == r.h_n.impl().grad_fn);
  CHECK(r.output.impl().grad_fn == r.c_n.impl().grad_fn);
  CHECK(r.output.impl().output_nr == 0 && r.h_n.impl().output_nr == 1 && r.c_n.impl().output_nr == 2);
  // A second backward through the freed node is refused; modifying the output in place
  // before backward is caught by the saved-version check.
  backward(sum(r.h_n));
  CHECK_THROWS(backward(sum(r.c_n)), std::runtime_error);
  RnnLayerOutput r2 = run(RnnMode::Lstm, in);
  r2.output.bump_version();
  CHECK_THROWS(backward(sum(r2.h_n)), std::runtime_error);
}

template <typename T>
bool bitwise_equal(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() &&
         std::memcmp(a.data<T>(), b.data<T>(), sizeof(T) * static_cast<size_t>(a.numel())) == 0;
}

void test_inference_equals_training_forward() {
  for (RnnMode m : {RnnMode::Lstm, RnnMode::Gru, RnnMode::RnnTanh}) {
    manual_seed(5);
    Inputs in = make_inputs({m, 4, 7, 5, 9, true, true, true}, DType::Float32, true);
    RnnLayerOutput a = run(m, in);
    RnnLayerOutput b;
    {
      NoGradGuard ng;
      b = run(m, in);
    }
    CHECK(b.output.impl().grad_fn == nullptr);
    CHECK(bitwise_equal<float>(a.output, b.output));
    CHECK(bitwise_equal<float>(a.h_n, b.h_n));
    if (m == RnnMode::Lstm) CHECK(bitwise_equal<float>(a.c_n, b.c_n));
  }
}

void test_deterministic_across_threads() {
  const int64_t saved_threshold = kernels::gemm_parallel_threshold().load();
  kernels::gemm_parallel_threshold().store(0);
  // N = 37 splits the batch rows among threads; N = 3 (fewer than 2 rows per thread) splits
  // each step's product instead, except on one thread: both must agree bitwise.
  for (int64_t N : {37, 3})
  for (RnnMode m : {RnnMode::Lstm, RnnMode::Gru, RnnMode::RnnRelu}) {
    std::vector<std::vector<Tensor>> results;
    for (int threads : {1, 2, 3}) {
      set_num_threads(threads);
      manual_seed(9);
      Inputs in = make_inputs({m, N, 6, 29, N > 3 ? 70 : 200, true, true, true}, DType::Float32, true);
      RnnLayerOutput r = run(m, in);
      Tensor loss = add(sum(mul(r.output, r.output)), sum(r.h_n));
      backward(loss);
      std::vector<Tensor> res = {r.output, r.h_n};
      for (Tensor* t : in.all())
        if (t->defined()) res.push_back(t->grad());
      results.push_back(res);
    }
    for (size_t k = 1; k < results.size(); ++k)
      for (size_t i = 0; i < results[0].size(); ++i) CHECK(bitwise_equal<float>(results[0][i], results[k][i]));
  }
  set_num_threads(2);
  kernels::gemm_parallel_threshold().store(saved_threshold);
}

void test_argument_errors() {
  Tensor x = randn({2, 3, 4}), w_ih = randn({16, 4}), w_hh = randn({16, 4});
  CHECK_THROWS(lstm_layer(randn({3, 4}), Tensor(), Tensor(), w_ih, w_hh), std::invalid_argument);
  CHECK_THROWS(lstm_layer(randn({2, 0, 4}), Tensor(), Tensor(), w_ih, w_hh), std::invalid_argument);
  CHECK_THROWS(lstm_layer(x, Tensor(), Tensor(), randn({16, 5}), w_hh), std::invalid_argument);
  CHECK_THROWS(lstm_layer(x, Tensor(), Tensor(), w_ih, randn({12, 4})), std::invalid_argument);
  CHECK_THROWS(lstm_layer(x, randn({2, 5}), Tensor(), w_ih, w_hh), std::invalid_argument);
  CHECK_THROWS(lstm_layer(x, Tensor(), Tensor(), w_ih, w_hh, randn({15})), std::invalid_argument);
  CHECK_THROWS(lstm_layer(x, Tensor(), Tensor(), w_ih, astype(w_hh, DType::Float64)), std::domain_error);
  CHECK_THROWS(gru_layer(x, Tensor(), randn({12, 4}), randn({12, 3})), std::invalid_argument);
  CHECK_THROWS(rnn_layer(x, Tensor(), randn({4, 4}), randn({4, 4}), Tensor(), Tensor(), "sigmoid"),
               std::invalid_argument);
  // The error names the shapes.
  try {
    lstm_layer(x, Tensor(), Tensor(), randn({16, 5}), w_hh);
  } catch (const std::invalid_argument& e) {
    CHECK(std::string(e.what()).find("(16, 5)") != std::string::npos);
  }
}

void test_layers_stack_the_ops() {
  manual_seed(21);
  nn::LSTM lstm(nn::LSTMOptions(5, 6).num_layers(2).dtype(DType::Float64));
  std::vector<std::string> names;
  for (const auto& p : lstm.named_parameters()) names.push_back(p.first);
  CHECK((names == std::vector<std::string>{"weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0", "weight_ih_l1",
                                            "weight_hh_l1", "bias_ih_l1", "bias_hh_l1"}));
  CHECK(lstm.weight_ih[1].shape() == (Shape{24, 6}));
  const double bound = 1.0 / std::sqrt(6.0);
  for (const Tensor& p : lstm.parameters())
    for (int64_t i = 0; i < p.numel(); ++i) CHECK(std::fabs(p.item_at(i)) <= bound);
  CHECK(lstm.repr() == "LSTM(5, 6, num_layers=2)");
  Tensor x = randn({3, 4, 5}, DType::Float64), h0 = randn({2, 3, 6}, DType::Float64), c0 = randn({2, 3, 6}, DType::Float64);
  nn::RecurrentOutput r = lstm.forward_with_state(x, h0, c0);
  RnnLayerOutput l0 = lstm_layer(x, index(h0, {TensorIndex::integer(0)}), index(c0, {TensorIndex::integer(0)}),
                                 lstm.weight_ih[0], lstm.weight_hh[0], lstm.bias_ih[0], lstm.bias_hh[0]);
  RnnLayerOutput l1 = lstm_layer(l0.output, index(h0, {TensorIndex::integer(1)}), index(c0, {TensorIndex::integer(1)}),
                                 lstm.weight_ih[1], lstm.weight_hh[1], lstm.bias_ih[1], lstm.bias_hh[1]);
  CHECK(bitwise_equal<double>(r.output, l1.output));
  CHECK(r.h_n.shape() == (Shape{2, 3, 6}) && r.c_n.shape() == (Shape{2, 3, 6}));
  CHECK(bitwise_equal<double>(contiguous(index(r.h_n, {TensorIndex::integer(0)})), l0.h_n));
  CHECK(bitwise_equal<double>(contiguous(index(r.c_n, {TensorIndex::integer(1)})), l1.c_n));
  CHECK(bitwise_equal<double>(lstm.forward(x), lstm.forward_with_state(x).output));
  // Gradient through h_n of the first layer only: layer 1's parameters get zeros.
  backward(sum(index(r.h_n, {TensorIndex::integer(0)})));
  CHECK(lstm.weight_hh[0].grad().defined() && std::fabs(lstm.weight_hh[0].grad().item_at(0)) > 0);
  const Tensor g1 = lstm.weight_hh[1].grad();
  for (int64_t i = 0; g1.defined() && i < g1.numel(); ++i) CHECK(g1.item_at(i) == 0.0);
  // Unbatched input.
  nn::GRU gru(nn::GRUOptions(5, 6).bias(false));
  CHECK(gru.named_parameters().size() == 2);
  nn::RecurrentOutput u = gru.forward_with_state(index(x, {TensorIndex::integer(0)}).to(DType::Float32));
  CHECK(u.output.shape() == (Shape{4, 6}) && u.h_n.shape() == (Shape{1, 6}));
  nn::RNN rnn(nn::RNNOptions(5, 6).nonlinearity("relu"));
  CHECK(rnn.repr() == "RNN(5, 6, nonlinearity='relu')");
  CHECK_THROWS(nn::RNN(nn::RNNOptions(5, 6).nonlinearity("gelu")), std::invalid_argument);
  CHECK_THROWS(rnn.forward(randn({2, 3, 4})), std::invalid_argument);
  CHECK_THROWS(rnn.forward(randn({2, 3, 5}, DType::Float64)), std::domain_error);
  CHECK_THROWS(rnn.forward_with_state(randn({2, 3, 5}), randn({2, 2, 6})), std::invalid_argument);
}

}  // namespace

int main() {
  // Every SIMD level this CPU has: the float LSTM cells have their own AVX-512 code, the GEMM
  // its AVX2 and AVX-512 tiles.
  const SimdLevel initial = simd_level();
  std::vector<SimdLevel> levels{SimdLevel::Portable};
  if (cpu_has_avx2_fma()) levels.push_back(SimdLevel::AVX2);
  if (cpu_has_avx512f()) levels.push_back(SimdLevel::AVX512);
  for (SimdLevel level : levels) {
    set_simd_level(level);
    std::printf("simd level %s\n", simd_level_name(level));
    RUN_TEST(test_forward_matches_reference);
    RUN_TEST(test_gradients_finite_differences);
    RUN_TEST(test_gradient_through_one_output);
    RUN_TEST(test_one_node_for_all_outputs);
    RUN_TEST(test_inference_equals_training_forward);
    RUN_TEST(test_deterministic_across_threads);
    RUN_TEST(test_argument_errors);
    RUN_TEST(test_layers_stack_the_ops);
  }
  set_simd_level(initial);
  return test_util::finish();
}
