"""Saving and loading tensors and checkpoints in the safetensors format.

    >>> ng.save({"model": model.state_dict(), "optim": opt.state_dict(), "epoch": 3}, "ckpt.safetensors")
    >>> ckpt = ng.load("ckpt.safetensors")
    >>> model.load_state_dict(ckpt["model"])

Each tensor is stored under its path in the structure joined with dots (``model.fc.weight``;
list indices as numbers), so the file opens in any safetensors reader as a flat dict. The
structure itself, with its non-tensor values (ints, floats exactly, bools, strings, None), is
JSON in the file's metadata under the key ``"nablagrad.structure"``; ``load`` rebuilds it.
A file written by another tool (no such key) loads as a flat dict ``name -> Tensor``.

Writes are atomic: the bytes go to a temporary file in the same folder, which is flushed,
fsync'ed and renamed over the target (then the folder is fsync'ed), so a crash mid-save leaves
the previous file intact. Loading parses JSON and raw little-endian data only: it never executes
code. Truncated, foreign or inconsistent files raise ValueError naming the file and the problem.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Dict, List, Set, Union

import numpy as np
import safetensors
import safetensors.numpy

from ._tensor import Tensor, from_numpy

__all__ = ["save", "load", "STRUCTURE_KEY"]

STRUCTURE_KEY = "nablagrad.structure"
_FORMAT_VERSION = 1
_PathLike = Union[str, "os.PathLike[str]"]

_NATIVE = (np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.int64), np.dtype(np.bool_))


# ------------------------------------------------------------------------------------ save
def _tensor_array(t: Any, where: str) -> np.ndarray:
    """A C-contiguous NumPy array of a Tensor's (or array's) values (no copy when contiguous)."""
    if isinstance(t, Tensor):
        arr = np.asarray(t.detach())
    else:
        arr = t
    if arr.dtype not in _NATIVE:
        raise TypeError(f"ng.save: the array at {where} has dtype {arr.dtype}; "
                        "supported are float32, float64, int64 and bool")
    # (not np.ascontiguousarray: it turns a 0-d array into shape (1,))
    return arr if arr.flags.c_contiguous else arr.copy(order="C")


def _encode(obj: Any, path: List[str], tensors: Dict[str, np.ndarray]) -> Any:
    """The JSON form of ``obj`` (tensors replaced by references to their stored names)."""
    where = "'" + ".".join(path) + "'" if path else "the top level"
    if isinstance(obj, (Tensor, np.ndarray)):
        if not path:
            raise TypeError("ng.save: obj must be a dict or list of tensors, not a single tensor "
                            "(wrap it: {'tensor': t})")
        name = ".".join(path)
        if name in tensors:
            raise ValueError(f"ng.save: two tensors would be stored under the same name {name!r} "
                             "(keys containing '.' make the dotted paths ambiguous); rename one")
        if name == "__metadata__":
            raise ValueError("ng.save: '__metadata__' is reserved by the safetensors format")
        tensors[name] = _tensor_array(obj, where)
        return {"tensor": name}
    if obj is None or isinstance(obj, (bool, np.bool_)):
        return None if obj is None else bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return {"float": float(obj).hex()}  # exact, including inf and nan
    if isinstance(obj, str):
        return obj
    if isinstance(obj, (list, tuple)):
        items = [_encode(v, path + [str(i)], tensors) for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else {"tuple": items}
    if isinstance(obj, dict):
        pairs = []
        for k, v in obj.items():
            if isinstance(k, bool) or not isinstance(k, (str, int)):
                raise TypeError(f"ng.save: dict key {k!r} at {where} is a {type(k).__name__}; "
                                "keys must be strings or ints")
            if isinstance(k, str) and k == "":
                raise ValueError(f"ng.save: empty dict key at {where}")
            pairs.append([k, _encode(v, path + [str(k)], tensors)])
        return {"dict": pairs}
    raise TypeError(f"ng.save: unsupported value of type {type(obj).__name__} at {where}; "
                    "a checkpoint holds tensors, ints, floats, bools, strings, None, lists and dicts")


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_atomic(path: str, data: bytes, chunk: int = 1 << 24) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        try:
            mode = os.stat(path).st_mode & 0o777
        except FileNotFoundError:
            mode = 0o644
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            view = memoryview(data)
            for start in range(0, len(view), chunk):
                f.write(view[start:start + chunk])
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(folder)


def save(obj: Any, path: _PathLike) -> None:
    """Writes ``obj`` (a state dict, or nested dicts/lists of tensors, ints, floats, bools,
    strings and None) to ``path`` in the safetensors format, atomically."""
    path = os.fspath(path)
    if not isinstance(obj, (dict, list, tuple)):
        raise TypeError(f"ng.save: obj must be a dict or a list, got {type(obj).__name__}")
    tensors: Dict[str, np.ndarray] = {}
    structure = _encode(obj, [], tensors)
    meta = {STRUCTURE_KEY: json.dumps({"version": _FORMAT_VERSION, "root": structure},
                                      ensure_ascii=True, allow_nan=False, separators=(",", ":"))}
    data = safetensors.numpy.save(tensors, metadata=meta)
    _write_atomic(path, data)


# ------------------------------------------------------------------------------------ load
class _Corrupt(ValueError):
    pass


def _decode(node: Any, tensors: Dict[str, Tensor], used: Set[str]) -> Any:
    if node is None or isinstance(node, (bool, str)):
        return node
    if isinstance(node, int):
        return node
    if isinstance(node, list):
        return [_decode(v, tensors, used) for v in node]
    if isinstance(node, dict) and len(node) == 1:
        (tag, val), = node.items()
        if tag == "tensor" and isinstance(val, str):
            if val not in tensors:
                raise _Corrupt(f"the structure refers to tensor {val!r}, which the file does not hold")
            used.add(val)
            return tensors[val]
        if tag == "float" and isinstance(val, str):
            try:
                return float.fromhex(val)
            except ValueError:
                raise _Corrupt(f"bad float {val!r} in the structure") from None
        if tag == "tuple" and isinstance(val, list):
            return tuple(_decode(v, tensors, used) for v in val)
        if tag == "dict" and isinstance(val, list):
            out: Dict[Any, Any] = {}
            for pair in val:
                if (not isinstance(pair, list) or len(pair) != 2 or isinstance(pair[0], bool)
                        or not isinstance(pair[0], (str, int))):
                    raise _Corrupt("malformed dict entry in the structure")
                out[pair[0]] = _decode(pair[1], tensors, used)
            return out
    raise _Corrupt(f"unrecognised node {str(node)[:80]!r} in the structure")


def _as_native(arr: np.ndarray, name: str, path: str) -> np.ndarray:
    if arr.dtype in _NATIVE:
        return arr
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64)  # other integer kinds -> int64, as ng.tensor does
    if arr.dtype == np.float16:
        return arr.astype(np.float32)  # exact
    raise ValueError(f"ng.load: {path}: tensor {name!r} has dtype {arr.dtype}, which nablagrad cannot hold")


def _to_tensor(arr: np.ndarray) -> Tensor:
    if not arr.flags.c_contiguous or not arr.flags.writeable:
        arr = np.array(arr, order="C")
    return from_numpy(arr)


def load(path: _PathLike) -> Any:
    """Reads a file written by :func:`save` (the same structure back) or any safetensors file
    (a flat dict ``name -> Tensor``)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"ng.load: no such file: {path!r}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"ng.load: {path!r} is a directory")
    try:
        with safetensors.safe_open(path, framework="numpy") as f:
            meta = f.metadata() or {}
            names = list(f.keys())
            arrays = {n: f.get_tensor(n) for n in names}
    except safetensors.SafetensorError as e:
        raise ValueError(f"ng.load: {path!r} is not a valid safetensors file: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"ng.load: {path!r} could not be read as a safetensors file: {e}") from None
    except Exception as e:  # the binding reports some header problems as other exception types
        raise ValueError(f"ng.load: {path!r} is not a valid safetensors file: {type(e).__name__}: {e}") from None
    tensors = {n: _to_tensor(_as_native(a, n, path)) for n, a in arrays.items()}
    raw = meta.get(STRUCTURE_KEY)
    if raw is None:
        return tensors  # written by another tool
    try:
        doc = json.loads(raw)
        if not isinstance(doc, dict) or "root" not in doc or not isinstance(doc.get("version"), int):
            raise _Corrupt("the structure metadata is not a nablagrad structure")
        if doc["version"] > _FORMAT_VERSION:
            raise _Corrupt(f"written by a newer nablagrad (format version {doc['version']})")
        used: Set[str] = set()
        out = _decode(doc["root"], tensors, used)
    except (json.JSONDecodeError, RecursionError, _Corrupt) as e:
        raise ValueError(f"ng.load: {path!r}: corrupt checkpoint structure: {e}") from None
    extra = sorted(set(tensors) - used)
    if extra:
        raise ValueError(f"ng.load: {path!r}: the file holds tensors the structure does not mention: "
                         + ", ".join(map(repr, extra[:5])))
    return out
