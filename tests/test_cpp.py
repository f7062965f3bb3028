"""Builds the C++ tests with CMake (-Wall -Wextra -Werror) and runs them with CTest.

This keeps the C++ and Python suites under the one test command (pytest). The build
directory (build/cpp-tests) persists between runs, so only changed files recompile.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build" / "cpp-tests"


def _tool(name: str) -> str:
    """A build tool, preferring the one installed beside this interpreter (the venv's)."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is required to build the C++ tests (pip install {name})")
    return found


def _run(cmd: list, timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def cpp_build() -> Path:
    cmake = _tool("cmake")
    ninja = Path(sys.executable).parent / "ninja"
    gen = ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja if ninja.exists() else _tool('ninja')}"]
    cfg = _run([cmake, "-S", str(ROOT), "-B", str(BUILD), *gen, "-DCMAKE_BUILD_TYPE=Release",
                "-DNABLAGRAD_BUILD_TESTS=ON"], timeout=600)
    assert cfg.returncode == 0, cfg.stdout + cfg.stderr
    jobs = str(os.cpu_count() or 2)
    build = _run([cmake, "--build", str(BUILD), "-j", jobs], timeout=3000)
    assert build.returncode == 0, "C++ build failed (warnings are errors):\n" + build.stdout[-20000:] + build.stderr[-20000:]
    return BUILD


def _ctest_names(build: Path) -> list:
    out = _run([_tool("ctest"), "--test-dir", str(build), "-N"], timeout=120).stdout
    names = [line.split(":", 1)[1].strip() for line in out.splitlines() if line.strip().startswith("Test")
             and ":" in line]
    return names


def test_cpp_suite(cpp_build: Path) -> None:
    """Every CTest test (each tests/cpp/test_*.cpp, the link test) passes."""
    names = _ctest_names(cpp_build)
    assert "link_test" in names and len(names) >= 3, names
    res = _run([_tool("ctest"), "--test-dir", str(cpp_build), "--output-on-failure", "-j", "1"], timeout=1800)
    sys.stdout.write(res.stdout[-5000:])
    assert res.returncode == 0, res.stdout[-20000:] + res.stderr[-5000:]


def test_cpp_suite_portable_simd(cpp_build: Path) -> None:
    """The kernels' portable fallback passes the same tests (NABLAGRAD_SIMD=portable)."""
    env = dict(os.environ, NABLAGRAD_SIMD="portable")
    res = subprocess.run([_tool("ctest"), "--test-dir", str(cpp_build), "--output-on-failure", "-j", "1"], cwd=ROOT,
                         capture_output=True, text=True, timeout=1800, env=env)
    assert res.returncode == 0, res.stdout[-20000:] + res.stderr[-5000:]


def test_headers_compile_standalone() -> None:
    """Each public header compiles alone with plain `g++ -std=c++17 -pthread` (no other flags)."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.fail("a C++ compiler is required")
    headers = sorted((ROOT / "cpp" / "include").rglob("*.h"))
    assert headers
    src = "\n".join(f"#include <{h.relative_to(ROOT / 'cpp' / 'include').as_posix()}>" for h in headers)
    # all headers together, syntax only (each alone is checked by the CMake header_check target)
    res = subprocess.run([cxx, "-std=c++17", "-pthread", "-I", str(ROOT / "cpp" / "include"), "-fsyntax-only",
                          "-x", "c++", "-"], input=src, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-5000:]


_EXTERN_PROBE = """#include <nablagrad/nablagrad.h>
using namespace nablagrad;
double f(const Tensor& x, const Tensor& w, const Tensor& k) {
  nn::LSTM rnn(nn::LSTMOptions(4, 4));
  nn::MultiHeadAttention mha(4, 2);
  Tensor loss = x.matmul(w).sum() + conv2d(k, k, Tensor(), Conv2dFuncOptions().padding(1)).sum() +
                rnn.forward(x).sum() + mha.forward(x).sum();
  loss.backward();
  return loss.item<double>();
}
"""
_ENTRY_POINTS = ["gemm", "conv2d_forward", "conv2d_backward_input", "conv2d_backward_weight", "rnn_layer_forward",
                 "rnn_layer_backward", "attention_forward_block", "attention_backward_block"]


def _nm_kind(line: str) -> str:
    """The symbol type letter of one `nm` line: "U" for undefined, "W" / "T" for defined code."""
    parts = line.split()
    return parts[0] if len(parts[0]) == 1 else parts[1]


def test_extern_kernels_compile_nothing_of_the_kernels(tmp_path: Path) -> None:
    """With NABLAGRAD_EXTERN_KERNELS a unit that trains a conv + LSTM + attention model calls every
    kernel entry point (kernels/instances.h) for float and double without compiling any: each is
    an undefined symbol and no micro-kernel is defined. An `inline` on an entry point, or a new
    path from the ops into a kernel's internals, would compile them again in every unit (the
    tests and the extension are built this way to cut their build time by a third)."""
    cxx = shutil.which("g++") or shutil.which("c++")
    nm = shutil.which("nm")
    if cxx is None or nm is None:
        pytest.fail("a C++ compiler and nm are required")
    src = tmp_path / "probe.cpp"
    src.write_text(_EXTERN_PROBE)
    obj = tmp_path / "probe.o"
    # -O1: with optimisation GCC compiles an `inline` function for inlining despite `extern template`
    res = subprocess.run([cxx, "-std=c++17", "-O1", "-pthread", "-DNABLAGRAD_EXTERN_KERNELS", "-I",
                          str(ROOT / "cpp" / "include"), "-c", str(src), "-o", str(obj)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-5000:]
    symbols = subprocess.run([nm, "-C", str(obj)], capture_output=True, text=True, timeout=60).stdout.splitlines()
    for name in _ENTRY_POINTS:
        for t in ("float", "double"):
            sig = f"nablagrad::kernels::{name}<{t}>("
            kinds = [_nm_kind(line) for line in symbols if sig in line]
            assert kinds == ["U"], f"{name}<{t}>: {kinds or 'not referenced'} (expected one undefined reference)"
    internals = ("gemm_detail::", "micro_kernel", "_kernel_avx", "_kernel_portable", "winograd", "rnn_detail::",
                 "attention_detail::", "conv_detail::forward_", "conv_detail::backward_", "narrow_detail::",
                 "smallc_detail::", "tile_detail::", "dot_avx2", "dot_portable", "narrow_row_", "store_tile_",
                 "sum_rows_", "smallc_dx_block")
    compiled = [line for line in symbols if _nm_kind(line) != "U" and any(d in line for d in internals)]
    assert not compiled, "kernel code compiled in an extern-kernels unit:\n" + "\n".join(compiled[:20])


def test_installed_cmake_package(tmp_path: Path) -> None:
    """`cmake --install` exports nablagrad::nablagrad; a consumer builds against it."""
    cmake = _tool("cmake")
    gen = ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={_tool('ninja')}"]
    prefix = tmp_path / "prefix"
    res = _run([cmake, "-S", str(ROOT), "-B", str(tmp_path / "lib"), *gen], timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    res = _run([cmake, "--install", str(tmp_path / "lib"), "--prefix", str(prefix)], timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (prefix / "include" / "nablagrad" / "nablagrad.h").exists()
    app = tmp_path / "app"
    app.mkdir()
    (app / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.18)\nproject(app CXX)\n"
        "find_package(nablagrad 0.1 REQUIRED)\n"
        "add_executable(app main.cpp)\ntarget_link_libraries(app PRIVATE nablagrad::nablagrad)\n"
        "add_executable(train_digits train_digits.cpp)\n"
        "target_link_libraries(train_digits PRIVATE nablagrad::nablagrad)\n")
    # The C++ example builds against the installed headers alone (tests/test_cpp_example.py runs it).
    shutil.copy(ROOT / "examples" / "cpp" / "train_digits.cpp", app / "train_digits.cpp")
    (app / "main.cpp").write_text(
        "#include <nablagrad/nablagrad.h>\nusing namespace nablagrad;\n"
        "int main() { Tensor w = Tensor::full({3}, 2.0).requires_grad_();\n"
        "  (w * w).sum().backward(); return (w.grad() == 4.0).sum().item<int64_t>() == 3 ? 0 : 1; }\n")
    res = _run([cmake, "-S", str(app), "-B", str(app / "build"), *gen, f"-DCMAKE_PREFIX_PATH={prefix}",
                "-DCMAKE_BUILD_TYPE=Release"], timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    res = _run([cmake, "--build", str(app / "build")], timeout=1800)
    assert res.returncode == 0, res.stdout + res.stderr
    assert subprocess.run([str(app / "build" / "app")], timeout=60).returncode == 0
    assert (app / "build" / "train_digits").exists()
