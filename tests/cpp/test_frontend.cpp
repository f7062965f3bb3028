// The libtorch-style frontend on Tensor (tensor.h + tensor_api.h): requires_grad_, grad,
// backward, item<T>, the operators (with scalars on either side, without widening float32),
// operator<<, construction from vectors and initializer lists, the member sugar, and the
// option-struct overloads of conv2d and the pools.
#include <nablagrad/nablagrad.h>

#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "test_util.h"

using namespace nablagrad;

namespace {

/// Same shape, same dtype, same values (exactly, or within tol relative).
bool same(const Tensor& a, const Tensor& b, double tol = 0.0) {
  if (a.shape() != b.shape() || a.dtype() != b.dtype()) {
    std::printf("  shape/dtype differ: %s %s vs %s %s\n", shape_str(a.shape()).c_str(), dtype_name(a.dtype()),
                shape_str(b.shape()).c_str(), dtype_name(b.dtype()));
    return false;
  }
  for (int64_t i = 0; i < a.numel(); ++i) {
    const double x = a.item_at(i), y = b.item_at(i);
    if (!(x == y || std::fabs(x - y) <= tol * (1.0 + std::fabs(y)))) {
      std::printf("  element %lld differs: %.17g vs %.17g\n", static_cast<long long>(i), x, y);
      return false;
    }
  }
  return true;
}

std::string repr(const Tensor& t) {
  std::ostringstream os;
  os << t;
  return os.str();
}

void test_requires_grad_() {
  Tensor w = Tensor::full({3}, 2.0);
  CHECK(!w.requires_grad());
  Tensor& same_w = w.requires_grad_();
  CHECK(&same_w == &w);  // returns *this, for chaining
  CHECK(w.requires_grad() && w.is_leaf());
  w.requires_grad_(false);
  CHECK(!w.requires_grad());
  // chained on a temporary, the libtorch way
  Tensor v = Tensor::full({2}, 1.0, DType::Float64).requires_grad_();
  CHECK(v.requires_grad());
  // only float dtypes can require grad
  Tensor i = Tensor::zeros({2}, DType::Int64);
  CHECK_THROWS(i.requires_grad_(), std::runtime_error);
  CHECK(!i.requires_grad());
  Tensor b = Tensor::zeros({2}, DType::Bool);
  CHECK_THROWS(b.requires_grad_(), std::runtime_error);
  i.requires_grad_(false);  // turning it off is always fine on a leaf
  CHECK(!i.requires_grad());
  // a non-leaf cannot stop requiring grad; asking for it again is a no-op (as PyTorch)
  w.requires_grad_();
  Tensor y = w * w;
  CHECK(!y.is_leaf());
  CHECK_THROWS(y.requires_grad_(false), std::runtime_error);
  CHECK(y.requires_grad());
  y.requires_grad_(true);
  CHECK(y.requires_grad() && !y.is_leaf());
  // detach: same data, a leaf without history
  Tensor d = y.detach();
  CHECK(d.is_leaf() && !d.requires_grad());
  CHECK(d.raw_data() == y.raw_data());
}

void test_grad_and_backward() {
  Tensor w = tensor({1, 2, 3}).requires_grad_();
  CHECK(!w.grad().defined());
  Tensor loss = (w * w).sum();
  loss.backward();
  CHECK(same(w.grad(), tensor({2, 4, 6})));
  // accumulates over a second graph
  (w * 3.0).sum().backward();
  CHECK(same(w.grad(), tensor({5, 7, 9})));
  w.reset_grad();
  CHECK(!w.grad().defined());

  // backward with an explicit output gradient
  Tensor y = w * 2.0;
  CHECK_THROWS(y.backward(), std::runtime_error);  // not a single element and no gradient given
  y.backward(tensor({1, 10, 100}));
  CHECK(same(w.grad(), tensor({2, 20, 200})));
  w.reset_grad();
  CHECK_THROWS((w * 2.0).backward(tensor({1, 2})), std::invalid_argument);  // wrong shape

  // retain_graph: a second pass needs it; with it the gradient accumulates twice
  Tensor z = (w * w).sum();
  z.backward(Tensor(), /*retain_graph=*/true);
  z.backward();
  CHECK(same(w.grad(), tensor({4, 8, 12})));
  CHECK_THROWS(z.backward(), std::runtime_error);  // the graph was freed by the last pass
  w.reset_grad();

  // backward on a tensor that does not require grad
  CHECK_THROWS(tensor({1.0}).backward(), std::runtime_error);

  // set_grad: replaces; checks shape (invalid_argument) and dtype (domain_error)
  w.set_grad(tensor({7, 7, 7}));
  CHECK(same(w.grad(), tensor({7, 7, 7})));
  CHECK_THROWS(w.set_grad(tensor({1, 2})), std::invalid_argument);
  CHECK_THROWS(w.set_grad(tensor({1, 2, 3}, {3}, DType::Float64)), std::domain_error);
  w.set_grad(Tensor());
  CHECK(!w.grad().defined());
}

void test_item() {
  CHECK(tensor({2.5}).item<float>() == 2.5f);
  CHECK(tensor({2.5}).item<double>() == 2.5);
  CHECK(tensor({2.75}).item<int64_t>() == 2);  // converted as static_cast
  CHECK(Tensor::scalar(-3.0, DType::Float64).item<int>() == -3);
  // int64 read exactly (2^53 + 1 is not representable as a double)
  const int64_t big = (int64_t{1} << 53) + 1;
  CHECK(Tensor(std::vector<int64_t>{big}).item<int64_t>() == big);
  CHECK(Tensor::scalar(1.0, DType::Bool).item<bool>());
  CHECK(!Tensor::scalar(0.0, DType::Bool).item<bool>());
  CHECK(tensor({1.0, 2.0}, {1, 1, 2}).sum().item<float>() == 3.0f);
  // not one element
  CHECK_THROWS(tensor({1, 2}).item<float>(), std::invalid_argument);
  CHECK_THROWS(Tensor::zeros({0}).item<float>(), std::invalid_argument);
  // a strided single element (a slice of a transposed view) reads the right value
  Tensor m = tensor({1, 2, 3, 4, 5, 6}, {2, 3}).transpose(0, 1);
  CHECK(m.as_strided({1}, {1}, m.offset() + 4).item<float>() == 5.0f);
}

void test_arithmetic_operators() {
  const Tensor a = tensor({1, 2, 3}), b = tensor({4, 5, 6});
  CHECK(same(a + b, tensor({5, 7, 9})));
  CHECK(same(a - b, tensor({-3, -3, -3})));
  CHECK(same(a * b, tensor({4, 10, 18})));
  CHECK(same(b / a, tensor({4, 2.5, 2})));
  // scalar on the right
  CHECK(same(a + 1.5, tensor({2.5, 3.5, 4.5})));
  CHECK(same(a - 1, tensor({0, 1, 2})));
  CHECK(same(a * 2.0f, tensor({2, 4, 6})));
  CHECK(same(a / 4, tensor({0.25, 0.5, 0.75})));
  // scalar on the left
  CHECK(same(1.5 + a, tensor({2.5, 3.5, 4.5})));
  CHECK(same(10 - a, tensor({9, 8, 7})));
  CHECK(same(2.0 * a, tensor({2, 4, 6})));
  CHECK(same(6.0 / a, tensor({6, 3, 2})));
  // unary
  CHECK(same(-a, tensor({-1, -2, -3})));
  CHECK(same(+a, a));
  // broadcasting
  CHECK(same(tensor({1, 2}, {2, 1}) + tensor({10, 20, 30}), tensor({11, 21, 31, 12, 22, 32}, {2, 3})));
  CHECK_THROWS(a + tensor({1, 2}), std::invalid_argument);
  // differentiable, with scalars on both sides
  Tensor w = tensor({1, 2}).requires_grad_();
  ((2.0 * w - 1.0) * (w + 3) / 2.0 + 1.0 / w).sum().backward();
  // d/dw [(2w - 1)(w + 3) / 2 + 1/w] = (4w + 5) / 2 - 1/w^2
  CHECK(same(w.grad(), tensor({4.5 - 1.0, 6.5 - 0.25}), 1e-6));
}

void test_scalar_dtypes_do_not_widen() {
  const Tensor f32 = tensor({1, 2}), f64 = tensor({1, 2}, {2}, DType::Float64);
  const Tensor i64 = tensor({1, 2}, {2}, DType::Int64), b = tensor({1, 0}, {2}, DType::Bool);
  // floating scalars keep a float tensor's dtype
  CHECK((f32 + 0.1).dtype() == DType::Float32);
  CHECK((0.1 * f32).dtype() == DType::Float32);
  CHECK((f32 / 3.0).dtype() == DType::Float32);
  CHECK((1.0 - f32).dtype() == DType::Float32);
  CHECK((f64 * 0.5f).dtype() == DType::Float64);
  CHECK((f32 + 1).dtype() == DType::Float32);
  CHECK((f64 - 1).dtype() == DType::Float64);
  // the value is rounded to the tensor's dtype: float32(0.1) == 0.1 in float32
  CHECK((tensor({0.1}) == 0.1).item<bool>());
  CHECK((tensor({0.1}, {1}, DType::Float64) == 0.1).item<bool>());
  // integers keep int64; a floating scalar makes an int tensor float32 (as PyTorch)
  CHECK((i64 + 2).dtype() == DType::Int64);
  CHECK(same(i64 * 3, tensor({3, 6}, {2}, DType::Int64)));
  CHECK((i64 + 2.5).dtype() == DType::Float32);
  CHECK(same(2.5 + i64, tensor({3.5, 4.5})));
  CHECK((i64 / 2).dtype() == DType::Float32);  // true division
  CHECK((b + 1).dtype() == DType::Int64);
  CHECK((b * 1.5).dtype() == DType::Float32);
  CHECK((b == true).dtype() == DType::Bool);
  CHECK(same(b == true, b));
  // a tensor operand of another dtype promotes as usual
  CHECK((f32 + f64).dtype() == DType::Float64);
  // scalar_like directly
  CHECK(scalar_like(0.5, f32).dtype() == DType::Float32 && scalar_like(0.5, f32).dim() == 0);
  CHECK(scalar_like(0.5, i64).dtype() == DType::Float32);
  CHECK(scalar_like(7, i64).dtype() == DType::Int64 && scalar_like(7, i64).item<int64_t>() == 7);
  CHECK(scalar_like(7, f64).dtype() == DType::Float64);
  CHECK(scalar_like(true, f32).dtype() == DType::Bool);
}

void test_comparison_operators() {
  const Tensor a = tensor({1, 2, 3}), b = tensor({3, 2, 1});
  const Tensor t = tensor({1, 1, 1}, {3}, DType::Bool), f = tensor({0, 0, 0}, {3}, DType::Bool);
  auto bools = [](std::initializer_list<double> v) { return tensor(v, {static_cast<int64_t>(v.size())}, DType::Bool); };
  CHECK(same(a < b, bools({1, 0, 0})));
  CHECK(same(a <= b, bools({1, 1, 0})));
  CHECK(same(a > b, bools({0, 0, 1})));
  CHECK(same(a >= b, bools({0, 1, 1})));
  CHECK(same(a == b, bools({0, 1, 0})));
  CHECK(same(a != b, bools({1, 0, 1})));
  // with a scalar on the right
  CHECK(same(a < 2, bools({1, 0, 0})));
  CHECK(same(a <= 2.0, bools({1, 1, 0})));
  CHECK(same(a > 1.5, bools({0, 1, 1})));
  CHECK(same(a >= 3, bools({0, 0, 1})));
  CHECK(same(a == 2, bools({0, 1, 0})));
  CHECK(same(a != 2.0f, bools({1, 0, 1})));
  // with a scalar on the left (2 < a is a > 2)
  CHECK(same(2 < a, bools({0, 0, 1})));
  CHECK(same(2.0 <= a, bools({0, 1, 1})));
  CHECK(same(1.5 > a, bools({1, 0, 0})));
  CHECK(same(2 >= a, bools({1, 1, 0})));
  CHECK(same(3 == a, bools({0, 0, 1})));
  CHECK(same(1.0 != a, bools({0, 1, 1})));
  // bool results compose with sum (a count) and never record a graph
  Tensor w = tensor({-1, 0.5, 2}).requires_grad_();
  const Tensor positive = w > 0;
  CHECK(positive.dtype() == DType::Bool && !positive.requires_grad());
  CHECK(positive.sum().item<int64_t>() == 2);
  CHECK(same(t == f, f));
  CHECK_THROWS(a < tensor({1, 2}), std::invalid_argument);
}

void test_operator_output() {
  CHECK(repr(tensor({1, 2, 3, 4}, {2, 2})) == "tensor([[1., 2.],\n        [3., 4.]])");
  CHECK(repr(tensor({1, 2, 3, 4}, {2, 2}, DType::Float64)) == "tensor([[1., 2.],\n        [3., 4.]], dtype=float64)");
  CHECK(repr(tensor({1.5, -2.25})) == "tensor([ 1.5000, -2.2500])");
  CHECK(repr(tensor({0.5, 100.25}, {2, 1})) == "tensor([[  0.5000],\n        [100.2500]])");
  CHECK(repr(tensor({1e-5, 1.0})) == "tensor([1.0000e-05, 1.0000e+00])");
  CHECK(repr(tensor({1e9, 1.0})) == "tensor([1.0000e+09, 1.0000e+00])");
  CHECK(repr(Tensor::scalar(2.5)) == "tensor(2.5000)");
  CHECK(repr(tensor({std::nan(""), 1.0, INFINITY})) == "tensor([nan, 1., inf])");
  // the width comes from the nonzero finite values (PyTorch's rule)
  CHECK(repr(tensor({0, 100})) == "tensor([  0., 100.])");
  CHECK(repr(tensor({-0.0, 1})) == "tensor([-0., 1.])");
  CHECK(repr(tensor({std::nan(""), 100})) == "tensor([ nan, 100.])");
  CHECK(repr(Tensor{1, 2, 30}) == "tensor([ 1,  2, 30])");
  CHECK(repr(tensor({1, 0}, {2}, DType::Bool)) == "tensor([ True, False])");
  CHECK(repr(Tensor::zeros({0})) == "tensor([])");
  CHECK(repr(Tensor::zeros({0, 3})) == "tensor([], size=(0, 3))");
  CHECK(repr(Tensor::zeros({2, 1, 2})) == "tensor([[[0., 0.]],\n\n        [[0., 0.]]])");
  CHECK(repr(Tensor()) == "tensor(undefined)");
  // autograd state, as PyTorch prints it
  Tensor w = tensor({1, 2}).requires_grad_();
  CHECK(repr(w) == "tensor([1., 2.], requires_grad=True)");
  CHECK(repr(w * w) == "tensor([1., 4.], grad_fn=<mul>)");
  // a long row wraps at 80 columns; a large tensor is summarised (first and last 3)
  CHECK(repr(Tensor::full({12}, 3.25)) ==
        "tensor([3.2500, 3.2500, 3.2500, 3.2500, 3.2500, 3.2500, 3.2500, 3.2500, 3.2500,\n"
        "        3.2500, 3.2500, 3.2500])");
  std::vector<int64_t> range(2000);
  for (int64_t i = 0; i < 2000; ++i) range[static_cast<std::size_t>(i)] = i;
  CHECK(repr(Tensor::from_vector(range, {2, 1000})) ==
        "tensor([[   0,    1,    2,  ...,  997,  998,  999],\n"
        "        [1000, 1001, 1002,  ..., 1997, 1998, 1999]])");
  CHECK(repr(Tensor::zeros({40, 40})) ==
        "tensor([[0., 0., 0.,  ..., 0., 0., 0.],\n"
        "        [0., 0., 0.,  ..., 0., 0., 0.],\n"
        "        [0., 0., 0.,  ..., 0., 0., 0.],\n"
        "        ...,\n"
        "        [0., 0., 0.,  ..., 0., 0., 0.],\n"
        "        [0., 0., 0.,  ..., 0., 0., 0.],\n"
        "        [0., 0., 0.,  ..., 0., 0., 0.]])");
  // a non-contiguous view prints in logical order
  CHECK(repr(tensor({1, 2, 3, 4}, {2, 2}).transpose(0, 1)) == "tensor([[1., 3.],\n        [2., 4.]])");
  CHECK(tensor_repr(tensor({1})) == "tensor([1.])");
}

void test_construction() {
  const Tensor f = Tensor(std::vector<float>{1.5f, 2.5f});
  CHECK(f.dtype() == DType::Float32 && f.shape() == Shape{2} && f.item_at(1) == 2.5);
  const Tensor d = Tensor(std::vector<double>{0.1, 0.2, 0.3});
  CHECK(d.dtype() == DType::Float64 && d.shape() == Shape{3} && d.item_at(0) == 0.1);
  const Tensor i = Tensor(std::vector<int64_t>{5, -6});
  CHECK(i.dtype() == DType::Int64 && i.item_at(1) == -6);
  // initializer lists: the element type decides
  const Tensor lf{1.f, 2.f, 3.f}, ld{1.0, 2.0}, li{1, 2, 3, 4};
  CHECK(lf.dtype() == DType::Float32 && lf.shape() == Shape{3});
  CHECK(ld.dtype() == DType::Float64 && ld.shape() == Shape{2});
  CHECK(li.dtype() == DType::Int64 && li.shape() == Shape{4} && li.item_at(3) == 4);
  // the copy constructor still wins for a single Tensor in braces
  const Tensor copy{lf};
  CHECK(copy.impl_ptr() == lf.impl_ptr());
  // from_vector with a shape, optionally converting
  const Tensor m = Tensor::from_vector(std::vector<float>{1, 2, 3, 4, 5, 6}, {2, 3});
  CHECK(m.dtype() == DType::Float32 && m.shape() == (Shape{2, 3}) && m.item_at(5) == 6);
  const Tensor md = Tensor::from_vector(std::vector<int>{1, 2, 3, 4}, {2, 2}, DType::Float64);
  CHECK(md.dtype() == DType::Float64 && md.item_at(2) == 3);
  CHECK(Tensor::from_vector(std::vector<int>{1, 2}, {2}).dtype() == DType::Int64);
  CHECK(Tensor::from_vector(std::vector<bool>{true, false}, {2}).dtype() == DType::Bool);
  CHECK(Tensor::from_vector(std::vector<double>{2.5}, {}).dim() == 0);
  CHECK_THROWS(Tensor::from_vector(std::vector<float>{1, 2, 3}, {2, 2}), std::invalid_argument);
  CHECK_THROWS(Tensor::from_vector(std::vector<float>{1, 2, 3, 4, 5}, {2, 2}), std::invalid_argument);
  // the tensor() helpers: float32 unless told otherwise
  CHECK(same(tensor({1, 2, 3}), Tensor{1.f, 2.f, 3.f}));
  const Tensor s = tensor({1, 2, 3, 4, 5, 6}, {3, 2});
  CHECK(s.shape() == (Shape{3, 2}) && s.dtype() == DType::Float32 && s.item_at(3) == 4);
  CHECK(tensor({1, 2}, {2}, DType::Int64).dtype() == DType::Int64);
  CHECK(tensor({3.5}, {}).dim() == 0 && tensor({3.5}, {}).item<double>() == 3.5);
  CHECK_THROWS(tensor({1, 2, 3}, {2, 2}), std::invalid_argument);
  CHECK_THROWS(tensor({1, 2, 3, 4}, {3}), std::invalid_argument);
}

void test_member_sugar() {
  const Tensor x = tensor({-1, 2, -3, 4, 5, -6}, {2, 3});
  CHECK(same(x.sum(), sum(x)));
  CHECK(same(x.sum({1}), tensor({-2, 3})));
  CHECK(same(x.mean({0}, true), mean(x, {0}, true)));
  CHECK(same(x.max(), max(x)) && same(x.min({1}), min(x, {1})));
  CHECK(same(x.reshape({3, 2}), reshape(x, {3, 2})));
  CHECK(same(x.view({6}), view(x, {6})));
  CHECK(same(x.flatten(), flatten(x)));
  CHECK(same(x.transpose(0, 1), transpose(x, 0, 1)) && same(x.permute({1, 0}), permute(x, {1, 0})));
  CHECK(same(x.transpose(0, 1).contiguous(), contiguous(transpose(x, 0, 1))));
  CHECK(same(x.matmul(x.transpose(0, 1)), matmul(x, transpose(x, 0, 1))));
  CHECK(same(x.relu(), relu(x)) && same(x.abs(), abs(x)) && same(x.tanh(), tanh(x)));
  CHECK(same(x.sigmoid(), sigmoid(x)) && same(x.exp(), exp(x)));
  CHECK(same(x.abs().log(), log(abs(x))) && same(x.abs().sqrt(), sqrt(abs(x))));
  CHECK(same(x.softmax(), softmax(x, -1)) && same(x.log_softmax(0), log_softmax(x, 0)));
  CHECK(same(x.pow(2.0), x * x));
  CHECK(same(tensor({2, 3}, {2}, DType::Int64).pow(2), tensor({4, 9}, {2}, DType::Int64)));
  CHECK(tensor({2, 3}, {2}, DType::Int64).pow(0.5).dtype() == DType::Float32);  // as the operators
  CHECK(same(x.pow(tensor({2})), x * x));
  CHECK(x.to(DType::Float64).dtype() == DType::Float64);
  // members record the graph like the free functions
  Tensor w = tensor({1, 2, 3}).requires_grad_();
  w.pow(2.0).mean().backward();
  CHECK(same(w.grad(), tensor({2.0 / 3, 4.0 / 3, 2.0}), 1e-6));
}

void test_conv_and_pool_options() {
  manual_seed(3);
  const Tensor x = randn({2, 9, 7, 3}), w3 = randn({4, 3, 3, 3}), w4 = randn({4, 4, 2, 3}), b = randn({4});
  // defaults: stride 1, no padding
  CHECK(same(conv2d(x, w3, b), conv2d(x, w3, b, 1, 1, 0, 0, 0, 0)));
  CHECK(same(conv2d(x, w3, b, Conv2dFuncOptions().stride(2).padding(1)), conv2d(x, w3, b, 2, 2, 1, 1, 1, 1)));
  CHECK(same(conv2d(x, w3, Tensor(), Conv2dFuncOptions().stride(2, 1).padding(1, 0)),
             conv2d(x, w3, Tensor(), 2, 1, 1, 1, 0, 0)));
  CHECK(same(conv2d(x, w3, b, Conv2dFuncOptions().padding(0, 1, 2, 0)), conv2d(x, w3, b, 1, 1, 0, 1, 2, 0)));
  // "same": odd kernels pad evenly; an even kernel puts the extra row/column bottom/right
  const Tensor ys = conv2d(x, w3, b, Conv2dFuncOptions().padding("same"));
  CHECK(ys.shape() == (Shape{2, 9, 7, 4}) && same(ys, conv2d(x, w3, b, 1, 1, 1, 1, 1, 1)));
  const Tensor ye = conv2d(x, w4, b, Conv2dFuncOptions().padding("same"));
  CHECK(ye.shape() == (Shape{2, 9, 7, 4}) && same(ye, conv2d(x, w4, b, 1, 1, 1, 2, 0, 1)));
  CHECK(same(conv2d(x, w3, b, Conv2dFuncOptions().padding(2).padding("valid")), conv2d(x, w3, b)));
  CHECK_THROWS(conv2d(x, w3, b, Conv2dFuncOptions().stride(2).padding("same")), std::invalid_argument);
  CHECK_THROWS(Conv2dFuncOptions().padding("full"), std::invalid_argument);
  const Conv2dFuncOptions o = Conv2dFuncOptions().stride(3, 2).padding(1, 2);
  CHECK(o.stride()[0] == 3 && o.stride()[1] == 2 && o.padding()[0] == 1 && o.padding()[3] == 2);
  // the checks of the positional form still apply
  CHECK_THROWS(conv2d(x, randn({4, 3, 3, 2}), b, Conv2dFuncOptions()), std::invalid_argument);
  // gradients flow through the options overload
  Tensor wg = w3.detach().requires_grad_();
  conv2d(x, wg, b, Conv2dFuncOptions().padding("same")).sum().backward();
  Tensor wr = w3.detach().requires_grad_();
  conv2d(x, wr, b, 1, 1, 1, 1, 1, 1).sum().backward();
  CHECK(same(wg.grad(), wr.grad()));

  // pools: stride defaults to the kernel size
  CHECK(same(max_pool2d(x, Pool2dOptions(2)), max_pool2d(x, 2, 2, 2, 2, 0, 0)));
  CHECK(same(max_pool2d(x, Pool2dOptions(3, 2).stride(1, 2).padding(1)), max_pool2d(x, 3, 2, 1, 2, 1, 1)));
  CHECK(same(avg_pool2d(x, Pool2dOptions(2)), avg_pool2d(x, 2, 2, 2, 2, 0, 0, true)));
  CHECK(same(avg_pool2d(x, Pool2dOptions(3).stride(2).padding(1, 0).count_include_pad(false)),
             avg_pool2d(x, 3, 3, 2, 2, 1, 0, false)));
  CHECK(same(avg_pool2d(x, Pool2dOptions(3).stride(1).padding(1)), avg_pool2d(x, 3, 3, 1, 1, 1, 1, true)));
  const Pool2dOptions p = Pool2dOptions(3, 2);
  CHECK(p.kernel_size()[0] == 3 && p.stride()[1] == 2 && p.padding()[0] == 0 && p.count_include_pad());
  CHECK_THROWS(max_pool2d(x, Pool2dOptions(2).padding(2)), std::invalid_argument);  // pad > kernel / 2
}

}  // namespace

int main() {
  RUN_TEST(test_requires_grad_);
  RUN_TEST(test_grad_and_backward);
  RUN_TEST(test_item);
  RUN_TEST(test_arithmetic_operators);
  RUN_TEST(test_scalar_dtypes_do_not_widen);
  RUN_TEST(test_comparison_operators);
  RUN_TEST(test_operator_output);
  RUN_TEST(test_construction);
  RUN_TEST(test_member_sugar);
  RUN_TEST(test_conv_and_pool_options);
  return test_util::finish();
}
