#!/usr/bin/env bash
# The LLaVA-Phi acceptance runs on CPU, without make (about 5 minutes on 2 cores):
#   1. deformable projector, 60 steps, ZeRO-2, bf16 (checkpoint at 30 and 60);
#   2. resume from checkpoint-30 into a second folder and finish the 60 steps;
#   3. the same 60 steps with PSALM's default projector (swin_conv);
#   4. swin_conv's mm_projector.bin -> tools/adapt_pretrain_to_deformable.py ->
#      --pretrain_mm_mlp_adapter (loaded with every key checked), 10 steps.
# Prints first/last losses of each run. Work folder: $WORK (default
# work_dirs/llava_phi_check, replaced).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
WORK=${WORK:-work_dirs/llava_phi_check}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
rm -rf "$WORK"
mkdir -p "$WORK"

run() {  # run NAME ARGS...: scripts/train_deformable.sh with OUTPUT_DIR=$WORK/NAME
  local name=$1; shift
  echo "=== $name: $*"
  OUTPUT_DIR="$WORK/$name" bash scripts/train_deformable.sh "$@" 2>&1 \
    | tee "$WORK/$name.log" \
    | grep -E 'mm_projector|n_levels|pretrain_mm_mlp_adapter|resumed|step (1|10|20|30|40|50|60)/|\[train_llava\]' || true
}

run deformable
run deformable_resumed --resume_from_checkpoint "$WORK/deformable/checkpoint-30"
run swin_conv --mm_projector_type swin_conv
"$PY" tools/adapt_pretrain_to_deformable.py \
  "$WORK/swin_conv/checkpoint-60/mm_projector.bin" "$WORK/mm_projector_deformable.bin" \
  --projector-outdim 128 --swin-type base --mm-hidden-dim 64 2>&1 | tee "$WORK/adapt.log"
run from_adapter --pretrain_mm_mlp_adapter "$WORK/mm_projector_deformable.bin" \
  --max_steps 10 --save_steps 0

"$PY" - "$WORK" <<'EOF'
import json, sys
from pathlib import Path
work = Path(sys.argv[1])
for name in ('deformable', 'deformable_resumed', 'swin_conv', 'from_adapter'):
    path = work / name / 'metrics.jsonl'
    if not path.is_file():
        print(f'{name}: no metrics'); continue
    rows = [json.loads(l) for l in open(path)]
    a, b = rows[0], rows[-1]
    print(f"{name:20s} steps {a['step']}-{b['step']}: loss {a['loss']:.4f} -> {b['loss']:.4f}, "
          f"loss_dice {a['loss_dice']:.4f} -> {b['loss_dice']:.4f}, "
          f"{sum(r['sec_per_step'] for r in rows) / len(rows):.2f} s/step")
EOF
