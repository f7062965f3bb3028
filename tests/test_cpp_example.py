"""examples/cpp/train_digits.cpp builds with nothing but the headers and learns the digits.

The build command is exactly the one the example documents:
    g++ -std=c++17 -O2 -pthread -I cpp/include examples/cpp/train_digits.cpp -o train_digits
The data stays gzipped in the package; the test writes the plain CSV the example reads.
"""

from __future__ import annotations

import gzip
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = "examples/cpp/train_digits.cpp"
DIGITS_GZ = ROOT / "python" / "nablagrad" / "datasets" / "digits.csv.gz"


@pytest.fixture(scope="module")
def train_digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cxx = shutil.which("g++")
    if cxx is None:
        pytest.fail("g++ is required to build the C++ example")
    exe = tmp_path_factory.mktemp("example") / "train_digits"
    res = subprocess.run([cxx, "-std=c++17", "-O2", "-pthread", "-I", "cpp/include", EXAMPLE, "-o", str(exe)],
                         cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, "the example does not build with the headers alone:\n" + res.stderr[-20000:]
    return exe


@pytest.fixture(scope="module")
def digits_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    csv = tmp_path_factory.mktemp("data") / "digits.csv"
    with gzip.open(DIGITS_GZ, "rb") as src, open(csv, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return csv


def test_train_digits_learns(train_digits: Path, digits_csv: Path) -> None:
    """It trains, prints one line per epoch with a falling loss, and reaches > 0.9 held-out accuracy."""
    res = subprocess.run([str(train_digits), str(digits_csv)], capture_output=True, text=True, timeout=300)
    out = res.stdout
    assert res.returncode == 0, out + res.stderr
    assert "1437 train / 360 held-out" in out, out
    losses = [float(m) for m in re.findall(r"^epoch +\d+ +loss ([0-9.]+)", out, flags=re.M)]
    assert len(losses) == 15, out
    assert losses[-1] < 0.5 * losses[0], out
    m = re.search(r"^held-out accuracy: ([0-9.]+) \((\d+)/360\)", out, flags=re.M)
    assert m is not None, out
    assert float(m.group(1)) > 0.9, out


def test_train_digits_reads_stdin_and_fails_below_target(train_digits: Path, digits_csv: Path) -> None:
    """'-' reads the CSV from standard input; one epoch on it still runs, and the exit status
    is 1 exactly when the printed accuracy is below 0.9."""
    res = subprocess.run([str(train_digits), "-", "1"], input=digits_csv.read_text(), capture_output=True,
                         text=True, timeout=300)
    m = re.search(r"^held-out accuracy: ([0-9.]+)", res.stdout, flags=re.M)
    assert m is not None, res.stdout + res.stderr
    assert res.returncode == (0 if float(m.group(1)) >= 0.9 else 1), res.stdout
    # zero epochs: an untrained model is near chance, so the program must report failure
    res = subprocess.run([str(train_digits), str(digits_csv), "0"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 1, res.stdout + res.stderr


def test_train_digits_rejects_bad_input(train_digits: Path, tmp_path: Path) -> None:
    """A missing file, a damaged CSV and a missing argument end with status 2 and a message."""
    res = subprocess.run([str(train_digits)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "usage" in res.stderr
    res = subprocess.run([str(train_digits), str(tmp_path / "missing.csv")], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "cannot open" in res.stderr
    bad = tmp_path / "bad.csv"
    bad.write_text("1,2,3\n")
    res = subprocess.run([str(train_digits), str(bad)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "line 1 has 3 values" in res.stderr, res.stderr
    bad.write_text("0," * 64 + "12\n")
    res = subprocess.run([str(train_digits), str(bad)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "not a digit" in res.stderr, res.stderr
    res = subprocess.run([str(train_digits), str(bad), "many"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "EPOCHS" in res.stderr, res.stderr
    # the gzipped file itself is refused with a message, not parsed as garbage
    res = subprocess.run([str(train_digits), str(DIGITS_GZ)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "train_digits:" in res.stderr, res.stderr
