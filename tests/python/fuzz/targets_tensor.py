"""Fuzz targets: tensor construction, factories, elementwise ops, reductions, shapes, indexing,
matmul and joins, each checked against NumPy (see harness.py for the rules)."""

from __future__ import annotations

import operator
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

warnings.simplefilter("ignore")  # NumPy's RuntimeWarnings for the reference's own NaN/overflow
np.seterr(all="ignore")

NAN, INF = float("nan"), float("inf")
NG_DT = {np.dtype(np.float32): ng.float32, np.dtype(np.float64): ng.float64, np.dtype(np.int64): ng.int64,
         np.dtype(np.bool_): ng.bool}
NP_OF = {ng.float32: np.float32, ng.float64: np.float64, ng.int64: np.int64, ng.bool: np.bool_}

SPECIAL = [0.0, -0.0, 1.0, -1.0, NAN, INF, -INF, 1e4, -1e4, 1e-30, 3e38, -3e38]


def shapes(max_dims: int = 3, max_side: int = 4, min_dims: int = 0) -> st.SearchStrategy:
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=0, max_side=max_side)


def elements(dt: np.dtype, special: bool = True) -> st.SearchStrategy:
    dt = np.dtype(dt)
    if dt.kind == "f":
        base = st.floats(-8, 8, width=min(64, dt.itemsize * 8))
        if special:
            vals = [v for v in SPECIAL if dt.itemsize >= 4 or abs(v) < 6e4 or v != v]
            base = base | st.sampled_from(vals)
        return base
    if dt.kind == "c":
        return st.complex_numbers(max_magnitude=4, width=dt.itemsize * 8)
    if dt.kind == "b":
        return st.booleans()
    info = np.iinfo(dt)
    return st.integers(max(info.min, -5), min(info.max, 5)) | st.sampled_from([info.min, info.max])


def arrays(dt: np.dtype, shape: st.SearchStrategy = None, special: bool = True) -> st.SearchStrategy:
    return hnp.arrays(dt, shape if shape is not None else shapes(), elements=elements(dt, special))


@st.composite
def views(draw: st.DrawFn, a: np.ndarray) -> np.ndarray:
    """a, or a non-contiguous view of it with the same values layout semantics."""
    how = draw(st.sampled_from(["c", "c", "T", "rev", "step", "fortran"]))
    if how == "T" and a.ndim >= 2:
        return np.ascontiguousarray(a.T).T if draw(st.booleans()) else a.T.copy().T
    if how == "rev" and a.ndim >= 1:
        return a[::-1].copy()[::-1]
    if how == "step" and a.ndim >= 1:
        b = np.repeat(a, 2, axis=0) if a.shape[0] else a
        return b[::2]
    if how == "fortran":
        return np.asfortranarray(a)
    return a


FLOAT_DTS = [np.float32, np.float64]
NATIVE_DTS = [np.float32, np.float64, np.int64, np.bool_]
ALL_DTS = [np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
           np.float16, np.float32, np.float64, np.complex64]


def expected_dtype(arr: np.ndarray) -> object:
    """ng.tensor(arr)'s dtype by API.md, or an exception class."""
    k = arr.dtype.kind
    if k == "f" and arr.dtype.itemsize in (4, 8):
        return arr.dtype.type
    if k == "b":
        return np.bool_
    if k in "iu":
        if arr.dtype == np.uint64 and arr.size and int(arr.max()) > 2**63 - 1:
            return OverflowError
        return np.int64
    return TypeError


# ----------------------------------------------------------------------------- construction
@fuzz_target(900)
@given(data=st.data())
def tensor_from_data(data: st.DataObject) -> None:
    dt = np.dtype(data.draw(st.sampled_from(ALL_DTS)))
    arr = data.draw(views(data.draw(arrays(dt))))
    how = data.draw(st.sampled_from(["tensor", "tensor", "list", "from_numpy", "dtype", "requires_grad"]))
    case("tensor_from_data", how, arr)
    want = expected_dtype(arr)
    if how == "tensor":
        if isinstance(want, type) and issubclass(want, Exception):
            expect_error(lambda: ng.tensor(arr), want, f"ng.tensor of {arr.dtype}")
            return
        t = expect_ok(lambda: ng.tensor(arr))
        assert_array(t, arr.astype(want), 0, 0, dtype=want, what="ng.tensor")
        arr_copy = arr.copy()
        if arr.size and arr.flags.writeable:
            arr.flat[0] = arr.flat[-1]
        assert_array(t, arr_copy.astype(want), 0, 0, what="ng.tensor copies")
    elif how == "list":
        lst = arr.tolist()
        if dt.kind == "c" and arr.size:
            expect_error(lambda: ng.tensor(lst), KIND, "complex list")
            return
        if want is OverflowError:
            expect_error(lambda: ng.tensor(lst), want, "uint64 beyond int64 in a list")
            return
        ref = np.array(lst)
        ref_dt = {"f": np.float32, "b": np.bool_}.get(dt.kind, np.int64)
        if ref.size == 0:
            ref_dt = np.float32  # PyTorch: an empty list is float32
            ref = np.zeros(ref.shape)
        t = expect_ok(lambda: ng.tensor(lst))
        assert_array(t, ref.astype(ref_dt), 0, 0, dtype=ref_dt, what="ng.tensor(list)")
    elif how == "from_numpy":
        ok_layout = all(s >= 0 for s in arr.strides) and arr.flags.writeable and arr.flags.aligned
        if arr.dtype not in NG_DT:
            expect_error(lambda: ng.from_numpy(arr), KIND, f"from_numpy of {arr.dtype}")
            return
        ok, r = run(lambda: ng.from_numpy(arr))
        if not ok:
            if ok_layout:
                fail(f"from_numpy refused a native array with strides {arr.strides}: {r!r}")
            if not isinstance(r, SHAPE):
                fail(f"from_numpy: {type(r).__name__} for a bad layout")
            return
        assert_array(r, arr, 0, 0, dtype=arr.dtype, what="from_numpy")
        if arr.size:  # shares memory
            arr.flat[0] = arr.flat[-1] if arr.dtype != np.bool_ else not arr.flat[0]
            assert_array(r, arr, 0, 0, what="from_numpy shares memory")
    elif how == "dtype":
        target = data.draw(st.sampled_from([ng.float32, ng.float64, ng.int64, ng.bool, "float64", np.float32,
                                            np.float16, "int32", 5, "half", np.complex64]))
        case("tensor_from_data dtype=", target, arr)
        tnp = {ng.float32: np.float32, ng.float64: np.float64, ng.int64: np.int64, ng.bool: np.bool_,
               "float64": np.float64, np.float32: np.float32}.get(target)
        if tnp is None:
            expect_error(lambda: ng.tensor(arr, dtype=target), KIND, f"dtype={target!r}")
            return
        if isinstance(want, type) and issubclass(want, Exception):
            ok, r = run(lambda: ng.tensor(arr, dtype=target))
            if ok:
                return  # a cast of a float16/complex/too-big array on request: not specified
            if not isinstance(r, (TypeError, OverflowError)):
                fail(f"{type(r).__name__} for an unsupported array with dtype={target}")
            return
        t = expect_ok(lambda: ng.tensor(arr, dtype=target))
        src = arr.astype(want)
        if tnp == np.int64 and src.dtype.kind == "f":
            ref = np.where(np.isfinite(src) & (np.abs(src) < 2.0**63), src, -2.0**63)
            ref = np.trunc(ref).astype(np.int64) if ref.size else ref.astype(np.int64)
        else:
            ref = src.astype(tnp)
        assert_array(t, ref, 0, 0, dtype=tnp, what=f"ng.tensor(dtype={target})")
    else:  # requires_grad
        if isinstance(want, type) and issubclass(want, Exception):
            return
        if want in (np.float32, np.float64):
            t = expect_ok(lambda: ng.tensor(arr, requires_grad=True))
            if not t.requires_grad:
                fail("requires_grad=True ignored")
            g = expect_ok(lambda: np.asarray(t))
            if g.flags.writeable:
                fail("np.asarray of a tensor requiring grad is writable")
        else:
            expect_error(lambda: ng.tensor(arr, requires_grad=True), RuntimeError, "int requires_grad")


# ----------------------------------------------------------------------------- factories
SIZE_ARGS = st.one_of(
    st.integers(0, 4), st.integers(0, 4), st.integers(-3, -1), st.integers(2**37, 2**70),
    st.sampled_from([2**62, 2**63 - 1, 2**63, 2**64, -2**63, 10**12]),
    st.builds(np.int64, st.integers(0, 4)), st.builds(np.int32, st.integers(-2, 4)), st.builds(np.uint8, st.integers(0, 3)),
    st.floats(-3, 3), st.none(), st.text(max_size=2), st.booleans(), st.just([2, 3]), st.just(np.float64(2.0)),
)


def _size_kind(v: object) -> str:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        return "type"
    if v < 0:
        return "neg"
    return "ok"


@fuzz_target(900)
@given(data=st.data())
def factories(data: st.DataObject) -> None:
    fn_name = data.draw(st.sampled_from(["zeros", "ones", "empty", "rand", "randn", "full"]))
    args = data.draw(st.lists(SIZE_ARGS, max_size=3))
    as_tuple = data.draw(st.booleans())
    dt = data.draw(st.sampled_from([None, None, ng.float32, ng.float64, ng.int64, ng.bool, np.float16, "float64"]))
    fill = data.draw(st.sampled_from([1.5, 0, -2, True, NAN, 2**63, None, "a"])) if fn_name == "full" else None
    fn = getattr(ng, fn_name)
    kw = {} if dt is None else {"dtype": dt}
    if fn_name == "full":
        call = lambda: fn(tuple(args), fill, **kw)  # noqa: E731
    elif as_tuple:
        call = lambda: fn(tuple(args), **kw)  # noqa: E731
    else:
        call = lambda: fn(*args, **kw)  # noqa: E731
    case("factories", fn_name, args, "tuple" if as_tuple else "", kw, fill)
    if len(args) == 1 and isinstance(args[0], list):
        args = list(args[0])  # ng.zeros([2, 3]) is ng.zeros(2, 3), as PyTorch
    kinds = [_size_kind(a) for a in args]
    if any(k == "type" for k in kinds) or dt in (np.float16,):
        expect_error(call, (KIND, SHAPE, OverflowError) if "neg" in kinds or fn_name == "full" else KIND,
                     "non-integer size or bad dtype")
        return
    if fn_name in ("rand", "randn") and dt in (ng.int64, ng.bool):
        expect_error(call, (KIND, SHAPE, MemoryError, OverflowError), "random ints")
        return
    if fn_name == "full" and (fill is None or isinstance(fill, str)):
        expect_error(call, KIND, "bad fill")
        return
    if any(k == "neg" for k in kinds):
        expect_error(call, (SHAPE, OverflowError), "negative size")
        return
    sizes = [int(a) for a in args]
    numel = 1
    for s in sizes:
        numel *= s
    nz = 1
    for s_ in sizes:
        nz *= max(s_, 1)
    if any(s >= 2**63 for s in sizes) or nz >= 2**63:
        expect_error(call, (SHAPE, OverflowError), "size beyond int64")
        return
    if numel > 10**8:
        expect_error(call, (SHAPE, MemoryError, OverflowError), f"{numel} elements")
        return
    if fn_name == "full" and fill == 2**63 and dt in (ng.int64, None):
        expect_error(call, OverflowError, "fill beyond int64")
        return
    t = expect_ok(call)
    if t.shape != tuple(sizes):
        fail(f"shape {t.shape}, expected {tuple(sizes)}")
    if numel == 0:
        return  # (NumPy itself refuses views like (0, 2**61) as "too big" by nominal bytes)
    a = np.asarray(t)
    if fn_name == "zeros" and a.any():
        fail("zeros not zero")
    if fn_name == "ones" and not (a == 1).all():
        fail("ones not one")
    if fn_name == "rand" and a.size and not ((a >= 0) & (a < 1)).all():
        fail("rand outside [0, 1)")
    if fn_name == "randn" and a.size and not np.isfinite(a).all():
        fail("randn not finite")


@fuzz_target(500)
@given(start=st.one_of(st.integers(-10, 10), st.floats(-10, 10), st.sampled_from([NAN, INF, 2**62, -2**63, 1e300])),
       stop=st.one_of(st.none(), st.integers(-10, 10), st.floats(-10, 10), st.sampled_from([NAN, INF, 2**62, 1e18])),
       step=st.one_of(st.integers(-3, 3), st.floats(0.01, 3), st.floats(-3, -0.01),
                      st.sampled_from([1e-300, NAN, 2**62, 0.0]),
                      st.sampled_from(["a", None])))
def arange(start: object, stop: object, step: object) -> None:
    case("arange", start, stop, step)
    call = lambda: ng.arange(start, stop, step)  # noqa: E731
    if step is None or isinstance(step, str):
        expect_error(call, KIND, "non-number step")
        return
    lo, hi = (0, start) if stop is None else (start, stop)
    all_int = all(isinstance(v, int) for v in (lo, hi, step))
    if step == 0:
        expect_error(call, SHAPE, "zero step")
        return
    if all_int:
        n = max(0, -((lo - hi) // step))
    else:
        q = (float(hi) - float(lo)) / float(step)
        if not np.isfinite(q):
            if q != q or q > 0:
                expect_error(call, (SHAPE, MemoryError), "infinite arange")
            else:
                ok, r = run(call)
                if ok and r.numel() != 0:
                    fail(f"arange({lo}, {hi}, {step}) is empty, got {r.shape}")
            return
        n = max(0, int(np.ceil(q)))
    if n > 10**8:
        expect_error(call, (SHAPE, MemoryError), f"{n} elements")
        return
    t = expect_ok(call)
    want_dt = np.int64 if all_int else np.float32
    ref = np.arange(lo, hi, step, dtype=np.int64 if all_int else np.float64) if n else np.zeros(0)
    if t.shape != ref.shape:
        fail(f"arange shape {t.shape}, expected {ref.shape}")
    assert_array(t, ref.astype(want_dt), 1e-6, 1e-5, dtype=want_dt, what="arange")


# ----------------------------------------------------------------------------- elementwise
def _category(dt: np.dtype) -> int:
    return {"b": 0, "i": 1, "f": 2}[np.dtype(dt).kind]


def promote(a: object, b: object) -> np.dtype:
    """PyTorch's result dtype for tensors/scalars of our four dtypes (scalar: Python number)."""
    def info(x: object) -> tuple:
        if isinstance(x, np.ndarray):
            return (np.dtype(x.dtype), x.ndim > 0)
        if isinstance(x, bool):
            return (np.dtype(np.bool_), False)
        if isinstance(x, int):
            return (np.dtype(np.int64), False)
        return (np.dtype(np.float32), False)  # Python float: default float dtype
    (da, dima), (db, dimb) = info(a), info(b)
    ca, cb = _category(da), _category(db)
    if dima == dimb or ca == cb:
        if ca == cb and dima != dimb:
            return da if dima else db
        if ca != cb:
            return da if ca > cb else db
        return np.promote_types(da, db)
    # different categories, one dimensioned: the higher category wins; a 0-d/scalar float
    # over an int tensor gives the default float32 (PyTorch), else its own dtype
    hi_d, hi_dim = (da, dima) if ca > cb else (db, dimb)
    if not hi_dim and np.dtype(hi_d).kind == "f" and not isinstance(a if ca > cb else b, np.ndarray):
        return np.dtype(np.float32)
    if not hi_dim and np.dtype(hi_d).kind == "f":
        return hi_d if True else np.dtype(np.float32)
    return hi_d


OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv, "**": operator.pow,
       "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq,
       "!=": operator.ne}


@st.composite
def broadcast_pair(draw: st.DrawFn) -> tuple:
    if draw(st.integers(0, 5)) == 0:  # an incompatible pair now and then
        s1 = draw(shapes(max_side=4))
        s2 = draw(shapes(max_side=4))
    else:
        s1, s2 = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=3, min_side=0, max_side=4)).input_shapes
    return s1, s2


def _np_binary(op: str, x: np.ndarray, y: np.ndarray, dt: np.dtype) -> np.ndarray:
    if op in ("<", "<=", ">", ">=", "==", "!="):
        return OPS[op](x.astype(dt), y.astype(dt))
    if op == "/":
        fdt = dt if dt.kind == "f" else np.dtype(np.float32)
        return (x.astype(fdt) / y.astype(fdt)).astype(fdt)
    xd, yd = x.astype(dt), y.astype(dt)
    if op == "**" and dt.kind == "i":
        r = np.ones(np.broadcast_shapes(xd.shape, yd.shape), np.int64)
        base, e = np.broadcast_to(xd, r.shape).copy(), np.broadcast_to(yd, r.shape).copy()
        while (e > 0).any():  # wrapping power by squaring, as C++ int64 does
            odd = (e & 1) == 1
            r = np.where(odd, r * base, r)
            base = base * base
            e >>= 1
        return r
    return OPS[op](xd, yd)


@fuzz_target(1500)
@given(data=st.data())
def binary_ops(data: st.DataObject) -> None:
    op = data.draw(st.sampled_from(list(OPS)))
    s1, s2 = data.draw(broadcast_pair())
    d1 = np.dtype(data.draw(st.sampled_from(NATIVE_DTS)))
    d2 = np.dtype(data.draw(st.sampled_from(NATIVE_DTS)))
    x = data.draw(arrays(d1, st.just(s1)))
    kind_b = data.draw(st.sampled_from(["tensor", "tensor", "array", "int", "float", "bool", "npscalar", "bad"]))
    if kind_b == "tensor" or kind_b == "array":
        y = data.draw(arrays(d2, st.just(s2)))
    elif kind_b == "int":
        y = data.draw(st.integers(-4, 4) | st.sampled_from([2**62, -2**63]))
    elif kind_b == "float":
        y = data.draw(st.floats(-4, 4) | st.sampled_from(SPECIAL))
    elif kind_b == "bool":
        y = data.draw(st.booleans())
    elif kind_b == "npscalar":
        y = data.draw(st.sampled_from([np.float64(1.5), np.int64(2), np.float32(-0.5), np.bool_(True), np.int32(3)]))
    else:
        y = data.draw(st.sampled_from([None, "a", object(), [1, 2, 3, 4, 5], 1j, np.float16(1)]))
    reflected = data.draw(st.booleans()) and kind_b != "tensor"
    if op == "**" and d1 == np.bool_:
        d1 = np.dtype(np.int64)
        x = x.astype(np.int64)
    tx = ng.tensor(x)
    if kind_b == "tensor":
        other = ng.tensor(y)
    else:
        other = y
    call = (lambda: OPS[op](other, tx)) if reflected else (lambda: OPS[op](tx, other))
    case("binary_ops", op, x, kind_b, y if not isinstance(y, np.ndarray) else y, "reflected" if reflected else "")
    if kind_b == "bad":
        if isinstance(y, list):
            ok, r = run(call)  # a list is array-like: broadcast rules decide
            if ok:
                return
            if not isinstance(r, (SHAPE, KIND)):
                fail(f"{type(r).__name__} for a list operand")
            return
        if op in ("==", "!=") and not isinstance(y, (complex, np.float16)):
            ok, r = run(call)
            if ok and r is not (op == "!="):
                if not isinstance(r, bool):
                    fail(f"tensor {op} {y!r} gave {r!r}")
            return
        expect_error(call, KIND, f"operand {type(y).__name__}")
        return
    # the NumPy operand and the reference dtype
    if kind_b == "npscalar":
        ya = np.asarray(y)
        if ya.dtype == np.int32:
            ya = ya.astype(np.int64)
        yv: object = ya
        yn = ya
    elif isinstance(y, np.ndarray):
        yv = y
        yn = y
    else:
        yv = y
        yn = np.asarray(y)
    try:
        shape = np.broadcast_shapes(x.shape, np.shape(yn))
    except ValueError:
        expect_error(call, SHAPE, "shapes do not broadcast")
        return
    if isinstance(yv, np.ndarray) and yv.ndim == 0 and kind_b == "npscalar":
        # NumPy scalars act as 0-d tensors: same category keeps the tensor's dtype
        dt = promote(x, yv) if _category(yv.dtype) != _category(x.dtype) else x.dtype
    else:
        dt = promote(x, yv)
    if kind_b == "int" and dt == np.int64 and not -2**63 <= y < 2**63:
        return
    a_, b_ = (yn, x) if reflected else (x, yn)
    if op in ("+", "-", "*", "**") and dt == np.bool_:
        if op == "-":
            ok, r = run(call)
            if not ok and not isinstance(r, (KIND, RuntimeError)):
                fail(f"bool - bool: {type(r).__name__}")
            return
        dt = np.dtype(np.int64)  # documented in ops/elementwise.h: bool arithmetic in int64
    if op == "**" and dt == np.int64 and (np.asarray(b_).astype(np.int64) < 0).any():
        expect_error(call, SHAPE, "integer to a negative integer power")
        return
    if op == "**" and dt == np.int64 and np.shape(b_) == () and not isinstance(b_, np.ndarray) and False:
        return
    r = expect_ok(call)
    ref = _np_binary(op, np.asarray(a_), np.asarray(b_), dt)
    want_dt = ref.dtype
    tol = 2e-6 if want_dt == np.float32 or dt == np.float32 else 1e-12
    if op == "**":
        tol = 1e-5 if want_dt == np.float32 else 1e-12
    if not isinstance(r, ng.Tensor):
        fail(f"result is a {type(r).__name__}")
    if r.shape != shape:
        fail(f"result shape {r.shape}, expected {shape}")
    # (a NumPy scalar of another category: PyTorch's and our dtype rules differ; values only,
    # to the precision of the dtype we chose: a Python-scalar-like operand leaves float32 alone)
    if kind_b == "npscalar" and r.dtype == ng.float32:
        tol = max(tol, 1e-5 if op == "**" else 2e-6)
    assert_array(r, ref, tol, tol, dtype=None if kind_b == "npscalar" else want_dt, what=f"x {op} y")


UNARY = {
    "exp": (lambda t: t.exp(), np.exp), "log": (lambda t: t.log(), np.log), "sqrt": (lambda t: t.sqrt(), np.sqrt),
    "abs": (lambda t: t.abs(), np.abs), "tanh": (lambda t: t.tanh(), np.tanh),
    "sigmoid": (lambda t: t.sigmoid(), lambda a: 1 / (1 + np.exp(-a))),
    "relu": (lambda t: t.relu(), lambda a: np.where(a > 0, a, np.where(np.isnan(a), a, np.zeros_like(a)))),
    "neg": (lambda t: -t, np.negative),
}


@fuzz_target(900)
@given(data=st.data())
def unary_ops(data: st.DataObject) -> None:
    import nablagrad.functional as F
    name = data.draw(st.sampled_from(list(UNARY) + ["clip", "softmax", "log_softmax", "leaky_relu", "gelu"]))
    dt = np.dtype(data.draw(st.sampled_from(FLOAT_DTS + [np.float32, np.int64, np.bool_])))
    x = data.draw(arrays(dt, shapes(max_dims=3)))
    t = ng.tensor(x)
    case("unary_ops", name, x)
    x64 = x.astype(np.float64)
    if name in UNARY:
        f, ref_f = UNARY[name]
        if dt.kind != "f" and name not in ("abs", "neg"):
            expect_error(lambda: f(t), KIND, f"{name} of {dt}")
            return
        if dt == np.bool_ and name in ("abs", "neg"):
            if name == "neg":
                expect_error(lambda: f(t), KIND, "negation of bool")
            return
        r = expect_ok(lambda: f(t))
        ref = ref_f(x64) if dt.kind == "f" else ref_f(x)
        tol = 3e-6 if dt == np.float32 else 1e-12
        assert_array(r, np.asarray(ref).astype(dt), tol, tol, dtype=dt, what=name)
        return
    if dt.kind != "f":
        fn = {"clip": lambda: t.clip(0, 1), "softmax": lambda: F.softmax(t), "log_softmax": lambda: F.log_softmax(t),
              "leaky_relu": lambda: F.leaky_relu(t), "gelu": lambda: F.gelu(t)}[name]
        expect_error(fn, KIND, f"{name} of {dt}")
        return
    tol = 1e-5 if dt == np.float32 else 1e-12
    if name == "clip":
        lo = data.draw(st.sampled_from([None, -1.0, 0.0, 0.5, 2, NAN, np.float64(1.0)]))
        hi = data.draw(st.sampled_from([None, -1.0, 0.0, 0.5, 2, np.int64(1)]))
        case("unary_ops clip", lo, hi, x)
        r = expect_ok(lambda: t.clip(lo, hi))
        ref = x64.copy()
        if lo is not None and lo == lo:
            ref = np.where(ref < lo, lo, ref)
        if hi is not None:
            ref = np.where(ref > hi, hi, ref)
        if lo is not None and lo != lo:
            return  # NaN bound: see the report (treated as no bound)
        assert_array(r, ref.astype(dt), 0, 0, dtype=dt, what=f"clip({lo}, {hi})")
        return
    axis = data.draw(st.integers(-4, 3) | st.sampled_from([None, 1.5]))
    if name in ("softmax", "log_softmax"):
        f = getattr(F, name)
        case("unary_ops", name, "axis", axis, x)
        if axis is None or isinstance(axis, float):
            expect_error(lambda: f(t, axis=axis), KIND, "axis type")
            return
        nd = max(x.ndim, 1)
        if not -nd <= axis < nd:
            expect_error(lambda: f(t, axis=axis), IndexError, "axis out of range")
            return
        r = expect_ok(lambda: f(t, axis=axis))
        if x.ndim == 0:
            ref = np.array(1.0) if name == "softmax" else np.array(0.0)
            ref = np.where(np.isnan(x64) | np.isinf(x64), np.nan, ref)
        else:
            m = np.max(x64, axis=axis, keepdims=True) if x.size else x64
            m = np.where(np.isfinite(m), m, 0) if x.size else m
            e = np.exp(x64 - m)
            s = e.sum(axis=axis, keepdims=True)
            ref = e / s if name == "softmax" else (x64 - m) - np.log(s)
        if np.isinf(x64).any() or np.isnan(x64).any():
            # infinities: only check that finite rows stay finite
            got = np.asarray(r)
            rows_ok = np.isfinite(x64).all(axis=axis, keepdims=True) if x.ndim else np.isfinite(x64)
            rows_ok = np.broadcast_to(rows_ok, x.shape)
            if not np.isfinite(got[rows_ok]).all():
                fail(f"{name}: a finite row gave non-finite values")
            return
        assert_array(r, ref.astype(dt), max(tol, 1e-6), max(tol, 1e-6) * (1 + np.abs(ref).max(initial=0)),
                     dtype=dt, what=name)
        return
    if name == "leaky_relu":
        slope = data.draw(st.sampled_from([0.01, 0.0, -1.0, 2.0, NAN]))
        r = expect_ok(lambda: F.leaky_relu(t, slope))
        ref = np.where(x64 > 0, x64, x64 * slope)
        assert_array(r, ref.astype(dt), tol, tol, dtype=dt, what="leaky_relu")
        return
    approx = data.draw(st.sampled_from(["none", "tanh", "bad", None]))
    if approx not in ("none", "tanh"):
        expect_error(lambda: F.gelu(t, approximate=approx), (SHAPE, KIND), "gelu approximate")
        return
    r = expect_ok(lambda: F.gelu(t, approximate=approx))
    if np.isinf(x64).any():
        return  # gelu(-inf): 0 or NaN (-inf * 0); see the report
    from math import erf
    if approx == "none":
        ref = np.vectorize(lambda v: 0.5 * v * (1 + erf(v / np.sqrt(2))) if np.isfinite(v) else
                           (v if v > 0 else (0.0 if v < 0 else v)), otypes=[np.float64])(x64) if x.size else x64
    else:
        with np.errstate(all="ignore"):
            ref = 0.5 * x64 * (1 + np.tanh(np.sqrt(2 / np.pi) * (x64 + 0.044715 * x64 ** 3)))
        ref = np.where(np.isneginf(x64), 0.0, ref)
    assert_array(r, np.asarray(ref).astype(dt), 1e-5, 1e-5, dtype=dt, what=f"gelu {approx}")


# ----------------------------------------------------------------------------- reductions
@fuzz_target(900)
@given(data=st.data())
def reductions(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(["sum", "mean", "max", "min"]))
    dt = np.dtype(data.draw(st.sampled_from(NATIVE_DTS + FLOAT_DTS)))
    x = data.draw(arrays(dt, shapes(max_dims=3)))
    axis = data.draw(st.one_of(st.none(), st.integers(-4, 3), st.lists(st.integers(-3, 3), max_size=3).map(tuple),
                               st.sampled_from([1.5, "a", 2**70, (0, 0), (), [0, 1], np.int64(0)])))
    keepdims = data.draw(st.booleans())
    t = ng.tensor(x)
    call = lambda: getattr(t, name)(axis=axis, keepdims=keepdims)  # noqa: E731
    case("reductions", name, x, "axis", axis, "keepdims", keepdims)
    if isinstance(axis, (float, str)):
        expect_error(call, KIND, "axis type")
        return
    nd = x.ndim
    axes = None if axis is None else (axis if isinstance(axis, (tuple, list)) else (axis,))
    if axes is not None:
        if name == "mean" and dt.kind != "f":
            expect_error(call, (KIND, SHAPE, IndexError), "mean of ints")
            return
        if len(axes) == 0:
            expect_error(call, SHAPE, "empty axis tuple")
            return
        if any(not -max(nd, 0) <= int(a) < max(nd, 0) for a in axes) or (nd == 0):
            expect_error(call, IndexError, "axis out of range")
            return
        norm = [int(a) % nd for a in axes]
        if len(set(norm)) != len(norm):
            expect_error(call, SHAPE, "repeated axis")
            return
    if name == "mean" and dt.kind != "f":
        expect_error(call, KIND, "mean of ints")
        return
    npaxis = None if axes is None else tuple(int(a) for a in axes)
    reduced = x.size if npaxis is None else int(np.prod([x.shape[a] for a in npaxis]))
    if name in ("max", "min") and reduced == 0 and x.size == 0 and (npaxis is None or True):
        out_size = 0 if npaxis is None else int(np.prod([s for i, s in enumerate(x.shape) if i % max(nd, 1) not in
                                                           [a % max(nd, 1) for a in npaxis]]))
        if npaxis is None or out_size > 0 or reduced == 0:
            expect_error(call, SHAPE, "max of an empty tensor")
            return
    r = expect_ok(call)
    if dt == np.float32 and name in ("sum", "mean") and x.size and np.nanmax(np.abs(
            np.where(np.isinf(x), 0, x))) > 1e37:
        return  # float32 accumulation overflows (see the report: PyTorch accumulates in double)
    x64 = x.astype(np.float64) if dt.kind == "f" else x
    ref = getattr(np, {"max": "max", "min": "min", "sum": "sum", "mean": "mean"}[name])(
        x64 if dt != np.bool_ or name != "sum" else x.astype(np.int64), axis=npaxis, keepdims=keepdims)
    want = dt if dt.kind == "f" else (np.int64 if name == "sum" else dt)
    tol = 1e-5 if dt == np.float32 else 1e-12
    atol = tol * (1 + x.size)
    if name in ("sum", "mean") and dt.kind == "f" and x.size:
        # Sums cancel: a different (but fixed) summation order is off by ~eps * sum|x|.
        mag = np.abs(np.where(np.isfinite(x64), x64, 0.0))
        atol = max(atol, 4 * tol * float(mag.sum()))
    assert_array(r, np.asarray(ref).astype(want), tol, atol, dtype=want, what=name)


# ----------------------------------------------------------------------------- shapes / indexing
@fuzz_target(900)
@given(data=st.data())
def shape_ops(data: st.DataObject) -> None:
    x = data.draw(arrays(np.dtype(np.float64), shapes(max_dims=4, max_side=3), special=False))
    x = data.draw(views(x))
    t = ng.tensor(x)
    op = data.draw(st.sampled_from(["reshape", "transpose", "permute", "flatten", "T", "squeeze", "unsqueeze",
                                    "expand"]))
    nd = x.ndim
    case("shape_ops", op, x)
    if op == "reshape":
        new = data.draw(st.lists(st.integers(-2, 6) | st.sampled_from([2**62, 0]), max_size=4))
        case("shape_ops reshape", x.shape, new)
        call = lambda: t.reshape(*new)  # noqa: E731
        try:
            if any(v < -1 for v in new):
                raise ValueError("negative size")
            ref = x.reshape(new) if new else x.reshape(())
        except (ValueError, TypeError):
            if not new:
                ok, r = run(call)
                if ok:
                    fail(f"reshape() of {x.shape} returned {r.shape}")
                return
            if x.size == 0 and (0 in new or -1 in new) and all(v >= -1 for v in new) and new.count(-1) <= 1:
                # NumPy refuses (0, 2**62) and (-1, 2**62) as "too big" by bytes; PyTorch and
                # nablagrad accept an empty shape of any sides (nothing is allocated), -1 standing
                # for 0. (A ValueError when the nonzero sides' product overflows int64, or when
                # -1 is ambiguous because another side is 0, is fine too.)
                ok, r = run(call)
                if ok and tuple(r.shape) != tuple(0 if v == -1 else v for v in new):
                    fail(f"reshape{tuple(new)} of empty {x.shape} gave {r.shape}")
                if ok:
                    repr(r)  # printing a huge empty tensor must not go through a NumPy array
                if not ok:
                    expect_error(call, SHAPE, "reshape of an empty tensor to an overflowing shape")
                return
            expect_error(call, SHAPE, "bad reshape")
            return
        if not new:
            ok, r = run(call)
            if ok:
                assert_array(r, ref, 0, 0, what="reshape()")
            return
        r = expect_ok(call)
        assert_array(r, ref, 0, 0, what="reshape")
        return
    if op == "transpose":
        a, b = data.draw(st.integers(-5, 4)), data.draw(st.integers(-5, 4))
        call = lambda: t.transpose(a, b)  # noqa: E731
        case("shape_ops transpose", x.shape, a, b)
        if nd == 0 or not (-nd <= a < nd and -nd <= b < nd):
            expect_error(call, IndexError, "axis out of range")
            return
        assert_array(expect_ok(call), np.swapaxes(x, a, b), 0, 0, what="transpose")
        return
    if op == "permute":
        perm = data.draw(st.permutations(range(nd)) | st.lists(st.integers(-5, 5), max_size=5))
        call = lambda: t.permute(*perm)  # noqa: E731
        case("shape_ops permute", x.shape, perm)
        if len(perm) != nd:
            expect_error(call, (SHAPE, IndexError), "permutation length")
            return
        if any(not -nd <= p < nd for p in perm):
            expect_error(call, IndexError, "axis out of range")
            return
        if len({p % nd for p in perm}) != nd:
            expect_error(call, SHAPE, "repeated axis")
            return
        if nd == 0:
            ok, r = run(call)
            if ok:
                assert_array(r, x, 0, 0, what="permute()")
            return
        assert_array(expect_ok(call), np.transpose(x, perm), 0, 0, what="permute")
        return
    if op == "flatten":
        start = data.draw(st.integers(-5, 4))
        call = lambda: t.flatten(start)  # noqa: E731
        case("shape_ops flatten", x.shape, start)
        n = max(nd, 1)
        if not -n <= start < n:
            expect_error(call, IndexError, "axis out of range")
            return
        s = start % n
        ref = x.reshape(x.shape[:s] + (int(np.prod(x.shape[s:])),)) if nd else x.reshape(1)
        assert_array(expect_ok(call), ref, 0, 0, what="flatten")
        return
    if op == "T":
        if nd != 2:
            expect_error(lambda: t.T, SHAPE, ".T of non-2-D")
            return
        assert_array(expect_ok(lambda: t.T), x.T, 0, 0, what=".T")
        return
    if op == "squeeze":
        ax = data.draw(st.none() | st.integers(-5, 4))
        call = lambda: t.squeeze(ax) if ax is not None else t.squeeze()  # noqa: E731
        case("shape_ops squeeze", x.shape, ax)
        if ax is None:
            assert_array(expect_ok(call), np.squeeze(x), 0, 0, what="squeeze()")
            return
        n = max(nd, 1)
        if not -n <= ax < n or nd == 0:  # (PyTorch allows squeeze(0) of a 0-d tensor; we raise IndexError)
            if nd == 0:
                ok, r = run(call)
                if not ok and not isinstance(r, IndexError):
                    fail(f"squeeze of 0-d: {type(r).__name__}")
                return
            expect_error(call, IndexError, "axis out of range")
            return
        if nd and x.shape[ax] != 1:
            ok, r = run(call)
            if ok:
                assert_array(r, x, 0, 0, what="squeeze of a non-1 axis (PyTorch: no-op)")
            elif not isinstance(r, SHAPE):
                fail(f"squeeze: {type(r).__name__}")
            return
        assert_array(expect_ok(call), np.squeeze(x, ax) if nd else x, 0, 0, what="squeeze")
        return
    if op == "unsqueeze":
        ax = data.draw(st.integers(-6, 5))
        call = lambda: t.unsqueeze(ax)  # noqa: E731
        case("shape_ops unsqueeze", x.shape, ax)
        if not -(nd + 1) <= ax < nd + 1:
            expect_error(call, IndexError, "axis out of range")
            return
        assert_array(expect_ok(call), np.expand_dims(x, ax), 0, 0, what="unsqueeze")
        return
    new = data.draw(st.lists(st.integers(-1, 4) | st.sampled_from([2**40, -2]), min_size=nd, max_size=nd + 2))
    call = lambda: t.expand(*new)  # noqa: E731
    case("shape_ops expand", x.shape, new)
    lead = len(new) - nd
    tgt = []
    ok_ref = True
    for i, s in enumerate(new):
        if i < lead:
            if s < 0:
                ok_ref = False
            tgt.append(s)
        else:
            cur = x.shape[i - lead]
            if s == -1:
                tgt.append(cur)
            elif s == cur or cur == 1 and s >= 0:
                tgt.append(s)
            else:
                ok_ref = False
    if not ok_ref:
        expect_error(call, SHAPE, "bad expand")
        return
    numel = int(np.prod(tgt, dtype=object)) if tgt else 1
    nonzero = int(np.prod([max(v, 1) for v in tgt], dtype=object)) if tgt else 1
    if numel > 2**62 or nonzero >= 2**63:
        # (shapes are checked on the product of their nonzero sides, as factories and reshape do)
        expect_error(call, SHAPE, "expand beyond int64")
        return
    r = expect_ok(call)
    if r.shape != tuple(tgt):
        fail(f"expand shape {r.shape} expected {tuple(tgt)}")
    if numel < 10**6:
        assert_array(r, np.broadcast_to(x, tgt), 0, 0, what="expand")


INDEX_ATOMS = st.one_of(
    st.integers(-5, 5), st.slices(5), st.none(), st.just(Ellipsis),
    st.lists(st.integers(-5, 5), min_size=0, max_size=4),
    st.builds(np.int64, st.integers(-4, 4)),
    st.sampled_from([1.0, "a", 2**70, np.array([True, False]), np.array([[0, 1], [1, 0]])]),
)


@fuzz_target(1200)
@given(data=st.data())
def indexing(data: st.DataObject) -> None:
    x = data.draw(arrays(np.dtype(np.float64), shapes(max_dims=3, max_side=4), special=False))
    idx = data.draw(st.lists(INDEX_ATOMS, max_size=4).map(tuple))
    if len(idx) == 1 and data.draw(st.booleans()):
        idx = idx[0]
    t = ng.tensor(x)
    case("indexing", x.shape, idx)
    parts = idx if isinstance(idx, tuple) else (idx,)
    n_arrays = sum(isinstance(p, (list, np.ndarray)) for p in parts)
    has_bad = any(isinstance(p, (float, str)) for p in parts)
    np_idx = tuple(np.asarray(p, dtype=np.int64) if isinstance(p, list) else p for p in parts)
    if not isinstance(idx, tuple):
        np_idx = np_idx[0]
    try:
        ref = x[np_idx]
        ref_err = None
    except (IndexError, TypeError, ValueError) as e:
        ref, ref_err = None, e
    call = lambda: t[idx]  # noqa: E731
    if has_bad:
        expect_error(call, (IndexError, KIND, SHAPE), "bad index kind")
        return
    if ref_err is not None:
        expect_error(call, (IndexError, SHAPE, KIND), f"NumPy: {ref_err}")
        return
    if n_arrays > 1:
        ok, r = run(call)  # only one integer array axis is supported
        if ok:
            assert_array(r, ref, 0, 0, what="index")
        elif not isinstance(r, (IndexError, SHAPE)):
            fail(f"two index arrays: {type(r).__name__}")
        return
    r = expect_ok(call)
    assert_array(r, ref, 0, 0, what="index")
    # the gradient of an indexed sum: ones scattered (added) at the selected places
    tg = ng.tensor(x, requires_grad=True)
    expect_ok(lambda: tg[idx].sum().backward())
    g = np.zeros_like(x)
    np.add.at(g, np_idx, 1.0)
    assert_array(tg.grad, g, 0, 0, what="index backward")


# ----------------------------------------------------------------------------- matmul / joins
@fuzz_target(900)
@given(data=st.data())
def matmul(data: st.DataObject) -> None:
    nd1, nd2 = data.draw(st.integers(0, 4)), data.draw(st.integers(0, 4))
    if data.draw(st.integers(0, 4)) > 0:
        sh = data.draw(hnp.mutually_broadcastable_shapes(signature="(m?,n),(n,p?)->(m?,p?)",
                                                          max_dims=2, min_side=0, max_side=4)).input_shapes
        s1, s2 = sh
    else:
        s1 = data.draw(shapes(max_dims=nd1, min_dims=nd1))
        s2 = data.draw(shapes(max_dims=nd2, min_dims=nd2))
    d1 = np.dtype(data.draw(st.sampled_from([np.float32, np.float64, np.float64, np.int64])))
    d2 = d1 if data.draw(st.integers(0, 5)) else np.dtype(data.draw(st.sampled_from(FLOAT_DTS + [np.int64])))
    a = data.draw(arrays(d1, st.just(s1), special=False))
    b = data.draw(arrays(d2, st.just(s2), special=False))
    a = data.draw(views(a))
    case("matmul", a, b)
    ta, tb = ng.tensor(a), ng.tensor(b)
    call = lambda: ta @ tb  # noqa: E731
    try:
        ref = np.matmul(a.astype(np.float64), b.astype(np.float64))
    except ValueError:
        expect_error(call, SHAPE if d1 == d2 and d1.kind == "f" else (SHAPE, KIND), "matmul shapes")
        return
    if a.ndim == 0 or b.ndim == 0:
        expect_error(call, SHAPE, "matmul of a 0-d tensor")
        return
    if d1 != d2 or d1.kind != "f":
        ok, r = run(call)
        if not ok and not isinstance(r, KIND):
            fail(f"matmul {d1}@{d2}: {type(r).__name__}")
        if ok:
            assert_array(r, ref, 1e-5, 1e-5, what="mixed matmul")
        return
    r = expect_ok(call)
    tol = 1e-5 if d1 == np.float32 else 1e-12
    assert_array(r, np.asarray(ref).astype(d1), tol, tol * 10, dtype=d1, what="matmul")


@fuzz_target(800)
@given(data=st.data())
def joins(data: st.DataObject) -> None:
    fn = data.draw(st.sampled_from(["concatenate", "stack", "where"]))
    n = data.draw(st.integers(0, 3))
    base = data.draw(shapes(max_dims=3, max_side=3))
    arrs = []
    for _ in range(n):
        s = list(base)
        if s and data.draw(st.integers(0, 3)) == 0:
            s[data.draw(st.integers(0, len(s) - 1))] = data.draw(st.integers(0, 3))
        if data.draw(st.integers(0, 8)) == 0:
            s = s[:-1]
        dt = np.dtype(data.draw(st.sampled_from([np.float32, np.float32, np.float64, np.int64, np.bool_])))
        arrs.append(data.draw(arrays(dt, st.just(tuple(s)), special=False)))
    axis = data.draw(st.integers(-4, 3) | st.sampled_from([1.5, None]))
    ts = [ng.tensor(a) for a in arrs]
    case("joins", fn, [(a.shape, a.dtype) for a in arrs], "axis", axis)
    if fn == "where":
        c = data.draw(arrays(np.dtype(np.bool_), shapes(max_dims=3, max_side=3)))
        a = data.draw(arrays(np.dtype(np.float32), st.just(base), special=False))
        b = data.draw(st.sampled_from([1.0, 2, None]) | arrays(np.dtype(np.float64), shapes(max_dims=2, max_side=3),
                                                               special=False))
        case("joins where", c, a, b)
        call = lambda: ng.where(ng.tensor(c), ng.tensor(a), ng.tensor(b) if isinstance(b, np.ndarray) else b)  # noqa
        if b is None:
            expect_error(call, KIND, "where None")
            return
        try:
            ref = np.where(c, a, b)
        except ValueError:
            expect_error(call, SHAPE, "where shapes")
            return
        r = expect_ok(call)
        want = np.float64 if isinstance(b, np.ndarray) and (b.ndim > 0 or a.ndim == 0) else np.float32
        assert_array(r, ref.astype(want), 1e-6, 1e-6, dtype=want, what="where")
        return
    f = getattr(ng, fn)
    call = lambda: f(ts, axis)  # noqa: E731
    if axis is None or isinstance(axis, float):
        expect_error(call, KIND, "axis type")
        return
    if n == 0:
        expect_error(call, SHAPE, "no tensors")
        return
    common = np.result_type(*arrs) if arrs else None
    # PyTorch promotion among tensors of the same rank: float64 > float32 > int64 > bool
    cats = [a.dtype for a in arrs]
    if any(d == np.float64 for d in cats):
        want = np.float64
    elif any(d == np.float32 for d in cats):
        want = np.float32
    elif any(d == np.int64 for d in cats):
        want = np.int64
    else:
        want = np.bool_
    del common
    try:
        ref = getattr(np, fn)(arrs, axis=axis)
    except (ValueError, np.exceptions.AxisError) as e:
        expect_error(call, (SHAPE, IndexError), f"NumPy: {e}")
        return
    r = expect_ok(call)
    assert_array(r, ref.astype(want), 1e-6, 1e-6, dtype=want, what=fn)


if __name__ == "__main__":
    main()
