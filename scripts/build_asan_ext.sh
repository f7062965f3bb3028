#!/usr/bin/env bash
# Builds the Python extension with AddressSanitizer + UndefinedBehaviorSanitizer into
# build/asan-ext (or $1) and lays out an importable package in <build>/site, like
# scripts/dev_build.sh. Run Python against it with the ASan runtime preloaded (the
# interpreter itself is not instrumented; libstdc++ right after libasan, or ASan's __cxa_throw
# interceptor finds no real function and the first C++ exception aborts):
#     scripts/build_asan_ext.sh
#     LD_PRELOAD="$(c++ -print-file-name=libasan.so) $(c++ -print-file-name=libstdc++.so)" \
#       ASAN_OPTIONS=detect_leaks=0 \
#       PYTHONPATH=build/asan-ext/site python -m pytest tests/python
# tests/test_python_asan.py does exactly this and fails on any sanitizer report.
# Environment: CXX (compiler, default c++), PYTHON (default python3), JOBS (default 2).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build/asan-ext}
python=${PYTHON:-python3}
cxx=${CXX:-c++}
flags="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g1"
mkdir -p "$build"
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DNABLAGRAD_BUILD_PYTHON=ON \
  -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1" \
  -DCMAKE_SHARED_LINKER_FLAGS="-fsanitize=address,undefined" \
  -Dpybind11_DIR="$("$python" -c 'import pybind11; print(pybind11.get_cmake_dir())')" \
  -DPython_EXECUTABLE="$(command -v "$python")" > "$build/configure.log" 2>&1 || { cat "$build/configure.log"; exit 1; }
cmake --build "$build" --target _core -j "${JOBS:-2}"
site="$build/site/nablagrad"
rm -rf "$build/site"
mkdir -p "$site"
for f in "$root"/python/nablagrad/*; do
  ln -s "$f" "$site/$(basename "$f")"
done
ln -s "$build"/_core*.so "$site/"
echo "PYTHONPATH=$build/site"
