"""Per-op overhead on 10-element float32 tensors: nablagrad vs PyTorch (and NumPy), same run.

  * add:       a + b
  * backward:  (a * b + c).sum().backward() with a, b requiring grad: one small training
               step's bookkeeping.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

import numpy as np

import nablagrad as ng

from ._common import race
from ._report import Config, Row


def measure(torch: Optional[Any], rounds: int, min_time: float = 0.1) -> Dict[str, Dict[str, float]]:
    """{"add": {lib: seconds}, "backward": {lib: seconds}} for lib in numpy / nablagrad / torch."""
    rng = np.random.default_rng(0)
    xa, xb, xc = (rng.standard_normal(10).astype(np.float32) for _ in range(3))
    na, nb, nc = ng.tensor(xa, requires_grad=True), ng.tensor(xb, requires_grad=True), ng.tensor(xc)
    dna, dnb = na.detach(), nb.detach()  # detach() outside the timed call for a fair add figure

    def ng_backward() -> None:
        (na * nb + nc).sum().backward()

    add: Dict[str, Callable[[], object]] = {"numpy": lambda: xa + xb, "nablagrad": lambda: dna + dnb}
    bwd: Dict[str, Callable[[], object]] = {"nablagrad": ng_backward}
    if torch is not None:
        pa, pb = torch.tensor(xa, requires_grad=True), torch.tensor(xb, requires_grad=True)
        pc = torch.tensor(xc)
        da, db = pa.detach(), pb.detach()
        add["torch"] = lambda: da + db

        def torch_backward() -> None:
            (pa * pb + pc).sum().backward()

        bwd["torch"] = torch_backward
    return {"add": race(add, rounds=rounds, min_time=min_time),
            "backward": race(bwd, rounds=rounds, min_time=min_time)}


def run(cfg: Config) -> List[Row]:
    ng.set_num_threads(cfg.threads)
    if cfg.torch is not None:
        cfg.torch.set_num_threads(cfg.threads)
    t = measure(cfg.torch, cfg.rounds, min_time=0.01 if cfg.smoke else 0.05 if cfg.quick else 0.1)
    rows = []
    for key, case in (("add", "10-element add"), ("backward", "10-element mul+add+sum+backward")):
        ours = t[key]["nablagrad"]
        if "torch" in t[key]:
            note = f"NumPy {t[key]['numpy'] * 1e6:.2f} us" if "numpy" in t[key] else ""
            rows.append(Row("overhead", case, ours, "PyTorch", t[key]["torch"], note))
        elif "numpy" in t[key]:
            rows.append(Row("overhead", case, ours, "NumPy", t[key]["numpy"]))
        else:
            rows.append(Row("overhead", case, ours))
        cfg.log(f"  overhead {case}: {ours * 1e6:.2f} us")
    return rows
