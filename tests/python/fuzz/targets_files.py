"""Fuzz target: ng.load on mutated, truncated and hand-made safetensors files (see harness.py).

Seeds are files written by ng.save (a state dict, a nested checkpoint) and by safetensors
itself. Mutations: truncation, byte flips, garbage appended, header lengths (huge, zero, off by
a few), and edits of the JSON header that keep it parseable (dtype names, shapes, data_offsets
outside the file, overlapping or reversed, byte-count mismatches, missing fields, a corrupt
nablagrad structure). ng.load must return (only when the file is still valid: then the tensors
have the shapes the header names) or raise ValueError naming the file; never crash or hang.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import tempfile

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import case, fail, fuzz_target, main, run  # noqa: E402

import nablagrad as ng  # noqa: E402

_DIR = tempfile.mkdtemp(prefix="ng_fuzz_files_")


def _seeds() -> list:
    out = []
    p = os.path.join(_DIR, "seed.safetensors")
    ng.save({"w": ng.ones(2, 3), "b": ng.zeros(3, dtype=ng.float64), "i": ng.tensor([1, 2]),
             "m": ng.tensor([True, False])}, p)
    out.append(open(p, "rb").read())
    ng.save({"model": {"fc": {"weight": ng.ones(1, 2)}}, "optim": {"lr": 0.1, "steps": [1, 2.5, None, "x"]},
             "epoch": 3, "e": ng.zeros(0, 4)}, p)
    out.append(open(p, "rb").read())
    import safetensors.numpy
    out.append(safetensors.numpy.save({"x": np.arange(6, dtype=np.int32).reshape(2, 3),
                                       "h": np.ones(2, np.float16)}, metadata={"format": "np"}))
    return out


SEEDS = _seeds()
ODD_NUMBERS = [0, 1, 7, 8, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -1, 1.5, None, "8"]
ODD_DTYPES = ["F32", "F64", "I64", "BOOL", "F16", "BF16", "U8", "I32", "F8_E4M3", "C64", "", "x", 5, None]


def _split(b: bytes) -> tuple:
    n = struct.unpack("<Q", b[:8])[0]
    return json.loads(b[8:8 + n]), b[8 + n:]


def _join(header: object, data: bytes, pad: bool = True) -> bytes:
    h = json.dumps(header).encode()
    if pad:
        h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    b = draw(st.sampled_from(SEEDS))
    kind = draw(st.sampled_from(["cut", "flip", "append", "length", "json", "json", "json", "structure"]))
    if kind == "cut":
        return b[:draw(st.integers(0, len(b) - 1))]
    if kind == "flip":
        arr = bytearray(b)
        for _ in range(draw(st.integers(1, 4))):
            arr[draw(st.integers(0, len(arr) - 1))] = draw(st.integers(0, 255))
        return bytes(arr)
    if kind == "append":
        return b + draw(st.binary(min_size=1, max_size=16))
    if kind == "length":
        n = draw(st.sampled_from([0, 1, 2, 7, 2**32, 100_000_001, 2**63, 2**64 - 1]) | st.integers(0, len(b)))
        return struct.pack("<Q", n) + b[8:]
    header, data = _split(b)
    names = [k for k in header if k != "__metadata__"]
    if kind == "structure":
        meta = header.setdefault("__metadata__", {})
        meta["nablagrad.structure"] = draw(st.sampled_from([
            "{", "[]", '{"version":1}', '{"version":99,"root":[]}', '{"version":1,"root":{"tensor":"nope"}}',
            '{"version":1,"root":{"float":"zz"}}', '{"version":1,"root":{"dict":[[1]]}}',
            '{"version":1,"root":' + "[" * 5000 + "]" * 5000 + "}", '{"version":1,"root":{"weird":1}}',
            '{"version":1,"root":[]}']))
        return _join(header, data)
    if not names:
        return _join({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, data)
    name = draw(st.sampled_from(names))
    ent = header[name]
    field = draw(st.sampled_from(["dtype", "shape", "offsets", "drop", "extra", "dup_offsets", "kind"]))
    if field == "dtype":
        ent["dtype"] = draw(st.sampled_from(ODD_DTYPES))
    elif field == "shape":
        shape = list(ent["shape"])
        choice = draw(st.integers(0, 3))
        if choice == 0 and shape:
            shape[draw(st.integers(0, len(shape) - 1))] = draw(st.sampled_from(ODD_NUMBERS))
        elif choice == 1:
            shape.append(draw(st.sampled_from([0, 1, 2, 2**62])))
        elif choice == 2:
            shape = shape[:-1]
        else:
            shape = draw(st.sampled_from([[2**32, 2**32], [2**62, 4], [-1], "abc", None, [[1]]]))
        ent["shape"] = shape
    elif field == "offsets":
        off = list(ent["data_offsets"])
        off[draw(st.integers(0, 1))] = draw(st.sampled_from(ODD_NUMBERS) | st.integers(0, len(data) + 16))
        ent["data_offsets"] = off if draw(st.integers(0, 5)) else off[:1]
    elif field == "drop":
        ent.pop(draw(st.sampled_from(["dtype", "shape", "data_offsets"])))
    elif field == "extra":
        ent["extra"] = 1
    elif field == "dup_offsets" and len(names) > 1:
        other = header[draw(st.sampled_from([n for n in names if n != name]))]
        ent["data_offsets"] = list(other["data_offsets"])
    else:
        header[name] = draw(st.sampled_from([[], "x", 3, None]))
    return _join(header, data, pad=draw(st.booleans()))


@fuzz_target(1500)
@given(blob=mutated())
def load_mutated(blob: bytes) -> None:
    path = os.path.join(_DIR, "f.safetensors")
    with open(path, "wb") as f:
        f.write(blob)
    case("load_mutated", blob[:200], f"... ({len(blob)} bytes)")
    ok, r = run(lambda: ng.load(path))
    if not ok:
        if not isinstance(r, ValueError):
            fail(f"ng.load raised {type(r).__name__} (API.md: ValueError for a corrupt file): {r}")
        if path not in str(r) and "f.safetensors" not in str(r):
            fail(f"ng.load's message does not name the file: {r}")
        return
    # accepted: the file must really be valid, and the tensors must match the header
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n])
    flat: dict = {}

    def walk(o: object, pre: str) -> None:
        if isinstance(o, ng.Tensor):
            flat[pre] = o
        elif isinstance(o, dict):
            for k, v in o.items():
                walk(v, f"{pre}.{k}" if pre else str(k))
        elif isinstance(o, (list, tuple)):
            for i, v in enumerate(o):
                walk(v, f"{pre}.{i}" if pre else str(i))

    walk(r, "")
    for name, ent in header.items():
        if name == "__metadata__":
            continue
        t = flat.get(name)
        if t is None:
            continue  # a structure may rename nothing, but a flat dict holds all
        if tuple(t.shape) != tuple(ent["shape"]):
            fail(f"ng.load gave {name} shape {t.shape}, header says {ent['shape']}")
        size = {"F32": 4, "F64": 8, "I64": 8, "BOOL": 1, "F16": 2, "I32": 4, "U8": 1}.get(ent["dtype"])
        if size is not None and (ent["data_offsets"][1] - ent["data_offsets"][0]) != size * int(np.prod(ent["shape"])):
            fail(f"ng.load accepted {name} whose byte count disagrees with its shape")


@fuzz_target(200)
@given(data=st.data())
def save_is_atomic(data: st.DataObject) -> None:
    """A save that fails part-way (an unsupported value after the tensors) leaves the old file."""
    path = os.path.join(_DIR, "atomic.safetensors")
    ng.save({"old": ng.ones(2)}, path)
    bad = data.draw(st.sampled_from([object(), {1.5: 2}, {"x": np.zeros(2, np.complex64)}, {"": 1}, b"x"]))
    case("save_is_atomic", bad)
    ok, r = run(lambda: ng.save({"a": ng.zeros(3), "b": [ng.ones(2), bad]}, path))
    if ok:
        fail(f"ng.save accepted {bad!r}")
    back = ng.load(path)
    if list(back) != ["old"]:
        fail(f"the previous file changed after a failed save: {list(back)}")
    left = [f for f in os.listdir(_DIR) if f.startswith(".atomic")]
    if left:
        fail(f"temporary files left behind: {left}")


if __name__ == "__main__":
    main()
