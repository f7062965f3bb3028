"""conv2d (NHWC, float32) in nablagrad vs PyTorch (channels_last), from Python.

    PYTHONPATH=build/dev-conv/site python benchmarks/conv2d.py [--rounds 9] [--threads 2,1]
                                                               [--shapes 0,4] [--markdown]

For every shape, forward (no grad) and forward+backward (input, weight and bias gradients)
are timed in the same process, alternating torch and nablagrad block by block (see measure()),
and the median over rounds is reported. ratio = torch_time / nablagrad_time (> 1: we are faster). GF/s counts
2*N*Ho*Wo*Q*FH*FW*C FLOPs for the forward pass and 3x that for forward+backward; "%peak" is
relative to the machine's fp32 peak (185 GFLOP/s on 2 Zen 3 cores, 92.5 per core). The
"scale" column is t(1 thread) / t(2 threads) of nablagrad's forward+backward. Without torch
only nablagrad's numbers are printed. The machine is shared: check `uptime` first.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time

import numpy as np

import nablagrad as ng
import nablagrad.functional as F

try:
    import torch
except ImportError:  # pragma: no cover - exercised when torch is absent
    torch = None

SHAPES = [  # N, H, W, C -> Q, F, S, P
    (64, 28, 28, 1, 32, 3, 1, 1),
    (32, 32, 32, 64, 64, 3, 1, 1),
    (8, 56, 56, 64, 64, 3, 1, 1),
    (16, 32, 32, 32, 64, 3, 2, 1),
    (8, 64, 64, 3, 32, 7, 2, 3),
]
PEAK_PER_THREAD = 92.5  # GFLOP/s, fp32, one Zen 3 core (2 FMA x 8 lanes x 2 x ~2.9 GHz)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class Case:
    def __init__(self, shape, seed: int = 0):
        n, h, w, c, q, f, s, p = shape
        self.shape, self.s, self.p = shape, s, p
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((n, h, w, c)).astype(np.float32)
        k = (rng.standard_normal((q, f, f, c)) / math.sqrt(f * f * c)).astype(np.float32)
        b = rng.standard_normal(q).astype(np.float32)
        self.ho, self.wo = (h + 2 * p - f) // s + 1, (w + 2 * p - f) // s + 1
        dy = rng.standard_normal((n, self.ho, self.wo, q)).astype(np.float32)
        self.flops = 2.0 * n * self.ho * self.wo * q * f * f * c
        self.nx, self.nk, self.nb = (ng.tensor(a, requires_grad=True) for a in (x, k, b))
        self.ndy = ng.tensor(dy)
        if torch is not None:
            cl = torch.channels_last
            self.tx = torch.tensor(x).permute(0, 3, 1, 2).contiguous(memory_format=cl).requires_grad_(True)
            self.tk = torch.tensor(k).permute(0, 3, 1, 2).contiguous(memory_format=cl).requires_grad_(True)
            self.tb = torch.tensor(b).requires_grad_(True)
            self.tdy = torch.tensor(dy).permute(0, 3, 1, 2).contiguous(memory_format=cl)

    def ours_fwd(self) -> None:
        with ng.no_grad():
            F.conv2d(self.nx, self.nk, self.nb, stride=self.s, padding=self.p)

    def ours_fb(self) -> None:
        self.nx.grad = self.nk.grad = self.nb.grad = None
        F.conv2d(self.nx, self.nk, self.nb, stride=self.s, padding=self.p).backward(self.ndy)

    def torch_fwd(self) -> None:
        with torch.no_grad():
            torch.nn.functional.conv2d(self.tx, self.tk, self.tb, stride=self.s, padding=self.p)

    def torch_fb(self) -> None:
        self.tx.grad = self.tk.grad = self.tb.grad = None
        torch.nn.functional.conv2d(self.tx, self.tk, self.tb, stride=self.s, padding=self.p).backward(self.tdy)


def measure(case: Case, nthreads: int, rounds: int, reps: int = 3, settle: float = 0.05):
    """Median seconds {(lib, pass): t}; torch and ours alternate block by block.

    Each round runs, for each pass, a block of torch calls then a block of ours. A block
    starts with a pause of `settle` seconds and one untimed call, then times `reps` calls:
    PyTorch's OpenMP workers spin-wait for several milliseconds after a parallel region, and
    a contender timed right after a torch call finds them still burning the second core
    (measured: nablagrad's 2-thread (8,64,64,3->32,7,2,3) f+b 2.7 ms alone, 7.2 ms right after a
    torch call). The pause lets the other library's threads go idle in both directions.
    """
    ng.set_num_threads(nthreads)
    if torch is not None:
        torch.set_num_threads(nthreads)
    fns = {("ours", "fwd"): case.ours_fwd, ("ours", "fb"): case.ours_fb}
    if torch is not None:
        fns.update({("torch", "fwd"): case.torch_fwd, ("torch", "fb"): case.torch_fb})
    for fn in fns.values():  # warm up (caches, allocator, thread pool)
        fn()
        fn()
    times = {key: [] for key in fns}
    for _ in range(rounds):
        for pas in ("fwd", "fb"):
            for lib in ("torch", "ours"):
                if (lib, pas) in fns:
                    fn = fns[(lib, pas)]
                    time.sleep(settle)
                    fn()
                    times[(lib, pas)].extend(timed(fn) for _ in range(reps))
    return {key: statistics.median(v) for key, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--threads", default="2,1", help="thread counts; the first is the headline")
    ap.add_argument("--shapes", default="", help="comma-separated indices into SHAPES")
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = ap.parse_args()
    thread_counts = [int(t) for t in args.threads.split(",")]
    shapes = SHAPES if not args.shapes else [SHAPES[int(i)] for i in args.shapes.split(",")]
    have_torch = torch is not None
    print(f"# load average {os.getloadavg()[0]:.2f}; torch {'%s' % torch.__version__ if have_torch else 'absent'}; "
          f"simd {ng._core._simd_level()}; rounds {args.rounds}; times are medians in ms")
    head = thread_counts[0]
    rows, ratios = [], []
    for shape in shapes:
        case = Case(shape)
        res = {t: measure(case, t, args.rounds) for t in thread_counts}
        r = res[head]
        row = {"shape": "({},{},{},{}->{},{},{},{})".format(*shape), "thr": head,
               "o_f": r[("ours", "fwd")] * 1e3, "o_fb": r[("ours", "fb")] * 1e3}
        row["gf_f"] = case.flops / r[("ours", "fwd")] * 1e-9
        row["gf_fb"] = 3 * case.flops / r[("ours", "fb")] * 1e-9
        row["pk_fb"] = 100 * row["gf_fb"] / (PEAK_PER_THREAD * head)
        if 1 in res and head != 1:
            row["scale"] = res[1][("ours", "fb")] / r[("ours", "fb")]
        if have_torch:
            row["t_f"], row["t_fb"] = r[("torch", "fwd")] * 1e3, r[("torch", "fb")] * 1e3
            row["r_f"], row["r_fb"] = row["t_f"] / row["o_f"], row["t_fb"] / row["o_fb"]
            if 1 in res and head != 1:
                row["t_scale"] = res[1][("torch", "fb")] / r[("torch", "fb")]
            ratios.append(row["r_fb"])
        rows.append(row)
        print_row(row, have_torch, args.markdown, first=len(rows) == 1)
    if ratios:
        gm = math.exp(sum(math.log(v) for v in ratios) / len(ratios))
        print(f"\ngeometric mean of the forward+backward ratio (torch/ours) at {head} threads: {gm:.2f}"
              f"  (min {min(ratios):.2f})")


def print_row(row, have_torch: bool, markdown: bool, first: bool) -> None:
    cols = [("shape (N,H,W,C->Q,F,S,P)", "shape", "{}")]
    if have_torch:
        cols += [("torch fwd", "t_f", "{:.2f}")]
    cols += [("ours fwd", "o_f", "{:.2f}")]
    if have_torch:
        cols += [("ratio fwd", "r_f", "{:.2f}"), ("torch f+b", "t_fb", "{:.2f}")]
    cols += [("ours f+b", "o_fb", "{:.2f}")]
    if have_torch:
        cols += [("ratio f+b", "r_fb", "{:.2f}")]
    cols += [("GF/s fwd", "gf_f", "{:.1f}"), ("GF/s f+b", "gf_fb", "{:.1f}"), ("%peak f+b", "pk_fb", "{:.0f}%"),
             ("scale 1->2 ours", "scale", "{:.2f}")]
    if have_torch:
        cols += [("scale 1->2 torch", "t_scale", "{:.2f}")]
    cells = [fmt.format(row[key]) if key in row else "-" for _, key, fmt in cols]
    if markdown:
        if first:
            print("| " + " | ".join(c[0] for c in cols) + " |")
            print("|" + "---|" * len(cols))
        print("| " + " | ".join(cells) + " |")
    else:
        widths = [max(len(c[0]), 10) for c in cols]
        widths[0] = 26
        if first:
            print("  ".join(c[0].rjust(wd) for c, wd in zip(cols, widths)))
        print("  ".join(cell.rjust(wd) for cell, wd in zip(cells, widths)))


if __name__ == "__main__":
    main()
