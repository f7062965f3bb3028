// Tests of ops/shape.h: views share storage, reshape falls back to a copy when the layout
// needs it, negative-step slices, the backward of slicing / integer-array indexing
// (repeated indices accumulate) and of concatenate, and the error types.
#include "nablagrad/ops/shape.h"

#include <optional>
#include <vector>

#include "nablagrad/ops/elementwise.h"
#include "nablagrad/ops/reduction.h"
#include "test_util.h"

using namespace nablagrad;

namespace {

/// 0, 1, 2, ... as a float64 tensor of `shape`.
Tensor iota(const Shape& shape, bool requires_grad = false) {
  Tensor t = Tensor::empty(shape, DType::Float64);
  double* p = t.data<double>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = static_cast<double>(i);
  t.impl().requires_grad = requires_grad;
  return t;
}

std::vector<double> values(const Tensor& t) {
  std::vector<double> v;
  for (int64_t i = 0; i < t.numel(); ++i) v.push_back(t.item_at(i));
  return v;
}

bool same_storage(const Tensor& a, const Tensor& b) { return a.impl().storage == b.impl().storage; }

void test_reshape_views_and_copies() {
  Tensor x = iota({2, 3, 4});
  Tensor r = reshape(x, {6, -1});
  CHECK((r.shape() == Shape{6, 4}));
  CHECK(same_storage(r, x));
  // A transposed tensor cannot be flattened as a view: reshape copies.
  Tensor t = transpose(x, 0, 2);  // (4, 3, 2)
  CHECK(same_storage(t, x));
  CHECK((t.strides() == Shape{1, 4, 12}));
  Tensor f = flatten(t);
  CHECK(!same_storage(f, x));
  CHECK(f.item_at(1) == 12.0);  // t[0,0,1] = x[1,0,0]
  // Merging only the leading dims of a permuted tensor is still a view.
  Tensor p = permute(x, {1, 0, 2});  // (3, 2, 4)
  CHECK(same_storage(reshape(p, {3, 8}), x) == false);
  CHECK(same_storage(reshape(transpose(x, 1, 2), {2, 4, 3}), x));
  CHECK((squeeze(unsqueeze(x, -1)).shape() == Shape{2, 3, 4}));
  CHECK_THROWS(reshape(x, {5, -1}), std::invalid_argument);
  CHECK_THROWS(reshape(x, {-1, -1}), std::invalid_argument);
  CHECK_THROWS(permute(x, {0, 0, 1}), std::invalid_argument);
  CHECK_THROWS(transpose(x, 0, 3), std::out_of_range);
  CHECK_THROWS(squeeze(x, {0}), std::invalid_argument);
}

void test_negative_step_slice() {
  Tensor x = iota({4, 6});
  // x[::-2, 1]  -> rows 3, 1 -> values 19, 7
  Tensor v = index(x, {TensorIndex::slice(std::nullopt, std::nullopt, -2), TensorIndex::integer(1)});
  CHECK((v.shape() == Shape{2}));
  CHECK((v.strides() == Shape{-12}));
  CHECK(same_storage(v, x));
  CHECK((values(v) == std::vector<double>{19, 7}));
  CHECK(!v.is_contiguous());
  // A reversed contiguous tensor reshapes as a view with negative strides.
  Tensor rev = index(iota({6}), {TensorIndex::slice(std::nullopt, std::nullopt, -1)});
  Tensor rr = reshape(rev, {2, 3});
  CHECK(same_storage(rr, rev));
  CHECK((values(rr) == std::vector<double>{5, 4, 3, 2, 1, 0}));
  CHECK((values(contiguous(rr)) == std::vector<double>{5, 4, 3, 2, 1, 0}));
  CHECK_THROWS(index(x, {TensorIndex::integer(4)}), std::out_of_range);
  CHECK_THROWS(index(Tensor::scalar(1.0), {TensorIndex::integer(0)}), std::out_of_range);
  CHECK_THROWS(TensorIndex::slice(0, 2, 0), std::invalid_argument);
}

void test_slice_backward() {
  Tensor x = iota({3, 4}, true);
  // y = x[1:, ::-2] -> (2, 2); loss = sum(y * y)
  Tensor y = index(x, {TensorIndex::slice(1), TensorIndex::slice(std::nullopt, std::nullopt, -2)});
  backward(sum(mul(y, y)));
  const Tensor g(x.impl().grad);
  // selected columns 3 and 1 of rows 1, 2: grad = 2x there, 0 elsewhere.
  const std::vector<double> expected = {0, 0, 0, 0, 0, 10, 0, 14, 0, 18, 0, 22};
  CHECK(values(g) == expected);
}

void test_integer_array_repeated_indices() {
  Tensor x = iota({3, 2}, true);
  Tensor idx = Tensor::empty({4}, DType::Int64);
  int64_t* p = idx.data<int64_t>();
  p[0] = 2;
  p[1] = 0;
  p[2] = -1;
  p[3] = 2;
  Tensor y = index(x, {TensorIndex::array(idx)});
  CHECK((y.shape() == Shape{4, 2}));
  CHECK(!same_storage(y, x));
  CHECK((values(y) == std::vector<double>{4, 5, 0, 1, 4, 5, 4, 5}));
  backward(sum(y));
  CHECK((values(Tensor(x.impl().grad)) == std::vector<double>{1, 1, 0, 0, 3, 3}));
  p[0] = 3;
  CHECK_THROWS(index(x, {TensorIndex::array(idx)}), std::out_of_range);
}

void test_concatenate_backward() {
  Tensor a = iota({2, 2}, true), b = iota({2, 3}, true);
  Tensor c = concatenate({a, b}, 1);
  CHECK((c.shape() == Shape{2, 5}));
  CHECK((values(c) == std::vector<double>{0, 1, 0, 1, 2, 2, 3, 3, 4, 5}));
  Tensor w = iota({2, 5});
  backward(sum(mul(c, w)));
  CHECK((values(Tensor(a.impl().grad)) == std::vector<double>{0, 1, 5, 6}));
  CHECK((values(Tensor(b.impl().grad)) == std::vector<double>{2, 3, 4, 7, 8, 9}));
  CHECK_THROWS(concatenate({a, b}, 0), std::invalid_argument);
  CHECK_THROWS(concatenate({}, 0), std::invalid_argument);
  Tensor s = stack({a, a}, -1);
  CHECK((s.shape() == Shape{2, 2, 2}));
  CHECK((values(s) == std::vector<double>{0, 0, 1, 1, 2, 2, 3, 3}));
}

void test_expand_and_setitem() {
  Tensor x = iota({3, 1}, true);
  Tensor e = expand(x, {2, 3, 4});
  CHECK((e.strides() == Shape{0, 1, 0}));
  CHECK(same_storage(e, x));
  backward(sum(e));
  CHECK((values(Tensor(x.impl().grad)) == std::vector<double>{8, 8, 8}));
  CHECK_THROWS(expand(x, {3, 2, 4}), std::invalid_argument);
  // self[:, 1] = 7 on a plain tensor; refused on a leaf requiring grad.
  Tensor t = Tensor::zeros({2, 3}, DType::Float64);
  index_put_(t, {TensorIndex::slice(), TensorIndex::integer(1)}, Tensor::scalar(7.0));
  CHECK((values(t) == std::vector<double>{0, 7, 0, 0, 7, 0}));
  CHECK(t.version() == 1);
  CHECK_THROWS(index_put_(x, {TensorIndex::integer(0)}, Tensor::scalar(1.0)), std::runtime_error);
}

}  // namespace

int main() {
  RUN_TEST(test_reshape_views_and_copies);
  RUN_TEST(test_negative_step_slice);
  RUN_TEST(test_slice_backward);
  RUN_TEST(test_integer_array_repeated_indices);
  RUN_TEST(test_concatenate_backward);
  RUN_TEST(test_expand_and_setitem);
  return test_util::finish();
}
