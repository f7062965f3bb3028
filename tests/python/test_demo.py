"""End to end: the README's demo trains the digits CNN to a useful accuracy."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from nablagrad.datasets import load_digits

ROOT = Path(__file__).resolve().parents[2]


def test_load_digits_shapes_and_ranges() -> None:
    x, y = load_digits()
    assert x.shape == (1797, 8, 8, 1) and x.dtype == np.float32
    assert y.shape == (1797,) and y.dtype == np.int64
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert sorted(set(y.tolist())) == list(range(10))


def test_demo_trains_cnn_on_digits() -> None:
    res = subprocess.run([sys.executable, str(ROOT / "examples" / "train_digits.py"), "--epochs", "6"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    m = re.search(r"test accuracy: ([0-9.]+)", res.stdout)
    assert m, res.stdout
    assert float(m.group(1)) > 0.9, res.stdout
