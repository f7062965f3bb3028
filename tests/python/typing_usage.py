"""Typed usage of nablagrad, checked by mypy in test_typing.py (and executed there too).

The ``type: ignore[...]`` lines are deliberate errors: with ``warn_unused_ignores`` mypy fails
if the stubs ever degrade to ``Any`` and stop catching them.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

import nablagrad as ng
import nablagrad.functional as F
from nablagrad import _core


def usage() -> float:
    x: ng.Tensor = ng.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    w = ng.randn(2, 3, dtype=ng.float32)
    shape: Tuple[int, ...] = x.shape
    n: int = x.ndim + x.size + x.numel()
    dt: ng.dtype = x.dtype
    y = (x @ w).relu() * 2.0 + 1 - np.ones((2, 3), np.float32)
    z: ng.Tensor = (y ** 2).mean(axis=1, keepdims=True).sum()
    z.backward()
    g: Optional[ng.Tensor] = x.grad
    x.grad = None
    with ng.no_grad():
        x.copy_(np.zeros((2, 2), np.float32))
    a: np.ndarray = x.numpy()
    b: np.ndarray = np.asarray(x)
    mask: ng.Tensor = x > 0.5
    c = ng.where(mask, x, 0.0).exp().log().sqrt().abs().tanh().sigmoid().clip(0.0, 1.0)
    d = F.gelu(c, approximate="tanh") + F.leaky_relu(c, 0.1) + _core.matmul(c, c)
    e: ng.Tensor = d.max(axis=(0, 1)) - d.min() + d.detach().astype(ng.float64).sum()
    level: str = _core._simd_level()
    ng.manual_seed(0)
    ng.set_num_threads(ng.get_num_threads())
    del shape, n, dt, g, a, b, level
    return float(e.item())


def deliberate_errors(t: ng.Tensor) -> None:
    s: str = t.shape  # type: ignore[assignment]
    k: str = t.numel()  # type: ignore[assignment]
    u: int = t.sum()  # type: ignore[assignment]
    t.sum(keepdims="yes")  # type: ignore[arg-type]
    del s, k, u


if __name__ == "__main__":
    print(usage())
