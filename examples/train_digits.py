"""Train a small CNN on real handwritten digits and report its test accuracy.

    python examples/train_digits.py [--epochs 12] [--threads 2]

Data: the UCI 8x8 digits shipped in nablagrad.datasets (1797 images, NHWC). The model is
written with the functional API only: conv(3x3, 1->16) - relu - maxpool(2) - conv(3x3,
16->32) - relu - maxpool(2) - linear(128 -> 10), trained with Adam on cross-entropy.
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Dict, List

import numpy as np

import nablagrad as ng
import nablagrad.functional as F
from nablagrad.datasets import load_digits


def init_params(rng: np.random.Generator) -> Dict[str, ng.Tensor]:
    def kaiming(shape: tuple, fan_in: int) -> ng.Tensor:
        bound = math.sqrt(6.0 / fan_in)
        return ng.tensor(rng.uniform(-bound, bound, size=shape).astype(np.float32), requires_grad=True)

    return {
        "conv1.weight": kaiming((16, 3, 3, 1), 9),
        "conv1.bias": ng.zeros(16, requires_grad=True),
        "conv2.weight": kaiming((32, 3, 3, 16), 9 * 16),
        "conv2.bias": ng.zeros(32, requires_grad=True),
        "fc.weight": kaiming((10, 128), 128),
        "fc.bias": ng.zeros(10, requires_grad=True),
    }


def forward(p: Dict[str, ng.Tensor], x: ng.Tensor) -> ng.Tensor:
    h = F.max_pool2d(F.relu(F.conv2d(x, p["conv1.weight"], p["conv1.bias"], padding=1)), 2)  # (N,4,4,16)
    h = F.max_pool2d(F.relu(F.conv2d(h, p["conv2.weight"], p["conv2.bias"], padding=1)), 2)  # (N,2,2,32)
    return F.linear(h.reshape(h.shape[0], -1), p["fc.weight"], p["fc.bias"])


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


def accuracy(p: Dict[str, ng.Tensor], x: np.ndarray, y: np.ndarray) -> float:
    with ng.no_grad():
        logits = np.asarray(forward(p, ng.from_numpy(x)))
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

    params = init_params(rng)
    opt = Adam(list(params.values()), lr=args.lr)
    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        perm = rng.permutation(len(y_train))
        total, batches = 0.0, 0
        for i in range(0, len(perm), args.batch_size):
            idx = perm[i:i + args.batch_size]
            xb, yb = ng.from_numpy(np.ascontiguousarray(x_train[idx])), ng.from_numpy(y_train[idx])
            loss = F.cross_entropy(forward(params, xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
            batches += 1
        print(f"epoch {epoch:2d}  loss {total / batches:.4f}  train acc {accuracy(params, x_train, y_train):.4f}"
              f"  test acc {accuracy(params, x_test, y_test):.4f}")
    elapsed = time.perf_counter() - start
    acc = accuracy(params, x_test, y_test)
    print(f"test accuracy: {acc:.4f} ({int(round(acc * len(y_test)))}/{len(y_test)}) after {args.epochs} epochs "
          f"in {elapsed:.1f} s")


if __name__ == "__main__":
    main()
