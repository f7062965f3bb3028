"""``MultiheadAttention`` (batch first), a thin wrapper over the C++ layer
``_core.nn.MultiheadAttention`` (cpp/include/nablagrad/layers/attention.h): the projections
``q_proj``, ``k_proj``, ``v_proj``, ``out_proj`` (each ``Linear(E, E)``) and one fused attention
op between them, whose backward runs in C++::

    mha = nn.MultiheadAttention(256, 8)
    out, w = mha(x, x, x)                         # x (N, L, 256): out (N, L, 256), w (N, L, L)
    out, _ = mha(q, kv, kv, key_padding_mask=pad, need_weights=False)

Masks follow PyTorch's module: a boolean mask is True where attention is NOT allowed, a float
mask is added to the scores; ``attn_mask`` is (L, S) or (N*num_heads, L, S), ``key_padding_mask``
(N, S). ``is_causal=True`` applies the causal mask itself when ``attn_mask`` is None.

A PyTorch ``MultiheadAttention(E, H, batch_first=True)`` maps onto it by splitting its packed
``in_proj_weight`` (3E, E) and ``in_proj_bias`` (3E,) into the q, k, v thirds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, Tuple

from .. import _core
from .._tensor import Tensor, _resolve_dtype
from .layers import Linear, _CoreModule, _sizes

__all__ = ["MultiheadAttention"]


def _wrap_linear(layer: Any) -> Linear:
    """An ``nn.Linear`` around an existing C++ Linear (a sub-layer of the C++ attention layer)."""
    m = Linear.__new__(Linear)
    _CoreModule.__init__(m, layer)
    m.in_features, m.out_features, m.activation = int(layer.in_features), int(layer.out_features), None
    if layer.bias is None:
        m._parameters["bias"] = None
    return m


class MultiheadAttention(_CoreModule):
    """Multi-head attention over (N, L, E) queries and (N, S, E) keys and values.

    ``forward(query, key, value, key_padding_mask=None, attn_mask=None, need_weights=True,
    is_causal=False)`` returns ``(out (N, L, E), weights (N, L, S) averaged over heads, or None)``.
    Dropout (``dropout``) applies to the attention weights in training mode.
    """

    def __init__(self, embed_dim: int, num_heads: int, bias: bool = True, dropout: float = 0.0,
                 dtype: Any = None) -> None:
        _sizes("MultiheadAttention", embed_dim=embed_dim, num_heads=num_heads)
        super().__init__(_core.nn.MultiheadAttention(embed_dim, num_heads, bias=bias, dropout=dropout,
                                                     dtype=None if dtype is None else _resolve_dtype(dtype)))
        layer = self._layer
        self.q_proj = _wrap_linear(layer.q_proj)
        self.k_proj = _wrap_linear(layer.k_proj)
        self.v_proj = _wrap_linear(layer.v_proj)
        self.out_proj = _wrap_linear(layer.out_proj)

    @property
    def embed_dim(self) -> int:
        return int(self._layer.embed_dim)

    @property
    def num_heads(self) -> int:
        return int(self._layer.num_heads)

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def dropout(self) -> float:
        return float(self._layer.dropout)

    @property
    def batch_first(self) -> bool:
        return True

    def forward(self, query: Tensor, key: Tensor, value: Tensor,  # type: ignore[override]
                key_padding_mask: Optional[Tensor] = None,
                attn_mask: Optional[Tensor] = None, need_weights: bool = True,
                is_causal: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
        out, weights = self._layer.forward(query, key, value, key_padding_mask, attn_mask, bool(need_weights),
                                           bool(is_causal))
        return out, weights

    if TYPE_CHECKING:  # calling the layer is typed as its forward
        __call__ = forward  # type: ignore[assignment]

    def extra_repr(self) -> str:
        return str(self._layer.extra_repr())
