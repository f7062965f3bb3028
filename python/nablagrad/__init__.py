"""nablagrad: a small deep-learning engine with a C++17 autograd core.

    >>> import nablagrad as ng
    >>> x = ng.tensor([1.0, 2.0, 3.0], requires_grad=True)
    >>> (x * x).sum().backward()
    >>> x.grad
    tensor([2., 4., 6.])
"""

from __future__ import annotations

import operator
from typing import Any, Iterable

from . import _core
from ._tensor import (
    Tensor,
    arange,
    bool_,
    dtype,
    empty,
    enable_grad,
    float32,
    float64,
    from_numpy,
    full,
    int64,
    no_grad,
    ones,
    ones_like,
    rand,
    randn,
    tensor,
    zeros,
    zeros_like,
)

# `ng.bool` is the bool dtype, as in the API contract (the builtin stays reachable as builtins.bool).
globals()["bool"] = bool_

manual_seed = _core.manual_seed
set_num_threads = _core.set_num_threads
get_num_threads = _core.get_num_threads
is_grad_enabled = _core.is_grad_enabled


def get_include() -> str:
    """The folder holding the C++ headers (``#include <nablagrad/nablagrad.h>``), for
    ``g++ -I "$(python -c 'import nablagrad; print(nablagrad.get_include())')"``: the copy
    installed with the package, or ``cpp/include`` of a source checkout."""
    import os

    here = os.path.dirname(os.path.realpath(__file__))
    candidates = [
        os.path.join(here, "include"),  # installed: the wheel carries the headers
        os.path.join(os.path.dirname(os.path.dirname(here)), "cpp", "include"),  # checkout
    ]
    for c in candidates:
        if os.path.isfile(os.path.join(c, "nablagrad", "nablagrad.h")):
            return c
    raise FileNotFoundError("nablagrad's C++ headers were not found next to the package "
                            f"(looked in {candidates})")


def where(cond: Any, a: Any, b: Any) -> Tensor:
    """Elementwise ``a`` where ``cond`` is true, else ``b`` (broadcasting; differentiable in a, b)."""
    return _core.where(cond, a, b)


def concatenate(tensors: Iterable[Tensor], axis: int = 0) -> Tensor:
    """Joins tensors along an existing axis (differentiable)."""
    return _core.concatenate(list(tensors), operator.index(axis))


def stack(tensors: Iterable[Tensor], axis: int = 0) -> Tensor:
    """Joins tensors along a new axis (differentiable)."""
    return _core.stack(list(tensors), operator.index(axis))


from . import autograd, functional, nn, optim  # noqa: E402
from . import data  # noqa: E402
from . import backends  # noqa: E402  (ng.backends.conv_algorithm)
from . import distributed  # noqa: E402  (MPI is touched only by distributed.init())
from . import onnx  # noqa: E402  (ng.onnx.export; the onnx package is imported on first use)
from .io import load, save  # noqa: E402
from .dlpack import from_dlpack  # noqa: E402  (Tensor.__dlpack__ is bound in C++)

__version__ = "0.1.0"

__all__ = [
    "Tensor", "dtype", "float32", "float64", "int64", "bool", "tensor", "from_numpy", "zeros", "ones",
    "full", "empty", "zeros_like", "ones_like", "arange", "rand", "randn", "manual_seed", "concatenate",
    "stack", "where", "no_grad", "enable_grad", "set_num_threads", "get_num_threads", "is_grad_enabled",
    "functional", "autograd", "nn", "optim",
    "data", "save", "load", "get_include",
]
__all__ += ["distributed"]
__all__ += ["backends"]
__all__ += ["onnx"]
__all__ += ["from_dlpack"]
