"""Optimizer step time: nablagrad's fused steps vs torch.optim, same run, 2 threads.

    PYTHONPATH=build/dev-NAME/site python benchmarks/optim.py [--rounds 7] [--threads 2]

Parameter lists:
  * digits CNN: the parameters of examples/train_digits.py's model (6 tensors, 6.4K values),
    where the per-call overhead dominates;
  * 10M: ten (1000, 1000) matrices and ten (1000,) vectors (10.01M values), where memory
    bandwidth dominates (Adam reads 4 and writes 3 arrays per step).
Contenders: nablagrad (one C++ call per group), torch.optim default on CPU (foreach=None ->
the single-tensor for-loop), torch foreach=True, torch fused=True. Ratios are torch time /
nablagrad time (> 1: nablagrad is faster). Gradients are set once; each call is one step().
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

import nablagrad as ng

sys.path.insert(0, os.path.dirname(__file__))
from _common import race, try_import_torch  # noqa: E402

DIGITS_CNN = [(16, 3, 3, 1), (16,), (32, 3, 3, 16), (32,), (10, 128), (10,)]
TEN_M = [(1000, 1000)] * 10 + [(1000,)] * 10


def _ng_setup(shapes, make_opt):
    rng = np.random.default_rng(0)
    params = []
    for s in shapes:
        p = ng.tensor(rng.standard_normal(s).astype(np.float32), requires_grad=True)
        p.grad = ng.tensor(rng.standard_normal(s).astype(np.float32) * 1e-3)
        params.append(p)
    opt = make_opt(params)
    return opt.step


def _torch_setup(torch, shapes, make_opt):
    rng = np.random.default_rng(0)
    params = []
    for s in shapes:
        p = torch.tensor(rng.standard_normal(s).astype(np.float32), requires_grad=True)
        p.grad = torch.tensor(rng.standard_normal(s).astype(np.float32) * 1e-3)
        params.append(p)
    opt = make_opt(params)
    return opt.step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch = try_import_torch()
    ng.set_num_threads(args.threads)
    if torch is not None:
        torch.set_num_threads(args.threads)
    cases = [
        ("Adam", lambda ps: ng.optim.Adam(ps, lr=1e-3),
         lambda ps, **kw: torch.optim.Adam(ps, lr=1e-3, **kw)),
        ("SGD momentum", lambda ps: ng.optim.SGD(ps, lr=1e-3, momentum=0.9),
         lambda ps, **kw: torch.optim.SGD(ps, lr=1e-3, momentum=0.9, **kw)),
    ]
    print(f"threads={args.threads}  torch={'absent' if torch is None else torch.__version__}")
    header = f"{'optimizer':<13} {'params':<11} {'ours':>9} {'torch':>9} {'foreach':>9} {'fused':>9}  " \
             f"{'ratio':>6} {'r_foreach':>9} {'r_fused':>8}"
    print(header + "   (times in ms per step)")
    for opt_name, ng_opt, torch_opt in cases:
        for label, shapes in (("digits CNN", DIGITS_CNN), ("10M", TEN_M)):
            contenders = {"ours": _ng_setup(shapes, ng_opt)}
            if torch is not None:
                contenders["torch"] = _torch_setup(torch, shapes, torch_opt)
                contenders["foreach"] = _torch_setup(torch, shapes, lambda ps: torch_opt(ps, foreach=True))
                if opt_name == "Adam" or hasattr(torch.optim.SGD, "_step_supports_amp_scaling"):
                    try:
                        contenders["fused"] = _torch_setup(torch, shapes, lambda ps: torch_opt(ps, fused=True))
                    except (RuntimeError, TypeError, ValueError):
                        pass
            min_time = 0.02 if label == "digits CNN" else 0.2
            t = race(contenders, rounds=args.rounds, min_time=min_time)
            ours = t["ours"]

            def cell(k):
                return f"{t[k] * 1e3:9.3f}" if k in t else f"{'-':>9}"

            def ratio(k, width):
                return f"{t[k] / ours:{width}.2f}" if k in t else f"{'-':>{width}}"

            print(f"{opt_name:<13} {label:<11} {cell('ours')} {cell('torch')} {cell('foreach')} {cell('fused')}  "
                  f"{ratio('torch', 6)} {ratio('foreach', 9)} {ratio('fused', 8)}")


if __name__ == "__main__":
    main()
