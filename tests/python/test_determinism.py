"""Bitwise determinism: every op and layer gives the same bits, forward and backward, with 1, 2,
3 and 4 threads; a seeded training run of each demo model is bitwise reproducible (and the
same for any thread count).

Sizes are chosen so that each kernel splits its work across the threads (elementwise ops cut
at 32K elements, row-wise ops at 16K elements per chunk): a result that depended on the
chunking would differ between the thread counts here.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Sequence, Tuple

import numpy as np
import pytest

import nablagrad as ng
import nablagrad.functional as F
from nablagrad import nn

THREADS = (1, 2, 3, 4)
BIG = (256, 520)  # 133,120 elements: 4+ elementwise chunks, 256 rows for row-wise kernels


@pytest.fixture(autouse=True)
def _restore_threads():  # type: ignore[no-untyped-def]
    n = ng.get_num_threads()
    yield
    ng.set_num_threads(n)


def _arrays(shapes: Sequence[Tuple[int, ...]], positive: bool, seed: int = 0) -> List[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for s in shapes:
        a = rng.standard_normal(s).astype(np.float32)
        out.append(np.abs(a) + 0.5 if positive else a)
    return out


def _bits(t: Any) -> bytes:
    return np.ascontiguousarray(np.asarray(t)).tobytes()


def _run_op(fn: Callable[..., ng.Tensor], arrays: List[np.ndarray], seed_before: bool) -> List[bytes]:
    xs = [ng.tensor(a, requires_grad=True) for a in arrays]
    if seed_before:
        ng.manual_seed(7)
    out = fn(*xs)
    g = np.random.default_rng(99).standard_normal(out.shape).astype(np.float32)
    out.backward(ng.tensor(g))
    return [_bits(out.detach())] + [_bits(x.grad) if x.grad is not None else b"" for x in xs]


def _labels(n: int, k: int) -> ng.Tensor:
    return ng.tensor(np.random.default_rng(5).integers(0, k, n))


# name: (fn, input shapes, positive inputs)
OPS: Dict[str, Tuple[Callable[..., ng.Tensor], List[Tuple[int, ...]], bool]] = {
    "add": (lambda a, b: a + b, [BIG, BIG[1:]], False),
    "sub": (lambda a, b: a - b, [BIG, BIG], False),
    "mul": (lambda a, b: a * b, [BIG, (BIG[0], 1)], False),
    "div": (lambda a, b: a / b, [BIG, BIG], True),
    "pow": (lambda a: a ** 1.7, [BIG], True),
    "neg": (lambda a: -a, [BIG], False),
    "exp": (lambda a: a.exp(), [BIG], False),
    "log": (lambda a: a.log(), [BIG], True),
    "sqrt": (lambda a: a.sqrt(), [BIG], True),
    "abs": (lambda a: a.abs(), [BIG], False),
    "clip": (lambda a: a.clip(-0.5, 0.7), [BIG], False),
    "where": (lambda a, b: ng.where(a > 0, a, b), [BIG, BIG], False),
    "relu": (F.relu, [BIG], False),
    "leaky_relu": (lambda a: F.leaky_relu(a, 0.1), [BIG], False),
    "sigmoid": (F.sigmoid, [BIG], False),
    "tanh": (F.tanh, [BIG], False),
    "gelu": (F.gelu, [BIG], False),
    "gelu_tanh": (lambda a: F.gelu(a, approximate="tanh"), [BIG], False),
    "softmax": (lambda a: F.softmax(a, axis=-1), [BIG], False),
    "softmax_axis0": (lambda a: F.softmax(a, axis=0), [BIG], False),
    "log_softmax": (F.log_softmax, [BIG], False),
    "sum": (lambda a: a.sum(), [BIG], False),
    "sum_axis0": (lambda a: a.sum(axis=0), [BIG], False),
    "mean_axis1": (lambda a: a.mean(axis=1, keepdims=True), [BIG], False),
    "mean": (lambda a: a.mean(), [BIG], False),
    "max_axis1": (lambda a: a.max(axis=1), [BIG], False),
    "min_axis0": (lambda a: a.min(axis=0), [BIG], False),
    "matmul": (lambda a, b: a @ b, [(256, 192), (192, 160)], False),
    "matmul_batched": (lambda a, b: a @ b, [(6, 64, 48), (6, 48, 40)], False),
    "linear": (F.linear, [(256, 96), (80, 96), (80,)], False),
    "conv2d": (lambda x, w, b: F.conv2d(x, w, b, padding=1), [(8, 14, 14, 6), (16, 3, 3, 6), (16,)], False),
    "conv2d_stride2": (lambda x, w: F.conv2d(x, w, stride=2, padding=1), [(8, 28, 28, 3), (8, 3, 3, 3)], False),
    "conv2d_5x5": (lambda x, w: F.conv2d(x, w), [(4, 16, 16, 8), (8, 5, 5, 8)], False),
    "max_pool2d": (lambda x: F.max_pool2d(x, 2), [(8, 32, 32, 16)], False),
    "max_pool2d_3s2": (lambda x: F.max_pool2d(x, 3, 2, 1), [(8, 31, 31, 8)], False),
    "avg_pool2d": (lambda x: F.avg_pool2d(x, 3, 2, 1), [(8, 31, 31, 8)], False),
    "dropout": (lambda a: F.dropout(a, 0.3), [BIG], False),
    "layer_norm": (lambda x, w, b: F.layer_norm(x, 520, w, b), [BIG, BIG[1:], BIG[1:]], False),
    "sdpa": (lambda q, k, v: F.scaled_dot_product_attention(q, k, v), [(4, 4, 32, 16)] * 3, False),
    "sdpa_causal": (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
                    [(4, 4, 32, 16)] * 3, False),
    "mse_loss": (F.mse_loss, [BIG, BIG], False),
    "cross_entropy": (lambda z: F.cross_entropy(z, _labels(2048, 40)), [(2048, 40)], False),
    "cross_entropy_none": (lambda z: F.cross_entropy(z, _labels(2048, 40), reduction="none"), [(2048, 40)], False),
    "nll_loss": (lambda z: F.nll_loss(F.log_softmax(z), _labels(2048, 40)), [(2048, 40)], False),
    "bce_with_logits": (F.binary_cross_entropy_with_logits, [BIG, BIG], False),
    "reshape_transpose": (lambda a: (a.reshape(520, 256).transpose(0, 1) * 2.0), [BIG], False),
    "permute": (lambda a: a.permute(2, 0, 1) * 1.5, [(64, 40, 52)], False),
    "index": (lambda a: a[::2, 3:-5] * 2.0, [BIG], False),
    "index_array": (lambda a: a[ng.tensor(np.arange(255, -1, -3))] * 2.0, [BIG], False),
    "concatenate": (lambda a, b: ng.concatenate([a, b], axis=1) * 2.0, [BIG, BIG], False),
    "stack": (lambda a, b: ng.stack([a, b], axis=0) * 2.0, [BIG, BIG], False),
}


@pytest.mark.parametrize("name", sorted(OPS))
def test_op_bitwise_identical_across_thread_counts(name: str) -> None:
    fn, shapes, positive = OPS[name]
    arrays = _arrays(shapes, positive)
    results = {}
    for n in THREADS:
        ng.set_num_threads(n)
        results[n] = _run_op(fn, arrays, seed_before=True)
    for n in THREADS[1:]:
        for i, (a, b) in enumerate(zip(results[1], results[n])):
            assert a == b, f"{name}: {'output' if i == 0 else f'grad of input {i - 1}'} differs with {n} threads"


# name: (layer factory, input shape, call) -- call(layer, x) -> tensor
LAYERS: Dict[str, Tuple[Callable[[], nn.Module], Tuple[int, ...], Callable[[Any, ng.Tensor], ng.Tensor]]] = {
    "Linear": (lambda: nn.Linear(96, 80), (256, 96), lambda m, x: m(x)),
    "Linear_gelu": (lambda: nn.Linear(96, 80, activation="gelu"), (256, 96), lambda m, x: m(x)),
    "Conv2d": (lambda: nn.Conv2d(6, 16, 3, padding=1, activation="relu"), (8, 14, 14, 6), lambda m, x: m(x)),
    "Conv2d_same": (lambda: nn.Conv2d(4, 8, 4, padding="same"), (4, 15, 15, 4), lambda m, x: m(x)),
    "MaxPool2d": (lambda: nn.MaxPool2d(2), (8, 32, 32, 16), lambda m, x: m(x)),
    "AvgPool2d": (lambda: nn.AvgPool2d(2), (8, 32, 32, 16), lambda m, x: m(x)),
    "Flatten": (lambda: nn.Flatten(), (8, 32, 32, 16), lambda m, x: m(x) * 2.0),
    "Dropout": (lambda: nn.Dropout(0.4), BIG, lambda m, x: m(x)),
    "LayerNorm": (lambda: nn.LayerNorm(520), BIG, lambda m, x: m(x)),
    "BatchNorm2d": (lambda: nn.BatchNorm2d(16), (8, 32, 32, 16), lambda m, x: m(x)),
    "ReLU": (lambda: nn.ReLU(), BIG, lambda m, x: m(x)),
    "Sigmoid": (lambda: nn.Sigmoid(), BIG, lambda m, x: m(x)),
    "Tanh": (lambda: nn.Tanh(), BIG, lambda m, x: m(x)),
    "GELU": (lambda: nn.GELU(), BIG, lambda m, x: m(x)),
    "Softmax": (lambda: nn.Softmax(), BIG, lambda m, x: m(x)),
    "LeakyReLU": (lambda: nn.LeakyReLU(0.2), BIG, lambda m, x: m(x)),
    "Embedding": (lambda: nn.Embedding(300, 64), (512,),
                  lambda m, x: m(ng.tensor(np.random.default_rng(3).integers(0, 300, 512))) * x.reshape(512, 1)),
    "MultiheadAttention": (lambda: nn.MultiheadAttention(64, 4), (8, 24, 64),
                           lambda m, x: m(x, x, x, need_weights=False)[0]),
    "MultiheadAttention_weights": (lambda: nn.MultiheadAttention(64, 4), (8, 24, 64),
                                   lambda m, x: m(x, x, x, is_causal=True)[1]),
    "RNN": (lambda: nn.RNN(24, 64, num_layers=2), (32, 12, 24), lambda m, x: m(x)[0]),
    "LSTM": (lambda: nn.LSTM(24, 64, num_layers=2), (32, 12, 24), lambda m, x: m(x)[0]),
    "GRU": (lambda: nn.GRU(24, 64), (32, 12, 24), lambda m, x: m(x)[0]),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_bitwise_identical_across_thread_counts(name: str) -> None:
    factory, shape, call = LAYERS[name]
    ng.manual_seed(0)
    layer = factory()
    layer.train()
    x_np = _arrays([shape], False)[0]
    start = [np.asarray(b).copy() for b in layer.buffers()]
    results = {}
    for n in THREADS:
        ng.set_num_threads(n)
        layer.zero_grad()
        with ng.no_grad():  # BatchNorm's running statistics: the same start each time
            for b, s in zip(layer.buffers(), start):
                b.copy_(s)
        x = ng.tensor(x_np, requires_grad=True)
        ng.manual_seed(7)
        out = call(layer, x)
        g = np.random.default_rng(99).standard_normal(out.shape).astype(np.float32)
        out.backward(ng.tensor(g))
        results[n] = [_bits(out.detach()), _bits(x.grad)] + [
            _bits(p.grad) for p in layer.parameters() if p.grad is not None] + [
            _bits(b) for b in layer.buffers()]
    for n in THREADS[1:]:
        assert len(results[n]) == len(results[1])
        for i, (a, b) in enumerate(zip(results[1], results[n])):
            assert a == b, f"{name}: result {i} (0 output, 1 input grad, then params, buffers) differs with {n} threads"


def _train_demo(model_name: str, threads: int, steps: int = 4) -> List[bytes]:
    from nablagrad.demo.__main__ import build_model, split_digits

    ng.set_num_threads(threads)
    x_train, y_train, _, _ = split_digits(0)
    ng.manual_seed(0)
    model = build_model(model_name)
    opt = ng.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    loader = ng.data.DataLoader(ng.data.TensorDataset(x_train, y_train), batch_size=128, shuffle=True, seed=1)
    out: List[bytes] = []
    ng.manual_seed(1)  # dropout draws
    for step, (xb, yb) in enumerate(loader):
        if step == steps:
            break
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        out.append(_bits(loss.detach()))
    out += [_bits(p.detach()) for p in model.parameters()]
    return out


@pytest.mark.parametrize("model_name", ["cnn", "lstm", "transformer"])
def test_seeded_demo_training_is_bitwise_reproducible(model_name: str) -> None:
    first = _train_demo(model_name, threads=1)
    again = _train_demo(model_name, threads=1)
    assert first == again, f"{model_name}: two seeded runs differ"
    other = _train_demo(model_name, threads=3)
    assert first == other, f"{model_name}: a seeded run with 3 threads differs from 1 thread"
