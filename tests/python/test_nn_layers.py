"""Every built-in layer of nablagrad.nn against PyTorch with copied weights (Conv2d kernels
permuted (Q,C,FH,FW) -> (Q,FH,FW,C), images NHWC <-> NCHW, BatchNorm2d over the last axis):
outputs and the gradients of the input and of every parameter, float64 to ~1e-10 and float32
to ~1e-4, random sizes, with and without bias, every activation, train and eval mode.
Then gradcheck on small float64 instances (no PyTorch needed) and train/eval behaviour of
Dropout and BatchNorm2d."""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import numpy as np
import pytest

import nablagrad as ng
from nablagrad import nn

TOL = {np.float64: dict(rtol=1e-10, atol=1e-10), np.float32: dict(rtol=1e-4, atol=1e-4)}
DTYPES = {np.float64: ng.float64, np.float32: ng.float32}
ACTIVATIONS = [None, "relu", "sigmoid", "tanh", "gelu", "softmax"]


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


def _to_torch_key(name: str, shape: tuple, t_shape: tuple) -> Callable[[np.ndarray], np.ndarray]:
    """nablagrad layout -> PyTorch layout for one tensor (conv kernels are channel-last here)."""
    if len(shape) == 4 and shape != t_shape:
        return lambda a: np.ascontiguousarray(a.transpose(0, 3, 1, 2))
    return lambda a: a


def copy_torch_weights(tm: Any, m: nn.Module) -> None:
    """Loads PyTorch's state dict into ``m`` (kernels permuted to (Q, FH, FW, C))."""
    sd = {}
    for k, v in tm.state_dict().items():
        a = v.detach().numpy()
        if a.ndim == 4:
            a = np.ascontiguousarray(a.transpose(0, 2, 3, 1))
        sd[k] = a
    m.load_state_dict(sd)


def compare(torch: Any, m: nn.Module, tm: Any, x: np.ndarray, dt: Any, nhwc: bool = False,
            seed: int = 0, int_input: bool = False) -> None:
    """Forward and backward of sum(out * w) in both libraries; compares out, dx, dparams."""
    tol = TOL[dt]
    if int_input:
        xn, xt = ng.tensor(x), torch.tensor(x)
    else:
        xn = ng.tensor(x.astype(dt), requires_grad=True)
        xt = torch.tensor((x.transpose(0, 3, 1, 2) if nhwc else x).astype(dt), requires_grad=True)
    out_n = m(xn)
    out_t = tm(xt)
    out_t_nhwc = out_t.permute(0, 2, 3, 1) if nhwc and out_t.dim() == 4 else out_t
    ref = out_t_nhwc.detach().numpy()
    assert out_n.shape == ref.shape and out_n.dtype == DTYPES[dt]
    np.testing.assert_allclose(np.asarray(out_n), ref, **tol)
    w = np.random.default_rng(seed + 7).standard_normal(ref.shape).astype(dt)
    (out_n * ng.tensor(w)).sum().backward()
    (out_t_nhwc * torch.tensor(w)).sum().backward()
    if not int_input:
        gx = xt.grad.numpy()
        if nhwc:
            gx = gx.transpose(0, 2, 3, 1)
        np.testing.assert_allclose(np.asarray(xn.grad), gx, **tol)
    tparams = dict(tm.named_parameters())
    nparams = dict(m.named_parameters())
    assert sorted(tparams) == sorted(nparams)
    for k, p in nparams.items():
        g = tparams[k].grad.numpy()
        if g.ndim == 4:
            g = g.transpose(0, 2, 3, 1)
        assert p.grad is not None, k
        np.testing.assert_allclose(np.asarray(p.grad), g, err_msg=k, **tol)


def _torch_act(torch: Any, name: Optional[str]) -> Any:
    return {None: torch.nn.Identity(), "relu": torch.nn.ReLU(), "sigmoid": torch.nn.Sigmoid(),
            "tanh": torch.nn.Tanh(), "gelu": torch.nn.GELU(), "softmax": torch.nn.Softmax(dim=-1)}[name]


# ---------------------------------------------------------------------------------------- vs PyTorch
@pytest.mark.parametrize("dt", [np.float64, np.float32])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("bias", [True, False])
def test_linear(torch, dt, activation, bias) -> None:
    rng = np.random.default_rng(hash((activation, bias)) % 1000)
    n, fin, fout = (int(v) for v in rng.integers(1, 9, size=3))
    m = nn.Linear(fin, fout, bias=bias, activation=activation, dtype=DTYPES[dt])
    lin = torch.nn.Linear(fin, fout, bias=bias).to(torch.float64 if dt == np.float64 else torch.float32)
    copy_torch_weights(lin, m)
    tm = torch.nn.Sequential(lin, _torch_act(torch, activation))
    tm_named = {"weight": lin.weight, **({"bias": lin.bias} if bias else {})}

    class View(torch.nn.Module):  # names as nablagrad's (weight, bias)
        def __init__(self) -> None:
            super().__init__()
            self.inner = tm

        def named_parameters(self, *a, **k):  # type: ignore[override]
            return iter(tm_named.items())

        def forward(self, x):
            return self.inner(x)

    compare(torch, m, View(), rng.standard_normal((n, fin)), dt)
    x3 = rng.standard_normal((2, 3, fin))  # leading batch dims
    np.testing.assert_allclose(np.asarray(m(ng.tensor(x3.astype(dt)))),
                               tm(torch.tensor(x3.astype(dt))).detach().numpy(), **TOL[dt])


@pytest.mark.parametrize("dt", [np.float64, np.float32])
@pytest.mark.parametrize("case", range(6))
def test_conv2d(torch, dt, case) -> None:
    rng = np.random.default_rng(100 + case)
    c, q = int(rng.integers(1, 5)), int(rng.integers(1, 6))
    kh, kw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    stride = [1, 2, (1, 2), 1, 2, 1][case]
    padding: Any = [0, 1, (1, 0), "same", 0, "valid"][case]
    bias = case % 2 == 0
    activation = ACTIVATIONS[case]
    h, w = int(rng.integers(kh + 1, 9)), int(rng.integers(kw + 1, 9))
    n = int(rng.integers(1, 4))
    tdt = torch.float64 if dt == np.float64 else torch.float32
    m = nn.Conv2d(c, q, (kh, kw), stride=stride, padding=padding, bias=bias, activation=activation,
                  dtype=DTYPES[dt])
    conv = torch.nn.Conv2d(c, q, (kh, kw), stride=stride, padding=padding, bias=bias).to(tdt)
    copy_torch_weights(conv, m)
    act = _torch_act(torch, activation)
    if activation == "softmax":  # over the channel axis: the last one in NHWC, dim 1 in NCHW
        act = torch.nn.Softmax(dim=1)

    class T(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = conv

        def named_parameters(self, *a, **k):  # type: ignore[override]
            return iter([(k2, v) for k2, v in conv.named_parameters()])

        def forward(self, x):
            return act(conv(x))

    compare(torch, m, T(), rng.standard_normal((n, h, w, c)), dt, nhwc=True)


@pytest.mark.parametrize("dt", [np.float64, np.float32])
@pytest.mark.parametrize("kind", ["max", "avg", "avg_no_pad_count"])
@pytest.mark.parametrize("k,s,p", [(2, None, 0), (3, 2, 1), ((2, 3), (1, 2), (1, 1))])
def test_pooling(torch, dt, kind, k, s, p) -> None:
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 7, 8, 3))
    if kind == "max":
        m, tm = nn.MaxPool2d(k, s, p), torch.nn.MaxPool2d(k, s, p)
    else:
        cip = kind == "avg"
        m, tm = nn.AvgPool2d(k, s, p, count_include_pad=cip), torch.nn.AvgPool2d(k, s, p, count_include_pad=cip)
    compare(torch, m, tm, x, dt, nhwc=True)


@pytest.mark.parametrize("dt", [np.float64, np.float32])
@pytest.mark.parametrize("start,end", [(1, -1), (0, -1), (1, 2), (2, 3)])
def test_flatten(torch, dt, start, end) -> None:
    x = np.random.default_rng(1).standard_normal((2, 3, 4, 5))
    compare(torch, nn.Flatten(start, end), torch.nn.Flatten(start, end), x, dt)


@pytest.mark.parametrize("dt", [np.float64, np.float32])
@pytest.mark.parametrize("shape,affine", [((6,), True), ((3, 4), True), ((5,), False)])
def test_layer_norm(torch, dt, shape, affine) -> None:
    rng = np.random.default_rng(2)
    tdt = torch.float64 if dt == np.float64 else torch.float32
    m = nn.LayerNorm(shape, eps=1e-5, elementwise_affine=affine, dtype=DTYPES[dt])
    tm = torch.nn.LayerNorm(shape, eps=1e-5, elementwise_affine=affine).to(tdt)
    if affine:
        with torch.no_grad():
            tm.weight.copy_(torch.tensor(rng.standard_normal(shape)))
            tm.bias.copy_(torch.tensor(rng.standard_normal(shape)))
        copy_torch_weights(tm, m)
    compare(torch, m, tm, rng.standard_normal((3, 2) + shape) * 2 + 1, dt)


@pytest.mark.parametrize("dt", [np.float64, np.float32])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("affine,track", [(True, True), (False, True), (True, False)])
def test_batch_norm(torch, dt, train, affine, track) -> None:
    rng = np.random.default_rng(3)
    q = 4
    tdt = torch.float64 if dt == np.float64 else torch.float32
    m = nn.BatchNorm2d(q, eps=1e-5, momentum=0.1, affine=affine, track_running_stats=track, dtype=DTYPES[dt])
    tm = torch.nn.BatchNorm2d(q, eps=1e-5, momentum=0.1, affine=affine, track_running_stats=track).to(tdt)
    with torch.no_grad():
        if affine:
            tm.weight.copy_(torch.tensor(rng.standard_normal(q)))
            tm.bias.copy_(torch.tensor(rng.standard_normal(q)))
        if track:
            tm.running_mean.copy_(torch.tensor(rng.standard_normal(q)))
            tm.running_var.copy_(torch.tensor(rng.uniform(0.5, 2.0, q)))
            tm.num_batches_tracked.fill_(3)
    m.load_state_dict({k: v.detach().numpy() for k, v in tm.state_dict().items()})
    m.train(train)
    tm.train(train)
    x = rng.standard_normal((3, 5, 4, q)) * 1.5 + 0.5
    compare(torch, m, tm, x, dt, nhwc=True)
    if track:  # running statistics updated identically (or left alone in eval)
        for k in ("running_mean", "running_var", "num_batches_tracked"):
            np.testing.assert_allclose(np.asarray(getattr(m, k)), getattr(tm, k).numpy(), **TOL[dt])


@pytest.mark.parametrize("dt", [np.float64, np.float32])
def test_embedding(torch, dt) -> None:
    rng = np.random.default_rng(4)
    tdt = torch.float64 if dt == np.float64 else torch.float32
    m, tm = nn.Embedding(7, 3, dtype=DTYPES[dt]), torch.nn.Embedding(7, 3).to(tdt)
    copy_torch_weights(tm, m)
    idx = rng.integers(0, 7, size=(2, 5)).astype(np.int64)  # repeated indices accumulate
    compare(torch, m, tm, idx, dt, int_input=True)


@pytest.mark.parametrize("dt", [np.float64, np.float32])
@pytest.mark.parametrize("name", ["ReLU", "Sigmoid", "Tanh", "GELU", "GELU_tanh", "Softmax", "Softmax1", "LeakyReLU"])
def test_activations(torch, dt, name) -> None:
    mk: Dict[str, Any] = {
        "ReLU": (nn.ReLU(), torch.nn.ReLU()),
        "Sigmoid": (nn.Sigmoid(), torch.nn.Sigmoid()),
        "Tanh": (nn.Tanh(), torch.nn.Tanh()),
        "GELU": (nn.GELU(), torch.nn.GELU()),
        "GELU_tanh": (nn.GELU("tanh"), torch.nn.GELU(approximate="tanh")),
        "Softmax": (nn.Softmax(), torch.nn.Softmax(dim=-1)),
        "Softmax1": (nn.Softmax(dim=1), torch.nn.Softmax(dim=1)),
        "LeakyReLU": (nn.LeakyReLU(0.2), torch.nn.LeakyReLU(0.2)),
    }
    m, tm = mk[name]
    x = np.random.default_rng(5).standard_normal((3, 4, 5)) * 2
    x = np.where(np.abs(x) < 1e-3, 0.1, x)
    compare(torch, m, tm, x, dt)


@pytest.mark.parametrize("dt", [np.float64, np.float32])
def test_dropout_eval_and_p0_match_torch(torch, dt) -> None:
    x = np.random.default_rng(6).standard_normal((4, 5))
    m = nn.Dropout(0.5).eval()
    compare(torch, m, torch.nn.Dropout(0.5).eval(), x, dt)
    compare(torch, nn.Dropout(0.0), torch.nn.Dropout(0.0), x, dt)


def test_digits_cnn_matches_torch(torch) -> None:
    """The benchmark's model end to end: built-ins mixed in one Sequential."""
    tm = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                             torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                             torch.nn.Flatten(), torch.nn.Linear(128, 10)).double()
    m = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                      nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                      nn.Flatten(), nn.Linear(128, 10)).to(ng.float64)
    copy_torch_weights(tm, m)
    # torch flattens NCHW (C,H,W); ours flattens NHWC (H,W,C): permute the Linear's columns
    w = tm[7].weight.detach().numpy().reshape(10, 32, 2, 2).transpose(0, 2, 3, 1).reshape(10, 128)
    with ng.no_grad():
        m[7].weight.copy_(w)
    x = np.random.default_rng(0).uniform(0, 1, (4, 8, 8, 1))
    out = m(ng.tensor(x))
    ref = tm(torch.tensor(x.transpose(0, 3, 1, 2))).detach().numpy()
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------- gradcheck
def _gradcheck_module(m: nn.Module, x: np.ndarray) -> None:
    m.to(ng.float64)
    xt = ng.tensor(x, dtype=ng.float64, requires_grad=True)
    params = list(m.parameters())
    ng.autograd.gradcheck(lambda inp, *ps: m(inp), [xt, *params])


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_gradcheck_linear(activation) -> None:
    ng.manual_seed(0)
    _gradcheck_module(nn.Linear(3, 4, activation=activation), np.random.default_rng(0).standard_normal((2, 3)))


@pytest.mark.parametrize("stride,padding,bias", [(1, 1, True), (2, 0, False), (1, "same", True), ((2, 1), (0, 1), True)])
def test_gradcheck_conv2d(stride, padding, bias) -> None:
    ng.manual_seed(1)
    m = nn.Conv2d(2, 3, (3, 2), stride=stride, padding=padding, bias=bias, activation="tanh")
    _gradcheck_module(m, np.random.default_rng(1).standard_normal((2, 5, 4, 2)))


@pytest.mark.parametrize("mk", [lambda: nn.MaxPool2d(2), lambda: nn.AvgPool2d(3, 2, 1),
                                lambda: nn.AvgPool2d(2, 1, 1, count_include_pad=False), lambda: nn.Flatten(),
                                lambda: nn.LayerNorm(4), lambda: nn.ReLU(), lambda: nn.Sigmoid(),
                                lambda: nn.Tanh(), lambda: nn.GELU(), lambda: nn.GELU("tanh"),
                                lambda: nn.Softmax(dim=1), lambda: nn.LeakyReLU(0.1),
                                lambda: nn.Dropout(0.3).eval()])
def test_gradcheck_small_layers(mk) -> None:
    x = np.random.default_rng(2).standard_normal((2, 4, 3, 4))
    x += np.where(np.abs(x) < 0.05, 0.1, 0.0)  # away from relu's kink
    _gradcheck_module(mk(), x)


@pytest.mark.parametrize("train", [True, False])
def test_gradcheck_batch_norm(train) -> None:
    ng.manual_seed(3)
    m = nn.BatchNorm2d(3).train(train)
    with ng.no_grad():
        nn.init.normal_(m.weight)
        nn.init.normal_(m.bias)
    _gradcheck_module(m, np.random.default_rng(3).standard_normal((2, 3, 2, 3)))


def test_gradcheck_embedding() -> None:
    m = nn.Embedding(5, 3).to(ng.float64)
    idx = ng.tensor(np.array([[0, 2, 2], [4, 1, 0]]))
    ng.autograd.gradcheck(lambda w: m(idx), [m.weight])


def test_gradcheck_python_module_mixing_builtins() -> None:
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 3, padding=1)
            self.norm = nn.LayerNorm(2)
            self.gate = nn.Parameter(ng.full((2,), 0.5))

        def forward(self, x):
            return x + self.norm(ng.nn.functional.gelu(self.conv(x))) * self.gate

    ng.manual_seed(4)
    m = nn.Sequential(Block(), nn.Flatten(), nn.Linear(18, 2))
    _gradcheck_module(m, np.random.default_rng(4).standard_normal((2, 3, 3, 2)))


def test_core_owned_tensors_cannot_be_replaced() -> None:
    fc = nn.Linear(3, 2)
    w = fc.weight
    fc.weight = w  # the same tensor again: allowed
    with pytest.raises(AttributeError, match="Linear.weight is the C.. layer's own tensor"):
        fc.weight = nn.Parameter(ng.zeros(2, 3))
    with pytest.raises(AttributeError, match="own tensor"):
        fc.weight = None
    bn = nn.BatchNorm2d(3)
    with pytest.raises(AttributeError, match="BatchNorm2d.running_mean is the C.. layer's own buffer"):
        bn.running_mean = ng.zeros(3)
    assert fc.weight is w and dict(fc.named_parameters())["weight"] is w


# ---------------------------------------------------------------------------------------- train vs eval
def test_dropout_train_vs_eval() -> None:
    ng.manual_seed(0)
    m = nn.Dropout(0.25)
    x = ng.ones(200, 100, requires_grad=True)
    y = m(x)
    a = np.asarray(y)
    kept = a != 0
    assert abs(kept.mean() - 0.75) < 0.02
    np.testing.assert_allclose(a[kept], 1 / 0.75, rtol=1e-6)
    y.sum().backward()
    np.testing.assert_allclose(np.asarray(x.grad), np.where(kept, 1 / 0.75, 0.0), rtol=1e-6)
    # seeded: the same mask again
    ng.manual_seed(0)
    np.testing.assert_array_equal(np.asarray(nn.Dropout(0.25)(ng.ones(200, 100))), a)
    m.eval()
    np.testing.assert_array_equal(np.asarray(m(x)), np.asarray(x))
    m.train()
    assert (np.asarray(m(x)) == 0).any()


def test_batch_norm_train_vs_eval() -> None:
    ng.manual_seed(1)
    m = nn.BatchNorm2d(3, momentum=0.5)
    x = np.random.default_rng(0).standard_normal((4, 3, 3, 3)) * 2 + 3
    y = np.asarray(m(ng.tensor(x.astype(np.float32))))
    np.testing.assert_allclose(y.reshape(-1, 3).mean(axis=0), 0, atol=1e-5)  # batch statistics
    np.testing.assert_allclose(y.reshape(-1, 3).std(axis=0), 1, atol=1e-3)
    flat = x.reshape(-1, 3)
    np.testing.assert_allclose(np.asarray(m.running_mean), 0.5 * flat.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(m.running_var), 0.5 + 0.5 * flat.var(axis=0, ddof=1), rtol=1e-5)
    assert int(m.num_batches_tracked) == 1
    m.eval()
    rm, rv = np.asarray(m.running_mean).copy(), np.asarray(m.running_var).copy()
    y = np.asarray(m(ng.tensor(x.astype(np.float32))))
    np.testing.assert_allclose(y, (x - rm) / np.sqrt(rv + 1e-5), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(m.running_mean), rm)  # eval leaves them alone
    assert int(m.num_batches_tracked) == 1


def test_load_pytorch_state_dict_nhwc(torch) -> None:
    """A PyTorch CNN's checkpoint, kernels permuted to (Q,FH,FW,C), gives the same outputs."""
    tm = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                             torch.nn.AvgPool2d(2)).double()
    tm.train()
    tm(torch.randn(5, 3, 6, 6, dtype=torch.float64))  # non-trivial running stats
    tm.eval()
    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AvgPool2d(2)).double()
    sd = {k: (v.permute(0, 2, 3, 1) if v.dim() == 4 else v).contiguous().numpy() for k, v in tm.state_dict().items()}
    assert sorted(sd) == sorted(m.state_dict())
    m.load_state_dict(sd)
    m.eval()
    x = np.random.default_rng(0).standard_normal((2, 6, 6, 3))
    np.testing.assert_allclose(np.asarray(m(ng.tensor(x))),
                               tm(torch.tensor(x.transpose(0, 3, 1, 2))).permute(0, 2, 3, 1).detach().numpy(),
                               rtol=1e-10, atol=1e-12)
    assert int(m[1].num_batches_tracked) == 1
