"""Smoke tests of the C++ layers' binding, nablagrad._core.nn: each layer constructs, runs
forward with the expected shape, lists its parameters/buffers with their names and shapes,
and shares its tensors with Python (a Tensor.copy_ on a returned parameter is seen by the
next forward). The PyTorch comparisons of the Python nn Modules live in the nn tests."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

import nablagrad as ng
from nablagrad import _core

cnn = _core.nn


def T(shape, dtype=np.float32, seed=0):
    return ng.tensor(np.random.default_rng(seed).standard_normal(shape).astype(dtype))


def shapes(named):
    return [(n, tuple(t.shape)) for n, t in named]


CASES = [
    # (layer factory, input, output shape, [(param name, shape)])
    (lambda: cnn.Linear(4, 3), (2, 4), (2, 3), [("weight", (3, 4)), ("bias", (3,))]),
    (lambda: cnn.Linear(4, 3, bias=False, activation="relu"), (5, 2, 4), (5, 2, 3), [("weight", (3, 4))]),
    (lambda: cnn.Conv2d(3, 8, 3, stride=2, padding=1), (2, 9, 9, 3), (2, 5, 5, 8),
     [("weight", (8, 3, 3, 3)), ("bias", (8,))]),
    (lambda: cnn.Conv2d(3, 4, (3, 2), padding="same", activation="tanh"), (1, 6, 5, 3), (1, 6, 5, 4),
     [("weight", (4, 3, 2, 3)), ("bias", (4,))]),
    (lambda: cnn.MaxPool2d(2), (2, 6, 6, 3), (2, 3, 3, 3), []),
    (lambda: cnn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False), (2, 6, 6, 3), (2, 6, 6, 3), []),
    (lambda: cnn.Flatten(), (2, 3, 4, 5), (2, 60), []),
    (lambda: cnn.Dropout(0.3), (4, 5), (4, 5), []),
    (lambda: cnn.LayerNorm(5), (3, 5), (3, 5), [("weight", (5,)), ("bias", (5,))]),
    (lambda: cnn.LayerNorm([4, 5], elementwise_affine=False), (3, 4, 5), (3, 4, 5), []),
    (lambda: cnn.BatchNorm2d(3), (2, 4, 4, 3), (2, 4, 4, 3), [("weight", (3,)), ("bias", (3,))]),
    (lambda: cnn.ReLU(), (3, 4), (3, 4), []),
    (lambda: cnn.Sigmoid(), (3, 4), (3, 4), []),
    (lambda: cnn.Tanh(), (3, 4), (3, 4), []),
    (lambda: cnn.GELU(approximate="tanh"), (3, 4), (3, 4), []),
    (lambda: cnn.Softmax(dim=0), (3, 4), (3, 4), []),
    (lambda: cnn.LeakyReLU(negative_slope=0.2), (3, 4), (3, 4), []),
    (lambda: cnn.Sequential([cnn.Linear(4, 8), cnn.ReLU(), cnn.Linear(8, 2)]), (3, 4), (3, 2),
     [("0.weight", (8, 4)), ("0.bias", (8,)), ("2.weight", (2, 8)), ("2.bias", (2,))]),
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_layer_forward_shape_and_parameters(case):
    make, in_shape, out_shape, params = CASES[case]
    layer = make()
    assert isinstance(layer, cnn.Layer)
    x = T(in_shape)
    y = layer(x)
    assert isinstance(y, ng.Tensor) and y.shape == out_shape and y.dtype == ng.float32
    assert tuple(layer.forward(x).shape) == out_shape
    assert shapes(layer.named_parameters()) == params
    for _, p in layer.named_parameters():
        assert p.requires_grad and p.is_leaf
    assert isinstance(repr(layer), str) and isinstance(layer.extra_repr(), str)


def test_embedding():
    emb = cnn.Embedding(10, 4)
    idx = ng.tensor(np.array([[1, 2, 3], [9, 9, 0]], dtype=np.int64))
    y = emb(idx)
    assert y.shape == (2, 3, 4)
    np.testing.assert_array_equal(y.numpy()[1, 0], emb.weight.numpy()[9])
    assert shapes(emb.named_parameters()) == [("weight", (10, 4))]
    with pytest.raises(IndexError):
        emb(ng.tensor(np.array([10], dtype=np.int64)))
    with pytest.raises(TypeError):
        emb(T((2,)))


def test_copy_into_parameter_is_seen_by_forward():
    fc = cnn.Linear(3, 2)
    (_, w), (_, b) = fc.named_parameters()
    with ng.no_grad():  # parameters are leaves requiring grad
        w.copy_(np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]], dtype=np.float32))
        b.copy_(np.array([0.5, -1.0], dtype=np.float32))
    y = fc(ng.tensor(np.array([[1.0, 2.0, 3.0]], dtype=np.float32)))
    np.testing.assert_allclose(y.numpy(), [[1.5, 3.0]])
    assert fc.weight._same_storage(w)
    conv = cnn.Conv2d(1, 1, 1, bias=False)
    with ng.no_grad():
        conv.named_parameters()[0][1].copy_(np.full((1, 1, 1, 1), 3.0, dtype=np.float32))
    np.testing.assert_allclose(conv(ng.ones((1, 2, 2, 1))).numpy(), np.full((1, 2, 2, 1), 3.0))


def test_gradients_reach_parameters_and_zero_grad():
    net = cnn.Sequential([cnn.Conv2d(2, 3, 3, padding=1), cnn.BatchNorm2d(3), cnn.ReLU(), cnn.Flatten(),
                          cnn.Linear(3 * 4 * 4, 2)])
    net(T((2, 4, 4, 2))).sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.shape == p.shape, name
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())


def test_buffers_train_eval_and_to():
    bn = cnn.BatchNorm2d(3, momentum=0.5)
    assert shapes(bn.named_buffers()) == [("running_mean", (3,)), ("running_var", (3,)), ("num_batches_tracked", ())]
    x = T((4, 2, 2, 3))
    bn(x)
    np.testing.assert_allclose(bn.running_mean.numpy(), 0.5 * x.numpy().mean(axis=(0, 1, 2)), rtol=1e-5, atol=1e-6)
    assert bn.num_batches_tracked.item() == 1
    net = cnn.Sequential([cnn.Linear(3, 3), cnn.Dropout(0.5), bn])
    assert net.is_training() and net.training
    assert net.eval() is net
    assert not net[1].is_training() and not net[2].training
    d = net[1]
    xx = T((3, 3))
    np.testing.assert_array_equal(d(xx).numpy(), xx.numpy())
    net.train()
    assert net[2].is_training()
    w = net[0].weight
    assert net.to(ng.float64) is net
    assert w.dtype == ng.float64 and net[0].weight.dtype == ng.float64
    assert bn.running_var.dtype == ng.float64 and bn.num_batches_tracked.dtype == ng.int64
    net.to("float32")
    assert w.dtype == ng.float32


def test_sequential_container_and_repr():
    seq = cnn.Sequential([cnn.Linear(2, 3), cnn.ReLU()])
    assert len(seq) == 2
    assert isinstance(seq[0], cnn.Linear) and isinstance(seq[-1], cnn.ReLU)
    with pytest.raises(IndexError):
        seq[2]
    assert seq.append(cnn.Linear(3, 1)) is seq and len(seq) == 3
    assert [n for n, _ in seq.named_children()] == ["0", "1", "2"]
    assert [n for n, _ in seq.named_modules()] == ["", "0", "1", "2"]
    assert repr(seq) == (
        "Sequential(\n"
        "  (0): Linear(in_features=2, out_features=3, bias=True)\n"
        "  (1): ReLU()\n"
        "  (2): Linear(in_features=3, out_features=1, bias=True)\n"
        ")"
    )


def test_properties():
    conv = cnn.Conv2d(3, 8, (3, 5), stride=(2, 1), padding="valid", bias=False)
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride) == (3, 8, (3, 5), (2, 1))
    assert conv.padding == "valid" and conv.bias is None
    assert cnn.Conv2d(1, 1, 3, padding=(1, 2)).padding == (1, 2)
    assert cnn.MaxPool2d(3).stride == (3, 3)
    assert cnn.AvgPool2d(2, stride=1).stride == (1, 1)
    lin = cnn.Linear(4, 2, dtype=ng.float64)
    assert (lin.in_features, lin.out_features) == (4, 2) and lin.weight.dtype == ng.float64
    assert cnn.LayerNorm((2, 3)).normalized_shape == (2, 3)
    bn = cnn.BatchNorm2d(4, momentum=None, affine=False, track_running_stats=False)
    assert bn.momentum is None and bn.weight is None and bn.running_mean is None
    assert cnn.Embedding(5, 2).embedding_dim == 2


def test_errors():
    with pytest.raises(ValueError, match=r"Linear: input has 5 features but in_features=4 \(input shape \(2, 5\)\)"):
        cnn.Linear(4, 3)(T((2, 5)))
    with pytest.raises(TypeError):
        cnn.Linear(4, 3)(ng.tensor(np.zeros((2, 4), dtype=np.int64)))
    with pytest.raises(ValueError):
        cnn.Linear(0, 3)
    with pytest.raises(ValueError):
        cnn.Linear(3, 3, activation="swish")
    with pytest.raises(ValueError):
        cnn.Conv2d(3, 3, 3, stride=2, padding="same")
    with pytest.raises(ValueError):
        cnn.Conv2d(3, 3, 3, padding="full")
    with pytest.raises(ValueError, match="in_channels=3"):
        cnn.Conv2d(3, 3, 3)(T((1, 5, 5, 4)))
    with pytest.raises(ValueError):
        cnn.Dropout(1.5)
    with pytest.raises(ValueError):
        cnn.MaxPool2d((2, 2, 2))
    with pytest.raises(TypeError):
        cnn.Linear(3, 3).to(ng.int64)


def test_stub_lists_the_nn_submodule():
    """_core.pyi declares `class nn` with one nested class per public name of _core.nn."""
    stub = ast.parse((Path(ng.__file__).resolve().parent / "_core.pyi").read_text())
    nn_cls = next(n for n in stub.body if isinstance(n, ast.ClassDef) and n.name == "nn")
    declared = {n.name for n in nn_cls.body if isinstance(n, ast.ClassDef)}
    actual = {n for n in dir(cnn) if not n.startswith("_")}
    assert declared == actual


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")  # PyTorch's own note
def test_batchnorm_and_same_conv_match_torch():
    """Spot checks of the semantics the layers implement themselves (the full PyTorch
    comparisons of every layer are in the nn tests): BatchNorm2d's train/eval outputs and
    running statistics over two steps, and Conv2d padding='same' with an even kernel."""
    torch = pytest.importorskip("torch")
    x1, x2 = T((4, 3, 5, 2), np.float64, seed=1), T((4, 3, 5, 2), np.float64, seed=2)
    bn = cnn.BatchNorm2d(2, momentum=0.3, dtype=ng.float64)
    tbn = torch.nn.BatchNorm2d(2, momentum=0.3).double()
    with ng.no_grad(), torch.no_grad():
        bn.weight.copy_(np.array([1.5, -0.5]))
        bn.bias.copy_(np.array([0.25, 2.0]))
        tbn.weight.copy_(torch.tensor([1.5, -0.5]))
        tbn.bias.copy_(torch.tensor([0.25, 2.0]))

    def nchw(t):
        return torch.from_numpy(t.numpy().copy()).permute(0, 3, 1, 2)

    for x in (x1, x2):
        y, ty = bn(x), tbn(nchw(x))
        np.testing.assert_allclose(y.numpy(), ty.permute(0, 2, 3, 1).detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(bn.running_mean.numpy(), tbn.running_mean.numpy(), rtol=1e-12)
    np.testing.assert_allclose(bn.running_var.numpy(), tbn.running_var.numpy(), rtol=1e-12)
    assert bn.num_batches_tracked.item() == tbn.num_batches_tracked.item() == 2
    bn.eval()
    tbn.eval()
    np.testing.assert_allclose(bn(x1).numpy(), tbn(nchw(x1)).permute(0, 2, 3, 1).detach().numpy(), rtol=1e-10)

    conv = cnn.Conv2d(2, 3, (2, 4), padding="same", dtype=ng.float64)
    tconv = torch.nn.Conv2d(2, 3, (2, 4), padding="same").double()
    with torch.no_grad():
        tconv.weight.copy_(torch.from_numpy(conv.weight.numpy().copy()).permute(0, 3, 1, 2))
        tconv.bias.copy_(torch.from_numpy(conv.bias.numpy().copy()))
    np.testing.assert_allclose(conv(x1).numpy(), tconv(nchw(x1)).permute(0, 2, 3, 1).detach().numpy(),
                               rtol=1e-10, atol=1e-12)


def test_concurrent_forward_from_python_threads():
    """PITFALLS 4: layers keep no per-call state, so threads may share one model in inference
    (large inputs release the GIL inside forward, so the calls really overlap)."""
    import threading

    net = cnn.Sequential([cnn.Conv2d(3, 8, 3, padding=1), cnn.BatchNorm2d(8), cnn.ReLU(), cnn.MaxPool2d(2),
                          cnn.Flatten(), cnn.Linear(8 * 16 * 16, 10), cnn.Dropout(0.5)])
    net.eval()
    x = T((8, 32, 32, 3), seed=3)  # 24576 input elements; the conv output passes the GIL threshold
    with ng.no_grad():
        ref = net(x).numpy().copy()
    results, errors = [], []

    def work():
        try:
            with ng.no_grad():
                for _ in range(5):
                    results.append(net(x).numpy().copy())
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 20
    for r in results:
        np.testing.assert_array_equal(r, ref)
