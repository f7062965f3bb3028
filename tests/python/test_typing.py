"""The type stubs of the extension (python/nablagrad/_core.pyi) stay in sync with the built
module, and a typed usage snippet (tensors, functional, layers, optimizers, schedulers, data,
save/load) passes mypy in strict mode."""

from __future__ import annotations

import ast
import os
import runpy
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import nablagrad as ng
from nablagrad import _core

HERE = Path(__file__).resolve().parent
STUB = Path(ng.__file__).resolve().parent / "_core.pyi"
USAGE = HERE / "typing_usage.py"


def _stub_tree() -> ast.Module:
    return ast.parse(STUB.read_text(), filename=str(STUB))


def _declared(body: list) -> set:
    names = set()
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def _public(names) -> set:
    return {n for n in names if not n.startswith("_")}


def test_stub_declares_every_public_name_of_core():
    declared = _public(_declared(_stub_tree().body))
    declared = {n for n in declared if not n.startswith("_")}
    actual = _public(dir(_core))
    missing = sorted(actual - declared)
    extra = sorted(declared - actual)
    assert not missing, f"_core.pyi lacks {missing}: declare the new bindings in python/nablagrad/_core.pyi"
    assert not extra, f"_core.pyi declares {extra}, which _core does not have"


def test_stub_declares_every_public_tensor_attribute():
    cls = next(n for n in _stub_tree().body if isinstance(n, ast.ClassDef) and n.name == "Tensor")
    declared = _public(_declared(cls.body))
    actual = _public(dir(_core.Tensor))
    missing = sorted(actual - declared)
    extra = sorted(declared - actual)
    assert not missing, f"class Tensor in _core.pyi lacks {missing}"
    assert not extra, f"class Tensor in _core.pyi declares {extra}, which Tensor does not have"


def test_private_stub_names_exist():
    declared = {n for n in _declared(_stub_tree().body) if n.startswith("_") and not n.startswith("__")}
    declared -= {"_Scalar", "_ArrayLike", "_Axis", "_ShapeLike", "_DTypeLike"}  # stub-only aliases
    assert not sorted(n for n in declared if not hasattr(_core, n))


def test_py_typed_marker():
    assert (STUB.parent / "py.typed").exists()


def test_usage_snippet_runs(tmp_path):
    ns = runpy.run_path(str(USAGE))
    assert isinstance(ns["usage"](), float)
    assert isinstance(ns["training"](str(tmp_path / "ckpt.safetensors")), float)


def test_mypy_on_usage_snippet():
    pytest.importorskip("mypy")
    root = HERE.parent.parent  # the repository (pyproject.toml holds the mypy settings)
    # A persistent cache: the first run parses NumPy's stubs (~15 s), later runs take ~1 s.
    cache = Path(tempfile.gettempdir()) / "nablagrad-mypy-cache"

    env = dict(os.environ)
    if "site-packages" not in STUB.parts:  # a dev layout (PYTHONPATH=...): point mypy at it
        env["MYPYPATH"] = str(STUB.parent.parent)
    cmd = [
        sys.executable, "-m", "mypy", str(USAGE),
        "--strict",  # the public API's types are precise enough for strict users
        "--follow-imports=silent",  # check the snippet against the package's types only
        "--warn-unused-ignores", "--no-error-summary", "--hide-error-context",
        "--cache-dir", str(cache), "--config-file", str(root / "pyproject.toml"),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
