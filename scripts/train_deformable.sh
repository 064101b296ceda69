#!/usr/bin/env bash
# Train the LLaVA-Phi segmentation model with the deformable projector under
# DeepSpeed (ZeRO-2), PSALM's argument names.
#
#   bash scripts/train_deformable.sh                      # tiny model, toy data, 60 steps
#   bash scripts/train_deformable.sh --mm_projector_type swin_conv --output_dir work_dirs/swin_conv
#   MODEL_CONFIG=llava-phi-1_5-seg_swin-b NUM_GPUS=4 MAX_STEPS=-1 LR=6e-5 \
#       bash scripts/train_deformable.sh --model_name_or_path /path/to/phi-1_5
#
# Arguments after the script name are appended and win over the defaults
# (argparse keeps the last occurrence). Environment:
#   MODEL_CONFIG  llava-phi-seg_tiny (default) | llava-phi-1_5-seg_swin-b | a JSON path
#   DS_CONFIG     zero2 (default) | zero3 (shipped in plugins/llava/configs/) | a JSON path
#   NUM_GPUS      processes for the deepspeed launcher (default 1; on a machine
#                 without CUDA, DeepSpeed's CPU accelerator with gloo is used)
#   LAUNCHER      deepspeed (default) | python (one process, no launcher)
#   OUTPUT_DIR, DATA_ROOT, MAX_STEPS (default 60; -1: use EPOCHS), EPOCHS,
#   BATCH, ACCUM, LR, PRECISION (bf16 | fp16 | fp32; fp16 needs a GPU)
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
MODEL_CONFIG=${MODEL_CONFIG:-llava-phi-seg_tiny}
DS_CONFIG=${DS_CONFIG:-zero2}
NUM_GPUS=${NUM_GPUS:-1}
LAUNCHER=${LAUNCHER:-deepspeed}
OUTPUT_DIR=${OUTPUT_DIR:-work_dirs/llava_phi_deformable}
DATA_ROOT=${DATA_ROOT:-data/toy}
MAX_STEPS=${MAX_STEPS:-60}
EPOCHS=${EPOCHS:-1}
BATCH=${BATCH:-4}
ACCUM=${ACCUM:-1}
LR=${LR:-1e-3}
PRECISION=${PRECISION:-bf16}

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if [ "$DATA_ROOT" = data/toy ] && [ ! -f data/toy/annotations/instances_train.json ]; then
  "$PY" tools/make_toy_dataset.py --out data/toy
fi

precision=()
case "$PRECISION" in
  bf16) precision=(--bf16 True) ;;
  fp16) precision=(--fp16 True) ;;
  fp32) ;;
  *) echo "PRECISION must be bf16, fp16 or fp32, got '$PRECISION'" >&2; exit 2 ;;
esac

args=(
  --deepspeed "$DS_CONFIG"
  --model_config "$MODEL_CONFIG"
  --data_root "$DATA_ROOT"
  --mm_projector_type deformable
  --mm_n_heads 8
  --mm_n_points 4
  --swin_type base
  --per_device_train_batch_size "$BATCH"
  --gradient_accumulation_steps "$ACCUM"
  --learning_rate "$LR"
  --warmup_ratio 0.03
  --num_train_epochs "$EPOCHS"
  --max_steps "$MAX_STEPS"
  "${precision[@]}"
  --gradient_checkpointing True
  --logging_steps 10
  --save_steps 30
  --output_dir "$OUTPUT_DIR"
)

if [ "$LAUNCHER" = deepspeed ]; then
  # The launcher is the venv's console script; it re-runs tools/train_llava.py
  # with the same interpreter and appends --local_rank=N.
  exec "$(dirname "$PY")/deepspeed" --num_gpus "$NUM_GPUS" tools/train_llava.py "${args[@]}" "$@"
else
  exec "$PY" tools/train_llava.py "${args[@]}" "$@"
fi
