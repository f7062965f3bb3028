"""Autograd semantics: freed graphs, accumulation, shared intermediates, deep graphs,
no_grad, detach, backward arguments, gradient dtypes, gradcheck itself."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import nablagrad as ng
from conftest import assert_close


def leaf(values, dtype=None):
    return ng.tensor(values, dtype=dtype, requires_grad=True)


def test_simple_backward():
    x = leaf([1.0, 2.0, 3.0])
    (x * x).sum().backward()
    assert_close(x.grad, [2.0, 4.0, 6.0], dtype=np.float32)
    assert x.is_leaf and x.grad_fn_name is None


def test_backward_twice_through_freed_graph():
    x = leaf([1.0, 2.0])
    y = (x.exp() * x).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="second time"):
        y.backward()


def test_retain_graph_accumulates():
    x = leaf([1.0, 2.0])
    y = (x * x).sum()
    y.backward(retain_graph=True)
    y.backward()
    assert_close(x.grad, [4.0, 8.0])
    with pytest.raises(RuntimeError):
        y.backward()


def test_accumulation_across_graphs_and_reset():
    x = leaf([1.0, 2.0])
    (x * 3).sum().backward()
    (x * x).sum().backward()
    assert_close(x.grad, [5.0, 7.0])
    g = x.grad
    x.grad = None
    assert x.grad is None
    (x * 2).sum().backward()
    assert_close(x.grad, [2.0, 2.0])
    assert_close(g, [5.0, 7.0])  # earlier gradient tensors are never modified in place


def test_grad_assignment_checks():
    x = leaf([1.0, 2.0])
    x.grad = ng.ones(2)
    assert_close(x.grad, [1.0, 1.0])
    with pytest.raises(ValueError):
        x.grad = ng.ones(3)
    with pytest.raises(TypeError):
        x.grad = ng.ones(2, dtype=ng.float64)


def test_shared_intermediate_gets_summed_gradient():
    x = leaf([1.0, 2.0, 3.0])
    h = x * 2  # non-leaf with several consumers
    y = h * h + h * 3 + h.exp().sum()  # the last term is broadcast to all 3 outputs
    y.sum().backward()
    hn = 2 * np.array([1.0, 2.0, 3.0])
    assert_close(x.grad, 2 * (2 * hn + 3 + 3 * np.exp(hn)), rtol=1e-5)


def test_diamond_graph():
    x = leaf([0.5, -1.0], dtype=ng.float64)
    a = x.tanh()
    b = a * a
    c = a.exp()
    (b + c + a).sum().backward()
    an = np.tanh(np.array([0.5, -1.0]))
    assert_close(x.grad, (2 * an + np.exp(an) + 1) * (1 - an**2), rtol=1e-12)


def test_same_leaf_twice():
    x = leaf([3.0])
    (x * x * x).sum().backward()
    assert_close(x.grad, [27.0])
    y = leaf([2.0])
    (y + y).sum().backward()
    assert_close(y.grad, [2.0])


def test_unused_branch_and_partial_requires_grad():
    x = leaf([1.0, 2.0])
    c = ng.tensor([5.0, 6.0])
    _unused = x * 10
    (x * c).sum().backward()
    assert_close(x.grad, [5.0, 6.0])
    assert c.grad is None and not c.requires_grad


def test_deep_chain_backward_and_free():
    # 10^5 chained nodes: iterative topological sort and iterative node destruction.
    code = textwrap.dedent(
        """
        import nablagrad as ng
        x = ng.tensor([1.0], requires_grad=True)
        y = x
        for _ in range(100000):
            y = y * 1.0
        y.sum().backward()
        assert x.grad.item() == 1.0, x.grad
        z = x
        for _ in range(100000):
            z = z + 0.0
        del z  # freeing an unbackwarded deep chain
        print("ok")
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "ok"


def test_no_grad_context_and_decorator():
    x = leaf([1.0, 2.0])
    with ng.no_grad():
        assert not ng.is_grad_enabled()
        y = x * 2
        z = (x @ x).exp()
    assert ng.is_grad_enabled()
    assert not y.requires_grad and not z.requires_grad and y.is_leaf

    @ng.no_grad()
    def f(t):
        return t.exp() + t

    r = f(x)
    assert not r.requires_grad and ng.is_grad_enabled()
    with ng.no_grad():
        with ng.enable_grad():
            assert (x * 2).requires_grad
        assert not (x * 2).requires_grad


def test_no_grad_restored_after_exception():
    with pytest.raises(ZeroDivisionError):
        with ng.no_grad():
            1 / 0
    assert ng.is_grad_enabled()


def test_detach():
    x = leaf([1.0, 2.0])
    y = x * 3
    d = y.detach()
    assert not d.requires_grad and d.is_leaf
    assert_close(d, [3.0, 6.0])
    (x * d).sum().backward()  # d is a constant
    assert_close(x.grad, [3.0, 6.0])
    # shares memory
    d.numpy()[0] = 100.0
    assert np.asarray(y)[0] == 100.0


def test_backward_non_scalar_requires_grad_argument():
    x = leaf([1.0, 2.0])
    y = x * x
    with pytest.raises(RuntimeError):
        y.backward()
    y.backward(grad=ng.tensor([1.0, 0.5]))
    assert_close(x.grad, [2.0, 2.0])
    z = x * 2
    z.backward(np.array([1.0, 1.0]))  # a NumPy gradient is accepted (converted)
    assert_close(x.grad, [4.0, 4.0])
    with pytest.raises(ValueError):
        (x * x).backward(grad=ng.ones(3))


def test_backward_on_scalar_shaped_one():
    x = leaf([[2.0]])
    (x * x).backward()  # one element: implicit gradient of 1
    assert_close(x.grad, [[4.0]])


def test_backward_without_requires_grad():
    with pytest.raises(RuntimeError):
        ng.tensor([1.0]).sum().backward()
    x = leaf([1.0])
    with ng.no_grad():
        y = (x * 2).sum()
    with pytest.raises(RuntimeError):
        y.backward()


def test_backward_on_leaf():
    x = leaf(2.0)
    x.backward()
    assert x.grad.item() == 1.0


def test_requires_grad_rules():
    with pytest.raises(RuntimeError):
        ng.tensor([1, 2], requires_grad=True)
    with pytest.raises(RuntimeError):
        ng.tensor([True]).requires_grad = True
    t = ng.zeros(2)
    t.requires_grad = True
    assert t.requires_grad
    y = t * 2
    with pytest.raises(RuntimeError):
        y.requires_grad = False
    assert ng.zeros(2, dtype=ng.float64, requires_grad=True).requires_grad


def test_gradient_dtype_matches_leaf():
    a = leaf([1.0, 2.0])
    b = leaf([0.5, 0.25], dtype=ng.float64)
    y = (a * b).exp() + a.sum() / b - a.astype(ng.float64)
    assert y.dtype == ng.float64
    y.sum().backward()
    assert a.grad.dtype == ng.float32 and b.grad.dtype == ng.float64
    an, bn = np.array([1.0, 2.0]), np.array([0.5, 0.25])
    assert_close(a.grad, bn * np.exp(an * bn) + np.sum(1 / bn) - 1, rtol=1e-5)
    assert_close(b.grad, an * np.exp(an * bn) - an.sum() / bn**2, rtol=1e-10)


def test_float32_root_with_float64_grad_argument():
    x = leaf([1.0, 2.0])
    (x * 2).backward(grad=np.array([1.0, 1.0]))
    assert x.grad.dtype == ng.float32


def test_gradcheck_detects_wrong_gradient():
    x = ng.tensor([0.3, 0.7], dtype=ng.float64, requires_grad=True)
    assert ng.autograd.gradcheck(lambda t: t.exp() * t, [x])
    # a function whose backward is deliberately wrong: detach hides one factor
    assert not ng.autograd.gradcheck(lambda t: t * t.detach(), [x], raise_exception=False)
    with pytest.raises(AssertionError):
        ng.autograd.gradcheck(lambda t: t * t.detach(), [x])
    with pytest.raises(TypeError):
        ng.autograd.gradcheck(lambda t: t * t, [ng.tensor([1.0], requires_grad=True)])


def test_gradcheck_multiple_outputs():
    a = ng.tensor([0.3, -0.7], dtype=ng.float64, requires_grad=True)
    b = ng.tensor([1.5, 0.2], dtype=ng.float64, requires_grad=True)
    assert ng.autograd.gradcheck(lambda x, y: (x * y, (x + y).tanh()), [a, b])


def test_leaf_gradients_are_private():
    # add passes its incoming gradient through unchanged: each leaf must still own its .grad
    a, b = leaf([1.0, 2.0]), leaf([3.0, 4.0])
    (a + b).sum().backward()
    assert not a.grad._same_storage(b.grad)
    a.grad.numpy()[:] = 0.0  # e.g. an in-place gradient clip on one parameter
    assert_close(b.grad, [1.0, 1.0])
    # a user-supplied output gradient is copied, not adopted
    x = leaf([1.0, 2.0])
    v = ng.tensor([1.0, 1.0])
    (x + 0.0).backward(v)
    assert not x.grad._same_storage(v)
    x2 = leaf([1.0, 2.0])
    x2.backward(v)
    assert not x2.grad._same_storage(v)
    v.numpy()[:] = 5.0
    assert_close(x.grad, [1.0, 1.0])
    assert_close(x2.grad, [1.0, 1.0])


def test_inplace_write_to_a_saved_input_is_refused_at_backward() -> None:
    w = ng.tensor([1.0, 2.0], requires_grad=True)
    y = (w * w).sum()
    with ng.no_grad():
        w.copy_(ng.tensor([5.0, 5.0]))
    with pytest.raises(RuntimeError, match="modified by an in-place operation"):
        y.backward()
    # a write through a view of a saved (non-grad) input counts too: views share the counter
    a = ng.ones(4, requires_grad=True)
    x = ng.ones(4)
    z = (a * x).sum()
    x[1:3] = 7.0
    with pytest.raises(RuntimeError, match="modified by an in-place operation"):
        z.backward()
    # writes after backward are fine (the optimizer's step)
    b = ng.ones(3, requires_grad=True)
    (b * b).sum().backward()
    with ng.no_grad():
        b.copy_(b - 0.1 * b.grad)
    assert np.allclose(np.asarray(b), 0.8)


def test_no_grad_decorator_survives_recursion() -> None:
    @ng.no_grad()
    def rec(n: int) -> bool:
        inner = ng.is_grad_enabled()
        if n:
            rec(n - 1)
        return inner

    assert rec(3) is False
    assert ng.is_grad_enabled()
    shared = ng.no_grad()
    with shared:
        with shared:
            assert not ng.is_grad_enabled()
        assert not ng.is_grad_enabled()
    assert ng.is_grad_enabled()


def test_concurrent_backward_accumulates_every_update() -> None:
    import threading

    w = ng.ones(20000, requires_grad=True)
    x = ng.ones(20000)

    def work() -> None:
        for _ in range(50):
            (w * x).sum().backward()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert np.all(np.asarray(w.grad) == 200.0)


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "pow", "matmul", "where"])
def test_gradient_when_only_one_input_requires_it(op: str) -> None:
    rng = np.random.default_rng(3)
    an = rng.uniform(0.5, 2.0, (3, 4))
    bn = rng.uniform(0.5, 2.0, (4, 4) if op == "matmul" else (1, 4))
    mask = ng.tensor(rng.random((3, 4)) > 0.5)
    fns = {
        "add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
        "div": lambda a, b: a / b, "pow": lambda a, b: a ** b, "matmul": lambda a, b: a @ b,
        "where": lambda a, b: ng.where(mask, a, b),
    }
    fn = fns[op]

    def grads(need_a: bool, need_b: bool):  # type: ignore[no-untyped-def]
        a = ng.tensor(an, requires_grad=need_a)
        b = ng.tensor(bn, requires_grad=need_b)
        fn(a, b).sum().backward()
        return a.grad, b.grad

    both_a, both_b = grads(True, True)
    only_a, none_b = grads(True, False)
    none_a, only_b = grads(False, True)
    assert none_b is None and none_a is None
    np.testing.assert_array_equal(np.asarray(only_a), np.asarray(both_a))
    np.testing.assert_array_equal(np.asarray(only_b), np.asarray(both_b))
