"""Shared timing helpers for the benchmarks: alternate the contenders, take medians."""

from __future__ import annotations

import platform
import statistics
import time
from typing import Callable, Dict, List


def time_call(fn: Callable[[], object], min_time: float = 0.05) -> float:
    """Seconds per call of fn, averaged over enough calls to last about min_time."""
    fn()
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        dt = time.perf_counter() - t0
        if dt >= min_time:
            return dt / n
        n *= 2 if dt <= 0 else max(2, int(min_time / dt * 1.2))


def race(contenders: Dict[str, Callable[[], object]], rounds: int = 7, min_time: float = 0.05,
         settle: float = 0.2) -> Dict[str, float]:
    """Median seconds per call for each contender, measured in alternation (same run).

    Each contender's block starts after a `settle` pause: OpenBLAS's and PyTorch's worker
    threads keep spinning for a while after a call and would otherwise steal the second
    core from whichever library runs next.
    """
    samples: Dict[str, List[float]] = {k: [] for k in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            if settle > 0:
                time.sleep(settle)
            samples[name].append(time_call(fn, min_time))
    return {k: statistics.median(v) for k, v in samples.items()}


def try_import_torch():  # type: ignore[no-untyped-def]
    try:
        import torch
    except ImportError:
        return None
    return torch


def cpu_model() -> str:
    """The CPU's model name (printed beside every result; machines here differ)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"
