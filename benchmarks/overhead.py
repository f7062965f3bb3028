"""Per-op overhead on tiny tensors: nablagrad vs PyTorch (and NumPy), same run.

    python benchmarks/overhead.py

Two figures on 10-element float32 tensors:
  * add:       a + b
  * backward:  (a * b + c).sum().backward()  (a, b require grad): the cost of one small
               training step's bookkeeping (target: at least 3x faster than PyTorch).
Ratios are PyTorch time / nablagrad time (> 1: nablagrad is faster).
"""

from __future__ import annotations

import os
import sys

import numpy as np

import nablagrad as ng

sys.path.insert(0, os.path.dirname(__file__))
from _common import race, try_import_torch  # noqa: E402

torch = try_import_torch()
ng.set_num_threads(1)
rng = np.random.default_rng(0)
xa, xb, xc = (rng.standard_normal(10).astype(np.float32) for _ in range(3))

na, nb, nc = ng.tensor(xa, requires_grad=True), ng.tensor(xb, requires_grad=True), ng.tensor(xc)


def ng_backward() -> None:
    (na * nb + nc).sum().backward()


contenders_add = {"numpy": lambda: xa + xb, "nablagrad": lambda: na.detach() + nb.detach()}
contenders_bwd = {"nablagrad": ng_backward}
pa = pb = None
if torch is not None:
    torch.set_num_threads(1)
    pa = torch.tensor(xa, requires_grad=True)
    pb = torch.tensor(xb, requires_grad=True)
    pc = torch.tensor(xc)
    da, db = pa.detach(), pb.detach()
    contenders_add["torch"] = lambda: da + db

    def torch_backward() -> None:
        (pa * pb + pc).sum().backward()

    contenders_bwd["torch"] = torch_backward
# detach() outside the timed call for a fair add figure
dna, dnb = na.detach(), nb.detach()
contenders_add["nablagrad"] = lambda: dna + dnb

t_add = race(contenders_add, rounds=7, min_time=0.1)
t_bwd = race(contenders_bwd, rounds=7, min_time=0.1)
print(f"{'figure':<28} {'numpy us':>9} {'torch us':>9} {'nablagrad us':>13} {'torch/ng':>9}")
for name, t in (("10-element add", t_add), ("mul+add+sum+backward", t_bwd)):
    np_us = f"{t['numpy'] * 1e6:9.2f}" if "numpy" in t else f"{'-':>9}"
    th_us = f"{t['torch'] * 1e6:9.2f}" if "torch" in t else f"{'-':>9}"
    ratio = f"{t['torch'] / t['nablagrad']:9.2f}" if "torch" in t else f"{'-':>9}"
    print(f"{name:<28} {np_us} {th_us} {t['nablagrad'] * 1e6:13.2f} {ratio}")
