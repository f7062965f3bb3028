"""Small real data sets shipped with the package (no network access needed).

``load_digits()``: the UCI "Optical Recognition of Handwritten Digits" test set
(E. Alpaydin, C. Kaynak, 1998; 1797 8x8 images of the digits 0-9, pixel values 0..16;
CC BY 4.0, https://archive.ics.uci.edu/dataset/80), in the CSV layout scikit-learn ships.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Tuple

import numpy as np

__all__ = ["load_digits"]

_DIGITS = Path(__file__).with_name("digits.csv.gz")


def load_digits() -> Tuple[np.ndarray, np.ndarray]:
    """Returns (images, labels): images float32 (1797, 8, 8, 1) scaled to [0, 1] (NHWC),
    labels int64 (1797,). Raises ValueError if the shipped file is damaged."""
    try:
        with gzip.open(_DIGITS, "rt") as f:
            raw = np.loadtxt(f, delimiter=",", dtype=np.float64)
    except (OSError, EOFError, ValueError) as e:
        raise ValueError(f"load_digits: cannot read {_DIGITS}: {e}") from None
    if raw.ndim != 2 or raw.shape[1] != 65:
        raise ValueError(f"load_digits: expected 65 columns in {_DIGITS}, got shape {raw.shape}")
    images = (raw[:, :64] / 16.0).astype(np.float32).reshape(-1, 8, 8, 1)
    labels = raw[:, 64].astype(np.int64)
    return images, labels
