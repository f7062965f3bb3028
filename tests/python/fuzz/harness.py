"""Harness of the fuzz targets (tests/python/fuzz/targets_*.py), run in a child process.

Each target is a function of hypothesis-drawn data (``@fuzz_target(n)`` with ``n`` examples in
the CI profile, 10x that with NABLAGRAD_FUZZ=long). Before each call of the library the case is
written to stderr (``case(...)``), so a segfault or abort, which kills the child, still shows the
input that caused it. Every target checks its results against NumPy (or a closed form), and every
exception against the kinds API.md names for that mistake (``expect_error``). At the end each
target prints ``FUZZ-COUNT <name> <examples run>``; tests/python/test_fuzz_api.py parses these.

The child runs with an address-space limit (RLIMIT_AS, 12 GiB) so that an attempt to allocate an
absurd amount of memory fails as MemoryError (which the oracle then reports as a bug when the
case's true size is small) instead of swapping the machine.

    python tests/python/fuzz/targets_tensor.py [target ...]      # CI profile
    NABLAGRAD_FUZZ=long python tests/python/fuzz/targets_tensor.py
"""

from __future__ import annotations

import faulthandler
import os
import sys
import time
import traceback
from typing import Any, Callable, Dict, Sequence, Tuple, Type, Union

import numpy as np
from hypothesis import HealthCheck, Phase, settings

PROFILE = os.environ.get("NABLAGRAD_FUZZ", "ci")
SCALE = {"ci": 1, "long": 10, "smoke": 0.05, "quick": 0.3}.get(PROFILE, 1)

# Exception kinds of API.md's Errors section (OverflowError: a Python int beyond int64).
API_ERRORS = (ValueError, TypeError, IndexError, KeyError, MemoryError, RuntimeError, OverflowError)
SHAPE = ValueError
KIND = TypeError
# Messages that do not name the problem (pybind11's generic overload failure, a bare C++ what()).
_BAD_MESSAGES = ("incompatible function arguments", "std::exception", "Unknown exception", "bad_alloc",
                 "Unable to cast", "vector::_M", "basic_string")

_TARGETS: Dict[str, Tuple[Callable[[], None], int]] = {}
_COUNT = {"n": 0}
_CASE = {"text": ""}


class FuzzFailure(AssertionError):
    pass


def fuzz_target(n: int) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Registers a @given-decorated function as a target with n examples (CI profile)."""
    def deco(fn: Callable[..., None]) -> Callable[..., None]:
        _TARGETS[fn.__name__] = (fn, n)
        return fn
    return deco


def case(*parts: Any) -> None:
    """Records (on stderr, flushed) the case about to run and counts it."""
    text = " ".join(p if isinstance(p, str) else _short(p) for p in parts)
    _CASE["text"] = text
    sys.stderr.write("CASE " + text + "\n")
    sys.stderr.flush()


def _short(v: Any, limit: int = 300) -> str:
    if isinstance(v, np.ndarray):
        r = f"ndarray(shape={v.shape}, dtype={v.dtype}, strides={v.strides}"
        if v.size <= 12:
            r += f", values={v.tolist()!r}"
        return r + ")"
    r = repr(v)
    return r if len(r) <= limit else r[:limit] + "..."


def fail(msg: str) -> None:
    raise FuzzFailure(f"{msg}\n  case: {_CASE['text']}")


def check_message(e: BaseException) -> None:
    msg = str(e)
    if not msg.strip():
        fail(f"{type(e).__name__} with an empty message")
    for bad in _BAD_MESSAGES:
        if bad in msg:
            fail(f"{type(e).__name__} whose message does not name the problem: {msg[:300]}")


def run(fn: Callable[[], Any]) -> Tuple[bool, Any]:
    """(True, result) or (False, exception) for a call of the library.

    Anything outside API.md's exception kinds is a bug, as is a message that names nothing."""
    try:
        return True, fn()
    except FuzzFailure:
        raise
    except API_ERRORS as e:
        check_message(e)
        return False, e
    except Exception as e:  # noqa: BLE001
        fail(f"raised {type(e).__name__} (not an API.md kind): {e}\n{traceback.format_exc()[-1500:]}")
        raise


ErrKinds = Union[Type[BaseException], Tuple[Type[BaseException], ...]]


def expect_error(fn: Callable[[], Any], kinds: ErrKinds, what: str = "") -> BaseException:
    ok, r = run(fn)
    if ok:
        fail(f"expected {_names(kinds)} ({what}) but the call returned {_short(r)}")
    if not isinstance(r, kinds):
        fail(f"expected {_names(kinds)} ({what}) but got {type(r).__name__}: {r}")
    return r


def expect_ok(fn: Callable[[], Any], what: str = "") -> Any:
    ok, r = run(fn)
    if not ok:
        fail(f"expected a result ({what}) but got {type(r).__name__}: {r}")
    return r


def _names(kinds: ErrKinds) -> str:
    if isinstance(kinds, tuple):
        return "/".join(k.__name__ for k in kinds)
    return kinds.__name__


def assert_array(got: Any, ref: Any, rtol: float = 1e-6, atol: float = 1e-6, dtype: Any = None,
                 what: str = "") -> None:
    """got (a Tensor or array) equals ref in shape, dtype (when given) and values (NaN == NaN)."""
    g = np.asarray(got)
    r = np.asarray(ref)
    if g.shape != r.shape:
        fail(f"{what}: shape {g.shape}, expected {r.shape}")
    if dtype is not None and g.dtype != np.dtype(dtype):
        fail(f"{what}: dtype {g.dtype}, expected {np.dtype(dtype)}")
    if g.dtype == np.bool_ or r.dtype == np.bool_ or (g.dtype.kind in "iu" and r.dtype.kind in "iu"):
        if not np.array_equal(g, r):
            fail(f"{what}: values {_short(g)} != expected {_short(r)}")
        return
    g64 = g.astype(np.float64)
    r64 = r.astype(np.float64)
    same_special = (np.isnan(g64) == np.isnan(r64)) & (np.isposinf(g64) == np.isposinf(r64)) & \
        (np.isneginf(g64) == np.isneginf(r64))
    if not same_special.all():
        bad = np.argwhere(~same_special)[:3].tolist()
        fail(f"{what}: NaN/Inf pattern differs at {bad}: got {_short(g)} expected {_short(r)}")
    fin = np.isfinite(r64)
    if fin.any():
        err = np.abs(g64[fin] - r64[fin])
        tol = atol + rtol * np.abs(r64[fin])
        if (err > tol).any():
            k = int(np.argmax(err - tol))
            fail(f"{what}: max error {err[k]:.3g} (tol {tol[k]:.3g}); got {_short(g)} expected {_short(r)}")


def _counted(inner: Callable[..., None], name: str) -> Callable[..., None]:
    """Wraps a target's body so that its calls are counted.

    derandomize=True seeds each target from a digest of this wrapper's source and signature,
    so the signature must not hold anything whose repr varies between processes (a default
    argument bound to a function prints its address), and the target's name is added to the
    digest so that targets do not all draw the same sequence.
    """
    def counted(*a: Any, **k: Any) -> None:
        _COUNT["n"] += 1
        inner(*a, **k)
    counted._counted = True  # type: ignore[attr-defined]
    counted._hypothesis_internal_add_digest = name.encode()  # type: ignore[attr-defined]
    return counted


def main(module_targets: Sequence[str] = ()) -> None:
    """Runs the registered targets (all, or those named on the command line)."""
    faulthandler.enable()
    # Under AddressSanitizer (tests/test_python_asan.py preloads it) the address space holds
    # ASan's shadow (terabytes reserved), so no RLIMIT_AS: ASan's own max_allocation_size_mb
    # with allocator_may_return_null caps allocations there instead.
    asan = "asan" in os.environ.get("LD_PRELOAD", "")
    try:
        if asan:
            raise ValueError("no address-space limit under ASan")
        import resource
        limit = 12 << 30
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard == resource.RLIM_INFINITY or hard > limit:
            resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (ImportError, ValueError, OSError):
        pass
    names = list(module_targets) or sys.argv[1:] or list(_TARGETS)
    failed = []
    for name in names:
        fn, n = _TARGETS[name]
        n_run = max(1, int(n * SCALE))
        inner = fn.hypothesis.inner_test  # type: ignore[attr-defined]
        if not getattr(inner, "_counted", False):
            fn.hypothesis.inner_test = _counted(inner, name)  # type: ignore[attr-defined]
        wrapped = settings(max_examples=n_run, deadline=None, derandomize=True, database=None,
                           suppress_health_check=list(HealthCheck),
                           phases=(Phase.explicit, Phase.generate, Phase.shrink), print_blob=False)(fn)
        _COUNT["n"] = 0
        t0 = time.perf_counter()
        try:
            wrapped()
        except BaseException as e:  # noqa: BLE001
            failed.append(name)
            sys.stdout.write(f"FUZZ-FAIL {name}: {type(e).__name__}: {e}\n")
            traceback.print_exc(file=sys.stdout)
        sys.stdout.write(f"FUZZ-COUNT {name} {_COUNT['n']} {time.perf_counter() - t0:.1f}s\n")
        sys.stdout.flush()
    sys.exit(1 if failed else 0)
