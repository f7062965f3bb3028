"""The benchmark suite: ``python -m nablagrad.benchmark`` (PyTorch optional).

Runs the matmul, overhead, conv, layer and training benchmarks at the machine's thread count
and prints one table of times and ratios against NumPy / PyTorch measured in the same run,
alternating, with the CPU model and SIMD level; ``--markdown FILE`` appends the section for
``benchmarks/RESULTS.md`` and ``--png FILE`` draws the ratios. ``--quick`` takes about a minute.

Each group is a module with ``run(cfg) -> list[Row]``: :mod:`.matmul`, :mod:`.overhead`,
:mod:`.conv`, :mod:`.layers`, :mod:`.train`. The conv and layer groups use the case lists of
the repository's ``benchmarks/conv2d.py`` and ``benchmarks/layers.py`` when run from a checkout,
and a small case set of their own otherwise.
"""

from __future__ import annotations

from ._report import Config, Row

GROUPS = ("matmul", "overhead", "conv", "layers", "train")

__all__ = ["Config", "Row", "GROUPS"]
