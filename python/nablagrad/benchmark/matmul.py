"""float32 matmul throughput: nablagrad vs NumPy (OpenBLAS), same run, alternating.

NumPy's thread count follows the run's through threadpoolctl when it is installed; otherwise
OpenBLAS uses its default (all cores, or OPENBLAS_NUM_THREADS when set before NumPy loads).
"""

from __future__ import annotations

import contextlib
import ctypes
from typing import Any, Dict, Iterator, List, Sequence, Tuple

import numpy as np

import nablagrad as ng

from ._common import race
from ._report import Config, Row

SIZES = (256, 512, 1024, 2048)
QUICK_SIZES = (512, 1024)
SMOKE_SIZES = (64,)


def _openblas_thread_setters() -> List[Tuple[Any, Any]]:
    """(set, get) thread-count functions of the OpenBLAS libraries loaded in this process
    (NumPy's wheels bundle one with prefixed names), found through /proc/self/maps."""
    try:
        with open("/proc/self/maps") as f:
            paths = sorted({line.split()[-1] for line in f if "openblas" in line.lower() and "/" in line})
    except OSError:
        return []
    found = []
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix in ("scipy_openblas", "openblas"):
            for suffix in ("64_", ""):
                setter = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                getter = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                if setter is not None and getter is not None:
                    found.append((setter, getter))
                    break
            else:
                continue
            break
    return found


@contextlib.contextmanager
def numpy_threads(n: int) -> Iterator[str]:
    """Limits NumPy's BLAS to n threads (threadpoolctl when installed, else OpenBLAS's own
    setter); yields a description for the table."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        setters = _openblas_thread_setters()
        if not setters:
            yield "BLAS default threads"
            return
        before = [int(get()) for _, get in setters]
        for set_, _ in setters:
            set_(ctypes.c_int(n))
        try:
            yield f"{n} OpenBLAS threads"
        finally:
            for (set_, _), k in zip(setters, before):
                set_(ctypes.c_int(k))
        return
    with threadpool_limits(limits=n, user_api="blas"):
        yield f"{n} BLAS threads"


def measure(n: int, rounds: int, min_time: float = 0.05) -> Dict[str, float]:
    """Median seconds of an n x n float32 matmul for {"numpy", "nablagrad"}, after checking
    that both give the same product."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    ta, tb = ng.from_numpy(a), ng.from_numpy(b)
    ref = a @ b
    err = np.max(np.abs(np.asarray(ta @ tb) - ref)) / np.max(np.abs(ref))
    if err >= 1e-4:
        raise AssertionError(f"matmul {n}x{n}: relative error {err} against NumPy")
    return race({"numpy": lambda: a @ b, "nablagrad": lambda: ta @ tb}, rounds=rounds, min_time=min_time)


def run(cfg: Config, sizes: Sequence[int] = ()) -> List[Row]:
    sizes = sizes or (SMOKE_SIZES if cfg.smoke else QUICK_SIZES if cfg.quick else SIZES)
    rows = []
    ng.set_num_threads(cfg.threads)
    with numpy_threads(cfg.threads) as np_threads:
        for n in sizes:
            t = measure(n, cfg.rounds, min_time=0.01 if cfg.smoke else 0.2 if n >= 1024 else 0.05)
            gf = 2.0 * n ** 3 / t["nablagrad"] / 1e9
            rows.append(Row("matmul", f"float32 {n}x{n}", t["nablagrad"], "NumPy", t["numpy"],
                            f"{gf:.0f} GFLOP/s; NumPy: {np_threads}"))
            cfg.log(f"  matmul {n}: {gf:.1f} GFLOP/s, {t['numpy'] / t['nablagrad']:.2f}x NumPy")
    return rows
