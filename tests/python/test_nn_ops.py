"""Tests of the nn ops: softmax, log_softmax, linear, layer_norm, dropout, the losses and
scaled_dot_product_attention. Forward against NumPy (float32 and float64), gradients by
finite differences (float64 gradcheck) for every op and reduction, PyTorch where present,
error types, numerical stability and dropout statistics/reproducibility."""

from __future__ import annotations

import numpy as np
import pytest

import nablagrad as ng
import nablagrad.functional as F
from nablagrad.autograd import gradcheck

DTYPES = [(np.float32, 1e-5), (np.float64, 1e-12)]
REDUCTIONS = ["mean", "sum", "none"]


def rng(seed=0):
    return np.random.default_rng(seed)


def T(a, requires_grad=False):
    return ng.tensor(np.ascontiguousarray(a), requires_grad=requires_grad)


def check_forward(ng_fn, np_fn, arrays, dtype, tol):
    """ng_fn(*tensors) against np_fn(*arrays) in `dtype`; also checks the result dtype."""
    arrays = [a.astype(dtype) if a.dtype.kind == "f" else a for a in arrays]
    out = ng_fn(*[T(a) for a in arrays])
    expected = np_fn(*[a.astype(np.float64) if a.dtype.kind == "f" else a for a in arrays])
    assert out.dtype == (ng.float32 if dtype == np.float32 else ng.float64)
    assert out.shape == np.shape(expected)
    np.testing.assert_allclose(np.asarray(out, dtype=np.float64), expected, rtol=tol * 10, atol=tol * 10)


def check_grad(fn, arrays):
    """gradcheck of fn w.r.t. every array (float64, all require grad)."""
    inputs = [T(a.astype(np.float64), requires_grad=True) for a in arrays]
    assert gradcheck(fn, inputs)


# ------------------------------------------------------------------ NumPy references
def np_softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def np_log_softmax(x, axis=-1):
    m = x.max(axis=axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


def np_layer_norm(x, k, w=None, b=None, eps=1e-5):
    axes = tuple(range(x.ndim - k, x.ndim))
    mu = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    y = (x - mu) / np.sqrt(var + eps)
    if w is not None:
        y = y * w
    if b is not None:
        y = y + b
    return y


def np_reduce(v, reduction):
    return {"mean": np.mean, "sum": np.sum, "none": lambda a: a}[reduction](v)


def np_cross_entropy(x, labels, reduction):
    return np_reduce(-np_log_softmax(x)[np.arange(len(labels)), labels], reduction)


def np_nll(lp, labels, reduction):
    return np_reduce(-lp[np.arange(len(labels)), labels], reduction)


def np_bce(x, t, reduction):
    return np_reduce(np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x))), reduction)


def np_sdpa(q, k, v, mask=None, causal=False):
    s = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
    if causal:
        mask = np.tril(np.ones((q.shape[-2], k.shape[-2]), dtype=bool))
    if mask is not None:
        s = np.where(mask, s, -np.inf) if mask.dtype == bool else s + mask
    return np_softmax(s) @ v


LABELS = np.array([2, 0, 4, 1, 4], dtype=np.int64)


# ------------------------------------------------------------------ softmax / log_softmax
@pytest.mark.parametrize("dtype,tol", DTYPES)
@pytest.mark.parametrize("axis", [-1, 0, 1, -2])
def test_softmax_forward(dtype, tol, axis):
    x = rng().standard_normal((3, 4, 5)) * 3
    check_forward(lambda a: F.softmax(a, axis), lambda a: np_softmax(a, axis), [x], dtype, tol)
    check_forward(lambda a: F.log_softmax(a, axis), lambda a: np_log_softmax(a, axis), [x], dtype, tol)


@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_softmax_grad(axis):
    x = rng(1).standard_normal((3, 4, 2))
    check_grad(lambda a: F.softmax(a, axis), [x])
    check_grad(lambda a: F.log_softmax(a, axis), [x])


def test_softmax_noncontiguous_input_and_rows_sum_to_one():
    x = ng.randn(6, 7)
    y = F.softmax(x * 1.0, 0)
    np.testing.assert_allclose(np.asarray(y).sum(axis=0), 1.0, rtol=1e-6)


def test_softmax_stable_for_huge_inputs():
    x = np.array([[1e4, 1e4 - 1, -1e4], [-1e30, 0.0, 1e30]], dtype=np.float32)
    y = np.asarray(F.softmax(T(x)))
    ly = np.asarray(F.log_softmax(T(x)))
    assert np.isfinite(y).all() and np.isfinite(ly).all()
    np.testing.assert_allclose(y, np_softmax(x.astype(np.float64)), atol=1e-6)


def test_softmax_errors():
    with pytest.raises(IndexError):
        F.softmax(ng.randn(2, 3), 2)
    with pytest.raises(IndexError):
        F.log_softmax(ng.randn(2, 3), -3)
    with pytest.raises(TypeError):
        F.softmax(ng.tensor([1, 2, 3]))


def test_softmax_torch():
    torch = pytest.importorskip("torch")
    x = rng(2).standard_normal((4, 6))
    for fn, tfn in ((F.softmax, torch.softmax), (F.log_softmax, torch.log_softmax)):
        a = T(x, requires_grad=True)
        ta = torch.tensor(x, requires_grad=True)
        g = rng(3).standard_normal((4, 6))
        fn(a, 0).backward(T(g))
        tfn(ta, 0).backward(torch.tensor(g))
        np.testing.assert_allclose(np.asarray(fn(a, 0)), tfn(ta, 0).detach().numpy(), atol=1e-12)
        np.testing.assert_allclose(np.asarray(a.grad), ta.grad.numpy(), atol=1e-12)


# ------------------------------------------------------------------ linear
@pytest.mark.parametrize("dtype,tol", DTYPES)
@pytest.mark.parametrize("xshape", [(5,), (3, 5), (2, 3, 5)])
def test_linear_forward(dtype, tol, xshape):
    r = rng(4)
    x, w, b = r.standard_normal(xshape), r.standard_normal((4, 5)), r.standard_normal(4)
    check_forward(F.linear, lambda x, w, b: x @ w.T + b, [x, w, b], dtype, tol)
    check_forward(F.linear, lambda x, w: x @ w.T, [x, w], dtype, tol)


@pytest.mark.parametrize("xshape", [(5,), (3, 5), (2, 3, 5)])
def test_linear_grad(xshape):
    r = rng(5)
    x, w, b = r.standard_normal(xshape), r.standard_normal((4, 5)), r.standard_normal(4)
    check_grad(F.linear, [x, w, b])
    check_grad(F.linear, [x, w])


def test_linear_and_layer_norm_grad_of_some_inputs_only():
    # Only the inputs that require grad get one (the backward skips the others' GEMMs).
    r = rng(25)
    x, w, b = r.standard_normal((3, 5)), r.standard_normal((4, 5)), r.standard_normal(4)
    check_grad(lambda w: F.linear(T(x), w, T(b)), [w])
    check_grad(lambda b: F.linear(T(x), T(w), b), [b])
    check_grad(lambda w: F.layer_norm(T(x), (5,), w, T(b[:1].repeat(5))), [w[0]])
    check_grad(lambda b: F.layer_norm(T(x), (5,), None, b), [w[0]])


def test_linear_errors():
    with pytest.raises(ValueError, match=r"\(3, 5\)"):
        F.linear(ng.randn(3, 5), ng.randn(4, 6))
    with pytest.raises(ValueError):
        F.linear(ng.randn(3, 5), ng.randn(4, 5), ng.randn(3))
    with pytest.raises(ValueError):
        F.linear(ng.randn(3, 5), ng.randn(4, 5, 1))
    with pytest.raises(TypeError):
        F.linear(ng.randn(3, 5), ng.randn(4, 5, dtype=ng.float64))


def test_linear_torch():
    torch = pytest.importorskip("torch")
    r = rng(6)
    x, w, b = r.standard_normal((2, 3, 5)), r.standard_normal((4, 5)), r.standard_normal(4)
    xs = [T(a, requires_grad=True) for a in (x, w, b)]
    ts = [torch.tensor(a, requires_grad=True) for a in (x, w, b)]
    F.linear(*xs).sum().backward()
    torch.nn.functional.linear(*ts).sum().backward()
    for a, ta in zip(xs, ts):
        np.testing.assert_allclose(np.asarray(a.grad), ta.grad.numpy(), atol=1e-12)


# ------------------------------------------------------------------ layer_norm
@pytest.mark.parametrize("dtype,tol", DTYPES)
@pytest.mark.parametrize("norm", [(6,), (4, 6)])
def test_layer_norm_forward(dtype, tol, norm):
    r = rng(7)
    x, w, b = r.standard_normal((3, 4, 6)) * 2 + 1, r.standard_normal(norm), r.standard_normal(norm)
    k = len(norm)
    tol = max(tol, 1e-5)
    check_forward(lambda x, w, b: F.layer_norm(x, norm, w, b), lambda x, w, b: np_layer_norm(x, k, w, b),
                  [x, w, b], dtype, tol)
    check_forward(lambda x: F.layer_norm(x, norm), lambda x: np_layer_norm(x, k), [x], dtype, tol)


@pytest.mark.parametrize("norm", [(6,), (2, 6)])
def test_layer_norm_grad(norm):
    r = rng(8)
    x, w, b = r.standard_normal((2, 2, 6)), r.standard_normal(norm), r.standard_normal(norm)
    check_grad(lambda x, w, b: F.layer_norm(x, norm, w, b), [x, w, b])
    check_grad(lambda x: F.layer_norm(x, norm), [x])
    check_grad(lambda x, w: F.layer_norm(x, norm, w), [x, w])


def test_layer_norm_int_normalized_shape():
    x = ng.randn(3, 5)
    np.testing.assert_allclose(np.asarray(F.layer_norm(x, 5)), np.asarray(F.layer_norm(x, [5])))


def test_layer_norm_errors():
    with pytest.raises(ValueError, match="normalized_shape"):
        F.layer_norm(ng.randn(3, 5), (4,))
    with pytest.raises(ValueError):
        F.layer_norm(ng.randn(3, 5), (3, 5, 1))
    with pytest.raises(ValueError):
        F.layer_norm(ng.randn(3, 5), (5,), ng.randn(4))
    with pytest.raises(TypeError):
        F.layer_norm(ng.randn(3, 5), (5,), ng.randn(5, dtype=ng.float64))


def test_layer_norm_torch():
    torch = pytest.importorskip("torch")
    r = rng(9)
    x, w, b = r.standard_normal((3, 4, 6)), r.standard_normal((4, 6)), r.standard_normal((4, 6))
    g = r.standard_normal((3, 4, 6))
    xs = [T(a, requires_grad=True) for a in (x, w, b)]
    ts = [torch.tensor(a, requires_grad=True) for a in (x, w, b)]
    y = F.layer_norm(xs[0], (4, 6), xs[1], xs[2], eps=1e-3)
    ty = torch.nn.functional.layer_norm(ts[0], (4, 6), ts[1], ts[2], eps=1e-3)
    np.testing.assert_allclose(np.asarray(y), ty.detach().numpy(), atol=1e-12)
    y.backward(T(g))
    ty.backward(torch.tensor(g))
    for a, ta in zip(xs, ts):
        np.testing.assert_allclose(np.asarray(a.grad), ta.grad.numpy(), atol=1e-10)


# ------------------------------------------------------------------ dropout
def test_dropout_statistics_and_scale():
    ng.manual_seed(0)
    x = ng.ones(200, 500)
    y = np.asarray(F.dropout(x, 0.25))
    kept = y != 0
    assert abs(kept.mean() - 0.75) < 0.01
    np.testing.assert_allclose(y[kept], 1 / 0.75, rtol=1e-6)


def test_dropout_reproducible_with_seed_and_thread_count():
    x = ng.randn(64, 300)
    ng.manual_seed(123)
    a = np.asarray(F.dropout(x, 0.5))
    before = ng.get_num_threads()
    try:
        ng.set_num_threads(1 if before > 1 else 2)
        ng.manual_seed(123)
        b = np.asarray(F.dropout(x, 0.5))
    finally:
        ng.set_num_threads(before)
    c = np.asarray(F.dropout(x, 0.5))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("dtype", [ng.float32, ng.float64])
def test_dropout_backward_every_element(dtype):
    # PITFALLS 9: the mask must apply to every sample and channel (N, C > 1).
    ng.manual_seed(5)
    x = ng.randn(4, 3, 5, 5, dtype=dtype, requires_grad=True)
    y = F.dropout(x, 0.4)
    g = rng(10).standard_normal((4, 3, 5, 5))
    y.backward(T(g))
    mask = np.asarray(y) / np.asarray(x.detach())  # 0 or 1/(1-p)
    np.testing.assert_allclose(np.asarray(x.grad), g * mask, rtol=1e-5, atol=1e-6)
    dropped = np.asarray(y) == 0
    assert dropped.any() and (~dropped).any()
    for n in range(4):
        for c in range(3):
            assert (np.asarray(x.grad)[n, c][dropped[n, c]] == 0).all()
            assert (np.asarray(x.grad)[n, c][~dropped[n, c]] != 0).all()


def test_dropout_edge_cases():
    x = ng.randn(3, 4, requires_grad=True)
    z = F.dropout(x, 1.0)
    assert (np.asarray(z) == 0).all() and np.isfinite(np.asarray(z)).all()
    z.sum().backward()
    assert (np.asarray(x.grad) == 0).all()
    assert F.dropout(x, 0.5, training=False) is x
    assert F.dropout(x, 0.0) is x
    with pytest.raises(ValueError):
        F.dropout(x, 1.5)
    with pytest.raises(ValueError):
        ng._core.dropout(x, -0.1)
    with pytest.raises(TypeError):
        F.dropout(ng.tensor([1, 2]), 0.5)


# ------------------------------------------------------------------ losses
@pytest.mark.parametrize("dtype,tol", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_losses_forward(dtype, tol, reduction):
    r = rng(11)
    x, y = r.standard_normal((5, 5)) * 3, r.standard_normal((5, 5))
    t01 = r.uniform(size=(5, 5))
    check_forward(lambda a, b: F.mse_loss(a, b, reduction), lambda a, b: np_reduce((a - b) ** 2, reduction),
                  [x, y], dtype, tol)
    check_forward(lambda a: F.cross_entropy(a, T(LABELS), reduction),
                  lambda a: np_cross_entropy(a, LABELS, reduction), [x], dtype, tol)
    check_forward(lambda a: F.nll_loss(a, T(LABELS), reduction), lambda a: np_nll(a, LABELS, reduction),
                  [x], dtype, tol)
    check_forward(lambda a, b: F.binary_cross_entropy_with_logits(a, b, reduction),
                  lambda a, b: np_bce(a, b, reduction), [x, t01], dtype, tol)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_losses_grad(reduction):
    r = rng(12)
    x, y, t01 = r.standard_normal((5, 5)), r.standard_normal((5, 5)), r.uniform(size=(5, 5))
    check_grad(lambda a, b: F.mse_loss(a, b, reduction), [x, y])
    check_grad(lambda a: F.cross_entropy(a, T(LABELS), reduction), [x])
    check_grad(lambda a: F.nll_loss(a, T(LABELS), reduction), [x])
    check_grad(lambda a, b: F.binary_cross_entropy_with_logits(a, b, reduction), [x, t01])
    check_grad(lambda a: F.nll_loss(F.log_softmax(a), T(LABELS), reduction), [x])


def test_cross_entropy_gradient_is_softmax_minus_onehot():
    x = rng(13).standard_normal((5, 5))
    a = T(x, requires_grad=True)
    F.cross_entropy(a, T(LABELS)).backward()
    expected = np_softmax(x)
    expected[np.arange(5), LABELS] -= 1
    np.testing.assert_allclose(np.asarray(a.grad), expected / 5, atol=1e-12)


def test_losses_stable_for_huge_logits():
    x = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 5e3]], dtype=np.float32)
    for reduction in REDUCTIONS:
        a = T(x, requires_grad=True)
        loss = F.cross_entropy(a, ng.tensor([1, 2]), reduction)
        assert np.isfinite(np.asarray(loss)).all()
        loss.sum().backward() if reduction == "none" else loss.backward()
        assert np.isfinite(np.asarray(a.grad)).all()
    np.testing.assert_allclose(float(F.cross_entropy(T(x), ng.tensor([1, 2]), "sum")), 2e4 + 5e3, rtol=1e-6)
    b = T(x, requires_grad=True)
    bce = F.binary_cross_entropy_with_logits(b, T(np.ones_like(x)), "sum")
    assert np.isfinite(float(bce))
    np.testing.assert_allclose(float(bce), 2e4 + np.log(2), rtol=1e-6)  # only the negative logits cost
    bce.backward()
    assert np.isfinite(np.asarray(b.grad)).all()


def test_loss_errors():
    x = ng.randn(5, 5)
    with pytest.raises(ValueError, match=r"\(5, 1\)"):
        F.mse_loss(ng.randn(5), ng.randn(5, 1))
    with pytest.raises(TypeError):
        F.cross_entropy(x, ng.tensor([0.0, 1.0, 2.0, 3.0, 4.0]))
    with pytest.raises(IndexError, match="7"):
        F.cross_entropy(x, ng.tensor([0, 1, 7, 3, 4]))
    with pytest.raises(IndexError):
        F.nll_loss(x, ng.tensor([0, 1, -1, 3, 4]))
    with pytest.raises(ValueError):
        F.cross_entropy(ng.randn(5, 5, 2), ng.tensor([0, 1, 2, 3, 4]))
    with pytest.raises(ValueError):
        F.cross_entropy(x, ng.tensor([0, 1, 2]))
    with pytest.raises(ValueError):
        F.nll_loss(x, ng.tensor([[0, 1, 2, 3, 4]]))
    with pytest.raises(ValueError):
        F.binary_cross_entropy_with_logits(ng.randn(3, 2), ng.rand(2, 3))
    with pytest.raises(ValueError):
        F.mse_loss(x, x, "avg")
    with pytest.raises(ValueError):
        ng._core.mse_loss(x, x, "avg")


def test_loss_targets_accept_numpy():
    x = rng(14).standard_normal((3, 2))
    y = rng(15).standard_normal((3, 2))
    np.testing.assert_allclose(float(F.mse_loss(T(x), y)), np.mean((x - y) ** 2), rtol=1e-12)
    np.testing.assert_allclose(float(F.cross_entropy(T(x), np.array([0, 1, 1]))),
                               np_cross_entropy(x, np.array([0, 1, 1]), "mean"), rtol=1e-12)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_losses_torch(reduction):
    torch = pytest.importorskip("torch")
    tf = torch.nn.functional
    r = rng(16)
    x, y, t01 = r.standard_normal((5, 5)), r.standard_normal((5, 5)), r.uniform(size=(5, 5))
    lab = torch.tensor(LABELS)
    cases = [
        (lambda a, b: F.mse_loss(a, b, reduction), lambda a, b: tf.mse_loss(a, b, reduction=reduction), [x, y]),
        (lambda a: F.cross_entropy(a, T(LABELS), reduction),
         lambda a: tf.cross_entropy(a, lab, reduction=reduction), [x]),
        (lambda a: F.nll_loss(a, T(LABELS), reduction), lambda a: tf.nll_loss(a, lab, reduction=reduction), [x]),
        (lambda a, b: F.binary_cross_entropy_with_logits(a, b, reduction),
         lambda a, b: tf.binary_cross_entropy_with_logits(a, b, reduction=reduction), [x, t01]),
    ]
    for fn, tfn, arrays in cases:
        xs = [T(a, requires_grad=True) for a in arrays]
        ts = [torch.tensor(a, requires_grad=True) for a in arrays]
        out, tout = fn(*xs), tfn(*ts)
        np.testing.assert_allclose(np.asarray(out), tout.detach().numpy(), atol=1e-12)
        out.sum().backward()
        tout.sum().backward()
        for a, ta in zip(xs, ts):
            np.testing.assert_allclose(np.asarray(a.grad), ta.grad.numpy(), atol=1e-12)


# ------------------------------------------------------------------ attention
def _attention_inputs(seed, L=3, S=4, d=5):
    r = rng(seed)
    return r.standard_normal((2, 2, L, d)), r.standard_normal((2, 2, S, d)), r.standard_normal((2, 2, S, 3))


def _bool_mask(L=3, S=4):
    m = rng(20).uniform(size=(L, S)) > 0.4
    m[:, 0] = True  # every row attends somewhere
    return m


@pytest.mark.parametrize("dtype,tol", DTYPES)
@pytest.mark.parametrize("mode", ["plain", "bool", "float", "causal"])
def test_attention_forward(dtype, tol, mode):
    q, k, v = _attention_inputs(17, S=3 if mode == "causal" else 4)
    tol = max(tol, 1e-6)
    if mode == "plain":
        check_forward(F.scaled_dot_product_attention, np_sdpa, [q, k, v], dtype, tol)
    elif mode == "causal":
        check_forward(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
                      lambda q, k, v: np_sdpa(q, k, v, causal=True), [q, k, v], dtype, tol)
    else:
        m = _bool_mask() if mode == "bool" else rng(21).standard_normal((3, 4)).astype(dtype)
        check_forward(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=T(m)),
                      lambda q, k, v: np_sdpa(q, k, v, mask=m), [q, k, v], dtype, tol)


@pytest.mark.parametrize("mode", ["plain", "bool", "float", "causal"])
def test_attention_grad(mode):
    q, k, v = _attention_inputs(18, S=3 if mode == "causal" else 4)
    kwargs = {"is_causal": True} if mode == "causal" else {}
    if mode == "bool":
        kwargs["attn_mask"] = T(_bool_mask())
    if mode == "float":
        kwargs["attn_mask"] = T(rng(22).standard_normal((3, 4)))
    check_grad(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, **kwargs), [q, k, v])


def test_attention_errors():
    q = ng.randn(1, 2, 3, 4)
    with pytest.raises(ValueError):
        F.scaled_dot_product_attention(q, ng.randn(1, 2, 3, 5), ng.randn(1, 2, 3, 4))
    with pytest.raises(ValueError):
        F.scaled_dot_product_attention(q, q, ng.randn(1, 2, 5, 4))
    with pytest.raises(ValueError):
        F.scaled_dot_product_attention(q, q, q, attn_mask=ng.ones(3, 3, dtype=ng.bool), is_causal=True)


@pytest.mark.parametrize("mode", ["plain", "bool", "float", "causal"])
def test_attention_torch(mode):
    torch = pytest.importorskip("torch")
    q, k, v = _attention_inputs(19, S=3 if mode == "causal" else 4)
    kwargs, tkwargs = {}, {}
    if mode == "causal":
        kwargs = tkwargs = {"is_causal": True}
    elif mode != "plain":
        m = _bool_mask() if mode == "bool" else rng(23).standard_normal((3, 4))
        kwargs, tkwargs = {"attn_mask": T(m)}, {"attn_mask": torch.tensor(m)}
    xs = [T(a, requires_grad=True) for a in (q, k, v)]
    ts = [torch.tensor(a, requires_grad=True) for a in (q, k, v)]
    out = F.scaled_dot_product_attention(*xs, **kwargs)
    tout = torch.nn.functional.scaled_dot_product_attention(*ts, **tkwargs)
    np.testing.assert_allclose(np.asarray(out), tout.detach().numpy(), atol=1e-10)
    g = rng(24).standard_normal(tout.shape)
    out.backward(T(g))
    tout.backward(torch.tensor(g))
    for a, ta in zip(xs, ts):
        np.testing.assert_allclose(np.asarray(a.grad), ta.grad.numpy(), atol=1e-10)
