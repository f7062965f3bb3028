// nablagrad/layers/attention.h - multi-head attention (torch.nn.MultiheadAttention, batch first).
//
//     nn::MultiHeadAttention mha(256, 8);                        // embed_dim 256, 8 heads of 32
//     auto [out, w] = mha.forward(x, x, x);                      // x (N, L, 256): self-attention
//     // out (N, L, 256); w (N, L, L), the attention weights averaged over the heads
//     auto r = mha.forward(q, kv, kv, nn::MultiHeadAttentionForwardOptions()
//                                         .key_padding_mask(pad)  // (N, S) bool, True = padding
//                                         .need_weights(false)
//                                         .is_causal(true));
//
// Sub-layers q_proj, k_proj, v_proj, out_proj (each Linear(E, E)), so named_parameters() are
// q_proj.weight, q_proj.bias, ..., out_proj.bias. The forward is
//     q = q_proj(query), k = k_proj(key), v = v_proj(value)        (N, L|S, E)
//     o = attention over heads h: softmax(q_h k_h^T / sqrt(E/H) + masks) v_h  (one fused op)
//     out = out_proj(o)
// The fused op reads the heads straight out of the (N, L, E) projections (no reshapes or
// copies) and writes o in the layout out_proj wants.
//
// Masks (PyTorch's conventions for this module): a boolean mask is True where attention is
// NOT allowed; a float mask is added to the scores. key_padding_mask (N, S); attn_mask (L, S)
// or (N*num_heads, L, S). is_causal=true applies the causal mask by itself when attn_mask is
// undefined (with an attn_mask it is a hint, as in PyTorch, and the mask is used as given).
// A query with no allowed key gives NaN with need_weights (as PyTorch, which divides 0 by 0
// there) and a zero attention output without (as PyTorch's fused path).
// Dropout on the attention weights in training mode, from the seeded default generator.
// Initialisation as PyTorch: the q/k/v weights U(-a, a) with a = sqrt(6 / (E + 3E)) (PyTorch's
// xavier_uniform_ of its packed (3E, E) in_proj_weight, drawn q rows first), biases 0,
// out_proj weight as any Linear, its bias 0.
#pragma once

#include <cmath>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

#include "../layer.h"
#include "../ops/attention.h"
#include "../tensor_operations.h"
#include "check.h"
#include "init.h"
#include "linear.h"

namespace nablagrad {
namespace nn {

struct MultiHeadAttentionOptions {
  MultiHeadAttentionOptions(int64_t embed_dim, int64_t num_heads) : embed_dim_(embed_dim), num_heads_(num_heads) {}
  NABLAGRAD_ARG(int64_t, embed_dim);
  NABLAGRAD_ARG(int64_t, num_heads);
  /// Biases in the four projections.
  NABLAGRAD_ARG(bool, bias) = true;
  /// Dropout probability on the attention weights (training mode only).
  NABLAGRAD_ARG(double, dropout) = 0.0;
  NABLAGRAD_ARG(DType, dtype) = DType::Float32;
};

/// Per-call arguments of MultiHeadAttention::forward.
struct MultiHeadAttentionForwardOptions {
  /// (N, S): bool (True = padding, ignored) or float (added); undefined: none.
  NABLAGRAD_ARG(Tensor, key_padding_mask);
  /// (L, S) or (N*num_heads, L, S): bool (True = may not attend) or float (added).
  NABLAGRAD_ARG(Tensor, attn_mask);
  /// Return the head-averaged attention weights (N, L, S).
  NABLAGRAD_ARG(bool, need_weights) = true;
  /// Causal mask (query i sees keys j <= i) when attn_mask is undefined.
  NABLAGRAD_ARG(bool, is_causal) = false;
};

class MultiHeadAttention : public Layer {
 public:
  MultiHeadAttention(int64_t embed_dim, int64_t num_heads)
      : MultiHeadAttention(MultiHeadAttentionOptions(embed_dim, num_heads)) {}
  explicit MultiHeadAttention(const MultiHeadAttentionOptions& options) : options_(options) {
    const int64_t E = options.embed_dim(), H = options.num_heads();
    if (E <= 0 || H <= 0 || E % H != 0)
      throw std::invalid_argument("MultiHeadAttention: embed_dim must be a positive multiple of num_heads, got "
                                  "embed_dim=" + std::to_string(E) + ", num_heads=" + std::to_string(H));
    if (!(options.dropout() >= 0.0 && options.dropout() <= 1.0))
      throw std::invalid_argument("MultiHeadAttention: dropout must be in [0, 1], got " +
                                  std::to_string(options.dropout()));
    detail::check_parameter_dtype(options.dtype(), "MultiHeadAttention");
    const LinearOptions lo = LinearOptions(E, E).bias(options.bias()).dtype(options.dtype());
    q_proj = register_module("q_proj", std::make_shared<Linear>(lo));
    k_proj = register_module("k_proj", std::make_shared<Linear>(lo));
    v_proj = register_module("v_proj", std::make_shared<Linear>(lo));
    out_proj = register_module("out_proj", std::make_shared<Linear>(lo));
    reset_parameters();
  }

  /// PyTorch's initialisation (see the top of this file), from the seeded generator.
  void reset_parameters() {
    const double a = std::sqrt(6.0 / static_cast<double>(4 * options_.embed_dim()));
    for (const auto& p : {q_proj, k_proj, v_proj}) {
      init::uniform_(p->weight, -a, a);
      if (p->bias.defined()) init::zeros_(p->bias);
    }
    out_proj->reset_parameters();
    if (out_proj->bias.defined()) init::zeros_(out_proj->bias);
  }

  /// query (N, L, E), key (N, S, E), value (N, S, E) -> (output (N, L, E), weights (N, L, S)
  /// averaged over heads, or an undefined Tensor when need_weights is false).
  std::pair<Tensor, Tensor> forward(const Tensor& query, const Tensor& key, const Tensor& value,
                                    const MultiHeadAttentionForwardOptions& opts) {
    const int64_t E = options_.embed_dim(), H = options_.num_heads();
    const std::string shapes = " (query " + shape_str(query.shape()) + ", key " + shape_str(key.shape()) + ", value " +
                               shape_str(value.shape()) + ")";
    for (const Tensor* t : {&query, &key, &value}) {
      if (!is_floating(t->dtype()))
        throw std::domain_error(std::string("MultiHeadAttention: query, key and value must be float32 or float64, got ") +
                                dtype_name(t->dtype()) + shapes);
      if (t->dim() != 3 || t->shape()[2] != E)
        throw std::invalid_argument("MultiHeadAttention: query, key and value must be (N, length, embed_dim=" +
                                    std::to_string(E) + ")" + shapes);
    }
    const int64_t N = query.shape()[0], L = query.shape()[1], S = key.shape()[1];
    if (key.shape()[0] != N || value.shape()[0] != N || value.shape()[1] != S)
      throw std::invalid_argument("MultiHeadAttention: key and value must be (N, S, E) with the query's N" + shapes);
    const char* op = "MultiHeadAttention";
    nablagrad::detail::AttentionCall call;
    call.heads = H;
    call.dropout_p = is_training() ? options_.dropout() : 0.0;
    call.weights = opts.need_weights() ? nablagrad::detail::AttentionWeights::Averaged : nablagrad::detail::AttentionWeights::None;
    call.empty_rows_nan = opts.need_weights();
    const DType dt = query.dtype();
    if (opts.attn_mask().defined()) {
      const Tensor& am = opts.attn_mask();
      Tensor m = nablagrad::detail::attention_mask_dtype(am, dt, op, "attn_mask");
      if (am.dim() == 2 && am.shape() == Shape{L, S}) {
        m = m.as_strided({N, H, L, S}, {0, 0, m.strides()[0], m.strides()[1]}, m.offset());
      } else if (am.dim() == 3 && am.shape() == Shape{N * H, L, S}) {
        m = m.as_strided({N, H, L, S}, {H * m.strides()[0], m.strides()[0], m.strides()[1], m.strides()[2]}, m.offset());
      } else {
        throw std::invalid_argument("MultiHeadAttention: attn_mask must be (L, S) = (" + std::to_string(L) + ", " +
                                    std::to_string(S) + ") or (N*num_heads, L, S) = (" + std::to_string(N * H) + ", " +
                                    std::to_string(L) + ", " + std::to_string(S) + "), got " + shape_str(am.shape()));
      }
      call.masks.push_back({m, true});
    } else {
      call.causal = opts.is_causal();
    }
    if (opts.key_padding_mask().defined()) {
      const Tensor& kp = opts.key_padding_mask();
      if (kp.shape() != Shape{N, S})
        throw std::invalid_argument("MultiHeadAttention: key_padding_mask must be (N, S) = (" + std::to_string(N) + ", " +
                                    std::to_string(S) + "), got " + shape_str(kp.shape()));
      Tensor m = nablagrad::detail::attention_mask_dtype(kp, dt, op, "key_padding_mask");
      call.masks.push_back({m.as_strided({N, H, L, S}, {m.strides()[0], 0, 0, m.strides()[1]}, m.offset()), true});
    }
    const Tensor q = q_proj->forward(query), k = k_proj->forward(key), v = v_proj->forward(value);
    std::pair<Tensor, Tensor> r = nablagrad::detail::attention_core(q, k, v, call);
    return {out_proj->forward(r.first), r.second};
  }

  /// Self-attention forward(x, x, x) without weights (the Layer interface: one tensor in, one out).
  Tensor forward(const Tensor& x) override {
    return forward(x, x, x, MultiHeadAttentionForwardOptions().need_weights(false)).first;
  }

  std::string name() const override { return "MultiheadAttention"; }
  std::string extra_repr() const override {
    std::ostringstream s;
    s << "embed_dim=" << options_.embed_dim() << ", num_heads=" << options_.num_heads()
      << ", bias=" << repr_bool(options_.bias());
    if (options_.dropout() != 0.0) s << ", dropout=" << options_.dropout();
    return s.str();
  }
  const MultiHeadAttentionOptions& options() const { return options_; }

  std::shared_ptr<Linear> q_proj, k_proj, v_proj, out_proj;

 private:
  MultiHeadAttentionOptions options_;
};

}  // namespace nn
}  // namespace nablagrad
