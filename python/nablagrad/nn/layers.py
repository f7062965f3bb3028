"""The built-in layers: thin ``Module`` wrappers over the C++ layers of ``_core.nn``.

Each layer's mathematics lives once, in C++ (``cpp/include/nablagrad/layers/``). The Python
class holds the C++ layer in ``self._layer``, registers the C++ layer's own tensors as its
parameters (``Parameter`` objects wrapping the same TensorImpl: an optimizer step or a
``copy_`` is seen by the C++ forward, no copies) and buffers, and forwards ``forward``.
``train()``/``eval()`` and ``to(dtype)`` reach the C++ layer too.

Layouts are nablagrad's: images NHWC, convolution kernels (Q, FH, FW, C), Linear weight
(out_features, in_features). Every constructor takes ``dtype=None`` (float32 when None).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Optional, Sequence, Tuple, Union

from .. import _core
from .._tensor import Tensor, _resolve_dtype, float32
from .module import Module, Parameter

__all__ = [
    "Linear", "Conv2d", "MaxPool2d", "AvgPool2d", "Flatten", "Dropout", "LayerNorm", "BatchNorm2d",
    "Embedding", "ReLU", "Sigmoid", "Tanh", "GELU", "Softmax", "LeakyReLU",
]

_Pair = Union[int, Tuple[int, int]]


def _dtype(dtype: Any) -> Any:
    return _resolve_dtype(dtype) or float32


def _sizes(layer: str, **sizes: Any) -> None:
    """Integer constructor arguments: another kind is a TypeError and a Python int beyond int64 a
    ValueError, each naming the argument (not pybind11's generic "incompatible arguments")."""
    import numbers
    for name, v in sizes.items():
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{layer}: {name} must be an int, got {type(v).__name__} {v!r}")
        if not -2**63 <= int(v) < 2**63:
            raise ValueError(f"{layer}: {name}={int(v)} is out of range (sizes must fit in int64)")


def _pair(v: Any) -> Tuple[int, int]:
    if isinstance(v, (tuple, list)):
        return (int(v[0]), int(v[1]))
    return (int(v), int(v))


class _CoreModule(Module):
    """Base of the built-in layers: holds the C++ layer ``_layer``.

    ``training`` mirrors the C++ layer's mode; the C++-held parameters keep their identity for
    the module's whole life (assigning another tensor to one of them would cut the link to the
    C++ layer, so it raises: copy values in with ``copy_`` or ``load_state_dict`` instead).
    """

    _layer: Any

    def __init__(self, layer: Any) -> None:
        self.__dict__["_layer"] = layer
        super().__init__()
        for name, t in layer.named_parameters(recurse=False):
            self._parameters[name] = Parameter._wrap(t)
        for name, t in layer.named_buffers(recurse=False):
            self._buffers[name] = t

    # training mode lives in the C++ layer (dropout, batch norm read it)
    @property
    def training(self) -> bool:  # noqa: D102
        return bool(self._layer.is_training())

    @training.setter
    def training(self, mode: bool) -> None:
        self._layer.train(bool(mode))

    def _set_training_flag(self, mode: bool) -> None:
        self._layer.train(mode)

    def forward(self, x: Tensor) -> Tensor:
        return self._layer.forward(x)  # type: ignore[no-any-return]

    if TYPE_CHECKING:  # calling the layer is typed as its forward (subclasses with another
        __call__ = forward  # forward signature repeat this line)

    def _core_owned(self, name: str) -> bool:
        store = self.__dict__.get("_parameters", {})
        bstore = self.__dict__.get("_buffers", {})
        return (name in store and store[name] is not None) or (name in bstore and bstore[name] is not None)

    def _assign_parameter(self, name: str, value: Optional[Parameter]) -> None:
        self._assign_owned(self._parameters, name, value, "tensor")

    def _assign_buffer(self, name: str, value: Optional[Tensor]) -> None:
        self._assign_owned(self._buffers, name, value, "buffer")

    def _assign_owned(self, store: Dict[str, Any], name: str, value: Optional[Tensor], what: str) -> None:
        """Stores value under name unless that replaces a tensor the C++ layer owns."""
        cur = store.get(name)
        if cur is not None and value is not cur:
            raise AttributeError(
                f"{type(self).__name__}.{name} is the C++ layer's own {what} and cannot be replaced; "
                f"copy new values into it instead (with ng.no_grad(): m.{name}.copy_(t)) or use load_state_dict")
        store[name] = value

    def _check_deletable(self, name: str) -> None:
        if self._core_owned(name):
            raise AttributeError(f"{type(self).__name__}.{name} belongs to the C++ layer and cannot be deleted")

    def _convert_own(self, dtype: Any) -> None:
        pass  # the C++ layer converted its tensors in place (Module.to calls _layer.to first)


class Linear(_CoreModule):
    """``y = activation(x @ weight.T + bias)``; weight (out_features, in_features), bias (out_features,).
    ``activation``: None, "relu", "sigmoid", "tanh", "gelu" or "softmax" (fused in C++)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: Optional[str] = None,
                 dtype: Any = None) -> None:
        _sizes("Linear", in_features=in_features, out_features=out_features)
        super().__init__(_core.nn.Linear(in_features, out_features, bias=bias, activation=activation,
                                         dtype=_dtype(dtype)))
        self.in_features, self.out_features, self.activation = int(in_features), int(out_features), activation
        if not bias:
            self._parameters["bias"] = None

    def extra_repr(self) -> str:
        s = f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
        if self.activation is not None:
            s += f", activation={self.activation!r}"
        return s


class Conv2d(_CoreModule):
    """2-D convolution on NHWC input; weight (out_channels, kh, kw, in_channels), bias (out_channels,).
    ``kernel_size``/``stride``/``padding`` are an int or a pair; ``padding`` may be "same"
    (stride 1 only) or "valid"."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: _Pair, stride: _Pair = 1,
                 padding: Union[_Pair, str] = 0, bias: bool = True, activation: Optional[str] = None,
                 dtype: Any = None) -> None:
        _sizes("Conv2d", in_channels=in_channels, out_channels=out_channels)
        layer = _core.nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias,
                                activation=activation, dtype=_dtype(dtype))
        super().__init__(layer)
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size, self.stride = tuple(layer.kernel_size), tuple(layer.stride)
        self.padding = layer.padding if isinstance(layer.padding, str) else tuple(layer.padding)
        self.activation = activation
        if not bias:
            self._parameters["bias"] = None

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0, 0):
            s += f", padding={self.padding!r}" if isinstance(self.padding, str) else f", padding={self.padding}"
        if self.bias is None:
            s += ", bias=False"
        if self.activation is not None:
            s += f", activation={self.activation!r}"
        return s


class MaxPool2d(_CoreModule):
    """Max pooling over NHWC input (stride None = kernel_size)."""

    def __init__(self, kernel_size: _Pair, stride: Optional[_Pair] = None, padding: _Pair = 0) -> None:
        super().__init__(_core.nn.MaxPool2d(kernel_size, stride=stride, padding=padding))
        self.kernel_size = kernel_size
        self.stride = kernel_size if stride is None else stride
        self.padding = padding

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AvgPool2d(_CoreModule):
    """Average pooling over NHWC input (stride None = kernel_size)."""

    def __init__(self, kernel_size: _Pair, stride: Optional[_Pair] = None, padding: _Pair = 0,
                 count_include_pad: bool = True) -> None:
        super().__init__(_core.nn.AvgPool2d(kernel_size, stride=stride, padding=padding,
                                            count_include_pad=count_include_pad))
        self.kernel_size = kernel_size
        self.stride = kernel_size if stride is None else stride
        self.padding = padding
        self.count_include_pad = count_include_pad

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class Flatten(_CoreModule):
    """Flattens dims start_dim..end_dim into one."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1) -> None:
        super().__init__(_core.nn.Flatten(start_dim, end_dim))
        self.start_dim, self.end_dim = int(start_dim), int(end_dim)

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Dropout(_CoreModule):
    """Zeroes each element with probability p in training mode (scaling the rest by 1/(1-p));
    the identity in eval mode. Draws from the seeded generator (ng.manual_seed)."""

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
        super().__init__(_core.nn.Dropout(float(p)))
        self.p = float(p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class LayerNorm(_CoreModule):
    """Normalises over the trailing ``normalized_shape`` dims; weight and bias of that shape."""

    def __init__(self, normalized_shape: Union[int, Sequence[int]], eps: float = 1e-5,
                 elementwise_affine: bool = True, dtype: Any = None) -> None:
        import numbers  # (a NumPy integer is a size too; was: TypeError "'numpy.int64' object is not iterable")
        shape = (int(normalized_shape),) if isinstance(normalized_shape, numbers.Integral) else tuple(normalized_shape)
        super().__init__(_core.nn.LayerNorm(shape, eps=eps, elementwise_affine=elementwise_affine,
                                            dtype=_dtype(dtype)))
        self.normalized_shape, self.eps, self.elementwise_affine = shape, float(eps), bool(elementwise_affine)
        if not elementwise_affine:
            self._parameters.setdefault("weight", None)
            self._parameters.setdefault("bias", None)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"


class BatchNorm2d(_CoreModule):
    """Batch normalisation of NHWC input per channel (the last axis). Buffers ``running_mean``,
    ``running_var`` (num_features,) and ``num_batches_tracked`` (0-d int64), as PyTorch's, so
    its checkpoints load as they are."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1, affine: bool = True,
                 track_running_stats: bool = True, dtype: Any = None) -> None:
        _sizes("BatchNorm2d", num_features=num_features)
        super().__init__(_core.nn.BatchNorm2d(num_features, eps=eps, momentum=momentum, affine=affine,
                                              track_running_stats=track_running_stats, dtype=_dtype(dtype)))
        self.num_features, self.eps, self.momentum = int(num_features), float(eps), momentum
        self.affine, self.track_running_stats = bool(affine), bool(track_running_stats)
        if not affine:
            self._parameters.setdefault("weight", None)
            self._parameters.setdefault("bias", None)
        if not track_running_stats:
            for b in ("running_mean", "running_var", "num_batches_tracked"):
                self._buffers.setdefault(b, None)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")


class Embedding(_CoreModule):
    """Lookup table: int64 indices of any shape -> (..., embedding_dim) rows of ``weight``."""

    def __init__(self, num_embeddings: int, embedding_dim: int, dtype: Any = None) -> None:
        _sizes("Embedding", num_embeddings=num_embeddings, embedding_dim=embedding_dim)
        super().__init__(_core.nn.Embedding(num_embeddings, embedding_dim, dtype=_dtype(dtype)))
        self.num_embeddings, self.embedding_dim = int(num_embeddings), int(embedding_dim)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}"


class ReLU(_CoreModule):
    def __init__(self) -> None:
        super().__init__(_core.nn.ReLU())


class Sigmoid(_CoreModule):
    def __init__(self) -> None:
        super().__init__(_core.nn.Sigmoid())


class Tanh(_CoreModule):
    def __init__(self) -> None:
        super().__init__(_core.nn.Tanh())


class GELU(_CoreModule):
    """x * Phi(x); approximate="tanh" for the tanh approximation."""

    def __init__(self, approximate: str = "none") -> None:
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh', got {approximate!r}")
        super().__init__(_core.nn.GELU(approximate))
        self.approximate = approximate

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


class Softmax(_CoreModule):
    def __init__(self, dim: int = -1) -> None:
        super().__init__(_core.nn.Softmax(int(dim)))
        self.dim = int(dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class LeakyReLU(_CoreModule):
    def __init__(self, negative_slope: float = 0.01) -> None:
        super().__init__(_core.nn.LeakyReLU(float(negative_slope)))
        self.negative_slope = float(negative_slope)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"
