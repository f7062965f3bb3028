"""Scaled dot-product attention, composed from differentiable core ops.

``softmax(q @ k^T / sqrt(d) + mask) @ v`` on ``(N, heads, L, d)`` tensors (any leading batch
dims work). The gradient comes from autograd through matmul, where/add, mul and softmax, so
there is no hand-written backward to keep in sync.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

from . import _core
from ._tensor import Tensor, bool_

__all__ = ["scaled_dot_product_attention"]


def _transpose_last_two(t: Tensor) -> Tensor:
    """t^T over the last two axes (a differentiable view)."""
    return t.transpose(-2, -1)


def _as_mask(mask: Any) -> Tensor:
    if isinstance(mask, Tensor):
        return mask
    arr = np.asarray(mask)
    return _core._copy_from_numpy(np.ascontiguousarray(arr), _core._dtype_of_numpy(arr.dtype))


def scaled_dot_product_attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Optional[Tensor] = None,
                                 is_causal: bool = False) -> Tensor:
    """softmax(q @ k^T / sqrt(d) + mask) @ v.

    q: (..., L, d), k: (..., S, d), v: (..., S, dv); returns (..., L, dv).
    ``attn_mask`` broadcasts to (..., L, S): a bool mask is True where attention IS allowed
    (False positions get -inf before the softmax), a float mask is added to the scores.
    ``is_causal=True`` lets position i attend to positions j <= i only (attn_mask must be None).
    A row with no allowed position gives NaN, as in PyTorch's reference implementation.

        >>> import nablagrad as ng, nablagrad.functional as F
        >>> q = ng.randn(1, 2, 3, 4); out = F.scaled_dot_product_attention(q, q, q, is_causal=True)
        >>> out.shape
        (1, 2, 3, 4)
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"scaled_dot_product_attention: {name} must be a Tensor, got {type(t).__name__}")
        if t.ndim < 2:
            raise ValueError(f"scaled_dot_product_attention: {name} must have at least 2 dims (..., L, d), "
                             f"got shape {t.shape}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"scaled_dot_product_attention: q and k must share the embedding size d, got q {q.shape} "
                         f"and k {k.shape}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"scaled_dot_product_attention: k and v must share the sequence length S, got k {k.shape} "
                         f"and v {v.shape}")
    if is_causal and attn_mask is not None:
        raise ValueError("scaled_dot_product_attention: pass either attn_mask or is_causal=True, not both")
    L, S, d = q.shape[-2], k.shape[-2], q.shape[-1]
    scores = (q @ _transpose_last_two(k)) * (1.0 / math.sqrt(d)) if d > 0 else q @ _transpose_last_two(k)
    if is_causal:
        attn_mask = _as_mask(np.tril(np.ones((L, S), dtype=bool)))
    if attn_mask is not None:
        mask = _as_mask(attn_mask)
        if mask.dtype == bool_:
            scores = _core.where(mask, scores, float("-inf"))
        else:
            scores = scores + mask
    return _core.softmax(scores, -1) @ v
