"""Tensors keep their Python identity (one wrapper per TensorImpl while it lives) and hash by
identity, as PyTorch's: parameters can key dicts and sets, tied weights come once, and a C++
layer's parameter comes back as the very nn.Parameter object."""

from __future__ import annotations

import gc

import numpy as np
import pytest

import nablagrad as ng
from nablagrad import _core, nn


def test_same_impl_same_object() -> None:
    x = ng.tensor([1.0, 2.0, 3.0], requires_grad=True)
    (x * x).sum().backward()
    assert x.grad is x.grad
    with ng.no_grad():
        assert x.copy_(ng.ones(3)) is x
    g = ng.tensor([1.0, 1.0, 1.0])
    x.grad = g
    assert x.grad is g


def test_detach_and_ops_are_new_objects() -> None:
    x = ng.ones(3)
    assert x.detach() is not x
    assert (x + 0) is not x
    assert ng.Tensor(x) is not x


def test_hash_is_identity_and_eq_stays_elementwise() -> None:
    a, b = ng.ones(3), ng.ones(3)
    assert hash(a) == object.__hash__(a)
    assert hash(a) != hash(b)
    assert isinstance(a == b, ng.Tensor)
    assert np.asarray(a == b).all()
    s = {a, b, a}
    assert len(s) == 2 and a in s and b in s
    d = {a: "a", b: "b"}
    assert d[a] == "a" and d[b] == "b"


def test_table_entries_die_with_their_wrappers() -> None:
    gc.collect()
    before = _core._identity_table_size()
    ts = [ng.zeros(2) + i for i in range(50)]
    assert _core._identity_table_size() >= before + 50
    del ts
    gc.collect()
    assert _core._identity_table_size() <= before + 1


def test_new_wrapper_after_old_one_died_is_valid() -> None:
    lin = nn.Linear(3, 2)
    layer = lin._layer
    w_id = id(lin.weight)
    assert layer.weight is lin.weight
    del lin
    gc.collect()
    w = layer.weight  # the Parameter died with the module: a fresh wrapper of the same impl
    assert isinstance(w, ng.Tensor) and w.shape == (2, 3)
    del w_id


def test_module_parameters_identity() -> None:
    m = nn.Linear(4, 3)
    assert m.weight is m.weight
    assert isinstance(m.weight, nn.Parameter) and isinstance(m.bias, nn.Parameter)
    assert m._layer.weight is m.weight  # the C++ layer's tensor comes back as the Parameter
    names = dict(m._layer.named_parameters())
    assert names["weight"] is m.weight and names["bias"] is m.bias
    assert set(m.parameters()) == {m.weight, m.bias}
    state = {p: 0 for p in m.parameters()}  # optimizer-state style keys
    assert len(state) == 2


def test_copy_into_parameter_is_seen_by_cpp_forward() -> None:
    m = nn.Linear(2, 2)
    with ng.no_grad():
        m.weight.copy_(np.eye(2, dtype=np.float32) * 2)
        m.bias.copy_(np.array([1.0, -1.0], dtype=np.float32))
    y = m(ng.tensor([[1.0, 2.0]]))
    np.testing.assert_allclose(np.asarray(y), [[3.0, 3.0]])


def test_backward_through_cpp_layer_fills_the_parameter_grad() -> None:
    m = nn.Linear(3, 2)
    m(ng.ones(4, 3)).sum().backward()
    assert m.weight.grad is not None and m.weight.grad.shape == (2, 3)
    np.testing.assert_allclose(np.asarray(m.bias.grad), [4.0, 4.0])
    assert m._layer.weight.grad is m.weight.grad


def test_tied_weights_counted_once() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(5, 3)
            self.w = self.emb.weight  # the same Parameter under a second name

        def forward(self, idx: ng.Tensor) -> ng.Tensor:
            return self.emb(idx) @ self.w.T

    m = Tied()
    params = list(m.parameters())
    assert len(params) == 1 and params[0] is m.emb.weight
    assert [n for n, _ in m.named_parameters()] == ["w"]  # own parameters first, as PyTorch
    assert len(set(m.parameters())) == 1
    # both keys in the state dict (as PyTorch), each sharing memory with the one tensor
    sd = m.state_dict()
    assert set(sd) == {"w", "emb.weight"}


def test_parameter_shares_data_and_requires_grad() -> None:
    t = ng.zeros(3)
    p = nn.Parameter(t)
    assert isinstance(p, nn.Parameter) and isinstance(p, ng.Tensor)
    assert p.requires_grad and p.is_leaf and not t.requires_grad
    with ng.no_grad():
        p.copy_(ng.ones(3))
    np.testing.assert_array_equal(np.asarray(t), [1.0, 1.0, 1.0])
    assert repr(p).startswith("Parameter containing:\ntensor(")
    q = nn.Parameter(ng.zeros(2), requires_grad=False)
    assert not q.requires_grad
    with pytest.raises(TypeError):
        nn.Parameter([1.0, 2.0])  # type: ignore[arg-type]


def test_parameter_ops_give_plain_tensors() -> None:
    p = nn.Parameter(ng.ones(2))
    assert type(p * 2) is ng.Tensor
    assert type(p.detach()) is ng.Tensor


def test_parameter_wrap_only_shares_a_tensor() -> None:
    with pytest.raises(TypeError):
        ng.Tensor([1.0], _share_impl=True)  # type: ignore[call-arg]


def test_set_data_keeps_identity() -> None:
    p = nn.Parameter(ng.ones(2))
    p.grad = ng.ones(2)
    _core._set_data(p, ng.tensor([1.0, 2.0, 3.0], dtype=ng.float64))
    assert p.dtype == ng.float64 and p.shape == (3,) and p.requires_grad
    y = (p * p).sum()
    assert y.dtype == ng.float64
    with pytest.raises(RuntimeError):
        _core._set_data(y, ng.ones(1))  # not a leaf
    with pytest.raises(TypeError):
        _core._set_data(p, ng.tensor([1, 2]))  # int data for a tensor that requires grad


def test_wrappers_in_threads() -> None:
    import threading

    m = nn.Linear(8, 8)
    errors = []

    def work() -> None:
        try:
            for _ in range(200):
                assert m._layer.weight is m.weight
                (m(ng.ones(2, 8)) * 1.0).sum()
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    ts = [threading.Thread(target=work) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors
