"""Memory stays flat over long training: 10,000 steps each of a tiny CNN, an LSTM and an
attention model.

Each step builds a graph (forward), runs backward and an optimizer step. Graphs must be
freed by reference counting alone, as soon as the step's tensors go out of scope: the loop
runs with Python's cycle collector disabled, so a reference cycle between Python wrappers
and C++ nodes or layers would leak every step's graph. The resident set size (RSS, from
/proc/self/statm) is read after a warm-up of WARMUP steps and after the last step; its
growth must stay below RSS_BOUND_MIB. Then a cycle collection must find nothing the loop
left behind (gc.collect() == 0).

The models are tiny so that the per-step cost is the engine's overhead (graph nodes,
wrappers, small allocations), which is what a leak would accumulate: about 0.5-1.5 ms a
step on a quiet core, so 5-15 s per model.
"""

from __future__ import annotations

import gc
import os
import time
from typing import Callable, Tuple

import numpy as np
import pytest

import nablagrad as ng
import nablagrad.functional as F
from nablagrad import nn

STEPS = 10_000
WARMUP = 500
RSS_BOUND_MIB = 8.0  # growth allowed between step WARMUP and step STEPS


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1, activation="relu")
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(4 * 4 * 4, 10)

    def forward(self, x: ng.Tensor) -> ng.Tensor:
        return self.fc(self.pool(self.conv(x)).flatten(1))


class _TinyLSTM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(8, 16)
        self.head = nn.Linear(16, 10)

    def forward(self, x: ng.Tensor) -> ng.Tensor:
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


class _TinyAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(16)
        self.attn = nn.MultiheadAttention(16, 2)
        self.head = nn.Linear(16, 10)

    def forward(self, x: ng.Tensor) -> ng.Tensor:
        h = self.norm(x)
        a, _ = self.attn(h, h, h, need_weights=False)
        return self.head((x + a).mean(axis=1))


MODELS: dict = {
    "cnn": (_TinyCNN, (8, 8, 8, 1)),
    "lstm": (_TinyLSTM, (8, 6, 8)),
    "attention": (_TinyAttention, (8, 6, 16)),
}


def _train(model: nn.Module, opt: ng.optim.Optimizer, xs: list, ys: list, steps: int) -> float:
    loss_value = 0.0
    for step in range(steps):
        logits = model(xs[step % len(xs)])
        loss = F.cross_entropy(logits, ys[step % len(ys)])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 1000 == 0:
            loss_value = float(loss.item())
    return loss_value


def _collect_everything() -> None:
    """Collects until nothing is left: freeing what earlier tests left (the demo test's matplotlib
    figure, say) runs weakref callbacks that free more cycles, which one pass leaves behind."""
    while gc.collect():
        pass


@pytest.mark.parametrize("name", sorted(MODELS))
def test_rss_flat_over_10000_training_steps(name: str) -> None:
    factory, shape = MODELS[name]
    ng.manual_seed(0)
    model: nn.Module = factory()
    opt = ng.optim.Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    xs = [ng.tensor(rng.standard_normal(shape).astype(np.float32)) for _ in range(4)]
    ys = [ng.tensor(rng.integers(0, 10, shape[0])) for _ in range(4)]
    _collect_everything()
    was_enabled = gc.isenabled()
    gc.disable()  # graphs must be freed by reference counting alone
    try:
        t0 = time.perf_counter()
        _train(model, opt, xs, ys, WARMUP)
        before = _rss_bytes()
        _train(model, opt, xs, ys, STEPS - WARMUP)
        after = _rss_bytes()
        seconds = time.perf_counter() - t0
        garbage = gc.collect()  # objects only the cycle collector could free
    finally:
        if was_enabled:
            gc.enable()
    growth = (after - before) / 2**20
    print(f"{name}: {STEPS} steps in {seconds:.1f} s; RSS {before / 2**20:.1f} MiB after {WARMUP} steps, "
          f"{after / 2**20:.1f} MiB after {STEPS} (growth {growth:+.2f} MiB, bound {RSS_BOUND_MIB} MiB); "
          f"cycle collector found {garbage} objects")
    assert growth < RSS_BOUND_MIB, f"{name}: RSS grew {growth:.2f} MiB over {STEPS - WARMUP} steps"
    assert garbage == 0, f"{name}: {garbage} objects were only freeable by the cycle collector (reference cycles)"


def _graph_probe() -> Tuple[Callable[[], object], ...]:
    """Weak references to a step's graph: the output's grad_fn-bearing tensors and the model."""
    import weakref

    ng.manual_seed(0)
    model = _TinyCNN()
    x = ng.tensor(np.ones((2, 8, 8, 1), np.float32))
    out = model(x)
    loss = out.sum()
    loss.backward()
    return weakref.ref(model), weakref.ref(out), weakref.ref(loss), weakref.ref(model.conv)


def test_graph_and_model_die_without_the_cycle_collector() -> None:
    _collect_everything()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        refs = _graph_probe()
        assert all(r() is None for r in refs), [r() is None for r in refs]
    finally:
        if was_enabled:
            gc.enable()
