"""Fuzzing the public Python API with hypothesis (issue 11).

Each targets_*.py file under tests/python/fuzz/ runs in its own child process (a segfault or
abort would otherwise kill pytest; the child writes each case to stderr before running it, so
the last CASE line names the input of a crash). The child checks every result against NumPy and
every exception against API.md's kinds (see fuzz/harness.py) and prints ``FUZZ-COUNT name n``
per target. CI profile: the counts below; ``NABLAGRAD_FUZZ=long`` runs 10x as many examples.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict

import pytest

pytest.importorskip("hypothesis")

FUZZ = Path(__file__).resolve().parent / "fuzz"
LONG = os.environ.get("NABLAGRAD_FUZZ") == "long"
COUNTS: Dict[str, int] = {}


def run_targets(script: Path, timeout: float) -> Dict[str, int]:
    """Runs a targets file in a child process; returns {target: examples run}; fails on any failure."""
    env = dict(os.environ)
    env.setdefault("NABLAGRAD_FUZZ", "ci")
    try:
        r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as e:
        err = (e.stderr or b"")[-2000:]
        pytest.fail(f"{script.name} did not finish within {timeout} s (a hang?); last cases:\n"
                    f"{err.decode(errors='replace') if isinstance(err, bytes) else err}")
    counts = {m.group(1): int(m.group(2)) for m in re.finditer(r"^FUZZ-COUNT (\S+) (\d+)", r.stdout, re.M)}
    if r.returncode < 0:
        last = [ln for ln in r.stderr.splitlines() if ln.startswith("CASE ")][-3:]
        pytest.fail(f"{script.name}: killed by signal {-r.returncode} (a crash); last cases:\n" + "\n".join(last)
                    + "\n" + r.stderr[-3000:])
    assert r.returncode == 0, f"{script.name} found failures:\n{r.stdout[-12000:]}"
    return counts


SCRIPTS = sorted(p for p in FUZZ.glob("targets_*.py") if p.name != "targets_files.py")


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_fuzz_targets(script: Path) -> None:
    counts = run_targets(script, timeout=3000 if LONG else 600)
    assert counts, "no FUZZ-COUNT lines"
    for name, n in counts.items():
        assert n > 0, name
    COUNTS.update({f"{script.stem}.{k}": v for k, v in counts.items()})


def test_fuzz_total(capsys: pytest.CaptureFixture) -> None:
    """At least 10,000 generated cases in the CI profile over the API targets (files: test_fuzz_files)."""
    if len({k.split(".")[0] for k in COUNTS}) != len(SCRIPTS):
        pytest.skip("runs after all test_fuzz_targets cases")
    total = sum(COUNTS.values())
    with capsys.disabled():
        print(f"\nfuzz (API): {total} generated cases over {len(COUNTS)} targets: "
              + ", ".join(f"{k.split('.', 1)[1]}={v}" for k, v in sorted(COUNTS.items())))
    assert total >= (100000 if LONG else 10000), total
