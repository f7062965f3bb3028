// Tests of layer.h itself: a custom layer written here, nested registration and dotted
// names in order, duplicate-name errors, train/eval propagation, zero_grad, to(dtype)
// keeping the TensorImpl objects, the repr tree, buffers, Sequential's construction and
// indexing, and two threads running forward on one model at once.
#include "nablagrad/nablagrad.h"

#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "test_util.h"

using namespace nablagrad;

namespace {

// The custom layer of layer.h's header comment.
struct TwoLayerNet : nn::Layer {
  std::shared_ptr<nn::Linear> fc1, fc2;
  Tensor scale;
  TwoLayerNet() {
    fc1 = register_module("fc1", std::make_shared<nn::Linear>(4, 8));
    fc2 = register_module("fc2", std::make_shared<nn::Linear>(8, 2));
    scale = register_parameter("scale", Tensor::full({2}, 1.0));
  }
  Tensor forward(const Tensor& x) override { return mul(fc2->forward(relu(fc1->forward(x))), scale); }
  std::string name() const override { return "TwoLayerNet"; }
};

// A layer with a buffer and an integer buffer, to exercise buffers and to().
struct Counter : nn::Layer {
  Tensor offset, calls;
  Counter() {
    offset = register_buffer("offset", Tensor::full({3}, 0.5));
    calls = register_buffer("calls", Tensor::zeros({}, DType::Int64));
  }
  Tensor forward(const Tensor& x) override { return add(x, offset); }
  std::string name() const override { return "Counter"; }
  std::string extra_repr() const override { return "size=3"; }
};

std::vector<std::string> names_of(const nn::Layer::NamedTensors& list) {
  std::vector<std::string> out;
  for (const auto& e : list) out.push_back(e.first);
  return out;
}

Tensor grad_of(const Tensor& t) { return Tensor(t.impl().grad); }

void test_custom_layer_names_and_forward() {
  manual_seed(1);
  TwoLayerNet net;
  const std::vector<std::string> expected = {"scale", "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"};
  CHECK(names_of(net.named_parameters()) == expected);
  CHECK(names_of(net.named_parameters(false)) == std::vector<std::string>{"scale"});
  CHECK(net.parameters().size() == 5);
  for (const Tensor& p : net.parameters()) CHECK(p.requires_grad() && !p.impl().grad_fn);
  // The handles the layer keeps are the registered tensors themselves.
  CHECK(net.named_parameters()[1].second.impl_ptr() == net.fc1->weight.impl_ptr());
  CHECK(net.parameter("scale").impl_ptr() == net.scale.impl_ptr());
  CHECK_THROWS(net.parameter("nope"), std::out_of_range);
  Tensor x = randn({3, 4});
  Tensor y = net(x);
  CHECK(y.shape() == (Shape{3, 2}));
  // Same as composing the functional ops by hand.
  Tensor h = relu(linear(x, net.fc1->weight, net.fc1->bias));
  Tensor ref = mul(linear(h, net.fc2->weight, net.fc2->bias), net.scale);
  for (int64_t i = 0; i < y.numel(); ++i) CHECK_NEAR(y.item_at(i), ref.item_at(i), 1e-6);
  // Gradients reach every parameter.
  backward(sum(y));
  for (const auto& p : net.named_parameters()) CHECK(p.second.impl().grad != nullptr);
  auto children = net.named_children();
  CHECK(children.size() == 2 && children[0].first == "fc1" && children[1].first == "fc2");
}

void test_nested_registration_dotted_names() {
  auto inner = std::make_shared<nn::Sequential>(nn::Linear(3, 3), nn::ReLU());
  nn::Sequential outer(nn::Linear(2, 3), inner, nn::Linear(3, 1));
  // outer: 0 = Linear(2,3), 1 = inner(0 = Linear, 1 = ReLU), 2 = Linear(3,1)
  const std::vector<std::string> expected = {"0.weight", "0.bias", "1.0.weight", "1.0.bias", "2.weight", "2.bias"};
  CHECK(names_of(outer.named_parameters()) == expected);
  CHECK(outer.named_parameters(false).empty());
  auto mods = std::make_shared<nn::Sequential>(nn::Linear(2, 2), std::make_shared<nn::Sequential>(nn::Tanh()));
  std::vector<std::string> mod_names;
  for (const auto& m : mods->named_modules()) mod_names.push_back(m.first);
  CHECK((mod_names == std::vector<std::string>{"", "0", "1", "1.0"}));
  CHECK(mods->named_modules()[0].second.get() == mods.get());
  // A stack-allocated layer has no shared_ptr owner: named_modules skips the root.
  CHECK(outer.named_modules().size() == 5);  // 0, 1, 1.0, 1.1, 2
  CHECK(outer.named_modules()[0].first == "0");
}

struct Dup : nn::Layer {
  Tensor forward(const Tensor& x) override { return x; }
  std::string name() const override { return "Dup"; }
};

void test_registration_errors() {
  Dup d;
  d.register_parameter("w", Tensor::zeros({2}));
  CHECK_THROWS(d.register_parameter("w", Tensor::zeros({2})), std::invalid_argument);
  CHECK_THROWS(d.register_buffer("w", Tensor::zeros({2})), std::invalid_argument);
  CHECK_THROWS(d.register_module("w", std::make_shared<nn::ReLU>()), std::invalid_argument);
  d.register_module("act", std::make_shared<nn::ReLU>());
  CHECK_THROWS(d.register_parameter("act", Tensor::zeros({2})), std::invalid_argument);
  CHECK_THROWS(d.register_parameter("a.b", Tensor::zeros({2})), std::invalid_argument);
  CHECK_THROWS(d.register_parameter("", Tensor::zeros({2})), std::invalid_argument);
  CHECK_THROWS(d.register_parameter("u", Tensor()), std::invalid_argument);
  CHECK_THROWS(d.register_parameter("i", Tensor::zeros({2}, DType::Int64)), std::domain_error);
  CHECK_THROWS(d.register_module("null", std::shared_ptr<nn::ReLU>()), std::invalid_argument);
  try {
    d.register_parameter("w", Tensor::zeros({2}));
  } catch (const std::invalid_argument& e) {
    CHECK(std::string(e.what()).find("'w' is already registered") != std::string::npos);
  }
  // A non-leaf is detached: the parameter is a leaf requiring grad.
  Tensor a = Tensor::full({2}, 1.0);
  a.impl().requires_grad = true;
  Tensor nonleaf = mul(a, a);
  Tensor& p = d.register_parameter("p", nonleaf);
  CHECK(!p.impl().grad_fn && p.requires_grad());
  // A leaf keeps its identity.
  Tensor leaf = Tensor::zeros({3});
  CHECK(d.register_parameter("leaf", leaf).impl_ptr() == leaf.impl_ptr());
  CHECK(leaf.requires_grad());
}

void test_train_eval_propagation() {
  auto inner = std::make_shared<nn::Sequential>(nn::Dropout(0.5), nn::Linear(2, 2));
  nn::Sequential outer(nn::Linear(2, 2), inner);
  CHECK(outer.is_training() && inner->is_training() && (*inner)[0]->is_training());
  outer.eval();
  CHECK(!outer.is_training() && !inner->is_training() && !(*inner)[0]->is_training() && !outer[0]->is_training());
  // Dropout in eval is the identity.
  Tensor x = randn({4, 2});
  Tensor y = (*inner)[0]->forward(x);
  CHECK(y.impl_ptr() == x.impl_ptr());
  outer.train();
  CHECK(outer.is_training() && (*inner)[0]->is_training());
  outer.train(false);
  CHECK(!(*inner)[1]->is_training());
}

void test_zero_grad() {
  TwoLayerNet net;
  backward(sum(net(randn({2, 4}))));
  for (const Tensor& p : net.parameters()) CHECK(p.impl().grad != nullptr);
  net.zero_grad();
  for (const Tensor& p : net.parameters()) CHECK(p.impl().grad == nullptr);
}

void test_to_dtype_keeps_identity() {
  manual_seed(3);
  TwoLayerNet net;
  auto c = net.register_module("counter", std::make_shared<Counter>());
  backward(sum(net(randn({2, 4}))));
  std::vector<std::shared_ptr<TensorImpl>> impls;
  std::vector<double> values;
  for (const Tensor& p : net.parameters()) {
    impls.push_back(p.impl_ptr());
    values.push_back(p.item_at(0));
  }
  const double g0 = grad_of(net.fc1->weight).item_at(0);
  const auto buffer_impl = c->offset.impl_ptr();
  net.to(DType::Float64);
  const auto params = net.parameters();
  for (std::size_t i = 0; i < params.size(); ++i) {
    CHECK(params[i].impl_ptr() == impls[i]);
    CHECK(params[i].dtype() == DType::Float64);
    CHECK(params[i].requires_grad());
    CHECK(params[i].is_contiguous());
    CHECK_NEAR(params[i].item_at(0), values[i], 0.0);  // float32 -> float64 is exact
  }
  CHECK(grad_of(net.fc1->weight).dtype() == DType::Float64);
  CHECK_NEAR(grad_of(net.fc1->weight).item_at(0), g0, 0.0);
  CHECK(c->offset.impl_ptr() == buffer_impl && c->offset.dtype() == DType::Float64);
  CHECK(c->calls.dtype() == DType::Int64);  // integer buffers are left alone
  // The converted model runs in float64; a float32 input is refused by the linear op.
  CHECK(net(randn({2, 4}, DType::Float64)).dtype() == DType::Float64);
  CHECK_THROWS(net(randn({2, 4})), std::domain_error);
  CHECK_THROWS(net.to(DType::Int64), std::domain_error);
  net.to(DType::Float32);
  CHECK(net.fc2->bias.dtype() == DType::Float32 && net.fc2->bias.impl_ptr() == impls[4]);
}

void test_repr_tree() {
  nn::Sequential net(nn::Linear(2, 3), nn::ReLU(), nn::Sequential(nn::Dropout(0.25), nn::Linear(3, 1)));
  const std::string expected =
      "Sequential(\n"
      "  (0): Linear(in_features=2, out_features=3, bias=True)\n"
      "  (1): ReLU()\n"
      "  (2): Sequential(\n"
      "    (0): Dropout(p=0.25)\n"
      "    (1): Linear(in_features=3, out_features=1, bias=True)\n"
      "  )\n"
      ")";
  CHECK(net.repr() == expected);
  if (net.repr() != expected) std::printf("%s\n", net.repr().c_str());
  nn::Linear fc(nn::LinearOptions(4, 5).bias(false).activation("relu"));
  CHECK(fc.repr() == "Linear(in_features=4, out_features=5, bias=False, activation=relu)");
  Counter c;
  CHECK(c.repr() == "Counter(size=3)");
}

void test_buffers() {
  TwoLayerNet net;
  auto c = net.register_module("counter", std::make_shared<Counter>());
  auto b = net.named_buffers();
  CHECK((names_of(b) == std::vector<std::string>{"counter.offset", "counter.calls"}));
  CHECK(b[0].second.impl_ptr() == c->offset.impl_ptr());
  CHECK(!b[0].second.requires_grad());
  CHECK(net.named_buffers(false).empty());
  CHECK(net.buffers().size() == 2);
  CHECK(names_of(net.named_parameters()).size() == 5);  // buffers are not parameters
  CHECK(c->buffer("offset").impl_ptr() == c->offset.impl_ptr());
  // Writing through the handle is seen by forward.
  c->offset.fill(2.0);
  CHECK_NEAR(c->forward(Tensor::zeros({3})).item_at(1), 2.0, 0.0);
}

void test_sequential_construction_and_indexing() {
  auto shared = std::make_shared<nn::Linear>(3, 4);
  nn::Sequential seq(nn::Linear(2, 3), nn::ReLU(), shared);
  CHECK(seq.size() == 3);
  CHECK(seq[2].get() == shared.get());
  CHECK(seq[-1].get() == shared.get());
  CHECK(dynamic_cast<nn::ReLU*>(seq[1].get()) != nullptr);
  CHECK_THROWS(seq[3], std::out_of_range);
  CHECK_THROWS(seq[-4], std::out_of_range);
  auto tail = seq.push_back(std::make_shared<nn::Sigmoid>());
  CHECK(seq.size() == 4 && seq.named_children()[3].first == "3");
  Tensor y = seq.forward(randn({5, 2}));
  CHECK(y.shape() == (Shape{5, 4}));
  for (int64_t i = 0; i < y.numel(); ++i) CHECK(y.item_at(i) > 0.0 && y.item_at(i) < 1.0);
  nn::Sequential empty;
  Tensor x = randn({2});
  CHECK(empty.forward(x).impl_ptr() == x.impl_ptr());
  std::vector<std::shared_ptr<nn::Layer>> list{std::make_shared<nn::Tanh>(), std::make_shared<nn::Flatten>()};
  nn::Sequential from_list(list);
  CHECK(from_list.size() == 2 && from_list.layers()[0].get() == list[0].get());
}

void test_concurrent_inference() {
  manual_seed(7);
  auto net = std::make_shared<nn::Sequential>(nn::Conv2D(nn::Conv2dOptions(3, 4, 3).padding(1)), nn::BatchNorm2D(4),
                                              nn::ReLU(), nn::MaxPool2D(2), nn::Flatten(), nn::Linear(4 * 4 * 4, 5),
                                              nn::LayerNorm({5}), nn::Dropout(0.5));
  net->eval();
  Tensor x = randn({2, 8, 8, 3});
  Tensor ref;
  {
    NoGradGuard g;
    ref = net->forward(x);
  }
  std::vector<Tensor> results(4);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      NoGradGuard g;
      Tensor y;
      for (int rep = 0; rep < 20; ++rep) y = net->forward(x);
      results[t] = y;
    });
  for (auto& th : threads) th.join();
  for (const Tensor& r : results) {
    CHECK(r.shape() == ref.shape());
    for (int64_t i = 0; i < r.numel(); ++i) CHECK_NEAR(r.item_at(i), ref.item_at(i), 0.0);
  }
}

}  // namespace

int main() {
  RUN_TEST(test_custom_layer_names_and_forward);
  RUN_TEST(test_nested_registration_dotted_names);
  RUN_TEST(test_registration_errors);
  RUN_TEST(test_train_eval_propagation);
  RUN_TEST(test_zero_grad);
  RUN_TEST(test_to_dtype_keeps_identity);
  RUN_TEST(test_repr_tree);
  RUN_TEST(test_buffers);
  RUN_TEST(test_sequential_construction_and_indexing);
  RUN_TEST(test_concurrent_inference);
  return test_util::finish();
}
