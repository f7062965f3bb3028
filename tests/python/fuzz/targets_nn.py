"""Fuzz targets: ng.functional (conv, pooling, linear, normalisation, dropout, losses, attention)
against NumPy references, and the layers' constructors and forward passes (see harness.py)."""

from __future__ import annotations

import os
import sys
import warnings

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (KIND, SHAPE, assert_array, case, expect_error, expect_ok, fail, fuzz_target,  # noqa: E402
                     main, run)

import nablagrad as ng  # noqa: E402
import nablagrad.functional as F  # noqa: E402

warnings.simplefilter("ignore")
np.seterr(all="ignore")
NAN, INF = float("nan"), float("inf")
FLOAT_DTS = [np.float32, np.float64]


def rand_array(draw: st.DrawFn, shape: tuple, dt: object, special: bool = False) -> np.ndarray:
    seed = draw(st.integers(0, 2**16))
    a = np.random.default_rng(seed).standard_normal(shape)
    if special and a.size and draw(st.integers(0, 4)) == 0:
        a.flat[draw(st.integers(0, a.size - 1))] = draw(st.sampled_from([NAN, INF, -INF, 1e4, -1e4]))
    return a.astype(dt)


def tol_of(dt: object) -> float:
    return 2e-4 if np.dtype(dt) == np.float32 else 1e-9


INT_ARG = st.one_of(st.integers(0, 3), st.integers(0, 3), st.integers(-2, -1), st.sampled_from([2**40, 2**63 - 1]))
PAIR_ARG = st.one_of(INT_ARG, st.tuples(st.integers(0, 3), st.integers(0, 3)),
                     st.sampled_from([1.5, None, "x", (1, 2, 3), True, np.int64(1)]))


def _pair_ok(v: object) -> object:
    """(h, w) for a valid int-or-pair argument, else the exception kind."""
    if isinstance(v, (bool, np.bool_)):
        return KIND
    if isinstance(v, (int, np.integer)):
        return (int(v), int(v))
    if isinstance(v, tuple) and len(v) == 2 and all(isinstance(e, int) and not isinstance(e, bool) for e in v):
        return v
    return KIND


def np_conv(x: np.ndarray, w: np.ndarray, b: object, s: tuple, p: tuple) -> np.ndarray:
    N, H, W, C = x.shape
    Q, FH, FW, _ = w.shape
    xp = np.zeros((N, H + p[0] + p[1], W + p[2] + p[3], C))
    xp[:, p[0]:p[0] + H, p[2]:p[2] + W] = x
    Ho = (H + p[0] + p[1] - FH) // s[0] + 1
    Wo = (W + p[2] + p[3] - FW) // s[1] + 1
    out = np.zeros((N, Ho, Wo, Q))
    for i in range(Ho):
        for j in range(Wo):
            win = xp[:, i * s[0]:i * s[0] + FH, j * s[1]:j * s[1] + FW, :]
            out[:, i, j, :] = np.einsum("nhwc,qhwc->nq", win, w)
    if b is not None:
        out += b
    return out


@fuzz_target(700)
@given(data=st.data())
def conv2d(data: st.DataObject) -> None:
    N, H, W, C, Q = (data.draw(st.integers(0, 3)) for _ in range(5))
    H, W = H + data.draw(st.integers(0, 3)), W + data.draw(st.integers(0, 3))
    FH, FW = data.draw(st.integers(0, 3)), data.draw(st.integers(0, 3))
    stride = data.draw(PAIR_ARG)
    padding = data.draw(PAIR_ARG | st.sampled_from(["same", "valid", "full"]))
    dt = data.draw(st.sampled_from(FLOAT_DTS + [np.int64]))
    wdt = dt if data.draw(st.integers(0, 6)) else data.draw(st.sampled_from(FLOAT_DTS))
    xshape = (N, H, W, C) if data.draw(st.integers(0, 10)) else (N, H, W)
    wC = C if data.draw(st.integers(0, 8)) else C + 1
    x = rand_array(data.draw, xshape, dt)
    w = rand_array(data.draw, (Q, FH, FW, wC), wdt)
    bias = data.draw(st.sampled_from(["none", "ok", "ok", "bad"]))
    b = None if bias == "none" else rand_array(data.draw, (Q if bias == "ok" else Q + 1,), wdt)
    case("conv2d", x, w, b, "stride", stride, "padding", padding)
    tb = None if b is None else ng.tensor(b)
    call = lambda: F.conv2d(ng.tensor(x), ng.tensor(w), tb, stride=stride, padding=padding)  # noqa: E731
    s = _pair_ok(stride)
    if s is KIND:
        expect_error(call, KIND, "stride kind")
        return
    if isinstance(padding, str):
        if padding not in ("same", "valid"):
            expect_error(call, SHAPE, "padding string")
            return
        if padding == "same" and s != (1, 1):
            expect_error(call, SHAPE, "'same' with stride")
            return
        if padding == "same":
            pads = ((FH - 1) // 2, FH - 1 - (FH - 1) // 2, (FW - 1) // 2, FW - 1 - (FW - 1) // 2)
        else:
            pads = (0, 0, 0, 0)
    else:
        pp = _pair_ok(padding)
        if pp is KIND:
            expect_error(call, KIND, "padding kind")
            return
        pads = (pp[0], pp[0], pp[1], pp[1])
    if len(xshape) != 4:
        expect_error(call, SHAPE, "3-D input")
        return
    if dt == np.int64 or wdt != dt:
        expect_error(call, KIND, "dtype")
        return
    if min(s) <= 0 or min(pads) < 0:
        expect_error(call, SHAPE, "stride/padding")
        return
    if wC != C or (b is not None and b.shape[0] != Q) or Q == 0 or FH == 0 or FW == 0 or H == 0 or W == 0:
        ok, r = run(call)
        if wC == C and (b is None or b.shape[0] == Q) and ok:
            if r.shape[0] != N or r.shape[-1] != Q:
                fail(f"conv2d of an empty geometry: shape {r.shape}")
            return
        if ok:
            fail(f"conv2d accepted mismatched shapes: x {x.shape} w {w.shape} b {None if b is None else b.shape}")
        if not isinstance(r, SHAPE):
            fail(f"conv2d: {type(r).__name__} for a shape mismatch")
        return
    if max(pads) > 2**20:
        ok, r = run(call)
        if not ok and not isinstance(r, (SHAPE, MemoryError)):
            fail(f"conv2d huge padding: {type(r).__name__}")
        return
    Hp, Wp = H + pads[0] + pads[1], W + pads[2] + pads[3]
    if FH > Hp or FW > Wp:
        expect_error(call, SHAPE, "kernel larger than the padded input")
        return
    if C == 0:
        ok, r = run(call)
        if not ok:
            if not isinstance(r, SHAPE):
                fail(f"conv2d C=0: {type(r).__name__}")
            return
    else:
        r = expect_ok(call)
    s2 = (min(s[0], 10**6), min(s[1], 10**6))
    ref = np_conv(x.astype(np.float64), w.astype(np.float64), None if b is None else b.astype(np.float64), s2, pads)
    tol = tol_of(dt)
    assert_array(r, ref.astype(dt), tol, tol, dtype=dt, what="conv2d")
    if r.shape and np.prod(r.shape) and max(s) < 10 and N * H * W * C * Q < 400:
        # gradients through sum(y * gy) against the NumPy adjoint
        gy = rand_array(data.draw, r.shape, np.float64)
        xt = ng.tensor(x.astype(np.float64), requires_grad=True)
        wt = ng.tensor(w.astype(np.float64), requires_grad=True)
        expect_ok(lambda: (F.conv2d(xt, wt, stride=s, padding=padding) * ng.tensor(gy)).sum().backward())
        eps = 1e-6
        k = data.draw(st.integers(0, x.size - 1))
        xp_, xm_ = x.astype(np.float64).copy(), x.astype(np.float64).copy()
        xp_.flat[k] += eps
        xm_.flat[k] -= eps
        num = ((np_conv(xp_, w.astype(np.float64), None, s2, pads) - np_conv(xm_, w.astype(np.float64), None, s2, pads))
               * gy).sum() / (2 * eps)
        got = np.asarray(xt.grad).flat[k]
        if abs(got - num) > 1e-5 * (1 + abs(num)):
            fail(f"conv2d input gradient at flat index {k}: {got} vs finite difference {num}")


def np_pool(x: np.ndarray, k: tuple, s: tuple, p: tuple, kind: str, include_pad: bool) -> np.ndarray:
    N, H, W, C = x.shape
    fill = -np.inf if kind == "max" else 0.0
    xp = np.full((N, H + 2 * p[0], W + 2 * p[1], C), fill)
    xp[:, p[0]:p[0] + H, p[1]:p[1] + W] = x
    ones = np.zeros((H + 2 * p[0], W + 2 * p[1]))
    ones[p[0]:p[0] + H, p[1]:p[1] + W] = 1
    Ho = (H + 2 * p[0] - k[0]) // s[0] + 1
    Wo = (W + 2 * p[1] - k[1]) // s[1] + 1
    out = np.zeros((N, Ho, Wo, C))
    for i in range(Ho):
        for j in range(Wo):
            win = xp[:, i * s[0]:i * s[0] + k[0], j * s[1]:j * s[1] + k[1], :]
            if kind == "max":
                out[:, i, j] = win.max(axis=(1, 2))
            else:
                cnt = k[0] * k[1] if include_pad else ones[i * s[0]:i * s[0] + k[0], j * s[1]:j * s[1] + k[1]].sum()
                out[:, i, j] = win.sum(axis=(1, 2)) / cnt
    return out


@fuzz_target(600)
@given(data=st.data())
def pool2d(data: st.DataObject) -> None:
    kind = data.draw(st.sampled_from(["max", "avg"]))
    N, C = data.draw(st.integers(0, 2)), data.draw(st.integers(0, 3))
    H, W = data.draw(st.integers(0, 6)), data.draw(st.integers(0, 6))
    k = data.draw(PAIR_ARG)
    stride = data.draw(st.none() | PAIR_ARG)
    padding = data.draw(PAIR_ARG)
    include = data.draw(st.booleans())
    dt = data.draw(st.sampled_from(FLOAT_DTS + [np.int64]))
    x = rand_array(data.draw, (N, H, W, C), dt, special=True)
    case("pool2d", kind, x, "k", k, "stride", stride, "padding", padding, "include_pad", include)
    tx = ng.tensor(x)
    if kind == "max":
        call = lambda: F.max_pool2d(tx, k, stride, padding)  # noqa: E731
    else:
        call = lambda: F.avg_pool2d(tx, k, stride, padding, count_include_pad=include)  # noqa: E731
    kk = _pair_ok(k)
    ss = kk if stride is None else _pair_ok(stride)
    pp = _pair_ok(padding)
    if KIND in (kk, ss, pp):
        expect_error(call, KIND, "argument kind")
        return
    if dt == np.int64:
        expect_error(call, KIND, "int pooling")
        return
    if min(kk) <= 0 or min(ss) <= 0 or min(pp) < 0 or pp[0] > kk[0] // 2 or pp[1] > kk[1] // 2:
        expect_error(call, SHAPE, "kernel/stride/padding")
        return
    if H + 2 * pp[0] < kk[0] or W + 2 * pp[1] < kk[1] or C == 0 or H == 0 or W == 0:
        ok, r = run(call)
        if ok and not (C == 0 or N == 0) and (H + 2 * pp[0] < kk[0] or W + 2 * pp[1] < kk[1]):
            fail(f"pool accepted a window larger than the input: {r.shape}")
        if not ok and not isinstance(r, SHAPE):
            fail(f"pool: {type(r).__name__}")
        return
    r = expect_ok(call)
    ref = np_pool(x.astype(np.float64), kk, (min(ss[0], 100), min(ss[1], 100)), pp, kind, include)
    assert_array(r, ref.astype(dt), tol_of(dt), tol_of(dt), dtype=dt, what=f"{kind}_pool2d")


@fuzz_target(900)
@given(data=st.data())
def nn_functional(data: st.DataObject) -> None:
    fn = data.draw(st.sampled_from(["linear", "layer_norm", "dropout", "mse_loss", "cross_entropy", "nll_loss",
                                    "bce", "sdpa"]))
    dt = data.draw(st.sampled_from(FLOAT_DTS))
    tol = tol_of(dt)
    if fn == "linear":
        N, I, O = (data.draw(st.integers(0, 4)) for _ in range(3))
        lead = data.draw(hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=3))
        wI = I if data.draw(st.integers(0, 6)) else I + 1
        x = rand_array(data.draw, lead + (I,), dt, special=True)
        w = rand_array(data.draw, (O, wI), dt)
        b = data.draw(st.sampled_from([None, O, O + 1]))
        bb = None if b is None else rand_array(data.draw, (b,), dt)
        case("linear", x, w, bb)
        call = lambda: F.linear(ng.tensor(x), ng.tensor(w), None if bb is None else ng.tensor(bb))  # noqa: E731
        if wI != I or (b is not None and b != O):
            expect_error(call, SHAPE, "linear shapes")
            return
        ref = x.astype(np.float64) @ w.astype(np.float64).T + (0 if bb is None else bb.astype(np.float64))
        assert_array(expect_ok(call), ref.astype(dt), tol, tol, dtype=dt, what="linear")
        return
    if fn == "layer_norm":
        shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=4))
        k = data.draw(st.integers(1, len(shape)))
        ns = data.draw(st.sampled_from(["ok", "int", "bad", "neg"]))
        normalized = {"ok": shape[-k:], "int": shape[-1], "bad": tuple(s + 1 for s in shape[-k:]), "neg": -1}[ns]
        eps = data.draw(st.sampled_from([1e-5, 0.0, 1.0, -1.0, NAN]))
        x = rand_array(data.draw, shape, dt, special=True)
        case("layer_norm", x, normalized, eps)
        call = lambda: F.layer_norm(ng.tensor(x), normalized, eps=eps)  # noqa: E731
        if ns in ("bad", "neg") or eps < 0 or eps != eps:
            expect_error(call, SHAPE, "layer_norm args")
            return
        axes = tuple(range(len(shape) - (k if ns == "ok" else 1), len(shape)))
        x64 = x.astype(np.float64)
        if x.size == 0:
            assert_array(expect_ok(call), x, 0, 0, dtype=dt, what="layer_norm empty")
            return
        mu = x64.mean(axis=axes, keepdims=True)
        var = ((x64 - mu) ** 2).mean(axis=axes, keepdims=True)
        ref = (x64 - mu) / np.sqrt(var + eps)
        r = expect_ok(call)
        if not np.isfinite(x64).all() or eps == 0.0:
            rows = np.isfinite(x64).all(axis=axes, keepdims=True) & (var > 1e-6)
            rows = np.broadcast_to(rows, x.shape)
            if not np.isfinite(np.asarray(r)[rows]).all():
                fail("layer_norm: a finite row gave non-finite values")
            return
        assert_array(r, ref.astype(dt), 1e-3 if dt == np.float32 else 1e-7, 1e-3 if dt == np.float32 else 1e-7,
                     dtype=dt, what="layer_norm")
        return
    if fn == "dropout":
        p = data.draw(st.sampled_from([0.0, 0.5, 1.0, 0.999, -0.1, 1.1, NAN, "a"]))
        training = data.draw(st.booleans())
        x = rand_array(data.draw, data.draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)), dt)
        case("dropout", x, p, training)
        call = lambda: F.dropout(ng.tensor(x), p=p, training=training)  # noqa: E731
        if isinstance(p, str):
            expect_error(call, KIND, "p kind")
            return
        if not 0 <= p <= 1:
            expect_error(call, SHAPE, "p range")
            return
        r = np.asarray(expect_ok(call))
        if not training or p == 0:
            assert_array(r, x, 0, 0, dtype=dt, what="dropout identity")
        elif p == 1:
            assert_array(r, np.zeros_like(x), 0, 0, dtype=dt, what="dropout p=1")
        else:
            kept = r != 0
            assert_array(r[kept], (x[kept].astype(np.float64) / (1 - p)).astype(dt), 1e-5, 1e-5, what="dropout scale")
        return
    if fn in ("mse_loss", "bce"):
        shape = data.draw(hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=4))
        tshape = shape if data.draw(st.integers(0, 6)) else shape + (2,)
        x = rand_array(data.draw, shape, dt, special=True) * data.draw(st.sampled_from([1, 1e4]))
        y = rand_array(data.draw, tshape, dt)
        if fn == "bce":
            y = (y > 0).astype(dt)
        red = data.draw(st.sampled_from(["mean", "sum", "none", "avg"]))
        f = F.mse_loss if fn == "mse_loss" else F.binary_cross_entropy_with_logits
        case(fn, x, y, red)
        call = lambda: f(ng.tensor(x), ng.tensor(y), reduction=red)  # noqa: E731
        if red == "avg" or tshape != shape:
            expect_error(call, SHAPE, "reduction / shapes")
            return
        x64, y64 = x.astype(np.float64), y.astype(np.float64)
        if fn == "mse_loss":
            el = (x64 - y64) ** 2
        else:
            el = np.maximum(x64, 0) - x64 * y64 + np.log1p(np.exp(-np.abs(x64)))
        ref = {"none": el, "sum": el.sum(), "mean": el.mean() if el.size else np.nan}[red]
        assert_array(expect_ok(call), np.asarray(ref).astype(dt), 1e-5, 1e-5, dtype=dt, what=fn)
        return
    if fn in ("cross_entropy", "nll_loss"):
        N, K = data.draw(st.integers(0, 4)), data.draw(st.integers(1, 4))
        scale = data.draw(st.sampled_from([1.0, 1e4, 1e30]))
        x = (rand_array(data.draw, (N, K), np.float64) * scale).astype(dt)
        lab = np.asarray(data.draw(st.lists(st.integers(-1, K), min_size=N, max_size=N)), dtype=np.int64)
        ldt = data.draw(st.sampled_from([np.int64, np.int64, np.float32]))
        red = data.draw(st.sampled_from(["mean", "sum", "none"]))
        f = F.cross_entropy if fn == "cross_entropy" else F.nll_loss
        case(fn, x, lab, ldt, red)
        xt = ng.tensor(x, requires_grad=True)
        call = lambda: f(xt, ng.tensor(lab.astype(ldt)), reduction=red)  # noqa: E731
        if ldt != np.int64:
            expect_error(call, KIND, "float labels")
            return
        if ((lab < 0) | (lab >= K)).any():
            expect_error(call, IndexError, "label out of range")
            return
        x64 = x.astype(np.float64)
        if fn == "cross_entropy":
            m = x64.max(axis=1, keepdims=True) if N else x64
            lse = (np.log(np.exp(x64 - m).sum(axis=1)) + m[:, 0]) if N else np.zeros(0)
            el = lse - x64[np.arange(N), lab]
        else:
            el = -x64[np.arange(N), lab]
        ref = {"none": el, "sum": el.sum(), "mean": el.mean() if N else np.nan}[red]
        r = expect_ok(call)
        assert_array(r, np.asarray(ref).astype(dt), 1e-5, 1e-5 * (1 + abs(scale)), dtype=dt, what=fn)
        if N and fn == "cross_entropy":
            expect_ok(lambda: r.sum().backward())
            if not np.isfinite(np.asarray(xt.grad)).all():
                fail(f"cross_entropy gradient not finite for logits of scale {scale}")
        return
    # scaled dot-product attention
    Nb, h, L, S, d, dv = (data.draw(st.integers(0, 3)) for _ in range(6))
    kd = d if data.draw(st.integers(0, 8)) else d + 1
    q = rand_array(data.draw, (Nb, h, L, d), dt)
    k = rand_array(data.draw, (Nb, h, S, kd), dt)
    v = rand_array(data.draw, (Nb, h, S, dv), dt)
    mask_kind = data.draw(st.sampled_from(["none", "bool", "float", "bad"]))
    causal = data.draw(st.booleans())
    mask = None
    if mask_kind == "bool":
        mask = np.asarray(data.draw(hnp.arrays(np.bool_, (L, S))))
    elif mask_kind == "float":
        mask = rand_array(data.draw, (L, S), dt)
    elif mask_kind == "bad":
        mask = np.zeros((L + 1, S + 1), dtype=np.bool_)
    case("sdpa", q, k, v, mask, causal)
    call = lambda: F.scaled_dot_product_attention(ng.tensor(q), ng.tensor(k), ng.tensor(v),  # noqa: E731
                                                 attn_mask=None if mask is None else ng.tensor(mask), is_causal=causal)
    if kd != d or mask_kind == "bad" or (causal and mask is not None):
        if 0 in (Nb, h, L, S) and kd == d:
            ok, r = run(call)  # an empty problem: a mismatched mask may go unchecked (see the report)
            if not ok and not isinstance(r, SHAPE):
                fail(f"sdpa: {type(r).__name__}")
            return
        expect_error(call, SHAPE, "sdpa shapes / mask with is_causal")
        return
    r = expect_ok(call)
    if r.shape != (Nb, h, L, dv):
        fail(f"sdpa shape {r.shape}")
    if L == 0 or Nb == 0 or h == 0 or dv == 0:
        return
    s_ = np.einsum("nhld,nhsd->nhls", q.astype(np.float64), k.astype(np.float64)) / np.sqrt(d) if d else \
        np.zeros((Nb, h, L, S))
    if causal:
        s_ = np.where(np.tril(np.ones((L, S), bool)), s_, -np.inf)
    if mask_kind == "bool":
        s_ = np.where(mask, s_, -np.inf)
    elif mask_kind == "float":
        s_ = s_ + mask
    with np.errstate(all="ignore"):
        m = s_.max(axis=-1, keepdims=True) if S else s_
        e = np.exp(s_ - m)
        p = e / e.sum(axis=-1, keepdims=True)
        ref = np.einsum("nhls,nhsv->nhlv", p, v.astype(np.float64)) if S else np.full((Nb, h, L, dv), np.nan)
    got = np.asarray(r)
    fully_masked = ~np.isfinite(ref)
    if fully_masked.any():
        # PyTorch gives NaN for a row that may attend nowhere; accept NaN or 0, never garbage
        g = got[fully_masked]
        if not (np.isnan(g) | (g == 0)).all():
            fail("sdpa: a fully masked row gave a finite non-zero value")
        ref = np.where(fully_masked, got, ref)
    assert_array(got, ref.astype(dt), 1e-4 if dt == np.float32 else 1e-9, 1e-4 if dt == np.float32 else 1e-9,
                 dtype=dt, what="sdpa")


SIZE = st.one_of(st.integers(1, 4), st.integers(1, 4), st.sampled_from([0, -1, 2**40, 2**63, 1.5, None, "3",
                                                                        np.int64(2)]))


def _size_ok(v: object, allow_zero: bool = False) -> object:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        return KIND
    if v < (0 if allow_zero else 1):
        return SHAPE
    if v > 10**6:
        return (SHAPE, MemoryError, OverflowError)
    return None


@fuzz_target(900)
@given(data=st.data())
def layers(data: st.DataObject) -> None:
    nn = ng.nn
    name = data.draw(st.sampled_from(["Linear", "Conv2d", "RNN", "LSTM", "GRU", "MultiheadAttention", "Embedding",
                                      "BatchNorm2d", "LayerNorm"]))
    a, b = data.draw(SIZE), data.draw(SIZE)
    extra = data.draw(st.sampled_from([1, 2, 0, -1, 1.5, None]))  # num_layers / kernel / heads
    case("layers", name, a, b, extra)
    if name in ("Linear", "Embedding") and 0 in (a, b) and _size_ok(a, True) is None and _size_ok(b, True) is None:
        ok, r = run(lambda: getattr(nn, name)(a, b))  # PyTorch allows zero sizes; ValueError is also clear
        if not ok and not isinstance(r, SHAPE):
            fail(f"{name} with a zero size: {type(r).__name__}")
        return
    if name == "Linear":
        make = lambda: nn.Linear(a, b)  # noqa: E731
        errs = [_size_ok(a, True), _size_ok(b, True)]
    elif name == "Conv2d":
        make = lambda: nn.Conv2d(a, b, extra)  # noqa: E731
        errs = [_size_ok(a), _size_ok(b), _size_ok(extra)]
    elif name in ("RNN", "LSTM", "GRU"):
        make = lambda: getattr(nn, name)(a, b, num_layers=extra)  # noqa: E731
        errs = [_size_ok(a), _size_ok(b), _size_ok(extra)]
    elif name == "MultiheadAttention":
        make = lambda: nn.MultiheadAttention(a, extra)  # noqa: E731
        errs = [_size_ok(a), _size_ok(extra)]
        if not any(errs) and a % extra:
            errs = [SHAPE]
    elif name == "Embedding":
        make = lambda: nn.Embedding(a, b)  # noqa: E731
        errs = [_size_ok(a, True), _size_ok(b, True)]
    elif name == "BatchNorm2d":
        make = lambda: nn.BatchNorm2d(a)  # noqa: E731
        errs = [_size_ok(a)]
    else:
        make = lambda: nn.LayerNorm(a)  # noqa: E731
        errs = [_size_ok(a)]
    errs = [e for e in errs if e is not None]
    if errs:
        kinds = errs[0] if isinstance(errs[0], tuple) else (errs[0],)
        for e in errs[1:]:
            kinds = kinds + (e if isinstance(e, tuple) else (e,))
        expect_error(make, kinds, f"{name} constructor")
        return
    m = expect_ok(make)
    dt = np.float32
    N = data.draw(st.integers(0, 2))
    T = data.draw(st.integers(0, 3))
    wrong = data.draw(st.integers(0, 5)) == 0
    if name == "Linear":
        x = rand_array(data.draw, (N, a + wrong), dt)
        case("layers Linear forward", a, b, x)
        call = lambda: m(ng.tensor(x))  # noqa: E731
        want = (N, b)
    elif name == "Conv2d":
        H = data.draw(st.integers(1, 4))
        x = rand_array(data.draw, (N, H, H, a + wrong), dt)
        case("layers Conv2d forward", a, b, extra, x)
        call = lambda: m(ng.tensor(x))  # noqa: E731
        if H < extra and not wrong:
            expect_error(call, SHAPE, "kernel larger than input")
            return
        want = (N, H - extra + 1, H - extra + 1, b)
    elif name in ("RNN", "LSTM", "GRU"):
        x = rand_array(data.draw, (N, T, a + wrong), dt)
        case(f"layers {name} forward", a, b, extra, x)
        call = lambda: m(ng.tensor(x))[0]  # noqa: E731
        if T == 0 and not wrong:
            expect_error(call, SHAPE, "empty sequence (PyTorch raises too)")
            return
        want = (N, T, b)
    elif name == "MultiheadAttention":
        S = data.draw(st.integers(0, 3))
        q = rand_array(data.draw, (N, T, a + wrong), dt)
        kv = rand_array(data.draw, (N, S, a), dt)
        kpm = data.draw(st.sampled_from([None, "row", "all"]))
        mask = None
        if kpm is not None:
            mask = np.zeros((N, S), bool)
            if kpm == "all" and N:
                mask[0, :] = True  # a whole row masked: PyTorch gives NaN for that sample
            elif S:
                mask[:, 0] = True
        case("layers MHA forward", a, extra, q, kv, kpm)
        call = lambda: m(ng.tensor(q), ng.tensor(kv), ng.tensor(kv),  # noqa: E731
                         key_padding_mask=None if mask is None else ng.tensor(mask))[0]
        want = (N, T, a)
    elif name == "Embedding":
        idx = np.asarray(data.draw(st.lists(st.integers(-1, a), max_size=4)), dtype=np.int64)
        case("layers Embedding forward", a, b, idx)
        call = lambda: m(ng.tensor(idx))  # noqa: E731
        if ((idx < 0) | (idx >= a)).any():
            expect_error(call, IndexError, "embedding index")
            return
        r = expect_ok(call)
        assert_array(r, np.asarray(m.weight.detach())[idx], 0, 0, what="embedding")
        return
    elif name == "BatchNorm2d":
        x = rand_array(data.draw, (N, 2, 2, a + wrong), dt)
        case("layers BatchNorm2d forward", a, x)
        call = lambda: m(ng.tensor(x))  # noqa: E731
        if N == 0 and not wrong:
            ok, r = run(call)  # PyTorch raises for an empty batch in training mode (ValueError)
            if not ok and not isinstance(r, SHAPE):
                fail(f"BatchNorm2d N=0: {type(r).__name__}")
            return
        want = x.shape
    else:
        x = rand_array(data.draw, (N, 3, a + wrong), dt)
        case("layers LayerNorm forward", a, x)
        call = lambda: m(ng.tensor(x))  # noqa: E731
        want = x.shape
    if wrong:
        expect_error(call, SHAPE, f"{name} with the wrong feature size")
        return
    r = expect_ok(call)
    if tuple(r.shape) != tuple(want):
        fail(f"{name} output shape {r.shape}, expected {want}")
    got = np.asarray(r)
    if name == "MultiheadAttention" and kpm == "all":
        return
    if name == "MultiheadAttention" and (S <= 1 and kpm is not None or S == 0):
        return
    if got.size and not np.isfinite(got).all():
        fail(f"{name}: non-finite output for finite input")


if __name__ == "__main__":
    main()
