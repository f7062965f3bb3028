// nablagrad/ops/attention.h - scaled dot-product attention as one fused, differentiable op.
//
//     out = softmax(q k^T * scale + mask) v          scale = 1 / sqrt(d) by default
//
// on (N, heads, L, d) queries and (N, heads, S, d) / (N, heads, S, dv) keys and values (any
// number of leading dims works as long as q, k and v share them). A boolean attn_mask is
// True where attention IS allowed (as PyTorch's function); a float mask is added to the
// scores; either broadcasts to (..., L, S). `is_causal` lets query i see keys j <= i. A
// query with no allowed key gets zero weights and a zero output (as PyTorch 2.x).
//
//     using namespace nablagrad;
//     Tensor q = randn({2, 4, 16, 8}).requires_grad_(), k = randn({2, 4, 16, 8}), v = randn({2, 4, 16, 8});
//     Tensor out = scaled_dot_product_attention(q, k, v, Tensor(), /*is_causal=*/true);
//     auto res = scaled_dot_product_attention(q, k, v, AttentionOptions().need_weights(true));
//     // res.output (2, 4, 16, 8), res.weights (2, 4, 16, 16): the softmax (after dropout)
//
// The op records one graph node (two outputs with need_weights, via record_multi) and keeps
// only what its backward reads: q, k, v, the softmax P (and the dropout keep flags). The
// backward (kernels/attention.h) is the textbook chain written out:
//     dP = dO v^T (+ dW), dX = P o (dP - rowsum(dP o P)), dq = dX k s, dk = dX^T q s, dv = P^T dO.
// Saving P costs N*heads*L*S values; recomputing it from a saved log-sum-exp would save that
// memory at the price of one more GEMM and L*S exps per block in backward. At the sizes this
// library targets P is small (8 MiB in float32 for N=16, 8 heads, L=S=128), so it is kept.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "../autograd.h"
#include "../kernels/attention.h"
#include "../random.h"
#include "../threading.h"
#include "linalg.h"

namespace nablagrad {

/// Options of scaled_dot_product_attention (chainable: AttentionOptions().is_causal(true)).
struct AttentionOptions {
  /// Boolean (True = may attend) or float (added) mask broadcasting to (..., L, S); undefined: none.
  AttentionOptions& attn_mask(const Tensor& m) {
    attn_mask_ = m;
    return *this;
  }
  /// Query i attends to keys j <= i only (attn_mask must then be undefined).
  AttentionOptions& is_causal(bool on) {
    is_causal_ = on;
    return *this;
  }
  /// Dropout on the attention weights (drawn from the seeded default generator).
  AttentionOptions& dropout_p(double p) {
    dropout_p_ = p;
    return *this;
  }
  /// Multiplies q.k; NaN (the default) means 1 / sqrt(d).
  AttentionOptions& scale(double s) {
    scale_ = s;
    return *this;
  }
  /// Also return the attention weights (..., L, S): the softmax, after dropout.
  AttentionOptions& need_weights(bool on) {
    need_weights_ = on;
    return *this;
  }
  const Tensor& attn_mask() const { return attn_mask_; }
  bool is_causal() const { return is_causal_; }
  double dropout_p() const { return dropout_p_; }
  double scale() const { return scale_; }
  bool need_weights() const { return need_weights_; }

 private:
  Tensor attn_mask_;
  bool is_causal_ = false;
  double dropout_p_ = 0.0;
  double scale_ = std::numeric_limits<double>::quiet_NaN();
  bool need_weights_ = false;
};

/// What scaled_dot_product_attention(q, k, v, AttentionOptions) returns.
struct AttentionOutput {
  Tensor output;   // (..., L, dv)
  Tensor weights;  // (..., L, S), undefined unless need_weights
};

namespace detail {

/// A mask seen as (B, H, L, S) (strides 0 along broadcast axes). Boolean masks forbid
/// attention where they hold `masked_value`; float masks have the attention's dtype.
struct AttentionMask {
  Tensor view;
  bool masked_value = false;
};

enum class AttentionWeights { None, PerHead, Averaged };

/// One attention call on working tensors. heads == 0: q (B, H, L, D), k (B, H, S, D),
/// v (B, H, S, Dv), out (B, H, L, Dv), per-head weights (B, H, L, S). heads > 0: q (B, L, H*D),
/// k (B, S, H*D), v (B, S, H*Dv) with the heads interleaved along the last axis (what a
/// projection produces), out (B, L, H*Dv), head-averaged weights (B, L, S).
struct AttentionCall {
  int64_t heads = 0;
  std::vector<AttentionMask> masks;
  bool causal = false;
  double dropout_p = 0.0;
  double scale = std::numeric_limits<double>::quiet_NaN();
  AttentionWeights weights = AttentionWeights::None;
  bool empty_rows_nan = false;
};

/// The (B, H, rows, cols) head view of a working tensor (unit last stride).
template <typename T>
inline kernels::HeadView<T> head_view(const Tensor& t, int64_t heads, int64_t width) {
  kernels::HeadView<T> hv;
  hv.ptr = static_cast<T*>(t.raw_data());
  if (heads == 0) {
    hv.sb = t.strides()[0];
    hv.sh = t.strides()[1];
    hv.sr = t.strides()[2];
  } else {
    hv.sb = t.strides()[0];
    hv.sh = width;
    hv.sr = t.strides()[1];
  }
  return hv;
}

/// A copy with unit stride along the last axis when it has another.
inline Tensor unit_last_stride(const Tensor& t) {
  if (t.dim() == 0 || t.shape().back() <= 1 || t.strides().back() == 1) return t;
  return t.contiguous_data();
}

/// The forward and backward of attention_core, on the working layouts above.
/// q_in, k_in, v_in are the tensors the graph records (the user's); q_w, k_w, v_w the working
/// views of the same data (layouts above); out_shape / w_shape the shapes handed back.
template <typename T>
inline std::pair<Tensor, Tensor> attention_core_typed(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in,
                                                      const Tensor& q_w, const Tensor& k_w, const Tensor& v_w,
                                                      const AttentionCall& call, const Shape& out_shape,
                                                      const Shape& w_shape) {
  const Tensor q = unit_last_stride(q_w.alias()), k = unit_last_stride(k_w.alias()), v = unit_last_stride(v_w.alias());
  const bool split = call.heads > 0;
  const int64_t B = q.shape()[0];
  const int64_t H = split ? call.heads : q.shape()[1];
  const int64_t L = split ? q.shape()[1] : q.shape()[2];
  const int64_t S = split ? k.shape()[1] : k.shape()[2];
  const int64_t D = split ? q.shape()[2] / H : q.shape()[3];
  const int64_t Dv = split ? v.shape()[2] / H : v.shape()[3];
  kernels::AttentionConfig c;
  c.B = B, c.H = H, c.L = L, c.S = S, c.D = D, c.Dv = Dv;
  c.scale = std::isnan(call.scale) ? (D > 0 ? 1.0 / std::sqrt(static_cast<double>(D)) : 1.0) : call.scale;
  c.causal = call.causal;
  c.empty_rows_nan = call.empty_rows_nan;
  c.dropout_p = call.dropout_p;
  std::vector<kernels::MaskView> mviews;
  for (const AttentionMask& m : call.masks) {
    kernels::MaskView mv;
    mv.ptr = m.view.raw_data();
    mv.is_bool = m.view.dtype() == DType::Bool;
    mv.masked_value = m.masked_value;
    mv.sb = m.view.strides()[0], mv.sh = m.view.strides()[1], mv.sr = m.view.strides()[2], mv.sc = m.view.strides()[3];
    mviews.push_back(mv);
  }
  c.masks = mviews.data();
  c.num_masks = static_cast<int>(mviews.size());

  const bool need_grad = any_requires_grad({&q_in, &k_in, &v_in});
  const bool dropout = call.dropout_p > 0.0;
  const DType dt = q.dtype();
  Tensor out = split ? Tensor::empty({B, L, H * Dv}, dt) : Tensor::empty({B, H, L, Dv}, dt);
  Tensor P, W, keep;
  if (need_grad) P = Tensor::empty({B, H, L, S}, dt);
  if (call.weights == AttentionWeights::PerHead) W = (need_grad && !dropout) ? P : Tensor::empty({B, H, L, S}, dt);
  if (call.weights == AttentionWeights::Averaged) W = Tensor::zeros({B, L, S}, dt);
  if (dropout) {  // keep flags drawn in row-major order: reproducible for any thread count
    keep = Tensor::empty({B, H, L, S}, DType::Bool);
    bool* pk = keep.data<bool>();
    Generator& gen = default_generator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    for (int64_t i = 0, n = keep.numel(); i < n; ++i) pk[i] = gen.uniform() >= call.dropout_p;
  }
  const kernels::HeadView<const T> qv = head_view<const T>(q, call.heads, D), kv = head_view<const T>(k, call.heads, D),
                                   vv = head_view<const T>(v, call.heads, Dv);
  const kernels::HeadView<T> ov = head_view<T>(out, call.heads, Dv);
  const int64_t LS = L * S;
  T* pP = P.defined() ? P.data<T>() : nullptr;
  T* pW = W.defined() ? W.data<T>() : nullptr;
  const bool* pK = keep.defined() ? keep.data<bool>() : nullptr;
  const int64_t chunk = kernels::attention_row_chunk<T>(S);
  const int64_t nchunks = (L + chunk - 1) / chunk;
  if (B * H * L > 0) {
    if (call.weights == AttentionWeights::Averaged) {
      // One task per (b, row chunk); heads in order, so the average is summed in a fixed order.
      const T inv_h = T(1) / static_cast<T>(H);
      parallel_chunks(B * nchunks, 1, [&](int64_t, int64_t lo, int64_t hi) {
        for (int64_t t = lo; t < hi; ++t) {
          const int64_t b = t / nchunks, r0 = (t % nchunks) * chunk, r1 = std::min(L, r0 + chunk);
          for (int64_t h = 0; h < H; ++h) {
            const int64_t blk = (b * H + h) * LS;
            kernels::attention_forward_block<T>(c, b, h, r0, r1, qv, kv, vv, ov, pK ? pK + blk : nullptr,
                                                pP ? pP + blk : nullptr, nullptr, pW + b * LS, inv_h);
          }
        }
      });
    } else {
      parallel_chunks(B * H * nchunks, 1, [&](int64_t, int64_t lo, int64_t hi) {
        for (int64_t t = lo; t < hi; ++t) {
          const int64_t bh = t / nchunks, b = bh / H, h = bh % H;
          const int64_t r0 = (t % nchunks) * chunk, r1 = std::min(L, r0 + chunk);
          const int64_t blk = bh * LS;
          kernels::attention_forward_block<T>(c, b, h, r0, r1, qv, kv, vv, ov, pK ? pK + blk : nullptr,
                                              pP ? pP + blk : nullptr, pW ? pW + blk : nullptr, nullptr, T(0));
        }
      });
    }
  }
  const Shape out_work = out.shape(), w_work = W.defined() ? W.shape() : Shape();
  out = out.as_strided(out_shape, contiguous_strides(out_shape), 0);
  if (W.defined()) W = W.as_strided(w_shape, contiguous_strides(w_shape), W.offset());
  if (!need_grad) return {out, W};

  const bool need_q = q_in.requires_grad(), need_k = k_in.requires_grad(), need_v = v_in.requires_grad();
  const Tensor sq = (need_k || need_v || need_q) ? q.alias() : Tensor();
  const Tensor sk = k.alias(), sv = v.alias(), sP = P.alias(), sK = keep.defined() ? keep.alias() : Tensor();
  const AttentionWeights wmode = call.weights;
  // Masks are not read by the backward (P is already zero where they forbid attention).
  c.masks = nullptr;
  c.num_masks = 0;
  const int64_t heads = call.heads;
  const Shape q_shape = q_in.shape(), k_shape = k_in.shape(), v_shape = v_in.shape();
  const Shape qw_shape = q.shape(), kw_shape = k.shape(), vw_shape = v.shape();
  auto run_backward = [=](const Tensor& g_out, const Tensor& g_w, std::vector<Tensor>& gi) {
    const Tensor dO = reshape_raw(g_out, out_work);
    const Tensor dW = g_w.defined() ? reshape_raw(g_w, w_work) : Tensor();
    Tensor dq = need_q ? Tensor::empty(qw_shape, sq.dtype()) : Tensor();
    Tensor dk = need_k ? Tensor::empty(kw_shape, sq.dtype()) : Tensor();
    Tensor dv = need_v ? Tensor::empty(vw_shape, sq.dtype()) : Tensor();
    const kernels::HeadView<const T> qv2 = head_view<const T>(sq, heads, c.D), kv2 = head_view<const T>(sk, heads, c.D),
                                     vv2 = head_view<const T>(sv, heads, c.Dv), gov = head_view<const T>(dO, heads, c.Dv);
    kernels::HeadView<T> dqv, dkv, dvv;
    if (need_q) dqv = head_view<T>(dq, heads, c.D);
    if (need_k) dkv = head_view<T>(dk, heads, c.D);
    if (need_v) dvv = head_view<T>(dv, heads, c.Dv);
    const T* pP2 = sP.data<T>();
    const bool* pK2 = sK.defined() ? sK.data<bool>() : nullptr;
    const T* pdW = dW.defined() ? dW.data<T>() : nullptr;
    const T dw_scale = wmode == AttentionWeights::Averaged ? T(1) / static_cast<T>(c.H) : T(1);
    const int64_t LS2 = c.L * c.S;
    parallel_chunks(c.B * c.H, 1, [&](int64_t, int64_t lo, int64_t hi) {
      for (int64_t bh = lo; bh < hi; ++bh) {
        const int64_t b = bh / c.H, h = bh % c.H;
        const T* dWb = pdW == nullptr ? nullptr
                       : wmode == AttentionWeights::Averaged ? pdW + b * LS2
                                                             : pdW + bh * LS2;
        kernels::attention_backward_block<T>(c, b, h, qv2, kv2, vv2, pP2 + bh * LS2, pK2 ? pK2 + bh * LS2 : nullptr,
                                             gov, dWb, dw_scale, dqv, dkv, dvv);
      }
    });
    if (c.B * c.H == 0 || c.L == 0) {  // nothing ran: the gradients are zero
      if (need_q) dq.fill(0.0);
      if (need_k) dk.fill(0.0);
      if (need_v) dv.fill(0.0);
    }
    if (need_q) gi[0] = reshape_raw(dq, q_shape);
    if (need_k) gi[1] = reshape_raw(dk, k_shape);
    if (need_v) gi[2] = reshape_raw(dv, v_shape);
  };
  if (wmode == AttentionWeights::None) {
    record(out, "scaled_dot_product_attention", {q_in, k_in, v_in},
           [run_backward](const Tensor& g, std::vector<Tensor>& gi) { run_backward(g, Tensor(), gi); },
           {sq, sk, sv, sP, sK});
  } else {
    std::vector<Tensor*> outs{&out, &W};
    record_multi(outs, "scaled_dot_product_attention", {q_in, k_in, v_in},
                 [run_backward](const std::vector<Tensor>& g, std::vector<Tensor>& gi) { run_backward(g[0], g[1], gi); },
                 {sq, sk, sv, sP, sK});
  }
  return {out, W};
}

/// Runs attention on working tensors (see AttentionCall); returns (output, weights or undefined).
/// q, k, v are recorded in the graph; q_w, k_w, v_w (default: the same) are the working views
/// the kernels read; out_shape / w_shape (default: the working shapes) the returned shapes.
inline std::pair<Tensor, Tensor> attention_core(const Tensor& q, const Tensor& k, const Tensor& v,
                                                const AttentionCall& call, const Tensor& q_w = Tensor(),
                                                const Tensor& k_w = Tensor(), const Tensor& v_w = Tensor(),
                                                Shape out_shape = Shape(), Shape w_shape = Shape()) {
  const Tensor& qw = q_w.defined() ? q_w : q;
  const Tensor& kw = k_w.defined() ? k_w : k;
  const Tensor& vw = v_w.defined() ? v_w : v;
  if (out_shape.empty()) {
    if (call.heads > 0) {
      out_shape = {qw.shape()[0], qw.shape()[1], vw.shape()[2]};
      w_shape = {qw.shape()[0], qw.shape()[1], kw.shape()[1]};
    } else {
      out_shape = {qw.shape()[0], qw.shape()[1], qw.shape()[2], vw.shape()[3]};
      w_shape = {qw.shape()[0], qw.shape()[1], qw.shape()[2], kw.shape()[2]};
    }
  }
  return dispatch_float(q.dtype(), "scaled_dot_product_attention", [&](auto tag) {
    using T = typename decltype(tag)::type;
    return attention_core_typed<T>(q, k, v, qw, kw, vw, call, out_shape, w_shape);
  });
}

/// A mask usable by attention_core: boolean as is, float converted to `dtype`; anything else
/// is a TypeError.
inline Tensor attention_mask_dtype(const Tensor& m, DType dtype, const char* op, const char* name) {
  if (m.dtype() == DType::Bool) return m;
  if (!is_floating(m.dtype()))
    throw std::domain_error(std::string(op) + ": " + name + " must be a bool or float tensor, got " +
                            dtype_name(m.dtype()));
  if (m.dtype() == dtype) return m;
  Tensor c = Tensor::empty(m.shape(), dtype);
  Tensor::copy_into(c, m);
  return c;
}

/// `m` broadcast (NumPy rules) to `target` as a strided view; std::invalid_argument naming
/// both shapes when it does not broadcast.
inline Tensor broadcast_view(const Tensor& m, const Shape& target, const char* op, const char* name) {
  const int64_t nd = static_cast<int64_t>(target.size()), md = m.dim();
  bool ok = md <= nd;
  Shape strides(target.size(), 0);
  for (int64_t i = 0; ok && i < md; ++i) {
    const int64_t ti = nd - md + i;
    const int64_t d = m.shape()[i];
    if (d == target[ti]) {
      strides[ti] = d == 1 ? 0 : m.strides()[i];
    } else if (d != 1) {
      ok = false;
    }
  }
  if (!ok)
    throw std::invalid_argument(std::string(op) + ": " + name + " of shape " + shape_str(m.shape()) +
                                " does not broadcast to " + shape_str(target));
  return m.as_strided(target, strides, m.offset());
}

}  // namespace detail

/// Scaled dot-product attention with all options; see the top of this file.
///   q (..., L, d), k (..., S, d), v (..., S, dv): the same leading dims, one float dtype.
///   Returns output (..., L, dv) and, with need_weights, weights (..., L, S).
inline AttentionOutput scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                                                    const AttentionOptions& opts) {
  const char* op = "scaled_dot_product_attention";
  for (const Tensor* t : {&q, &k, &v}) {
    if (!t->defined()) throw std::invalid_argument(std::string(op) + ": q, k and v must be defined tensors");
    if (!is_floating(t->dtype()))
      throw std::domain_error(std::string(op) + ": q, k and v must be float32 or float64, got " +
                              dtype_name(t->dtype()));
  }
  if (q.dtype() != k.dtype() || q.dtype() != v.dtype())
    throw std::domain_error(std::string(op) + ": q, k and v must have one dtype, got " + dtype_name(q.dtype()) +
                            ", " + dtype_name(k.dtype()) + " and " + dtype_name(v.dtype()));
  const std::string shapes = " (q " + shape_str(q.shape()) + ", k " + shape_str(k.shape()) + ", v " +
                             shape_str(v.shape()) + ")";
  if (q.dim() < 2 || k.dim() < 2 || v.dim() < 2)
    throw std::invalid_argument(std::string(op) + ": q, k and v must have at least 2 dims (..., L, d)" + shapes);
  if (q.dim() != k.dim() || q.dim() != v.dim() || !std::equal(q.shape().begin(), q.shape().end() - 2, k.shape().begin()) ||
      !std::equal(q.shape().begin(), q.shape().end() - 2, v.shape().begin()))
    throw std::invalid_argument(std::string(op) + ": q, k and v must have the same leading dims" + shapes);
  if (q.shape().back() != k.shape().back())
    throw std::invalid_argument(std::string(op) + ": q and k must share the embedding size d" + shapes);
  if (k.shape()[k.dim() - 2] != v.shape()[v.dim() - 2])
    throw std::invalid_argument(std::string(op) + ": k and v must share the sequence length S" + shapes);
  if (opts.is_causal() && opts.attn_mask().defined())
    throw std::invalid_argument(std::string(op) + ": pass either attn_mask or is_causal=true, not both");
  if (!(opts.dropout_p() >= 0.0 && opts.dropout_p() <= 1.0))
    throw std::invalid_argument(std::string(op) + ": dropout_p must be in [0, 1], got " + std::to_string(opts.dropout_p()));
  const int64_t L = q.shape()[q.dim() - 2], S = k.shape()[k.dim() - 2], D = q.shape().back(), Dv = v.shape().back();
  const Shape lead(q.shape().begin(), q.shape().end() - 2);
  // Working 4-D shape (B, H, ., .): the leading dims as (1, 1), (1, n0), (n0, n1) or (1, prod).
  int64_t B = 1, H = 1;
  if (lead.size() == 1) H = lead[0];
  if (lead.size() == 2) B = lead[0], H = lead[1];
  if (lead.size() > 2) H = shape_numel(lead);
  auto as4 = [&](const Tensor& t, int64_t rows, int64_t cols) {
    if (lead.size() == 2) return t;
    const Shape s4{B, H, rows, cols};
    if (lead.size() < 2) {
      Shape st4{0, 0, t.strides()[t.dim() - 2], t.strides()[t.dim() - 1]};
      if (lead.size() == 1) st4[1] = t.strides()[0];
      return t.as_strided(s4, st4, t.offset());
    }
    return detail::reshape_raw(t, s4);
  };
  detail::AttentionCall call;
  call.causal = opts.is_causal();
  call.dropout_p = opts.dropout_p();
  call.scale = opts.scale();
  call.weights = opts.need_weights() ? detail::AttentionWeights::PerHead : detail::AttentionWeights::None;
  if (opts.attn_mask().defined()) {
    Tensor m = detail::attention_mask_dtype(opts.attn_mask(), q.dtype(), op, "attn_mask");
    Shape full = lead;
    full.push_back(L);
    full.push_back(S);
    m = detail::broadcast_view(m, full, op, "attn_mask");
    if (lead.size() > 2) m = m.contiguous_data();  // (1, prod) needs the broadcast made real
    call.masks.push_back({as4(m, L, S), false});
  }
  // The graph records the user's tensors; the 4-D working views only feed the kernels.
  Shape out_shape = lead, w_shape = lead;
  out_shape.push_back(L);
  out_shape.push_back(Dv);
  w_shape.push_back(L);
  w_shape.push_back(S);
  auto res = detail::attention_core(q, k, v, call, as4(q, L, D), as4(k, S, D), as4(v, S, Dv), out_shape, w_shape);
  AttentionOutput r;
  r.output = res.first;
  r.weights = res.second;
  return r;
}

/// out = softmax(q k^T / sqrt(d) + mask) v; see AttentionOptions for the arguments.
inline Tensor scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                                           const Tensor& attn_mask = Tensor(), bool is_causal = false,
                                           double dropout_p = 0.0) {
  return scaled_dot_product_attention(q, k, v,
                                      AttentionOptions().attn_mask(attn_mask).is_causal(is_causal).dropout_p(dropout_p))
      .output;
}

}  // namespace nablagrad
