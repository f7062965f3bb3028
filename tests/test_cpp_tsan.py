"""Builds the threading C++ tests with ThreadSanitizer and fails on any report.

tests/cpp/test_grad_threads.cpp reads and replaces a leaf's .grad while backward runs into
it (with a stand-in for the GIL), writes a tensor in place while backward reads its version,
and resizes the thread pool while parallel_for runs. tests/cpp/test_threading.cpp runs three
threads of inference on one LSTM + attention model while a fourth trains another, and a pool
that throws and resizes between regions; test_layer.cpp's concurrent inference runs a
conv/batch-norm/pooling/dropout stack from four threads. Under TSan a data race, or a lock-order
inversion that could deadlock (leaf mutex -> GIL against GIL -> leaf mutex), is a report;
TSAN_OPTIONS makes the first one end the run with exit code 66.

The build lives in build/cpp-tsan (-fsanitize=thread -O1 -g1) and builds only these targets.
Skipped when the compiler cannot build and run a ThreadSanitizer program.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build" / "cpp-tsan"
TSAN_FLAGS = "-fsanitize=thread -O1 -g1"
TSAN_OPTIONS = "halt_on_error=1 exitcode=66 second_deadlock_stack=1"
# test_grad_threads: the cross-thread state; test_autograd: the pool and concurrent backward
# tests among the engine's own; test_threading and test_layer: concurrent inference and training.
TARGETS = ["test_grad_threads", "test_autograd", "test_threading", "test_layer"]


def _tool(name: str) -> str:
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is required to build the TSan tests")
    return found


def _tsan_env() -> dict:
    # TSan cannot follow fork() in a multi-threaded process: test_threading skips its fork test.
    return dict(os.environ, TSAN_OPTIONS=TSAN_OPTIONS, NABLAGRAD_TEST_NO_FORK="1")


def _check_tsan_works(cxx: str, tmp: Path) -> None:
    """Skips unless `cxx` builds and runs a race-free threaded program under TSan."""
    src = tmp / "tsan_probe.cpp"
    src.write_text("#include <atomic>\n#include <thread>\nstd::atomic<int> n{0};\n"
                   "int main() { std::thread t([] { ++n; }); ++n; t.join(); return n == 2 ? 0 : 1; }\n")
    exe = tmp / "tsan_probe"
    res = subprocess.run([cxx, "-std=c++17", "-pthread", *TSAN_FLAGS.split(), str(src), "-o", str(exe)],
                         capture_output=True, text=True, timeout=120)
    if res.returncode != 0:
        pytest.skip(f"{cxx} cannot build with -fsanitize=thread: {res.stderr[-500:]}")
    res = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60, env=_tsan_env())
    if res.returncode != 0:  # e.g. "unexpected memory mapping" on some kernels
        pytest.skip(f"ThreadSanitizer programs do not run here: {(res.stdout + res.stderr)[-500:]}")


@pytest.fixture(scope="module")
def tsan_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cxx = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    _check_tsan_works(cxx, tmp_path_factory.mktemp("tsan"))
    cmake = _tool("cmake")
    gen = ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={_tool('ninja')}"]
    cfg = subprocess.run([cmake, "-S", str(ROOT), "-B", str(BUILD), *gen, f"-DCMAKE_CXX_COMPILER={cxx}",
                          "-DCMAKE_BUILD_TYPE=Debug", f"-DCMAKE_CXX_FLAGS={TSAN_FLAGS}",
                          "-DCMAKE_EXE_LINKER_FLAGS=-fsanitize=thread", "-DNABLAGRAD_BUILD_TESTS=ON"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert cfg.returncode == 0, cfg.stdout + cfg.stderr
    build = subprocess.run([cmake, "--build", str(BUILD), "--target", *TARGETS, "-j", "2"], cwd=ROOT,
                           capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, "TSan build failed:\n" + build.stdout[-20000:] + build.stderr[-5000:]
    return BUILD


@pytest.mark.parametrize("target", TARGETS)
def test_no_thread_sanitizer_reports(tsan_build: Path, target: str) -> None:
    res = subprocess.run([str(tsan_build / target)], cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env=_tsan_env())
    out = res.stdout + res.stderr
    assert "ThreadSanitizer" not in out and res.returncode == 0, (
        f"{target} exited with {res.returncode} under ThreadSanitizer:\n{out[-20000:]}")
