"""Process-wide settings of the compute kernels.

    >>> import nablagrad as ng
    >>> ng.backends.conv_algorithm
    'auto'
    >>> ng.backends.conv_algorithm = "direct"     # never Winograd: the exact sums
    >>> ng.backends.conv_algorithm = "auto"

``conv_algorithm`` chooses how 2-D convolutions are computed (all passes, every later call,
every thread):

* ``"auto"`` (default): the fastest kernel for each shape (``kernels/conv2d/select.h``);
* ``"direct"``: implicit-GEMM / direct kernels only, never Winograd;
* ``"winograd"``: Winograd wherever it applies (3x3 and 5x5 kernels, stride 1), the ``"auto"``
  choice elsewhere.

Any other value raises ``ValueError``. ``set_conv_algorithm`` / ``get_conv_algorithm`` are the
same setting as functions.
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING

from . import _core

__all__ = ["conv_algorithm", "get_conv_algorithm", "set_conv_algorithm"]

CONV_ALGORITHMS = ("auto", "direct", "winograd")

if TYPE_CHECKING:
    conv_algorithm: str


def get_conv_algorithm() -> str:
    """The convolution algorithm setting: ``"auto"``, ``"direct"`` or ``"winograd"``."""
    return _core._conv_algorithm()


def set_conv_algorithm(name: str) -> None:
    """Sets the convolution algorithm; anything but ``"auto"``, ``"direct"`` or ``"winograd"``
    raises ``ValueError``."""
    if not isinstance(name, str) or name not in CONV_ALGORITHMS:
        raise ValueError(f"conv_algorithm must be one of {CONV_ALGORITHMS}, got {name!r}")
    _core._set_conv_algorithm(name)


class _BackendsModule(types.ModuleType):
    """This module, with ``conv_algorithm`` as a settable attribute."""

    @property
    def conv_algorithm(self) -> str:
        return get_conv_algorithm()

    @conv_algorithm.setter
    def conv_algorithm(self, name: str) -> None:
        set_conv_algorithm(name)


sys.modules[__name__].__class__ = _BackendsModule
