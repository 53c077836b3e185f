"""LiDAR motion compensation: error of the projected sparse input against the ground-truth depth,
with and without `core.motion.compensate`, on a moving synthetic platform.

The outdoor SyntheticScene drives an arc at the given speed and yaw rate; its 64-beam LiDAR sweep
takes 100 ms and ends at the image stamp (it faces forward half-way, 50 ms before the image), each
point stamped with its firing time. Compensation uses the platform's pose sampled at 100 Hz (as
odometry would give it, interpolated by `PoseTrack`). Scored: every pixel holding a projected point
and a ground-truth depth, |sparse - gt| in metres (mean, median, p90) and the share of points off
by more than 0.5 m (points landing on another surface). The static row is the floor: LiDAR noise
(2 cm) and parallax between the LiDAR and the camera. Writes bench/results/motion_<name>.json and
prints a markdown table.

    .venv/bin/python bench/bench_motion.py [--frames 5] [--name vm] [--cameras 6]

--cameras N: a ring of N cameras around the LiDAR, each firing as the sweep passes its axis
(as a nuScenes rig triggers them), at 10 m/s + 30 deg/s yaw: per camera, the error uncompensated,
compensated to its own image stamp (what a rig node does) and to the sweep's end (one stamp for
all); writes bench/results/motion_ring_<name>.json.
"""
from __future__ import annotations

import argparse
import json
import socket
import time
from pathlib import Path

import numpy as np

from cspn_ros.core.motion import PoseTrack, compensate
from cspn_ros.core.projection import project_to_sparse_depth
from cspn_ros.data.synthetic import SyntheticScene

WIDTH, HEIGHT = 1216, 352
SWEEP_S = 0.1
ODOMETRY_HZ = 100.0
MOTIONS = (('static', 0.0, 0.0), ('10 m/s', 10.0, 0.0), ('30 deg/s yaw', 0.0, 30.0),
           ('10 m/s + 30 deg/s yaw', 10.0, 30.0))


def errors(points: np.ndarray, T_cam_from_lidar: np.ndarray, camera, truth: np.ndarray
           ) -> np.ndarray:
    """|projected depth - ground truth| (m) at every pixel holding both."""
    sparse = project_to_sparse_depth(points, T_cam_from_lidar, camera, 0.1, 100.0)
    both = (sparse > 0) & (truth > 0)
    return np.abs(sparse[both] - truth[both])


def odometry(scene: SyntheticScene, index: int) -> PoseTrack:
    """Poses of the colour camera at ODOMETRY_HZ from 2 sweeps before frame index to 1 after."""
    track = PoseTrack()
    start = index / scene.rate_hz - 2 * SWEEP_S
    for k in range(int(3 * SWEEP_S * ODOMETRY_HZ) + 1):
        t = start + k / ODOMETRY_HZ
        track.add(scene.start_stamp_ns + round(t * 1e9), scene.pose_at(t))
    return track


def summary(values: list[np.ndarray]) -> dict:
    pooled = np.concatenate(values)
    return {'points': int(pooled.size), 'mean_m': round(float(pooled.mean()), 4),
            'median_m': round(float(np.median(pooled)), 4),
            'p90_m': round(float(np.percentile(pooled, 90)), 4),
            'off_by_0.5m': round(float((pooled > 0.5).mean()), 4)}


def fires_s(camera: int, cameras: int) -> float:
    """When ring camera k fires, s from the sweep's end: as the sweep (azimuth -180 deg first,
    counter-clockwise) passes its yaw 360 k / cameras deg (a nuScenes-like trigger)."""
    return SWEEP_S * (((360.0 * camera / cameras + 180.0) % 360.0) / 360.0 - 1.0)


def ring(cameras: int, frames: int, name: str) -> None:
    """A ring of `cameras` around the LiDAR at 10 m/s + 30 deg/s yaw, camera k (yaw 360 k /
    cameras deg) firing as the sweep passes its axis (`fires_s`): per camera, the error
    uncompensated, compensated to its own image stamp (what the node does), and compensated to
    the sweep's end (one stamp for all cameras)."""
    scene = SyntheticScene(seed=7, width=WIDTH, height=HEIGHT, lidar_beams=64,
                           lidar_sweep_s=SWEEP_S, platform_motion=(10.0, 30.0))
    T_lidar_from = scene.ring_extrinsics(cameras)
    results = {k: {'raw': [], 'own_stamp': [], 'sweep_end': []} for k in range(cameras)}
    for index in range(1, frames + 1):
        frame = scene.frame(index)
        track = odometry(scene, index)  # of camera 0: the body; its LiDAR extrinsic for all

        def moved_to(offset_s: float) -> np.ndarray:
            return compensate(frame.lidar_points, frame.lidar_times_ns,
                              frame.stamp_ns + round(offset_s * 1e9), track,
                              frame.T_cam_from_lidar)
        at_end = moved_to(0.0)
        for k, T in enumerate(T_lidar_from):
            offset_s = fires_s(k, cameras)
            T_cam_from_lidar = np.linalg.inv(T)
            _, truth = scene.view(index, frame.T_cam_from_lidar @ T, offset_s)
            view = (T_cam_from_lidar, scene.camera, truth)
            results[k]['raw'].append(errors(frame.lidar_points, *view))
            results[k]['own_stamp'].append(errors(moved_to(offset_s), *view))
            results[k]['sweep_end'].append(errors(at_end, *view))
    rows = [{'camera': k, 'fires_ms': round(1000 * fires_s(k, cameras), 1),
             **{key: summary(values) for key, values in results[k].items()}}
            for k in range(cameras)]
    out = Path(__file__).parent / 'results' / f'motion_ring_{name}.json'
    out.write_text(json.dumps({'machine': name, 'size': f'{WIDTH}x{HEIGHT}', 'lidar_beams': 64,
                               'sweep_s': SWEEP_S, 'odometry_hz': ODOMETRY_HZ,
                               'motion': '10 m/s + 30 deg/s yaw', 'frames': frames,
                               'rows': rows}, indent=2) + '\n')
    print('| camera (fires, ms from the sweep end) | uncompensated | to its own stamp | to the '
          'sweep end |\n|---|---|---|---|')
    for row in rows:
        cells = [f"{row[k]['mean_m']:.3f} / {row[k]['median_m']:.3f}, "
                 f"{100 * row[k]['off_by_0.5m']:.1f} %" for k in ('raw', 'own_stamp', 'sweep_end')]
        print(f"| {row['camera']} ({row['fires_ms']:+.0f}) | " + ' | '.join(cells) + ' |')
    print(f'wrote {out}')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--frames', type=int, default=5)
    parser.add_argument('--name', default=socket.gethostname())
    parser.add_argument('--cameras', type=int, default=1,
                        help='> 1: a ring of cameras firing at their own times instead')
    args = parser.parse_args()
    if args.cameras > 1:
        return ring(args.cameras, args.frames, args.name)
    rows = []
    for label, speed, yaw_rate in MOTIONS:
        scene = SyntheticScene(seed=7, width=WIDTH, height=HEIGHT, lidar_beams=64,
                               lidar_sweep_s=SWEEP_S, platform_motion=(speed, yaw_rate))
        raw, compensated, seconds = [], [], []
        for index in range(1, args.frames + 1):
            frame = scene.frame(index)
            track = odometry(scene, index)
            began = time.perf_counter()
            moved = compensate(frame.lidar_points, frame.lidar_times_ns, frame.stamp_ns, track,
                               frame.T_cam_from_lidar)
            seconds.append(time.perf_counter() - began)
            view = (frame.T_cam_from_lidar, frame.camera, frame.depth)
            raw.append(errors(frame.lidar_points, *view))
            compensated.append(errors(moved, *view))
        rows.append({'motion': label, 'speed_m_s': speed, 'yaw_rate_deg_s': yaw_rate,
                     'uncompensated': summary(raw), 'compensated': summary(compensated),
                     'points_per_sweep': int(len(frame.lidar_points)),
                     'compensate_ms': round(1000 * float(np.median(seconds)), 2)})
    result = {'machine': args.name, 'size': f'{WIDTH}x{HEIGHT}', 'lidar_beams': 64,
              'sweep_s': SWEEP_S, 'odometry_hz': ODOMETRY_HZ, 'frames': args.frames,
              'rows': rows}
    out = Path(__file__).parent / 'results' / f'motion_{args.name}.json'
    out.write_text(json.dumps(result, indent=2) + '\n')
    print('| platform motion | uncompensated mean / median / p90 m, > 0.5 m | compensated mean / '
          'median / p90 m, > 0.5 m | compensate ms |\n|---|---|---|---:|')
    for row in rows:
        cells = [f"{row[k]['mean_m']:.3f} / {row[k]['median_m']:.3f} / {row[k]['p90_m']:.3f}, "
                 f"{100 * row[k]['off_by_0.5m']:.1f} %" for k in ('uncompensated', 'compensated')]
        print(f"| {row['motion']} | {cells[0]} | {cells[1]} | {row['compensate_ms']:.1f} |")
    print(f'wrote {out}')


if __name__ == '__main__':
    main()
