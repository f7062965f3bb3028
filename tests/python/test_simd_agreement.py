"""What "bitwise identical for any thread count" covers, and how far the SIMD levels differ.

Within one build and one SIMD level, results (forward and gradients) are bitwise identical for
any thread count: the kernels split work so that each output element is computed by one chunk
in a fixed order. Across SIMD levels they are not: the AVX2+FMA and AVX-512 kernels contract
a*b+c into one rounding and block their sums differently from the portable ones. Any two levels
agree to

    |level - portable| <= RTOL[dtype] * max|portable|      (per output tensor)

with RTOL 1e-5 for float32 and 1e-12 for float64 (README.md and docs/api.md, "Determinism").

Every level this CPU has (portable, avx2, avx512) runs in its own subprocess, chosen the way a
user chooses it (NABLAGRAD_SIMD=<level>), and runs every op at 1, 2 and 3 threads.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from nablagrad import _core

RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}
THREADS = (1, 2, 3)

WORKER = textwrap.dedent("""
    import sys
    import numpy as np
    import nablagrad as ng
    import nablagrad.functional as F
    from nablagrad import _core

    def leaf(a):
        return ng.tensor(a, requires_grad=True)

    def grads(*ts):
        return [np.asarray(t.grad).copy() for t in ts]

    def cases(rng, dt):
        r = lambda *s: rng.standard_normal(s).astype(dt)
        out = {}
        # (47, 65, 300) and (49, 129, 257) sit at the AVX-512 tile edges and the row count (48)
        # where the GEMM switches tiles
        for m, k, n in [(1, 1, 1), (7, 5, 3), (64, 64, 64), (127, 255, 129), (300, 513, 200),
                        (47, 300, 65), (49, 257, 129)]:
            a, b, dy = r(m, k), r(k, n), r(m, n)
            ta, tb = leaf(a), leaf(b)
            y = ta @ tb
            y.backward(dy)
            out[f"matmul{m}x{k}x{n}"] = [np.asarray(y).copy(), *grads(ta, tb)]
        a, b = leaf(r(3, 33, 17)), leaf(r(3, 17, 40))
        y = a @ b
        y.backward(r(3, 33, 40))
        out["bmm"] = [np.asarray(y).copy(), *grads(a, b)]
        for name, xs, ws, stride, pad in [("conv_s1", (2, 13, 11, 5), (7, 3, 3, 5), 1, 1),
                                         ("conv_s2", (2, 28, 28, 3), (8, 3, 3, 3), 2, 1),
                                         ("conv_wide", (2, 16, 16, 32), (32, 3, 3, 32), 1, "same"),
                                         ("conv_5x5", (1, 19, 17, 4), (6, 5, 5, 4), 3, 2)]:
            x, w, bias = leaf(r(*xs)), leaf(r(*ws)), leaf(r(ws[0]))
            y = F.conv2d(x, w, bias, stride=stride, padding=pad)
            y.backward(r(*y.shape))
            out[name] = [np.asarray(y).copy(), *grads(x, w, bias)]
        q, k, v = leaf(r(2, 3, 19, 16)), leaf(r(2, 3, 23, 16)), leaf(r(2, 3, 23, 16))
        y = F.scaled_dot_product_attention(q, k, v)
        y.backward(r(*y.shape))
        out["attention"] = [np.asarray(y).copy(), *grads(q, k, v)]
        for kind, N in [("LSTM", 5), ("GRU", 2)]:
            ng.manual_seed(1)
            m = getattr(ng.nn, kind)(13, 20, num_layers=2, dtype=ng.float32 if dt == np.float32 else ng.float64)
            x = leaf(r(N, 7, 13))
            y = m(x)[0]
            y.backward(r(*y.shape))
            out[kind.lower()] = [np.asarray(y).copy(), *grads(x, *[p for _, p in m.named_parameters()])]
        x = leaf(r(257, 129))
        ys = [x.exp(), F.tanh(x), F.sigmoid(x), F.gelu(x), F.softmax(x, axis=-1), (x * x + x).sum(axis=0)]
        for i, y in enumerate(ys):
            y.backward(r(*y.shape))
            out[f"elementwise{i}"] = [np.asarray(y).copy(), *grads(x)]
            x.grad = None
        return out

    results = {}
    for threads in (%s):
        ng.set_num_threads(threads)
        assert ng.get_num_threads() == threads
        for dt in (np.float32, np.float64):
            for name, arrays in cases(np.random.default_rng(0), dt).items():
                for j, a in enumerate(arrays):
                    results[f"{threads}/{np.dtype(dt).name}/{name}/{j}"] = a
    np.savez(sys.argv[1], level=np.array(_core._simd_level()), **results)
""") % ", ".join(map(str, THREADS))


SIMD_LEVELS = ["portable", "avx2", "avx512"]
AVAILABLE = SIMD_LEVELS[: SIMD_LEVELS.index(_core._cpu_simd_level()) + 1]


def _run_level(tmp_path: Path, level: str) -> dict:
    env = dict(os.environ)
    env["NABLAGRAD_SIMD"] = level
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)  # the nablagrad under test
    out = tmp_path / f"{level}.npz"
    res = subprocess.run([sys.executable, "-c", WORKER, str(out)], capture_output=True, text=True, timeout=600,
                         env=env)
    assert res.returncode == 0, res.stdout + res.stderr[-8000:]
    with np.load(out) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def levels(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("simd")
    return {level: _run_level(tmp, level) for level in AVAILABLE}


def _by_threads(results: dict) -> dict:
    """{threads: {case key: array}}."""
    out: dict = {}
    for key, a in results.items():
        if key == "level":
            continue
        threads, rest = key.split("/", 1)
        out.setdefault(int(threads), {})[rest] = a
    return out


def test_env_selects_each_level(levels: dict) -> None:
    for level, results in levels.items():
        assert str(results["level"]) == level


@pytest.mark.parametrize("level", SIMD_LEVELS)
def test_bitwise_identical_across_thread_counts(levels: dict, level: str) -> None:
    if level not in levels:
        pytest.skip(f"this CPU does not support {level}")
    runs = _by_threads(levels[level])
    assert sorted(runs) == list(THREADS)
    base = runs[THREADS[0]]
    assert len(base) > 50
    for threads in THREADS[1:]:
        assert runs[threads].keys() == base.keys()
        for key, a in base.items():
            b = runs[threads][key]
            assert a.dtype == b.dtype and a.shape == b.shape, key
            assert a.tobytes() == b.tobytes(), (
                f"{key}: {threads} threads differ from 1 at level {level} "
                f"(max |diff| {np.max(np.abs(a.astype(np.float64) - b))})")


@pytest.mark.parametrize("pair", [("portable", "avx2"), ("portable", "avx512"), ("avx2", "avx512")],
                         ids=lambda p: f"{p[0]}-{p[1]}")
def test_levels_agree_to_stated_tolerance(levels: dict, pair: tuple) -> None:
    lo, hi = pair
    if hi not in levels:
        pytest.skip(f"this CPU does not support {hi}")
    ref = _by_threads(levels["portable"])[1]  # the scale is always the portable result's
    low = _by_threads(levels[lo])[1]
    high = _by_threads(levels[hi])[1]
    assert low.keys() == high.keys() == ref.keys()
    differs = 0
    for key, p in ref.items():
        a, b = low[key], high[key]
        assert a.dtype == b.dtype == p.dtype and a.shape == b.shape == p.shape, key
        scale = max(float(np.max(np.abs(p))), np.finfo(p.dtype).tiny) if p.size else 1.0
        err = float(np.max(np.abs(a.astype(np.float64) - b))) / scale if p.size else 0.0
        # two non-portable levels are each within RTOL of portable, so within 2 RTOL of each other
        bound = RTOL[p.dtype] * (1 if lo == "portable" else 2)
        assert err <= bound, f"{key}: |{hi} - {lo}| / max|portable| = {err:.3g} > {bound}"
        differs += a.tobytes() != b.tobytes()
    # The comparison means something: portable and the vector levels are really different
    # kernels (FMA contraction). AVX2 and AVX-512 may well agree bitwise: their GEMM tiles
    # differ but every element is the same FMA chain over the same K slices, and vmath's
    # AVX-512 code is its AVX2 code lane for lane.
    if lo == "portable":
        assert differs > 0, f"{lo} and {hi} gave bitwise identical results everywhere: was {hi} really used?"
