"""Degenerate cases and edge values have PyTorch's behaviour (issue 11).

Expected values are written out where PyTorch's behaviour is simple, so the core of each test
runs without PyTorch; the comparisons with PyTorch itself skip cleanly when it is absent.
"""

from __future__ import annotations

import numpy as np
import pytest

import nablagrad as ng
import nablagrad.functional as F

NAN, INF = float("nan"), float("inf")


def grad_of(fn, values, dtype=ng.float32):  # type: ignore[no-untyped-def]
    x = ng.tensor(np.asarray(values, dtype=np.float64), dtype=dtype, requires_grad=True)
    fn(x).sum().backward()
    return np.asarray(x.grad)


def same(got, want) -> None:  # type: ignore[no-untyped-def]
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want, dtype=np.asarray(got).dtype))


# --------------------------------------------------------------------------- edge values
@pytest.mark.parametrize("e,want", [(0.5, [INF, INF, 0.35355339]), (-1.0, [-INF, -INF, -0.25]),
                                    (0.0, [0.0, 0.0, 0.0]), (2.0, [0.0, 0.0, 4.0]), (1.0, [1.0, 1.0, 1.0]),
                                    (-0.5, [-INF, -INF, -0.1767767])])
def test_pow_gradient_at_zero_base(e: float, want: list) -> None:
    # d/dx x^e = e x^(e-1): -inf/inf where the maths diverges, 0 for e = 0 (PyTorch's values)
    np.testing.assert_allclose(grad_of(lambda x: x ** e, [0.0, -0.0, 2.0]), want, rtol=1e-6)


def test_pow_tensor_exponent_at_zero_and_negative_base() -> None:
    b = ng.tensor([0.0, 0.0, -1.0], requires_grad=True)
    e = ng.tensor([0.5, 2.0, 0.5], requires_grad=True)
    y = b ** e
    y.sum().backward()
    same(np.isnan(np.asarray(y)), [False, False, True])
    same(b.grad, [INF, 0.0, NAN])
    same(e.grad, [0.0, 0.0, NAN])  # d/de at a zero base is 0 (PyTorch), not out * log(0)


@pytest.mark.parametrize("dtype", [ng.float32, ng.float64])
def test_clip_with_lo_above_hi_gives_hi(dtype) -> None:  # type: ignore[no-untyped-def]
    # regression: clip(lo, hi) with lo > hi raised ValueError; NumPy and PyTorch give hi everywhere
    x = ng.tensor([1.0, 2.0, 5.0, NAN], dtype=dtype, requires_grad=True)
    y = x.clip(3, 2)
    same(y, [2.0, 2.0, 2.0, NAN])
    y.sum().backward()
    same(x.grad, [0.0, 0.0, 0.0, 0.0])  # PyTorch: no element lies in [lo, hi]
    same(np.clip(np.array([1.0, 2.0, 5.0]), 3, 2), [2.0, 2.0, 2.0])
    same(ng.tensor([0.0, 9.0]).clip(4.0, -1.0), [-1.0, -1.0])


def test_clip_gradient_at_the_bounds() -> None:
    same(grad_of(lambda x: x.clip(0.0, 1.0), [0.0, 1.0, 0.5, -0.0, 2.0, -1.0]), [1, 1, 1, 1, 0, 0])


@pytest.mark.parametrize("dtype", [ng.float32, ng.float64])
def test_softmax_family_finite_at_large_logits(dtype) -> None:  # type: ignore[no-untyped-def]
    x = ng.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0]], dtype=dtype, requires_grad=True)
    same(F.softmax(x), [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    ls = F.log_softmax(x)
    same(ls, [[0.0, -2e4, -1e4], [-2e4, 0.0, -1e4]])
    ls.sum().backward()
    same(x.grad, [[-2.0, 1.0, 1.0], [1.0, -2.0, 1.0]])
    x.grad = None
    loss = F.cross_entropy(x, ng.tensor([1, 0]))
    same(loss, 2e4)
    loss.backward()
    same(x.grad, [[0.5, -0.5, 0.0], [-0.5, 0.5, 0.0]])
    x.grad = None
    loss = F.cross_entropy(x, ng.tensor([0, 1]))
    same(loss, 0.0)
    loss.backward()
    same(x.grad, [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])


def test_gradients_at_ties() -> None:
    v = [0.0, 1.0, 1.0, -0.0]
    same(grad_of(lambda x: x.relu(), v), [0, 1, 1, 0])                  # relu'(0) = 0
    same(grad_of(lambda x: x.abs(), v), [0, 1, 1, 0])                   # sign(0) = 0
    same(grad_of(lambda x: F.leaky_relu(x), v), [0.01, 1, 1, 0.01])     # slope at 0 (PyTorch)
    same(grad_of(lambda x: x.max(), v), [0, 0.5, 0.5, 0])               # torch.max(): evenly shared
    same(grad_of(lambda x: x.min(), v), [0.5, 0, 0, 0.5])
    # max over an axis is torch.amax (values only): ties share the gradient evenly
    same(grad_of(lambda x: x.reshape(2, 2).max(axis=1), [1.0, 1.0, 3.0, 2.0]), [0.5, 0.5, 1, 0])


def test_gradients_at_ties_vs_torch() -> None:
    torch = pytest.importorskip("torch")
    v = [0.0, 1.0, 1.0, -0.0, 2.0, 2.0]
    for ng_fn, t_fn in [(lambda x: x.relu(), torch.relu), (lambda x: x.abs(), torch.abs),
                        (lambda x: x.max(), torch.max), (lambda x: x.min(), torch.min),
                        (lambda x: x.reshape(2, 3).max(axis=1), lambda t: t.reshape(2, 3).amax(dim=1)),
                        (lambda x: x.clip(1.0, 0.5), lambda t: t.clamp(1.0, 0.5)),
                        (lambda x: x.sqrt(), torch.sqrt), (lambda x: x ** 0.5, lambda t: t ** 0.5)]:
        # (at -0.0 torch's t ** 0.5 takes sqrt's -inf; ours is pow's +inf: compared without -0.0)
        vals = [abs(e) for e in v] if t_fn not in (torch.sqrt, torch.abs, torch.relu) else v
        t = torch.tensor(vals, requires_grad=True)
        t_fn(t).sum().backward()
        np.testing.assert_array_equal(grad_of(ng_fn, vals), t.grad.numpy())


def test_division_by_zero_is_ieee() -> None:
    same(ng.tensor([1.0, -1.0, 0.0]) / 0.0, [INF, -INF, NAN])
    same(ng.tensor([1.0, -1.0, 0.0]) / ng.tensor([0.0, -0.0, 0.0]), [INF, INF, NAN])
    same(ng.tensor([1, -1, 0]) / ng.tensor([0, 0, 0]), [INF, -INF, NAN])  # int true division -> float32
    same(1.0 / ng.tensor([0.0, -0.0]), [INF, -INF])
    x = ng.tensor([1.0, 0.0], requires_grad=True)
    (x / 0.0).sum().backward()
    same(x.grad, [INF, INF])


# --------------------------------------------------------------------------- degenerate shapes
@pytest.mark.parametrize("cls", ["RNN", "LSTM", "GRU"])
def test_recurrent_empty_batch(cls: str) -> None:
    m = getattr(ng.nn, cls)(3, 4, num_layers=2)
    x = ng.zeros(0, 5, 3, requires_grad=True)
    out, h = m(x)
    hn = h[0] if isinstance(h, tuple) else h
    assert out.shape == (0, 5, 4) and hn.shape == (2, 0, 4)
    out.sum().backward()
    assert x.grad.shape == (0, 5, 3)
    for p in m.parameters():
        assert p.grad is None or not np.asarray(p.grad).any()


@pytest.mark.parametrize("cls", ["RNN", "LSTM", "GRU"])
def test_recurrent_single_step_matches_torch(cls: str) -> None:
    torch = pytest.importorskip("torch")
    ng.manual_seed(0)
    m = getattr(ng.nn, cls)(3, 4)
    t = getattr(torch.nn, cls)(3, 4, batch_first=True)
    with torch.no_grad():
        for name, p in t.named_parameters():
            p.copy_(torch.tensor(np.asarray(getattr(m, name).detach())))
    x = np.random.default_rng(1).standard_normal((2, 1, 3)).astype(np.float32)
    out, h = m(ng.tensor(x))
    tout, th = t(torch.tensor(x))
    np.testing.assert_allclose(np.asarray(out), tout.detach().numpy(), rtol=1e-5, atol=1e-6)
    hn = h[0] if isinstance(h, tuple) else h
    np.testing.assert_allclose(np.asarray(out)[:, -1], np.asarray(hn)[0], rtol=0, atol=0)


def test_recurrent_single_step_is_one_cell() -> None:
    m = ng.nn.RNN(2, 3)
    x = np.array([[[0.5, -1.0]]], dtype=np.float32)
    out, h = m(ng.tensor(x))
    w_ih, w_hh = np.asarray(m.weight_ih_l0.detach()), np.asarray(m.weight_hh_l0.detach())
    b = np.asarray(m.bias_ih_l0.detach()) + np.asarray(m.bias_hh_l0.detach())
    np.testing.assert_allclose(np.asarray(out)[0, 0], np.tanh(x[0, 0] @ w_ih.T + b), rtol=1e-5)
    del w_hh


def test_conv_1x1_kernel_is_a_matmul() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4, 5))
    w = rng.standard_normal((6, 1, 1, 5))
    b = rng.standard_normal(6)
    y = F.conv2d(ng.tensor(x), ng.tensor(w), ng.tensor(b))
    np.testing.assert_allclose(np.asarray(y), x @ w[:, 0, 0].T + b, rtol=1e-12)
    y2 = F.conv2d(ng.tensor(x), ng.tensor(w), stride=2)
    np.testing.assert_allclose(np.asarray(y2), x[:, ::2, ::2] @ w[:, 0, 0].T, rtol=1e-12)
    m = ng.nn.Conv2d(5, 6, 1)
    assert m(ng.zeros(0, 3, 4, 5)).shape == (0, 3, 4, 6)


def test_layers_with_an_empty_batch() -> None:
    assert ng.nn.Linear(3, 2)(ng.zeros(0, 3)).shape == (0, 2)
    mha = ng.nn.MultiheadAttention(4, 2)
    out, w = mha(ng.zeros(0, 3, 4), ng.zeros(0, 2, 4), ng.zeros(0, 2, 4))
    assert out.shape == (0, 3, 4) and w.shape == (0, 3, 2)
    assert np.isnan(F.cross_entropy(ng.zeros(0, 3), ng.zeros(0, dtype=ng.int64)).item())  # PyTorch: nan
    assert F.cross_entropy(ng.zeros(0, 3), ng.zeros(0, dtype=ng.int64), reduction="sum").item() == 0.0


def test_batchnorm_empty_batch_in_training() -> None:
    # regression: raised ValueError; PyTorch returns an empty output, leaves the running statistics
    # and counts the batch in num_batches_tracked (a single value per channel still raises)
    bn = ng.nn.BatchNorm2d(3)
    x = ng.zeros(0, 2, 2, 3, requires_grad=True)
    y = bn(x)
    assert y.shape == (0, 2, 2, 3)
    same(bn.running_mean, [0, 0, 0])
    same(bn.running_var, [1, 1, 1])
    assert bn.num_batches_tracked.item() == 1
    y.sum().backward()
    same(bn.weight.grad, [0, 0, 0])
    with pytest.raises(ValueError, match="more than 1 value"):
        bn(ng.zeros(1, 1, 1, 3))
    bn.eval()
    assert bn(ng.zeros(0, 2, 2, 3)).shape == (0, 2, 2, 3)


def test_attention_single_head_matches_torch() -> None:
    torch = pytest.importorskip("torch")
    ng.manual_seed(0)
    m = ng.nn.MultiheadAttention(4, 1)
    t = torch.nn.MultiheadAttention(4, 1, batch_first=True)
    with torch.no_grad():
        t.in_proj_weight.copy_(torch.tensor(np.concatenate([np.asarray(getattr(m, f"{k}_proj").weight.detach())
                                                            for k in "qkv"])))
        t.in_proj_bias.copy_(torch.tensor(np.concatenate([np.asarray(getattr(m, f"{k}_proj").bias.detach())
                                                          for k in "qkv"])))
        t.out_proj.weight.copy_(torch.tensor(np.asarray(m.out_proj.weight.detach())))
        t.out_proj.bias.copy_(torch.tensor(np.asarray(m.out_proj.bias.detach())))
    rng = np.random.default_rng(0)
    q = rng.standard_normal((2, 3, 4)).astype(np.float32)
    kv = rng.standard_normal((2, 2, 4)).astype(np.float32)
    mask = np.array([[True, True], [False, True]])  # sample 0 may attend nowhere
    out, w = m(ng.tensor(q), ng.tensor(kv), ng.tensor(kv), key_padding_mask=ng.tensor(mask))
    tout, tw = t(torch.tensor(q), torch.tensor(kv), torch.tensor(kv), key_padding_mask=torch.tensor(mask))
    np.testing.assert_allclose(np.asarray(out), tout.detach().numpy(), rtol=1e-5, atol=1e-6)  # NaN == NaN
    np.testing.assert_allclose(np.asarray(w), tw.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_key_padding_mask_of_a_whole_row_gives_nan_for_that_sample() -> None:
    mha = ng.nn.MultiheadAttention(4, 1)
    kv = ng.randn(2, 2, 4)
    out, w = mha(ng.randn(2, 3, 4), kv, kv, key_padding_mask=ng.tensor([[True, True], [False, True]]))
    o, ww = np.asarray(out), np.asarray(w)
    assert np.isnan(o[0]).all() and np.isnan(ww[0]).all()  # as PyTorch: softmax over nothing
    assert np.isfinite(o[1]).all()
    same(ww[1], [[1.0, 0.0]] * 3)
