"""Tensor construction, dtype inference and promotion, conversions, factories, operators."""

from __future__ import annotations

import numpy as np
import pytest

import nablagrad as ng
from conftest import assert_close


# --------------------------------------------------------------------------------------
# construction and dtype inference
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "data, dtype",
    [
        (1.5, ng.float32),
        (3, ng.int64),
        (True, ng.bool),
        ([1.0, 2.0], ng.float32),
        ([[1, 2], [3, 4]], ng.int64),
        ([True, False], ng.bool),
        ([1, 2.5], ng.float32),
        (np.zeros(3, np.float32), ng.float32),
        (np.zeros(3, np.float64), ng.float64),
        (np.zeros(3, np.int64), ng.int64),
        (np.zeros(3, np.bool_), ng.bool),
        (np.zeros(3, np.int32), ng.int64),
        (np.zeros(3, np.uint8), ng.int64),
        (np.zeros(3, np.int16), ng.int64),
        (np.float64(2.0), ng.float64),
    ],
)
def test_dtype_inference(data, dtype):
    t = ng.tensor(data)
    assert t.dtype == dtype
    assert_close(t, np.asarray(data))


@pytest.mark.parametrize("arr", [np.zeros(2, np.float16), np.zeros(2, np.complex64), np.array([1, "a"], object)])
def test_unsupported_numpy_dtypes(arr):
    with pytest.raises(TypeError):
        ng.tensor(arr)
    with pytest.raises(TypeError):
        ng.from_numpy(arr)


def test_tensor_dtype_override_and_requires_grad():
    t = ng.tensor([1, 2, 3], dtype=ng.float64, requires_grad=True)
    assert t.dtype == ng.float64 and t.requires_grad and t.is_leaf and t.grad is None
    assert ng.tensor([1.5, 2.5], dtype=ng.int64).dtype == ng.int64
    assert ng.tensor([1.0], dtype="float64").dtype == ng.float64
    assert ng.tensor([1.0], dtype=np.float64).dtype == ng.float64
    with pytest.raises(TypeError):
        ng.tensor([1.0], dtype=np.float16)


def test_tensor_copies_numpy():
    a = np.arange(4.0)
    t = ng.tensor(a)
    a[0] = 100.0
    assert np.asarray(t)[0] == 0.0


def test_ragged_list_is_value_error():
    with pytest.raises(ValueError):
        ng.tensor([[1.0, 2.0], [3.0]])


def test_from_numpy_shares_memory_both_ways():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    t = ng.from_numpy(a)
    assert t.shape == (2, 3) and t.dtype == ng.float32
    a[0, 1] = 42.0
    assert np.asarray(t)[0, 1] == 42.0
    t.numpy()[1, 2] = -7.0
    assert a[1, 2] == -7.0
    with ng.no_grad():
        t.copy_(np.ones((2, 3), np.float32))
    assert (a == 1).all()


def test_from_numpy_rejects_non_array():
    with pytest.raises(TypeError):
        ng.from_numpy([1.0, 2.0])


def test_numpy_and_asarray_share_memory():
    t = ng.zeros(2, 3)
    n = t.numpy()
    n[0, 0] = 5.0
    assert np.asarray(t)[0, 0] == 5.0
    assert np.shares_memory(np.asarray(t), n)
    assert np.asarray(t, dtype=np.float64).dtype == np.float64
    # the array keeps the storage alive after the tensor is gone
    del t
    assert n[0, 0] == 5.0


# --------------------------------------------------------------------------------------
# factories
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("factory, value", [(ng.zeros, 0.0), (ng.ones, 1.0)])
def test_zeros_ones(factory, value):
    t = factory(2, 3)
    assert t.shape == (2, 3) and t.dtype == ng.float32
    assert (np.asarray(t) == value).all()
    assert factory((4,), dtype=ng.float64).dtype == ng.float64
    assert factory(2, dtype=ng.int64).dtype == ng.int64
    assert factory(3, requires_grad=True).requires_grad
    assert factory().shape == ()


def test_full_empty_like():
    assert_close(ng.full((2, 2), 3.5), np.full((2, 2), 3.5))
    assert ng.full((2,), 3).dtype == ng.int64
    assert ng.full((2,), True).dtype == ng.bool
    assert ng.full(3, 1.0, dtype=ng.float64).dtype == ng.float64
    assert ng.empty(3, 4).shape == (3, 4)
    x = ng.ones(2, 3, dtype=ng.float64)
    z = ng.zeros_like(x)
    assert z.shape == (2, 3) and z.dtype == ng.float64 and not z.requires_grad
    o = ng.ones_like(x, dtype=ng.float32, requires_grad=True)
    assert o.dtype == ng.float32 and o.requires_grad
    with pytest.raises(ValueError):
        ng.zeros(-1, 2)
    with pytest.raises(TypeError):
        ng.zeros(2.5)


def test_arange():
    t = ng.arange(5)
    assert t.dtype == ng.int64 and np.asarray(t).tolist() == [0, 1, 2, 3, 4]
    assert_close(ng.arange(1.0, 2.0, 0.25), np.arange(1.0, 2.0, 0.25), dtype=np.float32)
    assert ng.arange(3, dtype=ng.float64).dtype == ng.float64
    assert ng.arange(3, dtype=ng.float32, requires_grad=True).requires_grad
    with pytest.raises(ValueError):
        ng.arange(0, 3, 0)


@pytest.mark.parametrize("factory", [ng.rand, ng.randn])
def test_random_factories_reproducible(factory):
    ng.manual_seed(123)
    a = np.asarray(factory(3, 4)).copy()
    ng.manual_seed(123)
    b = np.asarray(factory(3, 4))
    c = np.asarray(factory(3, 4))
    assert a.dtype == np.float32 and a.shape == (3, 4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(b, c)
    assert factory(2, dtype=ng.float64).dtype == ng.float64
    assert factory(2, requires_grad=True).requires_grad


def test_random_statistics():
    ng.manual_seed(0)
    u = np.asarray(ng.rand(20000, dtype=ng.float64))
    assert u.min() >= 0.0 and u.max() < 1.0 and abs(u.mean() - 0.5) < 0.02
    n = np.asarray(ng.randn(20000, dtype=ng.float64))
    assert abs(n.mean()) < 0.03 and abs(n.std() - 1.0) < 0.03


# --------------------------------------------------------------------------------------
# properties and conversions
# --------------------------------------------------------------------------------------
def test_properties():
    t = ng.zeros(2, 3, 4)
    assert t.shape == (2, 3, 4) and isinstance(t.shape, tuple)
    assert t.ndim == 3 and t.size == 24 and t.numel() == 24 and len(t) == 2
    assert t.dtype == ng.float32
    s = ng.tensor(2.5)
    assert s.shape == () and s.ndim == 0 and s.size == 1
    assert s.item() == 2.5 and isinstance(s.item(), float)
    assert ng.tensor([7]).item() == 7 and isinstance(ng.tensor([7]).item(), int)
    assert ng.tensor(True).item() is True
    assert float(ng.tensor(1.5)) == 1.5 and int(ng.tensor(3)) == 3
    with pytest.raises(ValueError):
        ng.zeros(2).item()
    with pytest.raises(ValueError):
        bool(ng.zeros(2))
    with pytest.raises(TypeError):
        len(ng.tensor(1.0))


def test_repr_is_numpy_like():
    assert repr(ng.tensor([1.0, 2.0])) == "tensor([1., 2.])"
    assert repr(ng.tensor([1, 2])) == "tensor([1, 2])"
    assert repr(ng.tensor([1.0], dtype=ng.float64)) == "tensor([1.], dtype=nablagrad.float64)"
    assert "requires_grad=True" in repr(ng.tensor([1.0], requires_grad=True))
    assert "tensor([[0., 0.]" in str(ng.zeros(2, 2))
    assert repr(ng.float32) == "nablagrad.float32"


def test_astype():
    t = ng.tensor([1.7, -2.2])
    i = t.astype(ng.int64)
    assert i.dtype == ng.int64 and np.asarray(i).tolist() == [1, -2]
    assert t.astype(ng.float64).dtype == ng.float64
    assert t.astype("bool").dtype == ng.bool
    x = ng.tensor([1.0, 2.0], requires_grad=True)
    y = x.astype(ng.float64)
    (y * y).sum().backward()
    assert x.grad.dtype == ng.float32
    assert_close(x.grad, [2.0, 4.0])


def test_contiguous_of_noncontiguous():
    if not hasattr(ng.Tensor, "contiguous"):
        pytest.skip("Tensor.contiguous is bound with the shape ops (bind_shape.cpp), not built yet")
    a = np.arange(12.0).reshape(3, 4)
    t = ng.from_numpy(a.T)  # a strided view
    assert not t.is_contiguous() and t.shape == (4, 3)
    c = t.contiguous()
    assert c.is_contiguous()
    assert_close(c, a.T)
    assert_close(np.asarray(t), a.T)
    assert ng.from_numpy(a).contiguous().is_contiguous()


def test_copy_():
    p = ng.zeros(2, 3, requires_grad=True)
    with pytest.raises(RuntimeError):
        p.copy_(np.ones((2, 3), np.float32))
    with ng.no_grad():
        p.copy_(ng.ones(2, 3))
        p.copy_(np.full((2, 3), 2.0))  # float64 source converted
    assert_close(p, np.full((2, 3), 2.0), dtype=np.float32)
    assert p.requires_grad
    with ng.no_grad(), pytest.raises(ValueError):
        p.copy_(ng.ones(3, 2))
    q = ng.zeros(2)
    q.copy_([1.0, 2.0])  # plain tensors may be written any time
    assert_close(q, [1.0, 2.0])


# --------------------------------------------------------------------------------------
# operators and type promotion
# --------------------------------------------------------------------------------------
A = np.array([[1.0, -2.0, 3.0], [0.5, 4.0, -1.5]])
B = np.array([2.0, 0.5, -3.0])


@pytest.mark.parametrize(
    "fn",
    [
        lambda a, b: a + b, lambda a, b: a - b, lambda a, b: a * b, lambda a, b: a / b,
        lambda a, b: b + a, lambda a, b: b - a, lambda a, b: b * a, lambda a, b: b / a,
        lambda a, b: a + 2, lambda a, b: 2 - a, lambda a, b: a * 2.5, lambda a, b: 1.0 / a,
        lambda a, b: -a, lambda a, b: abs(a) ** 0.5, lambda a, b: a ** 2, lambda a, b: 2.0 ** a,
        lambda a, b: abs(a) ** abs(b), lambda a, b: a @ b,
    ],
)
@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_operators_match_numpy(fn, dt):
    a, b = A.astype(dt), B.astype(dt)
    expected = fn(a.astype(np.float64), b.astype(np.float64))
    assert_close(fn(ng.tensor(a), ng.tensor(b)), expected, rtol=1e-5, dtype=dt)
    # NumPy array on the other side
    assert_close(fn(ng.tensor(a), b), expected, rtol=1e-5, dtype=dt)
    assert_close(fn(a, ng.tensor(b)), expected, rtol=1e-5, dtype=dt)


def test_ndarray_times_tensor_is_tensor_with_grad():
    x = ng.tensor([1.0, 2.0, 3.0], requires_grad=True)
    w = np.array([2.0, 3.0, 4.0], np.float32)
    for y in (w * x, w + x, w - x, w / x, w @ x):
        assert isinstance(y, ng.Tensor) and y.requires_grad
    (w * x).sum().backward()
    assert_close(x.grad, w)
    y = np.float32(2.0) * x
    assert isinstance(y, ng.Tensor) and y.dtype == ng.float32


def test_scalar_never_widens():
    f32 = ng.tensor([1.0, 2.0])
    i64 = ng.tensor([1, 2])
    assert (f32 * 2.5).dtype == ng.float32
    assert (2.5 * f32).dtype == ng.float32
    assert (f32 + 1).dtype == ng.float32
    assert (i64 * 2.5).dtype == ng.float32
    assert_close(i64 * 2.5, [2.5, 5.0])
    assert (i64 + 1).dtype == ng.int64
    assert (i64 / 2).dtype == ng.float32
    assert_close(i64 / 2, [0.5, 1.0])
    f64 = ng.tensor([1.0], dtype=ng.float64)
    assert (f64 * 2.5).dtype == ng.float64
    assert (f32 ** 2).dtype == ng.float32


def test_tensor_promotion():
    f32 = ng.tensor([1.0, 2.0])
    f64 = ng.tensor([1.0, 2.0], dtype=ng.float64)
    i64 = ng.tensor([1, 2])
    b = ng.tensor([True, False])
    assert (f32 + f64).dtype == ng.float64
    assert (f64 * f32).dtype == ng.float64
    assert (i64 + f32).dtype == ng.float32
    assert (b * f64).dtype == ng.float64
    assert (i64 * i64).dtype == ng.int64
    assert_close(i64 ** 2, [1, 4])
    # an array on the other side is a tensor operand: it promotes like one
    assert (f32 + np.ones(2)).dtype == ng.float64


def test_comparisons_return_bool():
    a = ng.tensor([1.0, 2.0, 3.0], requires_grad=True)
    b = np.array([2.0, 2.0, 2.0], np.float32)
    for op, ref in [
        (lambda x, y: x < y, [True, False, False]),
        (lambda x, y: x <= y, [True, True, False]),
        (lambda x, y: x > y, [False, False, True]),
        (lambda x, y: x >= y, [False, True, True]),
        (lambda x, y: x == y, [False, True, False]),
        (lambda x, y: x != y, [True, False, True]),
    ]:
        r = op(a, b)
        assert r.dtype == ng.bool and not r.requires_grad
        assert np.asarray(r).tolist() == ref
        assert np.asarray(op(a, 2)).tolist() == ref
        assert np.asarray(op(a, ng.tensor(b))).tolist() == ref


def test_broadcast_mismatch_is_value_error():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(4,\)"):
        ng.zeros(2, 3) + ng.zeros(4)


def test_bool_neg_is_type_error():
    with pytest.raises(TypeError):
        -ng.tensor([True])


def test_python_int_out_of_int64_range():
    assert_close(ng.tensor([1.0]) + 2**70, [2.0**70], rtol=1e-6)  # converted to the float dtype
    with pytest.raises(OverflowError):
        ng.tensor([1]) + 2**70


def test_zero_dim_operand_does_not_widen_same_category() -> None:
    # PyTorch's rule: a 0-d float64 operand leaves a float32 tensor float32 ...
    a = ng.ones(3)
    assert (a + ng.tensor(2.0, dtype=ng.float64)).dtype == ng.float32
    assert (ng.tensor(np.float64(2.0)) * a).dtype == ng.float32
    # ... but a 0-d operand of a higher category decides the kind
    i = ng.tensor([1, 2, 3])
    assert (i + ng.tensor(0.5, dtype=ng.float64)).dtype == ng.float64
    # dimensioned operands of both dtypes still promote
    assert (a + ng.ones(3, dtype=ng.float64)).dtype == ng.float64
    assert (a < ng.tensor(2.0, dtype=ng.float64)).dtype == ng.bool


def test_compare_with_none_is_identity() -> None:
    a = ng.ones(2)
    assert (a == None) is False  # noqa: E711
    assert (a != None) is True  # noqa: E711


def test_large_blocks_are_cached_and_reused() -> None:
    from nablagrad import _core

    _core._empty_cache()
    assert _core._cached_bytes() == 0
    t = ng.zeros(512, 1024)  # 2 MiB: above the cache's 128 KiB floor
    ptr = t._data_ptr()
    del t
    assert _core._cached_bytes() >= 512 * 1024 * 4
    u = ng.ones(512, 1024)  # same size: the cached block comes back, filled anew
    assert u._data_ptr() == ptr
    assert float(u.sum().item()) == 512 * 1024
    del u
    # a slightly smaller request falls in the same size class and reuses the block
    w = ng.zeros(511, 1024)
    assert w._data_ptr() == ptr
    del w
    # varying shapes do not pile up: the cache stays bounded (256 MiB)
    for rows in range(100, 1100, 7):
        x = ng.ones(rows, 1000)
        del x
    assert _core._cached_bytes() <= 256 * 2**20
    _core._empty_cache()
    assert _core._cached_bytes() == 0


def test_nn_functional_is_the_functional_api() -> None:
    import nablagrad.functional as F
    import nablagrad.nn.functional as NF

    assert ng.nn.functional.relu is F.relu
    assert set(F.__all__) <= set(dir(NF))
    assert NF.cross_entropy is F.cross_entropy


def test_float64_from_python_floats_is_exact():
    """ng.tensor(list, dtype=float64) must not round Python floats through float32."""
    assert ng.tensor([0.1], dtype=ng.float64).item() == 0.1
    assert ng.tensor(0.1, dtype=ng.float64).item() == 0.1
    assert ng.tensor([[1e-40, 1.0 / 3.0]], dtype=ng.float64).numpy().tolist() == [[1e-40, 1.0 / 3.0]]
    assert ng.tensor([0.1]).dtype == ng.float32  # the default stays float32, as PyTorch
