"""Sensor publisher of the end-to-end benchmark (a process of its own; bench_e2e.py starts it).

Renders `--frames` synthetic frames once (cspn_ros.data.synthetic), builds their messages once,
serializes them once (CDR, as a driver's message arrives on the wire) and then publishes
image + camera_info + points (or tof/depth + tof/camera_info; with `--cameras N`
a ring of N cameras on camera<k>/image + camera<k>/camera_info around the one cloud, as
synthetic_source_node publishes it) with a fresh stamp
(the wall clock, int ns, written into the serialized header) at `--rate` Hz, or as fast as it can with `--rate 0`, so that the
publisher is not the bottleneck. It waits until every topic has a subscriber, publishes for
`--warmup-s` (not scored), then for `--duration-s` (scored), and writes a JSON summary:
{measure_start_ns, measure_end_ns, published (scored frames), published_total, points, ...}.
"""
from __future__ import annotations

import argparse
import json
import struct
import time
from pathlib import Path

import numpy as np
import rclpy
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import serialize_message

from cspn_ros.core.conversions import depth_fields, image_fields, pointcloud2_fields
from cspn_ros.data.synthetic import SyntheticScene
from cspn_ros.nodes.messages import camera_info_msg, header_msg, image_msg, pointcloud2_msg
from cspn_ros.nodes.spin import freeze_long_lived_objects
from cspn_ros.nodes.synthetic_source_node import ring_frame

RELIABILITIES = {'reliable': ReliabilityPolicy.RELIABLE,
                 'best_effort': ReliabilityPolicy.BEST_EFFORT}
#: Seconds to wait for the node's subscriptions before giving up.
DISCOVERY_TIMEOUT_S = 120.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--width', type=int, default=1216)
    parser.add_argument('--height', type=int, default=352)
    parser.add_argument('--beams', type=int, default=64, choices=(16, 32, 64))
    parser.add_argument('--depth-source', default='lidar', choices=('lidar', 'tof'))
    parser.add_argument('--rate', type=float, default=30.0, help='Hz; 0 = as fast as possible')
    parser.add_argument('--frames', type=int, default=8, help='distinct frames pre-rendered')
    parser.add_argument('--cameras', type=int, default=1,
                        help='colour cameras: 1, or a ring of N around the LiDAR')
    parser.add_argument('--warmup-s', type=float, default=5.0)
    parser.add_argument('--duration-s', type=float, default=20.0)
    parser.add_argument('--reliability', default='reliable', choices=tuple(RELIABILITIES))
    parser.add_argument('--summary', type=Path, required=True, help='JSON summary written here')
    return parser.parse_args()


def render(args: argparse.Namespace) -> list[dict]:
    """Messages (topic -> (msg, frame_id)) of args.frames synthetic frames, stamps unset; with
    args.cameras > 1 (LiDAR only) the ring of synthetic_source_node."""
    scene = SyntheticScene(seed=0, width=args.width, height=args.height, lidar_beams=args.beams,
                           tof_width=args.width, tof_height=args.height)
    cameras = getattr(args, 'cameras', 1)
    ring = scene.ring_extrinsics(cameras) if cameras > 1 else []
    blank = header_msg(0, '')
    frames = []
    for index in range(args.frames):
        frame = scene.frame(index)
        messages = {}
        for k in range(cameras):
            rgb = frame.rgb if k == 0 else scene.view(index, np.linalg.inv(ring[0]) @ ring[k])[0]
            topic, frame_id = ((f'camera{k}/', ring_frame(k)) if ring else ('', 'camera'))
            messages[f'{topic}image'] = (image_msg(image_fields(rgb, 'rgb8'), blank), frame_id)
            messages[f'{topic}camera_info'] = (camera_info_msg(frame.camera, blank), frame_id)
        if args.depth_source == 'lidar':
            messages['points'] = (pointcloud2_msg(pointcloud2_fields(frame.lidar_points), blank),
                                  'lidar')
        else:
            messages['tof/depth'] = (image_msg(depth_fields(frame.tof_depth), blank), 'tof')
            messages['tof/camera_info'] = (camera_info_msg(frame.tof_camera, blank), 'tof')
        frames.append(messages)
    return frames


def serialized(msg, frame_id: str) -> tuple[bytes, bytes]:
    """msg with frame_id as CDR bytes split around its header stamp: (the 4-byte encapsulation,
    everything after the stamp). Every message published here starts with std_msgs/Header."""
    msg.header = header_msg(0, frame_id)
    raw = serialize_message(msg)
    if raw[:2] != b'\x00\x01':
        raise ValueError(f'expected little-endian CDR, got encapsulation {raw[:4]!r}')
    return raw[:4], raw[12:]


def stamped(parts: tuple[bytes, bytes], stamp_ns: int) -> bytes:
    """The serialized message of `serialized` with header.stamp = stamp_ns."""
    seconds, nanoseconds = divmod(stamp_ns, 1_000_000_000)
    return b''.join((parts[0], struct.pack('<iI', seconds, nanoseconds), parts[1]))


def main() -> int:
    args = parse_args()
    rendered = render(args)
    frames = [{topic: (type(msg), serialized(msg, frame_id))
               for topic, (msg, frame_id) in frame.items()} for frame in rendered]
    rclpy.init()
    node = rclpy.create_node('e2e_publisher')
    qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5,
                     reliability=RELIABILITIES[args.reliability],
                     durability=DurabilityPolicy.VOLATILE)
    publishers = {topic: node.create_publisher(msg_type, topic, qos)
                  for topic, (msg_type, _) in frames[0].items()}
    deadline = time.monotonic() + DISCOVERY_TIMEOUT_S
    while any(p.get_subscription_count() == 0 for p in publishers.values()):
        if time.monotonic() > deadline:
            print('e2e_publisher: no subscriber on every topic', flush=True)
            return 1
        time.sleep(0.05)
    time.sleep(0.5)  # let discovery settle on both sides
    freeze_long_lived_objects()  # no full garbage collection over the frames while publishing

    period_ns = int(1e9 / args.rate) if args.rate > 0 else 0
    start_ns = time.time_ns()
    measure_start_ns = start_ns + int(args.warmup_s * 1e9)
    measure_end_ns = measure_start_ns + int(args.duration_s * 1e9)
    published_total = published = late = 0
    next_ns = start_ns
    while True:
        now_ns = time.time_ns()
        if period_ns and now_ns < next_ns:
            time.sleep((next_ns - now_ns) * 1e-9)
            now_ns = time.time_ns()
        if now_ns >= measure_end_ns:
            break
        if period_ns and now_ns - next_ns > period_ns // 2:
            late += 1
        for topic, (_, parts) in frames[published_total % len(frames)].items():
            publishers[topic].publish(stamped(parts, now_ns))
        published_total += 1
        published += now_ns >= measure_start_ns
        next_ns += period_ns
    points = (rendered[0]['points'][0].width if args.depth_source == 'lidar' else 0)
    args.summary.write_text(json.dumps({
        'measure_start_ns': measure_start_ns, 'measure_end_ns': measure_end_ns,
        'published': published, 'published_total': published_total, 'late_ticks': late,
        'points': int(points)}))
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
