#!/usr/bin/env bash
# Build an mmcv wheel *with its ops* from the PyPI sdist, against the torch of
# the active interpreter.
#
# Why this exists: OpenMMLab publishes no mmcv wheels for torch 2.14, and the
# sdist's setup.py forces `-std=c++14` / `-std=c++17`, while torch 2.14's
# headers need C++20.  We patch only those flags, then build with
# --no-build-isolation (so it compiles against *our* torch) and setuptools<70
# (mmcv's setup.py still imports pkg_resources).
#
# Usage: build_mmcv.sh PYTHON OUT_DIR
#   MMCV_VERSION  version to build (default: the pin in requirements/pins.txt)
#   FORCE_CUDA=1  also compile mmcv's CUDA ops (needs nvcc; much slower)
#   MAX_JOBS      parallel compile jobs (default: number of cores)
set -euo pipefail
PY=${1:?usage: build_mmcv.sh PYTHON OUT_DIR}
OUT=${2:?usage: build_mmcv.sh PYTHON OUT_DIR}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
version=${MMCV_VERSION:-$(sed -n 's/^mmcv==//p' "$root/requirements/pins.txt")}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "[mmcv] fetching sdist mmcv==$version"
# torch 2.14 itself needs setuptools>=77, so the old setuptools lives in an
# overlay on PYTHONPATH for this build only; the venv keeps its own.
"$PY" -m pip install --quiet --no-deps --target "$work/overlay" "setuptools<70"
export PYTHONPATH="$work/overlay${PYTHONPATH:+:$PYTHONPATH}"
# --no-build-isolation: computing the sdist metadata imports torch and pkg_resources.
"$PY" -m pip download --quiet --no-deps --no-binary :all: --no-build-isolation "mmcv==$version" -d "$work"
tar -xzf "$work"/mmcv-"$version".tar.gz -C "$work"
src="$work/mmcv-$version"

echo "[mmcv] patching C++ standard to C++20 (torch 2.14 headers need it)"
"$PY" "$here/patch_cxx_std.py" "$src/setup.py"

echo "[mmcv] compiling ops (MAX_JOBS=${MAX_JOBS:-$(nproc)}, FORCE_CUDA=${FORCE_CUDA:-0}); about 10 min on 2 cores"
mkdir -p "$OUT"
MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} FORCE_CUDA=${FORCE_CUDA:-0} \
  "$PY" -m pip wheel --no-build-isolation --no-deps -w "$OUT" "$src"
echo "[mmcv] wheel written to $OUT"
