"""Recurrent layers ``RNN``, ``LSTM`` and ``GRU`` (batch first), thin wrappers over the C++
layers of ``_core.nn`` (cpp/include/nablagrad/layers/rnn.h). Each layer of the stack is one
fused op whose time loop and backward through time run in C++.

Parameters per layer ``k`` have PyTorch's names and layouts, so a ``torch.nn.LSTM(...,
batch_first=True)`` state dict loads as it is: ``weight_ih_l{k}`` (G*H, in), ``weight_hh_l{k}``
(G*H, H), ``bias_ih_l{k}``, ``bias_hh_l{k}`` (G*H,), with G = 1 (RNN), 4 (LSTM: i, f, g, o) and
3 (GRU: r, z, n)::

    lstm = nn.LSTM(16, 32, num_layers=2)
    out, (h_n, c_n) = lstm(x)            # x (N, T, 16): out (N, T, 32), h_n, c_n (2, N, 32)
    out, h_n = nn.GRU(16, 32)(x, h0)     # h0 (1, N, 32)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, Tuple

from .. import _core
from .._tensor import Tensor
from .layers import _CoreModule, _dtype, _sizes

__all__ = ["RNN", "LSTM", "GRU"]


class _RecurrentBase(_CoreModule):
    """The C++ layer in ``_layer``, its tensors registered as this module's Parameters (the
    same tensors: an optimizer step or ``load_state_dict`` is what the C++ forward reads)."""

    @property
    def input_size(self) -> int:
        return int(self._layer.input_size)

    @property
    def hidden_size(self) -> int:
        return int(self._layer.hidden_size)

    @property
    def num_layers(self) -> int:
        return int(self._layer.num_layers)

    @property
    def bias(self) -> bool:
        return bool(self._layer.bias)

    @property
    def batch_first(self) -> bool:
        return True

    def extra_repr(self) -> str:
        return str(self._layer.extra_repr())


class RNN(_RecurrentBase):
    """Elman RNN: ``h_t = act(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)``, act ``"tanh"`` or
    ``"relu"``. ``forward(x, h0=None)`` returns ``(output (N, T, H), h_n (num_layers, N, H))``."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 nonlinearity: str = "tanh", bias: bool = True, dtype: Any = None) -> None:
        _sizes("RNN", input_size=input_size, hidden_size=hidden_size, num_layers=num_layers)
        super().__init__(_core.nn.RNN(input_size, hidden_size, num_layers=num_layers,
                                      nonlinearity=nonlinearity, bias=bias, dtype=_dtype(dtype)))

    @property
    def nonlinearity(self) -> str:
        return str(self._layer.nonlinearity)

    def forward(self, x: Tensor,  # type: ignore[override]
                h0: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        out, h_n = self._layer.forward(x, h0)
        return out, h_n

    if TYPE_CHECKING:  # calling the layer is typed as its forward
        __call__ = forward  # type: ignore[assignment]


class LSTM(_RecurrentBase):
    """LSTM (gates i, f, g, o): ``c_t = f*c_{t-1} + i*g``, ``h_t = o*tanh(c_t)``.
    ``forward(x, hx=None)`` with ``hx = (h0, c0)`` returns ``(output, (h_n, c_n))``."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 dtype: Any = None) -> None:
        _sizes("LSTM", input_size=input_size, hidden_size=hidden_size, num_layers=num_layers)
        super().__init__(_core.nn.LSTM(input_size, hidden_size, num_layers=num_layers, bias=bias,
                                       dtype=_dtype(dtype)))

    def forward(self, x: Tensor,  # type: ignore[override]
                hx: Optional[Tuple[Tensor, Tensor]] = None) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
        out, (h_n, c_n) = self._layer.forward(x, hx)
        return out, (h_n, c_n)

    if TYPE_CHECKING:
        __call__ = forward  # type: ignore[assignment]


class GRU(_RecurrentBase):
    """GRU (gates r, z, n): ``n = tanh(W_in x + b_in + r*(W_hn h + b_hn))``,
    ``h_t = (1-z)*n + z*h_{t-1}``. ``forward(x, h0=None)`` returns ``(output, h_n)``."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 dtype: Any = None) -> None:
        _sizes("GRU", input_size=input_size, hidden_size=hidden_size, num_layers=num_layers)
        super().__init__(_core.nn.GRU(input_size, hidden_size, num_layers=num_layers, bias=bias,
                                      dtype=_dtype(dtype)))

    def forward(self, x: Tensor,  # type: ignore[override]
                h0: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        out, h_n = self._layer.forward(x, h0)
        return out, h_n

    if TYPE_CHECKING:
        __call__ = forward  # type: ignore[assignment]
