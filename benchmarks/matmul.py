"""nablagrad vs NumPy (OpenBLAS) float32 matmul throughput, measured in one run.

    python benchmarks/matmul.py [--threads 2] [--sizes 256 512 1024 2048]

Prints GFLOP/s for both and the ratio nablagrad / NumPy (target: >= 0.80 at 1024 on
2 threads). NumPy's thread count is set to the same value through threadpoolctl when it
is installed, else through OPENBLAS_NUM_THREADS (set before NumPy is imported). The
measurement is nablagrad.benchmark.matmul.measure (also run by ``python -m nablagrad.benchmark``).
"""

from __future__ import annotations

import argparse
import os

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--threads", type=int, default=2)
parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 2048])
parser.add_argument("--rounds", type=int, default=7)
args = parser.parse_args()
os.environ.setdefault("OPENBLAS_NUM_THREADS", str(args.threads))

import numpy as np  # noqa: E402

import nablagrad as ng  # noqa: E402
from nablagrad.benchmark.matmul import measure, numpy_threads  # noqa: E402

ng.set_num_threads(args.threads)
print(f"threads={args.threads}  simd={ng._core._simd_level()}  numpy={np.__version__}")
print(f"{'n':>6} {'numpy GF/s':>11} {'nablagrad GF/s':>15} {'ratio':>7}")
with numpy_threads(args.threads):
    for n in args.sizes:
        t = measure(n, args.rounds, min_time=0.2 if n >= 1024 else 0.05)
        flops = 2.0 * n**3
        gn, gg = flops / t["numpy"] / 1e9, flops / t["nablagrad"] / 1e9
        print(f"{n:>6} {gn:>11.1f} {gg:>15.1f} {gg / gn:>7.2f}")
