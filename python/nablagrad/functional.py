"""The functional API (``import nablagrad.functional as F``).

Every function is one call into the C++ core, where the op's forward and backward live.
Images are NHWC, convolution kernels (Q, FH, FW, C), sequences batch first.
"""

from __future__ import annotations

import numbers
import operator
from typing import Optional, Sequence, Tuple, Union

import numpy as np

from . import _core
from ._tensor import Tensor

__all__ = [
    "relu", "leaky_relu", "sigmoid", "tanh", "gelu", "softmax", "log_softmax", "linear",
    "conv2d", "max_pool2d", "avg_pool2d", "dropout", "layer_norm",
    "scaled_dot_product_attention", "mse_loss", "cross_entropy", "nll_loss",
    "binary_cross_entropy_with_logits",
]

_Pair = Union[int, Tuple[int, int]]
_REDUCTIONS = ("mean", "sum", "none")


def _check_tensor(x: object, name: str, fn: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{fn}: {name} must be a Tensor, got {type(x).__name__}")


def _check_reduction(reduction: str, fn: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{fn}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def relu(x: Tensor) -> Tensor:
    """max(x, 0) elementwise."""
    return _core.relu(x)


def leaky_relu(x: Tensor, slope: float = 0.01) -> Tensor:
    """x where x > 0, else slope * x."""
    return _core.leaky_relu(x, float(slope))


def sigmoid(x: Tensor) -> Tensor:
    """1 / (1 + exp(-x)), computed stably."""
    return _core.sigmoid(x)


def tanh(x: Tensor) -> Tensor:
    return _core.tanh(x)


def gelu(x: Tensor, approximate: str = "none") -> Tensor:
    """x * Phi(x) with the exact erf form (approximate="none") or the tanh approximation."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return _core.gelu(x, approximate == "tanh")


def softmax(x: Tensor, axis: int = -1) -> Tensor:
    """exp(x) / sum(exp(x)) along ``axis`` (max-shifted, so large inputs do not overflow)."""
    return _core.softmax(x, operator.index(axis))


def log_softmax(x: Tensor, axis: int = -1) -> Tensor:
    """x - logsumexp(x) along ``axis``, computed stably."""
    return _core.log_softmax(x, operator.index(axis))


def linear(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """x @ weight.T + bias, with weight (out_features, in_features)."""
    return _core.linear(x, weight, bias)


def _is_int(v: object) -> bool:
    """Python or NumPy integer (not bool)."""
    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))


_INT64_MAX = 2**63 - 1


def _pair(v: object, name: str, fn: str) -> Tuple[int, int]:
    if _is_int(v):
        pair = (int(v), int(v))  # type: ignore[call-overload]
    elif isinstance(v, (tuple, list)) and len(v) == 2 and all(_is_int(e) for e in v):
        pair = (int(v[0]), int(v[1]))
    else:
        raise TypeError(f"{fn}: {name} must be an int or a pair of ints, got {v!r}")
    if any(abs(e) > _INT64_MAX for e in pair):  # the C++ side counts in int64
        raise ValueError(f"{fn}: {name} {pair} is out of range (sizes must fit in int64)")
    return pair


def conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, stride: _Pair = 1,
           padding: Union[_Pair, str] = 0) -> Tensor:
    """2-D convolution: x (N, H, W, C), weight (Q, FH, FW, C), bias (Q,) -> (N, Ho, Wo, Q).

    ``padding="same"`` (stride 1 only) pads so that Ho = H and Wo = W; with an even kernel the
    extra row/column goes at the bottom/right, as in PyTorch.
    """
    _check_tensor(x, "x", "conv2d")
    _check_tensor(weight, "weight", "conv2d")
    sh, sw = _pair(stride, "stride", "conv2d")
    if isinstance(padding, str):
        if padding == "valid":
            pads = (0, 0, 0, 0)
        elif padding == "same":
            if (sh, sw) != (1, 1):
                raise ValueError(f"conv2d: padding='same' requires stride 1, got stride {(sh, sw)}")
            if weight.ndim != 4:
                raise ValueError(f"conv2d: weight must be 4-D (Q, FH, FW, C), got shape {weight.shape}")
            fh, fw = weight.shape[1], weight.shape[2]
            pads = ((fh - 1) // 2, fh - 1 - (fh - 1) // 2, (fw - 1) // 2, fw - 1 - (fw - 1) // 2)
        else:
            raise ValueError(f"conv2d: padding must be an int, a pair, 'same' or 'valid', got {padding!r}")
    else:
        ph, pw = _pair(padding, "padding", "conv2d")
        pads = (ph, ph, pw, pw)
    return _core.conv2d(x, weight, bias, sh, sw, *pads)


def max_pool2d(x: Tensor, kernel_size: _Pair, stride: Optional[_Pair] = None, padding: _Pair = 0) -> Tensor:
    """Max over (kh, kw) windows of an NHWC tensor; stride defaults to the kernel size."""
    kh, kw = _pair(kernel_size, "kernel_size", "max_pool2d")
    sh, sw = _pair(stride, "stride", "max_pool2d") if stride is not None else (kh, kw)
    ph, pw = _pair(padding, "padding", "max_pool2d")
    return _core.max_pool2d(x, kh, kw, sh, sw, ph, pw)


def avg_pool2d(x: Tensor, kernel_size: _Pair, stride: Optional[_Pair] = None, padding: _Pair = 0,
               count_include_pad: bool = True) -> Tensor:
    """Mean over (kh, kw) windows of an NHWC tensor (padding counted when count_include_pad)."""
    kh, kw = _pair(kernel_size, "kernel_size", "avg_pool2d")
    sh, sw = _pair(stride, "stride", "avg_pool2d") if stride is not None else (kh, kw)
    ph, pw = _pair(padding, "padding", "avg_pool2d")
    return _core.avg_pool2d(x, kh, kw, sh, sw, ph, pw, bool(count_include_pad))


def dropout(x: Tensor, p: float = 0.5, training: bool = True) -> Tensor:
    """Zeroes each element with probability p and scales the rest by 1/(1-p) when training."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: p must be in [0, 1], got {p}")
    if not training or p == 0.0:
        return x
    return _core.dropout(x, float(p))


def layer_norm(x: Tensor, normalized_shape: Union[int, Sequence[int]], weight: Optional[Tensor] = None,
               bias: Optional[Tensor] = None, eps: float = 1e-5) -> Tensor:
    """Normalises over the trailing ``normalized_shape`` dims, then scales and shifts."""
    if isinstance(normalized_shape, int):
        normalized_shape = (normalized_shape,)
    if isinstance(normalized_shape, str):
        raise TypeError(f"layer_norm: normalized_shape must be an int or a sequence of ints, got {normalized_shape!r}")
    return _core.layer_norm(x, [operator.index(d) for d in normalized_shape], weight, bias, float(eps))


def scaled_dot_product_attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Optional[Tensor] = None,
                                 is_causal: bool = False, dropout_p: float = 0.0,
                                 scale: Optional[float] = None) -> Tensor:
    """softmax(q @ k^T * scale + mask) @ v on (N, heads, L, d) tensors, one fused C++ op.

    q (..., L, d), k (..., S, d), v (..., S, dv) share their leading dims; returns (..., L, dv).
    A boolean ``attn_mask`` is True where attention IS allowed; a float mask is added to the
    scores; either broadcasts to (..., L, S). ``is_causal=True`` lets query i see keys j <= i.
    ``scale`` defaults to 1/sqrt(d); ``dropout_p`` drops attention weights (seeded generator).
    A query with no allowed key gets a zero output, as in PyTorch.

        >>> import nablagrad as ng, nablagrad.functional as F
        >>> q = ng.randn(1, 2, 3, 4); F.scaled_dot_product_attention(q, q, q, is_causal=True).shape
        (1, 2, 3, 4)
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        _check_tensor(t, name, "scaled_dot_product_attention")
    if not 0.0 <= dropout_p <= 1.0:
        raise ValueError(f"scaled_dot_product_attention: dropout_p must be in [0, 1], got {dropout_p}")
    out: Tensor = _core.scaled_dot_product_attention(q, k, v, attn_mask, bool(is_causal), float(dropout_p),
                                                     None if scale is None else float(scale))
    return out


def mse_loss(pred: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """Mean squared error; pred and target must have the same shape."""
    _check_reduction(reduction, "mse_loss")
    return _core.mse_loss(pred, target, reduction)


def cross_entropy(logits: Tensor, labels: Tensor, reduction: str = "mean") -> Tensor:
    """Softmax cross-entropy from logits (N, K) and int64 labels (N,), fused and stable."""
    _check_reduction(reduction, "cross_entropy")
    return _core.cross_entropy(logits, labels, reduction)


def nll_loss(log_probs: Tensor, labels: Tensor, reduction: str = "mean") -> Tensor:
    """Negative log-likelihood of int64 labels (N,) under log-probabilities (N, K)."""
    _check_reduction(reduction, "nll_loss")
    return _core.nll_loss(log_probs, labels, reduction)


def binary_cross_entropy_with_logits(logits: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """Sigmoid + binary cross-entropy in one stable op; target has the logits' shape."""
    _check_reduction(reduction, "binary_cross_entropy_with_logits")
    return _core.binary_cross_entropy_with_logits(logits, target, reduction)
