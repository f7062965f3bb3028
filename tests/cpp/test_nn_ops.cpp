// Tests of ops/nn.h from C++: softmax rows sum to 1 (any axis, huge inputs), cross_entropy's
// value and gradient on a tiny case worked by hand, linear against a naive loop, layer_norm
// statistics, dropout reproducibility across thread counts, and the error types.
#include "nablagrad/nablagrad.h"

#include <cmath>
#include <stdexcept>
#include <vector>

#include "test_util.h"

using namespace nablagrad;

namespace {

Tensor from_values(const Shape& shape, const std::vector<double>& v, DType dt = DType::Float64) {
  Tensor t = Tensor::empty(shape, dt);
  for (std::size_t i = 0; i < v.size(); ++i) {
    if (dt == DType::Float64) t.data<double>()[i] = v[i];
    else t.data<float>()[i] = static_cast<float>(v[i]);
  }
  return t;
}

Tensor grad_of(const Tensor& t) { return Tensor(t.impl().grad); }

void test_softmax_rows_sum_to_one() {
  Tensor x = randn({3, 5, 4});
  for (int64_t axis : {0, 1, 2, -1}) {
    Tensor y = softmax(x, axis);
    Tensor s = sum(y, {axis});
    for (int64_t i = 0; i < s.numel(); ++i) CHECK_NEAR(s.item_at(i), 1.0, 1e-6);
  }
  // Huge logits: max-shifted, so finite.
  Tensor big = from_values({1, 3}, {1e4, 1e4 - 1.0, -1e4}, DType::Float32);
  Tensor y = softmax(big, -1);
  CHECK_NEAR(y.item_at(0), 1.0 / (1.0 + std::exp(-1.0)), 1e-6);
  CHECK(std::isfinite(y.item_at(2)));
  Tensor ly = log_softmax(big, -1);
  CHECK_NEAR(ly.item_at(2), -2e4 - std::log1p(std::exp(-1.0)), 1e-6);
  CHECK_THROWS(softmax(x, 3), std::out_of_range);
  CHECK_THROWS(softmax(x, -4), std::out_of_range);
}

void test_cross_entropy_tiny() {
  // logits [[0, 0], [ln 3, 0]], labels [0, 1]: p0 = (1/2, 1/2), p1 = (3/4, 1/4).
  Tensor logits = from_values({2, 2}, {0.0, 0.0, std::log(3.0), 0.0});
  logits.impl().requires_grad = true;
  Tensor labels = Tensor::empty({2}, DType::Int64);
  labels.data<int64_t>()[0] = 0;
  labels.data<int64_t>()[1] = 1;
  Tensor loss = cross_entropy(logits, labels, Reduction::Mean);
  CHECK_NEAR(loss.item_at(0), 0.5 * (std::log(2.0) + std::log(4.0)), 1e-12);
  backward(loss);
  Tensor g = grad_of(logits);
  const std::vector<double> expected = {(0.5 - 1) / 2, 0.5 / 2, 0.75 / 2, (0.25 - 1) / 2};
  for (int64_t i = 0; i < 4; ++i) CHECK_NEAR(g.item_at(i), expected[i], 1e-12);
  Tensor none = cross_entropy(logits, labels, Reduction::None);
  CHECK(none.shape() == Shape{2});
  CHECK_NEAR(none.item_at(1), std::log(4.0), 1e-12);
  labels.data<int64_t>()[1] = 2;
  CHECK_THROWS(cross_entropy(logits, labels), std::out_of_range);
  CHECK_THROWS(cross_entropy(logits, Tensor::zeros({2}, DType::Float32)), std::domain_error);
  CHECK_THROWS(cross_entropy(logits, Tensor::zeros({3}, DType::Int64)), std::invalid_argument);
}

void test_linear_against_loop() {
  Tensor x = randn({2, 3, 4}, DType::Float64), w = randn({5, 4}, DType::Float64), b = randn({5}, DType::Float64);
  w.impl().requires_grad = true;
  Tensor y = linear(x, w, b);
  CHECK((y.shape() == Shape{2, 3, 5}));
  for (int64_t r = 0; r < 6; ++r)
    for (int64_t o = 0; o < 5; ++o) {
      double acc = b.item_at(o);
      for (int64_t i = 0; i < 4; ++i) acc += x.item_at(r * 4 + i) * w.item_at(o * 4 + i);
      CHECK_NEAR(y.item_at(r * 5 + o), acc, 1e-12);
    }
  backward(sum(y));
  // d sum / dW[o, i] = sum over rows of x[r, i]
  Tensor gw = grad_of(w);
  for (int64_t i = 0; i < 4; ++i) {
    double acc = 0.0;
    for (int64_t r = 0; r < 6; ++r) acc += x.item_at(r * 4 + i);
    CHECK_NEAR(gw.item_at(i), acc, 1e-12);
    CHECK_NEAR(gw.item_at(4 * 4 + i), acc, 1e-12);
  }
  CHECK_THROWS(linear(x, randn({5, 3}, DType::Float64)), std::invalid_argument);
  CHECK_THROWS(linear(x, w, randn({4}, DType::Float64)), std::invalid_argument);
  CHECK_THROWS(linear(x, randn({5, 4})), std::domain_error);
}

void test_layer_norm_statistics() {
  Tensor x = randn({4, 6}, DType::Float64);
  Tensor y = layer_norm(x, {6});
  for (int64_t r = 0; r < 4; ++r) {
    double m = 0, v = 0;
    for (int64_t j = 0; j < 6; ++j) m += y.item_at(r * 6 + j) / 6;
    for (int64_t j = 0; j < 6; ++j) v += (y.item_at(r * 6 + j) - m) * (y.item_at(r * 6 + j) - m) / 6;
    CHECK_NEAR(m, 0.0, 1e-12);
    CHECK_NEAR(v, 1.0, 1e-4);  // eps = 1e-5 shrinks it slightly
  }
  CHECK_THROWS(layer_norm(x, {4}), std::invalid_argument);
}

void test_dropout_reproducible_across_threads() {
  const int before = get_num_threads();
  Tensor x = Tensor::full({64, 1000}, 1.0);
  manual_seed(7);
  set_num_threads(1);
  Tensor a = dropout(x, 0.3);
  manual_seed(7);
  set_num_threads(4);
  Tensor b = dropout(x, 0.3);
  set_num_threads(before);
  bool same = true;
  int64_t kept = 0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    same = same && a.data<float>()[i] == b.data<float>()[i];
    kept += a.data<float>()[i] != 0.0f;
  }
  CHECK(same);
  CHECK_NEAR(static_cast<double>(kept) / a.numel(), 0.7, 0.02);
  Tensor z = dropout(x, 1.0);
  bool all_zero = true;
  for (int64_t i = 0; i < z.numel(); ++i) all_zero = all_zero && z.data<float>()[i] == 0.0f;
  CHECK(all_zero);
  CHECK_THROWS(dropout(x, 1.5), std::invalid_argument);
}

}  // namespace

int main() {
  RUN_TEST(test_softmax_rows_sum_to_one);
  RUN_TEST(test_cross_entropy_tiny);
  RUN_TEST(test_linear_against_loop);
  RUN_TEST(test_layer_norm_statistics);
  RUN_TEST(test_dropout_reproducible_across_threads);
  return test_util::finish();
}
