"""File fuzzing (issue 11): ng.load on mutated and truncated files, atomic ng.save.

The hypothesis targets live in fuzz/targets_files.py and run in a child process (see
test_fuzz_api.py); the C++ reader's fuzz is tests/cpp/test_serialize_fuzz.cpp (CTest).
Below, a few fixed regression cases run in-process.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

import nablagrad as ng
from test_fuzz_api import run_targets  # noqa: E402  (tests/python is on sys.path under pytest)

FUZZ = Path(__file__).resolve().parent / "fuzz"


def test_fuzz_load_and_save() -> None:
    pytest.importorskip("hypothesis")
    counts = run_targets(FUZZ / "targets_files.py", timeout=600)
    assert counts.get("load_mutated", 0) > 0 and counts.get("save_is_atomic", 0) > 0, counts
    print(f"fuzz (files): {sum(counts.values())} cases: {counts}")


def _file(tmp_path: Path, header: bytes, data: bytes = b"") -> Path:
    p = tmp_path / "x.safetensors"
    p.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return p


@pytest.mark.parametrize("header,data", [
    (b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,16]}}', b"\0" * 8),    # offsets past the end
    (b'{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}', b"\0" * 8),     # byte count mismatch
    (b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}}', b"\0" * 8),     # reversed
    (b'{"a":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,8]}}', b"\0" * 8),
    (b'{"a":{"dtype":"C64","shape":[1],"data_offsets":[0,8]}}', b"\0" * 8),     # dtype we cannot hold
    (b'{"a":{"dtype":"F32","shape":[2]}}', b"\0" * 8),                        # missing offsets
    (b"[" * 10000 + b"]" * 10000, b""),                                       # deep nesting
])
def test_corrupt_headers_raise_value_error(tmp_path: Path, header: bytes, data: bytes) -> None:
    with pytest.raises(ValueError, match="x.safetensors"):
        ng.load(_file(tmp_path, header, data))


@pytest.mark.parametrize("n", [2**64 - 1, 2**63, 100_000_001, 0, 1])
def test_header_lengths(tmp_path: Path, n: int) -> None:
    p = tmp_path / "x.safetensors"
    p.write_bytes(struct.pack("<Q", n) + b'{"a":1}')
    with pytest.raises(ValueError, match="x.safetensors"):
        ng.load(p)
