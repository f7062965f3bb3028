"""Data-parallel training step: two MPI ranks of one thread each vs one process of one thread,
on the same global batch of the demo's digits CNN (float32, Adam).

    PYTHONPATH=build/dev-NAME/site python benchmarks/distributed.py [--rounds 5] [--steps 60]
                                                                    [--batch 64] [--model cnn]

Each round runs, alternating: one process (`python distributed.py --worker`) and two ranks
(`mpiexec -n 2 python distributed.py --worker`), each timing --steps steps after 10 warm-up
steps. Per configuration it reports the median over rounds of:
  * step: wall time of one training step (forward, backward with its all-reduces, Adam);
  * comm: the time the same all-reduces take when run blocking on their own (the bucket
    sizes of that DDP, measured after the training loop, best of 20 repetitions);
  * exposed: the time the end of backward waits for the all-reduces still in flight (it also
    absorbs the ranks' load imbalance);
  * hidden: the share of the one-bucket configuration's exposed wait that the small buckets
    no longer wait for, 1 - exposed(16 KiB) / exposed(one bucket): with one bucket nothing
    starts before backward ends, so its wait is the whole communication plus imbalance.
Two DDP variants: one 25 MiB bucket (PyTorch's default size: here the whole model, so nothing
to overlap) and 16 KiB buckets (several all-reduces started during backward).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def worker(args: argparse.Namespace) -> None:
    import nablagrad as ng
    import nablagrad.distributed as dist
    import nablagrad.functional as F
    from nablagrad import nn
    from nablagrad.datasets import load_digits
    from nablagrad.demo.__main__ import build_model

    ng.set_num_threads(1)
    dist.init()
    rank, world = dist.get_rank(), dist.get_world_size()
    images, labels = load_digits()
    per_rank = args.batch // world
    ng.manual_seed(0)
    model = build_model(args.model)
    net = nn.parallel.DistributedDataParallel(model, bucket_cap_mb=args.bucket_mb) if world > 1 else model
    opt = ng.optim.Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(rank)
    batches = []
    for _ in range(8):
        idx = rng.integers(0, len(labels), per_rank)
        batches.append((ng.from_numpy(np.ascontiguousarray(images[idx])), ng.from_numpy(labels[idx])))
    steps, exposed, backward = [], [], []
    for s in range(10 + args.steps):
        xb, yb = batches[s % len(batches)]
        dist.barrier()
        t0 = time.perf_counter()
        loss = F.cross_entropy(net(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        t1 = time.perf_counter()
        if s >= 10:
            steps.append(t1 - t0)
            if world > 1:
                exposed.append(net.last_sync["wait_s"])
                backward.append(net.last_sync["backward_s"])
    result = {"world": world, "step_s": statistics.median(steps), "params": int(sum(p.numel() for p in model.parameters()))}
    if world > 1:
        # The same all-reduces, blocking and alone: what communication costs without overlap.
        bufs = [np.ones(b.numel + len(b.params), dtype=b.np_dtype) for b in net.buckets]
        comm = []
        for _ in range(20):
            dist.barrier()
            t0 = time.perf_counter()
            for buf in bufs:
                dist._state.comm.Allreduce(dist._state.MPI.IN_PLACE, buf, op=dist._state.MPI.SUM)
            comm.append(time.perf_counter() - t0)
        result.update({"exposed_s": statistics.median(exposed), "comm_s": min(comm),
                       "backward_s": statistics.median(backward), "buckets": len(net.buckets),
                       "bytes": int(sum(b.nbytes() for b in net.buckets))})
    results = dist._allgather_object(result)
    if rank == 0:
        merged = dict(results[0])
        for key in ("step_s", "exposed_s", "comm_s"):
            if key in merged:
                merged[key] = max(r[key] for r in results)  # the slower rank sets the pace
        print("RESULT " + json.dumps(merged), flush=True)


def launch(cmd: list, env: dict) -> dict:
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=64, help="global batch (split over the ranks)")
    ap.add_argument("--model", default="cnn", choices=("cnn", "lstm", "transformer"))
    ap.add_argument("--bucket-mb", type=float, default=25.0)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    sys.path.insert(0, HERE)
    from _common import machine_line

    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if not os.access(mpiexec, os.X_OK):
        mpiexec = shutil.which("mpiexec") or ""
    if not mpiexec:
        raise SystemExit("mpiexec not found: pip install \"nablagrad[mpi]\"")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    base = [sys.executable, os.path.abspath(__file__), "--worker", "--steps", str(args.steps), "--batch",
            str(args.batch), "--model", args.model]
    configs = {
        "1 process x 1 thread": base,
        "2 ranks, one 25 MiB bucket": [mpiexec, "-n", "2"] + base + ["--bucket-mb", "25"],
        "2 ranks, 16 KiB buckets": [mpiexec, "-n", "2"] + base + ["--bucket-mb", str(16 / 1024)],
    }
    rows: dict = {k: [] for k in configs}
    for r in range(args.rounds):
        for name, cmd in configs.items():  # alternating, so load changes hit every configuration
            rows[name].append(launch(cmd, env))
    print(machine_line(1) + " (per rank)")
    print(f"model {args.model} ({rows['1 process x 1 thread'][0]['params']:,} parameters), global batch "
          f"{args.batch}, float32, Adam; median of {args.rounds} rounds x {args.steps} steps")
    single = statistics.median(r["step_s"] for r in rows["1 process x 1 thread"])
    print(f"{'configuration':<30}{'step ms':>9}{'speedup':>9}{'buckets':>9}{'KiB':>8}{'comm ms':>9}"
          f"{'exposed ms':>12}{'hidden':>8}")
    one_bucket = statistics.median(r["exposed_s"] for r in rows["2 ranks, one 25 MiB bucket"])
    for name, rs in rows.items():
        step = statistics.median(r["step_s"] for r in rs)
        line = f"{name:<30}{1e3 * step:>9.2f}{single / step:>8.2f}x"
        if "comm_s" in rs[0]:
            comm = statistics.median(r["comm_s"] for r in rs)
            exposed = statistics.median(r["exposed_s"] for r in rs)
            hidden = 1.0 - exposed / one_bucket if one_bucket > 0 else 0.0
            line += (f"{rs[0]['buckets']:>9}{rs[0]['bytes'] / 1024:>8.0f}{1e3 * comm:>9.3f}{1e3 * exposed:>12.3f}"
                     f"{100 * hidden:>7.0f}%")
        print(line)


if __name__ == "__main__":
    main()
