"""Typed usage of nablagrad, checked by mypy in test_typing.py (and executed there too).

The ``type: ignore[...]`` lines are deliberate errors: with ``warn_unused_ignores`` mypy fails
if the stubs ever degrade to ``Any`` and stop catching them.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import numpy as np

import nablagrad as ng
import nablagrad.functional as F
from nablagrad import _core


def usage() -> float:
    x: ng.Tensor = ng.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    w = ng.randn(2, 3, dtype=ng.float32)
    shape: Tuple[int, ...] = x.shape
    n: int = x.ndim + x.size + x.numel()
    dt: ng.dtype = x.dtype
    y = (x @ w).relu() * 2.0 + 1 - np.ones((2, 3), np.float32)
    z: ng.Tensor = (y ** 2).mean(axis=1, keepdims=True).sum()
    z.backward()
    g: Optional[ng.Tensor] = x.grad
    x.grad = None
    with ng.no_grad():
        x.copy_(np.zeros((2, 2), np.float32))
    a: np.ndarray = x.numpy()
    b: np.ndarray = np.asarray(x)
    mask: ng.Tensor = x > 0.5
    c = ng.where(mask, x, 0.0).exp().log().sqrt().abs().tanh().sigmoid().clip(0.0, 1.0)
    d = F.gelu(c, approximate="tanh") + F.leaky_relu(c, 0.1) + _core.matmul(c, c)
    e: ng.Tensor = d.max(axis=(0, 1)) - d.min() + d.detach().astype(ng.float64).sum()
    level: str = _core._simd_level()
    ng.manual_seed(0)
    ng.set_num_threads(ng.get_num_threads())
    del shape, n, dt, g, a, b, level
    return float(e.item())


class Net(ng.nn.Module):
    """A user module: typed attributes, typed forward."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = ng.nn.Conv2d(1, 4, 3, padding=1, activation="relu")
        self.pool = ng.nn.MaxPool2d(2)
        self.flat = ng.nn.Flatten()
        self.fc = ng.nn.Linear(4 * 4 * 4, 3)
        self.drop = ng.nn.Dropout(0.1)

    def forward(self, x: ng.Tensor) -> ng.Tensor:
        return self.fc(self.drop(self.flat(self.pool(self.conv(x)))))


def training(path: str) -> float:
    net = Net()
    seq: ng.nn.Sequential = ng.nn.Sequential(ng.nn.Linear(3, 8), ng.nn.ReLU(), ng.nn.LayerNorm(8),
                                             ng.nn.Linear(8, 2))
    emb = ng.nn.Embedding(10, 4)
    lstm = ng.nn.LSTM(4, 6, num_layers=2)
    gru = ng.nn.GRU(4, 6)
    rnn = ng.nn.RNN(4, 6, nonlinearity="relu")
    mha = ng.nn.MultiheadAttention(8, 2)
    bn = ng.nn.BatchNorm2d(4)
    params: List[ng.nn.Parameter] = list(net.parameters())
    opt: ng.optim.Optimizer = ng.optim.Adam(params, lr=1e-3, betas=(0.9, 0.999))
    opt2 = ng.optim.SGD(seq.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    opt3 = ng.optim.AdamW(lstm.parameters(), lr=1e-3, weight_decay=0.01)
    opt4 = ng.optim.RMSprop(gru.parameters(), lr=1e-3)
    sched = ng.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    step_lr = ng.optim.lr_scheduler.StepLR(opt2, step_size=2, gamma=0.5)
    exp_lr = ng.optim.lr_scheduler.ExponentialLR(opt3, gamma=0.9)
    images = np.zeros((8, 8, 8, 1), np.float32)
    labels = np.arange(8, dtype=np.int64) % 3
    loader = ng.data.DataLoader(ng.data.TensorDataset(images, labels), batch_size=4, shuffle=True, seed=0)
    total = 0.0
    for xb, yb in loader:
        opt.zero_grad()
        loss: ng.Tensor = F.cross_entropy(net(xb), yb)
        loss.backward()
        opt.step()
        total += loss.item()
    sched.step()
    step_lr.step()
    exp_lr.step()
    lr: float = sched.get_last_lr()[0]
    tokens = ng.tensor(np.arange(6, dtype=np.int64).reshape(2, 3))
    seq_in: ng.Tensor = emb(tokens)
    out, (h, c) = lstm(seq_in)
    out2, h2 = gru(seq_in)
    out3, h3 = rnn(seq_in)
    q = ng.randn(2, 3, 8)
    attn, weights = mha(q, q, q, need_weights=True)
    y: ng.Tensor = seq(ng.randn(5, 3)) + bn(ng.randn(2, 3, 3, 4)).sum()
    state: Dict[str, ng.Tensor] = net.state_dict()
    ng.save({"model": state, "optim": opt.state_dict(), "epoch": 1}, path)
    loaded: Dict[str, Any] = ng.load(path)
    missing, unexpected = net.load_state_dict(loaded["model"])
    opt.load_state_dict(loaded["optim"])
    net.eval()
    net.train(True)
    opt4.zero_grad()
    del out, h, c, out2, h2, out3, h3, attn, weights, y, missing, unexpected, lr
    return total


def deliberate_errors(t: ng.Tensor) -> None:
    s: str = t.shape  # type: ignore[assignment]
    k: str = t.numel()  # type: ignore[assignment]
    ng.nn.Linear("3", 4)  # type: ignore[arg-type]
    ng.optim.SGD([], lr="fast")  # type: ignore[arg-type]
    u: int = t.sum()  # type: ignore[assignment]
    t.sum(keepdims="yes")  # type: ignore[arg-type]
    del s, k, u


if __name__ == "__main__":
    print(usage())
