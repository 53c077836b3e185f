"""Time of the classical fill (`cspn_ros.model.fill.classical_fill`, CPU) on a projected LiDAR
frame: what the self-check costs on a frame it scores, and the fallback on every frame.

Synthetic outdoor scene (SyntheticScene, 64 and 16 beams, 0.2 deg azimuth step), the points
projected into the colour camera; median of repeated runs after one warm-up. Writes
bench/results/classical_fill_vm.json (or --out) and prints a markdown table.

    .venv/bin/python bench/bench_classical_fill.py [--repeats 20]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from cspn_ros.core.projection import project_to_sparse_depth
from cspn_ros.data.synthetic import SyntheticScene
from cspn_ros.model.fill import classical_fill

IMAGE_SIZES = ((1216, 352), (640, 480))  # KITTI depth completion crop, VGA (width, height)
BEAMS = (64, 16)


def fill_ms(width: int, height: int, beams: int, repeats: int) -> dict:
    """Median and p95 ms of the classical fill of frame 0 of a synthetic scene."""
    frame = SyntheticScene(seed=0, width=width, height=height, lidar_beams=beams).frame(0)
    sparse = project_to_sparse_depth(frame.lidar_points, frame.T_cam_from_lidar, frame.camera)
    classical_fill(sparse)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        classical_fill(sparse)
        times.append(1000 * (time.perf_counter() - start))
    return {'size': f'{width}x{height}', 'beams': beams,
            'input_pixels': int(np.count_nonzero(sparse)),
            'median_ms': round(statistics.median(times), 2),
            'p95_ms': round(float(np.percentile(times, 95)), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--repeats', type=int, default=20)
    parser.add_argument('--out', type=Path,
                        default=Path(__file__).parent / 'results' / 'classical_fill_vm.json')
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    rows = [fill_ms(width, height, beams, args.repeats)
            for width, height in IMAGE_SIZES for beams in BEAMS]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        'machine': f'{platform.machine()}, {os.cpu_count()} CPU cores', 'repeats': args.repeats,
        'load_1min_before_after': [load_before, os.getloadavg()[0]], 'rows': rows},
        indent=2) + '\n')
    print('| size | beams | input pixels | median ms | p95 ms |\n| --- | --- | --- | --- | --- |')
    for row in rows:
        print(f"| {row['size']} | {row['beams']} | {row['input_pixels']} | {row['median_ms']} "
              f"| {row['p95_ms']} |")


if __name__ == '__main__':
    main()
