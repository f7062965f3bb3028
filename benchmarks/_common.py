"""Shared timing helpers for the benchmark scripts: re-exported from the package's
``nablagrad.benchmark._common`` (``python -m nablagrad.benchmark`` runs the same code).

A dev site laid out before the package had ``nablagrad/benchmark`` (scripts/dev_build.sh links
the files that existed when it ran) does not have the module: it is then loaded from this
checkout's python/ folder, so the scripts keep working.
"""

from __future__ import annotations

try:
    from nablagrad.benchmark._common import (  # noqa: F401
        alternate, cpu_model, load_average, machine_line, race, simd_level, time_call, try_import_torch, warm_up)
except ImportError:  # pragma: no cover - stale dev site
    import importlib.util
    import os

    _path = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "python", "nablagrad", "benchmark",
                         "_common.py")
    _spec = importlib.util.spec_from_file_location("_nablagrad_benchmark_common", _path)
    assert _spec is not None and _spec.loader is not None
    _mod = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_mod)
    alternate, cpu_model, load_average, machine_line = _mod.alternate, _mod.cpu_model, _mod.load_average, _mod.machine_line
    race, simd_level, time_call, try_import_torch = _mod.race, _mod.simd_level, _mod.time_call, _mod.try_import_torch
    warm_up = _mod.warm_up
