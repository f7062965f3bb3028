"""Run under `mpiexec -n 2`: collectives on many tensors, and DistributedDataParallel's
bucketing, averaging, unused and reused parameters, no_sync, shape checks, and the data shards.
Prints "PASS <name>" per check; any failure raises, which aborts the job (non-zero exit)."""

import numpy as np

import nablagrad as ng
import nablagrad.distributed as dist
import nablagrad.functional as F
from nablagrad import nn

ng.set_num_threads(1)  # two ranks share two cores
dist.init()
rank, world = dist.get_rank(), dist.get_world_size()
assert world == 2, world


def passed(name):
    dist.barrier()
    if rank == 0:
        print("PASS", name, flush=True)


def rank_data(shape, r, npdt):
    n = int(np.prod(shape)) if shape else 1
    return (np.arange(n, dtype=np.float64).reshape(shape) % 97 * (r + 1) + r).astype(npdt)


def gather(arr):
    return dist._allgather_object(np.asarray(arr).copy())


# --------------------------------------------------------------------------- collectives
SHAPES = [(), (0,), (1,), (2,), (7,), (3, 5), (0, 4), (1000,), (33, 17, 3), (65537,)]
for dt, npdt in ((ng.float32, np.float32), (ng.float64, np.float64), (ng.int64, np.int64)):
    for shape in SHAPES:
        t = ng.tensor(rank_data(shape, rank, npdt), dtype=dt)
        ptr = t._data_ptr()
        v0 = t._version
        assert dist.all_reduce(t) is t
        expected = sum(rank_data(shape, r, npdt) for r in range(world))
        np.testing.assert_array_equal(np.asarray(t), expected)
        assert t._data_ptr() == ptr and t.shape == shape and t._version > v0  # in place, version bumped
        b = ng.tensor(rank_data(shape, rank, npdt), dtype=dt)
        dist.broadcast(b, src=1)
        np.testing.assert_array_equal(np.asarray(b), rank_data(shape, 1, npdt))
passed("all_reduce/broadcast float32/float64/int64 over sizes 0..65537, 0-d and empty")

for op, fn in (("max", np.maximum), ("min", np.minimum), ("prod", np.multiply)):
    t = ng.tensor(rank_data((4, 3), rank, np.float64) - 3.0)
    dist.all_reduce(t, op=op)
    np.testing.assert_array_equal(np.asarray(t), fn(rank_data((4, 3), 0, np.float64) - 3.0,
                                                    rank_data((4, 3), 1, np.float64) - 3.0))
t = ng.tensor(rank_data((5,), rank, np.float32))
dist.all_reduce(t, op="avg")
np.testing.assert_allclose(np.asarray(t), (rank_data((5,), 0, np.float32) + rank_data((5,), 1, np.float32)) / 2)
bt = ng.tensor(np.array([rank == 0, rank == 1, False, True]))
bmax, bmin = ng.tensor(np.asarray(bt)), ng.tensor(np.asarray(bt))
dist.all_reduce(bmax, op="max")
dist.all_reduce(bmin, op="min")
assert np.asarray(bmax).tolist() == [True, True, False, True]
assert np.asarray(bmin).tolist() == [False, False, False, True]
passed("ops max/min/prod/avg and bool or/and")

# Non-contiguous: the reduction writes exactly the view's elements, in place, nothing else.
for dt, npdt in ((ng.float32, np.float32), (ng.float64, np.float64)):
    for make in (lambda b: b.transpose(0, 1), lambda b: b[:, ::3], lambda b: b[1:4, 2:9:2],
                 lambda b: b.reshape(3, 4, 5).permute(2, 0, 1), lambda b: b[::2].transpose(0, 1),
                 lambda b: b[::-1, 1::3], lambda b: b[:, ::-2].transpose(0, 1)):
        base_np = [rank_data((6, 10), r, npdt) for r in range(world)]
        base = ng.tensor(base_np[rank], dtype=dt)
        view = make(base)
        before = np.asarray(base).copy()
        dist.all_reduce(view)
        expect_view = sum(np.asarray(make(ng.tensor(base_np[r], dtype=dt))) for r in range(world))
        np.testing.assert_array_equal(np.asarray(view), expect_view)
        b = ng.tensor(base_np[rank], dtype=dt)
        vb = make(b)
        dist.broadcast(vb, src=0)
        np.testing.assert_array_equal(np.asarray(vb), np.asarray(make(ng.tensor(base_np[0], dtype=dt))))
        # elements outside the view keep this rank's values
        after = np.asarray(base)
        outside = np.ones((6, 10), dtype=bool)
        idx = np.arange(60).reshape(6, 10)
        outside.reshape(-1)[np.asarray(make(ng.tensor(idx))).reshape(-1)] = False
        np.testing.assert_array_equal(after[outside], before[outside])
passed("all_reduce/broadcast of non-contiguous views (transpose, steps, negative steps, permute) in place")

w = dist.all_reduce(ng.tensor(rank_data((100,), rank, np.float64)), async_op=True)
w.wait()
assert w.is_completed()
t = ng.tensor(rank_data((3,), rank, np.float64))
work = dist.all_reduce(t, op="avg", async_op=True)
work.wait()
np.testing.assert_allclose(np.asarray(t), (rank_data((3,), 0, np.float64) + rank_data((3,), 1, np.float64)) / 2)
passed("async_op Work.wait()")

p = nn.Parameter(ng.ones(3))
try:
    dist.all_reduce(p)
    raise AssertionError("all_reduce on a parameter outside no_grad must raise")
except RuntimeError as e:
    assert "no_grad" in str(e)
with ng.no_grad():
    dist.all_reduce(p)
np.testing.assert_array_equal(np.asarray(p.detach()), [2.0, 2.0, 2.0])
for bad, exc in ((lambda: dist.all_reduce(ng.ones(2), op="median"), ValueError),
                 (lambda: dist.all_reduce(ng.ones(2, dtype=ng.int64), op="avg"), TypeError),
                 (lambda: dist.all_reduce(ng.ones(2, dtype=ng.bool), op="sum"), TypeError),
                 (lambda: dist.broadcast(ng.ones(2), src=5), ValueError),
                 (lambda: dist.all_reduce(np.ones(2)), TypeError)):
    try:
        bad()
        raise AssertionError("expected an error")
    except exc:
        pass
passed("argument errors (grad leaf outside no_grad, op, dtype, src, non-tensor)")


# --------------------------------------------------------------------------- DDP
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1, activation="relu")
        self.fc1 = nn.Linear(4 * 64, 16, activation="relu")
        self.fc2 = nn.Linear(16, 10)
        self.only0 = nn.Linear(16, 10)   # used on rank 0 only
        self.never = nn.Linear(16, 10)   # used nowhere
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        h = self.fc1(self.bn(self.conv(x)).reshape(x.shape[0], -1))
        out = self.fc2(h)
        if rank == 0:
            out = out + self.only0(h)
        return out


def local_grads(model, x, y):
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    return {n: (None if p.grad is None else np.asarray(p.grad).copy()) for n, p in model.named_parameters()}


rng = np.random.default_rng(100 + rank)
x = ng.tensor(rng.random((6, 8, 8, 1)), dtype=ng.float64)
y = ng.tensor(rng.integers(0, 10, 6))
ng.manual_seed(1 + rank)  # different initial weights on each rank
model = Net().to(ng.float64)
ddp = nn.parallel.DistributedDataParallel(model, bucket_cap_mb=4000 / 2**20)  # ~4 kB buckets: several
names = [n for n, _ in model.named_parameters()]
w_all = gather(np.concatenate([np.asarray(p.detach()).reshape(-1) for p in model.parameters()]))
np.testing.assert_array_equal(w_all[0], w_all[1])
passed("construction broadcasts rank 0's parameters and buffers")

covered = sorted(i for b in ddp.buckets for i in b.params)
assert covered == list(range(len(names))), covered
assert len(ddp.buckets) > 2, len(ddp.buckets)
for b in ddp.buckets:
    dts = {str(list(model.parameters())[i].dtype) for i in b.params}
    assert len(dts) == 1
passed(f"{len(ddp.buckets)} buckets cover every parameter exactly once")

# A plain copy of the same weights gives this rank's own gradients; DDP must give their average.
ref = Net().to(ng.float64)
ref.load_state_dict(model.state_dict())
mine = local_grads(ref, x, y)
everyone = dist._allgather_object(mine)
model.zero_grad()
F.cross_entropy(ddp(x), y).backward()
for n, p in model.named_parameters():
    gs = [g[n] for g in everyone]
    if all(g is None for g in gs):
        assert p.grad is None, n  # unused on every rank: no gradient at all
        continue
    expect = sum(np.zeros_like(next(g for g in gs if g is not None)) if g is None else g for g in gs) / world
    np.testing.assert_allclose(np.asarray(p.grad), expect, rtol=1e-12, atol=1e-14, err_msg=n)
assert model.never.weight.grad is None and model.only0.weight.grad is not None
assert ddp.last_sync["buckets"] == len(ddp.buckets)
passed("gradients are the average over ranks; unused on one rank -> zeros there; unused everywhere -> None")

# no_sync: accumulate two micro-batches locally, then one synchronised backward averages the sum.
x2 = ng.tensor(rng.random((6, 8, 8, 1)), dtype=ng.float64)
ref.zero_grad()
F.cross_entropy(ref(x), y).backward()
F.cross_entropy(ref(x2), y).backward()
acc = {n: None if p.grad is None else np.asarray(p.grad).copy() for n, p in ref.named_parameters()}
everyone = dist._allgather_object(acc)
model.zero_grad()
with ddp.no_sync():
    F.cross_entropy(ddp(x), y).backward()
local_only = np.asarray(model.fc2.weight.grad).copy()
np.testing.assert_allclose(local_only, mine["fc2.weight"], rtol=1e-12, atol=1e-14)  # not averaged
F.cross_entropy(ddp(x2), y).backward()
for n, p in model.named_parameters():
    gs = [g[n] for g in everyone]
    if all(g is None for g in gs):
        assert p.grad is None
        continue
    expect = sum(np.zeros_like(next(g for g in gs if g is not None)) if g is None else g for g in gs) / world
    np.testing.assert_allclose(np.asarray(p.grad), expect, rtol=1e-12, atol=1e-14, err_msg=n)
passed("no_sync accumulates locally; the next backward averages the accumulated gradients")


# A weight used several times in one graph (an unrolled recurrence): the hook must fire once,
# with the final gradient; an early firing would all-reduce a partial sum.
class Recurrent(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(ng.randn(4, 4, dtype=ng.float64) * 0.5)
        self.head = nn.Linear(4, 1, dtype=ng.float64)

    def forward(self, x):
        h = x
        for _ in range(5):
            h = (h @ self.w).tanh()
        return self.head(h).sum()


ng.manual_seed(7)
rec = Recurrent()
rec_ref = Recurrent()
rec_ref.load_state_dict(rec.state_dict())
calls = []
handle = rec.w.register_post_accumulate_grad_hook(lambda p: calls.append(np.asarray(p.grad).copy()))
drec = nn.parallel.DistributedDataParallel(rec)
xr = ng.tensor(np.random.default_rng(rank).random((3, 4)))
rec_ref(xr).backward()
gw = dist._allgather_object(np.asarray(rec_ref.w.grad).copy())
drec(xr).backward()
assert len(calls) == 1
np.testing.assert_allclose(calls[0], np.asarray(rec_ref.w.grad), rtol=1e-13)  # final local gradient
np.testing.assert_allclose(np.asarray(rec.w.grad), (gw[0] + gw[1]) / 2, rtol=1e-12)
assert handle.remove()
passed("a parameter used 5 times in one graph is all-reduced once, with its final gradient")

# Different models on different ranks are caught at construction, on every rank.
try:
    nn.parallel.DistributedDataParallel(nn.Linear(3, 4 if rank == 0 else 5))
    raise AssertionError("mismatched shapes must raise")
except ValueError as e:
    assert "'weight'" in str(e) and "(4, 3)" in str(e) and "(5, 3)" in str(e), str(e)
passed("mismatched parameter shapes are detected at construction")

# --------------------------------------------------------------------------- data shards
ds = ng.data.TensorDataset(np.arange(23, dtype=np.float64), np.arange(23))
seen = []
for epoch in range(3):
    loader = ng.data.DataLoader(ds, batch_size=4, shuffle=True, seed=5, distributed=True)
    it = [np.asarray(yb).tolist() for _, yb in loader]
    mine_idx = [i for b in it for i in b]
    assert len(mine_idx) == 12 and len(loader) == 3
    both = dist._allgather_object(mine_idx)
    assert sorted(set(both[0] + both[1])) == list(range(23))  # 24 slots: one padded repeat
    seen.append(both)
assert seen[0] == seen[1] == seen[2]  # a fresh loader with the same seed: the same order
loader = ng.data.DataLoader(ds, batch_size=4, shuffle=True, distributed=True)  # seed from rank 0
e1 = [np.asarray(yb).tolist() for _, yb in loader]
e2 = [np.asarray(yb).tolist() for _, yb in loader]
a1, a2 = dist._allgather_object(e1), dist._allgather_object(e2)
assert sorted(set(sum(a1[0] + a1[1], []))) == list(range(23))
assert a1 != a2  # reshuffled per epoch
sampler = ng.data.DistributedSampler(ds, shuffle=True, seed=3)
for ep in range(2):
    sampler.set_epoch(ep)
    parts = dist._allgather_object(list(sampler))
    assert sorted(set(parts[0] + parts[1])) == list(range(23)) and len(parts[rank]) == len(sampler) == 12
passed("DataLoader(distributed=True) and DistributedSampler: disjoint shards, shared order, new per epoch")

if rank == 0:
    print("ALL PASSED", flush=True)
