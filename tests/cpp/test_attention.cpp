// Tests of the fused scaled_dot_product_attention op (ops/attention.h, kernels/attention.h)
// and of nn::MultiHeadAttention: forward against a naive double-precision reference, every
// gradient against central finite differences (float64), masks of each kind, need_weights
// through the two-output node, dropout reproducibility and bitwise thread independence.
#include <cmath>
#include <cstring>
#include <cstdio>
#include <limits>
#include <vector>

#include "nablagrad/nablagrad.h"
#include "nablagrad/layers/attention.h"
#include "nablagrad/ops/attention.h"
#include "test_util.h"

using namespace nablagrad;

namespace {

Tensor randn64(const Shape& s) { return randn(s, DType::Float64); }

double max_abs_diff(const Tensor& a, const Tensor& b) {
  double m = 0.0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    const double x = a.item_at(i), y = b.item_at(i);
    if (std::isnan(x) && std::isnan(y)) continue;
    m = std::max(m, std::isnan(x - y) ? 1e300 : std::fabs(x - y));
  }
  return m;
}

bool bitwise_equal(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape() || a.dtype() != b.dtype()) return false;
  const Tensor ac = a.contiguous_data(), bc = b.contiguous_data();
  return std::memcmp(ac.raw_data(), bc.raw_data(), static_cast<size_t>(a.numel()) * dtype_size(a.dtype())) == 0;
}

// Naive reference on (B, H, L, D) float64 tensors. mask: (L, S) doubles added (may be -inf),
// or empty. Returns out (B, H, L, Dv); weights (B, H, L, S) through `w`.
Tensor reference(const Tensor& q, const Tensor& k, const Tensor& v, const std::vector<double>& mask, bool causal,
                 Tensor* w = nullptr) {
  const int64_t B = q.shape()[0], H = q.shape()[1], L = q.shape()[2], D = q.shape()[3];
  const int64_t S = k.shape()[2], Dv = v.shape()[3];
  Tensor out = Tensor::zeros({B, H, L, Dv}, DType::Float64);
  Tensor ws = Tensor::zeros({B, H, L, S}, DType::Float64);
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  auto at = [](const Tensor& t, int64_t b, int64_t h, int64_t i, int64_t j) {
    return t.item_at(((b * t.shape()[1] + h) * t.shape()[2] + i) * t.shape()[3] + j);
  };
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < L; ++i) {
        std::vector<double> x(S);
        double m = -INFINITY;
        for (int64_t j = 0; j < S; ++j) {
          double s = 0;
          for (int64_t d = 0; d < D; ++d) s += at(q, b, h, i, d) * at(k, b, h, j, d);
          s *= scale;
          if (!mask.empty()) s += mask[i * S + j];
          if (causal && j > i) s = -INFINITY;
          x[j] = s;
          m = std::max(m, s);
        }
        double sum = 0;
        for (int64_t j = 0; j < S; ++j) sum += (x[j] = m == -INFINITY ? 0.0 : std::exp(x[j] - m));
        for (int64_t j = 0; j < S; ++j) {
          const double p = sum > 0 ? x[j] / sum : 0.0;
          ws.data<double>()[((b * H + h) * L + i) * S + j] = p;
          for (int64_t e = 0; e < Dv; ++e) out.data<double>()[((b * H + h) * L + i) * Dv + e] += p * at(v, b, h, j, e);
        }
      }
  if (w) *w = ws;
  return out;
}

// Checks d(sum(f(inputs) * G))/d(input) of every input against central differences.
template <typename F>
void check_grads(F f, std::vector<Tensor> inputs, double tol) {
  for (Tensor& t : inputs) t.requires_grad_();
  Tensor out = f(inputs);
  const Tensor G = randn64(out.shape());
  Tensor loss = sum(mul(out, G));
  loss.backward();
  const double eps = 1e-6;
  for (Tensor& t : inputs) {
    const Tensor g = t.grad();
    CHECK(g.defined());
    if (!g.defined()) continue;
    double* p = t.data<double>();
    for (int64_t i = 0; i < t.numel(); ++i) {
      const double old = p[i];
      double lp, lm;
      {
        NoGradGuard ng;
        p[i] = old + eps;
        lp = Tensor(sum(mul(f(inputs), G))).item<double>();
        p[i] = old - eps;
        lm = Tensor(sum(mul(f(inputs), G))).item<double>();
        p[i] = old;
      }
      CHECK_NEAR(g.item_at(i), (lp - lm) / (2 * eps), tol);
    }
  }
}

void test_forward_matches_reference() {
  manual_seed(1);
  for (bool causal : {false, true}) {
    for (int64_t L : {1, 5, 37}) {
      for (int64_t S : {1, 7, 300}) {  // 300 keys: several row chunks of the kernel
        Tensor q = randn64({2, 3, L, 4}), k = randn64({2, 3, S, 4}), v = randn64({2, 3, S, 5});
        Tensor w;
        Tensor ref = reference(q, k, v, {}, causal, &w);
        AttentionOutput r = scaled_dot_product_attention(q, k, v, AttentionOptions().is_causal(causal).need_weights(true));
        CHECK(r.output.shape() == Shape({2, 3, L, 5}));
        CHECK(max_abs_diff(r.output, ref) < 1e-12);
        CHECK(max_abs_diff(r.weights, w) < 1e-12);
        // float32 through the AVX2 exp
        Tensor r32 = scaled_dot_product_attention(q.to(DType::Float32), k.to(DType::Float32), v.to(DType::Float32),
                                                  Tensor(), causal);
        CHECK(max_abs_diff(r32, ref) < 2e-5);
      }
    }
  }
}

void test_masks() {
  manual_seed(2);
  const int64_t L = 4, S = 6;
  Tensor q = randn64({2, 2, L, 3}), k = randn64({2, 2, S, 3}), v = randn64({2, 2, S, 2});
  std::vector<bool> allow(L * S);
  std::vector<double> add(L * S);
  std::vector<char> allow_c(L * S);
  for (int64_t i = 0; i < L * S; ++i) {
    allow[i] = (i * 7 + 3) % 5 != 0;
    add[i] = allow[i] ? 0.0 : -INFINITY;
  }
  for (int64_t i = 0; i < L; ++i) allow[i * S + 1] = true, add[i * S + 1] = 0.0;
  for (int64_t j = 0; j < S; ++j) allow[2 * S + j] = false, add[2 * S + j] = -INFINITY;  // row 2 fully masked
  Tensor bmask = Tensor::from_vector(std::vector<bool>(allow.begin(), allow.end()), {L, S});
  Tensor ref = reference(q, k, v, add, false);
  Tensor out = scaled_dot_product_attention(q, k, v, bmask);
  CHECK(max_abs_diff(out, ref) < 1e-12);
  for (int64_t e = 0; e < 2; ++e) CHECK(out.item_at(((0 * 2 + 1) * L + 2) * 2 + e) == 0.0);  // empty row: 0
  // float mask, broadcast from (L, S), finite values
  Tensor fmask = randn64({L, S});
  std::vector<double> fm(L * S);
  for (int64_t i = 0; i < L * S; ++i) fm[i] = fmask.item_at(i);
  CHECK(max_abs_diff(scaled_dot_product_attention(q, k, v, fmask), reference(q, k, v, fm, false)) < 1e-12);
  // float32 mask on float64 inputs is converted
  CHECK(max_abs_diff(scaled_dot_product_attention(q, k, v, fmask.to(DType::Float32)),
                     reference(q, k, v, [&] {
                       std::vector<double> r(L * S);
                       for (int64_t i = 0; i < L * S; ++i) r[i] = static_cast<float>(fm[i]);
                       return r;
                     }(), false)) < 1e-12);
  // errors
  CHECK_THROWS(scaled_dot_product_attention(q, k, v, Tensor::zeros({3, 3}, DType::Bool)), std::invalid_argument);
  CHECK_THROWS(scaled_dot_product_attention(q, k, v, bmask, true), std::invalid_argument);
  CHECK_THROWS(scaled_dot_product_attention(q, k, v, Tensor::zeros({L, S}, DType::Int64)), std::domain_error);
  CHECK_THROWS(scaled_dot_product_attention(q, randn64({2, 2, S, 4}), v), std::invalid_argument);
  CHECK_THROWS(scaled_dot_product_attention(q, k, randn64({2, 2, S + 1, 2})), std::invalid_argument);
  CHECK_THROWS(scaled_dot_product_attention(q, k.to(DType::Float32), v), std::domain_error);
}

void test_gradients() {
  manual_seed(3);
  auto plain = [](bool causal) {
    return [causal](const std::vector<Tensor>& x) { return scaled_dot_product_attention(x[0], x[1], x[2], Tensor(), causal); };
  };
  check_grads(plain(false), {randn64({2, 2, 3, 4}), randn64({2, 2, 5, 4}), randn64({2, 2, 5, 3})}, 1e-7);
  check_grads(plain(true), {randn64({1, 2, 5, 3}), randn64({1, 2, 4, 3}), randn64({1, 2, 4, 2})}, 1e-7);
  // 3-D and 2-D inputs
  check_grads(plain(false), {randn64({2, 3, 4}), randn64({2, 5, 4}), randn64({2, 5, 3})}, 1e-7);
  check_grads(plain(false), {randn64({3, 4}), randn64({5, 4}), randn64({5, 3})}, 1e-7);
  // masks, one row fully masked (zero gradient there)
  Tensor bm = Tensor::from_vector(std::vector<bool>{true, false, true, true, false, false, false, false, true, true, false, true}, {3, 4});
  check_grads([bm](const std::vector<Tensor>& x) { return scaled_dot_product_attention(x[0], x[1], x[2], bm); },
              {randn64({2, 1, 3, 2}), randn64({2, 1, 4, 2}), randn64({2, 1, 4, 2})}, 1e-7);
  Tensor fm = randn64({2, 1, 3, 4});
  check_grads([fm](const std::vector<Tensor>& x) { return scaled_dot_product_attention(x[0], x[1], x[2], fm); },
              {randn64({2, 1, 3, 2}), randn64({2, 1, 4, 2}), randn64({2, 1, 4, 2})}, 1e-7);
  // gradients through the weights output too (two-output node)
  check_grads([](const std::vector<Tensor>& x) {
    AttentionOutput r = scaled_dot_product_attention(x[0], x[1], x[2], AttentionOptions().need_weights(true));
    return concatenate({r.output.reshape({-1}), r.weights.reshape({-1})}, 0);
  }, {randn64({1, 2, 3, 2}), randn64({1, 2, 4, 2}), randn64({1, 2, 4, 3})}, 1e-7);
  // only the weights used (the output receives zeros)
  check_grads([](const std::vector<Tensor>& x) {
    return scaled_dot_product_attention(x[0], x[1], x[2], AttentionOptions().need_weights(true).is_causal(true)).weights;
  }, {randn64({1, 2, 3, 2}), randn64({1, 2, 4, 2}), randn64({1, 2, 4, 3})}, 1e-7);
}

void test_dropout() {
  Tensor q = randn64({2, 2, 5, 3}), k = randn64({2, 2, 6, 3}), v = randn64({2, 2, 6, 4});
  manual_seed(7);
  AttentionOutput a = scaled_dot_product_attention(q, k, v, AttentionOptions().dropout_p(0.4).need_weights(true));
  manual_seed(7);
  AttentionOutput b = scaled_dot_product_attention(q, k, v, AttentionOptions().dropout_p(0.4).need_weights(true));
  CHECK(bitwise_equal(a.output, b.output));
  // output = dropped weights @ v
  CHECK(max_abs_diff(a.output, matmul(a.weights, v)) < 1e-12);
  int zeros = 0;
  for (int64_t i = 0; i < a.weights.numel(); ++i) zeros += a.weights.item_at(i) == 0.0;
  CHECK(zeros > 20 && zeros < 100);
  // p = 0 is plain attention; gradients with dropout: finite differences under a fixed seed
  CHECK(bitwise_equal(scaled_dot_product_attention(q, k, v, AttentionOptions().dropout_p(0.0)).output,
                      scaled_dot_product_attention(q, k, v)));
  check_grads([](const std::vector<Tensor>& x) {
    manual_seed(11);
    AttentionOutput r = scaled_dot_product_attention(x[0], x[1], x[2], AttentionOptions().dropout_p(0.3).need_weights(true));
    return concatenate({r.output.reshape({-1}), r.weights.reshape({-1})}, 0);
  }, {randn64({1, 2, 3, 2}), randn64({1, 2, 4, 2}), randn64({1, 2, 4, 3})}, 1e-7);
}

void test_threads_bitwise() {
  manual_seed(5);
  Tensor q = randn({3, 4, 70, 16}), k = randn({3, 4, 300, 16}), v = randn({3, 4, 300, 8});
  std::vector<Tensor> outs, gq, gk, gv;
  for (int n : {1, 2, 3}) {
    set_num_threads(n);
    Tensor a = q.detach().requires_grad_(), b = k.detach().requires_grad_(), c = v.detach().requires_grad_();
    Tensor o = scaled_dot_product_attention(a, b, c, Tensor(), true);
    sum(mul(o, o)).backward();
    outs.push_back(o);
    gq.push_back(a.grad());
    gk.push_back(b.grad());
    gv.push_back(c.grad());
  }
  set_num_threads(2);
  for (int i = 1; i < 3; ++i) {
    CHECK(bitwise_equal(outs[0], outs[i]));
    CHECK(bitwise_equal(gq[0], gq[i]));
    CHECK(bitwise_equal(gk[0], gk[i]));
    CHECK(bitwise_equal(gv[0], gv[i]));
  }
}

void test_empty_sizes() {
  Tensor q = Tensor::zeros({1, 2, 0, 4}), k = Tensor::zeros({1, 2, 5, 4}), v = Tensor::zeros({1, 2, 5, 6});
  CHECK(scaled_dot_product_attention(q, k, v).shape() == Shape({1, 2, 0, 6}));
  Tensor q2 = randn({1, 1, 3, 4}).requires_grad_();
  Tensor o = scaled_dot_product_attention(q2, Tensor::zeros({1, 1, 0, 4}), Tensor::zeros({1, 1, 0, 2}));
  CHECK(o.shape() == Shape({1, 1, 3, 2}));
  CHECK(max_abs_diff(o, Tensor::zeros({1, 1, 3, 2})) == 0.0);
  sum(o).backward();
  CHECK(max_abs_diff(q2.grad(), Tensor::zeros({1, 1, 3, 4})) == 0.0);
}


// MultiHeadAttention against the same computation written with generic ops (linear, reshape,
// permute, matmul, softmax), float64: outputs, weights and every parameter gradient.
void test_mha_matches_composition() {
  manual_seed(9);
  const int64_t N = 2, L = 3, S = 5, E = 6, H = 2, d = 3;
  nn::MultiHeadAttention mha(nn::MultiHeadAttentionOptions(E, H).dtype(DType::Float64));
  CHECK(mha.named_parameters().size() == 8);
  CHECK(mha.named_parameters()[0].first == "q_proj.weight");
  CHECK(mha.named_parameters()[7].first == "out_proj.bias");
  for (auto& p : mha.parameters()) {  // nonzero biases so their gradients mean something
    NoGradGuard ng;
    Tensor r = randn64(p.shape());
    Tensor::copy_into(p, mul(r, Tensor::scalar(0.3, DType::Float64)));
  }
  Tensor x = randn64({N, L, E}), kv = randn64({N, S, E}), val = randn64({N, S, E});
  // bool key padding (True = ignore) and a float attn mask (L, S)
  Tensor kpm = Tensor::from_vector(std::vector<bool>{false, false, true, false, true, false, false, false, false, true}, {N, S});
  Tensor am = randn64({L, S});
  auto opts = nn::MultiHeadAttentionForwardOptions().key_padding_mask(kpm).attn_mask(am);
  auto r = mha.forward(x, kv, val, opts);
  CHECK(r.first.shape() == Shape({N, L, E}));
  CHECK(r.second.shape() == Shape({N, L, S}));
  sum(mul(r.first, r.first)).backward();
  std::vector<Tensor> grads;
  for (auto& p : mha.parameters()) grads.push_back(p.grad()), p.reset_grad();
  // composition
  auto heads = [&](const Tensor& t) { return permute(reshape(t, {N, t.shape()[1], H, d}), {0, 2, 1, 3}); };
  Tensor q = heads(mha.q_proj->forward(x)), k = heads(mha.k_proj->forward(kv)), v = heads(mha.v_proj->forward(val));
  Tensor scores = mul(matmul(q, transpose(k, 2, 3)), Tensor::scalar(1.0 / std::sqrt(3.0), DType::Float64));
  std::vector<double> kpm_add(N * S);
  for (int64_t i = 0; i < N * S; ++i) kpm_add[i] = kpm.item_at(i) != 0.0 ? -INFINITY : 0.0;
  scores = add(add(scores, am), reshape(Tensor::from_vector(kpm_add, {N, S}), {N, 1, 1, S}));
  Tensor p = softmax(scores, -1);
  Tensor o = reshape(permute(matmul(p, v), {0, 2, 1, 3}), {N, L, E});
  Tensor out = mha.out_proj->forward(o);
  CHECK(max_abs_diff(out, r.first) < 1e-12);
  CHECK(max_abs_diff(mean(p, {1}), r.second) < 1e-12);
  sum(mul(out, out)).backward();
  auto params = mha.parameters();
  for (std::size_t i = 0; i < params.size(); ++i) CHECK(max_abs_diff(params[i].grad(), grads[i]) < 1e-11);
  // need_weights=false: same output, no weights; forward(x) is self-attention without weights
  auto r2 = mha.forward(x, kv, val, nn::MultiHeadAttentionForwardOptions(opts).need_weights(false));
  CHECK(!r2.second.defined());
  CHECK(max_abs_diff(r2.first, r.first) < 1e-12);
  CHECK(max_abs_diff(mha.forward(x), mha.forward(x, x, x, nn::MultiHeadAttentionForwardOptions()).first) < 1e-12);
  // errors
  CHECK_THROWS(mha.forward(x, kv, val, nn::MultiHeadAttentionForwardOptions().attn_mask(randn64({L, L}))),
               std::invalid_argument);
  CHECK_THROWS(mha.forward(x, kv, val, nn::MultiHeadAttentionForwardOptions().key_padding_mask(Tensor::zeros({N, L}, DType::Bool))),
               std::invalid_argument);
  CHECK_THROWS(mha.forward(x, kv, randn64({N, S + 1, E}), nn::MultiHeadAttentionForwardOptions()), std::invalid_argument);
  CHECK_THROWS(nn::MultiHeadAttention(6, 4), std::invalid_argument);
}

// Gradients of the whole layer (inputs and parameters) by finite differences, causal, with
// a (N*H, L, S) boolean mask and weights in the loss.
void test_mha_gradcheck() {
  manual_seed(10);
  const int64_t N = 2, L = 3, E = 4, H = 2;
  auto mha = std::make_shared<nn::MultiHeadAttention>(nn::MultiHeadAttentionOptions(E, H).dtype(DType::Float64));
  Tensor am = Tensor::from_vector(std::vector<bool>{false, true, false, false, false, true, true, false, false,
                                                    false, false, false, true, false, false, false, false, true,
                                                    false, true, true, false, false, false, false, false, false,
                                                    false, false, true, false, true, false, false, false, false},
                                  {N * H, L, L});
  check_grads([mha, am](const std::vector<Tensor>& xs) {
    auto r = mha->forward(xs[0], xs[1], xs[1], nn::MultiHeadAttentionForwardOptions().attn_mask(am));
    return concatenate({r.first.reshape({-1}), r.second.reshape({-1})}, 0);
  }, {randn64({N, L, E}), randn64({N, L, E})}, 1e-7);
  std::vector<Tensor> params = mha->parameters();
  // parameters: wrap each in turn
  for (std::size_t i = 0; i < params.size(); ++i) {
    Tensor x = randn64({N, L, E});
    for (auto& p : params) p.reset_grad();
    auto f = [&]() { return mha->forward(x, x, x, nn::MultiHeadAttentionForwardOptions().is_causal(true).need_weights(false)).first; };
    Tensor G = randn64({N, L, E});
    sum(mul(f(), G)).backward();
    Tensor g = params[i].grad();
    double* pp = params[i].data<double>();
    for (int64_t j = 0; j < params[i].numel(); ++j) {
      const double old = pp[j];
      NoGradGuard ng;
      pp[j] = old + 1e-6;
      const double lp = Tensor(sum(mul(f(), G))).item<double>();
      pp[j] = old - 1e-6;
      const double lm = Tensor(sum(mul(f(), G))).item<double>();
      pp[j] = old;
      CHECK_NEAR(g.item_at(j), (lp - lm) / 2e-6, 1e-7);
    }
  }
}

// Fully masked rows: NaN with need_weights (PyTorch's explicit path), zeros without.
void test_mha_empty_rows() {
  manual_seed(12);
  nn::MultiHeadAttention mha(nn::MultiHeadAttentionOptions(4, 2).dtype(DType::Float64));
  Tensor x = randn64({2, 3, 4});
  Tensor kpm = Tensor::from_vector(std::vector<bool>{false, false, false, true, true, true}, {2, 3});
  auto a = mha.forward(x, x, x, nn::MultiHeadAttentionForwardOptions().key_padding_mask(kpm));
  CHECK(std::isnan(a.first.item_at(3 * 4)) && std::isnan(a.second.item_at(9)));
  CHECK(!std::isnan(a.first.item_at(0)));
  auto b = mha.forward(x, x, x, nn::MultiHeadAttentionForwardOptions().key_padding_mask(kpm).need_weights(false));
  CHECK(b.first.item_at(3 * 4) == 0.0);  // out_proj bias is 0 at init: attention output 0 -> 0
}

// Dropout: train mode with p = 0 equals eval; p > 0 is reproducible under manual_seed.
void test_mha_dropout() {
  manual_seed(13);
  nn::MultiHeadAttention mha(nn::MultiHeadAttentionOptions(8, 2).dropout(0.5));
  Tensor x = randn({2, 5, 8});
  manual_seed(1);
  auto a = mha.forward(x, x, x, nn::MultiHeadAttentionForwardOptions());
  manual_seed(1);
  auto b = mha.forward(x, x, x, nn::MultiHeadAttentionForwardOptions());
  CHECK(bitwise_equal(a.first, b.first) && bitwise_equal(a.second, b.second));
  mha.eval();
  auto c = mha.forward(x, x, x, nn::MultiHeadAttentionForwardOptions());
  CHECK(!bitwise_equal(a.first, c.first));
  nn::MultiHeadAttention m0(nn::MultiHeadAttentionOptions(8, 2));
  auto t = m0.forward(x, x, x, nn::MultiHeadAttentionForwardOptions());
  m0.eval();
  auto e = m0.forward(x, x, x, nn::MultiHeadAttentionForwardOptions());
  CHECK(bitwise_equal(t.first, e.first) && bitwise_equal(t.second, e.second));
}

}  // namespace

int main() {
  test_forward_matches_reference();
  test_masks();
  test_gradients();
  test_dropout();
  test_threads_bitwise();
  test_empty_sizes();
  test_mha_matches_composition();
  test_mha_gradcheck();
  test_mha_empty_rows();
  test_mha_dropout();
  return test_util::finish();
}
