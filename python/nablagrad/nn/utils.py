"""``nablagrad.nn.utils``: gradient clipping (PyTorch's ``clip_grad_norm_`` / ``clip_grad_value_``)."""

from __future__ import annotations

import math
from typing import Iterable, List, Union

from .. import _core
from .._tensor import Tensor, float64, no_grad

__all__ = ["clip_grad_norm_", "clip_grad_value_"]

_Params = Union[Tensor, Iterable[Tensor]]


def _grads(parameters: _Params) -> List[Tensor]:
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    return [g for g in (p.grad for p in parameters) if g is not None]


def clip_grad_norm_(parameters: _Params, max_norm: float, norm_type: float = 2.0,
                    error_if_nonfinite: bool = False) -> Tensor:
    """Scales the gradients in place so that their joint ``norm_type`` norm (all gradients as one
    vector) is at most ``max_norm``; returns the norm before clipping (a 0-d tensor)."""
    grads = _grads(parameters)
    max_norm, norm_type = float(max_norm), float(norm_type)
    out_dtype = grads[0].dtype if grads else _core.dtype.float32
    if not grads:
        return _core.zeros((), out_dtype)
    with no_grad():
        if math.isinf(norm_type):
            total = max(float(g.abs().max()) if g.size else 0.0 for g in grads)
        else:
            acc = 0.0
            for g in grads:
                g64 = g.astype(float64)
                acc += float((g64 * g64).sum()) if norm_type == 2.0 else float((g64.abs() ** norm_type).sum())
            total = acc ** (1.0 / norm_type)
        if error_if_nonfinite and not math.isfinite(total):
            raise RuntimeError(f"The total norm of order {norm_type} for gradients from `parameters` is non-finite, "
                               "so it cannot be clipped. To disable this error and scale the gradients by the "
                               "non-finite norm anyway, set `error_if_nonfinite=False`")
        coef = max_norm / (total + 1e-6)
        if coef < 1.0:
            for g in grads:
                g.copy_(g * coef)
    return _core.full((), total, out_dtype)


def clip_grad_value_(parameters: _Params, clip_value: float) -> None:
    """Clamps every gradient element into [-clip_value, clip_value] in place."""
    v = float(clip_value)
    if v < 0:
        raise ValueError(f"clip_grad_value_: clip_value must be non-negative, got {clip_value}")
    with no_grad():
        for g in _grads(parameters):
            g.copy_(g.clip(-v, v))
