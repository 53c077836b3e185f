#!/usr/bin/env bash
# How the packaged default checkpoint (cspn_ros/weights/default.safetensors) is made, on a GPU
# machine: synthetic bags (varied scenes, LiDAR 16/32/64 beams + ToF, ground truth) -> training_node
# (dense supervision, both depth sources) -> evaluate on held-out bags for each depth source.
# Loss: each sample's RMSE (--depth-loss frame_rmse), so indoor ToF frames pull as hard as
# outdoor LiDAR ones and depth edges / occlusion shadows pull hardest. No left-right flips: a flip
# moves the ToF camera (5 cm right of the colour camera) to its left, and with it the side of its
# occlusion shadows, which the model can then no longer learn (bench/tof_error_breakdown.py).
# Usage: bash scripts/train_default.sh OUT_DIR [EPOCHS] [TRAIN_BAGS] [FRAMES_PER_BAG]
# Environment: DEVICE (cuda), WORK (bags and runs, /tmp/cspn_default; bags already there are
# kept), RUN (run folder name under WORK, run), BATCH (8, per GPU), WORKERS (data-loader
# processes per GPU, nproc - 2), CONFIG (model config JSON), PRECISE_BN (batches of precise
# BatchNorm after the last epoch, whose validation then competes with the best epoch's; 100,
# 0 = off), GPUS (1; more trains data-parallel through torchrun and NCCL).
# On the device machine: `source bench/gpu_env.sh` first (python3 there has CUDA torch).
set -euo pipefail
out=${1:?output folder}; epochs=${2:-50}; train_bags=${3:-48}; frames=${4:-30}
python=${PYTHON:-python3}; device=${DEVICE:-cuda}
work=${WORK:-/tmp/cspn_default}; run=${RUN:-run}; batch=${BATCH:-8}; precise_bn=${PRECISE_BN:-100}
mkdir -p "$out" "$work"
jobs=$(nproc); workers=${WORKERS:-$((jobs - 2))}; gpus=${GPUS:-1}
trainer=(-m cspn_ros.nodes.training_node)
if [ "$gpus" -gt 1 ]; then trainer=(-m torch.distributed.run --standalone --nproc_per_node "$gpus" "${trainer[@]}"); fi
time $python scripts/make_synthetic_bags.py --out "$work/train" --bags "$train_bags" \
  --frames "$frames" --first-seed 0 --jobs "$jobs" > "$work/$run.bags"  # 'wrote PATH' lines
time $python scripts/make_synthetic_bags.py --out "$work/heldout" --bags 6 --frames 10 \
  --first-seed 1000 --jobs "$jobs" > /dev/null
bags=(); while read -r _ bag; do bags+=(--bag "$bag"); done < "$work/$run.bags"
config=${CONFIG:-'{"width": 16, "steps": 24, "initial_fill": "morphological"}'}
time $python "${trainer[@]}" "${bags[@]}" --out "$work/$run" --epochs "$epochs" \
  --depth-source both --supervision dense --config "$config" --batch-size "$batch" \
  --crop 256x320 --max-scale 1.5 --depth-loss frame_rmse --no-flip --precise-bn "$precise_bn" \
  --workers "$workers" --device "$device" --no-progress --val-fraction 0.1 \
  2>&1 | tee "$out/train.log" | grep -v ' INFO '
cp "$work/$run/best.safetensors" "$out/default.safetensors"
for source in lidar tof; do
  pattern='*'; [ "$source" = tof ] && pattern='indoor_*'  # only indoor bags record the ToF
  for bag in "$work"/heldout/$pattern; do
    $python -m cspn_ros.nodes.evaluate --bag "$bag" --checkpoint "$out/default.safetensors" \
      --gt-topic /ground_truth/depth --depth-source "$source" --device "$device" \
      --out "$work/eval_$run/$source/$(basename "$bag")" 2>&1 | grep -v ' INFO ' | tail -3
  done
done
$python - "$work/eval_$run" "$out/heldout_summary.json" <<'PY'
import json, sys
from pathlib import Path
root, result = Path(sys.argv[1]), {}
for source in ('lidar', 'tof'):
    runs = [json.loads(p.read_text()) for p in sorted((root / source).glob('*/summary.json'))]
    result[source] = {m: {k: sum(r[m][k] * r[m]['frames'] for r in runs) / sum(r[m]['frames'] for r in runs)
                          for k in ('rmse', 'mae', 'irmse', 'imae', 'rel', 'd102', 'd105', 'd110', 'd125')}
                      for m in ('model', 'baseline')}
    result[source]['frames'] = sum(r['model']['frames'] for r in runs)
Path(sys.argv[2]).write_text(json.dumps(result, indent=1))
for source, r in result.items():
    change = r['model']['rmse'] / r['baseline']['rmse'] - 1
    print(f"{source}: model RMSE {r['model']['rmse']:.4f} m, baseline {r['baseline']['rmse']:.4f} m "
          f"({change:+.1%} against the baseline), frames {r['frames']}")
PY
