"""conv2d (NHWC, float32) in nablagrad vs PyTorch (its faster layout per shape), from Python.

    PYTHONPATH=build/dev-conv/site python benchmarks/conv2d.py [--rounds 9] [--threads 2,1]
                                                               [--shapes 0,4] [--markdown]

For every shape, forward (no grad) and forward+backward (input, weight and bias gradients)
are timed in the same process, alternating PyTorch (both layouts: NCHW and channels_last)
and nablagrad block by block (see measure()), and the median over rounds is reported. The
PyTorch figure is its faster layout for that shape and pass (the layout is printed). The
kernels nablagrad chose for each pass (kernels/conv2d/select.h) are printed with the shape.
ratio = torch_time / nablagrad_time (> 1: we are faster). GF/s counts
2*N*Ho*Wo*Q*FH*FW*C FLOPs for the forward pass and 3x that for forward+backward; "%peak" is
relative to an fp32 peak per thread, by default a Zen 3 core's 92.5 GFLOP/s (--peak sets
another: ~113-135 for a Zen 4 core, ~215-240 for a Xeon core with two 512-bit FMA ports). The
"scale" column is t(1 thread) / t(2 threads) of nablagrad's forward+backward. Without torch
only nablagrad's numbers are printed. The first line names the CPU, the SIMD level and the
load average: the machine is shared, so check `uptime` first.
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
    from _common import cpu_model, warm_up
except ImportError:  # run from elsewhere than benchmarks/ (e.g. loaded by nablagrad.benchmark)
    from nablagrad.benchmark._common import cpu_model, warm_up

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
    (16, 14, 14, 128, 256, 1, 1, 0),  # 1x1: straight to the GEMM
    (4, 96, 96, 16, 16, 5, 1, 2),  # 5x5
    (32, 16, 16, 48, 96, 3, 1, 0),  # unpadded 3x3
    (8, 14, 14, 256, 512, 3, 2, 1),  # deep, strided: a 4.7 MB kernel (gemm() paths)
    (8, 7, 7, 512, 512, 3, 1, 1),  # deep 3x3 on 7 x 7 images (Winograd by filter panels; gemm() for its dW)
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
        self.algorithm = ng._core._conv_algorithm_for((n, h, w, c), (q, f, f, c), s, s, p, p, p, p)
        if torch is not None:
            # layout -> (x, kernel, bias, dy) in that memory format (NCHW logical shapes)
            self.t = {}
            for layout, fmt in (("cl", torch.channels_last), ("nchw", torch.contiguous_format)):
                self.t[layout] = (
                    torch.tensor(x).permute(0, 3, 1, 2).contiguous(memory_format=fmt).requires_grad_(True),
                    torch.tensor(k).permute(0, 3, 1, 2).contiguous(memory_format=fmt).requires_grad_(True),
                    torch.tensor(b).requires_grad_(True),
                    torch.tensor(dy).permute(0, 3, 1, 2).contiguous(memory_format=fmt))
            self.tx, self.tk, self.tb, self.tdy = self.t["cl"]

    def ours_fwd(self) -> None:
        with ng.no_grad():
            F.conv2d(self.nx, self.nk, self.nb, stride=self.s, padding=self.p)

    def ours_fb(self) -> None:
        self.nx.grad = self.nk.grad = self.nb.grad = None
        F.conv2d(self.nx, self.nk, self.nb, stride=self.s, padding=self.p).backward(self.ndy)

    def torch_fwd(self, layout: str = "cl") -> None:
        tx, tk, tb, _ = self.t[layout]
        with torch.no_grad():
            torch.nn.functional.conv2d(tx, tk, tb, stride=self.s, padding=self.p)

    def torch_fb(self, layout: str = "cl") -> None:
        tx, tk, tb, tdy = self.t[layout]
        tx.grad = tk.grad = tb.grad = None
        torch.nn.functional.conv2d(tx, tk, tb, stride=self.s, padding=self.p).backward(tdy)


def measure(case: Case, nthreads: int, rounds: int, reps: int = 3, settle: float = 0.05):
    """Median seconds {(lib, pass): t}; torch and ours alternate block by block.

    PyTorch runs in both layouts ("torch_cl" channels_last, "torch_nchw"); ("torch", pass) is
    the faster of the two and ("torch_layout", pass) names it.

    Each round runs, for each pass, a block of torch calls then a block of ours. A block
    starts with a pause of `settle` seconds and untimed calls for 100 ms (warm_up: after even a
    short idle the CPU runs slower for its first 25-80 ms of work, which one call of a fast
    kernel does not absorb), then times `reps` calls:
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
        for layout in ("cl", "nchw"):
            fns[("torch_" + layout, "fwd")] = lambda layout=layout: case.torch_fwd(layout)
            fns[("torch_" + layout, "fb")] = lambda layout=layout: case.torch_fb(layout)
    for fn in fns.values():  # warm up (caches, allocator, thread pool)
        fn()
        fn()
    times = {key: [] for key in fns}
    for _ in range(rounds):
        for pas in ("fwd", "fb"):
            for lib in ("torch_cl", "ours", "torch_nchw"):
                if (lib, pas) in fns:
                    fn = fns[(lib, pas)]
                    time.sleep(settle)
                    warm_up(fn)
                    times[(lib, pas)].extend(timed(fn) for _ in range(reps))
    out = {key: statistics.median(v) for key, v in times.items()}
    if torch is not None:
        for pas in ("fwd", "fb"):
            best = min(("cl", "nchw"), key=lambda layout: out[("torch_" + layout, pas)])
            out[("torch", pas)] = out[("torch_" + best, pas)]
            out[("torch_layout", pas)] = "channels_last" if best == "cl" else "NCHW"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--threads", default="2,1", help="thread counts; the first is the headline")
    ap.add_argument("--shapes", default="", help="comma-separated indices into SHAPES")
    ap.add_argument("--shape", action="append", default=[], metavar="N,H,W,C,Q,F,S,P",
                    help="a shape of your own instead of the list (repeatable)")
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table")
    ap.add_argument("--peak", type=float, default=PEAK_PER_THREAD,
                    help="fp32 GFLOP/s of one thread for the %%peak column (default: a Zen 3 core)")
    args = ap.parse_args()
    thread_counts = [int(t) for t in args.threads.split(",")]
    shapes = SHAPES if not args.shapes else [SHAPES[int(i)] for i in args.shapes.split(",")]
    if args.shape:
        shapes = [parse_shape(s) for s in args.shape]
    have_torch = torch is not None
    half = "; AVX-512 at half rate (256-bit units)" if ng._core._avx512_half_rate() else ""
    print(f"# CPU: {cpu_model()}; SIMD level: {ng._core._simd_level()} (CPU has {ng._core._cpu_simd_level()}{half}); "
          f"conv algorithm: {ng.backends.conv_algorithm}")
    print(f"# load average {os.getloadavg()[0]:.2f}; torch {'%s' % torch.__version__ if have_torch else 'absent'}; "
          f"rounds {args.rounds}; times are medians in ms; torch = its faster layout (NCHW or channels_last); "
          f"%peak against {args.peak:g} GFLOP/s per thread")
    head = thread_counts[0]
    rows, ratios, fwd_ratios = [], [], []
    for shape in shapes:
        case = Case(shape)
        res = {t: measure(case, t, args.rounds) for t in thread_counts}
        r = res[head]
        alg = case.algorithm
        row = {"shape": "({},{},{},{}->{},{},{},{})".format(*shape), "thr": head,
               "alg": f"{alg['forward']} / {alg['backward_input']}, {alg['backward_weight']}",
               "o_f": r[("ours", "fwd")] * 1e3, "o_fb": r[("ours", "fb")] * 1e3}
        row["gf_f"] = case.flops / r[("ours", "fwd")] * 1e-9
        row["gf_fb"] = 3 * case.flops / r[("ours", "fb")] * 1e-9
        row["pk_fb"] = 100 * row["gf_fb"] / (args.peak * head)
        if 1 in res and head != 1:
            row["scale"] = res[1][("ours", "fb")] / r[("ours", "fb")]
        if have_torch:
            row["t_f"], row["t_fb"] = r[("torch", "fwd")] * 1e3, r[("torch", "fb")] * 1e3
            row["r_f"], row["r_fb"] = row["t_f"] / row["o_f"], row["t_fb"] / row["o_fb"]
            row["lay"] = "{}/{}".format(*("CL" if r[("torch_layout", p)] == "channels_last" else "NCHW"
                                          for p in ("fwd", "fb")))
            if 1 in res and head != 1:
                row["t_scale"] = res[1][("torch", "fb")] / r[("torch", "fb")]
            ratios.append(row["r_fb"])
            fwd_ratios.append(row["r_f"])
        rows.append(row)
        print_row(row, have_torch, args.markdown, first=len(rows) == 1)
    if ratios:
        gm = math.exp(sum(math.log(v) for v in ratios) / len(ratios))
        gm_f = math.exp(sum(math.log(v) for v in fwd_ratios) / len(fwd_ratios))
        print(f"\ngeometric mean of the forward+backward ratio (torch/ours) at {head} threads: {gm:.2f}"
              f"  (min {min(ratios):.2f}); forward: {gm_f:.2f} (min {min(fwd_ratios):.2f})")


def parse_shape(text: str) -> tuple:
    parts = text.split(",")
    if len(parts) != 8 or not all(p.strip().isdigit() for p in parts):
        raise SystemExit(f"--shape wants eight non-negative integers N,H,W,C,Q,F,S,P, got {text!r}")
    return tuple(int(p) for p in parts)


def print_row(row, have_torch: bool, markdown: bool, first: bool) -> None:
    cols = [("shape (N,H,W,C->Q,F,S,P)", "shape", "{}"), ("kernels fwd / dX, dW", "alg", "{}")]
    if have_torch:
        cols += [("torch layout f/fb", "lay", "{}"), ("torch fwd", "t_f", "{:.2f}")]
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
        widths[0], widths[1] = 26, 34
        if first:
            print("  ".join(c[0].rjust(wd) for c, wd in zip(cols, widths)))
        print("  ".join(cell.rjust(wd) for cell, wd in zip(cells, widths)))


if __name__ == "__main__":
    main()
