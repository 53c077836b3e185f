#!/usr/bin/env python3
"""Convert the Redwood RGB-D frames (../shared/data/real/redwood_rgbd) into a rosbag2.

    python3 scripts/real_to_bag.py ../shared/data/real/redwood_rgbd bags/redwood [--frames 0 1 2 3]

The folder holds colour/depth pairs listed in rgbd.match (640x480 JPEG + uint16 PNG millimetres,
0 = missing), the intrinsics in camera_primesense.json (Open3D layout, K column-major) and the
camera poses in trajectory.log (Open3D log format: a "i j n" line, then the 4x4
T_world_from_camera of the optical frame). The bag records, per frame, with one header stamp
(frame index / --fps after --start-sec):
/image (rgb8) and /camera_info in 'camera_optical', /tof/depth (16UC1 mm, already registered to
the colour camera, so its frame is 'camera_optical' too: train and evaluate with
--depth-source tof --tof-registered) and /odom (nav_msgs/Odometry 'odom' <- 'camera_optical').
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np

from cspn_ros.core.camera import PinholeCamera
from cspn_ros.core.conversions import image_fields
from cspn_ros.core.topics import BAG_TOPICS, FRAME_IDS
from cspn_ros.data.synthetic_bag import STORAGES, BagWriter


@dataclasses.dataclass(frozen=True)
class RedwoodFrame:
    """One RGB-D frame: rgb (H,W,3) uint8, depth_mm (H,W) uint16 millimetres (0 = missing),
    T_world_from_camera (4,4) float64 of the optical frame."""

    index: int
    rgb: np.ndarray
    depth_mm: np.ndarray
    T_world_from_camera: np.ndarray

    @property
    def depth_m(self) -> np.ndarray:
        """(H,W) float32 metres, 0 = missing."""
        return self.depth_mm.astype(np.float32) / 1000.0


def read_camera(folder: Path) -> PinholeCamera:
    """The colour camera of camera_primesense.json (no distortion)."""
    data = json.loads((folder / 'camera_primesense.json').read_text())
    K = np.asarray(data['intrinsic_matrix'], np.float64).reshape(3, 3).T  # stored column-major
    return PinholeCamera(data['width'], data['height'], K, distortion_model='')


def read_trajectory(path: Path) -> list[np.ndarray]:
    """The 4x4 poses of an Open3D .log file, in file order (5 lines per pose)."""
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    if len(rows) % 5:
        raise ValueError(f'{path}: {len(rows)} non-empty lines is not a multiple of 5')
    return [np.array(rows[i + 1:i + 5], np.float64) for i in range(0, len(rows), 5)]


def read_redwood(folder: str | Path, indices: Optional[Sequence[int]] = None
                 ) -> tuple[PinholeCamera, list[RedwoodFrame]]:
    """(camera, frames) of a Redwood folder; indices select rgbd.match lines (None = all)."""
    folder = Path(folder)
    camera = read_camera(folder)
    pairs = [line.split() for line in (folder / 'rgbd.match').read_text().splitlines()
             if line.strip()]
    poses = read_trajectory(folder / 'trajectory.log')
    if len(poses) != len(pairs):
        raise ValueError(f'{folder}: {len(pairs)} frames in rgbd.match but {len(poses)} poses '
                         'in trajectory.log')
    frames = []
    for index in range(len(pairs)) if indices is None else indices:
        depth_name, color_name = pairs[index]
        bgr = cv2.imread(str(folder / color_name), cv2.IMREAD_COLOR)
        depth = cv2.imread(str(folder / depth_name), cv2.IMREAD_UNCHANGED)
        if bgr is None or depth is None or depth.dtype != np.uint16:
            raise ValueError(f'{folder}: cannot read {color_name} / {depth_name} as colour and '
                             'uint16 depth')
        if bgr.shape[:2] != depth.shape or depth.shape != (camera.height, camera.width):
            raise ValueError(f'{folder}: frame {index} sizes differ: colour {bgr.shape[:2]}, '
                             f'depth {depth.shape}, camera {camera.height}x{camera.width}')
        frames.append(RedwoodFrame(index, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), depth,
                                   poses[index]))
    return camera, frames


def write_redwood_bag(folder: str | Path, path: str | Path, indices: Optional[Sequence[int]] = None,
                      storage: str = 'sqlite3', fps: float = 30.0,
                      start_sec: int = 1_700_000_000) -> Path:
    """Write the frames of a Redwood folder into a new rosbag2 directory `path`; returns it."""
    camera, frames = read_redwood(folder, indices)
    with BagWriter(path, storage) as bag:
        for frame in frames:
            stamp = start_sec * 10**9 + round(frame.index * 1e9 / fps)
            head = bag.header(stamp, FRAME_IDS['camera'])
            bag.write(BAG_TOPICS['image'], stamp, bag.image(image_fields(frame.rgb, 'rgb8'), head))
            bag.write(BAG_TOPICS['camera_info'], stamp, bag.camera_info(camera, head))
            bag.write(BAG_TOPICS['tof_depth'], stamp,
                      bag.image(image_fields(frame.depth_mm, '16UC1'), head))
            bag.write(BAG_TOPICS['odometry'], stamp,
                      bag.odometry(frame.T_world_from_camera, bag.header(stamp, FRAME_IDS['odom']),
                                   FRAME_IDS['camera']))
    return Path(path)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('folder', type=Path, help='the redwood_rgbd folder')
    parser.add_argument('bag', type=Path, help='output rosbag2 folder (must not exist)')
    parser.add_argument('--frames', type=int, nargs='*', default=None,
                        help='rgbd.match lines to convert (default: all)')
    parser.add_argument('--storage', choices=STORAGES, default='sqlite3')
    parser.add_argument('--fps', type=float, default=30.0, help='frame rate of the stamps')
    args = parser.parse_args(argv)
    path = write_redwood_bag(args.folder, args.bag, args.frames, args.storage, args.fps)
    print('wrote', path)


if __name__ == '__main__':
    main()
