"""The Module API of nablagrad.nn: registration, walks, state dicts, modes, dtype conversion,
repr, containers, nn.init and nn.utils (no PyTorch needed, except where a test says so)."""

from __future__ import annotations

import collections
import math

import numpy as np
import pytest

import nablagrad as ng
from nablagrad import nn


class MLP(nn.Module):
    def __init__(self, dtype=None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8, activation="relu", dtype=dtype)
        self.fc2 = nn.Linear(8, 2, dtype=dtype)
        self.scale = nn.Parameter(ng.ones(2, dtype=dtype or ng.float32))
        self.register_buffer("steps", ng.zeros((), dtype=ng.int64))
        self.register_buffer("scratch", ng.zeros(2), persistent=False)
        self.note = "plain attribute"

    def forward(self, x: ng.Tensor) -> ng.Tensor:
        return self.fc2(self.fc1(x)) * self.scale


class Wrapper(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU())
        self.head = MLP()

    def forward(self, x):
        return self.body(x)


# ---------------------------------------------------------------------------------------- registration
def test_registration_and_names() -> None:
    m = MLP()
    assert [n for n, _ in m.named_parameters()] == ["scale", "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert [n for n, _ in m.named_buffers()] == ["steps", "scratch"]
    assert [n for n, _ in m.named_children()] == ["fc1", "fc2"]
    assert list(m.children()) == [m.fc1, m.fc2]
    assert [n for n, _ in m.named_modules()] == ["", "fc1", "fc2"]
    assert list(m.modules())[0] is m
    assert [n for n, _ in m.named_parameters(recurse=False)] == ["scale"]
    assert m.note == "plain attribute" and "note" not in m._parameters
    assert "fc1" in dir(m) and "scale" in dir(m)


def test_nested_named_modules_order() -> None:
    w = Wrapper()
    assert [n for n, _ in w.named_modules()] == ["", "body", "body.0", "body.1", "body.2", "head", "head.fc1",
                                                 "head.fc2"]
    names = [n for n, _ in w.named_parameters()]
    assert names[:4] == ["body.0.weight", "body.0.bias", "body.1.weight", "body.1.bias"]
    assert [n for n, _ in w.named_buffers()][:3] == ["body.1.running_mean", "body.1.running_var",
                                                     "body.1.num_batches_tracked"]
    assert w.get_submodule("head.fc1") is w.head.fc1
    assert w.get_parameter("head.fc2.bias") is w.head.fc2.bias


def test_setattr_rules() -> None:
    m = MLP()
    with pytest.raises(TypeError, match="nn.Parameter or None"):
        m.scale = ng.ones(2)  # a plain tensor into a parameter slot
    m.scale = None
    assert m.scale is None and "scale" not in dict(m.named_parameters())
    m.scale = nn.Parameter(ng.zeros(2))
    with pytest.raises(TypeError):
        m.fc1 = "not a module"
    m.steps = ng.ones((), dtype=ng.int64)  # buffers take tensors
    with pytest.raises(TypeError):
        m.steps = 3
    m.extra = nn.ReLU()  # new module registers
    assert "extra" in dict(m.named_children())
    m.extra = nn.Parameter(ng.ones(1))  # re-assigning as a parameter moves it
    assert "extra" not in dict(m.named_children()) and "extra" in dict(m.named_parameters())
    del m.extra
    assert "extra" not in dict(m.named_parameters())
    with pytest.raises(AttributeError, match="no attribute 'missing'"):
        m.missing


def test_register_errors() -> None:
    m = MLP()
    with pytest.raises(KeyError, match="already exists"):
        m.register_parameter("fc1", nn.Parameter(ng.ones(1)))
    with pytest.raises(KeyError, match=r"\."):
        m.register_buffer("a.b", ng.ones(1))
    with pytest.raises(TypeError):
        m.register_parameter("p", ng.ones(1))
    with pytest.raises(TypeError):
        m.add_module("c", "x")  # type: ignore[arg-type]
    m.add_module("c", nn.Tanh())
    assert m.c is m._modules["c"]

    class Early(nn.Module):
        def __init__(self) -> None:
            self.p = nn.Parameter(ng.ones(1))

    with pytest.raises(AttributeError, match="before Module.__init__"):
        Early()


def test_builtin_parameters_cannot_be_replaced() -> None:
    lin = nn.Linear(2, 2)
    with pytest.raises(AttributeError, match="copy"):
        lin.weight = nn.Parameter(ng.ones(2, 2))
    with pytest.raises(AttributeError):
        del lin.weight
    lin.weight = lin.weight  # the same object is fine


def test_forward_required_and_call() -> None:
    class NoForward(nn.Module):
        pass

    with pytest.raises(NotImplementedError):
        NoForward()(ng.ones(1))
    m = MLP()
    x = ng.randn(3, 4)
    np.testing.assert_array_equal(np.asarray(m(x)), np.asarray(m.forward(x)))


# ---------------------------------------------------------------------------------------- state dict
def test_state_dict_contents_and_sharing() -> None:
    m = MLP()
    sd = m.state_dict()
    assert list(sd) == ["scale", "steps", "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert not any(v.requires_grad for v in sd.values())
    assert sd["fc1.weight"]._same_storage(m.fc1.weight)  # shares memory, as PyTorch
    kv = m.state_dict(keep_vars=True)
    assert kv["fc1.weight"] is m.fc1.weight


def test_state_dict_round_trip() -> None:
    ng.manual_seed(1)
    a, b = Wrapper(), Wrapper()
    a.train()
    a(ng.randn(2, 5, 5, 1))  # moves a's running stats
    sd = {k: ng.tensor(np.asarray(v).copy()) for k, v in a.state_dict().items()}
    ids = {k: id(v) for k, v in b.state_dict(keep_vars=True).items()}
    res = b.load_state_dict(sd)
    assert res.missing_keys == [] and res.unexpected_keys == []
    for k, v in b.state_dict().items():
        np.testing.assert_array_equal(np.asarray(v), np.asarray(a.state_dict()[k]))
        assert id(b.state_dict(keep_vars=True)[k]) == ids[k]  # loaded in place
    x = ng.randn(2, 5, 5, 1)
    a.eval(), b.eval()
    np.testing.assert_array_equal(np.asarray(a(x)), np.asarray(b(x)))
    # NumPy arrays load too
    b.load_state_dict({k: np.asarray(v) for k, v in a.state_dict().items()})


def test_strict_load_errors() -> None:
    m = MLP()
    sd = m.state_dict()
    del sd["fc1.bias"]
    sd["bogus.weight"] = ng.ones(1)
    with pytest.raises(KeyError) as e:
        m.load_state_dict(sd)
    assert "fc1.bias" in str(e.value) and "bogus.weight" in str(e.value)
    before = np.asarray(m.fc2.weight).copy()
    sd2 = {k: ng.zeros(v.shape, dtype=v.dtype) for k, v in m.state_dict().items()}
    sd2["fc1.weight"] = ng.zeros(3, 3)
    with pytest.raises(ValueError, match=r"fc1\.weight.*\(3, 3\).*\(8, 4\)"):
        m.load_state_dict(sd2)
    np.testing.assert_array_equal(np.asarray(m.fc2.weight), before)  # nothing copied
    res = m.load_state_dict(sd, strict=False)
    assert res.missing_keys == ["fc1.bias"] and res.unexpected_keys == ["bogus.weight"]
    assert isinstance(res, tuple)
    with pytest.raises(TypeError):
        m.load_state_dict([1, 2])  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------- modes, grads, dtype
def test_train_eval_propagate_to_cpp_layers() -> None:
    w = Wrapper()
    assert all(m.training for m in w.modules())
    assert w.eval() is w
    assert not any(m.training for m in w.modules())
    assert not w.body[1]._layer.is_training()
    w.train()
    assert w.body[1]._layer.is_training()
    w.body[1].training = False
    assert not w.body[1]._layer.is_training()
    with pytest.raises(ValueError):
        w.train("yes")  # type: ignore[arg-type]


def test_zero_grad() -> None:
    m = MLP()
    m(ng.randn(3, 4)).sum().backward()
    assert all(p.grad is not None for p in m.parameters())
    m.zero_grad(set_to_none=False)
    assert all(float(abs(p.grad).sum()) == 0.0 for p in m.parameters())
    m.zero_grad()
    assert all(p.grad is None for p in m.parameters())


def test_to_dtype_keeps_identity() -> None:
    m = Wrapper()
    m(ng.randn(2, 4, 4, 1)).sum().backward()
    before = {n: p for n, p in m.named_parameters()}
    bufs = {n: b for n, b in m.named_buffers()}
    assert m.to(ng.float64) is m
    for n, p in m.named_parameters():
        assert p is before[n] and p.dtype == ng.float64 and isinstance(p, nn.Parameter)
        assert p.grad is None or p.grad.dtype == ng.float64
    for n, b in m.named_buffers():
        assert b is bufs[n]
    assert m.body[1].num_batches_tracked.dtype == ng.int64
    assert m.head.steps.dtype == ng.int64
    y = m(ng.randn(2, 4, 4, 1, dtype=ng.float64))
    assert y.dtype == ng.float64
    y.sum().backward()
    assert m.body[0].weight.grad.dtype == ng.float64
    m.to(dtype=ng.float32)
    assert m.head.scale.dtype == ng.float32 and m.body[0].weight.dtype == ng.float32
    m.double()
    assert m.head.fc1.weight.dtype == ng.float64
    m.float()
    with pytest.raises(TypeError):
        m.to(ng.int64)


def test_dtype_argument_of_builtins() -> None:
    assert nn.Linear(2, 3).weight.dtype == ng.float32
    assert nn.Linear(2, 3, dtype=ng.float64).weight.dtype == ng.float64
    assert nn.Conv2d(1, 2, 3, dtype="float64").weight.dtype == ng.float64
    assert nn.BatchNorm2d(3, dtype=ng.float64).running_mean.dtype == ng.float64
    assert nn.LayerNorm(4, dtype=ng.float64).weight.dtype == ng.float64
    assert nn.Embedding(4, 2, dtype=ng.float64).weight.dtype == ng.float64


def test_apply_and_requires_grad() -> None:
    m = MLP()
    seen = []
    assert m.apply(lambda mod: seen.append(type(mod).__name__)) is m
    assert seen == ["Linear", "Linear", "MLP"]
    m.requires_grad_(False)
    assert not any(p.requires_grad for p in m.parameters())


def test_modules_hash_by_identity() -> None:
    a, b = nn.ReLU(), nn.ReLU()
    assert len({a, b, a}) == 2


# ---------------------------------------------------------------------------------------- repr
def test_repr_tree() -> None:
    s = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                      nn.Linear(16, 10, bias=False))
    assert repr(s) == (
        "Sequential(\n"
        "  (0): Conv2d(1, 16, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))\n"
        "  (1): ReLU()\n"
        "  (2): MaxPool2d(kernel_size=2, stride=2, padding=0)\n"
        "  (3): Flatten(start_dim=1, end_dim=-1)\n"
        "  (4): Linear(in_features=16, out_features=10, bias=False)\n"
        ")")
    w = Wrapper()
    r = repr(w)
    assert r.startswith("Wrapper(\n  (body): Sequential(\n    (0): Conv2d(")
    assert "    (1): BatchNorm2d(2, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)\n" in r
    assert "  (head): MLP(\n    (fc1): Linear(in_features=4, out_features=8, bias=True, activation='relu')\n" in r
    assert repr(nn.Dropout(0.25)) == "Dropout(p=0.25)"
    assert repr(nn.LayerNorm((3, 4))) == "LayerNorm((3, 4), eps=1e-05, elementwise_affine=True)"
    assert repr(nn.Embedding(10, 3)) == "Embedding(10, 3)"


# ---------------------------------------------------------------------------------------- containers
def test_sequential_container() -> None:
    a, b, c = nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)
    s = nn.Sequential(a, b, c)
    assert len(s) == 3 and list(s) == [a, b, c]
    assert s[0] is a and s[-1] is c and s[-3] is a
    with pytest.raises(IndexError):
        s[3]
    with pytest.raises(IndexError):
        s[-4]
    sub = s[1:]
    assert isinstance(sub, nn.Sequential) and list(sub) == [b, c]
    assert [n for n, _ in sub.named_children()] == ["1", "2"]
    x = ng.randn(5, 3)
    np.testing.assert_allclose(np.asarray(s(x)), np.asarray(c(b(a(x)))))
    s.append(nn.Tanh())
    assert len(s) == 4 and isinstance(s[3], nn.Tanh)
    named = nn.Sequential(collections.OrderedDict([("enc", a), ("act", b)]))
    assert named.enc is a and [n for n, _ in named.named_parameters()] == ["enc.weight", "enc.bias"]
    s[1] = nn.Sigmoid()
    assert isinstance(s[1], nn.Sigmoid)
    del s[0]
    assert len(s) == 3 and [n for n, _ in s.named_children()] == ["0", "1", "2"]


def test_python_modules_nest_in_sequential() -> None:
    class Scale(nn.Module):
        def __init__(self, k: float) -> None:
            super().__init__()
            self.k = nn.Parameter(ng.full((1,), k))

        def forward(self, x):
            return ng.nn.functional.relu(x) * self.k

    s = nn.Sequential(nn.Linear(3, 3), Scale(2.0), nn.Sequential(nn.Linear(3, 1), Scale(0.5)))
    x = ng.randn(4, 3)
    y = s(x)
    ref = np.maximum(np.asarray(s[2][0](ng.tensor(np.maximum(np.asarray(s[0](x)), 0) * 2.0))), 0) * 0.5
    np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-6)
    y.sum().backward()
    assert all(p.grad is not None for p in s.parameters())
    assert [n for n, _ in s.named_parameters()] == ["0.weight", "0.bias", "1.k", "2.0.weight", "2.0.bias",
                                                    "2.1.k"]


def test_module_list() -> None:
    ml = nn.ModuleList([nn.Linear(2, 2) for _ in range(3)])
    assert len(ml) == 3 and ml[-1] is ml[2]
    assert len(list(ml.parameters())) == 6
    ml.append(nn.ReLU())
    assert len(ml) == 4
    assert isinstance(ml[1:], nn.ModuleList) and len(ml[1:]) == 3


# ---------------------------------------------------------------------------------------- init
@pytest.mark.parametrize("shape,fan_in,fan_out", [((30, 40), 40, 30), ((16, 3, 5, 8), 120, 240)])
def test_init_fans_and_statistics(shape, fan_in, fan_out) -> None:
    ng.manual_seed(0)
    t = ng.empty(*shape)
    n = t.size
    assert nn.init._calculate_fan_in_and_fan_out(t) == (fan_in, fan_out)
    a = np.asarray(nn.init.kaiming_uniform_(t, a=math.sqrt(5)))
    bound = 1 / math.sqrt(fan_in)  # PyTorch's default Linear/Conv weight bound
    assert np.abs(a).max() <= bound and np.abs(a).max() > 0.9 * bound
    assert abs(a.std() - bound / math.sqrt(3)) < 5 * bound / math.sqrt(3) / math.sqrt(n)
    a = np.asarray(nn.init.kaiming_normal_(t, mode="fan_out", nonlinearity="relu"))
    std = math.sqrt(2) / math.sqrt(fan_out)
    assert abs(a.std() / std - 1) < 6 / math.sqrt(2 * n) and abs(a.mean()) < 6 * std / math.sqrt(n)
    a = np.asarray(nn.init.xavier_uniform_(t, gain=2.0))
    bound = 2.0 * math.sqrt(6 / (fan_in + fan_out))
    assert np.abs(a).max() <= bound and np.abs(a).max() > 0.9 * bound
    a = np.asarray(nn.init.xavier_normal_(t))
    std = math.sqrt(2 / (fan_in + fan_out))
    assert abs(a.std() / std - 1) < 6 / math.sqrt(2 * n)


def test_init_basic_fills() -> None:
    t = ng.empty(200, 50, dtype=ng.float64)
    assert nn.init.uniform_(t, -2.0, 3.0) is t
    a = np.asarray(t)
    assert a.min() >= -2.0 and a.max() <= 3.0 and abs(a.mean() - 0.5) < 0.1
    a = np.asarray(nn.init.normal_(t, 1.0, 0.5))
    assert abs(a.mean() - 1.0) < 0.02 and abs(a.std() - 0.5) < 0.02
    np.testing.assert_array_equal(np.asarray(nn.init.constant_(t, 0.25)), 0.25)
    np.testing.assert_array_equal(np.asarray(nn.init.zeros_(t)), 0.0)
    np.testing.assert_array_equal(np.asarray(nn.init.ones_(t)), 1.0)
    assert t.dtype == ng.float64


def test_init_on_parameters_in_place_and_seeded() -> None:
    lin = nn.Linear(5, 7)
    w = lin.weight
    ng.manual_seed(3)
    nn.init.normal_(lin.weight)
    first = np.asarray(lin.weight).copy()
    ng.manual_seed(3)
    nn.init.normal_(lin.weight)
    assert lin.weight is w and lin.weight.requires_grad and lin.weight.grad is None
    np.testing.assert_array_equal(np.asarray(lin.weight), first)
    y = lin(ng.ones(1, 5))  # the C++ layer sees the new values
    np.testing.assert_allclose(np.asarray(y)[0], first.sum(axis=1) + np.asarray(lin.bias), rtol=1e-5, atol=1e-6)


def test_init_gain_and_errors() -> None:
    assert nn.init.calculate_gain("relu") == pytest.approx(math.sqrt(2))
    assert nn.init.calculate_gain("tanh") == pytest.approx(5 / 3)
    assert nn.init.calculate_gain("leaky_relu", 0.2) == pytest.approx(math.sqrt(2 / 1.04))
    assert nn.init.calculate_gain("conv2d") == 1.0
    with pytest.raises(ValueError):
        nn.init.calculate_gain("swish")
    with pytest.raises(ValueError):
        nn.init.xavier_uniform_(ng.empty(5))
    with pytest.raises(ValueError):
        nn.init.kaiming_uniform_(ng.empty(3, 3), mode="fan_avg")
    with pytest.raises(TypeError):
        nn.init.normal_(ng.zeros(3, dtype=ng.int64))


def test_default_init_within_pytorch_bounds() -> None:
    ng.manual_seed(0)
    lin = nn.Linear(64, 128)
    b = 1 / math.sqrt(64)
    w = np.asarray(lin.weight)
    assert np.abs(w).max() <= b and np.abs(w).max() > 0.95 * b and abs(w.std() - b / math.sqrt(3)) < 0.05 * b
    assert np.abs(np.asarray(lin.bias)).max() <= b
    conv = nn.Conv2d(8, 16, 3)
    b = 1 / math.sqrt(8 * 9)
    w = np.asarray(conv.weight)
    assert w.shape == (16, 3, 3, 8) and np.abs(w).max() <= b and np.abs(w).max() > 0.95 * b
    e = np.asarray(nn.Embedding(100, 50).weight)
    assert abs(e.mean()) < 0.05 and abs(e.std() - 1) < 0.05
    bn = nn.BatchNorm2d(4)
    np.testing.assert_array_equal(np.asarray(bn.weight), 1.0)
    np.testing.assert_array_equal(np.asarray(bn.bias), 0.0)
    np.testing.assert_array_equal(np.asarray(bn.running_var), 1.0)


# ---------------------------------------------------------------------------------------- utils
def test_clip_grad_norm() -> None:
    a = nn.Parameter(ng.zeros(3))
    b = nn.Parameter(ng.zeros(2, 2))
    a.grad = ng.tensor([3.0, 0.0, 0.0])
    b.grad = ng.tensor([[0.0, 4.0], [0.0, 0.0]])
    c = nn.Parameter(ng.zeros(1))  # no grad: skipped
    total = nn.utils.clip_grad_norm_([a, b, c], max_norm=1.0)
    assert isinstance(total, ng.Tensor) and float(total) == pytest.approx(5.0)
    np.testing.assert_allclose(np.asarray(a.grad), [0.6, 0.0, 0.0], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(b.grad), [[0.0, 0.8], [0.0, 0.0]], rtol=1e-5)
    # under the limit: unchanged
    total = nn.utils.clip_grad_norm_(iter([a, b]), max_norm=10.0)
    assert float(total) == pytest.approx(1.0, rel=1e-5)
    np.testing.assert_allclose(np.asarray(a.grad), [0.6, 0.0, 0.0], rtol=1e-5)
    # other norms
    a.grad = ng.tensor([1.0, -2.0, 0.5])
    assert float(nn.utils.clip_grad_norm_(a, 100.0, norm_type=float("inf"))) == pytest.approx(2.0)
    assert float(nn.utils.clip_grad_norm_(a, 100.0, norm_type=1)) == pytest.approx(3.5)
    a.grad = ng.tensor([float("nan"), 0.0, 0.0])
    with pytest.raises(RuntimeError):
        nn.utils.clip_grad_norm_(a, 1.0, error_if_nonfinite=True)


def test_clip_grad_norm_matches_torch() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    gs = [rng.standard_normal(s) for s in [(3, 4), (5,), (2, 2, 2)]]
    ps = [nn.Parameter(ng.zeros(*g.shape, dtype=ng.float64)) for g in gs]
    tp = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in gs]
    for p, t, g in zip(ps, tp, gs):
        p.grad = ng.tensor(g)
        t.grad = torch.tensor(g)
    for norm_type in (2.0, 1.0, 3.0):
        n1 = nn.utils.clip_grad_norm_(ps, 0.7, norm_type=norm_type)
        n2 = torch.nn.utils.clip_grad_norm_(tp, 0.7, norm_type=norm_type)
        assert float(n1) == pytest.approx(float(n2), rel=1e-10)
        for p, t in zip(ps, tp):
            np.testing.assert_allclose(np.asarray(p.grad), t.grad.numpy(), rtol=1e-9)


def test_clip_grad_value() -> None:
    a = nn.Parameter(ng.zeros(4))
    a.grad = ng.tensor([-3.0, -0.5, 0.5, 3.0])
    assert nn.utils.clip_grad_value_([a], 1.0) is None
    np.testing.assert_array_equal(np.asarray(a.grad), [-1.0, -0.5, 0.5, 1.0])
    with pytest.raises(ValueError):
        nn.utils.clip_grad_value_(a, -1.0)
