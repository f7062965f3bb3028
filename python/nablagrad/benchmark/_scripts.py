"""Access to the repository's benchmarks/*.py scripts, when the suite runs from a checkout.

The conv and layer groups take their case lists (and measure functions) from
benchmarks/conv2d.py and benchmarks/layers.py, which their owners keep up to date, rather
than copying them; an installed package without the checkout uses its own small case sets.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, Optional

_loaded: Dict[str, Optional[ModuleType]] = {}


def benchmarks_dir() -> Optional[Path]:
    """The checkout's benchmarks/ folder (beside python/nablagrad, or under the current
    directory), or None for an installed package."""
    here = Path(__file__).resolve()
    for cand in (here.parents[3] / "benchmarks", Path.cwd() / "benchmarks"):
        if (cand / "_common.py").is_file():
            return cand
    return None


def load(name: str, torch: Optional[Any]) -> Optional[ModuleType]:
    """benchmarks/<name>.py as a module (None when absent or broken). The module's own `torch`
    global is set to `torch`: None makes the script run as if PyTorch were not installed."""
    if name not in _loaded:
        folder = benchmarks_dir()
        mod: Optional[ModuleType] = None
        if folder is not None and (folder / f"{name}.py").is_file():
            spec = importlib.util.spec_from_file_location(f"_nablagrad_bench_script_{name}", folder / f"{name}.py")
            if spec is not None and spec.loader is not None:
                mod = importlib.util.module_from_spec(spec)
                if str(folder) not in sys.path:
                    sys.path.insert(0, str(folder))  # the scripts import their _common
                try:
                    spec.loader.exec_module(mod)
                except Exception as e:  # a script mid-edit by its owner: fall back, say so
                    print(f"  (benchmarks/{name}.py did not load: {type(e).__name__}: {e}; using the package's cases)",
                          file=sys.stderr)
                    mod = None
        _loaded[name] = mod
    mod = _loaded[name]
    if mod is not None and hasattr(mod, "torch"):
        mod.torch = torch  # type: ignore[attr-defined]  # None: as if PyTorch were absent
    return mod


def source_label(mod: Optional[ModuleType], name: str) -> str:
    return f"benchmarks/{name}.py" if mod is not None else "package cases"
