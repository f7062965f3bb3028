// nablagrad/ops/linalg.h - matmul (NumPy semantics, batch broadcasting) and linear.
// The heavy lifting is kernels::gemm, which takes strided operands: transposes in the
// backward pass are stride swaps, never copies.
#pragma once

#include "../autograd.h"
#include "../kernels/gemm.h"
#include "reduction.h"

namespace nablagrad {

namespace detail {

/// View with the last two axes swapped (no copy).
inline Tensor swap_last_two(const Tensor& t) {
  Shape s = t.shape(), st = t.strides();
  std::swap(s[s.size() - 1], s[s.size() - 2]);
  std::swap(st[st.size() - 1], st[st.size() - 2]);
  return t.as_strided(s, st, t.offset());
}

/// C = A @ B for strided views A (..., M, K) and B (..., K, N) whose batch dims broadcast.
/// Returns a contiguous (batch..., M, N) tensor. Raw: no graph.
inline Tensor bmm_raw(const Tensor& a, const Tensor& b) {
  const int64_t M = a.shape()[a.dim() - 2], K = a.shape()[a.dim() - 1], N = b.shape()[b.dim() - 1];
  const Shape a_batch(a.shape().begin(), a.shape().end() - 2), b_batch(b.shape().begin(), b.shape().end() - 2);
  const Shape batch = broadcast_shapes(a_batch, b_batch, "matmul");
  Shape out_shape = batch;
  out_shape.push_back(M);
  out_shape.push_back(N);
  shape_numel(out_shape, [&] { return "matmul: shapes " + shape_str(a.shape()) + " and " + shape_str(b.shape()); });
  Tensor out = Tensor::empty(out_shape, a.dtype());
  const int64_t nb = shape_numel(batch);
  // Operands may be stride-0 broadcast views of any logical size: a product needing more
  // multiply-adds than int64 counts (it could never finish) is refused, not wrapped.
  checked_product({nb, M, N, K}, [&] {
    return "matmul: shapes " + shape_str(a.shape()) + " and " + shape_str(b.shape()) +
           " need too many multiply-adds (batch * M * N * K)";
  });
  // Batch strides of each operand, broadcast (0 along broadcast axes).
  auto batch_strides = [&](const Tensor& t, const Shape& tb) {
    Shape st(batch.size(), 0);
    for (std::size_t i = 0; i < tb.size(); ++i)
      if (tb[i] != 1) st[batch.size() - tb.size() + i] = t.strides()[i];
    return st;
  };
  const Shape sa = batch_strides(a, a_batch), sb = batch_strides(b, b_batch);
  const int64_t a_rs = a.strides()[a.dim() - 2], a_cs = a.strides()[a.dim() - 1];
  const int64_t b_rs = b.strides()[b.dim() - 2], b_cs = b.strides()[b.dim() - 1];
  dispatch_float(a.dtype(), "matmul", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* pa = a.data<T>();
    const T* pb = b.data<T>();
    T* pc = out.data<T>();
    for (int64_t i = 0; i < nb; ++i) {
      int64_t oa = 0, ob = 0, rem = i;
      for (std::size_t d = batch.size(); d-- > 0;) {
        const int64_t idx = rem % batch[d];
        rem /= batch[d];
        oa += idx * sa[d];
        ob += idx * sb[d];
      }
      kernels::gemm<T>(M, N, K, pa + oa, a_rs, a_cs, pb + ob, b_rs, b_cs, pc + i * M * N, N, false);
    }
  });
  return out;
}

inline Tensor reshape_raw(const Tensor& t, const Shape& shape) {
  const Tensor c = t.contiguous_data();
  return c.as_strided(shape, contiguous_strides(shape), c.offset());
}

}  // namespace detail

/// Matrix product with NumPy's rules: 1-D operands are promoted (and the added axis removed),
/// batch dimensions broadcast. Float dtypes; both operands must have the same dtype.
inline Tensor matmul(const Tensor& a_in, const Tensor& b_in) {
  if (a_in.dim() == 0 || b_in.dim() == 0)
    throw std::invalid_argument("matmul: both operands must have at least one dimension, got shapes " +
                                shape_str(a_in.shape()) + " and " + shape_str(b_in.shape()));
  if (!is_floating(a_in.dtype()) || !is_floating(b_in.dtype()))
    throw std::domain_error(std::string("matmul: expected float tensors, got ") + dtype_name(a_in.dtype()) + " and " +
                            dtype_name(b_in.dtype()));
  if (a_in.dtype() != b_in.dtype())
    throw std::domain_error(std::string("matmul: dtypes differ (") + dtype_name(a_in.dtype()) + " and " +
                            dtype_name(b_in.dtype()) + "); convert one with astype");
  const int64_t ka = a_in.shape().back();
  const int64_t kb = b_in.dim() == 1 ? b_in.shape()[0] : b_in.shape()[b_in.dim() - 2];
  if (ka != kb)
    throw std::invalid_argument("matmul: shapes " + shape_str(a_in.shape()) + " and " + shape_str(b_in.shape()) +
                                " are not aligned (" + std::to_string(ka) + " != " + std::to_string(kb) + ")");
  // 1-D promotion as views.
  Tensor a = a_in, b = b_in;
  if (a.dim() == 1) a = a.as_strided({1, a.shape()[0]}, {0, a.strides()[0]}, a.offset());
  if (b.dim() == 1) b = b.as_strided({b.shape()[0], 1}, {b.strides()[0], 0}, b.offset());
  Shape result_shape;  // final shape, with promoted axes removed
  {
    Shape ab(a.shape().begin(), a.shape().end() - 2), bb(b.shape().begin(), b.shape().end() - 2);
    result_shape = broadcast_shapes(ab, bb, "matmul");
    if (a_in.dim() > 1) result_shape.push_back(a.shape()[a.dim() - 2]);
    if (b_in.dim() > 1) result_shape.push_back(b.shape().back());
  }
  // A batched a times a 2-D b folds the batch into the rows: one GEMM, and the weight
  // gradient of a linear layer becomes one GEMM too.
  const bool fold = b.dim() == 2 && a.dim() > 2;
  // Rows = product of a's leading dims (not numel / K, which divides by zero when K == 0).
  const Tensor a2 = fold ? detail::reshape_raw(a, {shape_numel(Shape(a.shape().begin(), a.shape().end() - 1)), ka}) : a;
  Tensor out = detail::bmm_raw(a2, b);
  out = out.as_strided(result_shape, contiguous_strides(result_shape), out.offset());
  if (any_requires_grad({&a_in, &b_in})) {
    // dA needs B and dB needs A: keep only what the inputs requiring grad will read.
    const bool need_a = a_in.requires_grad(), need_b = b_in.requires_grad();
    const Tensor sa = need_b ? a2.alias() : Tensor(), sb = need_a ? b.alias() : Tensor();
    const Shape a2_shape = a2.shape(), b2_shape = b.shape(), shape_a = a_in.shape(), shape_b = b_in.shape();
    record(out, "matmul", {a_in, b_in},
           [sa, sb, a2_shape, b2_shape, shape_a, shape_b, need_a, need_b](const Tensor& g_in, std::vector<Tensor>& gi) {
      // g viewed with the shape of bmm's output (promoted axes back in).
      Shape gs = broadcast_shapes(Shape(a2_shape.begin(), a2_shape.end() - 2), Shape(b2_shape.begin(), b2_shape.end() - 2),
                                  "matmul");
      gs.push_back(a2_shape[a2_shape.size() - 2]);
      gs.push_back(b2_shape.back());
      const Tensor g = detail::reshape_raw(g_in, gs);
      // dA = dC @ B^T, dB = A^T @ dC; each reduced over the batch axes it was broadcast along.
      if (need_a) gi[0] = detail::reshape_raw(sum_to(detail::bmm_raw(g, detail::swap_last_two(sb)), a2_shape), shape_a);
      if (need_b) gi[1] = detail::reshape_raw(sum_to(detail::bmm_raw(detail::swap_last_two(sa), g), b2_shape), shape_b);
    }, {sa, sb});
  }
  return out;
}

}  // namespace nablagrad
