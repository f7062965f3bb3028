"""ng.distributed, DistributedDataParallel and the grad-ready hook.

In-process tests cover a world of one (no launcher) and the hook itself. The multi-process
tests launch `mpiexec -n 2 <python> tests/python/mpi_scripts/<script>` with a timeout and
skip cleanly when mpi4py or mpiexec is missing (``pip install ".[mpi]"``); together they
cost about 10-20 s of CI time on 2 cores (each launch ~2-5 s).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import nablagrad as ng
import nablagrad.distributed as dist
import nablagrad.functional as F
from nablagrad import nn

SCRIPTS = os.path.join(os.path.dirname(__file__), "mpi_scripts")
_LAUNCHER_VARS = ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MV2_COMM_WORLD_SIZE")


def _mpiexec() -> str:
    pytest.importorskip("mpi4py")
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    exe = beside if os.access(beside, os.X_OK) else shutil.which("mpiexec")
    if exe is None:
        pytest.skip("mpiexec not found (pip install \"nablagrad[mpi]\" brings the mpich wheel's)")
    return exe


def run_mpi(script: str, *args: str, n: int = 2, timeout: float = 120.0) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    for v in _LAUNCHER_VARS:  # a pytest itself started by a launcher must not leak its rank
        env.pop(v, None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    env.setdefault("OMP_NUM_THREADS", "1")
    cmd = [_mpiexec(), "-n", str(n), sys.executable, os.path.join(SCRIPTS, script), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def _show(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-6000:]}"


# --------------------------------------------------------------------------- two ranks
def test_collectives_and_ddp_on_two_ranks():
    proc = run_mpi("collectives.py")
    assert proc.returncode == 0 and "ALL PASSED" in proc.stdout, _show(proc)


def test_two_ranks_match_one_process_with_the_global_batch():
    proc = run_mpi("train_equivalence.py", "200")
    assert proc.returncode == 0 and "ALL PASSED" in proc.stdout, _show(proc)


@pytest.mark.parametrize("mode", ["toplevel", "backward"])
def test_a_raising_rank_ends_the_job_within_seconds(mode):
    t0 = time.monotonic()
    proc = run_mpi("failure.py", mode, timeout=60.0)
    elapsed = time.monotonic() - t0
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, _show(proc)
    assert "rank 1 failed on purpose" in out and "[rank 1/2]" in out, _show(proc)
    assert "unreachable" not in out, _show(proc)
    assert elapsed < 30.0, f"the job took {elapsed:.1f} s to end"


def test_demo_runs_distributed_and_rank0_alone_writes(tmp_path):
    env_cmd = ["-m", "nablagrad.demo", "--distributed", "--epochs", "1", "--threads", "1", "--out", str(tmp_path)]
    env = dict(os.environ)
    for v in _LAUNCHER_VARS:
        env.pop(v, None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    proc = subprocess.run([_mpiexec(), "-n", "2", sys.executable, *env_cmd], capture_output=True, text=True,
                          timeout=180, env=env)
    assert proc.returncode == 0, _show(proc)
    assert proc.stdout.count("digits:") == 1 and proc.stdout.count("epoch   1/1") == 1, _show(proc)
    assert "data parallel over 2 ranks" in proc.stdout and "wrote weights" in proc.stdout, _show(proc)
    ckpt = ng.load(str(tmp_path / "digits_cnn.safetensors"))
    assert ckpt["epoch"] == 1 and not any(k.startswith("module.") for k in ckpt["model"])


# --------------------------------------------------------------------------- a world of one
@pytest.fixture
def no_launcher(monkeypatch):
    for v in _LAUNCHER_VARS:
        monkeypatch.delenv(v, raising=False)


def test_world_of_one_without_launcher(no_launcher):
    dist.init()
    assert dist.is_initialized() and dist.get_rank() == 0 and dist.get_world_size() == 1
    t = ng.tensor([1.0, 2.0, 3.0])
    assert dist.all_reduce(t) is t and np.asarray(t).tolist() == [1.0, 2.0, 3.0]
    dist.all_reduce(t, op="avg")
    assert dist.broadcast(t, 0) is t and np.asarray(t).tolist() == [1.0, 2.0, 3.0]
    dist.all_reduce(t, async_op=True).wait()
    dist.barrier()
    with pytest.raises(ValueError):
        dist.broadcast(t, src=1)
    with pytest.raises(ValueError):
        dist.all_reduce(t, op="median")
    with pytest.raises(RuntimeError, match="no_grad"):
        dist.all_reduce(nn.Parameter(ng.ones(2)))


def test_ddp_world_of_one_is_the_module(no_launcher):
    ng.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4, activation="tanh"), nn.Linear(4, 2)).to(ng.float64)
    ref = nn.Sequential(nn.Linear(5, 4, activation="tanh"), nn.Linear(4, 2)).to(ng.float64)
    ref.load_state_dict(model.state_dict())
    ddp = nn.parallel.DistributedDataParallel(model)
    assert sorted(i for b in ddp.buckets for i in b.params) == [0, 1, 2, 3]
    assert list(ddp.state_dict()) == ["module." + k for k in model.state_dict()]
    x = ng.tensor(np.random.default_rng(0).random((3, 5)))
    F.mse_loss(ddp(x), ng.zeros((3, 2), dtype=ng.float64)).backward()
    F.mse_loss(ref(x), ng.zeros((3, 2), dtype=ng.float64)).backward()
    for p, q in zip(model.parameters(), ref.parameters()):
        np.testing.assert_array_equal(np.asarray(p.grad), np.asarray(q.grad))
    with ddp.no_sync():
        assert not ddp.require_backward_grad_sync
    assert ddp.require_backward_grad_sync
    with pytest.raises(ValueError):
        nn.parallel.DistributedDataParallel(model, bucket_cap_mb=0)
    with pytest.raises(TypeError):
        nn.parallel.DistributedDataParallel(ng.ones(2))


def test_bucketing_reverse_order_and_dtype_split(no_launcher):
    ng.manual_seed(0)
    model = nn.Sequential(nn.Linear(100, 100), nn.Linear(100, 100), nn.Linear(100, 10))
    ddp = nn.parallel.DistributedDataParallel(model, bucket_cap_mb=30_000 / 2**20)  # 30 kB < one 40 kB weight
    order = [i for b in ddp.buckets for i in b.params]
    assert sorted(order) == list(range(6)) and order == sorted(order, reverse=True)
    assert [b.params for b in ddp.buckets] == [[5, 4, 3], [2], [1], [0]]  # a weight over the cap: alone
    for b in ddp.buckets:
        assert b.numel == sum(b.sizes) and b.offsets[0] == 0


# --------------------------------------------------------------------------- the hook
def test_post_accumulate_grad_hook_fires_once_with_the_final_gradient():
    w = ng.tensor([1.0, 2.0], dtype=ng.float64, requires_grad=True)
    seen = []
    handle = w.register_post_accumulate_grad_hook(lambda p: seen.append((p is w, np.asarray(p.grad).copy())))
    y = ((w * w) * w + w).sum()  # w reached along 4 edges
    y.backward()
    assert len(seen) == 1 and seen[0][0]
    np.testing.assert_allclose(seen[0][1], 3 * np.array([1.0, 2.0]) ** 2 + 1)
    (w * 2).sum().backward()  # accumulated: the hook sees the total
    assert len(seen) == 2
    np.testing.assert_allclose(seen[1][1], 3 * np.array([1.0, 2.0]) ** 2 + 3)
    assert handle.remove() and not handle.remove()
    (w * 2).sum().backward()
    assert len(seen) == 2


def test_hook_order_callback_and_errors():
    a = ng.ones(3, requires_grad=True)
    b = ng.ones(3, requires_grad=True)
    events = []

    def on_b(p):
        events.append("b")
        ng._core._queue_backward_callback(lambda: events.append("done"))

    a.register_post_accumulate_grad_hook(lambda p: events.append("a"))
    b.register_post_accumulate_grad_hook(on_b)
    ((a * 2).exp() * b).sum().backward()
    assert sorted(events[:2]) == ["a", "b"] and events[2:] == ["done"]
    with pytest.raises(RuntimeError):
        ng._core._queue_backward_callback(lambda: None)  # no backward running
    with pytest.raises(RuntimeError):
        (a * 2).register_post_accumulate_grad_hook(lambda p: None)  # not a leaf
    c = ng.ones(2, requires_grad=True)

    def fail(p):
        raise KeyError("from the hook")

    c.register_post_accumulate_grad_hook(fail)
    with pytest.raises(KeyError, match="from the hook"):
        (c * c).sum().backward()


def test_hooks_from_several_threads_hold_the_gil_correctly():
    # backward releases the GIL; hooks must take it back, including from several threads at once.
    w = ng.ones((64, 64), requires_grad=True)
    count = []
    lock = threading.Lock()

    def hook(p):
        with lock:
            count.append(float(np.asarray(p.grad).sum()))

    w.register_post_accumulate_grad_hook(hook)
    errors = []

    def worker():
        try:
            for _ in range(20):
                x = ng.ones((8, 64))
                (x @ w).tanh().sum().backward()
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(count) == 60


# --------------------------------------------------------------------------- data
def test_distributed_sampler_shards_partition_each_epoch():
    n = 23
    for drop_last in (False, True):
        samplers = [ng.data.DistributedSampler(range(n), num_replicas=3, rank=r, seed=4, drop_last=drop_last)
                    for r in range(3)]
        for epoch in range(3):
            for s in samplers:
                s.set_epoch(epoch)
            parts = [list(s) for s in samplers]
            assert all(len(p) == len(samplers[0]) for p in parts)
            flat = [i for p in parts for i in p]
            if drop_last:
                assert len(flat) == 21 and len(set(flat)) == 21
            else:
                assert len(flat) == 24 and set(flat) == set(range(n))
        e0 = [list(s) for s in samplers]
        for s in samplers:
            s.set_epoch(0)
        assert [list(s) for s in samplers] != e0  # epoch 2 differs from epoch 0
    auto = ng.data.DistributedSampler(range(10), num_replicas=2, rank=0, seed=1)
    assert list(auto) != list(auto)  # without set_epoch every pass is reshuffled
    with pytest.raises(ValueError):
        ng.data.DistributedSampler(range(4), num_replicas=2, rank=2)


def test_dataloader_distributed_world_of_one_and_sampler(no_launcher):
    ds = ng.data.TensorDataset(np.arange(10.0), np.arange(10))
    plain = [np.asarray(y).tolist() for _, y in ng.data.DataLoader(ds, batch_size=3, shuffle=True, seed=2)]
    dist1 = [np.asarray(y).tolist() for _, y in ng.data.DataLoader(ds, batch_size=3, shuffle=True, seed=2,
                                                                   distributed=True)]
    assert plain == dist1
    sampler = ng.data.DistributedSampler(ds, num_replicas=2, rank=1, shuffle=False)
    loader = ng.data.DataLoader(ds, batch_size=2, sampler=sampler)
    assert [np.asarray(y).tolist() for _, y in loader] == [[1, 3], [5, 7], [9]] and len(loader) == 3
    with pytest.raises(ValueError):
        ng.data.DataLoader(ds, sampler=sampler, shuffle=True)
