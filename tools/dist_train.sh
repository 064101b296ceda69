#!/usr/bin/env bash
# Multi-process training with torchrun (one process per GPU, or CPU gloo).
# Usage: tools/dist_train.sh CONFIG NUM_PROCS [train.py args...]
#   NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT for multi-node jobs.
set -euo pipefail
CONFIG=${1:?usage: dist_train.sh CONFIG NUM_PROCS [args...]}
NPROC=${2:?usage: dist_train.sh CONFIG NUM_PROCS [args...]}
shift 2
here=$(cd "$(dirname "$0")" && pwd)
PY=${PYTHON:-$here/../.venv/bin/python}
[ -x "$PY" ] || PY=python
exec "$PY" -m torch.distributed.run \
  --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" \
  --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${MASTER_PORT:-29500}" \
  --nproc_per_node="$NPROC" \
  "$here/train.py" "$CONFIG" --launcher pytorch "$@"
