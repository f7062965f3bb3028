"""Regression tests for the bugs the fuzzers (tests/python/fuzz/) found (issue 11).

Each test names what used to happen. (clip with lo > hi and BatchNorm2d on an empty batch are in
test_degenerate.py.)
"""

from __future__ import annotations

import numpy as np
import pytest

import nablagrad as ng


def test_tensor_from_size_one_array_with_negative_stride() -> None:
    # was: ValueError "negative or unaligned strides" (NumPy calls such an array C-contiguous)
    for a in (np.array([3.0])[::-1], np.zeros((1, 1))[::-1, ::-1], np.zeros((2, 0))[::-1], np.ones((0,))[::-1]):
        t = ng.tensor(a)
        np.testing.assert_array_equal(np.asarray(t), a)
        s = ng.from_numpy(a)  # shares: the one element (or none) is all there is
        np.testing.assert_array_equal(np.asarray(s), a)
    b = np.array([[1.0, 2.0]])[::-1]  # (1, 2) with a negative stride on the length-1 axis
    assert ng.tensor(b).numpy().tolist() == [[1.0, 2.0]]
    assert (ng.tensor(np.array([5.0])[::-1]) @ ng.ones(1, dtype=ng.float64)).item() == 5.0
    with pytest.raises(ValueError):
        ng.from_numpy(np.arange(3.0)[::-1])  # a real negative stride is still refused


def test_list_of_ints_beyond_int64_overflows() -> None:
    # was: NumPy made float64 of [2**64 - 1, 0] and ng.tensor silently gave float32 1.8e19
    with pytest.raises(OverflowError, match="int64"):
        ng.tensor([2**64 - 1, 0])
    with pytest.raises(OverflowError):
        ng.tensor([[0, -2**64]])
    assert ng.tensor([2**64 - 1, 0.5]).dtype == ng.float32  # a float in the list: a float tensor (PyTorch)
    assert ng.tensor([1e30, 2.0]).dtype == ng.float32


def test_arange_empty_with_tiny_step() -> None:
    # was: ValueError "Maximum allowed size exceeded" (NumPy's own length count overflows)
    assert ng.arange(0, 1, -8.3e-57).shape == (0,)
    assert ng.arange(1, step=-1e-300).shape == (0,)
    assert ng.arange(0.0, 0.0, 1e-300).shape == (0,)


def test_factories_reject_non_numbers_with_type_error() -> None:
    # was: ValueError "could not convert string to float"
    with pytest.raises(TypeError, match="arange"):
        ng.arange(0, 5, "a")
    with pytest.raises(TypeError, match="arange"):
        ng.arange("3")
    with pytest.raises(TypeError, match="fill_value"):
        ng.full((2,), "a")
    assert ng.arange(ng.tensor(3)).numpy().tolist() == [0.0, 1.0, 2.0]  # a 0-d tensor is a number
    assert ng.full((2,), np.float64(1.5)).numpy().tolist() == [1.5, 1.5]


@pytest.mark.parametrize("make", [
    lambda v: ng.nn.Linear(v, 2), lambda v: ng.nn.Linear(2, v), lambda v: ng.nn.Conv2d(v, 2, 3),
    lambda v: ng.nn.LSTM(2, v), lambda v: ng.nn.GRU(2, 3, num_layers=v), lambda v: ng.nn.RNN(v, 3),
    lambda v: ng.nn.MultiheadAttention(v, 1), lambda v: ng.nn.Embedding(v, 3), lambda v: ng.nn.BatchNorm2d(v),
])
def test_layer_sizes_of_the_wrong_kind_or_range(make) -> None:  # type: ignore[no-untyped-def]
    # was: pybind11's TypeError "incompatible constructor arguments" for 2**63 (should be ValueError)
    # and for 1.5 / None / "3" (a TypeError that did not name the argument)
    with pytest.raises(ValueError, match="out of range"):
        make(2**63)
    for bad in (1.5, None, "3"):
        with pytest.raises(TypeError, match="must be an int"):
            make(bad)


@pytest.mark.parametrize("opt", ["SGD", "Adam", "AdamW", "RMSprop"])
def test_optimizer_on_zero_size_parameter_from_numpy(opt: str) -> None:
    # was: SGD with momentum raised "its momentum buffer must be contiguous": NumPy gives a (2, 0)
    # array strides (0, 0), and an empty tensor with odd strides counted as non-contiguous
    p = ng.nn.Parameter(ng.tensor(np.zeros((2, 0), np.float32)))
    kw = {"momentum": 0.9} if opt in ("SGD", "RMSprop") else {}
    o = getattr(ng.optim, opt)([p], lr=0.1, **kw)
    for _ in range(2):
        p.grad = ng.tensor(np.zeros((2, 0), np.float32))
        o.step()
    assert p.shape == (2, 0)
    assert ng.tensor(np.zeros((2, 0))).contiguous().shape == (2, 0)


def test_layernorm_numpy_integer_size() -> None:
    # was: TypeError "'numpy.int64' object is not iterable"
    m = ng.nn.LayerNorm(np.int64(3))
    assert m.weight.shape == (3,) and m(ng.ones(2, 3)).shape == (2, 3)


def test_permute_checks_the_range_before_repeats() -> None:
    # was: ValueError "not a permutation (repeated axis 0)" for dims (0, 0, 3) on a 3-d tensor;
    # NumPy and PyTorch report the out-of-range axis first (IndexError)
    t = ng.zeros(1, 2, 3)
    with pytest.raises(IndexError, match="out of range"):
        t.permute(0, 0, 3)
    with pytest.raises(ValueError, match="repeated axis"):
        t.permute(0, 0, 2)


def test_empty_ellipsis_separates_advanced_indices() -> None:
    # was: x[None, 0, ..., [1, 2]] of shape (1, 2); NumPy counts an Ellipsis that stands for no
    # axis as a separator too, so the integer and the list are not adjacent: index dims first
    x = np.arange(6.0).reshape(2, 3)
    for idx in ((None, 0, Ellipsis, [1, 2]), (0, Ellipsis, [1, 2]), (None, Ellipsis, 0, [1, 2])):
        r = ng.tensor(x)[idx]
        np.testing.assert_array_equal(r.numpy(), x[tuple(np.asarray(p) if isinstance(p, list) else p for p in idx)])
    assert ng.tensor(np.zeros((1, 0)))[None, 0, ..., []].shape == (0, 1)
    y = np.arange(24.0).reshape(2, 3, 4)
    np.testing.assert_array_equal(ng.tensor(y)[None, 0, ..., [1, 2]].numpy(), y[None, 0, ..., np.array([1, 2])])
    # and assignment through the same index
    t = ng.tensor(x.copy())
    t[None, 0, ..., [1, 2]] = ng.tensor([[7.0], [8.0]])
    ref = x.copy()
    ref[None, 0, ..., np.array([1, 2])] = np.array([[7.0], [8.0]])
    np.testing.assert_array_equal(t.numpy(), ref)


def test_arange_whose_length_overflows_numpy() -> None:
    # was: ng.arange(-2**63, -1) returned an empty tensor (NumPy's count of 2**63 - 1 elements
    # overflows); now a ValueError naming the size, and ranges whose stop - start overflows
    # int64 but whose values fit are exact
    with pytest.raises(ValueError, match="elements"):
        ng.arange(-2**63, -1, 1)
    t = ng.arange(-2**63, 2**62, 2**61)
    assert t.numpy().tolist() == list(range(-2**63, 2**62, 2**61))
    t = ng.arange(2**62, -2**63, -2**61)
    assert t.numpy().tolist() == list(range(2**62, -2**63, -2**61))
    with pytest.raises(OverflowError):
        ng.arange(2**63, 2**63 + 3)
    assert ng.arange(5, 0, -2).numpy().tolist() == [5, 3, 1]


def test_log_softmax_keeps_precision_for_large_logits() -> None:
    # was: log_softmax([1e4, 1e4]) = -0.69336 in float32 (x - (max + log(sum)) rounds the
    # log-sum to the ulp of 1e4); now (x - max) - log(sum), as PyTorch
    for big in (1e4, -1e4, 3e7):
        y = ng.functional.log_softmax(ng.tensor(np.array([big, big], dtype=np.float32)), 0).numpy()
        np.testing.assert_allclose(y, [-np.log(2)] * 2, rtol=1e-6)
    x = np.array([[1e4, 1e4 - 1.0, 1e4 - 2.0]], dtype=np.float32)
    ref = (x - x.max(1, keepdims=True)) - np.log(np.exp(x - x.max(1, keepdims=True)).sum(1, keepdims=True))
    np.testing.assert_allclose(ng.functional.log_softmax(ng.tensor(x), 1).numpy(), ref, rtol=1e-6)


def test_repr_of_a_huge_empty_tensor() -> None:
    # was: repr(ng.zeros(0).reshape(-1, 2**62)) raised NumPy's "array is too big"
    t = ng.zeros(0).reshape(-1, 2**62)
    assert t.shape == (0, 2**62)
    assert repr(t) == f"tensor([], size={(0, 2**62)})"
    assert repr(ng.zeros(0)) == "tensor([])"


def test_int64_arithmetic_wraps_as_numpy() -> None:
    # was: signed overflow (undefined behaviour, reported by UBSan in the ASan build) in int64
    # add/sub/mul/pow/neg/abs and sums; the results now wrap in two's complement, as NumPy
    lo, hi = np.iinfo(np.int64).min, np.iinfo(np.int64).max
    a = np.array([lo, hi, -1, 3], dtype=np.int64)
    b = np.array([-1, 1, lo, hi], dtype=np.int64)
    ta, tb = ng.tensor(a), ng.tensor(b)
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal((ta + tb).numpy(), a + b)
        np.testing.assert_array_equal((ta - tb).numpy(), a - b)
        np.testing.assert_array_equal((ta * tb).numpy(), a * b)
        np.testing.assert_array_equal((-ta).numpy(), -a)
        np.testing.assert_array_equal(abs(ta).numpy(), np.abs(a))
        np.testing.assert_array_equal((ta ** 3).numpy(), a ** 3)
    big = np.full((5, 3), hi, dtype=np.int64)
    assert ng.tensor(big).sum().item() == int(big.sum())
    np.testing.assert_array_equal(ng.tensor(big).sum(0).numpy(), big.sum(0))
    np.testing.assert_array_equal(ng.tensor(big).sum(1).numpy(), big.sum(1))
