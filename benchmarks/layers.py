"""Layers (recurrent, and whatever else is appended to CASES) in nablagrad vs PyTorch, from Python.

    PYTHONPATH=build/dev-NAME/site python benchmarks/layers.py [--rounds 7] [--threads 2]
                                                               [--cases lstm] [--markdown]

Each case is timed in the same process for both libraries, alternating block by block (see
measure()), at `--threads` threads for both, and the median over rounds is reported:
  inference  forward under no_grad,
  fwd+bwd    forward, then backward of a fixed random gradient of the output (every
             parameter's and the input's gradient).
ratio = torch_time / nablagrad_time (> 1: we are faster). Without torch only nablagrad's times
are printed. The machine may be shared: check the load average printed on top.

To add cases (e.g. attention), append a LayerCase subclass instance to CASES: it builds both
models in __init__ and defines ours_fwd / ours_fb / torch_fwd / torch_fb.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Callable, Dict, List, Tuple

import numpy as np

import nablagrad as ng

sys.path.insert(0, os.path.dirname(__file__))
from _common import cpu_model, warm_up  # noqa: E402

try:
    import torch
except ImportError:  # pragma: no cover - exercised when torch is absent
    torch = None


class LayerCase:
    """One benchmark case: a name, and the four timed callables."""

    name = ""

    def ours_fwd(self) -> None:
        raise NotImplementedError

    def ours_fb(self) -> None:
        raise NotImplementedError

    def torch_fwd(self) -> None:
        raise NotImplementedError

    def torch_fb(self) -> None:
        raise NotImplementedError


class RecurrentCase(LayerCase):
    """nn.LSTM / nn.GRU / nn.RNN against torch.nn.* (batch_first=True) with the same weights."""

    def __init__(self, kind: str, N: int, T: int, I: int, H: int, L: int = 1, seed: int = 0):
        self.kind = kind
        self.name = f"{kind.upper()} N={N} T={T} I={I} H={H} L={L}"
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((N, T, I)).astype(np.float32)
        dy = rng.standard_normal((N, T, H)).astype(np.float32)
        ng.manual_seed(seed)
        cls = {"lstm": ng.nn.LSTM, "gru": ng.nn.GRU, "rnn": ng.nn.RNN}[kind]
        self.model = cls(I, H, num_layers=L)
        self.params = [p for _, p in self.model.named_parameters()]
        self.nx = ng.tensor(x, requires_grad=True)
        self.ndy = ng.tensor(dy)
        if torch is not None:
            tcls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[kind]
            self.tmodel = tcls(I, H, num_layers=L, batch_first=True)
            with torch.no_grad():
                for p, (_, q) in zip(self.params, self.tmodel.named_parameters()):
                    q.copy_(torch.from_numpy(np.array(p.detach().numpy())))
            self.tparams = list(self.tmodel.parameters())
            self.tx = torch.from_numpy(x).requires_grad_(True)
            self.tdy = torch.from_numpy(dy)

    def ours_fwd(self) -> None:
        with ng.no_grad():
            self.model(self.nx)

    def ours_fb(self) -> None:
        self.nx.grad = None
        for p in self.params:
            p.grad = None
        out = self.model(self.nx)[0]
        out.backward(self.ndy)

    def torch_fwd(self) -> None:
        with torch.no_grad():
            self.tmodel(self.tx)

    def torch_fb(self) -> None:
        self.tx.grad = None
        for p in self.tparams:
            p.grad = None
        out = self.tmodel(self.tx)[0]
        out.backward(self.tdy)


# The targets (>= 1.0x PyTorch at 2 threads, fwd+bwd and inference).
CASES: List[Callable[[], LayerCase]] = [
    lambda: RecurrentCase("lstm", 32, 50, 128, 128, 1),
    lambda: RecurrentCase("lstm", 32, 50, 128, 128, 2),
    lambda: RecurrentCase("gru", 32, 50, 128, 128, 1),
    lambda: RecurrentCase("gru", 32, 50, 128, 128, 2),
    lambda: RecurrentCase("lstm", 8, 200, 64, 256, 1),
    lambda: RecurrentCase("rnn", 32, 50, 128, 128, 1),
]


# ------------------------------------------------------------------ attention (issue 8)
def _copy_mha_to_torch(m, t) -> None:
    """torch.nn.MultiheadAttention's packed in_proj = our q/k/v_proj stacked."""
    with torch.no_grad():
        t.in_proj_weight.copy_(torch.from_numpy(np.concatenate(
            [np.asarray(m.q_proj.weight), np.asarray(m.k_proj.weight), np.asarray(m.v_proj.weight)])))
        t.in_proj_bias.copy_(torch.from_numpy(np.concatenate(
            [np.asarray(m.q_proj.bias), np.asarray(m.k_proj.bias), np.asarray(m.v_proj.bias)])))
        t.out_proj.weight.copy_(torch.from_numpy(np.array(m.out_proj.weight)))
        t.out_proj.bias.copy_(torch.from_numpy(np.array(m.out_proj.bias)))


class AttentionCase(LayerCase):
    """nn.MultiheadAttention self-attention against torch.nn.MultiheadAttention(batch_first=True)
    with the same weights. Inference runs in eval mode under no_grad with need_weights=False
    (PyTorch's fused fast path); fwd+bwd in train mode (dropout 0) with `need_weights`."""

    def __init__(self, N: int, L: int, E: int, H: int, causal: bool = False, need_weights: bool = False,
                 seed: int = 0):
        self.name = f"MHA N={N} L={L} E={E} h={H}" + (" causal" if causal else "") + (" +w" if need_weights else "")
        self.causal, self.need_weights = causal, need_weights
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((N, L, E)).astype(np.float32)
        dy = rng.standard_normal((N, L, E)).astype(np.float32)
        ng.manual_seed(seed)
        self.model = ng.nn.MultiheadAttention(E, H)
        self.params = [p for _, p in self.model.named_parameters()]
        self.nx, self.ndy = ng.tensor(x, requires_grad=True), ng.tensor(dy)
        if torch is not None:
            self.tmodel = torch.nn.MultiheadAttention(E, H, batch_first=True)
            _copy_mha_to_torch(self.model, self.tmodel)
            self.tparams = list(self.tmodel.parameters())
            self.tx, self.tdy = torch.from_numpy(x).requires_grad_(True), torch.from_numpy(dy)
            self.tmask = torch.ones(L, L, dtype=torch.bool).triu(1) if causal else None

    def _ours(self, need_weights: bool):
        return self.model(self.nx, self.nx, self.nx, need_weights=need_weights, is_causal=self.causal)[0]

    def _torch(self, need_weights: bool):
        return self.tmodel(self.tx, self.tx, self.tx, attn_mask=self.tmask, need_weights=need_weights,
                           is_causal=self.causal)[0]

    def ours_fwd(self) -> None:
        self.model.eval()
        with ng.no_grad():
            self._ours(False)
        self.model.train()

    def ours_fb(self) -> None:
        self.nx.grad = None
        for p in self.params:
            p.grad = None
        self._ours(self.need_weights).backward(self.ndy)

    def torch_fwd(self) -> None:
        self.tmodel.eval()
        with torch.no_grad():
            self._torch(False)
        self.tmodel.train()

    def torch_fb(self) -> None:
        self.tx.grad = None
        for p in self.tparams:
            p.grad = None
        self._torch(self.need_weights).backward(self.tdy)


class TransformerBlockCase(LayerCase):
    """One pre-LayerNorm encoder block, x + MHA(LN(x)), then x + Linear(GELU(Linear(LN(x)))), MLP 4E
    wide, written with nablagrad.nn and torch.nn alike. fwd+bwd is one training step: forward, MSE
    loss, backward and an SGD step. Inference: eval mode, no_grad."""

    def __init__(self, N: int, L: int, E: int, H: int, seed: int = 0):
        self.name = f"encoder block N={N} L={L} E={E} h={H}"
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((N, L, E)).astype(np.float32)
        y = rng.standard_normal((N, L, E)).astype(np.float32)
        ng.manual_seed(seed)
        nn = ng.nn
        self.m = {"ln1": nn.LayerNorm(E), "attn": nn.MultiheadAttention(E, H), "ln2": nn.LayerNorm(E),
                  "fc1": nn.Linear(E, 4 * E), "act": nn.GELU(), "fc2": nn.Linear(4 * E, E)}
        self.params = [p for mod in self.m.values() for _, p in mod.named_parameters()]
        self.opt = ng.optim.SGD(self.params, lr=1e-3)
        self.nx, self.ny = ng.tensor(x), ng.tensor(y)
        if torch is not None:
            tnn = torch.nn
            self.t = {"ln1": tnn.LayerNorm(E), "attn": tnn.MultiheadAttention(E, H, batch_first=True),
                      "ln2": tnn.LayerNorm(E), "fc1": tnn.Linear(E, 4 * E), "act": tnn.GELU(),
                      "fc2": tnn.Linear(4 * E, E)}
            _copy_mha_to_torch(self.m["attn"], self.t["attn"])
            with torch.no_grad():
                for k in ("ln1", "ln2", "fc1", "fc2"):
                    for (_, p), q in zip(self.m[k].named_parameters(), self.t[k].parameters()):
                        q.copy_(torch.from_numpy(np.array(p)))
            self.tparams = [p for mod in self.t.values() for p in mod.parameters()]
            self.topt = torch.optim.SGD(self.tparams, lr=1e-3)
            self.tx, self.ty = torch.from_numpy(x), torch.from_numpy(y)

    @staticmethod
    def _block(m, x, need_weights_kw):
        h = m["ln1"](x)
        x = x + m["attn"](h, h, h, need_weights=False)[0]
        return x + m["fc2"](m["act"](m["fc1"](m["ln2"](x))))

    def _mode(self, train: bool) -> None:
        for mod in list(self.m.values()) + (list(self.t.values()) if torch is not None else []):
            mod.train(train)

    def ours_fwd(self) -> None:
        self._mode(False)
        with ng.no_grad():
            self._block(self.m, self.nx, False)
        self._mode(True)

    def ours_fb(self) -> None:
        self.opt.zero_grad()
        loss = ng.functional.mse_loss(self._block(self.m, self.nx, False), self.ny)
        loss.backward()
        self.opt.step()

    def torch_fwd(self) -> None:
        self._mode(False)
        with torch.no_grad():
            self._block(self.t, self.tx, False)
        self._mode(True)

    def torch_fb(self) -> None:
        self.topt.zero_grad()
        loss = torch.nn.functional.mse_loss(self._block(self.t, self.tx, False), self.ty)
        loss.backward()
        self.topt.step()


# The attention targets (>= 1.0x PyTorch at 2 threads, fwd+bwd and inference).
CASES += [
    lambda: AttentionCase(16, 128, 256, 8),
    lambda: AttentionCase(16, 128, 256, 8, need_weights=True),
    lambda: AttentionCase(4, 512, 128, 4, causal=True),
    lambda: TransformerBlockCase(16, 64, 128, 4),
]


def timed(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(case: LayerCase, rounds: int, reps: int = 3, settle: float = 0.05) -> Dict[Tuple[str, str], float]:
    """Median seconds {(lib, pass): t}. Each round runs, per pass, a block of torch calls then a
    block of ours; each block starts with a short pause (PyTorch's OpenMP workers spin for a
    while after a region and would steal the second core) and untimed calls for 100 ms
    (warm_up: the CPU's first 25-80 ms after an idle pause run slower)."""
    fns = {("ours", "fwd"): case.ours_fwd, ("ours", "fb"): case.ours_fb}
    if torch is not None:
        fns.update({("torch", "fwd"): case.torch_fwd, ("torch", "fb"): case.torch_fb})
    for fn in fns.values():
        fn()
        fn()
    times: Dict[Tuple[str, str], List[float]] = {key: [] for key in fns}
    for _ in range(rounds):
        for pas in ("fwd", "fb"):
            for lib in ("torch", "ours"):
                if (lib, pas) in fns:
                    fn = fns[(lib, pas)]
                    time.sleep(settle)
                    warm_up(fn)
                    times[(lib, pas)].extend(timed(fn) for _ in range(reps))
    return {key: statistics.median(v) for key, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cases", default="", help="only cases whose name contains this (case-insensitive)")
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = ap.parse_args()
    ng.set_num_threads(args.threads)
    if torch is not None:
        torch.set_num_threads(args.threads)
    print(f"# {cpu_model()}; simd {ng._core._simd_level()}; threads {args.threads}; "
          f"load average {os.getloadavg()[0]:.2f}; torch {torch.__version__ if torch is not None else 'absent'}; "
          f"rounds {args.rounds}; medians in ms; ratio = torch / nablagrad")
    if args.markdown:
        print("| case | inference ours | torch | ratio | fwd+bwd ours | torch | ratio |")
        print("|---|---|---|---|---|---|---|")
    else:
        print(f"{'case':<34} {'inf ours':>9} {'torch':>9} {'ratio':>6}   {'f+b ours':>9} {'torch':>9} {'ratio':>6}")
    for make in CASES:
        case = make()
        if args.cases and args.cases.lower() not in case.name.lower():
            continue
        r = measure(case, args.rounds)
        of, ob = r[("ours", "fwd")] * 1e3, r[("ours", "fb")] * 1e3
        if torch is not None:
            tf, tb = r[("torch", "fwd")] * 1e3, r[("torch", "fb")] * 1e3
            cells = (f"{of:.2f}", f"{tf:.2f}", f"{tf / of:.2f}x", f"{ob:.2f}", f"{tb:.2f}", f"{tb / ob:.2f}x")
        else:
            cells = (f"{of:.2f}", "-", "-", f"{ob:.2f}", "-", "-")
        if args.markdown:
            print(f"| {case.name} | " + " | ".join(cells) + " |")
        else:
            print(f"{case.name:<34} {cells[0]:>9} {cells[1]:>9} {cells[2]:>6}   {cells[3]:>9} {cells[4]:>9} {cells[5]:>6}",
                  flush=True)


if __name__ == "__main__":
    main()
