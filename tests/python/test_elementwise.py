"""Elementwise ops: forward vs NumPy (float32, float64), gradients by finite differences,
broadcasting gradients, where; PyTorch comparisons where it is installed."""

from __future__ import annotations

import math

import numpy as np
import pytest

import nablagrad as ng
import nablagrad.functional as F
from conftest import assert_close, check_op, check_torch

_erf = np.vectorize(math.erf, otypes=[np.float64])


def np_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def np_gelu(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def np_gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


S = [(3, 4)]


def _m(name):
    """The Tensor method ``name`` as a function."""
    return lambda x, *a: getattr(x, name)(*a)


exp, log, sqrt, absm, tanh, sigmoid, relu, neg = (_m(n) for n in ("exp", "log", "sqrt", "abs", "tanh", "sigmoid", "relu", "__neg__"))


def test_exp(): check_op(np.exp, exp, S)
def test_log(): check_op(np.log, log, S, low=0.1, high=3.0)
def test_sqrt(): check_op(np.sqrt, sqrt, S, low=0.1, high=3.0)
def test_abs(): check_op(np.abs, absm, S, away_from=[0.0])
def test_abs_operator(): check_op(np.abs, lambda x: abs(x), S, away_from=[0.0])
def test_tanh(): check_op(np.tanh, tanh, S)
def test_tanh_functional(): check_op(np.tanh, F.tanh, S)
def test_sigmoid_functional(): check_op(np_sigmoid, F.sigmoid, S)
def test_relu_method(): check_op(lambda x: np.maximum(x, 0), relu, S, away_from=[0.0])
def test_sigmoid(): check_op(np_sigmoid, sigmoid, S, low=-6, high=6)
def test_relu(): check_op(lambda x: np.maximum(x, 0), F.relu, S, away_from=[0.0])
def test_leaky_relu(): check_op(lambda x: np.where(x > 0, x, 0.01 * x), F.leaky_relu, S, away_from=[0.0])
def test_leaky_relu_slope(): check_op(lambda x: np.where(x > 0, x, 0.2 * x), lambda x: F.leaky_relu(x, 0.2), S, away_from=[0.0])
def test_gelu_exact(): check_op(np_gelu, F.gelu, S, low=-4, high=4)
def test_gelu_tanh(): check_op(np_gelu_tanh, lambda x: F.gelu(x, approximate="tanh"), S, low=-4, high=4)
def test_clip(): check_op(lambda x: np.clip(x, -0.5, 1.0), lambda x: ng._core.clip(x, -0.5, 1.0), S, away_from=[-0.5, 1.0])
def test_clip_method(): check_op(lambda x: np.clip(x, -0.5, 1.0), lambda x: x.clip(-0.5, 1.0), S, away_from=[-0.5, 1.0])
def test_clip_lower_only(): check_op(lambda x: np.maximum(x, 0.3), lambda x: x.clip(0.3), S, away_from=[0.3])
def test_clip_upper_only(): check_op(lambda x: np.minimum(x, 0.3), lambda x: x.clip(hi=0.3), S, away_from=[0.3])
def test_neg(): check_op(np.negative, neg, S)
def test_neg_operator(): check_op(np.negative, lambda x: -x, S)
def test_pow_scalar(): check_op(lambda x: x**3, lambda x: x**3, S)
def test_pow_fractional(): check_op(lambda x: x**1.5, lambda x: x**1.5, S, low=0.1, high=3.0)
def test_pow_negative_exponent(): check_op(lambda x: x**-2.0, lambda x: x**-2.0, S, low=0.5, high=3.0)
def test_pow_tensor(): check_op(np.power, lambda a, b: a**b, [(3, 4), (3, 4)], low=0.5, high=2.0)
def test_pow_function(): check_op(np.power, ng._core.pow, [(3, 4), (4,)], low=0.5, high=2.0)
def test_rpow(): check_op(lambda x: 2.0**x, lambda x: 2.0**x, S)
def test_method_forms(): check_op(lambda x: np.exp(np.tanh(x)), lambda x: x.tanh().exp(), S)
def test_methods_sqrt_log(): check_op(lambda x: np.log(np.sqrt(x)), lambda x: x.sqrt().log(), S, low=0.1, high=3.0)
def test_methods_sigmoid_relu_abs(): check_op(lambda x: np.abs(np.maximum(np_sigmoid(x) - 0.5, 0)), lambda x: (x.sigmoid() - 0.5).relu().abs(), S, away_from=[0.0])


# arithmetic with broadcasting: the gradient is summed back to each input's shape
def test_add_bcast_trailing(): check_op(np.add, lambda a, b: a + b, [(2, 3, 4), (4,)])
def test_mul_outer(): check_op(np.multiply, lambda a, b: a * b, [(3, 1), (1, 4)])
def test_sub_bcast_middle(): check_op(np.subtract, lambda a, b: a - b, [(2, 1, 4), (3, 1)])
def test_div_bcast(): check_op(np.divide, lambda a, b: a / b, [(2, 3), (3,)], low=0.5, high=2.0)
def test_rdiv_bcast(): check_op(np.divide, lambda a, b: a / b, [(3,), (2, 3)], low=0.5, high=2.0)
def test_scalar_tensor_operand(): check_op(np.multiply, lambda a, b: a * b, [(), (2, 3)])
def test_scalar_tensors(): check_op(lambda a, b: a * b + a, lambda a, b: a * b + a, [(), ()])
def test_self_mul(): check_op(lambda a: a * a, lambda a: a * a, S)
def test_self_div(): check_op(lambda a, b: (a - b) / (a + b + 5), lambda a, b: (a - b) / (a + b + 5), [(2, 3), (2, 3)])
def test_size_zero(): check_op(np.add, lambda a, b: a + b, [(0, 3), (3,)])


def test_broadcast_gradient_shapes():
    a = ng.ones(3, 1, requires_grad=True)
    b = ng.ones(1, 4, requires_grad=True)
    c = ng.tensor(2.0, requires_grad=True)
    (a * b * c).sum().backward()
    assert a.grad.shape == (3, 1) and b.grad.shape == (1, 4) and c.grad.shape == ()
    assert_close(a.grad, np.full((3, 1), 8.0))
    assert_close(b.grad, np.full((1, 4), 6.0))
    assert_close(c.grad, 12.0)


def test_mixed_dtype_gradients():
    a = ng.tensor([1.0, 2.0], requires_grad=True)
    b = ng.tensor([3.0, 4.0], dtype=ng.float64, requires_grad=True)
    y = a * b
    assert y.dtype == ng.float64
    y.sum().backward()
    assert a.grad.dtype == ng.float32 and b.grad.dtype == ng.float64
    assert_close(a.grad, [3.0, 4.0])
    assert_close(b.grad, [1.0, 2.0])


def test_int_input_does_not_need_grad():
    x = ng.tensor([1.0, 2.0], requires_grad=True)
    i = ng.tensor([3, 4])
    (x * i).sum().backward()
    assert_close(x.grad, [3.0, 4.0], dtype=np.float32)


@pytest.mark.parametrize("fn", [exp, log, sqrt, tanh, sigmoid, relu, F.gelu])
def test_float_ops_reject_int(fn):
    with pytest.raises(TypeError):
        fn(ng.tensor([1, 2]))


def test_clip_lo_above_hi_gives_hi():
    # NumPy and PyTorch: min(max(x, lo), hi), so lo > hi gives hi everywhere.
    np.testing.assert_array_equal(ng.tensor([0.0, 1.5, 3.0]).clip(2.0, 1.0).numpy(), [1.0, 1.0, 1.0])


def test_noncontiguous_input():
    a = np.arange(12.0).reshape(3, 4) / 10.0
    t = ng.from_numpy(a.T)
    assert not t.is_contiguous()
    assert_close(exp(t), np.exp(a.T), rtol=1e-12)
    assert_close(t + ng.from_numpy(a.T), 2 * a.T, rtol=1e-12)
    assert_close(t * ng.tensor([1.0, 2.0, 3.0], dtype=ng.float64), a.T * [1.0, 2.0, 3.0], rtol=1e-12)


def test_special_values():
    x = ng.tensor([0.0, -1.0, np.inf], dtype=ng.float64)
    with np.errstate(all="ignore"):
        assert_close(log(x), np.log(np.asarray(x)))
        assert np.isnan(np.asarray(sqrt(x))[1])
    s = np.asarray(sigmoid(ng.tensor([-1000.0, 1000.0])))
    assert np.isfinite(s).all() and s[0] == 0.0 and s[1] == 1.0
    assert np.isnan(np.asarray(ng.tensor([np.nan]).clip(0.0, 1.0)))[0]


# --------------------------------------------------------------------------------------
# where
# --------------------------------------------------------------------------------------
def test_where():
    cond = np.array([[True, False, True], [False, False, True]])
    check_op(lambda a, b: np.where(cond, a, b), lambda a, b: ng.where(ng.tensor(cond), a, b), [(2, 3), (2, 3)])


def test_where_broadcast():
    cond = np.array([True, False, True])
    check_op(lambda a, b: np.where(cond, a, b), lambda a, b: ng.where(ng.tensor(cond), a, b), [(2, 1), (3,)])


def test_where_scalars_and_arrays():
    x = ng.tensor([-1.0, 2.0, -3.0], requires_grad=True)
    y = ng.where(x > 0, x, 0.0)
    assert y.dtype == ng.float32
    assert_close(y, [0.0, 2.0, 0.0])
    y.sum().backward()
    assert_close(x.grad, [0.0, 1.0, 0.0])
    assert_close(ng.where(np.array([True, False]), 1.0, ng.tensor([5.0, 6.0])), [1.0, 6.0])
    with pytest.raises(ValueError):
        ng.where(ng.tensor([True, False]), ng.zeros(3), ng.zeros(3))


# --------------------------------------------------------------------------------------
# PyTorch cross-checks (skipped without torch)
# --------------------------------------------------------------------------------------
def _t(name):
    def f(*a):
        import torch
        return getattr(torch, name)(*a)
    return f


@pytest.mark.parametrize(
    "tfn, nfn, kw",
    [
        (_t("exp"), exp, {}),
        (_t("tanh"), tanh, {}),
        (_t("sigmoid"), sigmoid, {}),
        (_t("relu"), relu, {}),
        (lambda x: __import__("torch").nn.functional.gelu(x), F.gelu, {}),
        (lambda x: __import__("torch").nn.functional.gelu(x, approximate="tanh"), lambda x: F.gelu(x, approximate="tanh"), {}),
        (lambda x: __import__("torch").nn.functional.leaky_relu(x, 0.1), lambda x: F.leaky_relu(x, 0.1), {}),
        (lambda x: x.clamp(-0.5, 0.5), lambda x: x.clip(-0.5, 0.5), {}),
        (lambda x: x.abs().sqrt(), lambda x: x.abs().sqrt(), {}),
        (lambda x: x.abs().log(), lambda x: x.abs().log(), {}),
        (lambda x: x ** 3, lambda x: x ** 3, {}),
    ],
)
def test_unary_vs_torch(tfn, nfn, kw):
    check_torch(tfn, nfn, [(4, 5)], **kw)


def test_binary_broadcast_vs_torch():
    check_torch(lambda a, b: a * b + a / (b * b + 1) - b, lambda a, b: a * b + a / (b * b + 1) - b, [(2, 3, 4), (3, 1)])


def test_clip_at_bounds_vs_torch():
    x = np.array([-1.0, -0.5, 0.0, 0.5, 1.0])
    check_torch(lambda t: t.clamp(-0.5, 0.5), lambda t: t.clip(-0.5, 0.5), [], inputs=[x])


def test_relu_grad_is_a_select_vs_torch():
    """PyTorch's threshold_backward: dy where x > 0 or x is NaN, else 0, so an infinite or NaN
    upstream gradient at x <= 0 gives 0, not inf * 0 = NaN. Long enough for the vector body."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    for dt, tdt in ((np.float32, torch.float32), (np.float64, torch.float64)):
        x = rng.standard_normal(1003).astype(dt)
        x[::7] = np.nan
        x[3::11] = 0.0
        dy = rng.standard_normal(1003).astype(dt)
        dy[::5] = np.inf
        dy[1::13] = np.nan
        tx = torch.tensor(x, dtype=tdt, requires_grad=True)
        torch.relu(tx).backward(torch.tensor(dy, dtype=tdt))
        nx = ng.tensor(x, requires_grad=True)
        F.relu(nx).backward(ng.tensor(dy))
        np.testing.assert_array_equal(nx.grad.numpy(), tx.grad.numpy())
        np.testing.assert_array_equal(F.relu(ng.tensor(x)).numpy(), torch.relu(torch.tensor(x)).numpy())


def test_relu_abs_at_zero_vs_torch():
    x = np.array([-1.0, 0.0, 1.0])
    check_torch(lambda t: t.relu() + t.abs(), lambda t: t.relu() + t.abs(), [], inputs=[x])
