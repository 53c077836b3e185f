"""Ray grids of the synthetic sensors and nearest-hit ray casting (`data.synthetic`).

A ray grid holds float32 directions (3, rows, cols) in its sensor frame: `PinholeRays` one per
pixel centre of a camera (optical frame, z = 1, so the hit distance t is the depth) and
`SpinningRays` the beams x azimuths of a spinning LiDAR (unit vectors, t is the range). Each grid
bounds the rows / columns that may see a bounded shape (`footprint`), so `cast_rays` tests every
shape (`data.synthetic_shapes`) only against the rays near it.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from cspn_ros.core.camera import PinholeCamera

#: Vertical field of view (lowest, highest beam elevation, degrees) of common spinning LiDARs:
#: VLP-16, HDL-32E, HDL-64E.
LIDAR_VERTICAL_FOV_DEG = {16: (-15.0, 15.0), 32: (-30.67, 10.67), 64: (-24.8, 2.0)}

#: Near distance (metres) of the footprints: a shape reaching closer to the sensor may cover any
#: ray (a camera footprint clips boxes at z = _NEAR_M).
_NEAR_M = 0.05
#: The 12 edges of a box as pairs of corner indices (corners differ in one bit).
_BOX_EDGES = np.array([(i, i | (1 << b)) for b in range(3) for i in range(8) if not i & (1 << b)])


class PinholeRays:
    """Pixel-centre rays (3,H,W) float32 in the optical frame with z = 1, so t is the depth."""

    def __init__(self, camera: PinholeCamera) -> None:
        self.camera = camera
        x, y = camera.pixel_rays().T
        self.directions = np.stack([x, y, np.ones_like(x)]).reshape(
            3, camera.height, camera.width).astype(np.float32)

    @staticmethod
    def nearest(center: np.ndarray, radius: float) -> float:
        """Smallest t (depth) a sphere (centre in this frame) can have."""
        return float(center[2]) - radius

    def footprint(self, center: np.ndarray, radius: float,
                  corners: Optional[np.ndarray]) -> list[tuple[slice, slice]]:
        """Pixel rectangle(s) that may see a sphere or box (centre / corners in this frame)."""
        if corners is not None:
            points = _front_of_box(corners)
        elif center[2] + radius < _NEAR_M:
            return []
        elif center[2] - radius < _NEAR_M:
            return [(slice(None), slice(None))]
        else:  # x/z and y/z over the sphere's bounding cube peak at its corners
            offsets = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1)
                                for sz in (-1, 1)])
            points = center + radius * offsets
        if len(points) == 0:
            return []
        k = self.camera.camera_matrix
        u = k[0, 0] * points[:, 0] / points[:, 2] + k[0, 2]
        v = k[1, 1] * points[:, 1] / points[:, 2] + k[1, 2]
        cols = slice(max(0, math.floor(u.min())), min(self.camera.width, math.ceil(u.max()) + 1))
        rows = slice(max(0, math.floor(v.min())), min(self.camera.height, math.ceil(v.max()) + 1))
        if cols.start >= cols.stop or rows.start >= rows.stop:
            return []
        return [(rows, cols)]


def _front_of_box(corners: np.ndarray) -> np.ndarray:
    """Vertices of a box (8,3 corners) clipped to z >= the near plane: corners in front plus the
    points where edges cross the plane; their projections bound the box's image."""
    front = corners[:, 2] >= _NEAR_M
    a, b = corners[_BOX_EDGES[:, 0]], corners[_BOX_EDGES[:, 1]]
    crossing = front[_BOX_EDGES[:, 0]] != front[_BOX_EDGES[:, 1]]
    a, b = a[crossing], b[crossing]
    s = (_NEAR_M - a[:, 2]) / (b[:, 2] - a[:, 2])
    return np.concatenate([corners[front], a + s[:, None] * (b - a)])


class SpinningRays:
    """Multi-beam LiDAR rays (3, beams, azimuths) float32 unit vectors in the LiDAR frame; beam
    elevations ascending, azimuths from -pi in steps of the horizontal resolution."""

    def __init__(self, beams: int, resolution_deg: float) -> None:
        if beams not in LIDAR_VERTICAL_FOV_DEG:
            raise ValueError(f'lidar_beams must be one of {sorted(LIDAR_VERTICAL_FOV_DEG)}, '
                             f'got {beams}')
        if not 0.01 <= resolution_deg <= 5.0:
            raise ValueError(f'lidar horizontal resolution must be in [0.01, 5] deg, got '
                             f'{resolution_deg}')
        low, high = np.deg2rad(LIDAR_VERTICAL_FOV_DEG[beams])
        self.elevations = np.linspace(low, high, beams)
        self.count = int(round(360.0 / resolution_deg))
        self.step = 2 * math.pi / self.count
        azimuths = -math.pi + self.step * np.arange(self.count)
        el, az = np.meshgrid(self.elevations, azimuths, indexing='ij')
        self.directions = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az),
                                    np.sin(el)]).astype(np.float32)

    @staticmethod
    def nearest(center: np.ndarray, radius: float) -> float:
        """Smallest t (range) a sphere (centre in this frame) can have."""
        return float(np.linalg.norm(center)) - radius

    def footprint(self, center: np.ndarray, radius: float,
                  corners: Optional[np.ndarray]) -> list[tuple[slice, slice]]:
        """(beam, azimuth) rectangles that may see a sphere or box (centre / corners in the LiDAR
        frame). Elevations are bounded by the sphere; box azimuths by the corners (a convex shape
        not around the z axis spans the azimuths of its vertices)."""
        distance = float(np.linalg.norm(center))
        if distance <= radius + _NEAR_M:
            return [(slice(None), slice(None))]
        half = math.asin(radius / distance)
        elevation = math.asin(center[2] / distance)
        rows = slice(int(np.searchsorted(self.elevations, elevation - half - 1e-6)),
                     int(np.searchsorted(self.elevations, elevation + half + 1e-6, 'right')))
        if rows.start >= rows.stop:
            return []
        if corners is not None:
            azimuths = np.sort(np.arctan2(corners[:, 1], corners[:, 0]))
            gaps = np.diff(azimuths, append=azimuths[0] + 2 * math.pi)
            widest = int(np.argmax(gaps))
            if gaps[widest] <= math.pi:  # the box surrounds the z axis
                return [(rows, slice(None))]
            low = azimuths[(widest + 1) % len(azimuths)]
            high = low + 2 * math.pi - gaps[widest]
        else:
            cos_el = math.cos(min(math.pi / 2, abs(elevation) + half))
            if cos_el <= math.sin(half):
                return [(rows, slice(None))]
            half_az = math.asin(math.sin(half) / cos_el)
            azimuth = math.atan2(center[1], center[0])
            low, high = azimuth - half_az, azimuth + half_az
        first = math.floor((low + math.pi) / self.step) % self.count
        last = first + math.ceil((high - low) / self.step) + 2
        if last - first >= self.count:
            return [(rows, slice(None))]
        if last > self.count:
            return [(rows, slice(first, None)), (rows, slice(0, last - self.count))]
        return [(rows, slice(first, last))]


def cast_rays(rays, pose: np.ndarray, objects: list, max_range: float):
    """Nearest hit of every ray of a grid (`PinholeRays`, `SpinningRays`) at pose (4,4)
    world_from_sensor: (t (h,w) float32, inf = none within max_range; object index (h,w) int16,
    -1 = none; world directions (3,h,w) float32)."""
    rotation, origin = pose[:3, :3], pose[:3, 3]
    d = np.tensordot(rotation.astype(np.float32), rays.directions, 1)
    t = np.full(d.shape[1:], max_range, np.float32)
    ids = np.full(d.shape[1:], -1, np.int16)
    bounded = []
    with np.errstate(divide='ignore', invalid='ignore', over='ignore'):
        inv = 1.0 / d
        for k, obj in enumerate(objects):
            if math.isinf(obj.radius):
                obj.intersect(origin, d, inv, t, ids, k)
                continue
            center = (obj.center - origin) @ rotation
            nearest = rays.nearest(center, obj.radius)
            if nearest < max_range:
                bounded.append((nearest, k, center))
        for nearest, k, center in sorted(bounded):  # near first: far ones are often hidden
            obj = objects[k]
            corners = None if obj.corners is None else (obj.corners - origin) @ rotation
            for rows, cols in rays.footprint(center, obj.radius, corners):
                if t[rows, cols].max() > nearest:
                    obj.intersect(origin, d[:, rows, cols], inv[:, rows, cols],
                                  t[rows, cols], ids[rows, cols], k)
    t[ids < 0] = np.inf
    return t, ids, d


def hits_by_object(t: np.ndarray, ids: np.ndarray, d: np.ndarray, objects: list):
    """Yield (object, flat pixel indices (n,), hit points minus the ray origin (3,n) float32,
    t (n,)) for every object hit by some ray of a cast."""
    flat_ids = ids.ravel()
    order = np.argsort(flat_ids, kind='stable')
    bounds = np.cumsum(np.bincount(flat_ids + 1, minlength=len(objects) + 1))
    flat_t, flat_d = t.ravel(), d.reshape(3, -1)
    for k, obj in enumerate(objects):
        pixels = order[bounds[k]:bounds[k + 1]]
        if pixels.size:
            hit_t = flat_t[pixels]
            yield obj, pixels, hit_t * flat_d[:, pixels], hit_t
