"""Decode cost of compressed inputs (core/compressed.py, OpenCV) at 1216x352: jpeg and png colour
(image_transport `compressed`) and compressedDepth ToF (png of 16UC1, and of 32FC1 quantised
inverse depth), next to the raw Image conversions they replace. The colour is a synthetic
outdoor frame, the depth a synthetic indoor one (0.5-12 m, like a ToF; random noise would
flatter neither codec).

Then the node's message I/O both ways (`wire` rows): serialized bytes -> the arrays the pipeline
uses, with rclpy's deserialisation (`deserialize_message`, what a typed subscription does) and
with `core.wire.decode` (rosbags CDR codec, what the node's raw subscriptions do), for a
1216x352 rgb8 image, a 1216x352 32FC1 depth, its CameraInfo and a 64-beam driver cloud of
120k points (x y z intensity ring time, 32 bytes a point); and outputs -> bytes, with rclpy
messages (`nodes.messages` + `serialize_message`, what publishing an rclpy message costs) and
with `core.wire` (`MESSAGES` + `encode`, what the node publishes). Every number is the median
of repeated single-threaded runs. Writes bench/results/decode_<host>.json and prints markdown
tables.

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

import numpy as np
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import CameraInfo, Image, PointCloud2

from bench_core import LIDAR_POINTS, lidar_cloud_message, median_ms_cpu
from cspn_ros.core.camera import PinholeCamera
from cspn_ros.core.colorize import colorize_depth
from cspn_ros.core.compressed import compressed_depth_fields, compressed_image_fields
from cspn_ros.core.conversions import (depth_fields, image_fields, image_to_depth, image_to_rgb,
                                       pointcloud2_fields, pointcloud2_to_xyz)
from cspn_ros.core.projection import depth_to_points
from cspn_ros.core.wire import MESSAGES, decode, encode, type_name
from cspn_ros.data.synthetic import SyntheticScene
from cspn_ros.nodes.messages import camera_info_msg, header_msg, image_msg, pointcloud2_msg

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
    wire = wire_rows(frame, depth, args.repeats)
    result = {'machine': args.name, 'processor': platform.processor() or platform.machine(),
              'opencv': cv2.__version__, 'opencv_threads': 1, 'size': f'{WIDTH}x{HEIGHT}',
              'repeats': args.repeats, 'rows': rows, 'wire': wire}
    out = Path(__file__).parent / 'results' / f'decode_{args.name}.json'
    out.write_text(json.dumps(result, indent=2) + '\n')
    print(f'| input | transport | payload KiB | decode ms ({args.name}) |\n|---|---|---:|---:|')
    for row in rows:
        print(f"| {row['input']} | {row['transport']} | {row['bytes'] / 1024:.0f} | "
              f"{row['decode_ms']:.2f} |")
    print(f'\n| direction | message | KiB | codec ms: rclpy | core.wire | with conversion ms: '
          f'rclpy | core.wire ({args.name}) |\n|---|---|---:|---:|---:|---:|---:|')
    for row in wire:
        print(f"| {row['direction']} | {row['message']} | {row['bytes'] / 1024:.0f} | "
              f"{row['rclpy_codec_ms']:.3f} | {row['wire_codec_ms']:.3f} | "
              f"{row['rclpy_ms']:.3f} | {row['wire_ms']:.3f} |")
    print(f'wrote {out}')


def wire_rows(frame, depth: np.ndarray, repeats: int) -> list[dict]:
    """Per message, rclpy vs core.wire (ms): the codec alone (`*_codec_ms`: deserialize /
    decode, serialize / encode of a built message) and with the node's work around it
    (`*_ms`: bytes -> the pipeline's arrays; fields -> message -> bytes)."""
    header = header_msg(1_700_000_000 * 10**9, 'camera_optical')
    cloud = lidar_cloud_message(np.random.default_rng(0), LIDAR_POINTS)
    cloud_msg = pointcloud2_msg({**vars(cloud), 'is_dense': True, 'fields': [
        vars(field) for field in cloud.fields]}, header)
    inputs = [('rgb8 Image', image_msg(image_fields(frame.rgb, 'rgb8'), header), image_to_rgb),
              ('32FC1 Image', image_msg(depth_fields(depth), header), image_to_depth),
              ('CameraInfo', camera_info_msg(frame.camera, header),
               PinholeCamera.from_camera_info),
              (f'PointCloud2 64 beams {LIDAR_POINTS // 1000}k pts', cloud_msg,
               pointcloud2_to_xyz)]
    rows = []
    for name, msg, convert in inputs:
        raw, msg_type = serialize_message(msg), type(msg)
        typename = type_name(msg_type)
        rows.append({'direction': 'in: bytes -> arrays', 'message': name, 'bytes': len(raw),
                     'rclpy_codec_ms': median_ms_cpu(lambda: deserialize_message(raw, msg_type),
                                                     repeats),
                     'wire_codec_ms': median_ms_cpu(lambda: decode(raw, typename), repeats),
                     'rclpy_ms': median_ms_cpu(
                         lambda: convert(deserialize_message(raw, msg_type)), repeats),
                     'wire_ms': median_ms_cpu(lambda: convert(decode(raw, typename)),
                                              repeats)})
    wire_header = MESSAGES.header(1_700_000_000 * 10**9, 'camera_optical')
    xyz, rgb = depth_to_points(depth, frame.camera, frame.rgb, stride=4)
    outputs = [('depth 32FC1', lambda: depth_fields(depth), image_msg, MESSAGES.image),
               ('depth/colorized bgr8',
                lambda: image_fields(colorize_depth(depth, 0.1, 100.0), 'bgr8'), image_msg,
                MESSAGES.image),
               (f'depth/points stride 4 ({len(xyz)} pts)',
                lambda: pointcloud2_fields(xyz, rgb), pointcloud2_msg, MESSAGES.cloud),
               ('depth/camera_info', lambda: frame.camera, camera_info_msg,
                MESSAGES.camera_info)]
    for name, fields, rclpy_build, wire_build in outputs:
        built_rclpy, built_wire = rclpy_build(fields(), header), wire_build(fields(), wire_header)
        rows.append({'direction': 'out: arrays -> bytes', 'message': name,
                     'bytes': len(encode(built_wire)),
                     'rclpy_codec_ms': median_ms_cpu(lambda: serialize_message(built_rclpy),
                                                     repeats),
                     'wire_codec_ms': median_ms_cpu(lambda: encode(built_wire), repeats),
                     'rclpy_ms': median_ms_cpu(
                         lambda: serialize_message(rclpy_build(fields(), header)), repeats),
                     'wire_ms': median_ms_cpu(lambda: encode(wire_build(fields(), wire_header)),
                                              repeats)})
    return [{key: round(value, 3) if key.endswith('_ms') else value
             for key, value in row.items()} for row in rows]

if __name__ == '__main__':
    main()
