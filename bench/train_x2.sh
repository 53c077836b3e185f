#!/usr/bin/env bash
# Training on a machine with two GPUs (device kind nvidia-h200-x2), all through
# scripts/train_default.sh's recipe:
#   1. DDP: GPUS=2 (torchrun --nproc_per_node 2, NCCL) for DDP_EPOCHS epochs; its epoch times
#      against those of the single-GPU runs of step 2, on the same machine.
#   2. Two candidate recipes side by side, one per GPU, EPOCHS epochs each, each evaluated on the
#      held-out bags: batch 8 (the shipped recipe) and batch 4 (twice the optimizer steps per
#      epoch). Ship the one with the lower validation score (the geometric mean of the
#      validation frames' RMSE: `best score` in train.log).
# Usage on the device machine, after `source bench/gpu_env.sh`:
#   bash bench/train_x2.sh OUT_DIR [EPOCHS] [DDP_EPOCHS] [STEPS_PER_EPOCH]
# (session 3's logs in bench/results/ came from the bag recipe of that time:
# `bash bench/train_x2.sh OUT 50 3 24`, the last argument then the number of training bags).
# Writes OUT_DIR/ddp/, OUT_DIR/batch8/ and OUT_DIR/batch4/ (train.log, heldout_summary.json,
# default.safetensors), and OUT_DIR/done when finished.
set -euo pipefail
out=${1:?output folder}; epochs=${2:-9}; ddp_epochs=${3:-3}; steps=${4:-400}
export WORK=${WORK:-/tmp/cspn_default}
mkdir -p "$out"
RUN=ddp GPUS=2 bash scripts/train_default.sh "$out/ddp" "$ddp_epochs" "$steps" \
  > "$out/ddp.out" 2>&1
CUDA_VISIBLE_DEVICES=0 RUN=batch8 BATCH=8 \
  bash scripts/train_default.sh "$out/batch8" "$epochs" "$steps" > "$out/batch8.out" 2>&1 &
CUDA_VISIBLE_DEVICES=1 RUN=batch4 BATCH=4 \
  bash scripts/train_default.sh "$out/batch4" "$epochs" "$steps" > "$out/batch4.out" 2>&1 &
wait
touch "$out/done"
