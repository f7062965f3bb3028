"""The thread pool in real processes: fork, CPU affinity, idle CPU, errors, resizing, and
several Python threads sharing one model.

A forked child (multiprocessing's default start method on Linux, DataLoader workers) must get
a working pool: only the forking thread exists there, so the parent's workers are forgotten
and fresh ones start at the child's first parallel region (pthread_atfork handlers in
threading.h; the block cache and the random generator take their locks around fork()).
Each child runs under a timeout: a hang fails the test instead of stalling the suite.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import textwrap
import threading
from typing import Any, Callable, Dict, List

import numpy as np
import pytest

import nablagrad as ng
import nablagrad.functional as F
from nablagrad import nn

CHILD_TIMEOUT = 120  # seconds; a child that has not finished by then has hung
# Python 3.12+ warns on fork() in a process with threads (the pool's workers are threads).
pytestmark = pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")


@pytest.fixture(autouse=True)
def _restore_threads():  # type: ignore[no-untyped-def]
    n = ng.get_num_threads()
    yield
    ng.set_num_threads(n)


def _workload(seed: int) -> Dict[str, np.ndarray]:
    """Ops that run on the pool (a GEMM, a conv, reductions), a backward, and random draws."""
    rng = np.random.default_rng(seed)
    a = ng.tensor(rng.standard_normal((192, 160)).astype(np.float32), requires_grad=True)
    b = ng.tensor(rng.standard_normal((160, 128)).astype(np.float32), requires_grad=True)
    x = ng.tensor(rng.standard_normal((4, 12, 12, 3)).astype(np.float32), requires_grad=True)
    w = ng.tensor(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), requires_grad=True)
    y = (a @ b).tanh()
    c = F.conv2d(x, w, padding=1).relu()
    loss = y.sum() + (c * c).mean()
    loss.backward()
    ng.manual_seed(seed)
    r = ng.rand(1000)
    return {"y": np.asarray(y.detach()).copy(), "ga": np.asarray(a.grad).copy(),
            "gw": np.asarray(w.grad).copy(), "r": np.asarray(r).copy()}


def _child_workload(queue: Any, seed: int, threads: int) -> None:
    try:
        ng.set_num_threads(threads)
        queue.put(("ok", _workload(seed), ng.get_num_threads()))
    except BaseException as e:  # noqa: BLE001 - report anything to the parent
        queue.put(("error", repr(e), 0))


def _run_child(target: Callable[..., None], *args: Any) -> Any:
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(queue, *args))
    proc.start()
    try:
        result = queue.get(timeout=CHILD_TIMEOUT)
    except Exception:  # noqa: BLE001 - queue.Empty: the child hung or died
        proc.kill()
        proc.join()
        pytest.fail(f"the forked child produced nothing within {CHILD_TIMEOUT} s (exit code {proc.exitcode}): "
                    "a hang in the pool after fork()")
    proc.join(timeout=CHILD_TIMEOUT)
    if proc.is_alive():
        proc.kill()
        pytest.fail("the forked child did not exit")
    assert proc.exitcode == 0, proc.exitcode
    return result


@pytest.mark.parametrize("child_threads", [1, 2, 4])
def test_forked_child_runs_ops_and_backward(child_threads: int) -> None:
    ng.set_num_threads(2)
    expected = _workload(3)  # the parent's pool now has live workers
    status, got, n = _run_child(_child_workload, 3, child_threads)
    assert status == "ok", got
    assert n == child_threads
    for k in expected:
        np.testing.assert_array_equal(got[k], expected[k], err_msg=k)
    after = _workload(3)  # the parent's pool still works
    for k in expected:
        np.testing.assert_array_equal(after[k], expected[k], err_msg=k)


def test_fork_while_another_thread_computes() -> None:
    """fork() while another parent thread is inside parallel regions, allocating large blocks
    and drawing random numbers: the child must not inherit a lock held forever."""
    ng.set_num_threads(2)
    expected = _workload(5)
    stop = threading.Event()
    errors: List[BaseException] = []

    def busy() -> None:
        try:
            x = ng.randn(256, 256)
            while not stop.is_set():
                (x @ x).sum()
                ng.rand(64, 1024)  # 256 KiB: goes through the block cache, under the generator lock
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    t = threading.Thread(target=busy)
    t.start()
    try:
        for _ in range(6):
            status, got, _ = _run_child(_child_workload, 5, 2)
            assert status == "ok", got
            for k in expected:
                np.testing.assert_array_equal(got[k], expected[k], err_msg=k)
    finally:
        stop.set()
        t.join()
    assert not errors, errors


def _child_rand(queue: Any) -> None:
    queue.put(np.asarray(ng.rand(8)).copy())


def test_forked_child_continues_the_parents_random_stream() -> None:
    """As NumPy and PyTorch: the child continues the parent's generator (reseed for distinct streams)."""
    ng.manual_seed(11)
    ng.rand(3)
    got = _run_child(_child_rand)
    expected = np.asarray(ng.rand(8))
    np.testing.assert_array_equal(got, expected)


def _python(code: str, env: Dict[str, str]) -> str:
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                         timeout=CHILD_TIMEOUT, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout.strip()


def _env(**extra: str) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "NABLAGRAD_NUM_THREADS"}
    env.update(extra)
    return env


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs os.sched_setaffinity")
def test_default_thread_count_follows_the_affinity_mask() -> None:
    cpus = sorted(os.sched_getaffinity(0))
    code = f"""
        import os
        os.sched_setaffinity(0, {{{cpus[0]}}})
        import nablagrad as ng
        print(ng.get_num_threads())
    """
    assert _python(code, _env()) == "1"
    # The full mask: the count is the mask's size, unless a cgroup CPU quota caps it lower.
    n = int(_python("import nablagrad as ng; print(ng.get_num_threads())", _env()))
    assert 1 <= n <= len(cpus)


def test_num_threads_environment_variable() -> None:
    assert _python("import nablagrad as ng; print(ng.get_num_threads())", _env(NABLAGRAD_NUM_THREADS="3")) == "3"
    # Not a positive integer: ignored (the default applies).
    n = int(_python("import nablagrad as ng; print(ng.get_num_threads())", _env(NABLAGRAD_NUM_THREADS="zero")))
    assert n >= 1


IDLE_CPU_BOUND = 0.05  # seconds of CPU over one idle second (the workers sleep within ~1 ms)


def test_idle_workers_burn_no_cpu() -> None:
    """Right after a burst of parallel ops the process sleeps 1 s; the CPU time it uses
    meanwhile (all threads, getrusage; the workers' spin before sleeping included) is below
    IDLE_CPU_BOUND: idle workers sleep, they do not spin."""
    code = """
        import resource, time
        import nablagrad as ng
        ng.set_num_threads(4)
        x = ng.randn(256, 256)
        def cpu():
            r = resource.getrusage(resource.RUSAGE_SELF)
            return r.ru_utime + r.ru_stime
        for _ in range(50):
            (x @ x).relu().sum()
        c0 = cpu()  # right after the last region: the workers' spin tail counts
        time.sleep(1.0)
        print(cpu() - c0)
    """
    burned = float(_python(code, _env()))
    print(f"CPU burned by an idle process with 4 pool threads over 1 s: {burned * 1e3:.1f} ms")
    assert burned < IDLE_CPU_BOUND, burned


def test_pool_survives_errors_and_resizing_between_ops() -> None:
    x = ng.randn(300, 200)
    w = ng.randn(200, 100)
    expected = np.asarray(x @ w)
    for n in (1, 2, 3, 4, 2, 1, 4):
        ng.set_num_threads(n)
        assert ng.get_num_threads() == n
        np.testing.assert_array_equal(np.asarray(x @ w), expected)
        logits = ng.randn(512, 10)
        # Errors raised by ops (checked before their parallel regions; a throw inside a task is
        # tested in tests/cpp/test_threading.cpp, which Python cannot reach) leave the pool working.
        with pytest.raises(IndexError):
            F.cross_entropy(logits, ng.tensor(np.r_[np.zeros(511, np.int64), 10]))
        with pytest.raises(ValueError):
            x @ ng.randn(7, 3)
        np.testing.assert_array_equal(np.asarray(x @ w), expected)
    with pytest.raises(ValueError):
        ng.set_num_threads(0)
    assert ng.get_num_threads() == 4


def _mlp_cnn() -> nn.Module:
    ng.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, activation="relu"), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(8 * 8 * 16, 64, activation="relu"), nn.Linear(64, 10))


def _run_threads(fns: List[Callable[[], Any]]) -> List[Any]:
    results: List[Any] = [None] * len(fns)
    errors: List[BaseException] = []

    def wrap(i: int) -> None:
        try:
            results[i] = fns[i]()
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=wrap, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=CHILD_TIMEOUT)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    assert not errors, errors
    return results


@pytest.mark.parametrize("threads", [1, 2])
def test_two_python_threads_infer_on_one_model(threads: int) -> None:
    ng.set_num_threads(threads)
    model = _mlp_cnn().eval()
    rng = np.random.default_rng(1)
    batches = [ng.tensor(rng.standard_normal((8, 16, 16, 3)).astype(np.float32)) for _ in range(6)]

    def infer(order: List[int]) -> Dict[int, np.ndarray]:
        out = {}
        with ng.no_grad():
            for _ in range(3):
                for i in order:
                    out[i] = np.asarray(model(batches[i])).copy()
        return out

    sequential = infer(list(range(6)))
    a, b = _run_threads([lambda: infer([0, 1, 2, 3, 4, 5]), lambda: infer([5, 4, 3, 2, 1, 0])])
    for i in range(6):
        np.testing.assert_array_equal(a[i], sequential[i])
        np.testing.assert_array_equal(b[i], sequential[i])


def test_training_and_inference_in_different_threads() -> None:
    """One thread trains model A while another runs inference on model B (and on a frozen
    copy of A's start): neither corrupts the other; training matches a run alone."""
    ng.set_num_threads(2)
    rng = np.random.default_rng(2)
    xs = [ng.tensor(rng.standard_normal((16, 16, 16, 3)).astype(np.float32)) for _ in range(4)]
    ys = [ng.tensor(rng.integers(0, 10, 16)) for _ in range(4)]

    def train() -> List[np.ndarray]:
        model = _mlp_cnn()
        opt = ng.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        losses = []
        for step in range(8):
            loss = F.cross_entropy(model(xs[step % 4]), ys[step % 4])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(np.asarray(loss.detach()).copy())
        return losses + [np.asarray(p.detach()).copy() for p in model.parameters()]

    other = _mlp_cnn().eval()

    def infer() -> List[np.ndarray]:
        with ng.no_grad():
            return [np.asarray(other(xs[i % 4])).copy() for i in range(24)]

    alone_train = train()
    alone_infer = infer()
    got_train, got_infer = _run_threads([train, infer])
    for g, e in zip(got_train, alone_train):
        np.testing.assert_array_equal(g, e)
    for g, e in zip(got_infer, alone_infer):
        np.testing.assert_array_equal(g, e)

