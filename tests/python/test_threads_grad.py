"""`.grad` read and reset from one thread while another runs backward into the same leaf.

Tensor.backward releases the GIL and replaces a leaf's gradient under the leaf mutex; the
`.grad` getter and setter run with the GIL held and take that mutex too. A gradient assigned
with `ng.from_numpy` is owned by a NumPy array, and freeing it takes the GIL: if backward
freed a replaced gradient while still holding the mutex, a thread holding the GIL and waiting
for the mutex would deadlock with it. Each scenario runs in a subprocess with a timeout (a
deadlock that involves the GIL would hang pytest itself) and faulthandler dumps the threads'
stacks if it hangs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

import nablagrad as ng

TIMEOUT_S = 120

PRELUDE = textwrap.dedent("""
    import faulthandler, sys, threading
    import numpy as np
    import nablagrad as ng
    faulthandler.dump_traceback_later({hang}, exit=True)   # a deadlock: dump stacks, exit 1
    SHAPE = (256, 256)    # 65536 elements: the ops release the GIL, and backward always does

    def run_threads(*targets):
        threads = [threading.Thread(target=t, daemon=True) for t in targets]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout={join})
        assert not any(t.is_alive() for t in threads), "a thread did not finish: deadlock?"

    def uniform(g):
        # every element of a gradient snapshot has the same value (accumulation is out of place)
        a = np.asarray(g)
        assert a.shape == SHAPE and a.dtype == np.float64
        assert a.min() == a.max(), (a.min(), a.max())
        return float(a.flat[0])
""").format(hang=TIMEOUT_S - 30, join=TIMEOUT_S - 60)


def _run(body: str) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)  # the nablagrad under test
    res = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(body)], capture_output=True, text=True,
                         timeout=TIMEOUT_S, env=env)
    assert res.returncode == 0 and "OK" in res.stdout, f"exit {res.returncode}\n{res.stdout}\n{res.stderr[-8000:]}"


def test_grad_read_and_reset_while_backward_runs() -> None:
    _run("""
        N_BACKWARD, N_PYTHON = 300, 600
        w = ng.zeros(SHAPE, dtype=ng.float64, requires_grad=True)
        c = ng.ones(SHAPE, dtype=ng.float64)
        errors = []

        def trainer():
            try:
                for _ in range(N_BACKWARD):
                    (w * c).sum().backward()       # adds 1 to every element of w.grad
            except BaseException as e:  # reported by the main thread
                errors.append(e)

        def user():
            try:
                for i in range(N_PYTHON):
                    # memory owned by a NumPy array that nothing else references: the leaf's
                    # gradient is its last owner, and freeing it takes the GIL
                    w.grad = ng.from_numpy(np.full(SHAPE, 1000.0 * i))
                    for _ in range(2000):  # pure Python, GIL held: backward may replace it now
                        pass
                    g = w.grad            # waits for the leaf mutex with the GIL held
                    if g is not None:
                        uniform(g)
                    del g
                    if i % 2:
                        w.grad = None
            except BaseException as e:
                errors.append(e)

        run_threads(trainer, user)
        assert not errors, errors
        # the last assignment (or None) plus the passes after it, never a torn or lost sum
        v = 0.0 if w.grad is None else uniform(w.grad)
        assert 0.0 <= v <= 1000.0 * (N_PYTHON - 1) + N_BACKWARD and v % 1000.0 <= N_BACKWARD, v
        # afterwards, accumulation into an assigned gradient works as usual
        w.grad = ng.from_numpy(np.full(SHAPE, 5.0))
        (w * c).sum().backward()
        assert uniform(w.grad) == 6.0
        print("OK")
    """)


def test_concurrent_backward_loses_no_update() -> None:
    _run("""
        N = 100
        w = ng.zeros(SHAPE, dtype=ng.float64, requires_grad=True)
        c = ng.ones(SHAPE, dtype=ng.float64)
        done = threading.Event()
        seen = []

        def trainer():
            for _ in range(N):
                (w * c).sum().backward()

        def reader():
            last = 0.0
            while not done.is_set():
                g = w.grad
                if g is not None:
                    try:
                        v = uniform(g)
                        assert v >= last, (v, last)  # snapshots never go backwards
                    except AssertionError as e:
                        seen.append(e)
                        return
                    last = v
                    seen.append(v)

        r = threading.Thread(target=reader, daemon=True)
        r.start()
        run_threads(trainer, trainer)
        done.set()
        r.join(timeout=60)
        assert not r.is_alive()
        assert all(isinstance(v, float) for v in seen), [v for v in seen if not isinstance(v, float)]
        assert uniform(w.grad) == 2.0 * N
        print("OK", len(seen))
    """)


def test_grad_setter_checks_still_apply() -> None:
    w = ng.zeros((3,), dtype=ng.float64, requires_grad=True)
    w.grad = ng.ones((3,), dtype=ng.float64)
    assert w.grad is not None and float(w.grad.sum().item()) == 3.0
    w.grad = None
    assert w.grad is None
    with pytest.raises(ValueError):
        w.grad = ng.ones((4,), dtype=ng.float64)
    with pytest.raises(TypeError):
        w.grad = ng.ones((3,), dtype=ng.float32)
