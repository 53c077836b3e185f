"""CPU latency of the shipped model per backend (torch, onnxruntime), batch 1.

`DepthCompleter.complete` (numpy in, numpy out) at 640x480 and 320x240: median of 20 frames
after 3 warm-up frames (the first onnxruntime frame of a size exports or loads the cached
graph), random RGB + 5 % sparse depth. The VM is shared with other engineers: the 1-minute load
average (os.getloadavg) is recorded before and after each figure; quote it next to the figure.
--quiet-load L waits (up to --quiet-wait-s) until the 1-minute load is below L before each
figure (this script's own previous figure counts in that average too).

Writes <out-dir>/cpu_backend_<hostname-free label>.json and prints a markdown table.

    python3 bench/bench_cpu_backend.py [--out-dir bench/results] [--label vm] [--quiet-load 1]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cspn_ros.model.completer import DepthCompleter  # noqa: E402

SIZES = ((480, 640), (240, 320))  # (height, width)
BACKENDS = ('torch', 'onnxruntime')


def measure(completer: DepthCompleter, height: int, width: int, frames: int,
            warmup: int) -> list[float]:
    """Per-frame milliseconds of completer.complete over `frames` random frames, one after the
    other (as a node runs them)."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    sparse = np.where(rng.random((height, width)) < 0.05,
                      1 + 40 * rng.random((height, width)), 0).astype(np.float32)
    for _ in range(warmup):
        completer.complete(rgb, sparse)
    times = []
    for _ in range(frames):
        start = time.perf_counter()
        completer.complete(rgb, sparse)
        times.append((time.perf_counter() - start) * 1000)
    return times


def wait_for_quiet(load: float | None, wait_s: float) -> float:
    """Seconds waited (at most wait_s) until the 1-minute load average is below `load`."""
    start = time.monotonic()
    while load is not None and os.getloadavg()[0] >= load and time.monotonic() - start < wait_s:
        time.sleep(5)
    return time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out-dir', type=Path, default=Path(__file__).parent / 'results')
    parser.add_argument('--label', default='vm')
    parser.add_argument('--frames', type=int, default=20)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--quiet-load', type=float, default=None,
                        help='wait until the 1-minute load average is below this')
    parser.add_argument('--quiet-wait-s', type=float, default=600)
    args = parser.parse_args()
    rows = []
    for backend in BACKENDS:
        completer = DepthCompleter.from_checkpoint(None, device='cpu', backend=backend)
        for height, width in SIZES:
            waited = wait_for_quiet(args.quiet_load, args.quiet_wait_s)
            load_before = os.getloadavg()[0]
            times = measure(completer, height, width, args.frames, args.warmup)
            rows.append({'backend': backend, 'size': f'{width}x{height}',
                         'median_ms': round(statistics.median(times), 1),
                         'min_ms': round(min(times), 1), 'max_ms': round(max(times), 1),
                         'load_1min_before': load_before, 'load_1min_after': os.getloadavg()[0],
                         'waited_for_quiet_s': round(waited), 'steps': completer.steps,
                         'torch_threads': torch.get_num_threads()})
            print(rows[-1], flush=True)
    result = {'machine': f'{args.label}, {os.cpu_count()} CPU cores', 'frames': args.frames,
              'warmup': args.warmup, 'rows': rows}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f'cpu_backend_{args.label}.json').write_text(json.dumps(result, indent=1))
    print('| backend | size | median ms (20) | min-max ms | load avg (1 min) before/after |')
    print('|---|---|---|---|---|')
    for row in rows:
        print(f"| {row['backend']} | {row['size']} | {row['median_ms']} | {row['min_ms']}-"
              f"{row['max_ms']} | {row['load_1min_before']:.2f} / {row['load_1min_after']:.2f} |")


if __name__ == '__main__':
    main()
