#!/usr/bin/env python3
"""Score a checkpoint and the classical baseline on the real Redwood RGB-D frames.

    python3 bench/eval_real.py [--data ../shared/data/real/redwood_rgbd] [--checkpoint CKPT]
                               [--frames 0 1 2 3 4] [--out bench/results/real_redwood_default.json]

The sensor depth is the only truth there is, so each frame's valid depth is split into an input
and a hidden part, and both methods are scored on the HIDDEN valid pixels only:
- tof: a random --hidden share (default 50%) of the valid pixels is hidden, the rest is the input
  (a ToF / depth camera with holes);
- lidar: only --beams rows (1 pixel high, evenly spread over the image) of the valid depth are the
  input, like a LiDAR projected into the camera; every other valid pixel is hidden.
Both methods run through the same DepthCompleter API; the split is fixed by --seed and the frame
index, so the numbers repeat. Metrics (train.metrics) are per frame, averaged over frames.
Prints a markdown table and writes the JSON {regime: {"model": {...}, "baseline": {...},
"frames": n}, "settings": {...}}.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / 'scripts')]

from cspn_ros.data.bag_samples import holdout_split  # noqa: E402
from cspn_ros.model.completer import DEFAULT_CHECKPOINT, DepthCompleter  # noqa: E402
from cspn_ros.train.metrics import compute_metrics, mean_metrics  # noqa: E402
from real_to_bag import read_redwood  # noqa: E402

REGIMES = ('tof', 'lidar')
DEFAULT_DATA = ROOT.parent / 'shared' / 'data' / 'real' / 'redwood_rgbd'
TABLE_KEYS = ('rmse', 'mae', 'rel', 'd125')


def beam_rows(height: int, beams: int) -> np.ndarray:
    """Row indices of `beams` 1-pixel scan lines, one at the centre of each of `beams` equal
    bands of the image."""
    return ((np.arange(beams) + 0.5) * height / beams).astype(int)


def split_depth(depth: np.ndarray, regime: str, rng: np.random.Generator, hidden: float = 0.5,
                beams: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(input, hidden) (H,W) float32 metres from a valid depth map (0 = missing); every valid
    pixel lands in exactly one of them."""
    if regime == 'tof':
        return holdout_split(depth, hidden, rng)
    if regime == 'lidar':
        on_beam = np.zeros(depth.shape, bool)
        on_beam[beam_rows(depth.shape[0], beams)] = True
        fed = np.where(on_beam, depth, 0).astype(np.float32)
        return fed, np.where(on_beam, 0, depth).astype(np.float32)
    raise ValueError(f'regime must be one of {REGIMES}, got {regime!r}')


def evaluate(data: Path, checkpoint: Optional[str], frames: Optional[Sequence[int]] = None,
             hidden: float = 0.5, beams: int = 32, seed: int = 0, device: str = 'cpu') -> dict:
    """{regime: {'model': metrics, 'baseline': metrics, 'frames': n}, 'settings': {...}}."""
    completers = {'model': DepthCompleter.from_checkpoint(checkpoint, device),
                  'baseline': DepthCompleter.from_config('classical')}
    _, redwood = read_redwood(data, frames)
    scores = {regime: {method: [] for method in completers} for regime in REGIMES}
    seconds = {method: 0.0 for method in completers}
    for frame in redwood:
        depth = frame.depth_m
        for regime_index, regime in enumerate(REGIMES):
            rng = np.random.default_rng([seed, frame.index, regime_index])
            sparse, truth = split_depth(depth, regime, rng, hidden, beams)
            for method, completer in completers.items():
                start = time.perf_counter()
                prediction = completer(frame.rgb, sparse)
                seconds[method] += time.perf_counter() - start
                scores[regime][method].append(compute_metrics(prediction, truth))
    result = {regime: {method: mean_metrics(per_frame) for method, per_frame in methods.items()}
              for regime, methods in scores.items()}
    for regime in REGIMES:
        result[regime]['frames'] = result[regime]['model'].pop('frames')
        result[regime]['baseline'].pop('frames')
    result['settings'] = {
        'data': str(data), 'checkpoint': str(checkpoint or DEFAULT_CHECKPOINT),
        'frames': [frame.index for frame in redwood], 'hidden_share_tof': hidden,
        'lidar_beams': beams, 'seed': seed, 'device': device,
        'seconds_per_frame': {m: s / max(1, len(redwood) * len(REGIMES))
                              for m, s in seconds.items()}}
    return result


def markdown_table(result: dict) -> str:
    """Regime x method rows of TABLE_KEYS (metres for rmse/mae)."""
    lines = ['| regime | method | RMSE m | MAE m | REL | d<1.25 |', '|---|---|---|---|---|---|']
    for regime in REGIMES:
        for method in ('model', 'baseline'):
            metrics = result[regime][method]
            lines.append(f'| {regime} | {method} | '
                         + ' | '.join(f'{metrics[k]:.4f}' for k in TABLE_KEYS) + ' |')
    return '\n'.join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--data', type=Path, default=DEFAULT_DATA, help='redwood_rgbd folder')
    parser.add_argument('--checkpoint', default=None, help='default: the packaged weights')
    parser.add_argument('--frames', type=int, nargs='*', default=None,
                        help='rgbd.match lines to score (default: all)')
    parser.add_argument('--hidden', type=float, default=0.5,
                        help='tof: share of valid pixels hidden')
    parser.add_argument('--beams', type=int, default=32, help='lidar: rows kept as input')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--out', type=Path, default=ROOT / 'bench' / 'results' /
                        'real_redwood_default.json')
    args = parser.parse_args(argv)
    if not (args.data / 'rgbd.match').is_file():
        print(f'eval_real: no Redwood frames at {args.data} (rgbd.match missing); skipped')
        return 0
    result = evaluate(args.data, args.checkpoint, args.frames, args.hidden, args.beams,
                      args.seed, args.device)
    print(markdown_table(result))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + '\n')
    print('wrote', args.out)
    return 0


if __name__ == '__main__':
    sys.exit(main())
