// Autograd engine, views, broadcasting and the thread pool, from C++.
#include <nablagrad/nablagrad.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "test_util.h"

using namespace nablagrad;

namespace {

Tensor leaf(const Shape& shape, DType dt = DType::Float64) {
  Tensor t = randn(shape, dt);
  t.impl().requires_grad = true;
  return t;
}

Tensor grad_of(const Tensor& t) { return Tensor(t.impl().grad); }

/// Central-difference check of d sum(f(x)) / dx against backward().
void check_fd(const std::function<Tensor(const Tensor&)>& f, const Shape& shape, double tol = 1e-6) {
  Tensor x = leaf(shape);
  backward(sum(f(x)));
  Tensor g = grad_of(x);
  double* p = x.data<double>();
  for (int64_t i = 0; i < x.numel(); ++i) {
    const double orig = p[i], eps = 1e-6;
    NoGradGuard ng;
    p[i] = orig + eps;
    const double fp = sum(f(x)).item_at(0);
    p[i] = orig - eps;
    const double fm = sum(f(x)).item_at(0);
    p[i] = orig;
    CHECK_NEAR(g.item_at(i), (fp - fm) / (2 * eps), tol);
  }
}

void test_backward_basic() {
  Tensor x = Tensor::full({3}, 2.0, DType::Float64);
  x.impl().requires_grad = true;
  Tensor y = sum(mul(x, x));
  backward(y);
  CHECK_NEAR(grad_of(x).item_at(0), 4.0, 1e-12);
  CHECK(grad_of(x).dtype() == DType::Float64);
}

void test_backward_twice_and_retain() {
  Tensor x = leaf({4});
  Tensor y = sum(exp(x));
  backward(y);
  CHECK_THROWS(backward(y), std::runtime_error);
  Tensor z = sum(exp(x));
  x.impl().grad.reset();
  backward(z, Tensor(), /*retain_graph=*/true);
  const double g1 = grad_of(x).item_at(0);
  backward(z);
  CHECK_NEAR(grad_of(x).item_at(0), 2 * g1, 1e-12);
}

void test_shared_intermediate() {
  // h is used by two consumers: its gradient must be the sum before its own backward runs.
  Tensor x = leaf({5});
  Tensor h = tanh(x);
  Tensor y = sum(add(mul(h, h), mul(h, Tensor::scalar(3.0, DType::Float64))));
  backward(y);
  for (int64_t i = 0; i < 5; ++i) {
    const double hv = std::tanh(x.item_at(i));
    CHECK_NEAR(grad_of(x).item_at(i), (2 * hv + 3) * (1 - hv * hv), 1e-12);
  }
}

void test_deep_graph() {
  // 10^5 nodes: iterative topological walk and iterative destruction (no stack overflow).
  Tensor x = Tensor::full({1}, 1.0, DType::Float64);
  x.impl().requires_grad = true;
  Tensor y = x;
  Tensor c = Tensor::scalar(1.0, DType::Float64);
  for (int i = 0; i < 100000; ++i) y = add(y, c);
  backward(sum(y));
  CHECK_NEAR(grad_of(x).item_at(0), 1.0, 0);
  Tensor z = x;
  for (int i = 0; i < 100000; ++i) z = mul(z, c);
  z = Tensor();  // frees the chain without recursion
  CHECK(true);
}

void test_no_grad_and_leaf_rules() {
  Tensor x = leaf({2});
  {
    NoGradGuard guard;
    Tensor y = mul(x, x);
    CHECK(!y.requires_grad());
    CHECK(!y.impl().grad_fn);
  }
  CHECK(grad_enabled());
  Tensor n = randn({2});
  CHECK_THROWS(backward(sum(n)), std::runtime_error);
  Tensor v = mul(x, x);
  CHECK_THROWS(backward(v), std::runtime_error);  // non-scalar without a gradient
}

void test_broadcast_gradients() {
  Tensor a = leaf({3, 1});
  Tensor b = leaf({1, 4});
  backward(sum(mul(a, b)));
  // d/da = sum_j b[j]
  double sb = 0;
  for (int j = 0; j < 4; ++j) sb += b.item_at(j);
  for (int i = 0; i < 3; ++i) CHECK_NEAR(grad_of(a).item_at(i), sb, 1e-12);
  CHECK(grad_of(a).shape() == Shape({3, 1}));
  CHECK(grad_of(b).shape() == Shape({1, 4}));
  // mixed dtypes: the float32 leaf gets a float32 gradient
  Tensor f = leaf({2}, DType::Float32);
  Tensor d = leaf({2}, DType::Float64);
  Tensor s = sum(mul(f, d));
  CHECK(s.dtype() == DType::Float64);
  backward(s);
  CHECK(grad_of(f).dtype() == DType::Float32);
}

void test_finite_differences() {
  check_fd([](const Tensor& x) { return sigmoid(x); }, {5});
  check_fd([](const Tensor& x) { return gelu(x); }, {5});
  check_fd([](const Tensor& x) { return gelu(x, true); }, {5});
  check_fd([](const Tensor& x) { return div(Tensor::scalar(1.5, DType::Float64), add(exp(x), Tensor::scalar(1.0, DType::Float64))); }, {4});
  check_fd([](const Tensor& x) { return mean(pow_scalar(x, 3.0), {1}); }, {2, 3});
  check_fd([](const Tensor& x) { return max(x, {0}); }, {3, 2});
  check_fd([](const Tensor& x) { return matmul(x, Tensor::full({3, 2}, 0.5, DType::Float64)); }, {2, 3});
  check_fd([](const Tensor& x) { return matmul(x, x); }, {2, 3, 3});
}

void test_views_share_storage() {
  Tensor a = Tensor::zeros({2, 3}, DType::Float32);
  Tensor t = a.as_strided({3, 2}, {1, 3}, 0);
  CHECK(!t.is_contiguous());
  t.data<float>()[3] = 7.0f;  // element (0, 1) of a
  CHECK(a.item_at(1) == 0.0);
  CHECK(a.item_at(3) == 7.0);
  CHECK(t.item_at(1) == 7.0);
  Tensor c = t.contiguous_data();
  CHECK(c.is_contiguous());
  CHECK(c.item_at(1) == 7.0);
  CHECK(c.impl().storage != a.impl().storage);
  CHECK(reinterpret_cast<uintptr_t>(Tensor::empty({17}).raw_data()) % kAlignment == 0);
}

void test_thread_pool() {
  // exceptions propagate without hanging; nested regions run inline; sizes change safely
  for (int n : {1, 2, 3}) {
    set_num_threads(n);
    std::atomic<int64_t> total{0};
    parallel_for(0, 1000, 1, [&](int64_t lo, int64_t hi) {
      parallel_for(0, 10, 1, [&](int64_t l2, int64_t h2) { total += (hi - lo) * (h2 - l2); });
    });
    CHECK(total.load() == 10000);
    CHECK_THROWS(parallel_for(0, 100, 1, [](int64_t, int64_t hi) {
                   if (hi > 50) throw std::invalid_argument("boom");
                 }),
                 std::invalid_argument);
  }
  CHECK_THROWS(set_num_threads(0), std::invalid_argument);
  // the same reduction gives bitwise the same result for any thread count
  Tensor x = randn({300, 257}, DType::Float32);
  set_num_threads(1);
  Tensor s1 = sum(x, {0});
  Tensor m1 = matmul(x, Tensor::full({257, 65}, 0.25f));
  set_num_threads(3);
  Tensor s3 = sum(x, {0});
  Tensor m3 = matmul(x, Tensor::full({257, 65}, 0.25f));
  CHECK(std::memcmp(s1.raw_data(), s3.raw_data(), s1.numel() * 4) == 0);
  CHECK(std::memcmp(m1.raw_data(), m3.raw_data(), m1.numel() * 4) == 0);
  set_num_threads(2);
}

void test_block_cache() {
  BlockCache& cache = BlockCache::instance();
  cache.release_cached();
  void* first = nullptr;
  {
    Tensor big = Tensor::zeros({1 << 16});  // 256 KiB: cached on release
    first = big.raw_data();
  }
  CHECK(cache.cached_bytes() >= (std::size_t{1} << 18));
  Tensor again = Tensor::full({1 << 16}, 3.0);
  CHECK(again.raw_data() == first);
  CHECK(again.item_at(12345) == 3.0);
  {
    Tensor small = Tensor::zeros({16});  // small blocks bypass the cache
    (void)small;
  }
  const std::size_t held = cache.cached_bytes();
  CHECK(held == 0);
  cache.release_cached();
  CHECK(cache.cached_bytes() == 0);
}

void test_errors() {
  CHECK_THROWS(add(Tensor::zeros({2}), Tensor::zeros({3})), std::invalid_argument);
  CHECK_THROWS(matmul(Tensor::zeros({2, 3}), Tensor::zeros({2, 3})), std::invalid_argument);
  CHECK_THROWS(exp(Tensor::zeros({2}, DType::Int64)), std::domain_error);
  CHECK_THROWS(sum(Tensor::zeros({2}), {3}), std::out_of_range);
  CHECK_THROWS(max(Tensor::zeros({0})), std::invalid_argument);
}

/// Saved-tensor versions: the tensors a backward reads, output included, are checked before
/// any gradient is written; tensors it does not read may change.
void test_saved_tensor_versions() {
  {
    Tensor x = leaf({3});
    Tensor y = exp(x);
    y.alias().fill(100.0);  // exp's backward reads its output
    y.bump_version();       // raw C++ writes bump the version themselves
    bool thrown = false;
    try {
      backward(sum(y));
    } catch (const std::runtime_error& e) {
      thrown = std::string(e.what()).find("'exp'") != std::string::npos;
    }
    CHECK(thrown);
    CHECK(!x.impl().grad);
  }
  {
    Tensor a = leaf({2}), b = leaf({2});
    Tensor c = add(a, b);  // add's backward reads nothing
    a.alias().fill(5.0);
    a.bump_version();
    backward(sum(c));
    CHECK(grad_of(a).item_at(0) == 1.0 && grad_of(b).item_at(1) == 1.0);
  }
  {
    Tensor a = leaf({2}), w = leaf({2});
    Tensor h = tanh(a);
    Tensor out = add(sum(mul(h, w)), sum(mul(w, w)));
    h.bump_version();
    CHECK_THROWS(backward(out), std::runtime_error);
    CHECK(!w.impl().grad && !a.impl().grad);  // refused before any gradient was written
  }
}

/// A gradient flowing into an intermediate node is checked against that node's output shape
/// and dtype before its backward runs (a buggy op must not feed a kernel a wrong buffer).
void test_node_gradients_checked() {
  Tensor x = leaf({2, 3});
  Tensor h = tanh(x);  // an intermediate node expecting a (2,3) float64 gradient
  for (int variant = 0; variant < 2; ++variant) {
    Tensor out = Tensor::zeros({1}, DType::Float64);
    record(out, "bad_op", {h}, [variant](const Tensor&, std::vector<Tensor>& gi) {
      gi[0] = variant == 0 ? Tensor::zeros({3, 2}, DType::Float64) : Tensor::zeros({2, 3}, DType::Float32);
    });
    bool thrown = false;
    try {
      backward(out, Tensor(), true);
    } catch (const std::logic_error& e) {
      thrown = std::string(e.what()).find("bad_op") != std::string::npos;
    }
    CHECK(thrown);
    CHECK(!x.impl().grad);
  }
}

/// A two-output op recorded as one node: (2x, x*x). Its backward sees zeros for an output
/// that received no gradient.
std::pair<Tensor, Tensor> twice_and_square(const Tensor& x, int* calls) {
  Tensor a = mul(x.alias(), Tensor::scalar(2.0, x.dtype()));
  Tensor b = mul(x.alias(), x.alias());
  if (any_requires_grad({&x})) {
    const Tensor sx = x.alias();
    record_multi({&a, &b}, "twice_and_square", {x},
                 [sx, calls](const std::vector<Tensor>& g, std::vector<Tensor>& gi) {
                   ++*calls;
                   CHECK(g.size() == 2 && g[0].defined() && g[1].defined());
                   gi[0] = add(mul(g[0], Tensor::scalar(2.0, sx.dtype())), mul(mul(g[1], sx), Tensor::scalar(2.0, sx.dtype())));
                 },
                 {sx});
  }
  return {a, b};
}

void test_multi_output_nodes() {
  const double xv[3] = {0.5, -1.0, 2.0};
  auto make = [&] {
    Tensor x = Tensor::zeros({3}, DType::Float64);
    for (int i = 0; i < 3; ++i) x.data<double>()[i] = xv[i];
    x.impl().requires_grad = true;
    return x;
  };
  int calls = 0;
  {  // both outputs, each used once
    Tensor x = make();
    auto [a, b] = twice_and_square(x, &calls);
    CHECK(a.impl().output_nr == 0 && b.impl().output_nr == 1 && a.impl().grad_fn == b.impl().grad_fn);
    backward(add(sum(a), sum(b)));
    for (int i = 0; i < 3; ++i) CHECK_NEAR(grad_of(x).item_at(i), 2.0 + 2.0 * xv[i], 1e-15);
    CHECK(calls == 1);  // one node, run once, after both consumers delivered
  }
  {  // only the second output reaches the loss: the first gets zeros
    Tensor x = make();
    auto [a, b] = twice_and_square(x, &calls);
    backward(sum(mul(b, b)), Tensor(), false);
    for (int i = 0; i < 3; ++i) CHECK_NEAR(grad_of(x).item_at(i), 4.0 * xv[i] * xv[i] * xv[i], 1e-14);
  }
  {  // backward from an output directly, and an output used twice; retain_graph then freed
    Tensor x = make();
    auto [a, b] = twice_and_square(x, &calls);
    backward(b, Tensor::full({3}, 1.0, DType::Float64), true);
    for (int i = 0; i < 3; ++i) CHECK_NEAR(grad_of(x).item_at(i), 2.0 * xv[i], 1e-15);
    x.impl().grad.reset();
    backward(add(sum(a), sum(a)));
    for (int i = 0; i < 3; ++i) CHECK_NEAR(grad_of(x).item_at(i), 4.0, 1e-15);
    CHECK_THROWS(backward(sum(b)), std::runtime_error);  // the node was freed
  }
  {  // a wrong-shaped gradient into one output of a multi-output node is refused
    Tensor x = make();
    auto [a, b] = twice_and_square(x, &calls);
    Tensor out = Tensor::zeros({1}, DType::Float64);
    record(out, "bad_consumer", {b}, [](const Tensor&, std::vector<Tensor>& gi) { gi[0] = Tensor::zeros({4}, DType::Float64); });
    CHECK_THROWS(backward(out), std::logic_error);
    CHECK(!x.impl().grad);
  }
}

/// Grad-ready hooks: one call per backward, after the leaf's LAST accumulation (a leaf used
/// several times, as an RNN weight is, has its edges counted in the discovery pass), with the
/// final .grad visible; none for a leaf that got no gradient; callbacks after every hook.
void test_grad_ready_hooks() {
  Tensor w = leaf({3});
  Tensor b = leaf({3});
  Tensor unused = leaf({3});
  std::vector<std::string> events;
  std::vector<double> seen_w;  // w's .grad[0] when its hook ran
  const uint64_t hw = register_grad_ready_hook(w, [&](const Tensor& t) {
    CHECK(t.impl_ptr() == w.impl_ptr());
    seen_w.push_back(grad_of(t).item_at(0));
    events.push_back("w");
  });
  register_grad_ready_hook(b, [&](const Tensor&) {
    events.push_back("b");
    queue_backward_callback([&] { events.push_back("callback"); });
  });
  register_grad_ready_hook(unused, [&](const Tensor&) { events.push_back("unused"); });
  // w used three times along a chain (h = w * (w * (w * x)) + b): three accumulations.
  Tensor x = Tensor::full({3}, 2.0, DType::Float64);
  Tensor h = mul(w, mul(w, mul(w, x)));
  Tensor y = sum(add(h, b));
  Tensor z = mul(unused, Tensor::zeros({3}, DType::Float64));  // built, not part of y's graph
  (void)z;
  backward(y);
  CHECK((seen_w.size()) == (std::size_t{1}));
  const double w0 = w.item_at(0);
  CHECK_NEAR(seen_w[0], 3.0 * w0 * w0 * 2.0, 1e-12);  // d(2 w^3)/dw: the final value
  CHECK_NEAR(grad_of(w).item_at(0), seen_w[0], 1e-15);
  CHECK((events.size()) == (std::size_t{3}));
  CHECK(events.back() == "callback");  // after every hook
  CHECK(std::count(events.begin(), events.end(), "w") == 1);
  CHECK(std::count(events.begin(), events.end(), "b") == 1);
  // A node that passes no gradient to a leaf: that edge still counts, the hook does not run
  // for a pass that delivered nothing.
  {
    events.clear();
    Tensor u = leaf({2});
    int calls = 0;
    register_grad_ready_hook(u, [&](const Tensor&) { ++calls; });
    Tensor out = Tensor::zeros({1}, DType::Float64);
    record(out, "no_grad_for_u", {u}, [](const Tensor&, std::vector<Tensor>&) {});
    backward(out);
    CHECK((calls) == (0));
    backward(sum(mul(u, u)));  // two edges into u from one node
    CHECK((calls) == (1));
    backward(u, Tensor::full({2}, 1.0, DType::Float64));  // backward from the leaf itself
    CHECK((calls) == (2));
  }
  // Removal, errors, and an exception thrown by a hook ending backward.
  CHECK(remove_grad_ready_hook(hw));
  CHECK(!remove_grad_ready_hook(hw));
  seen_w.clear();
  backward(sum(mul(w, x)));
  CHECK(seen_w.empty());
  CHECK_THROWS(register_grad_ready_hook(mul(w, x), [](const Tensor&) {}), std::runtime_error);
  CHECK_THROWS(register_grad_ready_hook(Tensor::zeros({2}, DType::Float64), [](const Tensor&) {}), std::runtime_error);
  CHECK_THROWS(queue_backward_callback([] {}), std::runtime_error);  // no backward running
  Tensor v = leaf({2});
  register_grad_ready_hook(v, [](const Tensor&) { throw std::domain_error("hook failed"); });
  CHECK_THROWS(backward(sum(mul(v, v))), std::domain_error);
  CHECK_THROWS(queue_backward_callback([] {}), std::runtime_error);  // the scope was unwound
}

}  // namespace

int main() {
  manual_seed(7);
  RUN_TEST(test_backward_basic);
  RUN_TEST(test_backward_twice_and_retain);
  RUN_TEST(test_shared_intermediate);
  RUN_TEST(test_deep_graph);
  RUN_TEST(test_no_grad_and_leaf_rules);
  RUN_TEST(test_broadcast_gradients);
  RUN_TEST(test_finite_differences);
  RUN_TEST(test_views_share_storage);
  RUN_TEST(test_thread_pool);
  RUN_TEST(test_block_cache);
  RUN_TEST(test_errors);
  RUN_TEST(test_saved_tensor_versions);
  RUN_TEST(test_node_gradients_checked);
  RUN_TEST(test_multi_output_nodes);
  RUN_TEST(test_grad_ready_hooks);
  return test_util::finish();
}
