// Bindings of attention: the fused op (ops/attention.h) as _core.scaled_dot_product_attention
// and the layer (layers/attention.h) as _core.nn.MultiheadAttention.
#include "common.h"

namespace nablagrad {
namespace bindings {

namespace {

std::string type_name(py::handle obj) { return std::string(py::str(py::type::handle_of(obj).attr("__name__"))); }

/// None -> undefined; a Tensor as is; a NumPy array or nested list converted (masks).
Tensor optional_mask(py::handle obj, const char* op, const char* name) {
  if (obj.is_none()) return Tensor();
  if (py::isinstance<Tensor>(obj)) return obj.cast<Tensor>();
  if (py::isinstance<py::array>(obj) || py::isinstance<py::list>(obj) || py::isinstance<py::tuple>(obj))
    return to_tensor(obj);
  throw py::type_error(std::string(op) + ": " + name + " must be a Tensor, an array or None, got " + type_name(obj));
}

py::object optional_tensor(const Tensor& t) { return t.defined() ? py::cast(t) : py::none(); }

py::tuple mha_forward(nn::MultiHeadAttention& layer, const Tensor& query, const Tensor& key, const Tensor& value,
                      py::handle key_padding_mask, py::handle attn_mask, bool need_weights, bool is_causal) {
  const auto opts = nn::MultiHeadAttentionForwardOptions()
                        .key_padding_mask(optional_mask(key_padding_mask, "MultiheadAttention", "key_padding_mask"))
                        .attn_mask(optional_mask(attn_mask, "MultiheadAttention", "attn_mask"))
                        .need_weights(need_weights)
                        .is_causal(is_causal);
  std::pair<Tensor, Tensor> r =
      without_gil_if_large(query.numel(), [&] { return layer.forward(query, key, value, opts); });
  return py::make_tuple(r.first, optional_tensor(r.second));
}

}  // namespace

void bind_attention(py::module_& m) {
  m.def(
      "scaled_dot_product_attention",
      [](const Tensor& q, const Tensor& k, const Tensor& v, py::handle attn_mask, bool is_causal, double dropout_p,
         py::object scale, bool need_weights) -> py::object {
        AttentionOptions opts = AttentionOptions()
                                    .attn_mask(optional_mask(attn_mask, "scaled_dot_product_attention", "attn_mask"))
                                    .is_causal(is_causal)
                                    .dropout_p(dropout_p)
                                    .need_weights(need_weights);
        if (!scale.is_none()) opts.scale(scale.cast<double>());
        AttentionOutput r =
            without_gil_if_large(saturating_add(q.numel(), k.numel()), [&] { return scaled_dot_product_attention(q, k, v, opts); });
        if (need_weights) return py::make_tuple(r.output, r.weights);
        return py::cast(r.output);
      },
      py::arg("q"), py::arg("k"), py::arg("v"), py::arg("attn_mask") = py::none(), py::arg("is_causal") = false,
      py::arg("dropout_p") = 0.0, py::arg("scale") = py::none(), py::arg("need_weights") = false,
      "softmax(q @ k^T * scale + mask) @ v on (..., L, d) tensors, one fused node. A bool attn_mask is True where "
      "attention IS allowed; a float mask is added. With need_weights, returns (output, weights (..., L, S)).");

  py::module_ nnm = m.attr("nn").cast<py::module_>();
  py::class_<nn::MultiHeadAttention, nn::Layer, std::shared_ptr<nn::MultiHeadAttention>>(
      nnm, "MultiheadAttention",
      "Multi-head attention, batch first: q/k/v_proj, fused attention over heads, out_proj.")
      .def(py::init([](int64_t embed_dim, int64_t num_heads, bool bias, double dropout, py::object dtype) {
             return std::make_shared<nn::MultiHeadAttention>(nn::MultiHeadAttentionOptions(embed_dim, num_heads)
                                                                 .bias(bias)
                                                                 .dropout(dropout)
                                                                 .dtype(dtype.is_none() ? DType::Float32 : to_dtype(dtype)));
           }),
           py::arg("embed_dim"), py::arg("num_heads"), py::arg("bias") = true, py::arg("dropout") = 0.0,
           py::arg("dtype") = py::none())
      .def("forward", &mha_forward, py::arg("query"), py::arg("key"), py::arg("value"),
           py::arg("key_padding_mask") = py::none(), py::arg("attn_mask") = py::none(), py::arg("need_weights") = true,
           py::arg("is_causal") = false,
           "(output (N, L, E), weights (N, L, S) averaged over heads, or None). Bool masks: True = may NOT attend.")
      .def("__call__", &mha_forward, py::arg("query"), py::arg("key"), py::arg("value"),
           py::arg("key_padding_mask") = py::none(), py::arg("attn_mask") = py::none(), py::arg("need_weights") = true,
           py::arg("is_causal") = false)
      .def_property_readonly("embed_dim", [](const nn::MultiHeadAttention& l) { return l.options().embed_dim(); })
      .def_property_readonly("num_heads", [](const nn::MultiHeadAttention& l) { return l.options().num_heads(); })
      .def_property_readonly("dropout", [](const nn::MultiHeadAttention& l) { return l.options().dropout(); })
      .def_property_readonly("bias", [](const nn::MultiHeadAttention& l) { return l.options().bias(); })
      .def_property_readonly("q_proj", [](const nn::MultiHeadAttention& l) { return l.q_proj; })
      .def_property_readonly("k_proj", [](const nn::MultiHeadAttention& l) { return l.k_proj; })
      .def_property_readonly("v_proj", [](const nn::MultiHeadAttention& l) { return l.v_proj; })
      .def_property_readonly("out_proj", [](const nn::MultiHeadAttention& l) { return l.out_proj; });
}

}  // namespace bindings
}  // namespace nablagrad
