"""Shape/view ops, indexing, concatenate and stack: values against NumPy, storage sharing
where NumPy would share, float64 gradients by finite differences, PyTorch where installed,
and the error types."""

from __future__ import annotations

import numpy as np
import pytest

import nablagrad as ng
from nablagrad.autograd import gradcheck

RNG = np.random.default_rng(0)


def _arr(shape, dtype=np.float64):
    return RNG.standard_normal(shape).astype(dtype)


def check(shape, ng_fn, np_fn, grad=True):
    """Forward against NumPy in float32 and float64, then gradcheck in float64."""
    for dt in (np.float32, np.float64):
        a = _arr(shape, dt)
        out = ng_fn(ng.tensor(a))
        ref = np_fn(a)
        assert out.shape == ref.shape, (out.shape, ref.shape)
        assert out.dtype == ng.tensor(a).dtype
        np.testing.assert_array_equal(np.asarray(out), ref)
    if grad:
        gradcheck(ng_fn, [ng.tensor(_arr(shape), requires_grad=True)])


# ---------------------------------------------------------------------------------------
# reshape / flatten / squeeze / unsqueeze / transpose / permute / expand / contiguous
# ---------------------------------------------------------------------------------------
def test_reshape_args(): check((2, 3, 4), lambda x: x.reshape(6, 4), lambda a: a.reshape(6, 4))
def test_reshape_tuple(): check((2, 3, 4), lambda x: x.reshape((4, -1)), lambda a: a.reshape((4, -1)))
def test_view(): check((2, 3), lambda x: x.view(3, 2), lambda a: a.reshape(3, 2))
def test_reshape_module(): check((2, 3), lambda x: ng._core.reshape(x, (3, 2)), lambda a: a.reshape(3, 2))
def test_reshape_0d(): check((), lambda x: x.reshape(1, 1), lambda a: a.reshape(1, 1))
def test_reshape_to_0d(): check((1,), lambda x: x.reshape(()), lambda a: a.reshape(()))
def test_reshape_noncontiguous(): check((3, 4), lambda x: x.T.reshape(-1), lambda a: a.T.reshape(-1))
def test_flatten(): check((2, 3, 4), lambda x: x.flatten(), lambda a: a.reshape(-1))
def test_flatten_start(): check((2, 3, 4), lambda x: x.flatten(1), lambda a: a.reshape(2, 12))
def test_flatten_range(): check((2, 3, 4, 5), lambda x: x.flatten(1, 2), lambda a: a.reshape(2, 12, 5))
def test_squeeze_all(): check((1, 3, 1, 2), lambda x: x.squeeze(), lambda a: a.squeeze())
def test_squeeze_axis(): check((1, 3, 1, 2), lambda x: x.squeeze(-2), lambda a: a.squeeze(-2))
def test_unsqueeze(): check((3, 2), lambda x: x.unsqueeze(1), lambda a: np.expand_dims(a, 1))
def test_unsqueeze_end(): check((3, 2), lambda x: x.unsqueeze(-1), lambda a: np.expand_dims(a, -1))
def test_transpose(): check((2, 3, 4), lambda x: x.transpose(0, 2), lambda a: a.swapaxes(0, 2))
def test_T(): check((2, 3), lambda x: x.T, lambda a: a.T)
def test_permute(): check((2, 3, 4), lambda x: x.permute(2, 0, 1), lambda a: a.transpose(2, 0, 1))
def test_permute_tuple(): check((2, 3, 4), lambda x: x.permute((1, 2, 0)), lambda a: a.transpose(1, 2, 0))
def test_permute_module(): check((2, 3), lambda x: ng._core.permute(x, [1, 0]), lambda a: a.T)
def test_expand(): check((3, 1), lambda x: x.expand(2, 3, 4), lambda a: np.broadcast_to(a, (2, 3, 4)))
def test_expand_minus1(): check((3, 1), lambda x: x.expand(-1, 5), lambda a: np.broadcast_to(a, (3, 5)))
def test_broadcast_to(): check((4,), lambda x: ng._core.broadcast_to(x, (2, 4)), lambda a: np.broadcast_to(a, (2, 4)))
def test_contiguous(): check((3, 4), lambda x: x.T.contiguous(), lambda a: np.ascontiguousarray(a.T))


def test_reshape_shares_storage():
    t = ng.tensor(_arr((2, 3, 4)))
    u = t.reshape(4, 6)
    assert t._same_storage(u)
    u[0, 0] = 42.0
    assert t[0, 0, 0].item() == 42.0


def test_views_share_storage():
    t = ng.tensor(_arr((2, 3, 4)))
    for v in (t.transpose(0, 1), t.permute(2, 1, 0), t.flatten(), t.unsqueeze(0), t[1], t[:, ::-1], t[None, ..., 1:3],
              t.expand(5, 2, 3, 4)):
        assert t._same_storage(v)
    assert not t._same_storage(t[[0, 1]])
    assert not t._same_storage(ng.concatenate([t, t]))


def test_reshape_copies_when_needed():
    t = ng.tensor(_arr((3, 4)))
    assert not t._same_storage(t.T.reshape(12))
    assert t.T.contiguous().is_contiguous()
    assert t.contiguous()._same_storage(t)


def test_numpy_view_of_negative_strides():
    a = _arr((4, 5))
    t = ng.tensor(a)
    v = t[::-1, ::-2]
    np.testing.assert_array_equal(v.numpy(), a[::-1, ::-2])
    np.testing.assert_array_equal(np.asarray(v.reshape(-1)), a[::-1, ::-2].reshape(-1))
    np.testing.assert_array_equal(np.asarray(v + 1), a[::-1, ::-2] + 1)
    np.testing.assert_allclose(np.asarray(v.sum(axis=0)), a[::-1, ::-2].sum(axis=0), rtol=1e-12)


def test_int_and_bool_dtypes():
    a = np.arange(12).reshape(3, 4)
    t = ng.tensor(a)
    np.testing.assert_array_equal(np.asarray(t.T.reshape(2, 6)), a.T.reshape(2, 6))
    np.testing.assert_array_equal(np.asarray(t[::-1, [0, 0, 3]]), a[::-1, [0, 0, 3]])
    m = ng.tensor(a > 4)
    np.testing.assert_array_equal(np.asarray(m[1:, None]), (a > 4)[1:, None])
    c = ng.concatenate([t, m], 0)
    assert c.dtype == ng.int64
    np.testing.assert_array_equal(np.asarray(c), np.concatenate([a, a > 4]))


# ---------------------------------------------------------------------------------------
# indexing
# ---------------------------------------------------------------------------------------
INDICES = [
    1, -1, (0, 2), (-2, -1, 3), slice(None), slice(1, None), slice(None, None, -1), slice(None, None, -2),
    (slice(1, 3), slice(None, None, -1)), (slice(-1, 0, -1), 2), (Ellipsis, 1), (1, Ellipsis), (None, 1),
    (Ellipsis, None), (slice(None), None, slice(None, None, 2)), (), slice(10, 20), slice(3, 1), (Ellipsis, slice(5, -7, -2)),
    [2, 0, 0], (slice(None), [1, -1]), (Ellipsis, [[0, 1], [3, 3]]), (1, [0, 2]), (slice(None), 0, [1, 0]),
    (0, slice(None), [1, 0]), (None, 0, [1, 1]), (slice(None, None, -1), [2]), np.array([1, 0, 2]), [],
    (slice(None), slice(None), [-4]), True, (0, False),
]


@pytest.mark.parametrize("idx", INDICES, ids=repr)
def test_getitem(idx):
    check((3, 4, 5), lambda x: x[idx], lambda a: a[idx])


def test_getitem_tensor_index():
    idx = ng.tensor([3, 0, 3, -1])
    check((5, 2), lambda x: x[idx], lambda a: a[np.array([3, 0, 3, -1])])
    check((2, 5), lambda x: x[:, idx], lambda a: a[:, np.array([3, 0, 3, -1])])


def test_getitem_0d_int_tensor():
    check((4, 3), lambda x: x[ng.tensor(2)], lambda a: a[np.array(2)])


def test_getitem_mask():
    m = RNG.standard_normal((3, 4)) > 0
    check((3, 4), lambda x: x[ng.tensor(m)], lambda a: a[m])
    m1 = np.array([True, False, True])
    check((3, 4), lambda x: x[m1], lambda a: a[m1])
    check((4, 3), lambda x: x[:, m1], lambda a: a[:, m1])


def test_getitem_numpy_integer_scalars():
    check((4, 3), lambda x: x[np.int64(2), np.int32(-1)], lambda a: a[2, -1])


def test_repeated_indices_accumulate():
    x = ng.tensor([1.0, 2.0, 3.0], requires_grad=True)
    x[[0, 0, 2, 0]].sum().backward()
    np.testing.assert_array_equal(np.asarray(x.grad), [3.0, 0.0, 1.0])


def test_slice_backward_zeros_elsewhere():
    x = ng.tensor(np.ones((3, 4)), dtype=ng.float64, requires_grad=True)
    (x[1:, ::-2] * 2.0).sum().backward()
    expected = np.zeros((3, 4))
    expected[1:, ::-2] = 2.0
    np.testing.assert_array_equal(np.asarray(x.grad), expected)


def test_chained_views_gradcheck():
    gradcheck(lambda x: x[::-1].transpose(0, 1)[1:, None, ::2].reshape(-1)[[0, 3, 3]],
              [ng.tensor(_arr((4, 5)), requires_grad=True)])


@pytest.mark.parametrize("idx", [3, -4, (0, 5), (0, 0, 0), [0, 3], (slice(None), [-6]), (1, 2, 3, 4)], ids=repr)
def test_getitem_index_errors(idx):
    t = ng.tensor(_arr((3, 5)))
    with pytest.raises(IndexError):
        t[idx]


def test_getitem_other_errors():
    t = ng.tensor(_arr((3, 5)))
    with pytest.raises(IndexError):
        ng.tensor(1.0)[0]
    with pytest.raises(IndexError):
        t[..., ...]
    with pytest.raises(IndexError):
        t[[0], [1]]  # two advanced indices: not supported
    with pytest.raises(IndexError):
        t[ng.tensor([0.0, 1.0])]  # float indices
    with pytest.raises(IndexError):
        t[np.array([True, False])]  # mask of the wrong length
    with pytest.raises(IndexError):
        t["a"]
    with pytest.raises(ValueError):
        t[::0]
    assert ng.tensor(2.0)[...].shape == ()
    assert ng.tensor(2.0)[None].shape == (1,)


# ---------------------------------------------------------------------------------------
# __setitem__
# ---------------------------------------------------------------------------------------
SET_CASES = [
    ((slice(None), 1), 7.0), (0, np.arange(4.0)), ((slice(None, None, -1), slice(1, 3)), np.ones((3, 1))),
    ([2, 0, 2], -1.0), ((Ellipsis, [3, 0]), np.array([[1.0, 2.0]])), (None, 5.0), ((0, [1, 3]), 9.0),
]


@pytest.mark.parametrize("idx,value", SET_CASES, ids=repr)
def test_setitem(idx, value):
    a = _arr((3, 4))
    t = ng.tensor(a)
    v0 = t._version
    t[idx] = value
    a[idx] = value
    np.testing.assert_array_equal(np.asarray(t), a)
    assert t._version > v0


def test_setitem_tensor_value_and_mask():
    a = _arr((3, 4))
    t = ng.tensor(a)
    t[ng.tensor(a > 0)] = ng.tensor(0.0)
    a[a > 0] = 0.0
    np.testing.assert_array_equal(np.asarray(t), a)


def test_setitem_overlapping():
    a = np.arange(6.0)
    t = ng.tensor(a)
    t[1:] = t[:-1]
    a[1:] = a[:-1].copy()
    np.testing.assert_array_equal(np.asarray(t), a)


def test_setitem_writes_through_views():
    t = ng.zeros(2, 3)
    v = t.T
    v[1] = 5.0
    np.testing.assert_array_equal(np.asarray(t), [[0, 5, 0], [0, 5, 0]])


def test_setitem_errors():
    w = ng.zeros(2, 3, requires_grad=True)
    with pytest.raises(RuntimeError):
        w[0] = 1.0
    with ng.no_grad():
        w[0] = 1.0
    np.testing.assert_array_equal(np.asarray(w), [[1, 1, 1], [0, 0, 0]])
    y = w * 2.0
    with pytest.raises(RuntimeError):
        y[0] = 1.0
    t = ng.zeros(2, 3)
    with pytest.raises(RuntimeError):
        t[None].expand(4, 2, 3)[:, 0] = 1.0  # stride-0 (broadcast) memory
    with pytest.raises(ValueError):
        t[0] = np.ones(4)
    with pytest.raises(IndexError):
        t[2] = 1.0


# ---------------------------------------------------------------------------------------
# concatenate / stack
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concatenate(axis):
    shapes = {0: [(2, 3), (1, 3), (4, 3)], 1: [(2, 1), (2, 3), (2, 2)], -1: [(2, 1), (2, 3), (2, 2)]}[axis]
    arrs = [_arr(s) for s in shapes]
    out = ng.concatenate([ng.tensor(a) for a in arrs], axis)
    np.testing.assert_array_equal(np.asarray(out), np.concatenate(arrs, axis))
    gradcheck(lambda *xs: ng.concatenate(xs, axis), [ng.tensor(a, requires_grad=True) for a in arrs])


@pytest.mark.parametrize("axis", [0, 1, 2, -1, -3])
def test_stack(axis):
    arrs = [_arr((2, 3)) for _ in range(3)]
    out = ng.stack([ng.tensor(a) for a in arrs], axis)
    np.testing.assert_array_equal(np.asarray(out), np.stack(arrs, axis))
    gradcheck(lambda *xs: ng.stack(xs, axis), [ng.tensor(a, requires_grad=True) for a in arrs])


def test_concatenate_promotes_and_splits_gradient():
    a = ng.tensor(np.ones((2, 2), np.float32), requires_grad=True)
    b = ng.tensor(np.ones((1, 2)), dtype=ng.float64, requires_grad=True)
    i = ng.tensor([[1, 2]])
    c = ng.concatenate([a, b, i], 0)
    assert c.dtype == ng.float64 and c.shape == (4, 2)
    (c * ng.tensor(np.arange(8.0).reshape(4, 2))).sum().backward()
    assert a.grad.dtype == ng.float32 and b.grad.dtype == ng.float64
    np.testing.assert_array_equal(np.asarray(a.grad), [[0, 1], [2, 3]])
    np.testing.assert_array_equal(np.asarray(b.grad), [[4, 5]])


def test_concatenate_stack_errors():
    a, b = ng.zeros(2, 3), ng.zeros(2, 4)
    with pytest.raises(ValueError, match=r"\(2, 4\)"):
        ng.concatenate([a, b], 0)
    with pytest.raises(ValueError):
        ng.concatenate([], 0)
    with pytest.raises(ValueError):
        ng.stack([], 0)
    with pytest.raises(ValueError, match=r"\(2, 4\)"):
        ng.stack([a, b])
    with pytest.raises(ValueError):
        ng.concatenate([ng.tensor(1.0), ng.tensor(2.0)])
    with pytest.raises(ValueError):
        ng.concatenate([a, ng.zeros(2, 3, 1)], 0)
    with pytest.raises(IndexError):
        ng.concatenate([a, a], 2)
    with pytest.raises(IndexError):
        ng.stack([a, a], 3)


# ---------------------------------------------------------------------------------------
# shape-op errors
# ---------------------------------------------------------------------------------------
def test_shape_errors():
    t = ng.zeros(2, 3)
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(4, 2\)"):
        t.reshape(4, 2)
    with pytest.raises(ValueError):
        t.reshape(-1, -1)
    with pytest.raises(ValueError):
        t.reshape(4, -1)
    with pytest.raises(ValueError):
        t.permute(0, 0)
    with pytest.raises(ValueError):
        t.permute(0)
    with pytest.raises(IndexError):
        t.transpose(0, 2)
    with pytest.raises(ValueError):
        t.squeeze(0)
    with pytest.raises(IndexError):
        t.unsqueeze(3)
    with pytest.raises(ValueError):
        t.expand(3, 3)
    with pytest.raises(ValueError):
        t.flatten(1, 0)
    with pytest.raises(TypeError):
        t.reshape(2.0, 3)


# ---------------------------------------------------------------------------------------
# PyTorch comparisons (values and gradients)
# ---------------------------------------------------------------------------------------
def _torch_compare(shape, fn):
    torch = pytest.importorskip("torch")
    a = _arr(shape)
    x = ng.tensor(a, requires_grad=True)
    xt = torch.tensor(a, requires_grad=True)
    y, yt = fn(x, torch, x_is_torch=False), fn(xt, torch, x_is_torch=True)
    w = _arr(tuple(yt.shape))
    (y * ng.tensor(w)).sum().backward()
    (yt * torch.tensor(w)).sum().backward()
    np.testing.assert_allclose(np.asarray(y), yt.detach().numpy())
    np.testing.assert_allclose(np.asarray(x.grad), xt.grad.numpy())


def test_torch_index_gather():
    _torch_compare((4, 3), lambda x, torch, x_is_torch: x[[3, 1, 3, 3], 1:])


def test_torch_permute_reshape():
    _torch_compare((2, 3, 4), lambda x, torch, x_is_torch: x.permute(2, 0, 1).reshape(4, -1)[:, None, 2:])


def test_torch_expand_flatten():
    _torch_compare((3, 1), lambda x, torch, x_is_torch: x.expand(2, 3, 5).flatten(1))


def test_torch_stack_concatenate():
    def fn(x, torch, x_is_torch):
        if x_is_torch:
            return torch.cat([torch.stack([x, x * 2], 1), x[:, None]], 1)
        return ng.concatenate([ng.stack([x, x * 2], 1), x[:, None]], 1)

    _torch_compare((3, 4), fn)


def test_view_never_copies() -> None:
    t = ng.arange(6).reshape(2, 3)
    v = t.view(3, 2)
    assert v._same_storage(t) and v.shape == (3, 2)
    assert t.T.view(1, 3, 2).shape == (1, 3, 2)  # splitting/adding unit dims of a view is fine
    with pytest.raises(RuntimeError, match="reshape"):
        t.T.view(-1)  # flattening a transposed matrix needs a copy
    r = t.T.reshape(-1)  # reshape copies instead
    np.testing.assert_array_equal(np.asarray(r), np.arange(6).reshape(2, 3).T.reshape(-1))
