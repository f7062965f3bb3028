// Tests of the layers in layers/*.h: each forward against the functional ops or a loop
// written here, gradients reaching every parameter, BatchNorm2D's train/eval behaviour and
// running-statistics values, Dropout in both modes, nn::init statistics and fan rules,
// PyTorch's default initialisation bounds, and the argument errors.
#include "nablagrad/nablagrad.h"

#include <cmath>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "test_util.h"

using namespace nablagrad;

namespace {

Tensor grad_of(const Tensor& t) { return Tensor(t.impl().grad); }

void check_close(const Tensor& a, const Tensor& b, double tol) {
  CHECK(a.shape() == b.shape());
  if (a.shape() != b.shape()) return;
  for (int64_t i = 0; i < a.numel(); ++i) CHECK_NEAR(a.item_at(i), b.item_at(i), tol);
}

bool message_has(const std::function<void()>& fn, const std::string& piece) {
  try {
    fn();
  } catch (const std::exception& e) {
    if (std::string(e.what()).find(piece) != std::string::npos) return true;
    std::printf("  message was: %s\n", e.what());
    return false;
  }
  return false;
}

double mean_of(const Tensor& t) {
  double s = 0;
  for (int64_t i = 0; i < t.numel(); ++i) s += t.item_at(i);
  return s / static_cast<double>(t.numel());
}
double std_of(const Tensor& t) {
  const double m = mean_of(t);
  double s = 0;
  for (int64_t i = 0; i < t.numel(); ++i) s += (t.item_at(i) - m) * (t.item_at(i) - m);
  return std::sqrt(s / static_cast<double>(t.numel()));
}
double max_abs(const Tensor& t) {
  double m = 0;
  for (int64_t i = 0; i < t.numel(); ++i) m = std::max(m, std::fabs(t.item_at(i)));
  return m;
}

/// Central differences of sum(f() * r) with respect to every element of `param` (float64),
/// against the gradient autograd put in param.grad.
void check_numeric_grad(const std::function<Tensor()>& f, const Tensor& param, const Tensor& r, double tol) {
  param.impl().grad.reset();
  backward(sum(mul(f(), r)));
  const Tensor g = grad_of(param);
  CHECK(g.defined());
  if (!g.defined()) return;
  double* p = param.data<double>();
  const double h = 1e-6;
  for (int64_t i = 0; i < param.numel(); ++i) {
    NoGradGuard ng;
    const double old = p[i];
    p[i] = old + h;
    const double up = sum(mul(f(), r)).item_at(0);
    p[i] = old - h;
    const double down = sum(mul(f(), r)).item_at(0);
    p[i] = old;
    CHECK_NEAR(g.item_at(i), (up - down) / (2 * h), tol);
  }
}

// ---- Linear ------------------------------------------------------------------------------
void test_linear_forward_backward() {
  manual_seed(11);
  nn::Linear fc(nn::LinearOptions(3, 2).dtype(DType::Float64));
  CHECK(fc.weight.shape() == (Shape{2, 3}) && fc.bias.shape() == (Shape{2}));
  Tensor x = randn({4, 3}, DType::Float64);
  Tensor y = fc.forward(x);
  for (int64_t i = 0; i < 4; ++i)
    for (int64_t o = 0; o < 2; ++o) {
      double s = fc.bias.item_at(o);
      for (int64_t k = 0; k < 3; ++k) s += x.item_at(i * 3 + k) * fc.weight.item_at(o * 3 + k);
      CHECK_NEAR(y.item_at(i * 2 + o), s, 1e-12);
    }
  // Leading dims fold: (2, 2, 3) -> (2, 2, 2).
  CHECK(fc.forward(randn({2, 2, 3}, DType::Float64)).shape() == (Shape{2, 2, 2}));
  // dL/dW = sum over rows of x, dL/db = rows, for L = sum(y).
  backward(sum(y));
  for (int64_t o = 0; o < 2; ++o) {
    CHECK_NEAR(grad_of(fc.bias).item_at(o), 4.0, 1e-12);
    for (int64_t k = 0; k < 3; ++k) {
      double s = 0;
      for (int64_t i = 0; i < 4; ++i) s += x.item_at(i * 3 + k);
      CHECK_NEAR(grad_of(fc.weight).item_at(o * 3 + k), s, 1e-12);
    }
  }
  // Activations by name.
  const char* names[] = {"relu", "sigmoid", "tanh", "gelu", "softmax"};
  for (const char* n : names) {
    nn::Linear a(nn::LinearOptions(3, 2).activation(n).dtype(DType::Float64));
    Tensor z = linear(x, a.weight, a.bias);
    Tensor want = std::string(n) == "relu"      ? relu(z)
                  : std::string(n) == "sigmoid" ? sigmoid(z)
                  : std::string(n) == "tanh"    ? tanh(z)
                  : std::string(n) == "gelu"    ? gelu(z)
                                                : softmax(z, -1);
    check_close(a.forward(x), want, 1e-12);
  }
  nn::Linear nobias(nn::LinearOptions(3, 2).bias(false));
  CHECK(!nobias.bias.defined() && nobias.named_parameters().size() == 1);
}

void test_linear_errors() {
  nn::Linear fc(4, 3);
  CHECK(message_has([&] { fc.forward(Tensor::zeros({2, 5})); },
                    "Linear: input has 5 features but in_features=4 (input shape (2, 5))"));
  CHECK_THROWS(fc.forward(Tensor::zeros({2, 5})), std::invalid_argument);
  CHECK_THROWS(fc.forward(Tensor::zeros({2, 4}, DType::Int64)), std::domain_error);
  CHECK_THROWS(fc.forward(Tensor::scalar(1.0)), std::invalid_argument);
  CHECK_THROWS(nn::Linear(0, 3), std::invalid_argument);
  CHECK_THROWS(nn::Linear(3, -1), std::invalid_argument);
  CHECK_THROWS(nn::Linear(nn::LinearOptions(3, 3).activation("swish")), std::invalid_argument);
  CHECK_THROWS(nn::Linear(nn::LinearOptions(3, 3).dtype(DType::Int64)), std::domain_error);
}

// ---- Conv2D ------------------------------------------------------------------------------
void test_conv2d_forward_backward() {
  manual_seed(12);
  nn::Conv2D conv(nn::Conv2dOptions(3, 4, {3, 2}).stride({2, 1}).padding({1, 0}).dtype(DType::Float64));
  CHECK(conv.weight.shape() == (Shape{4, 3, 2, 3}) && conv.bias.shape() == (Shape{4}));
  Tensor x = randn({2, 7, 5, 3}, DType::Float64);
  Tensor y = conv.forward(x);
  check_close(y, conv2d_reference(x, conv.weight, conv.bias, 2, 1, 1, 1, 0, 0), 1e-10);
  backward(sum(y));
  CHECK(grad_of(conv.weight).defined() && grad_of(conv.bias).defined());
  CHECK_NEAR(grad_of(conv.bias).item_at(0), static_cast<double>(y.numel() / 4), 1e-9);
  // "same" with an even kernel: the extra padding goes to the bottom/right (PyTorch).
  nn::Conv2D same(nn::Conv2dOptions(3, 2, {3, 4}).padding("same").activation("tanh").dtype(DType::Float64));
  Tensor ys = same.forward(x);
  CHECK(ys.shape() == (Shape{2, 7, 5, 2}));
  check_close(ys, tanh(conv2d_reference(x, same.weight, same.bias, 1, 1, 1, 1, 1, 2)), 1e-10);
  nn::Conv2D valid(nn::Conv2dOptions(3, 2, 3).padding("valid").bias(false));
  CHECK(valid.forward(randn({1, 5, 5, 3})).shape() == (Shape{1, 3, 3, 2}));
  CHECK(!valid.bias.defined() && valid.named_parameters().size() == 1);
  CHECK(valid.repr() == "Conv2D(3, 2, kernel_size=(3, 3), stride=(1, 1), padding='valid', bias=False)");
  nn::Conv2D plain(1, 16, 3);
  CHECK(plain.extra_repr() == "1, 16, kernel_size=(3, 3), stride=(1, 1)");
}

void test_conv2d_errors() {
  nn::Conv2D conv(4, 8, 3);
  CHECK(message_has([&] { conv.forward(Tensor::zeros({2, 8, 8, 5})); },
                    "Conv2D: input has C=5 channels but in_channels=4 (input shape (2, 8, 8, 5), NHWC)"));
  CHECK_THROWS(conv.forward(Tensor::zeros({8, 8, 4})), std::invalid_argument);
  CHECK_THROWS(conv.forward(Tensor::zeros({1, 8, 8, 4}, DType::Int64)), std::domain_error);
  CHECK_THROWS(nn::Conv2D(nn::Conv2dOptions(4, 8, 3).stride(2).padding("same")), std::invalid_argument);
  CHECK_THROWS(nn::Conv2D(nn::Conv2dOptions(4, 8, 3).padding("full")), std::invalid_argument);
  CHECK_THROWS(nn::Conv2D(nn::Conv2dOptions(4, 8, 3).padding(-1)), std::invalid_argument);
  CHECK_THROWS(nn::Conv2D(nn::Conv2dOptions(4, 8, 0)), std::invalid_argument);
  CHECK_THROWS(nn::Conv2D(nn::Conv2dOptions(0, 8, 3)), std::invalid_argument);
  CHECK_THROWS(nn::Conv2D(nn::Conv2dOptions(4, 8, 3).stride(0)), std::invalid_argument);
  CHECK_THROWS(nn::Conv2D(nn::Conv2dOptions(4, 8, 3).activation("soft")), std::invalid_argument);
}

// ---- pooling, flatten, activations --------------------------------------------------------
void test_pooling_flatten_activations() {
  manual_seed(13);
  Tensor x = randn({2, 6, 5, 3}, DType::Float64);
  nn::MaxPool2D mp(2);
  CHECK(mp.stride() == nn::Pair2(2));
  check_close(mp.forward(x), max_pool2d(x, 2, 2, 2, 2, 0, 0), 0.0);
  nn::MaxPool2D mp2(nn::MaxPool2dOptions({3, 2}).stride(1).padding({1, 1}));
  check_close(mp2.forward(x), max_pool2d(x, 3, 2, 1, 1, 1, 1), 0.0);
  nn::AvgPool2D ap(nn::AvgPool2dOptions(3).stride(2).padding(1).count_include_pad(false));
  check_close(ap.forward(x), avg_pool2d(x, 3, 3, 2, 2, 1, 1, false), 0.0);
  CHECK(ap.repr() == "AvgPool2D(kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), count_include_pad=False)");
  CHECK_THROWS(nn::MaxPool2D(0), std::invalid_argument);
  CHECK_THROWS(nn::MaxPool2D(nn::MaxPool2dOptions(2).padding(2)), std::invalid_argument);
  CHECK_THROWS(nn::AvgPool2D(nn::AvgPool2dOptions(2).stride(-1)), std::invalid_argument);
  // Pooling gradient reaches every element (N, C > 1).
  Tensor xr = randn({2, 4, 4, 3}, DType::Float64);
  xr.impl().requires_grad = true;
  backward(sum(nn::AvgPool2D(2).forward(xr)));
  for (int64_t i = 0; i < xr.numel(); ++i) CHECK_NEAR(grad_of(xr).item_at(i), 0.25, 1e-12);

  nn::Flatten fl;
  CHECK(fl.forward(x).shape() == (Shape{2, 90}));
  CHECK(nn::Flatten(1, 2).forward(x).shape() == (Shape{2, 30, 3}));
  // NHWC order: flat index = (h * W + w) * C + c.
  CHECK_NEAR(fl.forward(x).item_at(1 * 90 + (2 * 5 + 3) * 3 + 1), x.item_at(((1 * 6 + 2) * 5 + 3) * 3 + 1), 0.0);

  check_close(nn::ReLU().forward(x), relu(x), 0.0);
  check_close(nn::Sigmoid().forward(x), sigmoid(x), 0.0);
  check_close(nn::Tanh().forward(x), tanh(x), 0.0);
  check_close(nn::GELU().forward(x), gelu(x, false), 0.0);
  check_close(nn::GELU("tanh").forward(x), gelu(x, true), 0.0);
  check_close(nn::Softmax(1).forward(x), softmax(x, 1), 0.0);
  check_close(nn::LeakyReLU(0.2).forward(x), leaky_relu(x, 0.2), 0.0);
  CHECK_THROWS(nn::GELU("fast"), std::invalid_argument);
  CHECK(nn::LeakyReLU(0.2).repr() == "LeakyReLU(negative_slope=0.2)");
}

// ---- Dropout -------------------------------------------------------------------------------
void test_dropout_train_eval() {
  manual_seed(14);
  nn::Dropout drop(0.25);
  Tensor x = Tensor::full({100, 100}, 1.0);
  Tensor y = drop.forward(x);
  int64_t zeros = 0;
  for (int64_t i = 0; i < y.numel(); ++i) {
    const double v = y.item_at(i);
    CHECK(v == 0.0 || std::fabs(v - 1.0 / 0.75) < 1e-6);
    zeros += v == 0.0;
  }
  CHECK(zeros > 2300 && zeros < 2700);
  // Reproducible from the seed.
  manual_seed(14);
  check_close(drop.forward(x), y, 0.0);
  drop.eval();
  CHECK(drop.forward(x).impl_ptr() == x.impl_ptr());
  CHECK_THROWS(nn::Dropout(1.5), std::invalid_argument);
  CHECK_THROWS(nn::Dropout(-0.1), std::invalid_argument);
  CHECK(nn::Dropout(1.0).forward(x).item_at(7) == 0.0);
}

// ---- LayerNorm -----------------------------------------------------------------------------
void test_layer_norm() {
  manual_seed(15);
  nn::LayerNorm ln(nn::LayerNormOptions({3, 4}).eps(1e-3).dtype(DType::Float64));
  CHECK(ln.weight.shape() == (Shape{3, 4}) && ln.weight.item_at(5) == 1.0 && ln.bias.item_at(5) == 0.0);
  Tensor x = randn({2, 3, 4}, DType::Float64);
  nn::init::normal_(ln.weight);
  nn::init::normal_(ln.bias);
  check_close(ln.forward(x), layer_norm(x, {3, 4}, ln.weight, ln.bias, 1e-3), 0.0);
  // Row 0 by hand.
  double m = 0, v = 0;
  for (int i = 0; i < 12; ++i) m += x.item_at(i) / 12;
  for (int i = 0; i < 12; ++i) v += (x.item_at(i) - m) * (x.item_at(i) - m) / 12;
  CHECK_NEAR(ln.forward(x).item_at(5), (x.item_at(5) - m) / std::sqrt(v + 1e-3) * ln.weight.item_at(5) + ln.bias.item_at(5),
             1e-12);
  backward(sum(mul(ln.forward(x), x)));
  CHECK(grad_of(ln.weight).defined() && grad_of(ln.bias).defined());
  CHECK(message_has([&] { ln.forward(Tensor::zeros({2, 4, 3}, DType::Float64)); },
                    "LayerNorm: input shape (2, 4, 3) does not end with normalized_shape (3, 4)"));
  nn::LayerNorm plain(nn::LayerNormOptions({4}).elementwise_affine(false));
  CHECK(plain.named_parameters().empty());
  CHECK_THROWS(nn::LayerNorm(Shape{}), std::invalid_argument);
  CHECK_THROWS(nn::LayerNorm(Shape{0}), std::invalid_argument);
  CHECK(nn::LayerNorm(Shape{4}).repr() == "LayerNorm((4,), eps=1e-05, elementwise_affine=True)");
}

// ---- BatchNorm2D ---------------------------------------------------------------------------
void test_batch_norm_train_eval() {
  manual_seed(16);
  nn::BatchNorm2D bn(nn::BatchNorm2dOptions(3).dtype(DType::Float64));
  CHECK((bn.named_buffers().size() == 3 && bn.named_buffers()[0].first == "running_mean" &&
         bn.named_buffers()[2].first == "num_batches_tracked"));
  CHECK(bn.num_batches_tracked.dtype() == DType::Int64 && bn.num_batches_tracked.dim() == 0);
  Tensor x = add(mul(randn({4, 3, 2, 3}, DType::Float64), Tensor::scalar(2.0, DType::Float64)),
                 Tensor::scalar(1.0, DType::Float64));
  nn::init::normal_(bn.weight);
  nn::init::normal_(bn.bias);
  Tensor y = bn.forward(x);
  // Per-channel statistics by hand (N*H*W = 24 values per channel).
  const int64_t count = 24;
  std::vector<double> mu(3, 0.0), var(3, 0.0);
  for (int64_t i = 0; i < x.numel(); ++i) mu[i % 3] += x.item_at(i) / count;
  for (int64_t i = 0; i < x.numel(); ++i) var[i % 3] += (x.item_at(i) - mu[i % 3]) * (x.item_at(i) - mu[i % 3]) / count;
  for (int64_t i = 0; i < x.numel(); ++i) {
    const int64_t c = i % 3;
    const double want = (x.item_at(i) - mu[c]) / std::sqrt(var[c] + 1e-5) * bn.weight.item_at(c) + bn.bias.item_at(c);
    CHECK_NEAR(y.item_at(i), want, 1e-10);
  }
  // Running statistics: momentum 0.1, unbiased variance.
  for (int64_t c = 0; c < 3; ++c) {
    CHECK_NEAR(bn.running_mean.item_at(c), 0.1 * mu[c], 1e-12);
    CHECK_NEAR(bn.running_var.item_at(c), 0.9 + 0.1 * var[c] * count / (count - 1), 1e-12);
  }
  CHECK(bn.num_batches_tracked.item_at(0) == 1.0);
  // Eval: the running statistics, no update.
  bn.eval();
  Tensor ye = bn.forward(x);
  for (int64_t i = 0; i < x.numel(); ++i) {
    const int64_t c = i % 3;
    const double want = (x.item_at(i) - bn.running_mean.item_at(c)) / std::sqrt(bn.running_var.item_at(c) + 1e-5) *
                            bn.weight.item_at(c) + bn.bias.item_at(c);
    CHECK_NEAR(ye.item_at(i), want, 1e-10);
  }
  CHECK(bn.num_batches_tracked.item_at(0) == 1.0);
  CHECK_NEAR(bn.running_mean.item_at(0), 0.1 * mu[0], 1e-12);
  // Gradients in training mode match finite differences (x, weight, bias).
  bn.train();
  Tensor r = randn(x.shape(), DType::Float64);
  x.impl().requires_grad = true;
  check_numeric_grad([&] { return bn.forward(x); }, x, r, 1e-5);
  check_numeric_grad([&] { return bn.forward(x); }, bn.weight, r, 1e-5);
  check_numeric_grad([&] { return bn.forward(x); }, bn.bias, r, 1e-5);
  bn.eval();
  check_numeric_grad([&] { return bn.forward(x); }, x, r, 1e-5);
  bn.reset_running_stats();
  CHECK(bn.running_mean.item_at(1) == 0.0 && bn.running_var.item_at(1) == 1.0 && bn.num_batches_tracked.item_at(0) == 0);
}

void test_batch_norm_options_and_errors() {
  manual_seed(17);
  // momentum unset: the cumulative average of the batch means.
  nn::BatchNorm2D cum(nn::BatchNorm2dOptions(2).momentum(std::nullopt).affine(false));
  CHECK(cum.named_parameters().empty());
  Tensor a = randn({3, 2, 2, 2}), b = randn({3, 2, 2, 2});
  cum.forward(a);
  cum.forward(b);
  Tensor ma = mean(a, {0, 1, 2}), mb = mean(b, {0, 1, 2});
  for (int64_t c = 0; c < 2; ++c) CHECK_NEAR(cum.running_mean.item_at(c), 0.5 * (ma.item_at(c) + mb.item_at(c)), 1e-6);
  CHECK(cum.num_batches_tracked.item_at(0) == 2.0);
  CHECK(cum.extra_repr() == "2, eps=1e-05, momentum=None, affine=False, track_running_stats=True");
  // Without tracking: no buffers, batch statistics in eval too.
  nn::BatchNorm2D free(nn::BatchNorm2dOptions(2).track_running_stats(false));
  CHECK(free.named_buffers().empty());
  free.eval();
  Tensor y = free.forward(a);
  Tensor my = mean(y, {0, 1, 2});
  for (int64_t c = 0; c < 2; ++c) CHECK_NEAR(my.item_at(c), 0.0, 1e-5);
  nn::BatchNorm2D bn(4);
  CHECK(message_has([&] { bn.forward(Tensor::zeros({2, 3, 3, 5})); },
                    "BatchNorm2D: input has C=5 channels but num_features=4 (input shape (2, 3, 3, 5), NHWC)"));
  CHECK_THROWS(bn.forward(Tensor::zeros({2, 4})), std::invalid_argument);
  CHECK_THROWS(bn.forward(Tensor::zeros({1, 1, 1, 4})), std::invalid_argument);  // one value per channel
  CHECK_THROWS(bn.forward(Tensor::zeros({2, 2, 2, 4}, DType::Float64)), std::domain_error);
  CHECK_THROWS(nn::BatchNorm2D(0), std::invalid_argument);
  CHECK_THROWS(nn::BatchNorm2D(nn::BatchNorm2dOptions(3).momentum(1.5)), std::invalid_argument);
  // to(float64) converts the running statistics but not num_batches_tracked.
  bn.to(DType::Float64);
  CHECK(bn.running_var.dtype() == DType::Float64 && bn.num_batches_tracked.dtype() == DType::Int64);
  CHECK(bn.forward(randn({2, 2, 2, 4}, DType::Float64)).dtype() == DType::Float64);
}

// ---- Embedding -----------------------------------------------------------------------------
void test_embedding() {
  manual_seed(18);
  nn::Embedding emb(5, 3);
  Tensor idx = Tensor::empty({2, 2}, DType::Int64);
  const int64_t ids[] = {4, 0, 4, 2};
  for (int i = 0; i < 4; ++i) idx.data<int64_t>()[i] = ids[i];
  Tensor y = emb.forward(idx);
  CHECK(y.shape() == (Shape{2, 2, 3}));
  for (int i = 0; i < 4; ++i)
    for (int d = 0; d < 3; ++d) CHECK_NEAR(y.item_at(i * 3 + d), emb.weight.item_at(ids[i] * 3 + d), 0.0);
  backward(sum(y));
  const double counts[] = {1, 0, 1, 0, 2};  // repeated indices accumulate
  for (int r = 0; r < 5; ++r)
    for (int d = 0; d < 3; ++d) CHECK_NEAR(grad_of(emb.weight).item_at(r * 3 + d), counts[r], 0.0);
  Tensor bad = Tensor::full({2}, 5.0, DType::Int64);
  CHECK_THROWS(emb.forward(bad), std::out_of_range);
  CHECK(message_has([&] { emb.forward(bad); }, "Embedding: index 5 is out of range for num_embeddings=5"));
  CHECK_THROWS(emb.forward(Tensor::zeros({2})), std::domain_error);
  CHECK_THROWS(nn::Embedding(0, 3), std::invalid_argument);
  // N(0, 1) init.
  nn::Embedding big(1000, 100);
  CHECK_NEAR(mean_of(big.weight), 0.0, 0.01);
  CHECK_NEAR(std_of(big.weight), 1.0, 0.01);
}

// ---- init ----------------------------------------------------------------------------------
void test_init_functions() {
  manual_seed(19);
  Tensor w = Tensor::empty({200, 300});
  const uint64_t v0 = w.version();
  nn::init::uniform_(w, -2.0, 3.0);
  CHECK(w.version() > v0);
  double lo = 1e9, hi = -1e9;
  for (int64_t i = 0; i < w.numel(); ++i) {
    lo = std::min(lo, w.item_at(i));
    hi = std::max(hi, w.item_at(i));
  }
  CHECK(lo >= -2.0 && hi <= 3.0 && lo < -1.99 && hi > 2.99);
  CHECK_NEAR(mean_of(w), 0.5, 0.01);
  nn::init::normal_(w, 1.0, 0.5);
  CHECK_NEAR(mean_of(w), 1.0, 0.01);
  CHECK_NEAR(std_of(w), 0.5, 0.01);
  nn::init::constant_(w, 0.25);
  CHECK(w.item_at(123) == 0.25);
  nn::init::zeros_(w);
  CHECK(w.item_at(5) == 0.0);
  nn::init::ones_(w);
  CHECK(w.item_at(5) == 1.0);
  // Fans: Linear (out, in) and Conv2D (Q, FH, FW, C).
  CHECK((nn::init::calculate_fan_in_and_fan_out(Tensor::empty({7, 5})) == std::pair<int64_t, int64_t>{5, 7}));
  CHECK((nn::init::calculate_fan_in_and_fan_out(Tensor::empty({16, 3, 5, 4})) == std::pair<int64_t, int64_t>{60, 240}));
  CHECK_THROWS(nn::init::calculate_fan_in_and_fan_out(Tensor::empty({5})), std::invalid_argument);
  CHECK_NEAR(nn::init::calculate_gain("relu"), std::sqrt(2.0), 1e-15);
  CHECK_NEAR(nn::init::calculate_gain("tanh"), 5.0 / 3.0, 1e-15);
  CHECK_NEAR(nn::init::calculate_gain("leaky_relu", std::sqrt(5.0)), std::sqrt(1.0 / 3.0), 1e-15);
  CHECK_NEAR(nn::init::calculate_gain("sigmoid"), 1.0, 0.0);
  CHECK_THROWS(nn::init::calculate_gain("swish"), std::invalid_argument);
  // kaiming_uniform_ on a conv kernel: bound = sqrt(2) * sqrt(3 / fan_in), fan_in = 3*5*40.
  Tensor k = Tensor::empty({64, 3, 5, 40});
  nn::init::kaiming_uniform_(k, 0.0, "fan_in", "relu");
  const double bound = std::sqrt(2.0) * std::sqrt(3.0 / 600.0);
  CHECK(max_abs(k) <= bound && max_abs(k) > 0.99 * bound);
  CHECK_NEAR(std_of(k), bound / std::sqrt(3.0), 0.01);
  // kaiming_normal_ fan_out: std = sqrt(2) / sqrt(64*3*5).
  nn::init::kaiming_normal_(k, 0.0, "fan_out", "relu");
  CHECK_NEAR(std_of(k), std::sqrt(2.0) / std::sqrt(960.0), 0.01);
  CHECK_THROWS(nn::init::kaiming_normal_(k, 0.0, "fan_avg"), std::invalid_argument);
  // xavier: bound = gain * sqrt(6 / (fan_in + fan_out)).
  nn::init::xavier_uniform_(w, 2.0);
  const double xb = 2.0 * std::sqrt(6.0 / 500.0);
  CHECK(max_abs(w) <= xb && max_abs(w) > 0.99 * xb);
  nn::init::xavier_normal_(w);
  CHECK_NEAR(std_of(w), std::sqrt(2.0 / 500.0), 0.01);
  // Integer tensors cannot be drawn into; no graph is recorded on parameters.
  CHECK_THROWS(nn::init::uniform_(Tensor::zeros({3}, DType::Int64)), std::domain_error);
  Tensor p = Tensor::zeros({4, 4});
  p.impl().requires_grad = true;
  nn::init::normal_(p);
  CHECK(!p.impl().grad_fn && p.requires_grad());
  // A strided view is filled in place, the rest untouched.
  Tensor base = Tensor::zeros({4, 4});
  nn::init::ones_(base.as_strided({4}, {5}, 0));  // the diagonal
  CHECK(base.item_at(5) == 1.0 && base.item_at(1) == 0.0);
}

// Every layer refuses non-float parameters with the same message (nn::detail::check_parameter_dtype).
void test_parameter_dtype_errors() {
  const DType i64 = DType::Int64;
  const char* want = ": dtype must be float32 or float64, got int64";
  CHECK(message_has([&] { nn::Linear(nn::LinearOptions(3, 3).dtype(i64)); }, std::string("Linear") + want));
  CHECK(message_has([&] { nn::Conv2D(nn::Conv2dOptions(3, 3, 3).dtype(i64)); }, std::string("Conv2D") + want));
  CHECK(message_has([&] { nn::LayerNorm(nn::LayerNormOptions({3}).dtype(i64)); }, std::string("LayerNorm") + want));
  CHECK(message_has([&] { nn::BatchNorm2D(nn::BatchNorm2dOptions(3).dtype(i64)); }, std::string("BatchNorm2D") + want));
  CHECK(message_has([&] { nn::Embedding(nn::EmbeddingOptions(4, 3).dtype(i64)); }, std::string("Embedding") + want));
  CHECK(message_has([&] { nn::MultiHeadAttention(nn::MultiHeadAttentionOptions(4, 2).dtype(i64)); },
                    std::string("MultiHeadAttention") + want));
  CHECK(message_has([&] { nn::LSTM(nn::LSTMOptions(3, 3).dtype(i64)); }, std::string("LSTM") + want));
  CHECK(message_has([&] { nn::GRU(nn::GRUOptions(3, 3).dtype(i64)); }, std::string("GRU") + want));
  CHECK(message_has([&] { nn::RNN(nn::RNNOptions(3, 3).dtype(i64)); }, std::string("RNN") + want));
  CHECK_THROWS(nn::LSTM(nn::LSTMOptions(3, 3).dtype(i64)), std::domain_error);
}

void test_default_init_as_pytorch() {
  manual_seed(20);
  nn::Linear fc(400, 300);
  const double b = 1.0 / std::sqrt(400.0);
  CHECK(max_abs(fc.weight) <= b && max_abs(fc.weight) > 0.99 * b);
  CHECK(max_abs(fc.bias) <= b && max_abs(fc.bias) > 0.9 * b);
  CHECK_NEAR(std_of(fc.weight), b / std::sqrt(3.0), 0.01);
  CHECK_NEAR(mean_of(fc.weight), 0.0, 0.01);
  nn::Conv2D conv(nn::Conv2dOptions(16, 200, {3, 5}));
  const double cb = 1.0 / std::sqrt(3.0 * 5.0 * 16.0);
  CHECK(max_abs(conv.weight) <= cb && max_abs(conv.weight) > 0.99 * cb);
  CHECK(max_abs(conv.bias) <= cb);
  // The seed reproduces the parameters.
  manual_seed(21);
  nn::Linear a(5, 4);
  manual_seed(21);
  nn::Linear c(5, 4);
  check_close(a.weight, c.weight, 0.0);
  check_close(a.bias, c.bias, 0.0);
  a.reset_parameters();
  CHECK(a.weight.item_at(0) != c.weight.item_at(0));
}

}  // namespace

int main() {
  RUN_TEST(test_linear_forward_backward);
  RUN_TEST(test_linear_errors);
  RUN_TEST(test_conv2d_forward_backward);
  RUN_TEST(test_conv2d_errors);
  RUN_TEST(test_pooling_flatten_activations);
  RUN_TEST(test_dropout_train_eval);
  RUN_TEST(test_layer_norm);
  RUN_TEST(test_batch_norm_train_eval);
  RUN_TEST(test_batch_norm_options_and_errors);
  RUN_TEST(test_embedding);
  RUN_TEST(test_init_functions);
  RUN_TEST(test_default_init_as_pytorch);
  RUN_TEST(test_parameter_dtype_errors);
  return test_util::finish();
}
