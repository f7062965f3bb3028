"""Fuzz targets: optimizers (hyper-parameter checks and PyTorch's update rules), LR schedulers,
DataLoader and ng.save/ng.load round trips (see harness.py)."""

from __future__ import annotations

import math
import os
import sys
import tempfile
import warnings

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (KIND, SHAPE, assert_array, case, expect_error, expect_ok, fail, fuzz_target,  # noqa: E402
                     main, run)

import nablagrad as ng  # noqa: E402

warnings.simplefilter("ignore")
np.seterr(all="ignore")
NAN, INF = float("nan"), float("inf")

HYPER = st.one_of(st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0, -0.1, NAN, INF, 1e-3]), st.floats(0, 1))


@fuzz_target(700)
@given(data=st.data())
def optimizers(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(["SGD", "Adam", "AdamW", "RMSprop"]))
    dt = data.draw(st.sampled_from([np.float32, np.float64]))
    lr = data.draw(HYPER | st.sampled_from(["a", None]))
    wd = data.draw(HYPER)
    kw = {"lr": lr, "weight_decay": wd}
    if name == "SGD":
        kw.update(momentum=data.draw(HYPER), dampening=data.draw(st.sampled_from([0.0, 0.5])),
                  nesterov=data.draw(st.booleans()))
    elif name in ("Adam", "AdamW"):
        kw.update(betas=(data.draw(HYPER), data.draw(HYPER)), eps=data.draw(st.sampled_from([1e-8, 0.0, -1.0])))
    else:
        kw.update(alpha=data.draw(HYPER), eps=data.draw(st.sampled_from([1e-8, -1.0])), momentum=data.draw(HYPER))
    seed = data.draw(st.integers(0, 1000))
    rng = np.random.default_rng(seed)
    shape = tuple(rng.integers(0, 4, size=rng.integers(0, 3)))
    p0 = rng.standard_normal(shape).astype(dt)
    grads = [rng.standard_normal(shape).astype(dt) for _ in range(2)]
    case("optimizers", name, kw, p0)
    p = ng.nn.Parameter(ng.tensor(p0))
    make = lambda: getattr(ng.optim, name)([p], **kw)  # noqa: E731
    if lr is None or isinstance(lr, str):
        expect_error(make, (KIND, SHAPE), "lr kind")
        return
    bad = not (lr >= 0) or not (wd >= 0) or math.isinf(lr) and False
    if name == "SGD":
        bad |= not (kw["momentum"] >= 0) or (kw["nesterov"] and (kw["momentum"] <= 0 or kw["dampening"] != 0))
    elif name in ("Adam", "AdamW"):
        bad |= not all(0 <= b < 1 for b in kw["betas"]) or not (kw["eps"] >= 0)
    else:
        bad |= not (kw["alpha"] >= 0) or not (kw["eps"] >= 0) or not (kw["momentum"] >= 0)
    if bad:
        expect_error(make, SHAPE, "invalid hyper-parameter")
        return
    if math.isinf(lr) or math.isinf(wd) or (name == "SGD" and math.isinf(kw["momentum"])) or \
            (name == "RMSprop" and (math.isinf(kw["alpha"]) or math.isinf(kw["momentum"]))):
        ok, r = run(make)  # accepted by PyTorch; the values then are what IEEE gives
        return
    opt = expect_ok(make)
    # NumPy twin of PyTorch's update rules, in float64
    x = p0.astype(np.float64)
    st_: dict = {}
    for t, g0 in enumerate(grads, 1):
        p.grad = ng.tensor(g0)
        expect_ok(opt.step)
        g = g0.astype(np.float64)
        if name == "SGD":
            if wd:
                g = g + wd * x
            mom = kw["momentum"]
            if mom:
                buf = g.copy() if "buf" not in st_ else mom * st_["buf"] + (1 - kw["dampening"]) * g
                st_["buf"] = buf
                g = g + mom * buf if kw["nesterov"] else buf
            x = x - lr * g
        elif name in ("Adam", "AdamW"):
            b1, b2 = kw["betas"]
            if name == "AdamW":
                x = x * (1 - lr * wd)
            elif wd:
                g = g + wd * x
            m = b1 * st_.get("m", 0) + (1 - b1) * g
            v = b2 * st_.get("v", 0) + (1 - b2) * g * g
            st_["m"], st_["v"] = m, v
            mhat = m / (1 - b1 ** t)
            denom = np.sqrt(v) / math.sqrt(1 - b2 ** t) + kw["eps"]
            x = x - lr * mhat / denom if False else x - lr / (1 - b1 ** t) * m / denom
            del mhat
        else:
            if wd:
                g = g + wd * x
            a = kw["alpha"]
            sq = a * st_.get("sq", 0) + (1 - a) * g * g
            st_["sq"] = sq
            avg = np.sqrt(sq) + kw["eps"]
            if kw["momentum"]:
                buf = kw["momentum"] * st_.get("buf", 0) + g / avg
                st_["buf"] = buf
                x = x - lr * buf
            else:
                x = x - lr * g / avg
    tol = 1e-4 if dt == np.float32 else 1e-9
    assert_array(p.detach(), x.astype(dt), tol, tol, dtype=dt, what=f"{name} two steps")


@fuzz_target(400)
@given(data=st.data())
def schedulers(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(["StepLR", "ExponentialLR", "CosineAnnealingLR"]))
    lr = data.draw(st.sampled_from([0.1, 1.0, 0.0]))
    arg = data.draw(st.sampled_from([1, 2, 3, 0, -1, 1.5, None, 2**70]))
    gamma = data.draw(st.sampled_from([0.1, 0.5, 1.0, 0.0, 2.0]))
    steps = data.draw(st.integers(0, 8))
    opt = ng.optim.SGD([ng.nn.Parameter(ng.zeros(2))], lr=lr)
    S = ng.optim.lr_scheduler
    case("schedulers", name, lr, arg, gamma, steps)
    if name == "StepLR":
        make = lambda: S.StepLR(opt, arg, gamma=gamma)  # noqa: E731
    elif name == "ExponentialLR":
        make = lambda: S.ExponentialLR(opt, gamma)  # noqa: E731
    else:
        make = lambda: S.CosineAnnealingLR(opt, arg, eta_min=gamma * 0.01)  # noqa: E731
    if name != "ExponentialLR" and (not isinstance(arg, int) or arg <= 0):
        expect_error(make, (SHAPE, KIND), f"{name} bad int")
        return
    sch = expect_ok(make)
    for k in range(1, steps + 1):
        expect_ok(sch.step)
        if name == "StepLR":
            want = lr * gamma ** (k // arg)
        elif name == "ExponentialLR":
            want = lr * gamma ** k
        else:
            eta = gamma * 0.01
            want = eta + (lr - eta) * (1 + math.cos(math.pi * k / arg)) / 2
        got = sch.get_last_lr()[0]
        if not math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12):
            if name == "CosineAnnealingLR" and k > arg:
                continue  # PyTorch's recursive form beyond T_max; compared in test_optim
            fail(f"{name} step {k}: lr {got}, expected {want}")
        if opt.param_groups[0]["lr"] != got:
            fail("scheduler lr not written to the optimizer")


@fuzz_target(600)
@given(n=st.integers(0, 9), bs=st.sampled_from([1, 2, 3, 4, 10, 0, -1, 1.5, None, True, np.int64(2), 2**70]),
       shuffle=st.booleans(), drop_last=st.booleans(), seed=st.sampled_from([None, 0, 7, -1, "x"]),
       feat=st.integers(0, 3))
def dataloader(n: int, bs: object, shuffle: bool, drop_last: bool, seed: object, feat: int) -> None:
    x = np.arange(n * max(feat, 1), dtype=np.float32).reshape(n, max(feat, 1))[:, :feat]
    y = np.arange(n, dtype=np.int64)
    case("dataloader", n, bs, shuffle, drop_last, seed, feat)
    ds = ng.data.TensorDataset(x, y)
    make = lambda: ng.data.DataLoader(ds, batch_size=bs, shuffle=shuffle, drop_last=drop_last, seed=seed)  # noqa
    if isinstance(bs, bool) or not isinstance(bs, (int, np.integer)) or bs <= 0:
        expect_error(make, (SHAPE, KIND), "batch_size")
        return
    if seed is not None and (not isinstance(seed, int) or seed < 0):
        expect_error(make, (SHAPE, KIND), "seed")
        return
    dl = expect_ok(make)
    batches = expect_ok(lambda: list(dl))
    bs = int(bs)
    nb = n // bs if drop_last else -(-n // bs)
    if len(batches) != nb or len(dl) != nb:
        fail(f"{len(batches)} batches (len {len(dl)}), expected {nb}")
    seen = []
    for bx, by in batches:
        if bx.shape != (bs, feat) and not (not drop_last and bx.shape[0] == n % bs and bx.shape[1:] == (feat,)):
            fail(f"batch shape {bx.shape}")
        if bx.dtype != ng.float32 or by.dtype != ng.int64:
            fail("batch dtypes")
        seen += np.asarray(by).tolist()
    if drop_last:
        if len(set(seen)) != len(seen) or not set(seen) <= set(range(n)) or len(seen) != nb * bs:
            fail(f"samples {seen}")
    elif sorted(seen) != list(range(n)):
        fail(f"samples {seen}")
    if not shuffle and seen != list(range(len(seen))):
        fail("unshuffled order changed")


KEYS = st.one_of(st.text(alphabet="ab.é_ 0", min_size=0, max_size=3), st.integers(-2, 3), st.sampled_from([True, 1.5]))


@st.composite
def tensors(draw: st.DrawFn) -> object:
    dt = draw(st.sampled_from([np.float32, np.float64, np.int64, np.bool_, np.int32, np.float16]))
    shape = tuple(draw(st.lists(st.integers(0, 3), max_size=3)))
    a = np.random.default_rng(draw(st.integers(0, 99))).standard_normal(shape)
    if a.size and draw(st.booleans()):
        a.flat[0] = draw(st.sampled_from([NAN, INF, -0.0]))
    a = np.asarray(a.astype(dt) if dt != np.bool_ else a > 0)
    return ng.tensor(a) if dt in (np.float32, np.float64, np.int64, np.bool_) and draw(st.booleans()) else a


LEAVES = st.one_of(tensors(), st.integers(-2**70, 2**70), st.floats(allow_nan=True), st.booleans(), st.none(),
                   st.text(max_size=4), st.sampled_from([object(), b"x", 1j]))
TREES = st.recursive(LEAVES, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(KEYS, kids, max_size=3)
                     | st.lists(kids, max_size=2).map(tuple), max_leaves=8)


def _same(a: object, b: object, path: str = "") -> None:
    if isinstance(a, (ng.Tensor, np.ndarray)):
        arr = np.asarray(a)
        want = arr.astype(np.int64) if arr.dtype.kind in "iu" and arr.dtype != np.int64 else arr
        if not isinstance(b, ng.Tensor):
            fail(f"{path}: loaded {type(b).__name__}, expected a Tensor")
        assert_array(b, want, 0, 0, dtype=want.dtype, what=f"round trip {path}")
        return
    if isinstance(a, float) and isinstance(b, float):
        if not (a == b and math.copysign(1, a) == math.copysign(1, b) or (a != a and b != b)):
            fail(f"{path}: float {a!r} came back as {b!r}")
        return
    if type(a) is not type(b):
        fail(f"{path}: {type(a).__name__} came back as {type(b).__name__}")
    if isinstance(a, dict):
        if list(a) != list(b):
            fail(f"{path}: keys {list(a)} came back as {list(b)}")
        for k in a:
            _same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        if len(a) != len(b):
            fail(f"{path}: length {len(a)} came back as {len(b)}")
        for i, (u, v) in enumerate(zip(a, b)):
            _same(u, v, f"{path}.{i}")
    elif a != b:
        fail(f"{path}: {a!r} came back as {b!r}")


def _problem(obj: object, path: list, names: set) -> object:
    """The exception kind ng.save must raise for obj, or None."""
    if isinstance(obj, (ng.Tensor, np.ndarray)):
        if not path:
            return KIND
        name = ".".join(path)
        if name in names or name == "__metadata__":
            return SHAPE
        names.add(name)
        dt = np.asarray(obj).dtype
        return None if dt in (np.float32, np.float64, np.int64, np.bool_) else KIND
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            e = _problem(v, path + [str(i)], names)
            if e:
                return e
        return None
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(k, bool) or not isinstance(k, (str, int)):
                return KIND
            if k == "":
                return SHAPE
            e = _problem(v, path + [str(k)], names)
            if e:
                return e
        return None
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return None
    return KIND


@fuzz_target(600)
@given(obj=TREES)
def save_load(obj: object) -> None:
    case("save_load", obj)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "ck.safetensors")
        with open(path, "wb") as f:
            f.write(b"previous")
        call = lambda: ng.save(obj, path)  # noqa: E731
        want = KIND if not isinstance(obj, (dict, list, tuple)) else _problem(obj, [], set())
        if want is not None:
            ok, r = run(call)
            if ok:
                fail(f"ng.save accepted {obj!r}")
            if not isinstance(r, (SHAPE, KIND)):
                fail(f"ng.save: {type(r).__name__}")
            with open(path, "rb") as f:
                if f.read() != b"previous":
                    fail("a failed ng.save changed the existing file")
            if sorted(os.listdir(d)) != ["ck.safetensors"]:
                fail(f"a failed ng.save left files behind: {os.listdir(d)}")
            return
        expect_ok(call)
        back = expect_ok(lambda: ng.load(path))
        _same(obj if not isinstance(obj, tuple) else obj, back, "")
        if sorted(os.listdir(d)) != ["ck.safetensors"]:
            fail(f"ng.save left files behind: {os.listdir(d)}")


if __name__ == "__main__":
    main()
