#!/usr/bin/env bash
# Developer build: compiles the extension into build/dev-NAME and lays out an importable
# package in build/dev-NAME/site (symlinks to python/nablagrad/* plus the built _core).
# Several people can iterate side by side, each with their own NAME:
#     scripts/dev_build.sh alice && PYTHONPATH=build/dev-alice/site python -m pytest tests/python
set -euo pipefail
name=${1:-default}
root=$(cd "$(dirname "$0")/.." && pwd)
build="$root/build/dev-$name"
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DNABLAGRAD_BUILD_PYTHON=ON \
  -Dpybind11_DIR="$(python -c 'import pybind11; print(pybind11.get_cmake_dir())')" \
  -DPython_EXECUTABLE="$(command -v python)" > "$build.configure.log" 2>&1 || { cat "$build.configure.log"; exit 1; }
cmake --build "$build" --target _core -j "${JOBS:-2}"
site="$build/site/nablagrad"
rm -rf "$build/site"
mkdir -p "$site"
for f in "$root"/python/nablagrad/*; do
  ln -s "$f" "$site/$(basename "$f")"
done
ln -s "$build"/_core*.so "$site/"
echo "PYTHONPATH=$build/site"
