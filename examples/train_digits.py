"""Train a small CNN on real handwritten digits and report its test accuracy.

    python examples/train_digits.py [--epochs 12] [--threads 2]

Data: the UCI 8x8 digits shipped in nablagrad.datasets (1797 images, NHWC). The model is
an nn.Sequential of built-in layers: conv(3x3, 1->16) - relu - maxpool(2) - conv(3x3,
16->32) - relu - maxpool(2) - flatten - linear(128 -> 10), trained with Adam on
cross-entropy. (benchmarks/nn_digits.py times an epoch of it against PyTorch.)
"""

from __future__ import annotations

import argparse
import time
from typing import List

import numpy as np

import nablagrad as ng
import nablagrad.functional as F
from nablagrad import nn
from nablagrad.datasets import load_digits


def build_model() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (N, 4, 4, 16)
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (N, 2, 2, 32)
        nn.Flatten(), nn.Linear(128, 10))


class Adam:
    """Adam with PyTorch's update rule (bias-corrected moments)."""

    def __init__(self, params: List[ng.Tensor], lr: float = 1e-2, betas=(0.9, 0.999), eps: float = 1e-8):
        self.params, self.lr, self.betas, self.eps, self.t = params, lr, betas, eps, 0
        self.m = [ng.zeros_like(q) for q in params]
        self.v = [ng.zeros_like(q) for q in params]

    def step(self) -> None:
        self.t += 1
        b1, b2 = self.betas
        with ng.no_grad():
            for q, m, v in zip(self.params, self.m, self.v):
                g = q.grad
                m.copy_(m * b1 + g * (1 - b1))
                v.copy_(v * b2 + g * g * (1 - b2))
                mhat = m / (1 - b1**self.t)
                vhat = v / (1 - b2**self.t)
                q.copy_(q - self.lr * mhat / (vhat.sqrt() + self.eps))

    def zero_grad(self) -> None:
        for q in self.params:
            q.grad = None


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    with ng.no_grad():
        logits = np.asarray(model(ng.from_numpy(x)))
    model.train()
    return float(np.mean(logits.argmax(axis=1) == y))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    ng.set_num_threads(args.threads)
    ng.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    images, labels = load_digits()
    order = rng.permutation(len(labels))
    images, labels = images[order], labels[order]
    n_test = 360
    x_train, y_train = images[n_test:], labels[n_test:]
    x_test, y_test = images[:n_test], labels[:n_test]
    print(f"digits: {len(y_train)} train / {len(y_test)} test images of shape {x_train.shape[1:]} (NHWC)")

    model = build_model()
    print(model)
    opt = Adam(list(model.parameters()), lr=args.lr)
    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        perm = rng.permutation(len(y_train))
        total, batches = 0.0, 0
        for i in range(0, len(perm), args.batch_size):
            idx = perm[i:i + args.batch_size]
            xb, yb = ng.from_numpy(np.ascontiguousarray(x_train[idx])), ng.from_numpy(y_train[idx])
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
            batches += 1
        print(f"epoch {epoch:2d}  loss {total / batches:.4f}  train acc {accuracy(model, x_train, y_train):.4f}"
              f"  test acc {accuracy(model, x_test, y_test):.4f}")
    elapsed = time.perf_counter() - start
    acc = accuracy(model, x_test, y_test)
    print(f"test accuracy: {acc:.4f} ({int(round(acc * len(y_test)))}/{len(y_test)}) after {args.epochs} epochs "
          f"in {elapsed:.1f} s")


if __name__ == "__main__":
    main()
