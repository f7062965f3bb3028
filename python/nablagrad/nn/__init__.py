"""Neural-network building blocks. ``nablagrad.nn.functional`` is the functional API
(the same module as ``nablagrad.functional``); the layer classes arrive with the layers work."""

from __future__ import annotations

from . import functional

__all__ = ["functional"]
