"""The synthetic rig's motion and camera ring (`data.synthetic`): where its cameras are.

World z up; body (REP 103) x forward, y left, z up; the colour camera's optical frame z forward,
x right, y down, level with the body. Default paths: outdoor 6 m/s down a weaving street (1.6 m
high), indoor a 1 m circle (0.9 m high) with the view sweeping left and right; or a platform at
constant speed and yaw rate (a circular arc, straight for yaw rate 0). A ring of cameras sits
around the LiDAR's vertical axis.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

_BODY_FROM_OPTICAL = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def camera_pose(time: float, scene: str, platform_motion: Optional[Sequence[float]] = None
                ) -> np.ndarray:
    """(4,4) float64 world_from_camera (colour optical frame) `time` seconds after the start, on
    scene's ('outdoor' | 'indoor') default path or, with platform_motion [speed m/s, yaw rate
    deg/s], on that arc from the origin heading along world x."""
    if platform_motion is not None:
        speed, yaw_rate = platform_motion[0], math.radians(platform_motion[1])
        yaw = yaw_rate * time
        if abs(yaw_rate) < 1e-12:
            position = [speed * time, 0.0, 1.6 if scene == 'outdoor' else 0.9]
        else:
            radius = speed / yaw_rate
            position = [radius * math.sin(yaw), radius * (1 - math.cos(yaw)),
                        1.6 if scene == 'outdoor' else 0.9]
    elif scene == 'outdoor':
        speed, amplitude, period = 6.0, 0.8, 14.0
        omega = 2 * math.pi / period
        position = [speed * time, amplitude * math.sin(omega * time), 1.6]
        yaw = math.atan2(amplitude * omega * math.cos(omega * time), speed)
    else:
        omega = 2 * math.pi / 25.0
        angle = omega * time
        position = [math.cos(angle), math.sin(angle), 0.9]
        yaw = angle + math.pi / 2 + 0.6 * math.sin(2 * math.pi * time / 9.0)
    c, s = math.cos(yaw), math.sin(yaw)
    pose = np.eye(4)
    pose[:3, :3] = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ _BODY_FROM_OPTICAL
    pose[:3, 3] = position
    return pose


def camera_ring(T_cam_from_lidar: np.ndarray, cameras: int) -> list[np.ndarray]:
    """T_lidar_from_camera (4,4) of `cameras` cameras spaced evenly in yaw around the LiDAR's
    vertical axis (a nuScenes-like ring); camera 0 is the camera at T_cam_from_lidar (4,4)."""
    T_lidar_from_cam = np.linalg.inv(T_cam_from_lidar)
    ring = []
    for k in range(cameras):
        yaw = 2 * math.pi * k / cameras
        turn = np.eye(4)
        turn[:2, :2] = [[math.cos(yaw), -math.sin(yaw)], [math.sin(yaw), math.cos(yaw)]]
        ring.append(turn @ T_lidar_from_cam)
    return ring
