"""Issue 6, "no crash from crafted sizes": products and sums of sizes never wrap.

Each size is valid on its own, but a product the op forms (the padded input N*Hp*Wp*C of a
convolution, the joined axis of a concatenate, M*N*K of a matmul of broadcast views, a pooling
window's area) overflowed int64 and led to a tiny buffer that was then overrun, an endless
loop, or a silent wrong answer. Now each such size is checked: ValueError naming the shapes
when it cannot even be counted, MemoryError (before allocating) when it is countable but larger
than the machine, and a correct result when the op is valid and its output small.

Before the fix several cases below ended the interpreter (segfault, SIGFPE) or never returned,
so every case runs in a fresh interpreter: a regression is a failing test, not a crashed pytest.
Cases that failed on the original code are marked "was: ...".
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

PRELUDE = textwrap.dedent(
    """
    import numpy as np
    import nablagrad as ng
    import nablagrad.functional as F

    def expect(fn, exc, *needles):
        try:
            fn()
        except exc as e:
            for n in needles:
                assert n in str(e), f"message {str(e)!r} lacks {n!r}"
            return
        raise AssertionError(f"expected {exc.__name__}")

    def naive_conv(x, w, b, s, p, dy):
        # Output and gradients of conv2d (NHWC, one stride s and padding p for both axes),
        # reading the padding as zeros without materialising it.
        N, H, W, C = x.shape
        Q, FH, FW, _ = w.shape
        Ho, Wo = (H + 2 * p - FH) // s + 1, (W + 2 * p - FW) // s + 1
        y = np.zeros((N, Ho, Wo, Q)) + b
        dx, dw = np.zeros(x.shape), np.zeros(w.shape)
        for n in range(N):
            for i in range(Ho):
                for j in range(Wo):
                    for a in range(FH):
                        for c in range(FW):
                            ih, iw = i * s - p + a, j * s - p + c
                            if 0 <= ih < H and 0 <= iw < W:
                                y[n, i, j] += w[:, a, c, :] @ x[n, ih, iw]
                                dx[n, ih, iw] += dy[n, i, j] @ w[:, a, c, :]
                                dw[:, a, c, :] += np.outer(dy[n, i, j], x[n, ih, iw])
        return y, dx, dw, dy.sum(axis=(0, 1, 2))
    """
)


def run_isolated(code: str, timeout: float = 90) -> None:
    """Runs code after PRELUDE in a fresh interpreter; it must exit 0 having printed ok."""
    try:
        r = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(code) + "\nprint('ok')\n"],
                           capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"did not finish within {timeout} s (an endless loop over a wrapped size?)")
    how = f"killed by signal {-r.returncode}" if r.returncode < 0 else f"exit status {r.returncode}"
    assert r.returncode == 0, f"{how}\n{r.stderr[-3000:]}"
    assert r.stdout.strip().endswith("ok"), r.stdout[-2000:]


# (expression, exception, substrings of the message)
ERRORS = [
    # The case. was: segfault (N*Hp*Wp*C wrapped in the direct forward's buffer size).
    ("F.conv2d(ng.zeros(1, 6710886, 1, 1), ng.zeros(8, 1, 1, 1), stride=2**40, padding=2**40)",
     ValueError, ["conv2d", "padded input", "(input (1,6710886,1,1), kernel (8,1,1,1))"]),
    ("F.conv2d(ng.zeros(2, 6710886, 3, 2), ng.zeros(8, 3, 3, 2), stride=(2**40, 1), padding=(2**40, 2**39))",
     ValueError, ["padded input"]),
    ("ng._core.conv2d_reference(ng.zeros(1, 6710886, 1, 1), ng.zeros(8, 1, 1, 1), None, 2**40, 2**40, 2**40, "
     "2**40, 2**40, 2**40)", ValueError, ["padded input"]),
    # Countable but beyond memory: the reference path materialises the padded input (2^42 values).
    ("ng._core.conv2d_reference(ng.zeros(1, 4, 4, 1), ng.zeros(8, 1, 1, 1), None, 2**40, 2**40, 2**20, 2**20, "
     "2**20, 2**20)", MemoryError, ["conv2d_reference"]),
    ("ng._core.conv2d_reference_backward(ng.zeros(1, 4, 4, 1), ng.zeros(8, 1, 1, 1), ng.zeros(1, 3, 3, 8), "
     "2**20 + 1, 2**20 + 1, 2**20, 2**20, 2**20, 2**20)", MemoryError, ["conv2d_reference_backward"]),
    # A huge kernel (a broadcast view): the geometry fits, the kernel's copy does not.
    ("F.conv2d(ng.zeros(1, 1, 1, 1), ng.zeros(1, 1, 1, 1).expand(1, 2**31, 2**31, 1), padding=2**30)",
     MemoryError, ["too large"]),
    ("F.conv2d(ng.zeros(1, 5, 5, 3), ng.zeros(4, 3, 3, 3), padding=2**40)", ValueError, ["padded input"]),
    # Pooling: the window area KH*KW overflows. was: avg_pool2d returned inf (divisor wrapped to 0).
    ("F.max_pool2d(ng.ones(1, 2, 2, 1), kernel_size=2**33, stride=1, padding=2**32)", ValueError,
     ["max_pool2d", "window"]),
    ("F.avg_pool2d(ng.ones(1, 2, 2, 1), kernel_size=2**33, stride=1, padding=2**32)", ValueError,
     ["avg_pool2d", "window"]),
    ("F.avg_pool2d(ng.ones(1, 1, 1, 1), kernel_size=(2**62, 2**62), stride=1, padding=2**61)", ValueError,
     ["avg_pool2d", "window"]),
    ("F.max_pool2d(ng.ones(1, 5, 5, 3), 2**63 - 1, padding=2**62 - 1)", ValueError, ["max_pool2d"]),
    # matmul of stride-0 views: M*N*K = 2^64. was: wrapped to 0, naive loop of 2^60 steps (hang).
    ("ng.zeros(1, 1).expand(4, 2**60) @ ng.zeros(1, 1).expand(2**60, 4)", ValueError,
     ["matmul", "multiply-adds", "(4, 1152921504606846976)"]),
    ("ng.zeros(1, 1, 2, 2).expand(2**40, 1, 2, 2) @ ng.zeros(1, 1, 2, 2).expand(1, 2**40, 2, 2)", ValueError,
     ["matmul: shapes", "too many elements"]),
    # concatenate / stack of huge views. was: 4 * 2^62 wrapped to 0 -> empty output, then segfault.
    ("ng.concatenate([ng.zeros(1).expand(2**62)] * 4)", ValueError, ["concatenate", "overflows int64"]),
    ("ng.concatenate([ng.zeros(1).expand(2**62)] * 5)", ValueError, ["concatenate"]),
    ("ng.concatenate([ng.zeros(1, 1).expand(2, 2**61)] * 3, axis=0)", ValueError, ["concatenate", "too many"]),
    ("ng.stack([ng.zeros(1).expand(2**62)] * 4)", ValueError, ["too many elements"]),
    # Shapes: a zero-size tensor cannot take a shape whose other sizes overflow.
    # was: ng.zeros(0).reshape(0, 2**62, 4) succeeded (and later products of its sizes wrapped).
    ("ng.zeros(0).reshape(0, 2**62, 4)", ValueError, ["too many elements"]),
    ("ng.zeros(0).reshape(-1, 2**62, 4)", ValueError, ["reshape", "too many elements"]),
    ("ng.zeros(0, 3).reshape(2**62, 0, 4)", ValueError, ["too many elements"]),
    ("ng.zeros(1, 1).expand(2**32, 2**32)", ValueError, ["too many elements"]),
    ("ng.zeros(1, 1).expand(2**40, 1) + ng.zeros(1, 1).expand(1, 2**40)", ValueError, ["too many elements"]),
    # Indexing.
    ("ng.zeros(4, 4)[2**62]", IndexError, ["out of bounds"]),
    ("ng.zeros(4, 4)[:, -2**63]", IndexError, ["out of bounds"]),
    ("ng.zeros(1, 1).expand(2, 2**61)[ng.tensor([0, 1] * 4)]", ValueError, ["index", "too many elements"]),
    # Factories.
    ("ng.zeros(2**32, 2**32)", ValueError, ["too many elements"]),
    ("ng.zeros(0, 2**62, 4)", ValueError, ["too many elements"]),
    ("ng.full((2**62, 4), 1.0)", ValueError, ["too many elements"]),
    ("ng.rand(2**32, 2**32)", ValueError, ["too many elements"]),
    ("ng.randn(2**62, 2)", ValueError, ["too many elements"]),
    ("ng.zeros(2**40)", MemoryError, ["cannot allocate"]),
    ("ng.zeros(2**61, dtype=ng.float64)", MemoryError, []),
    ("ng.zeros(1).expand(2**62).sum()", MemoryError, []),
]


@pytest.mark.parametrize("expr,exc,needles", ERRORS, ids=[e[0][:60] for e in ERRORS])
def test_crafted_sizes_raise(expr: str, exc: type, needles: list) -> None:
    run_isolated(f"expect(lambda: {expr}, {exc.__name__}, *{needles!r})")


def test_arange_with_overflowing_size_raises() -> None:
    # was: ng.arange(-2**62, 2**62) gave an empty tensor (NumPy's length wraps in int64).
    run_isolated("""
        expect(lambda: ng.arange(-2**62, 2**62), ValueError, "arange", "more than int64")
        expect(lambda: ng.arange(2**63 - 1, -2**63, -1), ValueError, "arange")
        expect(lambda: ng.arange(0.0, float("inf")), ValueError, "arange")
        for args in [(0, 2**62), (-2**62, 2**62, 1), (0.0, 1e300, 1e-300)]:
            try:
                ng.arange(*args)
            except (ValueError, MemoryError):
                pass
            else:
                raise AssertionError(args)
        assert ng.arange(0, 10, 2**62).numpy().tolist() == [0]
    """)


# Valid convolutions whose padded input or padded-row extension is huge (or overflows) but whose
# output is a few pixels. was: segfault (forward_direct's and the small-C weight gradient's
# padded copies), or an endless loop over the S_h * S_w = 2^80 phases of the input gradient.
CONVS = [
    # (N, H, W, C, Q, F, stride, padding)
    (2, 4, 5, 1, 8, 1, 2**20 + 1, 2**20),   # 3x3 output; the centre reads the input
    (1, 5, 4, 3, 8, 3, 2**20 - 1, 2**20),   # 3x3 kernel taps on the input's edges
    (1, 4, 4, 8, 2, 1, 2**20 + 1, 2**20),
    (1, 4, 4, 1, 8, 1, 2**40, 2**20),       # 1x1 output, all padding
    (2, 3, 3, 2, 8, 2, 2**62, 0),           # stride * (Wo + 5) overflows
    (1, 6, 6, 4, 16, 3, 2**30, 2**29),      # padded input 2^62 values: countable, never built
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_conv2d_huge_stride_and_padding_values(dtype: str) -> None:
    run_isolated(f"""
        rng = np.random.default_rng(0)
        dt = getattr(np, "{dtype}")
        tol = 1e-4 if dt == np.float32 else 1e-10
        for (N, H, W, C, Q, Fk, s, p) in {CONVS!r}:
            x = rng.standard_normal((N, H, W, C))
            w = rng.standard_normal((Q, Fk, Fk, C))
            b = rng.standard_normal(Q)
            Ho, Wo = (H + 2 * p - Fk) // s + 1, (W + 2 * p - Fk) // s + 1
            dy = rng.standard_normal((N, Ho, Wo, Q))
            y0, dx0, dw0, db0 = naive_conv(x, w, b, s, p, dy)
            xt = ng.tensor(x.astype(dt), requires_grad=True)
            wt = ng.tensor(w.astype(dt), requires_grad=True)
            bt = ng.tensor(b.astype(dt), requires_grad=True)
            y = F.conv2d(xt, wt, bt, stride=s, padding=p)
            assert y.shape == (N, Ho, Wo, Q), y.shape
            (y * ng.tensor(dy.astype(dt))).sum().backward()
            for got, want in [(y, y0), (xt.grad, dx0), (wt.grad, dw0), (bt.grad, db0)]:
                np.testing.assert_allclose(got.numpy(), want, rtol=tol, atol=tol)
            # no graph, and each backward pass on its own (bias-only, input-only, weight-only)
            with ng.no_grad():
                np.testing.assert_allclose(F.conv2d(ng.tensor(x.astype(dt)), ng.tensor(w.astype(dt)),
                                                    stride=s, padding=p).numpy(), y0 - b, rtol=tol, atol=tol)
    """, timeout=120)


def test_matmul_with_empty_inner_dimension() -> None:
    # was: SIGFPE (the folded batch's row count was numel / K with K == 0).
    run_isolated("""
        a = ng.zeros(2, 3, 0, requires_grad=True)
        b = ng.zeros(0, 4, requires_grad=True)
        c = a @ b
        assert c.shape == (2, 3, 4) and not c.numpy().any()
        c.sum().backward()
        assert a.grad.shape == (2, 3, 0) and b.grad.shape == (0, 4)
    """)


def test_huge_slice_steps_give_sane_views() -> None:
    run_isolated("""
        x = ng.tensor(np.arange(16.0).reshape(4, 4))
        v = x[::2**62]
        assert v.shape == (1, 4) and v.numpy().tolist() == [[0.0, 1.0, 2.0, 3.0]]
        v = x[::-2**62, ::2**63 - 1]
        assert v.shape == (1, 1) and v.item() == 12.0
        assert (x[::2**62].T @ x[:1]).shape == (4, 4)
        assert x[2**62:].shape == (0, 4) and x[-2**63:].shape == (4, 4)
    """)


def test_sizes_beyond_int64_are_a_value_error():
    # Python ints beyond int64 must not surface as pybind11's "incompatible arguments".
    import nablagrad as ng
    import nablagrad.functional as F
    x = ng.zeros(1, 4, 4, 1)
    w = ng.zeros(2, 1, 1, 1)
    for kw in ({"stride": 2**64}, {"padding": (0, 2**70)}):
        with pytest.raises(ValueError, match="out of range"):
            F.conv2d(x, w, **kw)
    with pytest.raises(ValueError, match="out of range"):
        F.max_pool2d(x, 2**64)
