#!/usr/bin/env bash
# How the packaged default checkpoint (cspn_ros/weights/default.safetensors) is made, on a GPU
# machine: sensor-agnostic procedural scenes ray cast on the GPU while training
# (cspn_ros/data/procedural.py: random cameras, scenes 0.3-250 m, photo textures, spinning /
# rosette / raster LiDARs with parallax outliers, random points, rows, ToF-like holes) ->
# training_node --procedural (dense supervision, scale-free loss) -> the log-residual bound and
# the output's bound by the inputs around each pixel are set for inference
# (scripts/set_model_config.py) -> scored on the real-data suite
# (bench/real_suite.py, where ../shared/data/real exists) and on held-out synthetic bags
# (scripts/eval_heldout.sh).
# Model: CSPN over a bounded log residual of the weight-free nearest-surface fill, depths
# normalised by each frame's median input (ModelConfig residual='log'), 1.5 M parameters.
# Loss: --depth-loss scaled (RMSE + MAE of depth / median target per frame), so a 0.3 m table
# top and a 250 m street pull alike.
# Usage: bash scripts/train_default.sh OUT_DIR [EPOCHS] [STEPS_PER_EPOCH]
# Environment: DEVICE (cuda), WORK (runs, /tmp/cspn_default), RUN (run folder, run), BATCH (8),
# CONFIG (model config JSON), BOUND (the inference bound of the log residual, 0.1), RESUME (1 =
# continue WORK/RUN, e.g. in the next call of a time-limited GPU machine), GPUS (1; more trains
# data-parallel through torchrun and NCCL, each process drawing its own scenes).
# The shipped run: 9 epochs of 400 batches of 8 (256x320), one H200, 52 s per epoch (the
# ray casting takes 78 ms of each 130 ms step); the 10-minute device calls were resumed.
# On the device machine: `source bench/gpu_env.sh` first (python3 there has CUDA torch).
set -euo pipefail
out=${1:?output folder}; epochs=${2:-9}; steps=${3:-400}
python=${PYTHON:-python3}; device=${DEVICE:-cuda}
work=${WORK:-/tmp/cspn_default}; run=${RUN:-run}; batch=${BATCH:-8}; bound=${BOUND:-0.1}; input_bound=${INPUT_BOUND:-0.25}
mkdir -p "$out" "$work"
config=${CONFIG:-'{"width": 16, "steps": 24, "initial_fill": "morphological", "residual": "log", "max_depth": 250.0}'}
resume=(); [ "${RESUME:-0}" = 1 ] && resume=(--resume)
trainer=(-m cspn_ros.nodes.training_node); gpus=${GPUS:-1}
if [ "$gpus" -gt 1 ]; then trainer=(-m torch.distributed.run --standalone --nproc_per_node "$gpus" "${trainer[@]}"); fi
time $python "${trainer[@]}" --procedural "$steps" --procedural-val 8 \
  --out "$work/$run" --epochs "$epochs" --config "$config" --batch-size "$batch" \
  --crop 256x320 --depth-loss scaled --device "$device" --no-progress \
  --checkpoint-every 200 "${resume[@]}" 2>&1 | tee -a "$out/train.log" | grep -v ' INFO training_node'
$python scripts/set_model_config.py "$work/$run/best.safetensors" "$out/default.safetensors" \
  "max_log_residual=$bound" "input_bound=$input_bound"
if [ -d ../shared/data/real ]; then
  $python bench/real_suite.py --checkpoint "$out/default.safetensors" --device "$device" \
    --out "$out/real_suite.json" | tail -40
fi
DEVICE=$device WORK=$work PYTHON=$python bash scripts/eval_heldout.sh "$out/default.safetensors" \
  "$out/heldout_summary.json"
