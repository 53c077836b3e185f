"""Decode cost of compressed inputs (core/compressed.py, OpenCV) at 1216x352: jpeg and png colour
(image_transport `compressed`) and compressedDepth ToF (png of 16UC1, and of 32FC1 quantised
inverse depth), next to the raw Image conversions they replace. The colour is a synthetic
outdoor frame, the depth a synthetic indoor one (0.5-12 m, like a ToF; random noise would
flatter neither codec). Every number
is the median of repeated single-threaded runs. Writes bench/results/decode_<host>.json and
prints a markdown table.

    .venv/bin/python bench/bench_decode.py [--repeats 30] [--name vm]
"""
from __future__ import annotations

import argparse
import json
import platform
import socket
from pathlib import Path
from types import SimpleNamespace

import cv2

from bench_core import median_ms_cpu
from cspn_ros.core.compressed import compressed_depth_fields, compressed_image_fields
from cspn_ros.core.conversions import depth_fields, image_fields, image_to_depth, image_to_rgb
from cspn_ros.data.synthetic import SyntheticScene

WIDTH, HEIGHT = 1216, 352


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--repeats', type=int, default=30)
    parser.add_argument('--name', default=socket.gethostname())
    args = parser.parse_args()
    cv2.setNumThreads(1)
    frame = SyntheticScene(seed=3, width=WIDTH, height=HEIGHT).frame(0)
    depth = SyntheticScene(seed=3, width=WIDTH, height=HEIGHT, scene='indoor').frame(0).depth

    def message(fields):
        return SimpleNamespace(**{k: v.tobytes() if k == 'data' else v
                                  for k, v in fields.items()})

    cases = [
        ('colour', 'raw rgb8 Image', message(image_fields(frame.rgb, 'rgb8')), image_to_rgb),
        ('colour', 'raw bgr8 Image', message(image_fields(frame.rgb[..., ::-1].copy(), 'bgr8')),
         image_to_rgb),
        ('colour', 'jpeg (quality 95)', message(compressed_image_fields(frame.rgb, 'jpeg', 95)),
         image_to_rgb),
        ('colour', 'png', message(compressed_image_fields(frame.rgb, 'png')), image_to_rgb),
        ('depth', 'raw 32FC1 Image', message(depth_fields(depth, '32FC1')), image_to_depth),
        ('depth', 'compressedDepth 16UC1 png', message(compressed_depth_fields(depth, '16UC1')),
         image_to_depth),
        ('depth', 'compressedDepth 32FC1 png (max 10 m, q 100)',
         message(compressed_depth_fields(depth, '32FC1')), image_to_depth),
    ]
    rows = []
    for kind, name, msg, decode in cases:
        rows.append({'input': kind, 'transport': name, 'bytes': len(msg.data),
                     'decode_ms': round(median_ms_cpu(lambda: decode(msg), args.repeats), 3)})
    result = {'machine': args.name, 'processor': platform.processor() or platform.machine(),
              'opencv': cv2.__version__, 'opencv_threads': 1, 'size': f'{WIDTH}x{HEIGHT}',
              'repeats': args.repeats, 'rows': rows}
    out = Path(__file__).parent / 'results' / f'decode_{args.name}.json'
    out.write_text(json.dumps(result, indent=2) + '\n')
    print(f'| input | transport | payload KiB | decode ms ({args.name}) |\n|---|---|---:|---:|')
    for row in rows:
        print(f"| {row['input']} | {row['transport']} | {row['bytes'] / 1024:.0f} | "
              f"{row['decode_ms']:.2f} |")
    print(f'wrote {out}')


if __name__ == '__main__':
    main()
