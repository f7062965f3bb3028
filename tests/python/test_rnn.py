"""Recurrent layers (nn.RNN / LSTM / GRU, the fused ops _core.lstm_layer etc.): outputs and every
gradient against PyTorch with copied weights (float64 to 1e-10, float32 to 1e-4) over a small
grid of sizes, num_layers 1-3, T=1, batch 1, with and without bias and initial state; a
finite-difference gradcheck that needs no PyTorch; bitwise determinism over 1, 2 and 3
threads; inference == training forward; state-dict names; argument errors."""

from __future__ import annotations

import numpy as np
import pytest

import nablagrad as ng
from nablagrad import _core, nn

KINDS = ["lstm", "gru", "rnn_tanh", "rnn_relu"]

# (N, T, I, H, num_layers, bias, initial state)
GRID = [
    (3, 5, 4, 6, 1, True, True),
    (1, 1, 3, 5, 2, False, False),  # batch 1, T = 1
    (2, 4, 7, 3, 3, True, False),
    (4, 2, 5, 9, 2, False, True),
    (2, 3, 1, 17, 1, True, True),  # H not a multiple of the vector width
]


def make_ng(kind: str, I: int, H: int, L: int, bias: bool, dtype):
    if kind == "lstm":
        return nn.LSTM(I, H, num_layers=L, bias=bias, dtype=dtype)
    if kind == "gru":
        return nn.GRU(I, H, num_layers=L, bias=bias, dtype=dtype)
    return nn.RNN(I, H, num_layers=L, nonlinearity=kind[4:], bias=bias, dtype=dtype)


def make_torch(torch, kind: str, I: int, H: int, L: int, bias: bool, dtype):
    if kind == "lstm":
        m = torch.nn.LSTM(I, H, num_layers=L, bias=bias, batch_first=True)
    elif kind == "gru":
        m = torch.nn.GRU(I, H, num_layers=L, bias=bias, batch_first=True)
    else:
        m = torch.nn.RNN(I, H, num_layers=L, nonlinearity=kind[4:], bias=bias, batch_first=True)
    return m.to(dtype)


def run_ng(model, kind, x, h0, c0):
    """output, h_n, c_n (None except LSTM)."""
    if kind == "lstm":
        out, (h, c) = model(x, None if h0 is None else (h0, c0))
        return out, h, c
    out, h = model(x, h0)
    return out, h, None


def test_parameter_names_and_shapes_match_pytorch():
    torch = pytest.importorskip("torch")
    for kind, G in (("lstm", 4), ("gru", 3), ("rnn_tanh", 1)):
        m = make_ng(kind, 5, 7, 3, True, ng.float32)
        t = make_torch(torch, kind, 5, 7, 3, True, torch.float32)
        assert [n for n, _ in m.named_parameters()] == [n for n, _ in t.named_parameters()]
        for (_, p), (_, q) in zip(m.named_parameters(), t.named_parameters()):
            assert p.shape == tuple(q.shape)
        assert m.weight_ih_l0.shape == (G * 7, 5)
        # PyTorch's default init: every weight and bias in [-1/sqrt(H), 1/sqrt(H)].
        bound = 1 / np.sqrt(7)
        for _, p in m.named_parameters():
            a = p.detach().numpy()
            assert np.abs(a).max() <= bound and np.abs(a).max() > 0.5 * bound
    assert repr(nn.LSTM(4, 8, num_layers=2)) == "LSTM(4, 8, num_layers=2)"
    assert repr(nn.RNN(4, 8, nonlinearity="relu", bias=False)) == "RNN(4, 8, bias=False, nonlinearity='relu')"


@pytest.mark.parametrize("dtype_name", ["float64", "float32"])
@pytest.mark.parametrize("kind", KINDS)
def test_matches_pytorch_outputs_and_every_gradient(kind, dtype_name):
    torch = pytest.importorskip("torch")
    ngd, td, npd = (ng.float64, torch.float64, np.float64) if dtype_name == "float64" else (
        ng.float32, torch.float32, np.float32)
    tol = 1e-10 if dtype_name == "float64" else 1e-4
    rng = np.random.default_rng(0)
    for (N, T, I, H, L, bias, with_h0) in GRID:
        ng.manual_seed(1)
        m = make_ng(kind, I, H, L, bias, ngd)
        tm = make_torch(torch, kind, I, H, L, bias, td)
        with torch.no_grad():
            for (name, p), (tname, q) in zip(m.named_parameters(), tm.named_parameters()):
                assert name == tname
                q.copy_(torch.from_numpy(np.array(p.detach().numpy())))
        x_np = rng.standard_normal((N, T, I)).astype(npd)
        h_np = (0.5 * rng.standard_normal((L, N, H))).astype(npd) if with_h0 else None
        c_np = (0.5 * rng.standard_normal((L, N, H))).astype(npd) if with_h0 else None
        x = ng.tensor(x_np, requires_grad=True)
        h0 = ng.tensor(h_np, requires_grad=True) if with_h0 else None
        c0 = ng.tensor(c_np, requires_grad=True) if with_h0 else None
        tx = torch.from_numpy(x_np.copy()).requires_grad_()
        th0 = torch.from_numpy(h_np.copy()).requires_grad_() if with_h0 else None
        tc0 = torch.from_numpy(c_np.copy()).requires_grad_() if with_h0 else None

        out, h_n, c_n = run_ng(m, kind, x, h0, c0)
        if kind == "lstm":
            tout, (th, tc) = tm(tx, None if th0 is None else (th0, tc0))
        else:
            tout, th = tm(tx, th0)
            tc = None
        where = f"{kind} {dtype_name} N={N} T={T} I={I} H={H} L={L} bias={bias} h0={with_h0}"
        np.testing.assert_allclose(out.detach().numpy(), tout.detach().numpy(), rtol=tol, atol=tol, err_msg=where)
        np.testing.assert_allclose(h_n.detach().numpy(), th.detach().numpy(), rtol=tol, atol=tol, err_msg=where)
        if kind == "lstm":
            np.testing.assert_allclose(c_n.detach().numpy(), tc.detach().numpy(), rtol=tol, atol=tol, err_msg=where)

        # A loss that reaches every output: each gradient path of the node is exercised.
        R = [rng.standard_normal(s).astype(npd) for s in (out.shape, h_n.shape, h_n.shape)]
        loss = (out * ng.tensor(R[0])).sum() + (h_n * ng.tensor(R[1])).sum()
        tloss = (tout * torch.from_numpy(R[0])).sum() + (th * torch.from_numpy(R[1])).sum()
        if kind == "lstm":
            loss = loss + (c_n * ng.tensor(R[2])).sum()
            tloss = tloss + (tc * torch.from_numpy(R[2])).sum()
        loss.backward()
        tloss.backward()
        np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=tol, atol=tol, err_msg=where + " dx")
        if with_h0:
            np.testing.assert_allclose(h0.grad.numpy(), th0.grad.numpy(), rtol=tol, atol=tol, err_msg=where + " dh0")
            if kind == "lstm":
                np.testing.assert_allclose(c0.grad.numpy(), tc0.grad.numpy(), rtol=tol, atol=tol,
                                           err_msg=where + " dc0")
        for (name, p), (_, q) in zip(m.named_parameters(), tm.named_parameters()):
            assert p.grad is not None, f"{where}: {name} has no gradient"
            np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), rtol=tol, atol=tol,
                                       err_msg=f"{where} d{name}")


def test_gradient_through_h_n_only_matches_pytorch():
    torch = pytest.importorskip("torch")
    ng.manual_seed(3)
    m = nn.LSTM(3, 4, num_layers=2, dtype=ng.float64)
    tm = torch.nn.LSTM(3, 4, num_layers=2, batch_first=True).double()
    with torch.no_grad():
        for (_, p), (_, q) in zip(m.named_parameters(), tm.named_parameters()):
            q.copy_(torch.from_numpy(np.array(p.detach().numpy())))
    x_np = np.random.default_rng(1).standard_normal((2, 5, 3))
    x = ng.tensor(x_np, requires_grad=True)
    tx = torch.from_numpy(x_np.copy()).requires_grad_()
    _, (h, c) = m(x)
    _, (th, tc) = tm(tx)
    (c[1] * 2.0).sum().backward()  # only the last layer's cell state reaches the loss
    (tc[1] * 2.0).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=1e-10, atol=1e-10)
    for (_, p), (_, q) in zip(m.named_parameters(), tm.named_parameters()):
        np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), rtol=1e-10, atol=1e-10)


def test_state_dict_from_pytorch_loads_one_to_one():
    torch = pytest.importorskip("torch")
    tm = torch.nn.GRU(4, 6, num_layers=2, batch_first=True)
    m = nn.GRU(4, 6, num_layers=2)
    m.load_state_dict({k: ng.tensor(v.detach().numpy()) for k, v in tm.state_dict().items()})
    x_np = np.random.default_rng(2).standard_normal((3, 7, 4)).astype(np.float32)
    out, h = m(ng.tensor(x_np))
    tout, th = tm(torch.from_numpy(x_np))
    np.testing.assert_allclose(out.numpy(), tout.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(h.numpy(), th.detach().numpy(), rtol=1e-5, atol=1e-5)


def _numeric_grad(f, a: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    g = np.zeros_like(a)
    flat, gflat = a.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        keep = flat[i]
        flat[i] = keep + eps
        lp = f()
        flat[i] = keep - eps
        lm = f()
        flat[i] = keep
        gflat[i] = (lp - lm) / (2 * eps)
    return g


@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck_without_torch(kind):
    """Central differences in float64 for the input, the initial states and every parameter."""
    ng.manual_seed(5)
    rng = np.random.default_rng(5)
    m = make_ng(kind, 2, 3, 2, True, ng.float64)
    x_np = rng.standard_normal((2, 3, 2))
    h_np = 0.5 * rng.standard_normal((2, 2, 3))
    c_np = 0.5 * rng.standard_normal((2, 2, 3))
    R = [rng.standard_normal(s) for s in ((2, 3, 3), (2, 2, 3), (2, 2, 3))]
    params = {name: np.array(p.detach().numpy()) for name, p in m.named_parameters()}

    def loss_np() -> float:
        with ng.no_grad():
            for name, p in m.named_parameters():
                p.copy_(params[name])
            out, h, c = run_ng(m, kind, ng.tensor(x_np), ng.tensor(h_np), ng.tensor(c_np))
            s = float((out.numpy() * R[0]).sum() + (h.numpy() * R[1]).sum())
            if c is not None:
                s += float((c.numpy() * R[2]).sum())
            return s

    x, h0, c0 = (ng.tensor(a, requires_grad=True) for a in (x_np, h_np, c_np))
    loss_np()  # parameters as in `params`
    out, h, c = run_ng(m, kind, x, h0, c0)
    loss = (out * ng.tensor(R[0])).sum() + (h * ng.tensor(R[1])).sum()
    if c is not None:
        loss = loss + (c * ng.tensor(R[2])).sum()
    loss.backward()
    analytic = {name: p.grad.numpy().copy() for name, p in m.named_parameters()}
    np.testing.assert_allclose(x.grad.numpy(), _numeric_grad(loss_np, x_np), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(h0.grad.numpy(), _numeric_grad(loss_np, h_np), rtol=1e-6, atol=1e-7)
    if kind == "lstm":
        np.testing.assert_allclose(c0.grad.numpy(), _numeric_grad(loss_np, c_np), rtol=1e-6, atol=1e-7)
    for name, a in params.items():
        np.testing.assert_allclose(analytic[name], _numeric_grad(loss_np, a), rtol=1e-6, atol=1e-7, err_msg=name)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_relu"])
@pytest.mark.parametrize("batch,dtype", [(16, ng.float32), (8, ng.float32), (8, ng.float64)])
def test_bitwise_identical_for_1_2_3_threads(kind, batch, dtype):
    """Each thread count picks another register tile for the per-step products (batch 8: 8 rows
    at 1 thread, 4 per thread at 2, uneven shares at 3): the sums must not change."""
    before = ng.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            ng.set_num_threads(threads)
            ng.manual_seed(7)
            m = make_ng(kind, 40, 128, 2, True, dtype)
            x = ng.tensor(np.random.default_rng(7).standard_normal((batch, 6, 40)), dtype=dtype,
                          requires_grad=True)
            out, h, _ = run_ng(m, kind, x, None, None)
            ((out * out).sum() + h.sum()).backward()
            results.append([out.detach().numpy().copy(), h.detach().numpy().copy(), x.grad.numpy().copy()] +
                           [p.grad.numpy().copy() for _, p in m.named_parameters()])
    finally:
        ng.set_num_threads(before)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("kind", KINDS)
def test_inference_equals_training_forward(kind):
    ng.manual_seed(8)
    m = make_ng(kind, 5, 12, 2, True, ng.float32)
    x = ng.tensor(np.random.default_rng(8).standard_normal((3, 4, 5)).astype(np.float32), requires_grad=True)
    out, h, c = run_ng(m, kind, x, None, None)
    with ng.no_grad():
        out2, h2, c2 = run_ng(m, kind, x, None, None)
    assert not out2.requires_grad
    assert out.detach().numpy().tobytes() == out2.numpy().tobytes()
    assert h.detach().numpy().tobytes() == h2.numpy().tobytes()
    if c is not None:
        assert c.detach().numpy().tobytes() == c2.numpy().tobytes()


def test_unbatched_input():
    torch = pytest.importorskip("torch")
    m = nn.GRU(3, 4, num_layers=2, dtype=ng.float64)
    tm = torch.nn.GRU(3, 4, num_layers=2, batch_first=True).double()
    with torch.no_grad():
        for (_, p), (_, q) in zip(m.named_parameters(), tm.named_parameters()):
            q.copy_(torch.from_numpy(np.array(p.detach().numpy())))
    x_np = np.random.default_rng(3).standard_normal((5, 3))
    out, h = m(ng.tensor(x_np))
    tout, th = tm(torch.from_numpy(x_np))
    assert out.shape == (5, 4) and h.shape == (2, 4)
    np.testing.assert_allclose(out.numpy(), tout.detach().numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(h.numpy(), th.detach().numpy(), rtol=1e-10, atol=1e-10)


def test_fused_ops_and_errors():
    x = ng.randn(2, 3, 4)
    w_ih, w_hh = ng.randn(16, 4), ng.randn(16, 4)
    out, h, c = _core.lstm_layer(x, None, None, w_ih, w_hh)
    assert out.shape == (2, 3, 4) and h.shape == (2, 4) and c.shape == (2, 4)
    with pytest.raises(ValueError, match=r"\(16, 5\)"):
        _core.lstm_layer(x, None, None, ng.randn(16, 5), w_hh)
    with pytest.raises(TypeError):
        _core.lstm_layer(x, None, None, w_ih, w_hh.astype(ng.float64))
    with pytest.raises(ValueError):
        _core.rnn_layer(x, None, ng.randn(4, 4), ng.randn(4, 4), None, None, "sigmoid")
    m = nn.LSTM(4, 5)
    with pytest.raises(ValueError, match="input_size=4"):
        m(ng.randn(2, 3, 6))
    with pytest.raises(TypeError):
        m(ng.randn(2, 3, 4).astype(ng.float64))
    with pytest.raises(ValueError, match="h0"):
        m(x, (ng.randn(2, 2, 5), ng.randn(1, 2, 5)))
    with pytest.raises(ValueError):
        m(ng.randn(2, 0, 4))
    with pytest.raises(ValueError):
        nn.RNN(4, 5, nonlinearity="gelu")
    with pytest.raises(ValueError):
        nn.GRU(0, 5)


def test_to_dtype_and_optimizer_updates_reach_the_cpp_layer():
    m = nn.LSTM(3, 4)
    m.to(ng.float64)
    assert all(p.dtype == ng.float64 for p in m.parameters())
    x = ng.tensor(np.random.default_rng(4).standard_normal((2, 5, 3)))
    out, (h, c) = m(x)
    assert out.dtype == ng.float64
    out.sum().backward()
    with ng.no_grad():
        m.weight_hh_l0.copy_(np.zeros((16, 4)))
    out2, _ = m(x)
    assert not np.allclose(out.detach().numpy(), out2.detach().numpy())
