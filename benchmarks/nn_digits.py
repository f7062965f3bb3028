"""One training epoch of the digits CNN: nablagrad ``nn.Sequential`` vs the same model in
PyTorch, and vs nablagrad's functional version of it (the cost of the Module layer).

    python benchmarks/nn_digits.py [--rounds 7] [--threads 2]

Model (examples/train_digits.py): conv(3x3, 1->16, pad 1) - relu - maxpool(2) - conv(3x3,
16->32, pad 1) - relu - maxpool(2) - flatten - linear(128 -> 10), cross-entropy, Adam,
batch 32, on the 1,437 training images of ng.datasets.load_digits() (45 batches). Every
contender starts from the same weights and sees the same batches in the same order. PyTorch
runs in NCHW and in channels_last; the faster of the two is the reference. Contenders
alternate, one epoch each per round, after a pause (PyTorch's OpenMP workers spin for a
while after a parallel region); the figure is the median over rounds. The target: the
nablagrad Module version at least 2x faster than PyTorch.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Callable, Dict, List

import numpy as np

import nablagrad as ng
import nablagrad.functional as F
from nablagrad import nn
from nablagrad.datasets import load_digits

sys.path.insert(0, os.path.dirname(__file__))
from _common import cpu_model, try_import_torch  # noqa: E402


class LocalAdam:
    """Adam with PyTorch's update rule, for trees where ng.optim is not available."""

    def __init__(self, params: List[ng.Tensor], lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8):
        self.params, self.lr, self.betas, self.eps, self.t = list(params), lr, betas, eps, 0
        self.m = [ng.zeros_like(q) for q in self.params]
        self.v = [ng.zeros_like(q) for q in self.params]

    def step(self) -> None:
        self.t += 1
        b1, b2 = self.betas
        with ng.no_grad():
            for q, m, v in zip(self.params, self.m, self.v):
                g = q.grad
                m.copy_(m * b1 + g * (1 - b1))
                v.copy_(v * b2 + g * g * (1 - b2))
                q.copy_(q - self.lr * (m / (1 - b1**self.t)) / ((v / (1 - b2**self.t)).sqrt() + self.eps))

    def zero_grad(self) -> None:
        for q in self.params:
            q.grad = None


def make_adam(params: List[ng.Tensor], lr: float):  # type: ignore[no-untyped-def]
    optim = getattr(ng, "optim", None)
    if optim is not None and hasattr(optim, "Adam"):
        return optim.Adam(params, lr=lr)
    return LocalAdam(params, lr=lr)


def build_module() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(128, 10))


def functional_forward(p: Dict[str, ng.Tensor], x: ng.Tensor) -> ng.Tensor:
    h = F.max_pool2d(F.relu(F.conv2d(x, p["0.weight"], p["0.bias"], padding=1)), 2)
    h = F.max_pool2d(F.relu(F.conv2d(h, p["3.weight"], p["3.bias"], padding=1)), 2)
    return F.linear(h.reshape(h.shape[0], -1), p["7.weight"], p["7.bias"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--settle", type=float, default=0.5, help="pause before each contender's epoch (s)")
    args = ap.parse_args()

    torch = try_import_torch()
    ng.set_num_threads(args.threads)
    ng.manual_seed(0)
    rng = np.random.default_rng(0)
    images, labels = load_digits()
    order = rng.permutation(len(labels))
    x_train, y_train = images[order][360:], labels[order][360:]
    bs = 32
    n_rounds_epochs = args.rounds + 1
    # the batches of every epoch, fixed in advance and shared by all contenders
    perms = [rng.permutation(len(y_train)) for _ in range(n_rounds_epochs)]
    batches = [[p[i:i + bs] for i in range(0, len(p), bs)] for p in perms]

    model = build_module()
    init_state = {k: np.asarray(v).copy() for k, v in model.state_dict().items()}
    contenders: Dict[str, Callable[[int], float]] = {}

    opt_m = make_adam(list(model.parameters()), args.lr)

    def epoch_module(e: int) -> float:
        total = 0.0
        for idx in batches[e]:
            xb = ng.from_numpy(np.ascontiguousarray(x_train[idx]))
            yb = ng.from_numpy(y_train[idx])
            loss = F.cross_entropy(model(xb), yb)
            opt_m.zero_grad()
            loss.backward()
            opt_m.step()
            total += loss.item()
        return total / len(batches[e])

    contenders["nablagrad nn.Sequential"] = epoch_module

    fparams = {k: ng.tensor(v, requires_grad=True) for k, v in init_state.items()}
    opt_f = make_adam(list(fparams.values()), args.lr)

    def epoch_functional(e: int) -> float:
        total = 0.0
        for idx in batches[e]:
            xb = ng.from_numpy(np.ascontiguousarray(x_train[idx]))
            yb = ng.from_numpy(y_train[idx])
            loss = F.cross_entropy(functional_forward(fparams, xb), yb)
            opt_f.zero_grad()
            loss.backward()
            opt_f.step()
            total += loss.item()
        return total / len(batches[e])

    contenders["nablagrad functional"] = epoch_functional

    torch_names: List[str] = []
    if torch is not None:
        torch.set_num_threads(args.threads)
        torch.manual_seed(0)
        x_nchw = np.ascontiguousarray(x_train.transpose(0, 3, 1, 2))
        y_t = y_train

        def torch_model(channels_last: bool):  # type: ignore[no-untyped-def]
            tm = torch.nn.Sequential(
                torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                torch.nn.Flatten(), torch.nn.Linear(128, 10))
            sd = {}
            for k, v in init_state.items():
                if v.ndim == 4:
                    v = v.transpose(0, 3, 1, 2)
                if k == "7.weight":  # ours flattens (H, W, C), PyTorch (C, H, W)
                    v = v.reshape(10, 2, 2, 32).transpose(0, 3, 1, 2).reshape(10, 128)
                sd[k] = torch.tensor(np.ascontiguousarray(v))
            tm.load_state_dict(sd)
            if channels_last:
                tm = tm.to(memory_format=torch.channels_last)
            return tm

        for channels_last in (False, True):
            tm = torch_model(channels_last)
            opt_t = torch.optim.Adam(tm.parameters(), lr=args.lr)

            def epoch_torch(e: int, tm=tm, opt_t=opt_t, cl=channels_last) -> float:
                total = 0.0
                for idx in batches[e]:
                    if cl:  # the NHWC images as a channels_last NCHW view
                        xb = torch.from_numpy(np.ascontiguousarray(x_train[idx])).permute(0, 3, 1, 2)
                    else:
                        xb = torch.from_numpy(x_nchw[idx])
                    yb = torch.from_numpy(y_t[idx])
                    loss = torch.nn.functional.cross_entropy(tm(xb), yb)
                    opt_t.zero_grad()
                    loss.backward()
                    opt_t.step()
                    total += loss.item()
                return total / len(batches[e])

            name = "torch channels_last" if channels_last else "torch NCHW"
            contenders[name] = epoch_torch
            torch_names.append(name)

    samples: Dict[str, List[float]] = {k: [] for k in contenders}
    losses: Dict[str, List[float]] = {k: [] for k in contenders}
    for name, fn in contenders.items():  # warm-up epoch (epoch 0), not timed
        losses[name].append(fn(0))
    for r in range(1, n_rounds_epochs):
        names = list(contenders)
        if r % 2 == 0:
            names.reverse()  # alternate who goes first
        for name in names:
            time.sleep(args.settle)
            t0 = time.perf_counter()
            losses[name].append(contenders[name](r))
            samples[name].append(time.perf_counter() - t0)

    med = {k: statistics.median(v) for k, v in samples.items()}
    simd = ng._core._simd_level() if hasattr(ng._core, "_simd_level") else "?"
    opt_name = type(opt_m).__module__ + "." + type(opt_m).__name__
    print(f"CPU: {cpu_model()} ({os.cpu_count()} logical cores), SIMD level: {simd}, threads: {args.threads}")
    print(f"digits CNN, {len(y_train)} training images, batch {bs}, {len(batches[0])} steps/epoch, "
          f"{args.rounds} rounds (median), nablagrad optimizer {opt_name}")
    if torch is not None:
        print(f"PyTorch {torch.__version__}")
    print(f"{'contender':<26} {'epoch ms':>9} {'min ms':>8} {'loss after':>11}")
    for k in contenders:
        print(f"{k:<26} {med[k] * 1e3:9.1f} {min(samples[k]) * 1e3:8.1f} {losses[k][-1]:11.4f}")
    ours = med["nablagrad nn.Sequential"]
    print(f"Module overhead vs functional: {ours / med['nablagrad functional']:.3f}x the functional epoch time")
    if torch_names:
        best = min(torch_names, key=lambda k: med[k])
        print(f"speed-up of nn.Sequential over PyTorch ({best}): {med[best] / ours:.2f}x "
              f"(functional: {med[best] / med['nablagrad functional']:.2f}x)")


if __name__ == "__main__":
    main()
