"""Sensor models of the synthetic rig (`data.synthetic`): colour camera, spinning LiDAR, ToF.

Each sensor casts its ray grid (`data.synthetic_rays`) from a world pose (4,4) world_from_sensor
into a list of shapes (`data.synthetic_shapes`) and turns the hits into its measurement: the
colour camera a Lambert-shaded image with fog and its ground-truth depth, the LiDAR points with
2 cm range noise (one instant, or a sweep that takes time), the ToF camera a depth image with 1 %
noise and holes on dark surfaces and depth edges. Depths float32 metres, 0 = none.
"""
from __future__ import annotations

import math
from typing import Callable

import cv2
import numpy as np

from cspn_ros.core.camera import PinholeCamera
from cspn_ros.data.synthetic_rays import PinholeRays, SpinningRays, cast_rays, hits_by_object

#: Time slices a LiDAR sweep that takes time is rendered in (5 ms each for a 100 ms sweep).
SWEEP_SLICES = 20
#: Closest LiDAR return (metres).
_LIDAR_MIN_RANGE_M = 0.3


def pinhole_camera(width: int, height: int, fx: float) -> PinholeCamera:
    """Distortion-free camera with the principal point at the image centre."""
    k = np.array([[fx, 0.0, (width - 1) / 2], [0.0, fx, (height - 1) / 2], [0.0, 0.0, 1.0]])
    return PinholeCamera(width, height, k, np.zeros(5), 'plumb_bob',
                         np.hstack([k, np.zeros((3, 1))]), np.eye(3))


def focal_from_hfov(width: int, hfov_deg: float) -> float:
    """Focal length (pixels) of a `width`-pixel image spanning hfov_deg horizontally."""
    return width / 2 / math.tan(math.radians(hfov_deg) / 2)


class ColourCamera:
    """`camera` seeing up to max_range metres; beyond it the sky."""

    def __init__(self, camera: PinholeCamera, max_range: float) -> None:
        self.camera, self.max_range = camera, max_range
        self.rays = PinholeRays(camera)

    def render(self, pose: np.ndarray, objects: list) -> tuple[np.ndarray, np.ndarray]:
        """Colour image (H,W,3) uint8 (Lambert shading, fog towards the sky colour at max range)
        and depth (H,W) float32 (0 beyond range / sky) from pose (4,4) world_from_camera."""
        t, ids, d = cast_rays(self.rays, pose, objects, self.max_range)
        rgb = np.empty((t.size, 3), np.uint8)
        sky = np.array([0.62, 0.74, 0.92], np.float32)[:, None]
        lights = np.array([[0.45, 0.3, 0.84], [-0.5, -0.6, 0.62]], np.float32)
        for obj, pixels, rel, hit_t in hits_by_object(t, ids, d, objects):
            normal, local = obj.surface(rel, pose[:3, 3])
            light = np.maximum(lights @ normal, 0)
            shade = 0.3 + 0.55 * light[0] + 0.2 * light[1]
            fog = np.minimum(hit_t * np.float32(1 / self.max_range), 1) ** 2
            colour = obj.material.albedo(local) * (shade * (1 - fog)) + fog * sky
            rgb[pixels] = np.clip(colour * 255 + 0.5, 0, 255).astype(np.uint8).T
        missing = ~np.isfinite(t)
        rgb[missing.ravel()] = np.round(sky[:, 0] * 255).astype(np.uint8)
        depth = np.where(missing, 0, t).astype(np.float32)
        return rgb.reshape(*t.shape, 3), depth


class SpinningLidar:
    """Multi-beam spinning LiDAR (`SpinningRays`: 16, 32 or 64 beams, azimuth step in degrees)
    with returns in [0.3 m, max_range]."""

    def __init__(self, beams: int, resolution_deg: float, max_range: float) -> None:
        self.rays = SpinningRays(beams, resolution_deg)
        self.max_range = max_range

    def scan(self, pose: np.ndarray, objects: list, rng: np.random.Generator) -> np.ndarray:
        """(N,3) float32 points in the LiDAR frame, all measured at pose (4,4) world_from_lidar."""
        t, _, _ = cast_rays(self.rays, pose, objects, self.max_range)
        return self._points(t, np.isfinite(t) & (t >= _LIDAR_MIN_RANGE_M), rng).copy()

    def sweep(self, pose_at: Callable[[float], np.ndarray], sweep_s: float, stamp_ns: int,
              objects: list, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """A sweep of sweep_s seconds ending at stamp_ns: ((N,3) float32 points, each in the
        LiDAR frame of its slice's time, (N,) int64 times ns), SWEEP_SLICES slices of azimuth
        columns in firing order (-180 deg first); pose_at(offset_s) -> (4,4) world_from_lidar
        offset_s seconds after stamp_ns."""
        columns = self.rays.count
        points, times = [], []
        for k in range(SWEEP_SLICES):
            offset_s = sweep_s * ((k + 0.5) / SWEEP_SLICES - 1.0)
            t, _, _ = cast_rays(self.rays, pose_at(offset_s), objects, self.max_range)
            in_slice = np.zeros(t.shape, bool)
            in_slice[:, k * columns // SWEEP_SLICES:(k + 1) * columns // SWEEP_SLICES] = True
            points.append(self._points(t, np.isfinite(t) & (t >= _LIDAR_MIN_RANGE_M) & in_slice,
                                       rng))
            times.append(np.full(len(points[-1]), stamp_ns + round(offset_s * 1e9), np.int64))
        return np.concatenate(points).astype(np.float32), np.concatenate(times)

    def _points(self, t: np.ndarray, hit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(n,3) float32 points of the n rays where hit: range t (beams, azimuths) + 2 cm noise."""
        ranges = t[hit] + rng.normal(0, 0.02, int(hit.sum())).astype(np.float32)
        return (self.rays.directions[:, hit] * ranges).T


class TofCamera:
    """Time-of-flight camera `camera` measuring up to max_range metres."""

    def __init__(self, camera: PinholeCamera, max_range: float) -> None:
        self.camera, self.max_range = camera, max_range
        self.rays = PinholeRays(camera)

    def view(self, pose: np.ndarray, objects: list
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Noise-free view from pose (4,4) world_from_tof: (t (h,w) float32 metres, inf =
        nothing within range; dark (h,w) bool: albedo luminance < 0.12; edge (h,w) bool: depth
        edges, where flying pixels are removed), the holes `render` cuts."""
        t, ids, d = cast_rays(self.rays, pose, objects, self.max_range)
        luminance = np.zeros(t.size, np.float32)
        weights = np.array([0.299, 0.587, 0.114], np.float32)
        for obj, pixels, rel, _ in hits_by_object(t, ids, d, objects):
            luminance[pixels] = weights @ obj.material.albedo(obj.surface(rel, pose[:3, 3])[1])
        depth = np.where(np.isfinite(t), t, 0).astype(np.float32)
        kernel = np.ones((3, 3), np.uint8)
        edge = cv2.dilate(depth, kernel) - cv2.erode(depth, kernel) > 0.05 * depth + 0.02
        return t, luminance.reshape(depth.shape) < 0.12, edge

    def render(self, pose: np.ndarray, objects: list, rng: np.random.Generator) -> np.ndarray:
        """(h,w) float32 ToF depth from pose (4,4) world_from_tof: 1 % noise, holes beyond
        range, on dark surfaces and at depth edges (`view`), 0 = missing."""
        t, dark, edge = self.view(pose, objects)
        depth = np.where(np.isfinite(t), t, 0).astype(np.float32)
        depth *= 1 + rng.normal(0, 0.01, depth.shape).astype(np.float32)
        depth[dark | edge] = 0
        return depth
