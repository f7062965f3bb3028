"""``nablagrad.nn.init``: in-place initialisers with PyTorch's signatures and rules.

Each function fills ``tensor`` in place under ``no_grad`` from the seeded generator
(``ng.manual_seed``) and returns it. Fans follow nablagrad's layouts: a Linear weight
(out, in) has fan_in = in, fan_out = out; a convolution kernel (Q, FH, FW, C) has
fan_in = FH*FW*C and fan_out = Q*FH*FW (the same numbers PyTorch gets from (Q, C, FH, FW)).
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

from .. import _core
from .._tensor import Tensor, no_grad

__all__ = [
    "calculate_gain", "uniform_", "normal_", "constant_", "zeros_", "ones_", "xavier_uniform_",
    "xavier_normal_", "kaiming_uniform_", "kaiming_normal_",
]


def _check(tensor: Tensor, fn: str) -> None:
    if not isinstance(tensor, Tensor):
        raise TypeError(f"nn.init.{fn}: expected a Tensor, got {type(tensor).__name__}")


def _check_float(tensor: Tensor, fn: str) -> None:
    _check(tensor, fn)
    if not tensor.dtype.is_floating_point:
        raise TypeError(f"nn.init.{fn}: needs a floating point tensor, got dtype {tensor.dtype!r}")


def calculate_gain(nonlinearity: str, param: Optional[float] = None) -> float:
    """The recommended gain for a nonlinearity (PyTorch's table)."""
    linear_fns = ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
                  "conv_transpose3d")
    if nonlinearity in linear_fns or nonlinearity == "sigmoid":
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        if param is None:
            slope = 0.01
        elif not isinstance(param, bool) and isinstance(param, (int, float)):
            slope = float(param)
        else:
            raise ValueError(f"negative_slope {param} not a valid number")
        return math.sqrt(2.0 / (1 + slope**2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"Unsupported nonlinearity {nonlinearity}")


def _calculate_fan_in_and_fan_out(tensor: Tensor) -> Tuple[int, int]:
    shape = tensor.shape
    if len(shape) < 2:
        raise ValueError("Fan in and fan out can not be computed for tensor with fewer than 2 dimensions "
                         f"(got shape {shape})")
    if len(shape) == 2:
        return shape[1], shape[0]
    # (Q, *kernel, C): channel-last kernels
    receptive = math.prod(shape[1:-1])
    return receptive * shape[-1], shape[0] * receptive


def _calculate_correct_fan(tensor: Tensor, mode: str) -> int:
    mode = mode.lower()
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"Mode {mode} not supported, please use one of fan_in, fan_out")
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    return fan_in if mode == "fan_in" else fan_out


def _fill_uniform(tensor: Tensor, a: float, b: float) -> Tensor:
    with no_grad():
        tensor.copy_(_core.rand(tensor.shape, tensor.dtype) * (b - a) + a)
    return tensor


def _fill_normal(tensor: Tensor, mean: float, std: float) -> Tensor:
    with no_grad():
        tensor.copy_(_core.randn(tensor.shape, tensor.dtype) * std + mean)
    return tensor


def uniform_(tensor: Tensor, a: float = 0.0, b: float = 1.0) -> Tensor:
    """Fills with U(a, b)."""
    _check_float(tensor, "uniform_")
    if a > b:
        raise ValueError(f"nn.init.uniform_: a ({a}) must not exceed b ({b})")
    return _fill_uniform(tensor, float(a), float(b))


def normal_(tensor: Tensor, mean: float = 0.0, std: float = 1.0) -> Tensor:
    """Fills with N(mean, std^2)."""
    _check_float(tensor, "normal_")
    if std < 0:
        raise ValueError(f"nn.init.normal_: std must be non-negative, got {std}")
    return _fill_normal(tensor, float(mean), float(std))


def constant_(tensor: Tensor, val: float) -> Tensor:
    """Fills with ``val``."""
    _check(tensor, "constant_")
    with no_grad():
        tensor.copy_(val)
    return tensor


def zeros_(tensor: Tensor) -> Tensor:
    return constant_(tensor, 0.0 if tensor.dtype.is_floating_point else 0)


def ones_(tensor: Tensor) -> Tensor:
    return constant_(tensor, 1.0 if tensor.dtype.is_floating_point else 1)


def xavier_uniform_(tensor: Tensor, gain: float = 1.0) -> Tensor:
    """U(-a, a) with a = gain * sqrt(6 / (fan_in + fan_out)) (Glorot & Bengio)."""
    _check_float(tensor, "xavier_uniform_")
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    std = gain * math.sqrt(2.0 / float(fan_in + fan_out))
    a = math.sqrt(3.0) * std
    return _fill_uniform(tensor, -a, a)


def xavier_normal_(tensor: Tensor, gain: float = 1.0) -> Tensor:
    """N(0, std^2) with std = gain * sqrt(2 / (fan_in + fan_out))."""
    _check_float(tensor, "xavier_normal_")
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    std = gain * math.sqrt(2.0 / float(fan_in + fan_out))
    return _fill_normal(tensor, 0.0, std)


def kaiming_uniform_(tensor: Tensor, a: float = 0, mode: str = "fan_in", nonlinearity: str = "leaky_relu") -> Tensor:
    """U(-b, b) with b = gain * sqrt(3 / fan) (He et al.); gain = calculate_gain(nonlinearity, a)."""
    _check_float(tensor, "kaiming_uniform_")
    if 0 in tensor.shape:
        return tensor
    fan = _calculate_correct_fan(tensor, mode)
    gain = calculate_gain(nonlinearity, a)
    bound = math.sqrt(3.0) * gain / math.sqrt(fan)
    return _fill_uniform(tensor, -bound, bound)


def kaiming_normal_(tensor: Tensor, a: float = 0, mode: str = "fan_in", nonlinearity: str = "leaky_relu") -> Tensor:
    """N(0, std^2) with std = gain / sqrt(fan)."""
    _check_float(tensor, "kaiming_normal_")
    if 0 in tensor.shape:
        return tensor
    fan = _calculate_correct_fan(tensor, mode)
    std = calculate_gain(nonlinearity, a) / math.sqrt(fan)
    return _fill_normal(tensor, 0.0, std)
