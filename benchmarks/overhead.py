"""Per-op overhead on tiny tensors: nablagrad vs PyTorch (and NumPy), same run.

    python benchmarks/overhead.py

Two figures on 10-element float32 tensors:
  * add:       a + b
  * backward:  (a * b + c).sum().backward()  (a, b require grad): the cost of one small
               training step's bookkeeping (target: at least 3x faster than PyTorch).
Ratios are PyTorch time / nablagrad time (> 1: nablagrad is faster). The measurement is
nablagrad.benchmark.overhead.measure (also run by ``python -m nablagrad.benchmark``).
"""

from __future__ import annotations

import nablagrad as ng
from nablagrad.benchmark._common import try_import_torch
from nablagrad.benchmark.overhead import measure

torch = try_import_torch()
ng.set_num_threads(1)
if torch is not None:
    torch.set_num_threads(1)
t = measure(torch, rounds=7, min_time=0.1)
print(f"{'figure':<28} {'numpy us':>9} {'torch us':>9} {'nablagrad us':>13} {'torch/ng':>9}")
for name, r in (("10-element add", t["add"]), ("mul+add+sum+backward", t["backward"])):
    np_us = f"{r['numpy'] * 1e6:9.2f}" if "numpy" in r else f"{'-':>9}"
    th_us = f"{r['torch'] * 1e6:9.2f}" if "torch" in r else f"{'-':>9}"
    ratio = f"{r['torch'] / r['nablagrad']:9.2f}" if "torch" in r else f"{'-':>9}"
    print(f"{name:<28} {np_us} {th_us} {r['nablagrad'] * 1e6:13.2f} {ratio}")
