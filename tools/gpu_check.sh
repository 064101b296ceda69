#!/usr/bin/env bash
# `make gpu-check [TIER=build,tests,bench,detector]`: the first thing to run
# on a machine with a CUDA GPU (tiers, outputs and time budget: tools/gpu_check.py).
# Uses the project's .venv when there is one, else the machine's python3
# (a GPU machine not set up by `make setup`: only torch, nvcc and pytest
# are needed for the op tier).  See tools/gpu_check.py and docs/ops.md.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-}
# find_spec, not `import torch`: without a GPU the check must stop at once,
# and importing torch takes seconds (gpu_check.py imports it once).
has_torch='import importlib.util, sys; sys.exit(importlib.util.find_spec("torch") is None)'
if [ -z "$py" ]; then
  if [ -x .venv/bin/python ] && .venv/bin/python -c "$has_torch" 2>/dev/null; then
    py=.venv/bin/python
  else
    py=python3
  fi
fi
if ! "$py" -c "$has_torch" 2>/dev/null; then
  echo "[gpu-check] FAILED: $py cannot import torch (set PYTHON=...)" >&2
  exit 2
fi
exec "$py" tools/gpu_check.py "$@"
