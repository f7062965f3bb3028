"""Winograd convolution (kernels/conv2d/winograd.h) through ng.backends.conv_algorithm:
"winograd" vs "direct" vs a NumPy float64 oracle, forward and all gradients, float32 and
float64, 3x3 (F(2x2,3x3), F(4x4,3x3)) and 5x5 (F(2x2,5x5)) kernels, odd sizes, partial edge
tiles, paddings 0..3 for 3x3 and 0..5 for 5x5 (asymmetric too), every SIMD level,
1/2/3 threads bitwise; which kernel "auto" / "direct" / "winograd" pick; PyTorch (optional).

docs/convolution.md ("Winograd") has the transforms, the accuracy table these tolerances come
from, and when "auto" picks Winograd.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Tuple

import numpy as np
import pytest

import nablagrad as ng
from nablagrad import _core
from conftest import SIMD_LEVELS, avx512_half_rate, require_simd, simd, threads


@contextlib.contextmanager
def algorithm(name: str) -> Iterator[None]:
    old = ng.backends.conv_algorithm
    ng.backends.conv_algorithm = name
    try:
        yield
    finally:
        ng.backends.conv_algorithm = old


Pads = Tuple[int, int, int, int]


def oracle(x: np.ndarray, w: np.ndarray, b: Optional[np.ndarray], pads: Pads, r: np.ndarray):
    """y = conv(x, w) + b (stride 1, NHWC) and the gradients of sum(y * r), in float64."""
    pt, pb, pl, pr = pads
    x, w, r = (a.astype(np.float64) for a in (x, w, r))
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    q, fh, fw, _ = w.shape
    ho, wo = xp.shape[1] - fh + 1, xp.shape[2] - fw + 1
    y = np.zeros((x.shape[0], ho, wo, q))
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    for a in range(fh):
        for d in range(fw):
            win = xp[:, a:a + ho, d:d + wo, :]
            y += np.einsum("nijc,qc->nijq", win, w[:, a, d, :])
            dw[:, a, d, :] = np.einsum("nijq,nijc->qc", r, win)
            dxp[:, a:a + ho, d:d + wo, :] += np.einsum("nijq,qc->nijc", r, w[:, a, d, :])
    if b is not None:
        y += b.astype(np.float64)
    dx = dxp[:, pt:pt + x.shape[1], pl:pl + x.shape[2], :]
    return y, dx, dw, r.sum(axis=(0, 1, 2))


def run(x: np.ndarray, w: np.ndarray, b: Optional[np.ndarray], pads: Pads, r: np.ndarray):
    """nablagrad forward and the gradients of sum(y * r), as NumPy arrays."""
    nx, nw = ng.tensor(x, requires_grad=True), ng.tensor(w, requires_grad=True)
    nb = ng.tensor(b, requires_grad=True) if b is not None else None
    y = _core.conv2d(nx, nw, nb, 1, 1, *pads)
    (y * ng.tensor(r)).sum().backward()
    return (y.numpy(), nx.grad.numpy(), nw.grad.numpy(), nb.grad.numpy() if nb is not None else None)


def rel_err(a: np.ndarray, ref: np.ndarray) -> float:
    """max |a - ref| / max |ref|: the error relative to the output's scale."""
    return float(np.max(np.abs(a.astype(np.float64) - ref)) / max(np.max(np.abs(ref)), 1e-300))


# Error bounds relative to the output's scale: ~10x above the measured worst case of the
# accuracy table (F(4x4,3x3) and F(2x2,5x5) in float32 ~1e-5, F(2x2,3x3) ~3e-7; float64 ~1e-14).
WINO_TOL = {np.float32: 1e-4, np.float64: 1e-12}
DIRECT_TOL = {np.float32: 1e-5, np.float64: 1e-12}

# (N, H, W, C, Q, (pt, pb, pl, pr)): odd sizes, partial edge tiles of both F(2x2) and F(4x4),
# channel counts off the vector width, paddings 0..3, asymmetric padding.
SHAPES = [
    (2, 7, 9, 16, 17, (1, 1, 1, 1)),
    (1, 18, 17, 19, 24, (0, 0, 0, 0)),
    (1, 16, 20, 24, 16, (2, 2, 2, 2)),
    (2, 17, 16, 33, 20, (2, 0, 1, 3)),
    (1, 5, 6, 3, 5, (1, 1, 1, 1)),  # too few channels for "auto", still forced by "winograd"
    # 5x5 kernels (F(2x2,5x5)), the seventh field
    (2, 9, 11, 16, 33, (2, 2, 2, 2), 5),
    (1, 12, 7, 35, 18, (4, 0, 1, 5), 5),  # padding past F-1 on two sides
    (1, 5, 5, 2, 3, (0, 0, 0, 0), 5),     # one output
]


def data(shape, dtype, seed: int = 0):
    n, h, w_, c, q, pads = shape[:6]
    k = shape[6] if len(shape) > 6 else 3
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, h, w_, c)).astype(dtype)
    w = (rng.standard_normal((q, k, k, c)) / np.sqrt(k * k * c)).astype(dtype)
    b = rng.standard_normal(q).astype(dtype)
    ho, wo = h + pads[0] + pads[1] - (k - 1), w_ + pads[2] + pads[3] - (k - 1)
    r = rng.standard_normal((n, ho, wo, q)).astype(dtype)
    return x, w, b, pads, r


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_winograd_and_direct_match_oracle(shape, dtype):
    x, w, b, pads, r = data(shape, dtype)
    ref = oracle(x, w, b, pads, r)
    for name, tol in (("winograd", WINO_TOL[dtype]), ("direct", DIRECT_TOL[dtype])):
        with algorithm(name):
            choice = _core._conv_algorithm_for(x.shape, w.shape, 1, 1, *pads, dtype=np.dtype(dtype).name)
            assert (choice["forward"] == "winograd") == (name == "winograd"), choice
            assert (choice["backward_input"] == "winograd") == (name == "winograd"), choice
            assert (choice["backward_weight"] == "winograd") == (name == "winograd"), choice
            got = run(x, w, b, pads, r)
        for what, g, e in zip(("y", "dx", "dw", "db"), got, ref):
            assert g.dtype == dtype
            err = rel_err(g, e)
            assert err <= tol, f"{name} {what}: relative error {err:.3g} > {tol:g}"


@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("level", SIMD_LEVELS)
def test_every_simd_level(level, k):
    require_simd(level)
    x, w, b, pads, r = data((1, 13, 11, 21, 18, (1, 2, 0, 1), k), np.float32, seed=3)
    ref = oracle(x, w, b, pads, r)
    with simd(level), algorithm("winograd"):
        got = run(x, w, b, pads, r)
    for g, e in zip(got, ref):
        assert rel_err(g, e) <= WINO_TOL[np.float32]


@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_thread_counts_bitwise(dtype, k):
    # 2 x 33 x 35 with F(4x4) or F(2x2) tiles: several tile blocks, so threads split the work.
    x, w, b, pads, r = data((2, 33, 35, 24, 24, (k // 2,) * 4, k), dtype, seed=5)
    with algorithm("winograd"):
        with threads(1):
            first = run(x, w, b, pads, r)
        for n in (2, 3):
            with threads(n):
                again = run(x, w, b, pads, r)
            for a, c in zip(first, again):
                assert a.tobytes() == c.tobytes(), f"{n} threads differ from 1"


def test_half_rate_avx512_rule() -> None:
    # Where AVX-512 runs at half rate (Zen 4's 256-bit units), 5x5 16 -> 16 runs its forward and
    # dX by Winograd at AVX-512 also on rows that fill the direct kernels' tiles; the kernel
    # gradient keeps its rule. Full rate: the direct kernels there. The answer is in the result
    # too: the forward equals the direct one within Winograd's tolerance.
    def pick(n: int, hw: int) -> dict:
        return _core._conv_algorithm_for((n, hw, hw, 16), (16, 5, 5, 16), 1, 1, 2, 2, 2, 2)

    if _core._cpu_simd_level() != "avx512":
        pytest.skip("the CPU has no AVX-512")
    with simd("avx512"), algorithm("auto"):
        for n, hw in ((4, 96), (8, 48), (4, 64)):
            with avx512_half_rate(True):
                half = pick(n, hw)
            with avx512_half_rate(False):
                full = pick(n, hw)
            assert half["forward"] == half["backward_input"] == "winograd", half
            assert full["forward"] == "direct" and full["backward_input"] != "winograd", full
            assert half["backward_weight"] == full["backward_weight"] != "winograd"
        x, w, b, pads, r = data((4, 48, 48, 16, 16, (2, 2, 2, 2), 5), np.float32, seed=9)
        with avx512_half_rate(True):
            got = run(x, w, b, pads, r)
        ref = oracle(x, w, b, pads, r)
        for g, e in zip(got, ref):
            assert rel_err(g, e) <= WINO_TOL[np.float32]


def test_kernel_choice_per_setting():
    def pick(x_shape, w_shape, stride=1, pad=1):
        return _core._conv_algorithm_for(x_shape, w_shape, stride, stride, pad, pad, pad, pad)

    wide, narrow, strided = ((8, 32, 32, 64), (64, 3, 3, 64)), ((8, 32, 32, 3), (32, 3, 3, 3)), ((8, 32, 32, 64), (64, 3, 3, 64))
    with algorithm("auto"):
        assert pick(*wide)["forward"] == "winograd" and pick(*wide)["backward_input"] == "winograd"
        assert pick(*narrow)["forward"] != "winograd"  # 3 input channels: the direct kernels
        assert pick(*strided, stride=2)["forward"] != "winograd"
        assert pick(*wide)["backward_weight"] == "winograd"  # 512 F(4x4) tiles: many blocks
        assert pick(*narrow)["backward_weight"] != "winograd"
        # Too few tiles to share out (16 F(2x2) tiles, under 4 blocks at every level): the GEMM.
        assert pick((1, 7, 7, 512), (512, 3, 3, 512))["backward_weight"] != "winograd"
        # 5x5: F(2x2,5x5) from 32 output channels on 16 inputs; 16 -> 16 keeps the direct kernels.
        five = pick((8, 32, 32, 32), (64, 5, 5, 32), pad=2)
        assert five == {"forward": "winograd", "backward_input": "winograd", "backward_weight": "winograd"}, five
        # (The 5x5 rules of AVX-512 and portable; at AVX2 Winograd runs from 8 channels on each
        # side, 5x5 included: winograd_preferred. Checked at the level in force, so the test
        # holds on a machine without AVX-512 and under NABLAGRAD_SIMD.)
        level = _core._simd_level()
        if level != "avx2":
            # (The rule of CPUs whose AVX-512 runs at full rate; at half rate, Zen 4's, 16 -> 16
            # takes Winograd at AVX-512 on any rows: test_half_rate_avx512_rule.)
            with avx512_half_rate(False):
                assert "winograd" not in pick((4, 96, 96, 16), (16, 5, 5, 16), pad=2).values()
            assert pick((8, 32, 32, 16), (32, 5, 5, 16), pad=2)["forward"] == "winograd"
            # dX of 16 channels from 32 filters: at AVX-512 by Winograd (its depth 32 repays
            # the 16-column GEMMs), portable by the direct kernels.
            dx_16 = pick((8, 32, 32, 16), (32, 5, 5, 16), pad=2)["backward_input"]
            assert (dx_16 == "winograd") == (level == "avx512"), dx_16
            # 16 -> 16 on rows of 14 fill the direct kernels' 24-pixel AVX-512 tiles at 58%.
            small = pick((32, 14, 14, 16), (16, 5, 5, 16), pad=2)
            assert (small["forward"] == "winograd") == (level == "avx512"), small
            assert (small["backward_input"] == "winograd") == (level == "avx512"), small
        else:
            assert pick((4, 96, 96, 16), (16, 5, 5, 16), pad=2)["forward"] == "winograd"
            assert pick((8, 32, 32, 16), (32, 5, 5, 16), pad=2)["backward_input"] == "winograd"
    with algorithm("direct"):
        assert "winograd" not in pick(*wide).values()
    with algorithm("winograd"):
        assert pick(*narrow)["forward"] == "winograd"  # forced wherever it applies
        assert pick(*narrow)["backward_weight"] == "winograd"
        assert pick((1, 7, 7, 512), (512, 3, 3, 512))["backward_weight"] == "winograd"
        assert pick(*strided, stride=2)["forward"] != "winograd"  # stride 2: falls back
        assert pick((2, 9, 9, 8), (8, 5, 5, 8), pad=2)["forward"] == "winograd"  # 5x5: F(2x2,5x5)
        assert pick((2, 9, 9, 8), (8, 7, 7, 8), pad=3)["forward"] != "winograd"  # 7x7: falls back


def test_setting_is_validated():
    with pytest.raises(ValueError):
        ng.backends.conv_algorithm = "fft"
    assert ng.backends.conv_algorithm in ("auto", "direct", "winograd")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_against_torch(dtype):
    torch = pytest.importorskip("torch")
    x, w, b, pads, r = data((2, 15, 14, 32, 24, (1, 1, 1, 1)), dtype, seed=7)
    tx = torch.tensor(x).permute(0, 3, 1, 2).requires_grad_(True)
    tw = torch.tensor(w).permute(0, 3, 1, 2).requires_grad_(True)
    tb = torch.tensor(b).requires_grad_(True)
    ty = torch.nn.functional.conv2d(tx, tw, tb, padding=1)
    (ty * torch.tensor(r).permute(0, 3, 1, 2)).sum().backward()
    expect = (ty.detach().permute(0, 2, 3, 1).numpy(), tx.grad.permute(0, 2, 3, 1).numpy(),
              tw.grad.permute(0, 2, 3, 1).numpy(), tb.grad.numpy())
    with algorithm("winograd"):
        got = run(x, w, b, pads, r)
    for g, e in zip(got, expect):
        assert rel_err(g, e.astype(np.float64)) <= WINO_TOL[dtype]
