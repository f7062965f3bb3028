"""Layers (recurrent, attention, a transformer block) in nablagrad vs PyTorch: inference
(forward under no_grad) and forward+backward.

From a checkout this runs benchmarks/layers.py's CASES with its measure(); otherwise the small
case set below (an LSTM and a self-attention layer), measured the same way.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional

import numpy as np

import nablagrad as ng

from . import _scripts
from ._common import measure_blocks
from ._report import Config, Row


class LSTMCase:
    """nn.LSTM against torch.nn.LSTM(batch_first=True) with the same weights."""

    def __init__(self, torch: Optional[Any], N: int = 32, T: int = 50, I: int = 128, H: int = 128, seed: int = 0):
        self.name, self.torch = f"LSTM N={N} T={T} I={I} H={H} L=1", torch
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((N, T, I)).astype(np.float32)
        dy = rng.standard_normal((N, T, H)).astype(np.float32)
        ng.manual_seed(seed)
        self.model = ng.nn.LSTM(I, H)
        self.params = list(self.model.parameters())
        self.nx, self.ndy = ng.tensor(x, requires_grad=True), ng.tensor(dy)
        if torch is not None:
            self.tmodel = torch.nn.LSTM(I, H, batch_first=True)
            with torch.no_grad():
                for p, q in zip(self.params, self.tmodel.parameters()):
                    q.copy_(torch.from_numpy(np.array(p.detach().numpy())))
            self.tparams = list(self.tmodel.parameters())
            self.tx, self.tdy = torch.from_numpy(x).requires_grad_(True), torch.from_numpy(dy)

    def ours_fwd(self) -> None:
        with ng.no_grad():
            self.model(self.nx)

    def ours_fb(self) -> None:
        self.nx.grad = None
        for p in self.params:
            p.grad = None
        self.model(self.nx)[0].backward(self.ndy)

    def torch_fwd(self) -> None:
        with self.torch.no_grad():
            self.tmodel(self.tx)

    def torch_fb(self) -> None:
        self.tx.grad = None
        for p in self.tparams:
            p.grad = None
        self.tmodel(self.tx)[0].backward(self.tdy)


class AttentionCase:
    """nn.MultiheadAttention self-attention against torch.nn.MultiheadAttention(batch_first=True)."""

    def __init__(self, torch: Optional[Any], N: int = 16, L: int = 128, E: int = 256, H: int = 8, seed: int = 0):
        self.name, self.torch = f"MHA N={N} L={L} E={E} h={H}", torch
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((N, L, E)).astype(np.float32)
        dy = rng.standard_normal((N, L, E)).astype(np.float32)
        ng.manual_seed(seed)
        self.model = ng.nn.MultiheadAttention(E, H)
        self.params = list(self.model.parameters())
        self.nx, self.ndy = ng.tensor(x, requires_grad=True), ng.tensor(dy)
        if torch is not None:
            self.tmodel = torch.nn.MultiheadAttention(E, H, batch_first=True)
            m = self.model
            with torch.no_grad():
                self.tmodel.in_proj_weight.copy_(torch.from_numpy(np.concatenate(
                    [np.asarray(m.q_proj.weight), np.asarray(m.k_proj.weight), np.asarray(m.v_proj.weight)])))
                self.tmodel.in_proj_bias.copy_(torch.from_numpy(np.concatenate(
                    [np.asarray(m.q_proj.bias), np.asarray(m.k_proj.bias), np.asarray(m.v_proj.bias)])))
                self.tmodel.out_proj.weight.copy_(torch.from_numpy(np.array(m.out_proj.weight)))
                self.tmodel.out_proj.bias.copy_(torch.from_numpy(np.array(m.out_proj.bias)))
            self.tparams = list(self.tmodel.parameters())
            self.tx, self.tdy = torch.from_numpy(x).requires_grad_(True), torch.from_numpy(dy)

    def ours_fwd(self) -> None:
        self.model.eval()
        with ng.no_grad():
            self.model(self.nx, self.nx, self.nx, need_weights=False)
        self.model.train()

    def ours_fb(self) -> None:
        self.nx.grad = None
        for p in self.params:
            p.grad = None
        self.model(self.nx, self.nx, self.nx, need_weights=False)[0].backward(self.ndy)

    def torch_fwd(self) -> None:
        self.tmodel.eval()
        with self.torch.no_grad():
            self.tmodel(self.tx, self.tx, self.tx, need_weights=False)
        self.tmodel.train()

    def torch_fb(self) -> None:
        self.tx.grad = None
        for p in self.tparams:
            p.grad = None
        self.tmodel(self.tx, self.tx, self.tx, need_weights=False)[0].backward(self.tdy)


def package_cases(torch: Optional[Any], smoke: bool) -> List[Callable[[], Any]]:
    if smoke:
        return [lambda: LSTMCase(torch, 2, 4, 8, 8), lambda: AttentionCase(torch, 2, 8, 16, 2)]
    return [lambda: LSTMCase(torch), lambda: AttentionCase(torch)]


def run(cfg: Config) -> List[Row]:
    script = None if cfg.smoke else _scripts.load("layers", cfg.torch)
    ng.set_num_threads(cfg.threads)
    if cfg.torch is not None:
        cfg.torch.set_num_threads(cfg.threads)
    if script is not None and hasattr(script, "CASES") and hasattr(script, "measure"):
        makers = list(script.CASES)
        measure = script.measure
    else:
        makers = package_cases(cfg.torch, cfg.smoke)
        measure = None
    if cfg.quick:
        # one recurrent and one attention case (the first of each in the list)
        made = [m() for m in makers]
        picked = [next((c for c in made if c.name.upper().startswith(k)), None) for k in ("LSTM", "MHA")]
        cases = [c for c in picked if c is not None] or made[:1]
    else:
        cases = [m() for m in makers]
    rows = []
    for case in cases:
        if measure is not None:
            r = measure(case, cfg.rounds)
        else:
            fns = {("ours", "fwd"): case.ours_fwd, ("ours", "fb"): case.ours_fb}
            if cfg.torch is not None:
                fns.update({("torch", "fwd"): case.torch_fwd, ("torch", "fb"): case.torch_fb})
            r = measure_blocks(fns, cfg.rounds, reps=1 if cfg.smoke else 3)
        for pas, name in (("fwd", "inference"), ("fb", "fwd+bwd")):
            ref = r.get(("torch", pas))
            rows.append(Row("layers", f"{case.name} {name}", r[("ours", pas)], "PyTorch" if ref is not None else "",
                            ref, _scripts.source_label(script, "layers")))
        cfg.log(f"  layers {case.name}: fwd+bwd {r[('ours', 'fb')] * 1e3:.2f} ms")
    return rows
