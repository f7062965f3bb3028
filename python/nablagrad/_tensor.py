"""Tensor construction, conversion rules and the Python-side Tensor methods.

The Tensor class itself is the C++ ``_core.Tensor``; this module adds the few methods
that are clearer in Python (``repr``, ``T``) and the factories with PyTorch's dtype rules.
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple, TypeVar, Union

import numpy as np

from . import _core

Tensor = _core.Tensor
dtype = _core.dtype
float32 = _core.dtype.float32
float64 = _core.dtype.float64
int64 = _core.dtype.int64
bool_ = _core.dtype.bool

_F = TypeVar("_F", bound=Callable[..., Any])


def _resolve_dtype(d: Any) -> Optional[_core.dtype]:
    """None stays None; nablagrad dtypes, NumPy dtypes/types and names are accepted."""
    if d is None or isinstance(d, _core.dtype):
        return d
    if d is bool:
        return bool_
    if d is float:
        return float32
    if d is int:
        return int64
    if isinstance(d, str) and d in ("float32", "float64", "int64", "bool"):
        return getattr(_core.dtype, d)  # type: ignore[no-any-return]
    try:
        npd = np.dtype(d)
    except TypeError:
        raise TypeError(f"not a dtype: {d!r}") from None
    if npd == np.float32:
        return float32
    if npd == np.float64:
        return float64
    if npd == np.int64:
        return int64
    if npd == np.bool_:
        return bool_
    raise TypeError(f"unsupported dtype {npd} (nablagrad supports float32, float64, int64 and bool)")


_INT64_MAX = np.iinfo(np.int64).max


def _to_int64(arr: np.ndarray) -> np.ndarray:
    """Integer array -> int64; uint64 values above int64's range raise OverflowError (no wrap-around)."""
    if arr.dtype == np.uint64 and arr.size and int(arr.max()) > _INT64_MAX:
        raise OverflowError(f"value {int(arr.max())} does not fit in int64")
    return arr.astype(np.int64)


def _check_object_array(arr: np.ndarray, data: Any) -> None:
    """NumPy makes object arrays from Python ints beyond int64: report those as an overflow."""
    if arr.dtype.kind == "O" and arr.size and all(
            isinstance(v, int) and not isinstance(v, bool) for v in arr.flat):
        big = max(arr.flat, key=abs)
        raise OverflowError(f"Python int {big} does not fit in int64")


def _infer_numpy(data: Any, want: Any = None) -> np.ndarray:
    """Data -> NumPy array following PyTorch's inference: Python floats -> float32, unless the
    caller asked for float64 (``want``), whose values must not pass through float32."""
    if isinstance(data, np.ndarray) or isinstance(data, np.generic):
        arr = np.asarray(data)
        kind = arr.dtype.kind
        if kind == "f" and arr.dtype.itemsize in (4, 8):
            return arr
        if kind == "b":
            return arr
        if kind in "iu":
            return _to_int64(arr)
        raise TypeError(
            f"unsupported NumPy dtype {arr.dtype} (nablagrad supports float32, float64, int64 and bool)"
        )
    if isinstance(data, Tensor):
        return np.asarray(data)
    if isinstance(data, (list, tuple)):
        data = [np.asarray(d) if isinstance(d, Tensor) else d for d in data]
    try:
        arr = np.array(data)
    except ValueError as e:
        raise ValueError(f"cannot build a tensor from ragged or malformed data: {e}") from None
    except OverflowError as e:
        raise OverflowError(f"cannot build a tensor: {e} (nablagrad's integers are int64)") from None
    _check_object_array(arr, data)
    kind = arr.dtype.kind
    if kind == "f" and arr.size:
        with np.errstate(invalid="ignore"):
            big = bool((np.abs(arr) >= 2.0**63).any())
        if big:
            _check_big_ints(data)
    if kind == "f":
        # Python floats default to float32 (a float64 array inside a list keeps float64).
        keep = want is float64 or _contains_float64_array(data)
        return arr if keep else arr.astype(np.float32)
    if kind == "b":
        return arr
    if kind in "iu":
        return _to_int64(arr)
    raise TypeError(f"cannot build a tensor from {type(data).__name__} data (NumPy made dtype {arr.dtype})")


def _check_big_ints(data: Any) -> None:
    """NumPy turns [2**64 - 1, 0] (Python ints only) into float64: as PyTorch, that is an overflow."""
    leaves: List[Any] = []
    stack = [data]
    while stack:
        d = stack.pop()
        if isinstance(d, (list, tuple)):
            stack.extend(d)
        else:
            leaves.append(d)
    if leaves and all(isinstance(v, int) and not isinstance(v, bool) for v in leaves):
        big = max(leaves, key=abs)
        raise OverflowError(f"Python int {big} does not fit in int64")


def _contains_float64_array(data: Any) -> bool:
    if isinstance(data, np.ndarray):
        return bool(data.dtype == np.float64)
    if isinstance(data, (list, tuple)):
        return any(_contains_float64_array(d) for d in data)
    return False


def _c_contiguous(arr: np.ndarray) -> np.ndarray:
    """C-contiguous, aligned, native-byte-order version of ``arr`` (a copy only when needed);
    keeps 0-d arrays 0-d (np.ascontiguousarray makes them 1-d)."""
    native = arr.dtype.newbyteorder("=")
    if arr.flags.c_contiguous and arr.flags.aligned and arr.dtype == native and arr.dtype.byteorder in "=|":
        return arr
    return np.array(arr, dtype=native, order="C", copy=True)


def _as_tensor(data: Any) -> Tensor:
    """Converter used by the C++ bindings for non-scalar operands (copies)."""
    if isinstance(data, Tensor):
        return data
    arr = _c_contiguous(_infer_numpy(data))
    return _core._copy_from_numpy(arr, _core._dtype_of_numpy(arr.dtype))


def tensor(data: Any, dtype: Any = None, requires_grad: bool = False) -> Tensor:
    """A new tensor holding a copy of ``data`` (nested lists, scalars, arrays or tensors).

    >>> ng.tensor([[1.0, 2.0], [3.0, 4.0]]).shape
    (2, 2)
    """
    d = _resolve_dtype(dtype)
    if isinstance(data, Tensor):
        arr = np.asarray(data)
    else:
        arr = _infer_numpy(data, d)
    arr = _c_contiguous(arr)
    target = d if d is not None else _core._dtype_of_numpy(arr.dtype)
    t = _core._copy_from_numpy(arr, target)
    if requires_grad:
        t.requires_grad = True
    return t


def from_numpy(a: np.ndarray) -> Tensor:
    """A tensor sharing memory with ``a`` (float32, float64, int64 or bool)."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"from_numpy expects a NumPy array, got {type(a).__name__}")
    return _core.from_numpy(a)


def _shape_arg(shape: Sequence[Any]) -> Tuple[int, ...]:
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    for s in shape:
        if not isinstance(s, (int, np.integer)) or isinstance(s, bool):
            raise TypeError(f"shape entries must be integers, got {s!r}")
        if s < 0:
            raise ValueError(f"negative dimension {s} in shape {tuple(shape)}")
    return tuple(int(s) for s in shape)


def _finish(t: Tensor, requires_grad: bool) -> Tensor:
    if requires_grad:
        t.requires_grad = True
    return t


def _float_dtype(dtype: Any, name: str) -> _core.dtype:
    d = _resolve_dtype(dtype) or float32
    return d


def zeros(*shape: Any, dtype: Any = None, requires_grad: bool = False) -> Tensor:
    return _finish(_core.zeros(_shape_arg(shape), _resolve_dtype(dtype) or float32), requires_grad)


def ones(*shape: Any, dtype: Any = None, requires_grad: bool = False) -> Tensor:
    return _finish(_core.full(_shape_arg(shape), 1.0, _resolve_dtype(dtype) or float32), requires_grad)


def empty(*shape: Any, dtype: Any = None, requires_grad: bool = False) -> Tensor:
    return _finish(_core.empty(_shape_arg(shape), _resolve_dtype(dtype) or float32), requires_grad)


def full(shape: Any, fill_value: Union[int, float, bool], dtype: Any = None, requires_grad: bool = False) -> Tensor:
    if isinstance(shape, (int, np.integer)):
        shape = (shape,)
    if isinstance(fill_value, (str, bytes)) or not hasattr(fill_value, "__float__"):
        raise TypeError(f"full: fill_value must be a number, got {type(fill_value).__name__}")
    d = _resolve_dtype(dtype)
    if d is None:
        d = bool_ if isinstance(fill_value, bool) else int64 if isinstance(fill_value, int) else float32
    if d == int64 and isinstance(fill_value, int) and not -_INT64_MAX - 1 <= fill_value <= _INT64_MAX:
        raise OverflowError(f"full: fill value {fill_value} does not fit in int64")
    if d == int64 and isinstance(fill_value, int) and abs(fill_value) > 2**53:  # beyond float64's exact ints
        t = _core.zeros(_shape_arg(tuple(shape)), d)
        t.copy_(fill_value)
        return _finish(t, requires_grad)
    return _finish(_core.full(_shape_arg(tuple(shape)), float(fill_value), d), requires_grad)


def _like(t: Any, name: str) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} expects a Tensor, got {type(t).__name__}")


def zeros_like(t: Tensor, dtype: Any = None, requires_grad: bool = False) -> Tensor:
    _like(t, "zeros_like")
    return zeros(t.shape, dtype=dtype or t.dtype, requires_grad=requires_grad)


def ones_like(t: Tensor, dtype: Any = None, requires_grad: bool = False) -> Tensor:
    _like(t, "ones_like")
    return ones(t.shape, dtype=dtype or t.dtype, requires_grad=requires_grad)


def arange(start: float, stop: Optional[float] = None, step: float = 1, dtype: Any = None,
           requires_grad: bool = False) -> Tensor:
    """Values from ``start`` to ``stop`` (exclusive) by ``step``; ints give int64, floats float32."""
    if stop is None:
        start, stop = 0, start
    for name, v in (("start", start), ("stop", stop), ("step", step)):
        if isinstance(v, (bool, np.bool_)) or not (isinstance(v, (int, np.integer)) or hasattr(v, "__float__")):
            raise TypeError(f"arange: {name} must be a number, got {type(v).__name__}")
    if step == 0:
        raise ValueError("arange: step must be nonzero")
    d = _resolve_dtype(dtype)
    all_int = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (start, stop, step))
    if d is None:
        d = int64 if all_int else float32
    np_dtype = {float32: np.float32, float64: np.float64, int64: np.int64, bool_: np.bool_}[d]
    # The length, counted exactly before NumPy counts it in int64 (np.arange(-2**62, 2**62)
    # wraps to an empty array): more elements than int64 holds is a ValueError.
    if all_int:
        start, stop, step = int(start), int(stop), int(step)
        length: float = max(0, -((start - stop) // step))  # ceil((stop - start) / step)
    else:
        q = (float(stop) - float(start)) / float(step)
        length = max(0, math.ceil(q)) if math.isfinite(q) else math.inf
    if length > _INT64_MAX:
        raise ValueError(f"arange: start={start}, stop={stop}, step={step} gives {length} elements, "
                         "more than int64 can count")
    nbytes = length * np.dtype(np_dtype).itemsize
    if nbytes > _INT64_MAX:  # (NumPy's own count of such a range overflows: an empty array)
        raise ValueError(f"arange: start={start}, stop={stop}, step={step} gives {length} elements "
                         f"({nbytes} bytes), more than int64 can count")
    if length == 0:  # (np.arange(0, 1, -1e-57) raises: NumPy's own length count overflows)
        arr: np.ndarray = np.zeros(0, dtype=np_dtype)
    elif all_int:
        last = start + (int(length) - 1) * step
        if min(start, last) < -_INT64_MAX - 1 or max(start, last) > _INT64_MAX:
            raise OverflowError(f"arange: start={start}, stop={stop}, step={step} has values beyond int64")
        # start + i * step in wrapping int64 arithmetic: exact, since every value fits in int64
        # (NumPy's own np.arange computes stop - start, which can overflow: -2**63 .. 2**62).
        wrap = lambda v: (v + 2**63) % 2**64 - 2**63  # noqa: E731
        with np.errstate(over="ignore"):
            arr = (np.arange(int(length), dtype=np.int64) * np.int64(wrap(step)) + np.int64(start)).astype(np_dtype)
    else:
        arr = np.arange(start, stop, step, dtype=np.float64).astype(np_dtype)
    return _finish(_core._copy_from_numpy(_c_contiguous(arr), d), requires_grad)


def rand(*shape: Any, dtype: Any = None, requires_grad: bool = False) -> Tensor:
    d = _resolve_dtype(dtype) or float32
    return _finish(_core.rand(_shape_arg(shape), d), requires_grad)


def randn(*shape: Any, dtype: Any = None, requires_grad: bool = False) -> Tensor:
    d = _resolve_dtype(dtype) or float32
    return _finish(_core.randn(_shape_arg(shape), d), requires_grad)


class _GradMode(contextlib.ContextDecorator):
    """Sets grad mode on entry and restores the previous mode on exit. Each entry pushes its
    own previous state, and a decorated function gets a fresh instance per call, so
    recursion, nesting and several threads sharing one instance stay correct."""

    _enabled = True

    def __init__(self) -> None:
        self._prev = threading.local()

    def _recreate_cm(self) -> "_GradMode":
        return type(self)()

    def __enter__(self) -> "_GradMode":
        stack = getattr(self._prev, "stack", None)
        if stack is None:
            stack = self._prev.stack = []
        stack.append(_core._set_grad_enabled(self._enabled))
        return self

    def __exit__(self, *exc: Any) -> None:
        _core._set_grad_enabled(self._prev.stack.pop())


class no_grad(_GradMode):
    """Context manager (and decorator) under which no graph is recorded (per thread)."""

    _enabled = False


class enable_grad(_GradMode):
    """Context manager (and decorator) re-enabling graph recording inside ``no_grad``."""

    _enabled = True


# ---------------------------------------------------------------------------------------
# Python-side Tensor methods
# ---------------------------------------------------------------------------------------
def _repr(self: Tensor) -> str:
    empty = self.numel() == 0  # printed without NumPy, which refuses shapes such as (0, 2**62)
    arr = None if empty else np.asarray(self)
    extras = []
    if self.dtype not in (float32, int64, bool_):
        extras.append(f"dtype={self.dtype!r}")
    if self.requires_grad:
        if self.grad_fn_name is not None:
            extras.append(f"grad_fn=<{self.grad_fn_name}>")
        else:
            extras.append("requires_grad=True")
    if arr is None:
        body = f"[], size={self.shape}" if self.ndim > 1 else "[]"
    else:
        body = np.array2string(arr, separator=", ", prefix="tensor(",
                               precision=4, suppress_small=False, threshold=1000)
    return "tensor(" + body + "".join(", " + e for e in extras) + ")"


def _T(self: Tensor) -> Tensor:
    if self.ndim != 2:
        raise ValueError(f".T expects a 2-D tensor, got shape {self.shape}; use permute for other ranks")
    return self.transpose(0, 1)


def _iter(self: Tensor) -> Iterator[Tensor]:
    if self.ndim == 0:
        raise TypeError("iteration over a 0-d tensor")
    return (self[i] for i in range(self.shape[0]))


# Attached after the class exists (the class is the C++ one); the stub declares them.
setattr(Tensor, "__iter__", _iter)
setattr(Tensor, "__repr__", _repr)
setattr(Tensor, "__str__", _repr)
setattr(Tensor, "T", property(_T))
Tensor.__module__ = "nablagrad"


def _dtype_repr(self: _core.dtype) -> str:
    return f"nablagrad.{self.name}"


setattr(_core.dtype, "__repr__", _dtype_repr)
setattr(_core.dtype, "__str__", _dtype_repr)
