"""DLPack interchange: ``ng.from_dlpack(x)`` and ``Tensor.__dlpack__`` (bound in C++).

Zero-copy both ways with any DLPack producer/consumer on the CPU::

    >>> import numpy as np, nablagrad as ng
    >>> a = np.arange(4.0)
    >>> t = ng.from_dlpack(a)      # shares a's memory
    >>> a[0] = 7.0
    >>> t[0].item()
    7.0
    >>> b = np.from_dlpack(t)      # and back: b, t and a are one buffer
    >>> b[1] = -1.0
    >>> float(a[1])
    -1.0

What is copied (nablagrad has no read-only tensors and its kernels need aligned data):
a producer that flags its data read-only (NumPy's read-only arrays, a nablagrad tensor that
requires grad), data not aligned to its item size, and every ``copy=True`` request. Strided
and negative-stride layouts are shared as they are. Other dtypes than float32, float64, int64
and bool raise TypeError; data on a device the CPU cannot read raises BufferError.
"""

from __future__ import annotations

from typing import Any, Optional

from . import _core
from ._tensor import Tensor

# DLPack device types whose memory the CPU reads directly: CPU, CUDA host (pinned), ROCm host
# and CUDA managed memory (as NumPy accepts).
_CPU_READABLE = {1: "CPU", 3: "CUDA host", 11: "ROCm host", 13: "CUDA managed"}
_DEVICE_NAMES = {2: "CUDA", 4: "OpenCL", 7: "Vulkan", 8: "Metal", 9: "VPI", 10: "ROCm", 12: "ext_dev",
                 14: "oneAPI", 15: "WebGPU", 16: "Hexagon", 17: "MAIA"}

# The newest DLPack this build reads (any 1.x capsule has the same layout).
_MAX_VERSION = (1, 1)


def _check_device(device: Any) -> None:
    if device is None or device == "cpu":
        return
    if isinstance(device, tuple) and len(device) == 2 and int(device[0]) == 1 and int(device[1]) == 0:
        return
    raise ValueError(f"from_dlpack: nablagrad tensors live in CPU memory; device must be None or 'cpu', got {device!r}")


def from_dlpack(x: Any, /, *, device: Any = None, copy: Optional[bool] = None) -> Tensor:
    """A Tensor sharing the memory of ``x``, any object with ``__dlpack__`` (a NumPy array, a
    torch tensor, a nablagrad Tensor, ...) or a DLPack capsule.

    ``copy=None`` shares the memory when it can and copies when it must (read-only or misaligned
    data); ``copy=True`` always copies; ``copy=False`` never does and raises BufferError where a
    copy would be needed. The producer stays alive while any view of the tensor does.
    Unsupported dtypes (float16, complex, int32, ...) raise TypeError.
    """
    _check_device(device)
    if copy is not None and not isinstance(copy, bool):
        raise TypeError(f"from_dlpack: copy must be None, True or False, got {copy!r}")
    if not hasattr(x, "__dlpack__"):
        if type(x).__name__ == "PyCapsule":
            return _core._from_dlpack_capsule(x, force_copy=copy is True, allow_copy=copy is not False)
        raise TypeError(
            f"from_dlpack: expected an object with __dlpack__ (a NumPy array, a torch tensor, ...) or a DLPack "
            f"capsule, got {type(x).__name__}")
    dev_type, dev_id = x.__dlpack_device__()
    if int(dev_type) not in _CPU_READABLE:
        name = _DEVICE_NAMES.get(int(dev_type), f"type {int(dev_type)}")
        raise BufferError(
            f"from_dlpack: the data is on a {name} device (DLPack device ({int(dev_type)}, {int(dev_id)})), which the "
            "CPU cannot read; nablagrad tensors live in CPU memory: move it to the CPU first (e.g. x.cpu())")
    producer_copies = copy is not None
    try:
        kwargs: dict = {"max_version": _MAX_VERSION}
        if copy is not None:
            kwargs["copy"] = copy
        capsule = x.__dlpack__(**kwargs)
    except TypeError:
        # A producer from before the 2023 keywords: legacy capsule, and copies are ours to make.
        capsule = x.__dlpack__()
        producer_copies = False
    return _core._from_dlpack_capsule(capsule, force_copy=copy is True and not producer_copies,
                                      allow_copy=copy is not False)


__all__ = ["from_dlpack"]
