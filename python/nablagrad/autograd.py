"""Autograd utilities: ``gradcheck`` compares analytic gradients with finite differences."""

from __future__ import annotations

from typing import Any, Callable, Sequence, Tuple

import numpy as np

from . import _core
from ._tensor import Tensor, float64, no_grad

__all__ = ["gradcheck", "numerical_gradient"]


def _scalar_output(fn: Callable[..., Tensor], inputs: Sequence[Tensor], weights: Sequence[np.ndarray]) -> float:
    result: Any = fn(*inputs)
    outs: Sequence[Tensor] = (result,) if isinstance(result, Tensor) else tuple(result)
    total = 0.0
    for o, w in zip(outs, weights):
        total += float(np.sum(np.asarray(o, dtype=np.float64) * w))
    return total


def numerical_gradient(fn: Callable[..., Tensor], inputs: Sequence[Tensor], index: int, eps: float = 1e-6,
                       weights: Sequence[np.ndarray] = ()) -> np.ndarray:
    """Central-difference gradient of sum(weights * fn(*inputs)) w.r.t. inputs[index]."""
    x = inputs[index]
    arr = np.asarray(x.detach())  # writable view of the input's memory (perturbed in place)
    grad = np.zeros(arr.shape, dtype=np.float64)
    flat = arr.reshape(-1)
    with no_grad():
        for i in range(flat.size):
            orig = flat[i]
            flat[i] = orig + eps
            fp = _scalar_output(fn, inputs, weights)
            flat[i] = orig - eps
            fm = _scalar_output(fn, inputs, weights)
            flat[i] = orig
            grad.reshape(-1)[i] = (fp - fm) / (2 * eps)
    return grad


def gradcheck(fn: Callable[..., Tensor], inputs: Sequence[Tensor], eps: float = 1e-6, atol: float = 1e-5,
              rtol: float = 1e-4, raise_exception: bool = True, seed: int = 0) -> bool:
    """Checks the gradients of ``fn`` w.r.t. every input that requires grad.

    Inputs must be float64 contiguous tensors. The outputs are reduced with random weights
    (so every output element's gradient path is exercised), differentiated analytically by
    ``backward`` and numerically by central differences; raises AssertionError naming the
    input and the worst element when they disagree (or returns False).
    """
    inputs = list(inputs)
    for i, x in enumerate(inputs):
        if not isinstance(x, Tensor):
            raise TypeError(f"gradcheck: input {i} is not a Tensor")
        if x.requires_grad and x.dtype != float64:
            raise TypeError(f"gradcheck: input {i} must be float64 for finite differences, got {x.dtype!r}")
        if x.requires_grad and not x.is_contiguous():
            raise ValueError(f"gradcheck: input {i} must be contiguous")
    rng = np.random.default_rng(seed)
    outs: Any = fn(*inputs)
    single = isinstance(outs, Tensor)
    outs_t: Tuple[Tensor, ...] = (outs,) if single else tuple(outs)
    weights = [rng.standard_normal(o.shape) for o in outs_t]
    for x in inputs:
        if x.requires_grad:
            x.grad = None
    total = None
    for o, w in zip(outs_t, weights):
        if not o.requires_grad:
            continue
        term = (o * _core._copy_from_numpy(np.array(w, order="C"), o.dtype)).sum()
        total = term if total is None else total + term
    if total is not None:
        total.backward()
    ok = True
    for i, x in enumerate(inputs):
        if not x.requires_grad:
            continue
        analytic = np.zeros(x.shape) if x.grad is None else np.asarray(x.grad, dtype=np.float64)
        numeric = numerical_gradient(fn, inputs, i, eps=eps, weights=weights)
        if not np.allclose(analytic, numeric, atol=atol, rtol=rtol):
            ok = False
            if raise_exception:
                err = np.abs(analytic - numeric)
                j = np.unravel_index(int(np.argmax(err)), err.shape) if err.size else ()
                raise AssertionError(
                    f"gradcheck: gradient of input {i} (shape {x.shape}) disagrees with finite differences; "
                    f"worst at index {j}: analytic {analytic[j]!r} vs numeric {numeric[j]!r}"
                )
    return ok
