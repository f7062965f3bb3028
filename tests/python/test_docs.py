"""The documentation site builds without warnings, and the tutorial's code runs as written.

Every fenced block of docs/tutorial.md is executed in order in a scratch folder: the
```python blocks as one script, the ```cpp block saved as the file the text names, and the
```bash block with bash (with this interpreter first on PATH). The C++ program must print
the same predictions as the Python part.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
TUTORIAL = DOCS / "tutorial.md"

FENCE = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```", re.S | re.M)


def blocks(path: Path) -> List[Tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(path.read_text())]


def test_tutorial_blocks_are_all_of_known_kinds() -> None:
    kinds = [k for k, _ in blocks(TUTORIAL)]
    assert kinds.count("python") >= 4 and kinds.count("cpp") == 1 and kinds.count("bash") == 1, kinds
    assert set(kinds) <= {"python", "cpp", "bash"}, kinds


def test_tutorial_runs_end_to_end(tmp_path: Path) -> None:
    if shutil.which("g++") is None:
        pytest.skip("the tutorial's last step needs g++")
    parts = blocks(TUTORIAL)
    script = "\n".join(code for kind, code in parts if kind == "python")
    (tmp_path / "tutorial.py").write_text(script)
    env = dict(os.environ, PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    # `python` in the bash block must be this interpreter, even outside a venv.
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (shim / "python").chmod(0o755)
    env["PATH"] = str(shim) + os.pathsep + env["PATH"]
    # The nablagrad this test imports, whatever the working directory (a dev layout or site-packages).
    import nablagrad

    pkg_parent = str(Path(nablagrad.__file__).parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_parent, os.environ.get("PYTHONPATH", "")) if p)
    py = subprocess.run([sys.executable, "tutorial.py"], cwd=tmp_path, env=env, capture_output=True,
                        text=True, timeout=600)
    assert py.returncode == 0, py.stdout + py.stderr
    expected = re.search(r"expected: \[([\d, ]+)\]", py.stdout)
    assert expected, py.stdout
    assert (tmp_path / "digits.safetensors").exists()

    cpp = next(code for kind, code in parts if kind == "cpp")
    (tmp_path / "predict.cpp").write_text(cpp)
    bash = next(code for kind, code in parts if kind == "bash")
    run = subprocess.run(["bash", "-euo", "pipefail", "-c", bash], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout + run.stderr
    got = re.search(r"predicted:((?: \d+)+)", run.stdout)
    assert got, run.stdout
    assert got.group(1).split() == [d.strip() for d in expected.group(1).split(",")]


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    pytest.importorskip("material")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                        "-d", str(tmp_path / "site")], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-5000:] + r.stderr[-5000:]
    for page in ("index.html", "tutorial/index.html", "reference/nn/index.html", "convolution/index.html"):
        assert (tmp_path / "site" / page).exists(), page
    # The API pages are generated from docstrings, not empty shells.
    nn_page = (tmp_path / "site" / "reference" / "nn" / "index.html").read_text()
    assert "Linear" in nn_page and "state_dict" in nn_page


def test_docs_links_point_at_existing_pages() -> None:
    """Relative links between pages (mkdocs checks them too; this runs without mkdocs)."""
    missing = []
    for page in DOCS.rglob("*.md"):
        for target in re.findall(r"\]\(([^)#\s]+\.md)(?:#[^)]*)?\)", page.read_text()):
            if not (page.parent / target).resolve().exists():
                missing.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not missing, missing
