#!/usr/bin/env bash
# Score a checkpoint against the classical baseline on held-out synthetic bags (seeds 1000-1005,
# never trained on; made here when missing), through `evaluate`, per depth source.
# Usage: bash scripts/eval_heldout.sh CHECKPOINT OUT_JSON
# Environment: DEVICE (cuda), WORK (/tmp/cspn_default: bags in WORK/heldout), PYTHON (python3).
set -euo pipefail
checkpoint=${1:?checkpoint}; result=${2:?output json}
python=${PYTHON:-python3}; device=${DEVICE:-cuda}; work=${WORK:-/tmp/cspn_default}
name=$(basename "$result" .json)
if [ ! -d "$work/heldout" ]; then
  $python scripts/make_synthetic_bags.py --out "$work/heldout" --bags 6 --frames 10 \
    --first-seed 1000 --jobs "$(nproc)" > /dev/null
fi
for source in lidar tof; do
  pattern='*'; [ "$source" = tof ] && pattern='indoor_*'  # only indoor bags record the ToF
  for bag in "$work"/heldout/$pattern; do
    $python -m cspn_ros.nodes.evaluate --bag "$bag" --checkpoint "$checkpoint" \
      --gt-topic /ground_truth/depth --depth-source "$source" --device "$device" \
      --out "$work/eval_$name/$source/$(basename "$bag")" 2>&1 | grep -v ' INFO ' | tail -3
  done
done
$python - "$work/eval_$name" "$result" <<'PY'
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
