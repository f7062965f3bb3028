"""``nablagrad.nn.functional``: the same functions as ``nablagrad.functional`` (PyTorch's spelling)."""

from __future__ import annotations

from ..functional import *  # noqa: F401,F403
from ..functional import __all__  # noqa: F401
