"""Builds the C++ tests with Clang under AddressSanitizer + UndefinedBehaviorSanitizer and runs them.

One build covers two of issue 11's checks, so CI pays for one more build of the test suite
instead of two:
  * Compilers: header-only users build with whatever they have. GCC is covered by test_cpp.py;
    this builds every test target with Clang (Debian's `clang` package) and the test targets'
    -Wall -Wextra -Werror. (Each header compiled alone, the header_check target, is left to the
    GCC build of test_cpp.py: it has no code to sanitize and took 2 minutes here.)
  * Sanitizers: the flags of the `clang-asan` preset in CMakePresets.json (-O1 -g1: line tables,
    -fsanitize=address,undefined, UBSan recovery off so that the first finding ends the run,
    leak detection on). Any report fails: a sanitizer error makes the program exit non-zero,
    and the output is also searched for report headers.

Where clang++ is not installed the sanitizer run uses the system compiler and the Clang check
skips. The build lives in build/cpp-clang-asan and persists between runs. $NABLAGRAD_CLANGXX
names another Clang.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build" / "cpp-clang-asan"
SAN_FLAGS = "-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
SAN_ENV = {
    "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:exitcode=23:strict_string_checks=1:check_initialization_order=1",
    "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1:exitcode=24",
    # test_threading's fork test forks while another thread allocates. The ASan runtimes of
    # Debian's Clang 14 and GCC 12 take no allocator lock around fork(), so the child can
    # inherit a held allocator lock and hang (seen once in a loaded CI dry run: SIGALRM after
    # 60 s); plain builds are safe (glibc's malloc handles fork) and test_cpp.py runs it there.
    "NABLAGRAD_TEST_NO_FORK": "1",
}
REPORT_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:", "SUMMARY: UndefinedBehavior")


def _tool(name: str) -> str:
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is required to build the C++ tests")
    return found


def _env() -> Dict[str, str]:
    return dict(os.environ, **SAN_ENV)


def _check_sanitizers_work(cxx: str, tmp: Path) -> None:
    src = tmp / "probe.cpp"
    src.write_text("#include <vector>\nint main() { std::vector<int> v(3, 1); return v[2] - 1; }\n")
    exe = tmp / "probe"
    res = subprocess.run([cxx, "-std=c++17", *SAN_FLAGS.split(), str(src), "-o", str(exe)], capture_output=True,
                         text=True, timeout=120)
    if res.returncode != 0:
        pytest.skip(f"{cxx} cannot build with {SAN_FLAGS}: {res.stderr[-500:]}")
    res = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60, env=_env())
    if res.returncode != 0:
        pytest.skip(f"sanitized programs do not run here: {(res.stdout + res.stderr)[-500:]}")


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Tuple[Path, bool]:
    clang = shutil.which(os.environ.get("NABLAGRAD_CLANGXX", "clang++"))
    cxx = clang or shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    _check_sanitizers_work(cxx, tmp_path_factory.mktemp("asan"))
    cmake = _tool("cmake")
    gen = ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={_tool('ninja')}"]
    cfg = subprocess.run([cmake, "-S", str(ROOT), "-B", str(BUILD), *gen, f"-DCMAKE_CXX_COMPILER={cxx}",
                          "-DCMAKE_BUILD_TYPE=RelWithDebInfo", "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g1",
                          f"-DCMAKE_CXX_FLAGS={SAN_FLAGS}", "-DNABLAGRAD_BUILD_TESTS=ON",
                          "-DNABLAGRAD_HEADER_CHECK=OFF"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert cfg.returncode == 0, cfg.stdout + cfg.stderr
    t0 = time.perf_counter()
    res = subprocess.run([cmake, "--build", str(BUILD), "-j", "2"], cwd=ROOT, capture_output=True, text=True,
                         timeout=3600)
    assert res.returncode == 0, (f"build with {cxx} failed (-Wall -Wextra -Werror, {SAN_FLAGS}):\n"
                                 + res.stdout[-20000:] + res.stderr[-5000:])
    print(f"C++ tests built with {cxx} + ASan/UBSan in {time.perf_counter() - t0:.0f} s")
    return BUILD, clang is not None


def test_cpp_suite_builds_with_clang(build: Tuple[Path, bool]) -> None:
    """Every test target compiled with Clang under -Wall -Wextra -Werror (the build fixture)."""
    path, is_clang = build
    if not is_clang:
        pytest.skip("clang++ is not installed")
    cache = (path / "CMakeCache.txt").read_text()
    compiler = next(line for line in cache.splitlines() if line.startswith("CMAKE_CXX_COMPILER:"))
    assert "clang" in compiler.lower(), compiler
    ninja = (path / "build.ninja").read_text()
    flags = [line for line in ninja.splitlines() if line.strip().startswith("FLAGS =") and "-Werror" in line]
    assert flags and all("-Wall" in f and "-Wextra" in f for f in flags), "the test targets lost -Wall -Wextra -Werror"


def test_cpp_suite_under_asan_ubsan(build: Tuple[Path, bool]) -> None:
    """Every CTest test (tests/cpp/test_*.cpp, the link test) passes with no sanitizer report."""
    path, _ = build
    t0 = time.perf_counter()
    res = subprocess.run([_tool("ctest"), "--test-dir", str(path), "--output-on-failure", "-j", "1"], cwd=ROOT,
                         capture_output=True, text=True, timeout=3600, env=_env())
    out = res.stdout + res.stderr
    sys.stdout.write(res.stdout[-3000:] + f"\nC++ suite under ASan+UBSan: {time.perf_counter() - t0:.0f} s\n")
    found = [m for m in REPORT_MARKERS if m in out]
    assert res.returncode == 0 and not found, f"sanitizer reports {found} (exit {res.returncode}):\n{out[-20000:]}"
    assert "100% tests passed" in res.stdout, res.stdout[-3000:]
