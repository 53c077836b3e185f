#!/usr/bin/env bash
# Training on a machine with two GPUs (device kind nvidia-h200-x2): the data-parallel path through
# NCCL, then two candidate recipes for the shipped checkpoint side by side, one per GPU.
#   1. DDP: torchrun --nproc_per_node 2 on the default checkpoint's bags for DDP_EPOCHS epochs
#      (its epoch times against those of the single-GPU runs of step 2, same machine).
#   2. scripts/train_default.sh twice at once: batch 8 (the recipe so far) on GPU 0, batch 4
#      (twice the optimizer steps per epoch) on GPU 1, EPOCHS epochs each, each evaluated on the
#      held-out bags. The shipped checkpoint is the one with the lower validation score (the
#      geometric mean of the validation frames' RMSE: `best score` in train.log).
# Usage on the device machine, after `source bench/gpu_env.sh`:
#   bash bench/train_x2.sh OUT_DIR [EPOCHS] [DDP_EPOCHS]
# Writes OUT_DIR/ddp_2gpu.log, OUT_DIR/batch8/ and OUT_DIR/batch4/ (train.log, heldout_summary.json,
# default.safetensors), and OUT_DIR/done when finished.
set -euo pipefail
out=${1:?output folder}; epochs=${2:-50}; ddp_epochs=${3:-3}
export WORK=${WORK:-/tmp/cspn_default}
mkdir -p "$out"
jobs=$(nproc)
python3 scripts/make_synthetic_bags.py --out "$WORK/train" --bags 24 --frames 30 --first-seed 0 \
  --jobs "$jobs" > /dev/null
python3 scripts/make_synthetic_bags.py --out "$WORK/heldout" --bags 6 --frames 10 \
  --first-seed 1000 --jobs "$jobs" > /dev/null
bags=(); for b in "$WORK"/train/*; do bags+=(--bag "$b"); done
python3 -m torch.distributed.run --standalone --nproc_per_node 2 -m cspn_ros.nodes.training_node \
  "${bags[@]}" --out "$WORK/ddp" --epochs "$ddp_epochs" --depth-source both --supervision dense \
  --config '{"width": 16, "steps": 24, "initial_fill": "morphological"}' --batch-size 8 \
  --crop 256x320 --max-scale 1.5 --depth-loss frame_rmse --no-flip --workers 14 --device cuda \
  --no-progress --val-fraction 0.1 > "$out/ddp_2gpu.log" 2>&1
CUDA_VISIBLE_DEVICES=0 RUN=batch8 BATCH=8 WORKERS=14 \
  bash scripts/train_default.sh "$out/batch8" "$epochs" > "$out/batch8.out" 2>&1 &
CUDA_VISIBLE_DEVICES=1 RUN=batch4 BATCH=4 WORKERS=14 \
  bash scripts/train_default.sh "$out/batch4" "$epochs" > "$out/batch4.out" 2>&1 &
wait
touch "$out/done"
