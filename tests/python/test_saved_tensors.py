"""Autograd's saved-tensor contract (issue 6), as PyTorch's: each op records exactly the tensors
its backward reads, with their versions. An in-place change to one of them -- through setitem,
copy_, a view or detach() sharing the storage -- makes backward raise a RuntimeError naming the
op before any gradient is written; changes to tensors the backward does not read are fine."""

from __future__ import annotations

import numpy as np
import pytest

import nablagrad as ng
import nablagrad.functional as F

MSG = "modified by an in-place operation"


def _leaf(values, dtype=ng.float64):
    return ng.tensor(np.asarray(values, dtype=np.float64), dtype=dtype, requires_grad=True)


# Every op whose backward reads its OUTPUT: writing the output (through a detached alias)
# must be caught. Before the fix only inputs were versioned and these gave wrong gradients.
OUTPUT_SAVING = {
    "exp": lambda x: x.exp(),
    "sqrt": lambda x: (x * x + 1.0).sqrt(),
    "tanh": lambda x: x.tanh(),
    "sigmoid": lambda x: x.sigmoid(),
    "softmax": lambda x: F.softmax(x, axis=-1),
    "log_softmax": lambda x: F.log_softmax(x, axis=-1),
    "max": lambda x: x.max(axis=0, keepdims=True),
}


@pytest.mark.parametrize("name", sorted(OUTPUT_SAVING))
def test_write_to_saved_output_raises(name):
    x = _leaf([[0.5, -1.0, 2.0], [1.5, 0.25, -0.75]])
    y = OUTPUT_SAVING[name](x)
    d = y.detach()
    d[0] = 100.0                      # the op's output, written through a storage-sharing alias
    with pytest.raises(RuntimeError, match=MSG):
        y.sum().backward()
    assert x.grad is None             # nothing was written before the error


def test_issue_example_exp():
    x = ng.tensor([1.0, 2.0], requires_grad=True)
    y = x.exp()
    d = y.detach()
    d[0] = 100.0
    with pytest.raises(RuntimeError, match="exp"):
        y.sum().backward()
    assert x.grad is None


def test_div_and_pow_save_their_output():
    for op in (lambda a, b: a / b, lambda a, b: a ** b):
        a = _leaf([1.5, 2.0])
        b = _leaf([0.5, 3.0])
        y = op(a, b)
        y.detach().copy_(np.zeros(2))
        with pytest.raises(RuntimeError, match=MSG):
            y.sum().backward()
        assert a.grad is None and b.grad is None


def test_where_condition_written_in_place():
    a = _leaf([1.0, 2.0, 3.0])
    cond = ng.tensor([True, False, True])
    y = ng.where(cond, a, a * 0.0)
    cond[1] = True                    # would route the gradient differently
    with pytest.raises(RuntimeError, match="where"):
        y.sum().backward()
    assert a.grad is None


@pytest.mark.parametrize("loss", ["cross_entropy", "nll_loss"])
def test_labels_written_in_place(loss):
    logits = _leaf(np.arange(6.0).reshape(2, 3) / 7.0)
    labels = ng.tensor([0, 2])
    fn = getattr(F, loss)
    out = fn(F.log_softmax(logits) if loss == "nll_loss" else logits, labels)
    labels[0] = 1
    with pytest.raises(RuntimeError, match=loss):
        out.backward()
    assert logits.grad is None


def test_input_saved_by_mul_written_through_a_view():
    a = _leaf([1.0, 2.0, 3.0, 4.0])
    b = _leaf([5.0, 6.0, 7.0, 8.0])
    y = a * b
    with ng.no_grad():
        view = b.reshape(2, 2)[1]      # a view sharing b's storage
        view.copy_(np.array([0.0, 0.0]))
    with pytest.raises(RuntimeError, match="mul"):
        y.sum().backward()
    assert a.grad is None and b.grad is None


def test_error_raised_before_any_grad_is_written():
    # The invalid node sits deep in the graph; leaves near the root must stay untouched too.
    x = _leaf([0.3, 0.7])
    w = _leaf([2.0, 3.0])
    h = x.exp()
    out = (h * w).sum() + (w * w).sum()
    h.detach()[0] = 5.0
    with pytest.raises(RuntimeError, match="exp"):
        out.backward()
    assert w.grad is None and x.grad is None


# The opposite slip: writes to tensors the backward does NOT read must not be refused.
def test_add_reads_nothing_so_inputs_may_change():
    a = _leaf([1.0, 2.0])
    b = _leaf([3.0, 4.0])
    c = a + b
    with ng.no_grad():
        a.copy_(np.array([10.0, 20.0]))
    c.sum().backward()
    np.testing.assert_array_equal(a.grad.numpy(), [1.0, 1.0])
    np.testing.assert_array_equal(b.grad.numpy(), [1.0, 1.0])


@pytest.mark.parametrize("make", [
    lambda x: x.reshape(4),
    lambda x: x.sum(),
    lambda x: x.mean(axis=0),
    lambda x: x.transpose(0, 1),
    lambda x: -x,
    lambda x: x - 1.0,
    lambda x: x[0],
])
def test_ops_that_read_nothing_accept_input_writes(make):
    x = _leaf([[1.0, 2.0], [3.0, 4.0]])
    y = make(x)
    with ng.no_grad():
        x.copy_(np.zeros((2, 2)))
    y.sum().backward()
    assert x.grad is not None and x.grad.shape == (2, 2)


def test_exp_input_may_change_log_output_may_change():
    # exp's backward reads its output only; log's reads its input only.
    x = _leaf([0.5, 1.0])
    y = x.exp()
    with ng.no_grad():
        x.copy_(np.array([9.0, 9.0]))
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), np.exp([0.5, 1.0]))

    x = _leaf([0.5, 1.0])
    y = x.log()
    y.detach()[0] = 42.0
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [2.0, 1.0])


def test_matmul_saves_only_the_operand_the_needed_gradient_reads():
    a = _leaf(np.eye(2))
    b = ng.tensor(np.ones((2, 2)))               # does not require grad: dA reads b only
    y = a @ b
    with ng.no_grad():
        a.copy_(np.zeros((2, 2)))                # a is not read by dA
    y.sum().backward()
    np.testing.assert_array_equal(a.grad.numpy(), np.full((2, 2), 2.0))
    a2 = _leaf(np.eye(2))
    y = a2 @ b
    b[0, 0] = 5.0                                # b is read by dA
    with pytest.raises(RuntimeError, match="matmul"):
        y.sum().backward()


def test_conv2d_input_written_after_forward():
    x = ng.randn(1, 4, 4, 1, dtype=ng.float64)
    w = ng.randn(2, 3, 3, 1, dtype=ng.float64, requires_grad=True)
    y = F.conv2d(x, w, padding=1)
    x[0, 0, 0, 0] = 3.0                          # dW reads x
    with pytest.raises(RuntimeError, match="conv2d"):
        y.sum().backward()


def test_retained_graph_checked_again_on_second_backward():
    x = _leaf([1.0, 2.0])
    y = x.tanh()
    y.sum().backward(retain_graph=True)
    first = x.grad.numpy().copy()
    y.detach()[1] = 0.0
    with pytest.raises(RuntimeError, match="tanh"):
        y.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), first)   # unchanged by the failed pass


# NumPy writes cannot bypass the check.
def test_numpy_view_of_tensor_requiring_grad_is_read_only():
    x = _leaf([1.0, 2.0])
    arr = x.numpy()
    assert not arr.flags.writeable
    with pytest.raises(ValueError):
        arr[0] = 5.0
    arr2 = np.asarray(x)
    assert not arr2.flags.writeable
    y = x.exp()
    assert not y.numpy().flags.writeable
    # reading stays zero-copy
    assert arr.ctypes.data == x._data_ptr()


def test_detached_numpy_view_stays_writable_and_shares_memory():
    x = _leaf([1.0, 2.0])
    arr = x.detach().numpy()
    assert arr.flags.writeable
    arr[0] = 7.0
    assert x.detach().numpy()[0] == 7.0
    plain = ng.tensor([1.0, 2.0])
    assert plain.numpy().flags.writeable


def test_graph_with_many_saved_tensors_still_fast_and_right():
    x = _leaf(np.linspace(-1, 1, 8))
    y = x
    for _ in range(50):
        y = (y * 0.9).tanh() + y.sigmoid()
    y.sum().backward()
    assert np.all(np.isfinite(x.grad.numpy()))
