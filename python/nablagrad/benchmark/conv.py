"""conv2d (NHWC, float32) forward and forward+backward: nablagrad vs PyTorch (channels_last).

From a checkout this runs benchmarks/conv2d.py's SHAPES with its Case and measure(); otherwise
the small case set below, measured the same way (_common.measure_blocks).
"""

from __future__ import annotations

import math
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

import nablagrad as ng
import nablagrad.functional as F

from . import _scripts
from ._common import measure_blocks
from ._report import Config, Row

# N, H, W, C -> Q, F, S, P (the first two of benchmarks/conv2d.py's list)
SHAPES = [(64, 28, 28, 1, 32, 3, 1, 1), (32, 32, 32, 64, 64, 3, 1, 1)]
SMOKE_SHAPE = (2, 8, 8, 3, 4, 3, 1, 1)


class Case:
    """One conv shape, both libraries, the same data (the interface of benchmarks/conv2d.py's Case)."""

    def __init__(self, shape: Tuple[int, ...], torch: Optional[Any], seed: int = 0):
        n, h, w, c, q, f, s, p = shape
        self.shape, self.s, self.p, self.torch = shape, s, p, torch
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((n, h, w, c)).astype(np.float32)
        k = (rng.standard_normal((q, f, f, c)) / math.sqrt(f * f * c)).astype(np.float32)
        b = rng.standard_normal(q).astype(np.float32)
        ho, wo = (h + 2 * p - f) // s + 1, (w + 2 * p - f) // s + 1
        dy = rng.standard_normal((n, ho, wo, q)).astype(np.float32)
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
        with self.torch.no_grad():
            self.torch.nn.functional.conv2d(self.tx, self.tk, self.tb, stride=self.s, padding=self.p)

    def torch_fb(self) -> None:
        self.tx.grad = self.tk.grad = self.tb.grad = None
        self.torch.nn.functional.conv2d(self.tx, self.tk, self.tb, stride=self.s, padding=self.p).backward(self.tdy)


def _fns(case: Any, torch: Optional[Any]) -> dict:
    fns = {("ours", "fwd"): case.ours_fwd, ("ours", "fb"): case.ours_fb}
    if torch is not None:
        fns.update({("torch", "fwd"): case.torch_fwd, ("torch", "fb"): case.torch_fb})
    return fns


def run(cfg: Config, shapes: Sequence[Tuple[int, ...]] = ()) -> List[Row]:
    script = None if cfg.smoke else _scripts.load("conv2d", cfg.torch)
    ng.set_num_threads(cfg.threads)
    if cfg.torch is not None:
        cfg.torch.set_num_threads(cfg.threads)
    if not shapes:
        all_shapes = list(getattr(script, "SHAPES", SHAPES)) if script is not None else SHAPES
        shapes = [SMOKE_SHAPE] if cfg.smoke else all_shapes[:1] if cfg.quick else all_shapes
    rows = []
    for shape in shapes:
        if script is not None and hasattr(script, "Case") and hasattr(script, "measure"):
            r = script.measure(script.Case(shape), cfg.threads, cfg.rounds)
        else:
            r = measure_blocks(_fns(Case(shape, cfg.torch), cfg.torch), cfg.rounds, reps=1 if cfg.smoke else 3)
        label = "({},{},{},{}->{},{},{},{})".format(*shape)
        for pas, name in (("fwd", "forward"), ("fb", "fwd+bwd")):
            ref = r.get(("torch", pas))
            rows.append(Row("conv", f"{label} {name}", r[("ours", pas)], "PyTorch" if ref is not None else "", ref,
                            _scripts.source_label(script, "conv2d")))
        cfg.log(f"  conv {label}: fwd+bwd {r[('ours', 'fb')] * 1e3:.2f} ms")
    return rows
