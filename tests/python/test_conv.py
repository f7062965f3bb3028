"""conv2d, max_pool2d, avg_pool2d: fast path vs the oracle (the design document literally),
gradients (gradcheck), thread-count and SIMD-level determinism, PyTorch, and error types.

The oracle is ``_core.conv2d_reference`` / ``_core.conv2d_reference_backward``
(kernels/conv2d.h, reference path); docs/convolution.md derives both paths.
"""

from __future__ import annotations

import warnings
from typing import Any, Iterator, Tuple

import numpy as np
import pytest

import nablagrad as ng
import nablagrad.functional as F
from nablagrad import _core
from conftest import SIMD_LEVELS, check_torch, require_simd, simd, threads

# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def resolve_pads(padding: Any, fh: int, fw: int) -> Tuple[int, int, int, int]:
    """functional.conv2d's padding rule, for the oracle."""
    if padding == "same":
        return ((fh - 1) // 2, fh - 1 - (fh - 1) // 2, (fw - 1) // 2, fw - 1 - (fw - 1) // 2)
    if padding == "valid":
        return (0, 0, 0, 0)
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    return (ph, ph, pw, pw)


def conv_run(x: np.ndarray, w: np.ndarray, b: Any, dy: np.ndarray, stride: Any, padding: Any):
    """Fast path: (y, dx, dw, db) as NumPy arrays."""
    xt = ng.tensor(x, requires_grad=True)
    wt = ng.tensor(w, requires_grad=True)
    bt = ng.tensor(b, requires_grad=True) if b is not None else None
    y = F.conv2d(xt, wt, bt, stride=stride, padding=padding)
    y.backward(ng.tensor(dy))
    return (y.numpy().copy(), xt.grad.numpy().copy(), wt.grad.numpy().copy(),
            bt.grad.numpy().copy() if bt is not None else None)


def conv_case(n: int, h: int, w_: int, c: int, q: int, fh: int, fw: int, stride: Any = 1,
              padding: Any = 0, bias: bool = True, dtype: Any = np.float64, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, h, w_, c)).astype(dtype)
    w = rng.standard_normal((q, fh, fw, c)).astype(dtype)
    b = rng.standard_normal(q).astype(dtype) if bias else None
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    pads = resolve_pads(padding, fh, fw)
    ho = (h + pads[0] + pads[1] - fh) // sh + 1
    wo = (w_ + pads[2] + pads[3] - fw) // sw + 1
    dy = rng.standard_normal((n, ho, wo, q)).astype(dtype)
    return x, w, b, dy, (sh, sw), pads


def check_conv_vs_reference(n, h, w_, c, q, fh, fw, stride=1, padding=0, bias=True, seed=0,
                            rtol=1e-11, atol=1e-11):
    x, w, b, dy, (sh, sw), pads = conv_case(n, h, w_, c, q, fh, fw, stride, padding, bias, seed=seed)
    y, dx, dw, db = conv_run(x, w, b, dy, stride, padding)
    bt = ng.tensor(b) if b is not None else None
    y_ref = _core.conv2d_reference(ng.tensor(x), ng.tensor(w), bt, sh, sw, *pads).numpy()
    dx_ref, dw_ref, db_ref = (t.numpy() for t in _core.conv2d_reference_backward(
        ng.tensor(x), ng.tensor(w), ng.tensor(dy), sh, sw, *pads))
    np.testing.assert_allclose(y, y_ref, rtol=rtol, atol=atol)
    assert dx.shape == x.shape and dw.shape == w.shape
    np.testing.assert_allclose(dx, dx_ref, rtol=rtol, atol=atol)
    np.testing.assert_allclose(dw, dw_ref, rtol=rtol, atol=atol)
    if b is not None:
        np.testing.assert_allclose(db, db_ref, rtol=rtol, atol=atol)


def random_shapes(count: int, seed: int):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        fh, fw = int(rng.integers(1, 6)), int(rng.integers(1, 6))
        sh, sw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        kind = rng.integers(0, 3)
        if kind == 0:
            padding: Any = (int(rng.integers(0, fh)), int(rng.integers(0, fw)))
        elif kind == 1:
            padding, sh, sw = "same", 1, 1
        else:
            padding = "valid"
        pads = resolve_pads(padding, fh, fw)
        h = int(rng.integers(max(1, fh - pads[0] - pads[1]), 13))
        w_ = int(rng.integers(max(1, fw - pads[2] - pads[3]), 13))
        c = int(rng.choice([1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 19]))
        q = int(rng.choice([1, 2, 3, 5, 8, 13, 16, 17, 20]))
        n = int(rng.integers(1, 4))
        out.append((n, h, w_, c, q, fh, fw, (sh, sw), padding, bool(rng.integers(0, 2))))
    return out


SHAPES = random_shapes(40, seed=1234)

# ---------------------------------------------------------------------------------------------
# fast path vs the oracle (float64, tight)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", SHAPES, ids=[str(s) for s in SHAPES])
def test_conv_random_vs_reference(case):
    n, h, w_, c, q, fh, fw, stride, padding, bias = case
    check_conv_vs_reference(n, h, w_, c, q, fh, fw, stride, padding, bias)


def test_conv_1x1(): check_conv_vs_reference(2, 5, 7, 16, 24, 1, 1)
def test_conv_1x1_strided(): check_conv_vs_reference(2, 9, 8, 3, 5, 1, 1, stride=2)
def test_conv_1x1_strided_gemm(): check_conv_vs_reference(2, 9, 8, 12, 20, 1, 1, stride=(2, 3))
def test_conv_1x1_padded(): check_conv_vs_reference(1, 5, 6, 16, 9, 1, 1, padding=1)
def test_conv_1x1_wide(): check_conv_vs_reference(2, 7, 7, 64, 80, 1, 1, bias=False)
def test_conv_same_even_kernel(): check_conv_vs_reference(2, 7, 6, 3, 4, 4, 2, padding="same")
def test_conv_same_odd_kernel(): check_conv_vs_reference(1, 9, 9, 8, 17, 5, 3, padding="same")
def test_conv_kernel_equals_input(): check_conv_vs_reference(2, 5, 4, 3, 2, 5, 4)
def test_conv_stride_larger_than_kernel(): check_conv_vs_reference(2, 11, 10, 3, 4, 2, 2, stride=3)
def test_conv_stride_3_pad(): check_conv_vs_reference(1, 13, 11, 5, 6, 3, 5, stride=(3, 2), padding=(2, 1))
def test_conv_small_c_big_kernel(): check_conv_vs_reference(2, 16, 16, 3, 32, 7, 7, stride=2, padding=3)
def test_conv_c1(): check_conv_vs_reference(3, 14, 14, 1, 32, 3, 3, padding=1)
def test_conv_wide(): check_conv_vs_reference(1, 12, 12, 40, 36, 3, 3, padding=1)
def test_conv_no_bias(): check_conv_vs_reference(2, 6, 6, 4, 5, 3, 3, bias=False)


def test_conv_empty_batch():
    x = ng.zeros(0, 5, 5, 3, dtype=ng.float64, requires_grad=True)
    w = ng.ones(4, 3, 3, 3, dtype=ng.float64, requires_grad=True)
    y = F.conv2d(x, w, padding=1)
    assert y.shape == (0, 5, 5, 4)
    y.sum().backward()
    assert x.grad.shape == (0, 5, 5, 3)
    np.testing.assert_array_equal(w.grad.numpy(), 0.0)


def test_conv_float32_vs_float64():
    x, w, b, dy, _, _ = conv_case(2, 11, 9, 5, 7, 3, 3, stride=2, padding=1)
    ref = conv_run(x, w, b, dy, 2, 1)
    got = conv_run(x.astype(np.float32), w.astype(np.float32), b.astype(np.float32),
                   dy.astype(np.float32), 2, 1)
    for r, g in zip(ref, got):
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4)


def test_conv_non_contiguous_input():
    x, w, b, dy, _, _ = conv_case(2, 6, 7, 3, 4, 3, 2, padding=1)
    # The same values through a permuted (non-contiguous) view.
    xt = ng.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1))
    assert not xt.is_contiguous()
    y = F.conv2d(xt, ng.tensor(w), ng.tensor(b), padding=1)
    np.testing.assert_allclose(y.numpy(), conv_run(x, w, b, dy, 1, 1)[0], rtol=1e-12, atol=1e-12)


def test_conv_grad_only_where_required():
    x, w, b, dy, _, _ = conv_case(2, 6, 6, 3, 4, 3, 3, padding=1)
    full = conv_run(x, w, b, dy, 1, 1)
    for need in ("x", "w", "b"):
        xt = ng.tensor(x, requires_grad=need == "x")
        wt = ng.tensor(w, requires_grad=need == "w")
        bt = ng.tensor(b, requires_grad=need == "b")
        F.conv2d(xt, wt, bt, padding=1).backward(ng.tensor(dy))
        for name, t, ref in (("x", xt, full[1]), ("w", wt, full[2]), ("b", bt, full[3])):
            if name == need:
                np.testing.assert_allclose(t.grad.numpy(), ref, rtol=1e-12, atol=1e-12)
            else:
                assert t.grad is None


def test_conv_no_grad_records_nothing():
    x = ng.randn(1, 5, 5, 2, requires_grad=True)
    with ng.no_grad():
        y = F.conv2d(x, ng.randn(3, 3, 3, 2))
    assert not y.requires_grad


# ---------------------------------------------------------------------------------------------
# determinism: thread counts (bitwise) and SIMD levels
# ---------------------------------------------------------------------------------------------

DET_SHAPES = [
    (2, 20, 20, 3, 16, 3, 3, 1, 1),
    (2, 17, 19, 16, 20, 3, 3, 2, 1),
    (3, 16, 16, 1, 32, 3, 3, 1, 1),
    (2, 24, 24, 3, 32, 7, 7, 2, 3),
    (1, 15, 15, 40, 8, 1, 1, 1, 0),
    (2, 13, 13, 8, 3, 5, 5, 3, 2),
    (2, 9, 9, 24, 40, 1, 1, 2, 0),  # strided 1x1: gathered rows through the GEMM
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", DET_SHAPES, ids=[str(s) for s in DET_SHAPES])
def test_conv_bitwise_across_thread_counts(shape, dtype):
    n, h, w_, c, q, fh, fw, s, p = shape
    x, w, b, dy, _, _ = conv_case(n, h, w_, c, q, fh, fw, s, p, dtype=dtype)
    results = []
    for t in (1, 2, 3):
        with threads(t):
            results.append(conv_run(x, w, b, dy, s, p))
    for other in results[1:]:
        for a, r in zip(other, results[0]):
            np.testing.assert_array_equal(a, r)


@pytest.mark.parametrize("level", SIMD_LEVELS)
@pytest.mark.parametrize("shape", DET_SHAPES, ids=[str(s) for s in DET_SHAPES])
def test_conv_simd_levels_vs_reference(shape, level):
    require_simd(level)
    n, h, w_, c, q, fh, fw, s, p = shape
    with simd(level):
        check_conv_vs_reference(n, h, w_, c, q, fh, fw, s, p)
        # float32 too (the AVX2 float kernels are a separate code path).
        x, w, b, dy, _, _ = conv_case(n, h, w_, c, q, fh, fw, s, p)
        ref = conv_run(x, w, b, dy, s, p)
        got = conv_run(*(a.astype(np.float32) for a in (x, w, b, dy)), s, p)
        for r, g in zip(ref, got):
            np.testing.assert_allclose(g, r, rtol=2e-4, atol=2e-4)


# ---------------------------------------------------------------------------------------------
# kernel choice and the algorithm setting (kernels/conv2d/select.h, nablagrad.backends)
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def restore_conv_algorithm() -> Iterator[None]:
    old = ng.backends.conv_algorithm
    try:
        yield
    finally:
        ng.backends.conv_algorithm = old


def test_conv_algorithm_default_and_set(restore_conv_algorithm):
    assert ng.backends.conv_algorithm == "auto"
    for name in ("direct", "winograd", "auto"):
        ng.backends.conv_algorithm = name
        assert ng.backends.conv_algorithm == name == ng.backends.get_conv_algorithm()
        assert _core._conv_algorithm() == name
    ng.backends.set_conv_algorithm("direct")
    assert ng.backends.conv_algorithm == "direct"


@pytest.mark.parametrize("bad", ["fft", "Auto", "", None, 1])
def test_conv_algorithm_invalid(bad, restore_conv_algorithm):
    ng.backends.conv_algorithm = "direct"
    with pytest.raises(ValueError, match="conv_algorithm"):
        ng.backends.conv_algorithm = bad
    with pytest.raises(ValueError):
        ng.backends.set_conv_algorithm(bad)
    if isinstance(bad, str):
        with pytest.raises(ValueError, match="conv algorithm"):
            _core._set_conv_algorithm(bad)
    assert ng.backends.conv_algorithm == "direct"  # unchanged


@pytest.mark.parametrize("name", ["auto", "direct", "winograd"])
@pytest.mark.parametrize("shape", [(2, 12, 12, 8, 16, 3, 3, 1, 1), (2, 11, 9, 5, 7, 3, 3, 2, 1),
                                   (1, 10, 10, 16, 24, 5, 5, 1, 2)])
def test_conv_algorithm_settings_agree(name, shape, restore_conv_algorithm):
    ng.backends.conv_algorithm = name
    n, h, w_, c, q, fh, fw, s, p = shape
    check_conv_vs_reference(n, h, w_, c, q, fh, fw, s, p, rtol=1e-9, atol=1e-9)


FLIPPED_DIRECT = [  # stride 1, a direct-sized flipped kernel: dX runs the forward's direct kernel
    (2, 13, 11, 16, 16, 5, 5, 1, 2),            # the benchmark's 5x5 family
    (1, 9, 10, 12, 20, 4, 4, 1, "same"),        # even kernel: padding (1, 2) on each axis
    (2, 8, 9, 16, 8, 4, 2, 1, (1, 0)),          # no padding on one axis (F-1 on the flipped one)
    (3, 7, 7, 24, 32, 3, 5, 1, "valid"),
]


def _chosen_pass_run(case, dtype, setting, pass_name, expected):
    """Under the conv_algorithm `setting`, asserts the kernel chosen for `pass_name`, then runs
    forward and backward: ((y, dx, dw, db) of the fast path, (dx, dw, db) of the oracle, dy)."""
    n, h, w_, c, q, fh_, fw_, stride, p = case
    pads = resolve_pads(p, fh_, fw_)
    ng.backends.conv_algorithm = setting
    got = _core._conv_algorithm_for((n, h, w_, c), (q, fh_, fw_, c), stride, stride, *pads, dtype)
    assert got[pass_name] == expected, got
    x, w, b, dy, _, _ = conv_case(n, h, w_, c, q, fh_, fw_, stride, p, dtype=np.dtype(dtype).type)
    fast = conv_run(x, w, b, dy, stride, p)
    ref = _core.conv2d_reference_backward(ng.tensor(x), ng.tensor(w), ng.tensor(dy), stride, stride, *pads)
    return fast, [t.numpy() for t in ref], dy


@pytest.mark.parametrize("case", FLIPPED_DIRECT, ids=[str(c) for c in FLIPPED_DIRECT])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_backward_input_flipped_direct(case, dtype, restore_conv_algorithm):
    (_, dx, _, _), (dx_ref, _, _), _ = _chosen_pass_run(case, dtype, "direct", "backward_input", "flipped_direct")
    tol = 1e-4 if dtype == "float32" else 1e-11
    np.testing.assert_allclose(dx, dx_ref, rtol=tol, atol=tol * np.abs(dx_ref).max())


# The forward's GEMM with each pixel's im2col row read in place (gemm_indirect): a strided
# layer with a deep kernel (K = 1440, 900 output pixels: ahead of the indirect kernel at the
# vector levels), and a 7x7 on few pixels with no padding (slices of half a kernel row's run,
# so parts of taps), at each level the CPU has; forward and gradients against the oracle.
@pytest.mark.parametrize("level", SIMD_LEVELS)
def test_forward_gemm_in_place(level, restore_conv_algorithm):
    require_simd(level)
    with simd(level):
        deep = _core._conv_algorithm_for((4, 30, 30, 160), (64, 3, 3, 160), 2, 2, 1, 1, 1, 1)
        assert deep["forward"] == ("indirect" if level == "portable" else "gemm"), deep
        assert _core._conv_algorithm_for((2, 14, 14, 48), (64, 7, 7, 48), 1, 1, 0, 0, 0, 0)["forward"] == "gemm"
        check_conv_vs_reference(4, 30, 30, 160, 64, 3, 3, stride=2, padding=1, rtol=1e-10, atol=1e-10)
        check_conv_vs_reference(2, 14, 14, 48, 64, 7, 7, rtol=1e-10, atol=1e-10)


def test_conv_algorithm_for():
    pick = _core._conv_algorithm_for
    one = pick((16, 14, 14, 128), (256, 1, 1, 128), 1, 1, 0, 0, 0, 0)
    assert one == {"forward": "1x1_gemm", "backward_input": "1x1_gemm", "backward_weight": "1x1_gemm"}
    first = pick((8, 32, 32, 3), (32, 3, 3, 3), 1, 1, 1, 1, 1, 1, "float64")
    assert first["forward"] == "direct" and first["backward_weight"] == "smallc"
    assert set(pick((2, 16, 16, 64), (64, 3, 3, 64), 1, 1, 1, 1, 1, 1).values()) <= {
        "indirect", "im2col_gemm", "phases", "flipped_direct", "flipped_indirect", "flipped_narrow", "gemm",
        "direct", "winograd"}
    # Strided, channels filling the register tiles: every pass reads its operands in place.
    strided = pick((16, 32, 32, 16), (32, 3, 3, 16), 2, 2, 1, 1, 1, 1)
    assert strided == {"forward": "indirect", "backward_input": "phases_direct", "backward_weight": "direct"}
    # An image decoder's RGB output: 3 filters run the narrow kernels (vectors along the runs).
    for dtype in ("float32", "float64"):
        rgb = pick((4, 64, 64, 32), (3, 3, 3, 32), 1, 1, 1, 1, 1, 1, dtype)
        assert rgb["forward"] == "narrow" and rgb["backward_weight"] == "narrow"
    with pytest.raises(ValueError, match="dtype"):
        pick((1, 4, 4, 1), (1, 1, 1, 1), 1, 1, 0, 0, 0, 0, "int64")
    with pytest.raises(ValueError, match="C=2"):
        pick((1, 4, 4, 1), (1, 1, 1, 2), 1, 1, 0, 0, 0, 0)


DW_DIRECT_PADDED = [  # 5-9 channels: kernel rows of 5-18 values, padded to the tile's rows
    (2, 9, 10, 6, 24, 3, 3, 1, 1),       # rows of 18 (24 on the narrow AVX-512 tile)
    (2, 8, 7, 5, 24, 3, 1, 1, (1, 0)),   # rows of 5 (8)
    (1, 9, 9, 9, 40, 2, 1, 2, 0),        # rows of 9, stride 2
    (2, 11, 9, 6, 16, 3, 3, 2, 1),
]


@pytest.mark.parametrize("case", DW_DIRECT_PADDED, ids=[str(c) for c in DW_DIRECT_PADDED])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_backward_weight_direct_padded_rows(case, dtype, restore_conv_algorithm):
    """More than 4 channels: the direct kernel gradient whatever its rows' padding."""
    (_, _, dw, db), (_, dw_ref, _), dy = _chosen_pass_run(case, dtype, "auto", "backward_weight", "direct")
    tol = 1e-4 if dtype == "float32" else 1e-11
    np.testing.assert_allclose(dw, dw_ref, rtol=tol, atol=tol * np.abs(dw_ref).max())
    db_ref = dy.sum(axis=(0, 1, 2))
    np.testing.assert_allclose(db, db_ref, rtol=tol, atol=tol * np.abs(dy).sum(axis=(0, 1, 2)).max())


# ---------------------------------------------------------------------------------------------
# gradcheck (finite differences)
# ---------------------------------------------------------------------------------------------


def _gradcheck_conv(n, h, w_, c, q, fh, fw, stride, padding, bias=True):
    x, w, b, _, _, _ = conv_case(n, h, w_, c, q, fh, fw, stride, padding, bias)
    inputs = [ng.tensor(x, requires_grad=True), ng.tensor(w, requires_grad=True)]
    if bias:
        inputs.append(ng.tensor(b, requires_grad=True))
        ng.autograd.gradcheck(lambda a, k, t: F.conv2d(a, k, t, stride=stride, padding=padding), inputs)
    else:
        ng.autograd.gradcheck(lambda a, k: F.conv2d(a, k, stride=stride, padding=padding), inputs)


def test_gradcheck_conv_basic(): _gradcheck_conv(2, 5, 6, 3, 4, 3, 3, 1, 1)
def test_gradcheck_conv_strided(): _gradcheck_conv(1, 7, 6, 2, 3, 3, 2, (2, 3), (1, 0))
def test_gradcheck_conv_same_even(): _gradcheck_conv(2, 5, 5, 2, 3, 2, 4, 1, "same", bias=False)
def test_gradcheck_conv_stride3(): _gradcheck_conv(1, 8, 8, 1, 2, 2, 2, 3, 1)


# ---------------------------------------------------------------------------------------------
# PITFALLS item 1: stride that does not divide (H + 2P - F)
# ---------------------------------------------------------------------------------------------


def test_pitfall_28_to_14_f3_s2_p1():
    x, w, b, dy, _, _ = conv_case(2, 28, 28, 2, 3, 3, 3, 2, 1)
    y, dx, dw, db = conv_run(x, w, b, dy, 2, 1)
    assert y.shape == (2, 14, 14, 3)
    assert dx.shape == x.shape
    check_conv_vs_reference(2, 28, 28, 2, 3, 3, 3, 2, 1)


def test_pitfall_28_to_13_untouched_row_gets_zero():
    x, w, b, dy, _, _ = conv_case(1, 28, 28, 2, 3, 3, 3, 2, 0)
    y, dx, _, _ = conv_run(x, w, b, dy, 2, 0)
    assert y.shape == (1, 13, 13, 3)
    np.testing.assert_array_equal(dx[:, 27, :, :], 0.0)  # never read by the forward pass
    np.testing.assert_array_equal(dx[:, :, 27, :], 0.0)
    assert np.all(np.abs(dx[:, 26, :26, :]).sum(axis=-1) > 0)
    check_conv_vs_reference(1, 28, 28, 2, 3, 3, 3, 2, 0)


# ---------------------------------------------------------------------------------------------
# the worked example of docs/convolution.md
# ---------------------------------------------------------------------------------------------


def test_worked_example():
    x = ng.tensor(np.arange(1, 17, dtype=np.float64).reshape(1, 4, 4, 1), requires_grad=True)
    w = ng.tensor(np.array([[1, 2], [3, 4]], dtype=np.float64).reshape(1, 2, 2, 1), requires_grad=True)
    b = ng.tensor(np.array([0.5]), requires_grad=True)
    y = F.conv2d(x, w, b, stride=2)
    np.testing.assert_array_equal(y.numpy().reshape(2, 2), [[44.5, 64.5], [124.5, 144.5]])
    y.backward(ng.tensor(np.array([[1, 2], [3, 4]], dtype=np.float64).reshape(1, 2, 2, 1)))
    np.testing.assert_array_equal(x.grad.numpy().reshape(4, 4),
                                  [[1, 2, 2, 4], [3, 4, 6, 8], [3, 6, 4, 8], [9, 12, 12, 16]])
    np.testing.assert_array_equal(w.grad.numpy().reshape(2, 2), [[78, 88], [118, 128]])
    np.testing.assert_array_equal(b.grad.numpy(), [10.0])


# ---------------------------------------------------------------------------------------------
# pooling: NumPy reference, gradcheck, determinism
# ---------------------------------------------------------------------------------------------


def np_pool(x: np.ndarray, k, s, p, mode: str, count_include_pad: bool = True) -> np.ndarray:
    (kh, kw), (sh, sw), (ph, pw) = k, s, p
    n, h, w_, c = x.shape
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w_ + 2 * pw - kw) // sw + 1
    fill = -np.inf if mode == "max" else 0.0
    xp = np.full((n, h + 2 * ph, w_ + 2 * pw, c), fill)
    xp[:, ph:ph + h, pw:pw + w_, :] = x
    ones = np.zeros((h + 2 * ph, w_ + 2 * pw))
    ones[ph:ph + h, pw:pw + w_] = 1
    out = np.empty((n, ho, wo, c))
    for i in range(ho):
        for j in range(wo):
            win = xp[:, i * sh:i * sh + kh, j * sw:j * sw + kw, :]
            if mode == "max":
                out[:, i, j, :] = win.max(axis=(1, 2))
            else:
                div = kh * kw if count_include_pad else ones[i * sh:i * sh + kh, j * sw:j * sw + kw].sum()
                out[:, i, j, :] = win.sum(axis=(1, 2)) / div
    return out


POOL_CASES = [  # (N, H, W, C), kernel, stride, padding
    ((2, 8, 8, 3), (2, 2), (2, 2), (0, 0)),
    ((2, 7, 9, 5), (3, 3), (2, 2), (1, 1)),
    ((1, 6, 7, 4), (3, 2), (1, 2), (1, 0)),
    ((3, 5, 5, 2), (2, 3), (3, 1), (1, 1)),
]


@pytest.mark.parametrize("case", POOL_CASES, ids=[str(c) for c in POOL_CASES])
@pytest.mark.parametrize("mode", ["max", "avg_pad", "avg_nopad"])
def test_pool_vs_numpy_and_gradcheck(case, mode):
    shape, k, s, p = case
    x = np.random.default_rng(3).standard_normal(shape)

    def fn(t):
        if mode == "max":
            return F.max_pool2d(t, k, s, p)
        return F.avg_pool2d(t, k, s, p, count_include_pad=mode == "avg_pad")

    expected = np_pool(x, k, s, p, "max" if mode == "max" else "avg", mode == "avg_pad")
    for dt in (np.float32, np.float64):
        got = fn(ng.tensor(x.astype(dt)))
        assert got.dtype == (ng.float32 if dt == np.float32 else ng.float64)
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5 if dt == np.float32 else 1e-12,
                                   atol=1e-6 if dt == np.float32 else 1e-12)
    ng.autograd.gradcheck(fn, [ng.tensor(x, requires_grad=True)])


def test_max_pool_grad_every_sample_and_channel():  # PITFALLS item 9
    x = np.random.default_rng(5).standard_normal((3, 4, 4, 5))
    xt = ng.tensor(x, requires_grad=True)
    F.max_pool2d(xt, 2).sum().backward()
    g = xt.grad.numpy()
    np.testing.assert_array_equal(g.reshape(3, 2, 2, 2, 2, 5).sum(axis=(2, 4)), 1.0)


@pytest.mark.parametrize("mode", ["max", "avg"])
def test_pool_bitwise_across_thread_counts(mode):
    x = np.random.default_rng(6).standard_normal((4, 17, 15, 6)).astype(np.float32)
    dy = np.random.default_rng(7).standard_normal((4, 9, 8, 6)).astype(np.float32)
    outs = []
    for t in (1, 2, 3):
        with threads(t):
            xt = ng.tensor(x, requires_grad=True)
            y = F.max_pool2d(xt, 3, 2, 1) if mode == "max" else F.avg_pool2d(xt, 3, 2, 1, False)
            y.backward(ng.tensor(dy))
            outs.append((y.numpy().copy(), xt.grad.numpy().copy()))
    for o in outs[1:]:
        np.testing.assert_array_equal(o[0], outs[0][0])
        np.testing.assert_array_equal(o[1], outs[0][1])


# ---------------------------------------------------------------------------------------------
# PyTorch (channels_last permutes), skipped without torch
# ---------------------------------------------------------------------------------------------


def _to_nchw(t):
    return t.permute(0, 3, 1, 2)


def _to_nhwc(t):
    return t.permute(0, 2, 3, 1)


TORCH_CONV = [  # (N,H,W,C), (Q,FH,FW), stride, padding
    ((2, 9, 9, 3), (4, 3, 3), 1, 1),
    ((2, 10, 11, 5), (6, 3, 2), 2, (1, 0)),
    ((1, 8, 8, 4), (3, 4, 4), 1, "same"),
    ((2, 16, 16, 3), (8, 7, 7), 2, 3),
    ((1, 28, 28, 2), (3, 3, 3), 2, 1),
    ((2, 6, 6, 32), (48, 1, 1), 1, 0),
    ((2, 9, 9, 16), (24, 1, 1), 2, 0),
    ((2, 12, 12, 3), (16, 5, 5), 1, 2),
    ((2, 14, 13, 32), (3, 3, 3), 1, 1),   # an RGB output: the narrow kernels
    ((2, 11, 12, 20), (1, 5, 5), 2, 2),   # one filter, strided
]


@pytest.mark.parametrize("case", TORCH_CONV, ids=[str(c) for c in TORCH_CONV])
def test_conv_vs_torch(case):
    torch = pytest.importorskip("torch")
    (n, h, w_, c), (q, fh, fw), stride, padding = case

    def tconv(x, w, b):
        with warnings.catch_warnings():  # padding="same" with an even kernel: a copy warning
            warnings.simplefilter("ignore", UserWarning)
            return _to_nhwc(torch.nn.functional.conv2d(_to_nchw(x), w.permute(0, 3, 1, 2), b,
                                                       stride=stride, padding=padding))

    check_torch(tconv, lambda x, w, b: F.conv2d(x, w, b, stride=stride, padding=padding),
                [(n, h, w_, c), (q, fh, fw, c), (q,)], rtol=1e-4, atol=1e-4)


TORCH_POOL = [((2, 9, 9, 3), 3, 2, 1), ((2, 8, 7, 4), (2, 3), (2, 1), (1, 1)), ((1, 6, 6, 2), 2, None, 0)]


@pytest.mark.parametrize("case", TORCH_POOL, ids=[str(c) for c in TORCH_POOL])
@pytest.mark.parametrize("mode", ["max", "avg_pad", "avg_nopad"])
def test_pool_vs_torch(case, mode):
    torch = pytest.importorskip("torch")
    shape, k, s, p = case

    def tpool(x):
        if mode == "max":
            return _to_nhwc(torch.nn.functional.max_pool2d(_to_nchw(x), k, s, p))
        return _to_nhwc(torch.nn.functional.avg_pool2d(_to_nchw(x), k, s, p,
                                                       count_include_pad=mode == "avg_pad"))

    def npool(x):
        if mode == "max":
            return F.max_pool2d(x, k, s, p)
        return F.avg_pool2d(x, k, s, p, count_include_pad=mode == "avg_pad")

    check_torch(tpool, npool, [shape])


MAX_POOL_TIES = [((2, 7, 6, 37), 3, 2, 1), ((3, 8, 8, 64), 2, None, 0), ((1, 5, 9, 5), (2, 3), 1, (1, 0))]


@pytest.mark.parametrize("case", MAX_POOL_TIES, ids=[str(c) for c in MAX_POOL_TIES])
def test_max_pool_ties_nan_inf_vs_torch(case):
    """The branch-free channel loop keeps PyTorch's rules where they bite: ties (few distinct
    values) keep the first maximum, NaN wins, -inf windows; channel counts that leave a vector
    remainder. Gradients land where PyTorch puts them; inference (no argmax) agrees too."""
    torch = pytest.importorskip("torch")
    shape, k, s, p = case
    rng = np.random.default_rng(11)
    x = rng.integers(-2, 3, shape).astype(np.float64)
    x[rng.random(shape) < 0.03] = np.nan
    x[rng.random(shape) < 0.05] = -np.inf
    check_torch(lambda t: _to_nhwc(torch.nn.functional.max_pool2d(_to_nchw(t), k, s, p)),
                lambda t: F.max_pool2d(t, k, s, p), [], inputs=[x])
    for dt in (np.float32, np.float64):
        with ng.no_grad():
            got = F.max_pool2d(ng.tensor(x.astype(dt)), k, s, p).numpy()
        want = F.max_pool2d(ng.tensor(x.astype(dt), requires_grad=True), k, s, p).detach().numpy()
        np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------


def _x(*shape, dtype=ng.float32):
    return ng.zeros(*shape, dtype=dtype)


def test_err_input_rank(): pytest.raises(ValueError, F.conv2d, _x(5, 5, 3), _x(4, 3, 3, 3))
def test_err_weight_rank(): pytest.raises(ValueError, F.conv2d, _x(1, 5, 5, 3), _x(4, 3, 3))
def test_err_stride_zero(): pytest.raises(ValueError, F.conv2d, _x(1, 5, 5, 3), _x(4, 3, 3, 3), None, 0)
def test_err_negative_padding(): pytest.raises(ValueError, F.conv2d, _x(1, 5, 5, 3), _x(4, 3, 3, 3), None, 1, -1)
def test_err_kernel_too_large(): pytest.raises(ValueError, F.conv2d, _x(1, 3, 3, 3), _x(4, 5, 5, 3), None, 1, 0)
def test_err_bias_shape(): pytest.raises(ValueError, F.conv2d, _x(1, 5, 5, 3), _x(4, 3, 3, 3), _x(3))
def test_err_dtype_mismatch(): pytest.raises(TypeError, F.conv2d, _x(1, 5, 5, 3), _x(4, 3, 3, 3, dtype=ng.float64))
def test_err_bias_dtype(): pytest.raises(TypeError, F.conv2d, _x(1, 5, 5, 3), _x(4, 3, 3, 3), _x(4, dtype=ng.float64))
def test_err_int_input(): pytest.raises(TypeError, F.conv2d, _x(1, 5, 5, 3, dtype=ng.int64), _x(4, 3, 3, 3))
def test_err_pool_rank(): pytest.raises(ValueError, F.max_pool2d, _x(5, 5, 3), 2)
def test_err_pool_stride_zero(): pytest.raises(ValueError, F.avg_pool2d, _x(1, 5, 5, 3), 2, 0)
def test_err_pool_padding_too_large(): pytest.raises(ValueError, F.max_pool2d, _x(1, 5, 5, 3), 2, 1, 2)
def test_err_pool_window_too_large(): pytest.raises(ValueError, F.avg_pool2d, _x(1, 2, 2, 3), 4)
def test_err_pool_int_input(): pytest.raises(TypeError, F.max_pool2d, _x(1, 4, 4, 1, dtype=ng.int64), 2)


def test_err_channel_mismatch_message():
    with pytest.raises(ValueError, match=r"C=3 channels but kernel expects C=4 \(input \(2,8,8,3\), kernel \(4,3,3,4\)\)"):
        F.conv2d(_x(2, 8, 8, 3), _x(4, 3, 3, 4))


def test_err_same_with_stride():
    with pytest.raises(ValueError, match="same"):
        F.conv2d(_x(1, 5, 5, 3), _x(4, 3, 3, 3), stride=2, padding="same")
