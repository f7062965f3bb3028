"""Run under `mpiexec -n 2`: two ranks training the digits CNN with 32 samples each must follow
the same trajectory as one process with the 64-sample batches made of the same samples
(float64: parameters to ~1e-6 after STEPS steps, and the same loss curve). Rank 0 trains the
single-process reference itself after the distributed run."""

import sys

import numpy as np

import nablagrad as ng
import nablagrad.distributed as dist
import nablagrad.functional as F
from nablagrad import nn
from nablagrad.datasets import load_digits

STEPS = int(sys.argv[1]) if len(sys.argv) > 1 else 200
PER_RANK = 32
ng.set_num_threads(1)
dist.init()
rank, world = dist.get_rank(), dist.get_world_size()

images, labels = load_digits()
n = 640  # 10 global batches of 64 per epoch
x_all = images[:n].astype(np.float64)
y_all = labels[:n]


def digits_cnn():
    """The demo's LeNet-style CNN (narrower, and without dropout, whose draws depend on the batch split)."""
    ng.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, activation="relu"), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1, activation="relu"), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64, 32, activation="relu"), nn.Linear(32, 10)).to(ng.float64)


def train(model, loader_of_epoch, reduce_loss):
    opt = ng.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    epoch = 0
    while len(losses) < STEPS:
        for xb, yb in loader_of_epoch(epoch):
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(reduce_loss(loss))
            if len(losses) == STEPS:
                break
        epoch += 1
    return np.array(losses)


ds = ng.data.TensorDataset(x_all, y_all)
ddp = nn.parallel.DistributedDataParallel(digits_cnn(), bucket_cap_mb=0.01)
dist_loader = ng.data.DataLoader(ds, batch_size=PER_RANK, shuffle=True, seed=11, distributed=True, drop_last=True)


def global_loss(loss):
    t = ng.tensor(np.array([float(loss.item())]))  # (a list would pass through float32)
    return float(np.asarray(dist.all_reduce(t, op="avg"))[0])


dist_losses = train(ddp, lambda e: dist_loader, global_loss)
dist_params = [np.asarray(p.detach()).copy() for p in ddp.module.parameters()]
other = dist._allgather_object(dist_params)
for a, b in zip(other[0], other[1]):
    np.testing.assert_array_equal(a, b)  # the replicas never diverge

if rank == 0:
    ref = digits_cnn()
    ref_loader = ng.data.DataLoader(ds, batch_size=PER_RANK * world, shuffle=True, seed=11, drop_last=True)
    ref_losses = train(ref, lambda e: ref_loader, lambda loss: float(loss.item()))
    worst = max(float(np.max(np.abs(a - np.asarray(p.detach())))) for a, p in zip(dist_params, ref.parameters()))
    loss_gap = float(np.max(np.abs(dist_losses - ref_losses)))
    print(f"steps {STEPS}: loss {ref_losses[0]:.4f} -> {ref_losses[-1]:.4f}; max |param diff| {worst:.3e}; "
          f"max |loss diff| {loss_gap:.3e}", flush=True)
    assert ref_losses[-1] < 0.5 * ref_losses[0], "the reference did not train"
    assert worst < 1e-8, worst  # (the issue asks ~1e-6; measured ~4e-15)
    assert loss_gap < 1e-9, loss_gap
    print("ALL PASSED", flush=True)
dist.barrier()
