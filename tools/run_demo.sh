#!/usr/bin/env bash
# The main job on the bundled toy data: train, evaluate, draw predictions.
# Usage: tools/run_demo.sh CONFIG WORK_DIR   (called by `make demo`)
set -euo pipefail
cd "$(dirname "$0")/.."
cfg=${1:?config}
work_dir=${2:?work dir}
py=.venv/bin/python
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
start=$(date +%s)
rm -rf "$work_dir"
echo "[demo] training $cfg"
"$py" tools/train.py "$cfg" --work-dir "$work_dir"
ckpt=$(cat "$work_dir/last_checkpoint")
echo "[demo] evaluating $ckpt, pictures into $work_dir/<timestamp>/vis"
"$py" tools/test.py "$cfg" "$ckpt" --work-dir "$work_dir/test" --show-dir vis \
  2>&1 | tee "$work_dir/test.log"
map=$(grep -o 'coco/bbox_mAP: [0-9.]*' "$work_dir/test.log" | tail -1 | cut -d' ' -f2)
vis=$(find "$work_dir/test" -path '*vis*' -name '*.png' | sort | head -1)
echo
echo "[demo] bbox mAP: ${map:-not found}"
echo "[demo] first prediction picture: ${vis:-none}"
echo "[demo] total time: $(( $(date +%s) - start ))s"
[ -n "$map" ]
