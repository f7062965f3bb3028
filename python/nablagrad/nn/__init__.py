"""Neural-network building blocks (``import nablagrad.nn as nn``).

``Module``/``Parameter`` and the containers live in ``module.py``; the built-in layers in
``layers.py`` are thin wrappers over the C++ layers (``_core.nn``), so each layer's
mathematics exists once, in C++. ``nn.functional`` is the functional API (the same module
as ``nablagrad.functional``), ``nn.init`` the initialisers, ``nn.utils`` gradient clipping.
"""

from __future__ import annotations

from . import functional, init, utils
from .layers import (GELU, AvgPool2d, BatchNorm2d, Conv2d, Dropout, Embedding, Flatten, LayerNorm, LeakyReLU, Linear,
                     MaxPool2d, ReLU, Sigmoid, Softmax, Tanh)
from .attention import MultiheadAttention
from .rnn import GRU, LSTM, RNN
from .module import Module, ModuleList, Parameter, Sequential

__all__ = [
    "functional", "init", "utils", "Module", "Parameter", "Sequential", "ModuleList", "Linear", "Conv2d",
    "MaxPool2d", "AvgPool2d", "Flatten", "Dropout", "LayerNorm", "BatchNorm2d", "Embedding", "ReLU", "Sigmoid",
    "Tanh", "GELU", "Softmax", "LeakyReLU",
]
__all__ += ["MultiheadAttention"]
__all__ += ["RNN", "LSTM", "GRU"]
from . import parallel  # noqa: E402  (DistributedDataParallel)
__all__ += ["parallel"]
