"""Reductions (sum mean max min) and matmul: forward vs NumPy, gradients, errors,
thread-count determinism, SIMD paths, concurrent inference."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import nablagrad as ng
from nablagrad import _core
from conftest import assert_close, check_op, check_torch, make_inputs

# --------------------------------------------------------------------------------------
# reductions
# --------------------------------------------------------------------------------------
AXES = [None, 0, 1, 2, -1, -2, (0, 2), (1, 2), (0, 1, 2), (-1, 0)]
REDUCTIONS = [("sum", np.sum), ("mean", np.mean), ("max", np.max), ("min", np.min)]


@pytest.mark.parametrize("name, np_fn", REDUCTIONS)
@pytest.mark.parametrize("axis", AXES)
@pytest.mark.parametrize("keepdims", [False, True])
def test_reduction(name, np_fn, axis, keepdims):
    check_op(lambda x: np_fn(x, axis=axis, keepdims=keepdims),
             lambda x: getattr(x, name)(axis=axis, keepdims=keepdims), [(2, 3, 4)],
             grad=name in ("sum", "mean") or axis in (None, 1, (0, 2)))


@pytest.mark.parametrize("name, np_fn", REDUCTIONS)
def test_reduction_module_function(name, np_fn):
    check_op(lambda x: np_fn(x, axis=1), lambda x: getattr(ng._core, name)(x, 1), [(3, 5)])


@pytest.mark.parametrize("name, np_fn", REDUCTIONS)
def test_reduction_noncontiguous(name, np_fn):
    a = make_inputs([(4, 5, 3)])[0]
    v = a.transpose(2, 0, 1)
    t = ng.from_numpy(v)
    assert not t.is_contiguous()
    for axis in (None, 0, 1, (1, 2)):
        assert_close(getattr(t, name)(axis=axis), np_fn(v, axis=axis), rtol=1e-12)


def test_sum_long_and_large():
    x = make_inputs([(100_003,)], np.float32)[0]
    assert_close(ng.tensor(x).sum(), x.astype(np.float64).sum(), rtol=1e-6)
    y = make_inputs([(300, 257)], np.float32)[0]
    assert_close(ng.tensor(y).sum(axis=0), y.astype(np.float64).sum(axis=0), rtol=1e-5, atol=1e-5)
    assert_close(ng.tensor(y).mean(axis=1), y.astype(np.float64).mean(axis=1), rtol=1e-5, atol=1e-6)


def test_sum_int_and_bool():
    i = ng.tensor([[1, 2], [3, 4]])
    assert i.sum().dtype == ng.int64 and i.sum().item() == 10
    assert np.asarray(i.max(axis=0)).tolist() == [3, 4]
    b = ng.tensor([True, True, False])
    assert b.sum().dtype == ng.int64 and b.sum().item() == 2
    with pytest.raises(TypeError):
        i.mean()


def test_max_ties_share_gradient():
    x = np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]])
    t = ng.tensor(x, requires_grad=True)
    t.max(axis=1).sum().backward()
    assert_close(t.grad, [[0.0, 0.5, 0.5], [1 / 3, 1 / 3, 1 / 3]])
    t.grad = None
    t.max().backward()
    assert_close(t.grad, [[0.0, 0.5, 0.5], [0.0, 0.0, 0.0]])
    t.grad = None
    t.min().backward()
    assert_close(t.grad, [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])


def test_max_ties_vs_torch_amax():
    x = np.array([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, -1.0, 2.0], [5.0, 5.0, 5.0, 5.0]])
    check_torch(lambda t: t.amax(dim=1), lambda t: t.max(axis=1), [], inputs=[x])
    check_torch(lambda t: t.amin(dim=0), lambda t: t.min(axis=0), [], inputs=[x])
    check_torch(lambda t: t.amax(), lambda t: t.max(), [], inputs=[x])


@pytest.mark.parametrize("name", ["sum", "mean", "max", "min"])
def test_reduction_vs_torch(name):
    torch_name = {"max": "amax", "min": "amin"}.get(name, name)
    check_torch(lambda t: getattr(t, torch_name)(dim=(0, 2), keepdim=True),
                lambda t: getattr(t, name)(axis=(0, 2), keepdims=True), [(3, 4, 5)])


def test_reduction_errors():
    with pytest.raises(ValueError):
        ng.zeros(0).max()
    with pytest.raises(ValueError):
        ng.zeros(2, 0).min(axis=1)
    assert ng.zeros(2, 0).max(axis=0).shape == (0,)
    assert ng.zeros(0).sum().item() == 0.0
    with pytest.raises(IndexError):
        ng.zeros(2, 3).sum(axis=2)
    with pytest.raises(IndexError):
        ng.zeros(2, 3).max(axis=-3)
    with pytest.raises(IndexError):
        ng.zeros(2, 3).mean(axis=(0, 5))
    with pytest.raises(ValueError):
        ng.zeros(2, 3).sum(axis=(1, -1))


def test_reduction_of_scalar():
    s = ng.tensor(3.0, requires_grad=True)
    assert s.sum().shape == () and s.max().item() == 3.0
    s.mean().backward()
    assert s.grad.item() == 1.0


# --------------------------------------------------------------------------------------
# matmul
# --------------------------------------------------------------------------------------
MATMUL_SHAPES = [
    [(4,), (4,)],
    [(3,), (3, 5)],
    [(4, 3), (3,)],
    [(2, 3), (3, 4)],
    [(2, 1, 3, 4), (5, 4, 2)],
    [(2, 3, 4), (4, 5)],
    [(4,), (2, 4, 3)],
    [(2, 3, 4), (4,)],
    [(3, 4), (2, 4, 2)],
    [(1, 1), (1, 1)],
]


@pytest.mark.parametrize("shapes", MATMUL_SHAPES, ids=str)
def test_matmul(shapes):
    check_op(np.matmul, lambda a, b: a @ b, shapes, rtol=1e-5, atol=1e-5)


def test_matmul_function():
    check_op(np.matmul, ng._core.matmul, [(2, 3), (3, 2)])


def test_matmul_transposed_operands():
    a = make_inputs([(4, 3)], seed=1)[0]
    b = make_inputs([(5, 4)], seed=2)[0]
    for dt, tol in ((np.float32, 1e-5), (np.float64, 1e-12)):
        at = ng.from_numpy(a.astype(dt).T)  # (3, 4) view with strides (1, 3)
        bt = ng.from_numpy(b.astype(dt).T)  # (4, 5) view
        assert not at.is_contiguous() and not bt.is_contiguous()
        assert_close(at @ bt, a.T @ b.T, rtol=tol, atol=tol)
        assert_close(at @ ng.tensor(a.astype(dt)), a.T @ a, rtol=tol, atol=tol)
        assert_close(ng.tensor(b.astype(dt)) @ ng.from_numpy(b.astype(dt).T), b @ b.T, rtol=tol, atol=tol)
    # batched non-contiguous: (2, 3, 4) with permuted axes
    c = make_inputs([(4, 2, 3)], seed=3)[0]
    v = ng.from_numpy(c.transpose(1, 2, 0))
    assert not v.is_contiguous()
    assert_close(v @ ng.tensor(b.T), c.transpose(1, 2, 0) @ b.T, rtol=1e-12)
    assert_close(ng.tensor(b) @ ng.from_numpy(c.transpose(1, 0, 2)), b @ c.transpose(1, 0, 2), rtol=1e-12)
    # gradients flow through non-contiguous operands
    leaf = ng.tensor(a.T, requires_grad=True)
    (leaf @ ng.from_numpy(a)).sum().backward()
    assert_close(leaf.grad, np.ones((3, 3)) @ a.T, rtol=1e-12)


def test_matmul_vs_torch():
    check_torch(lambda a, b: a @ b, lambda a, b: a @ b, [(2, 1, 3, 4), (5, 4, 2)], rtol=1e-5, atol=1e-5)
    check_torch(lambda a, b: a @ b, lambda a, b: a @ b, [(3,), (2, 3, 4)], rtol=1e-5, atol=1e-5)


def test_matmul_errors():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(4, 5\)"):
        ng.zeros(2, 3) @ ng.zeros(4, 5)
    with pytest.raises(ValueError):
        ng.zeros(3) @ ng.zeros(4)
    with pytest.raises(ValueError):
        ng.zeros(2, 2, 3) @ ng.zeros(3, 3, 2)  # batch dims 2 and 3 do not broadcast
    with pytest.raises(ValueError):
        ng.tensor(1.0) @ ng.zeros(1)
    with pytest.raises(TypeError):
        ng.tensor([[1, 2]]) @ ng.tensor([[1], [2]])
    with pytest.raises(TypeError):
        ng.zeros(2, 2) @ ng.zeros(2, 2, dtype=ng.float64)


def test_matmul_empty():
    assert_close(ng.zeros(2, 0) @ ng.zeros(0, 3), np.zeros((2, 3)))
    assert (ng.zeros(0, 4) @ ng.zeros(4, 3)).shape == (0, 3)


def _big_product():
    ng.manual_seed(7)
    return ng.randn(300, 200), ng.randn(200, 250)


def test_matmul_bitwise_identical_across_thread_counts():
    a, b = _big_product()
    old = ng.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            ng.set_num_threads(n)
            assert ng.get_num_threads() == n
            results.append(np.asarray(a @ b).copy())
            results.append(np.asarray((a @ b).sum(axis=0)).copy())
    finally:
        ng.set_num_threads(old)
    for i in (2, 4):
        np.testing.assert_array_equal(results[0], results[i])
        np.testing.assert_array_equal(results[1], results[i + 1])
    assert_close(results[0], np.asarray(a).astype(np.float64) @ np.asarray(b), rtol=1e-4, atol=1e-4)


def test_matmul_portable_vs_simd():
    a, b = _big_product()
    old = _core._simd_level()
    try:
        _core._set_simd_level("portable")
        assert _core._simd_level() == "portable"
        portable = np.asarray(a @ b).copy()
        _core._set_simd_level(_core._cpu_simd_level())
        simd = np.asarray(a @ b).copy()
    finally:
        _core._set_simd_level(old)
    np.testing.assert_allclose(portable, simd, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError):
        _core._set_simd_level("sse9")


def test_matmul_gradients_float32():
    a = ng.tensor(make_inputs([(3, 4)])[0].astype(np.float32), requires_grad=True)
    b = ng.tensor(make_inputs([(4, 2)], seed=1)[0].astype(np.float32), requires_grad=True)
    (a @ b).sum().backward()
    assert a.grad.dtype == ng.float32 and b.grad.dtype == ng.float32
    an, bn = np.asarray(a).astype(np.float64), np.asarray(b).astype(np.float64)
    assert_close(a.grad, np.ones((3, 2)) @ bn.T, rtol=1e-5)
    assert_close(b.grad, an.T @ np.ones((3, 2)), rtol=1e-5)


# --------------------------------------------------------------------------------------
# concurrent inference (PITFALLS 4)
# --------------------------------------------------------------------------------------
def test_concurrent_no_grad_forward():
    ng.manual_seed(3)
    # big enough that the GEMM and the elementwise op use the thread pool
    w = ng.randn(256, 192, requires_grad=True)
    xs = [ng.randn(256, 256) for _ in range(4)]

    def forward(x):
        with ng.no_grad():
            y = (x @ w).relu()
            return np.asarray(y.sum(axis=1)).copy(), y.requires_grad

    serial = [forward(x)[0] for x in xs]
    results = {}
    errors = []

    def worker(k):
        try:
            for rep in range(20):
                out, rg = forward(xs[(k + rep) % 4])
                assert not rg
                results[(k, rep)] = out
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert len(results) == 40
    for (k, rep), out in results.items():
        np.testing.assert_array_equal(out, serial[(k + rep) % 4])
    # grad mode is per thread: the main thread still records
    assert ng.is_grad_enabled() and (xs[0] @ w).requires_grad
