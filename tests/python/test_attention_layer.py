"""nn.MultiheadAttention and the fused F.scaled_dot_product_attention.

Against PyTorch with copied weights (torch's packed in_proj_weight split into q/k/v_proj):
outputs, head-averaged weights and every gradient (inputs and parameters), float64 to 1e-10
and float32 to 1e-4, for every mask kind and combination, need_weights on and off, and keys
longer or shorter than the queries. Without PyTorch: gradcheck, dropout 0 in train mode equal
to eval, dropout reproducibility, and bitwise identical results for 1, 2 and 3 threads.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import nablagrad as ng
import nablagrad.functional as F
from nablagrad import nn
from nablagrad.autograd import gradcheck

E, H = 8, 2


def rng(seed):
    return np.random.default_rng(seed)


def T(a, requires_grad=False):
    return ng.tensor(np.ascontiguousarray(a), requires_grad=requires_grad)


def _mha(dtype=ng.float64, bias=True, seed=0, dropout=0.0):
    ng.manual_seed(seed)
    m = nn.MultiheadAttention(E, H, bias=bias, dropout=dropout, dtype=dtype)
    if bias:  # nonzero biases, so their gradients are exercised
        r = rng(seed + 100)
        with ng.no_grad():
            for name, p in m.named_parameters():
                if name.endswith("bias"):
                    p.copy_(r.standard_normal(p.shape).astype(np.asarray(p).dtype) * 0.5)
    return m


def _torch_copy(torch, m, npdtype):
    tdt = torch.float64 if npdtype == np.float64 else torch.float32
    t = torch.nn.MultiheadAttention(E, H, bias=m.q_proj.bias is not None, batch_first=True, dtype=tdt)
    with torch.no_grad():
        t.in_proj_weight.copy_(torch.tensor(np.concatenate([np.asarray(m.q_proj.weight), np.asarray(m.k_proj.weight),
                                                            np.asarray(m.v_proj.weight)])))
        t.out_proj.weight.copy_(torch.tensor(np.asarray(m.out_proj.weight)))
        if m.q_proj.bias is not None:
            t.in_proj_bias.copy_(torch.tensor(np.concatenate([np.asarray(m.q_proj.bias), np.asarray(m.k_proj.bias),
                                                              np.asarray(m.v_proj.bias)])))
            t.out_proj.bias.copy_(torch.tensor(np.asarray(m.out_proj.bias)))
    return t


def _param_grads_torch(t):
    g = {}
    w, b = t.in_proj_weight.grad.numpy(), (t.in_proj_bias.grad.numpy() if t.in_proj_bias is not None else None)
    for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
        g[f"{name}.weight"] = w[i * E:(i + 1) * E]
        if b is not None:
            g[f"{name}.bias"] = b[i * E:(i + 1) * E]
    g["out_proj.weight"] = t.out_proj.weight.grad.numpy()
    if t.out_proj.bias is not None:
        g["out_proj.bias"] = t.out_proj.bias.grad.numpy()
    return g


def _masks(kind, N, L, S, seed):
    """(key_padding_mask, attn_mask) as NumPy arrays for a mask kind; no query is left without keys."""
    r = rng(seed)
    kpm = am = None
    parts = kind.split("+")
    for p in parts:
        if p == "kpm_bool":
            kpm = r.uniform(size=(N, S)) < 0.3
            kpm[:, 0] = False
        elif p == "kpm_float":
            kpm = r.standard_normal((N, S))
        elif p in ("attn_bool", "attn_bool3"):
            shape = (L, S) if p == "attn_bool" else (N * H, L, S)
            am = r.uniform(size=shape) < 0.3
            am[..., 0] = False
        elif p in ("attn_float", "attn_float3"):
            am = r.standard_normal((L, S) if p == "attn_float" else (N * H, L, S))
    return kpm, am


MASK_KINDS = ["none", "kpm_bool", "kpm_float", "attn_bool", "attn_float", "attn_bool3", "attn_float3",
              "kpm_bool+attn_bool", "kpm_bool+attn_float3", "kpm_float+attn_float", "kpm_bool+attn_bool3", "causal",
              "causal+kpm_bool"]


def _run_pair(torch, kind, need_weights, L, S, npdtype, seed=0):
    N = 3
    m = _mha(ng.float64 if npdtype == np.float64 else ng.float32, seed=seed)
    t = _torch_copy(torch, m, npdtype)
    r = rng(seed + 1)
    q, k, v = (r.standard_normal((N, L, E)).astype(npdtype), r.standard_normal((N, S, E)).astype(npdtype),
               r.standard_normal((N, S, E)).astype(npdtype))
    causal = kind.startswith("causal")
    kpm, am = _masks(kind.replace("causal", "").strip("+") or "none", N, L, S, seed + 2)
    if am is not None and am.dtype != bool:
        am = am.astype(npdtype)
    if kpm is not None and kpm.dtype != bool:
        kpm = kpm.astype(npdtype)
    xs = [T(a, True) for a in (q, k, v)]
    ts = [torch.tensor(a, requires_grad=True) for a in (q, k, v)]
    out, w = m(*xs, key_padding_mask=None if kpm is None else T(kpm), attn_mask=None if am is None else T(am),
               need_weights=need_weights, is_causal=causal)
    tam = torch.tensor(am) if am is not None else None
    if causal:  # torch needs the mask itself (is_causal is only a hint there)
        tam = torch.ones(L, S, dtype=torch.bool).triu(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns about mismatched mask dtypes
        tout, tw = t(*ts, key_padding_mask=None if kpm is None else torch.tensor(kpm), attn_mask=tam,
                     need_weights=need_weights, is_causal=causal)
    return m, t, xs, ts, out, w, tout, tw


# every mask kind in float64; float32 (AVX2 exp, float accumulation) on a representative subset
TORCH_CASES = ([(k, nw, np.float64, 1e-10) for k in MASK_KINDS for nw in (True, False)]
               + [(k, nw, np.float32, 1e-4) for k in ("none", "kpm_bool+attn_float3", "causal+kpm_bool",
                                                        "kpm_float+attn_float") for nw in (True, False)])


@pytest.mark.parametrize("kind,need_weights,npdtype,tol", TORCH_CASES)
def test_mha_vs_torch(kind, need_weights, npdtype, tol):
    torch = pytest.importorskip("torch")
    L, S = (5, 5) if kind.startswith("causal") else (4, 6)
    m, t, xs, ts, out, w, tout, tw = _run_pair(torch, kind, need_weights, L, S, npdtype)
    assert out.shape == (3, L, E) and out.dtype == (ng.float64 if npdtype == np.float64 else ng.float32)
    np.testing.assert_allclose(np.asarray(out), tout.detach().numpy(), atol=tol, rtol=tol)
    if need_weights:
        assert w.shape == (3, L, S)
        np.testing.assert_allclose(np.asarray(w), tw.detach().numpy(), atol=tol, rtol=tol)
    else:
        assert w is None and tw is None
    g = rng(7).standard_normal(tout.shape).astype(npdtype)
    loss = (out * T(g)).sum()
    tloss = (tout * torch.tensor(g)).sum()
    if need_weights:  # the weights output is differentiable too
        gw = rng(8).standard_normal(tw.shape).astype(npdtype)
        loss = loss + (w * T(gw)).sum()
        tloss = tloss + (tw * torch.tensor(gw)).sum()
    loss.backward()
    tloss.backward()
    for a, ta in zip(xs, ts):
        np.testing.assert_allclose(np.asarray(a.grad), ta.grad.numpy(), atol=tol, rtol=tol)
    tg = _param_grads_torch(t)
    names = [n for n, _ in m.named_parameters()]
    assert names == ["q_proj.weight", "q_proj.bias", "k_proj.weight", "k_proj.bias", "v_proj.weight", "v_proj.bias",
                     "out_proj.weight", "out_proj.bias"]
    for name, p in m.named_parameters():
        np.testing.assert_allclose(np.asarray(p.grad), tg[name], atol=tol, rtol=tol, err_msg=name)


@pytest.mark.parametrize("L,S", [(3, 7), (7, 2), (1, 1)])
def test_mha_key_value_length_differs(L, S):
    torch = pytest.importorskip("torch")
    m, t, xs, ts, out, w, tout, tw = _run_pair(torch, "kpm_bool+attn_float", True, L, S, np.float64, seed=3)
    np.testing.assert_allclose(np.asarray(out), tout.detach().numpy(), atol=1e-10)
    np.testing.assert_allclose(np.asarray(w), tw.detach().numpy(), atol=1e-10)


@pytest.mark.parametrize("need_weights", [True, False])
def test_mha_fully_masked_rows_match_torch(need_weights):
    """A batch whose keys are all padding: NaN with need_weights (torch's explicit softmax), the
    out_proj bias without (torch's fused path gives zero attention)."""
    torch = pytest.importorskip("torch")
    m = _mha(seed=4)
    t = _torch_copy(torch, m, np.float64)
    x = rng(5).standard_normal((2, 3, E))
    kpm = np.array([[False, True, False], [True, True, True]])
    am = np.zeros((3, 3), dtype=bool)
    am[1] = True  # query 1 sees nothing
    out, w = m(T(x), T(x), T(x), key_padding_mask=T(kpm), attn_mask=T(am), need_weights=need_weights)
    tx = torch.tensor(x)
    tout, tw = t(tx, tx, tx, key_padding_mask=torch.tensor(kpm), attn_mask=torch.tensor(am), need_weights=need_weights)
    np.testing.assert_allclose(np.asarray(out), tout.detach().numpy(), atol=1e-10)
    assert np.isnan(np.asarray(out)).any() == need_weights
    if need_weights:
        np.testing.assert_allclose(np.asarray(w), tw.detach().numpy(), atol=1e-10)


def test_mha_errors():
    m = nn.MultiheadAttention(E, H)
    x = ng.randn(2, 3, E)
    with pytest.raises(ValueError):
        nn.MultiheadAttention(6, 4)
    with pytest.raises(ValueError):
        m(x, x, x, attn_mask=ng.zeros(3, 4, dtype=ng.bool))
    with pytest.raises(ValueError):
        m(x, x, x, attn_mask=ng.zeros(3, 3, 3, dtype=ng.bool))
    with pytest.raises(ValueError):
        m(x, x, x, key_padding_mask=ng.zeros(2, 4, dtype=ng.bool))
    with pytest.raises(ValueError):
        m(x, ng.randn(2, 4, E), ng.randn(2, 5, E))
    with pytest.raises(ValueError):
        m(ng.randn(2, 3, E + 1), x, x)
    with pytest.raises(TypeError):
        m(x, x, x, key_padding_mask=ng.zeros(2, 3, dtype=ng.int64))


def test_mha_module_surface():
    m = nn.MultiheadAttention(E, H, dropout=0.1)
    assert isinstance(m.q_proj, nn.Linear) and m.q_proj.weight.shape == (E, E)
    assert (m.embed_dim, m.num_heads, m.head_dim, m.dropout, m.batch_first) == (E, H, E // H, 0.1, True)
    assert sorted(m.state_dict()) == sorted(n for n, _ in m.named_parameters())
    assert np.all(np.asarray(m.q_proj.bias) == 0) and np.all(np.asarray(m.out_proj.bias) == 0)
    bound = np.sqrt(6.0 / (4 * E))  # torch's xavier_uniform_ of the packed (3E, E) in_proj_weight
    for p in (m.q_proj.weight, m.k_proj.weight, m.v_proj.weight):
        a = np.asarray(p)
        assert np.abs(a).max() <= bound and np.abs(a).max() > 0.5 * bound
    assert "MultiheadAttention" in repr(m) and "q_proj" in repr(m)
    m.eval()
    assert not m.training and not m.q_proj.training
    m.to(ng.float64)
    assert m.q_proj.weight.dtype == ng.float64
    out, w = m(ng.randn(2, 3, E, dtype=ng.float64), ng.randn(2, 4, E, dtype=ng.float64),
               ng.randn(2, 4, E, dtype=ng.float64))
    assert out.dtype == ng.float64 and w.shape == (2, 3, 4)


def test_mha_state_dict_from_torch():
    torch = pytest.importorskip("torch")
    t = torch.nn.MultiheadAttention(E, H, batch_first=True, dtype=torch.float64)
    sd = {}
    for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
        sd[f"{name}.weight"] = t.in_proj_weight.detach().numpy()[i * E:(i + 1) * E]
        sd[f"{name}.bias"] = t.in_proj_bias.detach().numpy()[i * E:(i + 1) * E] + 0.1
    sd["out_proj.weight"] = t.out_proj.weight.detach().numpy()
    sd["out_proj.bias"] = t.out_proj.bias.detach().numpy()
    m = nn.MultiheadAttention(E, H, dtype=ng.float64)
    m.load_state_dict({k: ng.tensor(np.ascontiguousarray(v)) for k, v in sd.items()})
    with torch.no_grad():
        t.in_proj_bias += 0.1
    x = rng(9).standard_normal((2, 5, E))
    out, w = m(T(x), T(x), T(x))
    tout, tw = t(torch.tensor(x), torch.tensor(x), torch.tensor(x))
    np.testing.assert_allclose(np.asarray(out), tout.detach().numpy(), atol=1e-10)


def test_mha_gradcheck():
    """Inputs and parameters by finite differences (no PyTorch needed), with masks, causal."""
    m = _mha(seed=6)
    r = rng(10)
    q, kv = T(r.standard_normal((2, 3, E)), True), T(r.standard_normal((2, 4, E)), True)
    kpm = T(np.array([[False, False, True, False], [False, True, False, False]]))
    am = T(r.standard_normal((3, 4)))
    gradcheck(lambda a, b: m(a, b, b, key_padding_mask=kpm, attn_mask=am), [q, kv])
    x = T(r.standard_normal((2, 4, E)), True)
    gradcheck(lambda a: m(a, a, a, is_causal=True, need_weights=False)[0], [x])
    params = [p for _, p in m.named_parameters()]
    gradcheck(lambda *ps: m(x, x, x, is_causal=True)[0], params)


def test_mha_dropout():
    x = ng.randn(2, 5, E)
    m = _mha(ng.float32, bias=False, seed=11)
    m.train()
    a, wa = m(x, x, x)
    m.eval()
    b, wb = m(x, x, x)
    assert np.array_equal(np.asarray(a), np.asarray(b)) and np.array_equal(np.asarray(wa), np.asarray(wb))
    md = _mha(ng.float32, bias=False, seed=11, dropout=0.5)
    md.train()
    ng.manual_seed(3)
    c, wc = md(x, x, x)
    ng.manual_seed(3)
    d, wd = md(x, x, x)
    assert np.array_equal(np.asarray(c), np.asarray(d)) and np.array_equal(np.asarray(wc), np.asarray(wd))
    assert not np.allclose(np.asarray(c), np.asarray(b))
    md.eval()
    e, we = md(x, x, x)
    np.testing.assert_array_equal(np.asarray(e), np.asarray(b))
    # the dropped, head-averaged weights: rows no longer sum to 1, but average to about 1
    s = np.asarray(wc).sum(-1)
    assert not np.allclose(s, 1.0) and abs(s.mean() - 1.0) < 0.35


@pytest.mark.parametrize("need_weights", [True, False])
def test_mha_threads_bitwise(need_weights):
    results = []
    old = ng.get_num_threads()
    try:
        for n in (1, 2, 3):
            ng.set_num_threads(n)
            m = _mha(ng.float32, seed=12)
            x = T(rng(13).standard_normal((3, 40, E)).astype(np.float32), True)
            kv = T(rng(14).standard_normal((3, 300, E)).astype(np.float32), True)
            out, w = m(x, kv, kv, need_weights=need_weights, attn_mask=T(rng(15).standard_normal((40, 300)).astype(
                np.float32)))
            loss = (out * out).sum() + ((w * w).sum() if w is not None else 0.0)
            loss.backward()
            results.append([np.asarray(out).copy(), np.asarray(x.grad).copy(), np.asarray(kv.grad).copy()]
                           + [np.asarray(p.grad).copy() for _, p in m.named_parameters()])
    finally:
        ng.set_num_threads(old)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert np.array_equal(a, b)


# ------------------------------------------------------------------ the functional op
def test_sdpa_fully_masked_row_is_zero_as_torch():
    torch = pytest.importorskip("torch")
    r = rng(20)
    q, k, v = r.standard_normal((1, 2, 3, 4)), r.standard_normal((1, 2, 5, 4)), r.standard_normal((1, 2, 5, 2))
    m = np.ones((3, 5), dtype=bool)
    m[1] = False
    xs = [T(a, True) for a in (q, k, v)]
    ts = [torch.tensor(a, requires_grad=True) for a in (q, k, v)]
    out = F.scaled_dot_product_attention(*xs, attn_mask=T(m))
    tout = torch.nn.functional.scaled_dot_product_attention(*ts, attn_mask=torch.tensor(m))
    np.testing.assert_allclose(np.asarray(out), tout.detach().numpy(), atol=1e-12)
    assert np.all(np.asarray(out)[:, :, 1] == 0)
    out.sum().backward()
    tout.sum().backward()
    for a, ta in zip(xs, ts):
        np.testing.assert_allclose(np.asarray(a.grad), ta.grad.numpy(), atol=1e-12)


@pytest.mark.parametrize("L,S", [(5, 3), (3, 5)])
def test_sdpa_causal_and_scale_vs_torch(L, S):
    torch = pytest.importorskip("torch")
    r = rng(21)
    q, k, v = r.standard_normal((2, 3, L, 4)), r.standard_normal((2, 3, S, 4)), r.standard_normal((2, 3, S, 6))
    xs = [T(a, True) for a in (q, k, v)]
    ts = [torch.tensor(a, requires_grad=True) for a in (q, k, v)]
    out = F.scaled_dot_product_attention(*xs, is_causal=True, scale=0.3)
    tout = torch.nn.functional.scaled_dot_product_attention(*ts, is_causal=True, scale=0.3)
    np.testing.assert_allclose(np.asarray(out), tout.detach().numpy(), atol=1e-12)
    g = r.standard_normal(tout.shape)
    out.backward(T(g))
    tout.backward(torch.tensor(g))
    for a, ta in zip(xs, ts):
        np.testing.assert_allclose(np.asarray(a.grad), ta.grad.numpy(), atol=1e-12)


def test_sdpa_weights_and_dropout():
    from nablagrad import _core
    r = rng(22)
    q, k, v = (T(r.standard_normal(s)) for s in ((2, 2, 4, 3), (2, 2, 5, 3), (2, 2, 5, 2)))
    out, w = _core.scaled_dot_product_attention(q, k, v, need_weights=True)
    assert w.shape == (2, 2, 4, 5)
    np.testing.assert_allclose(np.asarray(w).sum(-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(out), np.asarray(w) @ np.asarray(v), atol=1e-6)
    ng.manual_seed(1)
    a = F.scaled_dot_product_attention(q, k, v, dropout_p=0.5)
    ng.manual_seed(1)
    b = F.scaled_dot_product_attention(q, k, v, dropout_p=0.5)
    assert np.array_equal(np.asarray(a), np.asarray(b)) and not np.allclose(np.asarray(a), np.asarray(out))
    with pytest.raises(ValueError):
        F.scaled_dot_product_attention(q, k, v, dropout_p=1.5)
