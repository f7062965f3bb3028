"""nablagrad vs NumPy (OpenBLAS) float32 matmul throughput, measured in one run.

    python benchmarks/matmul.py [--threads 2] [--sizes 256 512 1024 2048]

Prints GFLOP/s for both and the ratio nablagrad / NumPy (target: >= 0.80 at 1024 on
2 threads). NumPy's thread count is set to the same value through threadpoolctl when it
is installed, else through OPENBLAS_NUM_THREADS (set before NumPy is imported).
"""

from __future__ import annotations

import argparse
import os
import sys

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--threads", type=int, default=2)
parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 2048])
parser.add_argument("--rounds", type=int, default=7)
args = parser.parse_args()
os.environ.setdefault("OPENBLAS_NUM_THREADS", str(args.threads))

import numpy as np  # noqa: E402

import nablagrad as ng  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from _common import race  # noqa: E402

ng.set_num_threads(args.threads)
print(f"threads={args.threads}  simd={ng._core._simd_level()}  numpy={np.__version__}")
print(f"{'n':>6} {'numpy GF/s':>11} {'nablagrad GF/s':>15} {'ratio':>7}")
for n in args.sizes:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    ta, tb = ng.from_numpy(a), ng.from_numpy(b)
    err = np.max(np.abs(np.asarray(ta @ tb) - a @ b)) / np.max(np.abs(a @ b))
    assert err < 1e-4, f"wrong result at n={n}: relative error {err}"
    t = race({"numpy": lambda: a @ b, "nablagrad": lambda: ta @ tb}, rounds=args.rounds,
             min_time=0.2 if n >= 1024 else 0.05)
    flops = 2.0 * n**3
    gn, gg = flops / t["numpy"] / 1e9, flops / t["nablagrad"] / 1e9
    print(f"{n:>6} {gn:>11.1f} {gg:>15.1f} {gg / gn:>7.2f}")
