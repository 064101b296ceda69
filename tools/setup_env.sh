#!/usr/bin/env bash
# One-command set-up (called by `make setup`, `make demo`, `make test`).
#
# Creates a virtual environment in a cache folder outside the clone, links it
# as ./.venv, installs every pinned dependency (requirements/pins.txt), builds
# mmcv with ops from its sdist (third_party/mmcv/), installs this package in
# editable mode and compiles our deformable-attention op; then builds a second
# venv with PSALM's pins (requirements/psalm-pins.txt, linked as ./.venv-psalm)
# for the PSALM drop-in tests.  Every slow step is
# cached, keyed by the versions it depends on, so a second run is quick.
#
# Environment:
#   PLUGINS_CACHE_DIR   cache root (default: ${XDG_CACHE_HOME:-~/.cache}/plugins)
#   PYTHON              interpreter for the venv (default: python3.11)
#   PLUGINS_BUILD_CUDA  auto|0|1: also compile the CUDA kernel (auto = if nvcc exists)
#   TORCH_CUDA_ARCH_LIST  CUDA archs for our op (default "8.0;9.0")
set -euo pipefail

# Everything runs inside main() so bash parses the whole file before running
# it: editing this script while a set-up runs cannot derail that set-up.
main() {
  root=$(cd "$(dirname "$0")/.." && pwd)
  cd "$root"
  PYTHON=${PYTHON:-python3.11}
  cache=${PLUGINS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/plugins}
  pins=requirements/pins.txt
  psalm_pins=requirements/psalm-pins.txt
  t0=$(date +%s)
  step() { printf '\n[setup %3ds] %s\n' "$(( $(date +%s) - t0 ))" "$*"; }

  pyver=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  key=$( (cat "$pins"; echo "$pyver") | sha256sum | cut -c1-12)
  venv="$cache/venvs/py$pyver-$key"
  wheels="$cache/wheels"
  mkdir -p "$cache/venvs" "$wheels"

  step "1/6 virtual environment: $venv"
  if [ ! -x "$venv/bin/python" ]; then
    "$PYTHON" -m venv "$venv"
  fi
  ln -sfn "$venv" .venv
  py="$venv/bin/python"
  pipi() { "$py" -m pip install --disable-pip-version-check -q -c "$pins" "$@"; }

  stamp() { [ -f "$venv/.stamp-$1" ]; }
  done_stamp() { touch "$venv/.stamp-$1"; }

  step "2/6 torch, torchvision and build tools"
  if ! stamp torch; then
    pipi --upgrade pip wheel
    pipi setuptools ninja torch torchvision numpy
    done_stamp torch
  else echo "cached"; fi

  step "3/6 mmcv with ops (from sdist, C++20)"
  mmcv_ver=$(sed -n 's/^mmcv==//p' "$pins")
  torch_ver=$(sed -n 's/^torch==//p' "$pins")
  mmcv_flavor=$([ "${FORCE_CUDA:-0}" = 1 ] && echo cuda || echo cpu)
  mmcv_dir="$wheels/mmcv-$mmcv_ver-torch$torch_ver-py$pyver-$mmcv_flavor"
  if ! stamp mmcv; then
    if ! ls "$mmcv_dir"/mmcv-*.whl >/dev/null 2>&1; then
      rm -rf "$mmcv_dir.tmp"
      bash third_party/mmcv/build_mmcv.sh "$py" "$mmcv_dir.tmp"
      mv "$mmcv_dir.tmp" "$mmcv_dir"
    else echo "using cached wheel in $mmcv_dir"; fi
    pipi "$mmcv_dir"/mmcv-*.whl
    done_stamp mmcv
  else echo "cached"; fi

  step "4/6 mmengine, mmdet, open_clip, timm, transformers, deepspeed, export and test tools"
  if ! stamp deps; then
    pipi mmengine mmdet open_clip_torch timm transformers tokenizers safetensors \
         deepspeed pycocotools pytest onnx onnxscript onnx-ir onnxruntime
    done_stamp deps
  else echo "cached"; fi

  step "5/6 this package (editable)"
  # The op is compiled by step 6 into the cache, so the editable install skips it.
  PLUGINS_SKIP_EXT=1 pipi --no-build-isolation --no-deps -e .

  step "6/6 multi-scale deformable attention op (CPU, and CUDA when nvcc is present)"
  PLUGINS_CACHE_DIR="$cache" "$py" -m plugins.ops.build

  step "+ PSALM's pins: a second venv for the PSALM drop-in tests ($psalm_pins)"
  # PSALM runs in its own environment (transformers 4.36.2); the tests run
  # third_party/psalm and plugins.llava there too (tests/test_llava/
  # test_psalm_env.py).  torch is the main venv's version, from the same
  # wheel; keyed by the pins file like the main venv.
  psalm_key=$( (cat "$psalm_pins"; echo "$pyver") | sha256sum | cut -c1-12)
  psalm_venv="$cache/venvs/psalm-py$pyver-$psalm_key"
  if [ ! -f "$psalm_venv/.stamp-deps" ]; then
    [ -x "$psalm_venv/bin/python" ] || "$PYTHON" -m venv "$psalm_venv"
    "$psalm_venv/bin/python" -m pip install --disable-pip-version-check -q \
      -c "$psalm_pins" torch torchvision transformers tokenizers \
      huggingface-hub safetensors numpy timm pytest
    touch "$psalm_venv/.stamp-deps"
  else echo "cached"; fi
  ln -sfn "$psalm_venv" .venv-psalm

  step "done in $(( $(date +%s) - t0 ))s; interpreter: $root/.venv/bin/python"
}

main "$@"
