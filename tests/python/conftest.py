"""Shared test helpers (tinygrad style: one helper, many one-line tests).

    from conftest import check_op, check_torch

    def test_exp(): check_op(np.exp, ng.exp, [(3, 4)])

``check_op`` compares the forward pass against a NumPy reference in float32 and float64 and
the gradients against finite differences (``ng.autograd.gradcheck``) in float64.
``check_torch`` compares forward and gradients against PyTorch and skips without it.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import pytest

import nablagrad as ng

Shapes = Sequence[Sequence[int]]

# Every SIMD level the kernels have, lowest first; tests run each one this CPU supports.
SIMD_LEVELS = ["portable", "avx2", "avx512"]


@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    """Runs the block with `n` pool threads, restoring the previous count."""
    old = ng.get_num_threads()
    ng.set_num_threads(n)
    try:
        yield
    finally:
        ng.set_num_threads(old)


@contextlib.contextmanager
def avx512_half_rate(half: bool) -> Iterator[None]:
    """Runs the block with the shape rules of a CPU whose AVX-512 runs at half rate (Zen 4) or
    at full rate, restoring the CPU's answer."""
    from nablagrad import _core

    was = _core._avx512_half_rate()
    _core._set_avx512_half_rate(half)
    try:
        yield
    finally:
        _core._set_avx512_half_rate(was)


@contextlib.contextmanager
def simd(level: str) -> Iterator[None]:
    """Runs the block at SIMD level `level`, restoring the previous one."""
    from nablagrad import _core

    old = _core._simd_level()
    _core._set_simd_level(level)
    try:
        yield
    finally:
        _core._set_simd_level(old)


def require_simd(level: str) -> None:
    """Skips the calling test when this CPU lacks `level`."""
    from nablagrad import _core

    if SIMD_LEVELS.index(level) > SIMD_LEVELS.index(_core._cpu_simd_level()):
        pytest.skip(f"this CPU does not support {level}")

# Forward tolerances per dtype (float32 results compared with a float64 NumPy reference).
TOL = {np.float32: dict(rtol=1e-5, atol=1e-6), np.float64: dict(rtol=1e-10, atol=1e-12)}


def make_inputs(shapes: Shapes, dtype: Any = np.float64, low: float = -2.0, high: float = 2.0,
                seed: int = 0, away_from: Optional[Sequence[float]] = None) -> list:
    """Random NumPy arrays of the given shapes, uniform in [low, high).

    ``away_from``: points (kinks, e.g. 0 for relu/abs) that values are pushed at least 0.05 away
    from, so finite differences never straddle a kink.
    """
    rng = np.random.default_rng(seed)
    out = []
    for s in shapes:
        a = rng.uniform(low, high, size=tuple(s))
        for p in away_from or ():
            close = np.abs(a - p) < 0.05
            a = np.where(close, p + np.where(a >= p, 1.0, -1.0) * (0.05 + np.abs(a - p)), a)
        out.append(np.asarray(a, dtype=dtype))
    return out


def assert_close(actual: Any, expected: Any, rtol: float = 1e-5, atol: float = 1e-6, dtype: Any = None) -> None:
    """Compares a Tensor (or array) with a reference; checks the dtype when given."""
    if isinstance(actual, ng.Tensor) and dtype is not None:
        assert np.asarray(actual).dtype == np.dtype(dtype), (np.asarray(actual).dtype, dtype)
    a = np.asarray(actual)
    e = np.asarray(expected)
    assert a.shape == e.shape, f"shape {a.shape} != expected {e.shape}"
    np.testing.assert_allclose(a.astype(np.float64), e.astype(np.float64), rtol=rtol, atol=atol)


def check_op(np_fn: Callable[..., Any], ng_fn: Callable[..., ng.Tensor], shapes: Shapes,
             dtypes: Sequence[Any] = (np.float32, np.float64), grad: bool = True, low: float = -2.0,
             high: float = 2.0, away_from: Optional[Sequence[float]] = None,
             rtol: Optional[float] = None, atol: Optional[float] = None, seed: int = 0) -> None:
    """Forward vs ``np_fn`` (computed in float64) for each dtype, then gradcheck in float64."""
    base = make_inputs(shapes, np.float64, low, high, seed, away_from)
    for dt in dtypes:
        arrays = [b.astype(dt) for b in base]
        expected = np_fn(*[a.astype(np.float64) for a in arrays])
        out = ng_fn(*[ng.tensor(a) for a in arrays])
        tol = dict(TOL[dt])
        if rtol is not None:
            tol["rtol"] = rtol
        if atol is not None:
            tol["atol"] = atol
        assert_close(out, expected, dtype=dt, **tol)
    if grad:
        inputs = [ng.tensor(b, requires_grad=True) for b in base]
        ng.autograd.gradcheck(ng_fn, inputs)


def check_torch(torch_fn: Callable[..., Any], ng_fn: Callable[..., ng.Tensor], shapes: Shapes,
                low: float = -2.0, high: float = 2.0, dtypes: Sequence[Any] = (np.float32, np.float64),
                inputs: Optional[Sequence[np.ndarray]] = None, seed: int = 0,
                rtol: float = 1e-5, atol: float = 1e-6) -> None:
    """Forward and gradients (of sum(out * w) with random w) against PyTorch; skips without it."""
    torch = pytest.importorskip("torch")
    base = list(inputs) if inputs is not None else make_inputs(shapes, np.float64, low, high, seed)
    rng = np.random.default_rng(seed + 1)
    for dt in dtypes:
        arrays = [b.astype(dt) for b in base]
        tt = [torch.tensor(a, requires_grad=True) for a in arrays]
        nt = [ng.tensor(a, requires_grad=True) for a in arrays]
        to = torch_fn(*tt)
        no = ng_fn(*nt)
        assert_close(no, to.detach().numpy(), rtol=rtol, atol=atol, dtype=dt)
        w = rng.standard_normal(tuple(to.shape)).astype(dt)
        (to * torch.tensor(w)).sum().backward()
        (no * ng.tensor(w)).sum().backward()
        for t, n in zip(tt, nt):
            assert n.grad is not None
            assert n.grad.dtype == n.dtype
            assert_close(n.grad, t.grad.numpy(), rtol=rtol * 10, atol=atol * 10)


def check_raises(exc: type, fn: Callable[..., Any], *args: Any, match: Optional[str] = None) -> None:
    with pytest.raises(exc, match=match):
        fn(*args)
