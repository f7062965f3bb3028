"""Shared measurement helpers of the benchmarks: alternate the contenders, take medians.

The scripts in the repository's ``benchmarks/`` folder import these too (through
``benchmarks/_common.py``), so the package's suite and the scripts measure the same way.
This module imports nothing from nablagrad at load time.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

# Set to 1 to run the suite as if PyTorch were not installed (the tests use it).
NO_TORCH_ENV = "NABLAGRAD_BENCH_NO_TORCH"


# Untimed calls at the start of each block, after its pause: at least this long (and at least
# one call). A CPU that idled for the pause (as short as 5 ms) runs slower for its first few
# milliseconds of work: measured on the 2-vCPU cloud VM, a 0.25 ms conv ran 0.35-0.45 ms for
# its first ~10 calls after a pause, and 0.24 at once when two nice-19 busy loops kept the CPUs
# from idling. One untimed call only absorbs that ramp for a library whose first call is long.
# The ramp lasts longer than 10 ms, for both libraries: after a 50 ms pause a (8,56,56,256->64)
# 1x1 forward took, call by call (ms, 2 threads, medians of 12 pauses), ours from C++ 3.42 3.16
# 2.69 2.45 2.33 -> 2.35 (2.37 with no pause; 1 thread 6.37 ... 4.8), PyTorch's 3.59 3.33 2.82
# 2.59 2.37; forward+backward ours 11.9 11.3 10.6 10.4 10.0 9.6 9.4 9.1 ... 8.0, PyTorch's 11.2
# 10.1 9.4 9.0 8.9. With 10 ms, the blocks timed the ramp: that layer's forward+backward ratio
# was 0.86-0.91 in the benchmark and 1.03 with 100 ms.
WARM_SECONDS = 0.1


def warm_up(fn: Callable[[], object], seconds: float = WARM_SECONDS) -> None:
    """Calls fn untimed, at least once and until `seconds` have passed."""
    end = time.perf_counter() + seconds
    fn()
    while time.perf_counter() < end:
        fn()


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


def alternate(contenders: Dict[str, Callable[[int], object]], rounds: int, settle: float = 0.3,
              warmup: bool = True) -> Tuple[Dict[str, float], Dict[str, List[float]]]:
    """One call per contender per round (e.g. one training epoch), alternating who goes first
    from round to round; each call gets its round number. Returns (median seconds, samples)."""
    names = list(contenders)
    if warmup:
        for name in names:
            contenders[name](0)
    samples: Dict[str, List[float]] = {k: [] for k in names}
    for r in range(1, rounds + 1):
        for name in names if r % 2 else reversed(names):
            time.sleep(settle)
            t0 = time.perf_counter()
            contenders[name](r)
            samples[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in samples.items()}, samples


def try_import_torch() -> Optional[Any]:
    """PyTorch, or None when it is not installed (or NABLAGRAD_BENCH_NO_TORCH=1)."""
    if os.environ.get(NO_TORCH_ENV, "") not in ("", "0"):
        return None
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


def simd_level() -> str:
    """nablagrad's kernel variant in use ('portable', 'avx2' or 'avx512')."""
    from nablagrad import _core

    return str(_core._simd_level())


def load_average() -> Optional[float]:
    """The 1-minute load average (None where the OS has none): results under load are noisy."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def machine_line(threads: int, torch: Optional[Any] = None) -> str:
    """One line naming the machine and the conditions of a run."""
    load = load_average()
    return (f"CPU: {cpu_model()} ({os.cpu_count()} logical cores); SIMD level: {simd_level()}; "
            f"threads: {threads}; load average: {'?' if load is None else f'{load:.2f}'}; "
            f"PyTorch: {torch.__version__ if torch is not None else 'absent'}")


def measure_blocks(fns: Dict[Tuple[str, str], Callable[[], object]], rounds: int, reps: int = 3,
                   settle: float = 0.05) -> Dict[Tuple[str, str], float]:
    """Median seconds per call {(lib, pass): t}, alternating block by block: each round runs,
    per pass, a block of each library's calls (torch first, then ours); a block starts with a
    short pause (PyTorch's OpenMP workers spin for a while after a region and would steal a
    core from the next contender) and untimed calls for WARM_SECONDS (warm_up), then times
    `reps` calls. The same procedure as benchmarks/conv2d.py's and benchmarks/layers.py's
    measure()."""
    for fn in fns.values():
        fn()
        fn()
    times: Dict[Tuple[str, str], List[float]] = {key: [] for key in fns}
    passes = list(dict.fromkeys(p for _, p in fns))
    for _ in range(rounds):
        for pas in passes:
            for lib in ("torch", "ours"):
                if (lib, pas) in fns:
                    fn = fns[(lib, pas)]
                    time.sleep(settle)
                    warm_up(fn)
                    for _ in range(reps):
                        t0 = time.perf_counter()
                        fn()
                        times[(lib, pas)].append(time.perf_counter() - t0)
    return {key: statistics.median(v) for key, v in times.items()}
