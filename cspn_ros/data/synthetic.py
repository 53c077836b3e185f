"""Procedural moving 3D scene: the embedded default sensor source (camera, LiDAR, ToF, truth).

A scene is a handful of analytic primitives (axis-aligned planes, yaw-oriented boxes, spheres)
with solid textures (checker / stripes / noise albedo) and Lambert shading, so colour edges sit on
depth edges. Rays are cast with vectorised numpy; each bounded object is only tested against the
rays inside its angular footprint: a 640x480 frame + a 64-beam x 1800 sweep + a 320x240 ToF
image take about 40 ms (max ~60 ms) of one CPU core, within the 10 Hz budget.

Frames: world z up; body (REP 103) x forward, y left, z up; optical frames z forward, x right,
y down. 'outdoor' is an endless street (buildings, parked cars, poles, balls; 1-60 m, sky beyond
= depth 0); 'indoor' a furnished room (0.5-8 m). `SyntheticScene(seed).frame(i)` is a pure function
of (seed, i, constructor arguments).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Optional, Sequence

import cv2
import numpy as np

from cspn_ros.core.camera import PinholeCamera
from cspn_ros.core.projection import transform_from_translation_quaternion
from cspn_ros.core.topics import FRAME_IDS

#: LiDAR pose in the colour camera's optical frame (T_cam_from_lidar): 8 cm above, 5 cm behind,
#: 2 cm left of the camera; body axes x forward, y left, z up, yawed 1.5 deg, pitched -1 deg and
#: rolled 0.5 deg against the camera. [x, y, z] metres and [qx, qy, qz, qw].
DEFAULT_LIDAR_TRANSLATION = [-0.02, -0.08, -0.05]
DEFAULT_LIDAR_ROTATION = [0.499942, -0.508592, 0.504401, 0.486797]
#: ToF optical frame in the colour optical frame (T_cam_from_tof): 5 cm right, 1 cm down,
#: tilted 0.4 deg about x and -0.6 deg about y.
DEFAULT_TOF_TRANSLATION = [0.05, 0.01, 0.0]
DEFAULT_TOF_ROTATION = [0.003491, -0.005236, -0.000018, 0.999980]
#: Vertical field of view (lowest, highest beam elevation, degrees) of common spinning LiDARs:
#: VLP-16, HDL-32E, HDL-64E.
LIDAR_VERTICAL_FOV_DEG = {16: (-15.0, 15.0), 32: (-30.67, 10.67), 64: (-24.8, 2.0)}
DEFAULT_START_STAMP_NS = 1_700_000_000 * 10**9
SCENES = ('outdoor', 'indoor')

_BODY_FROM_OPTICAL = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
_EPS = 1e-4
_STREET_CELL_M = 15.0


@dataclasses.dataclass
class SyntheticFrame:
    """One time step. Depths float32 metres, 0 = no measurement / no ground truth.

    rgb (H,W,3) uint8 and depth (H,W) ground truth in the colour camera; lidar_points (N,3)
    float32 in the LiDAR frame; tof_depth (h,w) in the ToF camera; T_cam_from_* (4,4) float64 map
    sensor points into the colour optical frame; T_world_from_cam (4,4) float64 camera pose.
    lidar_times_ns (N,) int64: when each LiDAR point was measured (a sweep that takes time,
    `lidar_sweep_s`; None for an instantaneous sweep at stamp_ns); lidar_points are then in the
    LiDAR frame *at that time*.
    """

    index: int
    stamp_ns: int
    rgb: np.ndarray
    depth: np.ndarray
    camera: PinholeCamera
    lidar_points: np.ndarray
    T_cam_from_lidar: np.ndarray
    tof_depth: np.ndarray
    tof_camera: PinholeCamera
    T_cam_from_tof: np.ndarray
    T_world_from_cam: np.ndarray
    lidar_times_ns: Optional[np.ndarray] = None


# --- materials ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Material:
    """Solid texture: albedo = color * (1 - contrast + contrast * pattern(point / scale))."""

    color: tuple[float, float, float]
    pattern: str  # 'checker' | 'stripes' | 'noise' | 'plain'
    scale: float = 1.0
    contrast: float = 0.5
    axis: int = 0  # stripes run across this axis
    phase: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def albedo(self, local: np.ndarray) -> np.ndarray:
        """(3,N) float32 object-frame points (metres) -> (3,N) float32 albedo in [0, 1]."""
        q = (local + np.float32(self.phase)[:, None]) * np.float32(1.0 / self.scale)
        if self.pattern == 'checker':
            value = np.floor(q).sum(0) % 2
        elif self.pattern == 'stripes':
            value = (q[self.axis] % 1.0) < 0.55
        elif self.pattern == 'noise':
            value = 0.6 * _cell_hash(q) + 0.4 * _cell_hash(q * 4.0)
        else:
            value = np.ones(q.shape[1], np.float32)
        shade = np.float32(1.0 - self.contrast) + np.float32(self.contrast) * value
        return np.float32(self.color)[:, None] * shade


_HASH_PRIMES = np.array([73856093, 19349663, 83492791], np.uint32)[:, None]


def _cell_hash(q: np.ndarray) -> np.ndarray:
    """(3,N) float32 -> (N,) float32 in [0, 1): an integer hash of the unit cell holding q."""
    cells = np.floor(q).astype(np.int32).view(np.uint32) * _HASH_PRIMES
    h = (cells[0] ^ cells[1] ^ cells[2]) * np.uint32(2654435761)
    return (h >> np.uint32(8)).astype(np.float32) * np.float32(2.0**-24)


def _random_material(rng: np.random.Generator, patterns: Sequence[str],
                     dark: bool = True) -> _Material:
    """A random textured material; with dark=True some are dark enough to blind a ToF camera."""
    low = 0.05 if dark and rng.random() < 0.2 else 0.3
    return _Material(color=tuple(rng.uniform(low, 0.95, 3)), pattern=str(rng.choice(patterns)),
                     scale=float(rng.uniform(0.2, 1.0)), contrast=float(rng.uniform(0.3, 0.8)),
                     axis=int(rng.integers(0, 3)), phase=tuple(rng.uniform(0, 1, 3)))


# --- primitives -----------------------------------------------------------------------------
# intersect(origin (3,) float64 world, d (3,h,w) float32 world directions, inv (3,h,w) = 1 / d,
# t (h,w) nearest hit so far, ids (h,w), k): writes t and k where this object is hit nearer.
# surface(rel (3,N) float32 hit points minus the ray origin, origin (3,) float64 world) -> (unit
# normals facing the origin (3,N) or (3,1), object-frame points for the texture (3,N)).
# radius / center: bounding sphere (radius inf for planes); corners: (8,3) world box corners
# (None for other shapes), bit 0/1/2 of the corner index = +x/+y/+z side.

@dataclasses.dataclass(frozen=True)
class _Plane:
    """The plane world[axis] == value; unbounded, seen from both sides."""

    axis: int
    value: float
    material: _Material
    radius = math.inf
    corners = None

    def intersect(self, origin, d, inv, t, ids, k) -> None:
        hit = float(self.value - origin[self.axis]) * inv[self.axis]
        _keep_nearer(hit, t, ids, k)

    def surface(self, rel, origin):
        normal = np.zeros((3, 1), np.float32)
        normal[self.axis] = 1.0 if origin[self.axis] > self.value else -1.0
        return normal, rel + origin.astype(np.float32)[:, None]


@dataclasses.dataclass(frozen=True, eq=False)
class _Sphere:
    """Sphere of `radius` metres around `center` (3,) world."""

    center: np.ndarray
    radius: float
    material: _Material
    corners = None

    def intersect(self, origin, d, inv, t, ids, k) -> None:
        o = (origin - self.center).tolist()
        b = d[0] * o[0] + d[1] * o[1] + d[2] * o[2]
        dd = d[0] * d[0] + d[1] * d[1] + d[2] * d[2]
        disc = b * b - dd * (o[0]**2 + o[1]**2 + o[2]**2 - self.radius**2)
        hit = (-b - np.sqrt(disc)) / dd  # NaN where disc < 0: never nearer
        _keep_nearer(hit, t, ids, k)

    def surface(self, rel, origin):
        local = rel + (origin - self.center).astype(np.float32)[:, None]
        return local * np.float32(1.0 / self.radius), local


@dataclasses.dataclass(frozen=True, eq=False)
class _Box:
    """Box of half sizes `half` (3,) centred at `center`, rotated by `yaw` about world z."""

    center: np.ndarray
    half: np.ndarray
    yaw: float
    material: _Material

    @functools.cached_property
    def radius(self) -> float:
        return float(np.linalg.norm(self.half))

    @functools.cached_property
    def corners(self) -> np.ndarray:
        signs = np.array([[1 if i & (1 << b) else -1 for b in range(3)] for i in range(8)])
        return self.center + (signs * self.half) @ self._world_from_box().T

    def _world_from_box(self) -> np.ndarray:
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])

    def intersect(self, origin, d, inv, t, ids, k) -> None:
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        o = (origin - self.center).tolist()
        o_local = (c * o[0] + s * o[1], -s * o[0] + c * o[1], o[2])
        if self.yaw != 0:
            inv = (1.0 / (c * d[0] + s * d[1]), 1.0 / (-s * d[0] + c * d[1]), inv[2])
        near = far = None
        for oa, ia, h in zip(o_local, inv, self.half.tolist()):
            t1 = (-h - oa) * ia
            t2 = (h - oa) * ia
            lo, hi = np.minimum(t1, t2), np.maximum(t1, t2, out=t2)
            near = lo if near is None else np.maximum(near, lo, out=near)
            far = hi if far is None else np.minimum(far, hi, out=far)
        _keep_nearer(near, t, ids, k, near <= far)

    def surface(self, rel, origin):
        rot = self._world_from_box().astype(np.float32)
        local = rot.T @ (rel + (origin - self.center).astype(np.float32)[:, None])
        axis = np.argmax(np.abs(local) * np.float32(1.0 / self.half)[:, None], axis=0)
        columns = np.arange(local.shape[1])
        normal_local = np.zeros_like(local)
        normal_local[axis, columns] = np.sign(local[axis, columns])
        return rot @ normal_local, local


def _keep_nearer(hit: np.ndarray, t: np.ndarray, ids: np.ndarray, k: int,
                 valid: Optional[np.ndarray] = None) -> None:
    """Write hit distances (NaN / negative / not valid = miss) into t and k into ids where
    nearer."""
    nearer = (hit > _EPS) & (hit < t)
    if valid is not None:
        nearer &= valid
    np.copyto(t, hit, where=nearer)
    np.copyto(ids, k, where=nearer)


# --- ray grids ------------------------------------------------------------------------------

_NEAR_M = 0.05
#: The 12 edges of a box as pairs of corner indices (corners differ in one bit).
_BOX_EDGES = np.array([(i, i | (1 << b)) for b in range(3) for i in range(8) if not i & (1 << b)])


class _PinholeRays:
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


class _SpinningRays:
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


def _hits_by_object(t: np.ndarray, ids: np.ndarray, d: np.ndarray, objects: list):
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


def _pinhole(width: int, height: int, fx: float) -> PinholeCamera:
    """Distortion-free camera with the principal point at the image centre."""
    k = np.array([[fx, 0.0, (width - 1) / 2], [0.0, fx, (height - 1) / 2], [0.0, 0.0, 1.0]])
    return PinholeCamera(width, height, k, np.zeros(5), 'plumb_bob',
                         np.hstack([k, np.zeros((3, 1))]), np.eye(3))


def _focal_from_hfov(width: int, hfov_deg: float) -> float:
    return width / 2 / math.tan(math.radians(hfov_deg) / 2)


# --- the scene ------------------------------------------------------------------------------

#: Time slices a LiDAR sweep that takes time is rendered in (5 ms each for a 100 ms sweep).
SWEEP_SLICES = 20


class SyntheticScene:
    """Endless procedural scene seen by a moving rig: colour camera + spinning LiDAR + ToF camera.

    seed: the scene layout and noise; width/height/fx: colour camera (fx default: 70 deg
    horizontal FOV); lidar_beams: 16, 32 or 64 (vertical FOV of VLP-16 / HDL-32E / HDL-64E);
    lidar_horizontal_resolution_deg: azimuth step; scene: 'outdoor' | 'indoor'; rate_hz and
    start_stamp_ns: frame i is stamped start_stamp_ns + i / rate_hz; tof_*: ToF image size and
    range (metres); lidar_/tof_ translation [x, y, z] m + rotation [qx, qy, qz, qw]: the sensors'
    poses in the colour optical frame (T_cam_from_sensor). lidar_sweep_s: seconds one LiDAR sweep
    takes (0 = instantaneous, at the frame stamp); a sweep ends at the frame stamp, spinning
    from azimuth -180 deg (behind) so it faces forward half-way, and is rendered in
    SWEEP_SLICES time slices, each from the rig's pose at its time (the points' times).
    platform_motion: [speed m/s, yaw rate deg/s] replaces the default path by a circular arc
    (straight for yaw rate 0) at constant speed and yaw rate.
    """

    def __init__(self, seed: int = 0, width: int = 640, height: int = 480,
                 fx: Optional[float] = None, lidar_beams: int = 64,
                 lidar_horizontal_resolution_deg: float = 0.2, scene: str = 'outdoor',
                 rate_hz: float = 10.0, start_stamp_ns: int = DEFAULT_START_STAMP_NS,
                 tof_width: int = 320, tof_height: int = 240, tof_max_range: float = 8.0,
                 lidar_translation: Sequence[float] = DEFAULT_LIDAR_TRANSLATION,
                 lidar_rotation: Sequence[float] = DEFAULT_LIDAR_ROTATION,
                 tof_translation: Sequence[float] = DEFAULT_TOF_TRANSLATION,
                 tof_rotation: Sequence[float] = DEFAULT_TOF_ROTATION,
                 lidar_sweep_s: float = 0.0,
                 platform_motion: Optional[Sequence[float]] = None) -> None:
        if scene not in SCENES:
            raise ValueError(f'scene must be one of {SCENES}, got {scene!r}')
        if rate_hz <= 0 or tof_max_range <= 0:
            raise ValueError('rate_hz and tof_max_range must be positive')
        if lidar_sweep_s < 0:
            raise ValueError(f'lidar_sweep_s must be >= 0, got {lidar_sweep_s}')
        self.lidar_sweep_s = float(lidar_sweep_s)
        self.platform_motion = (None if platform_motion is None
                                else tuple(float(v) for v in platform_motion))
        self.seed, self.scene, self.rate_hz = int(seed), scene, float(rate_hz)
        self.start_stamp_ns = int(start_stamp_ns)
        self.camera = _pinhole(width, height, fx or _focal_from_hfov(width, 70.0))
        self.tof_camera = _pinhole(tof_width, tof_height, _focal_from_hfov(tof_width, 70.0))
        self.T_cam_from_lidar = transform_from_translation_quaternion(lidar_translation,
                                                                      lidar_rotation)
        self.T_cam_from_tof = transform_from_translation_quaternion(tof_translation, tof_rotation)
        self.max_range = 60.0 if scene == 'outdoor' else 12.0
        self.tof_max_range = float(tof_max_range)
        self._camera_rays = _PinholeRays(self.camera)
        self._tof_rays = _PinholeRays(self.tof_camera)
        self._lidar_rays = _SpinningRays(lidar_beams, lidar_horizontal_resolution_deg)
        layout = np.random.default_rng([self.seed, 0])
        if scene == 'indoor':
            self._room = self._build_room(layout)
        else:
            self._street_half_width = float(layout.uniform(6.0, 8.0))
            self._ground = _Plane(2, 0.0, _Material((0.33, 0.33, 0.36), 'noise', 0.5, 0.5))
            self._cells: dict[int, list] = {}

    # layout ----------------------------------------------------------------------------------
    def _build_room(self, rng: np.random.Generator) -> list:
        """Walls, floor and ceiling of a room centred at the origin plus furniture off the
        camera's circular path (radius 1 m)."""
        hx, hy, height = rng.uniform(3.5, 4.5), rng.uniform(2.8, 3.6), rng.uniform(2.5, 3.0)
        wall = ('stripes', 'noise', 'plain', 'checker')
        objects: list = [_Plane(2, 0.0, _Material(tuple(rng.uniform(0.3, 0.7, 3)), 'checker',
                                                  0.5, 0.5, phase=(0.25, 0.25, 0.5))),
                         _Plane(2, height, _Material((0.9, 0.9, 0.88), 'plain'))]
        for axis, half in ((0, hx), (1, hy)):
            for sign in (-1, 1):
                objects.append(_Plane(axis, sign * half, _random_material(rng, wall, dark=False)))
        patterns = ('checker', 'stripes', 'noise', 'plain')
        while len(objects) < 6 + int(rng.integers(7, 12)):
            if rng.random() < 0.65:
                half = rng.uniform([0.15, 0.15, 0.15], [0.75, 0.6, 0.9])
                footprint = float(np.hypot(half[0], half[1]))
                xy = rng.uniform([-hx + 0.2, -hy + 0.2], [hx - 0.2, hy - 0.2])
                shape = _Box(np.array([*xy, half[2]]), half, float(rng.uniform(-np.pi, np.pi)),
                             _random_material(rng, patterns))
            else:
                radius = float(rng.uniform(0.15, 0.5))
                footprint = radius
                xy = rng.uniform([-hx + radius, -hy + radius], [hx - radius, hy - radius])
                shape = _Sphere(np.array([*xy, radius]), radius, _random_material(rng, patterns))
            if np.hypot(*xy) - footprint > 1.5:  # clear of the path and the sensors on it
                objects.append(shape)
        return objects

    def _street_cell(self, cell: int) -> list:
        """Buildings on both sides and street furniture for x in [cell, cell + 1) * 15 m."""
        rng = np.random.default_rng([self.seed, 1, cell + 2**32])
        x0, w = cell * _STREET_CELL_M, self._street_half_width
        objects = []
        facade = ('stripes', 'noise', 'checker', 'plain')
        for side in (-1, 1):
            if rng.random() < 0.85:
                start = x0 + rng.uniform(0.0, 3.0)
                length = rng.uniform(6.0, x0 + _STREET_CELL_M - 0.5 - start)
                front = w + rng.uniform(0, 1.5)
                depth, height = rng.uniform(6, 12), rng.uniform(5, 20)
                objects.append(_Box(np.array([start + length / 2, side * (front + depth / 2),
                                              height / 2]),
                                    np.array([length / 2, depth / 2, height / 2]), 0.0,
                                    _random_material(rng, facade)))
            for _ in range(int(rng.integers(0, 3))):
                x = x0 + rng.uniform(1.0, _STREET_CELL_M - 1.0)
                kind = rng.random()
                if kind < 0.5:  # parked car
                    objects.append(_Box(np.array([x, side * (w - 1.6 + rng.uniform(-0.3, 0.3)),
                                                  0.75]),
                                        np.array([2.1, 0.9, 0.75]),
                                        float(rng.uniform(-0.15, 0.15)),
                                        _random_material(rng, ('plain', 'noise'))))
                elif kind < 0.75:  # pole
                    height = rng.uniform(2.5, 4.5)
                    objects.append(_Box(np.array([x, side * (w - 0.5), height / 2]),
                                        np.array([0.12, 0.12, height / 2]), 0.0,
                                        _random_material(rng, ('stripes', 'plain'))))
                else:  # ball / bush
                    radius = rng.uniform(0.3, 1.0)
                    objects.append(_Sphere(np.array([x, side * rng.uniform(2.6, w - 1.0), radius]),
                                           radius, _random_material(rng, ('noise', 'checker'))))
        return objects

    def _objects_near(self, position: np.ndarray) -> list:
        if self.scene == 'indoor':
            return self._room
        first = math.floor((position[0] - self.max_range) / _STREET_CELL_M)
        last = math.floor((position[0] + self.max_range) / _STREET_CELL_M)
        cells = {c: self._cells.get(c) or self._street_cell(c) for c in range(first, last + 1)}
        self._cells = cells  # cached: consecutive frames share most cells
        return [self._ground, *(obj for c in sorted(cells) for obj in cells[c])]

    def world_from_camera(self, index: int) -> np.ndarray:
        """(4,4) float64 pose of the colour optical frame at frame index: a smooth path with
        forward motion and yaw (outdoor: 6 m/s down a weaving street; indoor: a 1 m circle with
        the view sweeping left and right), or the `platform_motion` arc."""
        return self.pose_at(index / self.rate_hz)

    def pose_at(self, time: float) -> np.ndarray:
        """(4,4) float64 pose of the colour optical frame `time` seconds after frame 0."""
        if self.platform_motion is not None:
            speed, yaw_rate = self.platform_motion[0], math.radians(self.platform_motion[1])
            yaw = yaw_rate * time
            if abs(yaw_rate) < 1e-12:
                position = [speed * time, 0.0, 1.6 if self.scene == 'outdoor' else 0.9]
            else:
                radius = speed / yaw_rate
                position = [radius * math.sin(yaw), radius * (1 - math.cos(yaw)),
                            1.6 if self.scene == 'outdoor' else 0.9]
        elif self.scene == 'outdoor':
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

    # rendering -------------------------------------------------------------------------------
    def sensor_extrinsics(self, lidar: bool = True, tof: bool = True) -> dict[str, np.ndarray]:
        """Child frame id -> T_cam_from_child (4,4) of the sensors asked for: the rig's static
        tf, parent 'camera_optical' (FRAME_IDS), as bags and synthetic_source_node publish it."""
        extrinsics = {}
        if lidar:
            extrinsics[FRAME_IDS['lidar']] = self.T_cam_from_lidar
        if tof:
            extrinsics[FRAME_IDS['tof']] = self.T_cam_from_tof
        return extrinsics

    def ring_extrinsics(self, cameras: int) -> list[np.ndarray]:
        """T_lidar_from_camera (4,4) of `cameras` cameras spaced evenly in yaw around the
        LiDAR's vertical axis (a nuScenes-like ring); camera 0 is the scene's colour camera."""
        T_lidar_from_cam = np.linalg.inv(self.T_cam_from_lidar)
        ring = []
        for k in range(cameras):
            yaw = 2 * math.pi * k / cameras
            turn = np.eye(4)
            turn[:2, :2] = [[math.cos(yaw), -math.sin(yaw)], [math.sin(yaw), math.cos(yaw)]]
            ring.append(turn @ T_lidar_from_cam)
        return ring

    def view(self, index: int, T_cam_from_view: np.ndarray,
             offset_s: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """Colour image (H,W,3) uint8 and ground-truth depth (H,W) float32 m of a camera like
        the colour camera placed at T_cam_from_view (4,4), firing offset_s seconds after frame
        `index`'s stamp (a ring's cameras fire at their own times)."""
        world_from_cam = self.pose_at(index / self.rate_hz + offset_s)
        return self._render_camera(world_from_cam @ T_cam_from_view,
                                   self._objects_near(world_from_cam[:3, 3]))

    def frame(self, index: int) -> SyntheticFrame:
        """Render frame `index` (>= 0): colour image + ground truth, LiDAR sweep and ToF image."""
        if index < 0:
            raise ValueError(f'frame index must be >= 0, got {index}')
        rng = np.random.default_rng([self.seed, 2, index])
        world_from_cam = self.world_from_camera(index)
        objects = self._objects_near(world_from_cam[:3, 3])
        rgb, depth = self._render_camera(world_from_cam, objects)
        lidar_times_ns = None
        if self.lidar_sweep_s > 0:
            lidar_points, lidar_times_ns = self._render_sweep(index, objects, rng)
        else:
            lidar_points = self._render_lidar(world_from_cam @ self.T_cam_from_lidar, objects, rng)
        return SyntheticFrame(
            index=index, stamp_ns=self.start_stamp_ns + round(index * 1e9 / self.rate_hz),
            rgb=rgb, depth=depth, camera=self.camera,
            lidar_points=lidar_points, lidar_times_ns=lidar_times_ns,
            T_cam_from_lidar=self.T_cam_from_lidar,
            tof_depth=self._render_tof(world_from_cam @ self.T_cam_from_tof, objects, rng),
            tof_camera=self.tof_camera, T_cam_from_tof=self.T_cam_from_tof,
            T_world_from_cam=world_from_cam)

    def _cast(self, rays, pose: np.ndarray, objects: list, max_range: float):
        """Nearest hit of every ray: (t (h,w) float32, inf = none within max_range; object index
        (h,w) int16, -1 = none; world directions (3,h,w) float32)."""
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

    def _render_camera(self, pose: np.ndarray, objects: list):
        """Colour image (H,W,3) uint8 (Lambert shading, fog towards the sky colour at max range)
        and depth (H,W) float32 (0 beyond range / sky)."""
        t, ids, d = self._cast(self._camera_rays, pose, objects, self.max_range)
        rgb = np.empty((t.size, 3), np.uint8)
        sky = np.array([0.62, 0.74, 0.92], np.float32)[:, None]
        lights = np.array([[0.45, 0.3, 0.84], [-0.5, -0.6, 0.62]], np.float32)
        for obj, pixels, rel, hit_t in _hits_by_object(t, ids, d, objects):
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

    def _render_lidar(self, pose: np.ndarray, objects: list, rng: np.random.Generator):
        """(N,3) float32 points in the LiDAR frame: hits in [0.3 m, max_range], 2 cm noise."""
        t, _, _ = self._cast(self._lidar_rays, pose, objects, self.max_range)
        hit = np.isfinite(t) & (t >= 0.3)
        ranges = t[hit] + rng.normal(0, 0.02, int(hit.sum())).astype(np.float32)
        return (self._lidar_rays.directions[:, hit] * ranges).T.copy()

    def _render_sweep(self, index: int, objects: list, rng: np.random.Generator
                      ) -> tuple[np.ndarray, np.ndarray]:
        """A sweep of lidar_sweep_s ending at frame index's stamp: ((N,3) float32 points, each
        in the LiDAR frame of its slice's time, (N,) int64 times ns), SWEEP_SLICES slices of
        azimuth columns in firing order (-180 deg first)."""
        stamp_ns = self.start_stamp_ns + round(index * 1e9 / self.rate_hz)
        columns = self._lidar_rays.count
        points, times = [], []
        for k in range(SWEEP_SLICES):
            offset_s = self.lidar_sweep_s * ((k + 0.5) / SWEEP_SLICES - 1.0)
            pose = self.pose_at(index / self.rate_hz + offset_s) @ self.T_cam_from_lidar
            t, _, _ = self._cast(self._lidar_rays, pose, objects, self.max_range)
            in_slice = np.zeros(t.shape, bool)
            in_slice[:, k * columns // SWEEP_SLICES:(k + 1) * columns // SWEEP_SLICES] = True
            hit = np.isfinite(t) & (t >= 0.3) & in_slice
            ranges = t[hit] + rng.normal(0, 0.02, int(hit.sum())).astype(np.float32)
            points.append((self._lidar_rays.directions[:, hit] * ranges).T)
            times.append(np.full(len(ranges), stamp_ns + round(offset_s * 1e9), np.int64))
        return np.concatenate(points).astype(np.float32), np.concatenate(times)

    def tof_view(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The ToF camera's noise-free view of frame `index`: (t (h,w) float32 metres, inf =
        nothing within range; dark (h,w) bool; edge (h,w) bool), the holes `frame` cuts."""
        world_from_cam = self.world_from_camera(index)
        return self._tof_view(world_from_cam @ self.T_cam_from_tof,
                              self._objects_near(world_from_cam[:3, 3]))

    def _tof_view(self, pose: np.ndarray, objects: list):
        """(t, dark, edge) of `tof_view` from the ToF pose: dark = albedo luminance < 0.12,
        edge = depth edges (flying pixels, removed)."""
        t, ids, d = self._cast(self._tof_rays, pose, objects, self.tof_max_range)
        luminance = np.zeros(t.size, np.float32)
        weights = np.array([0.299, 0.587, 0.114], np.float32)
        for obj, pixels, rel, _ in _hits_by_object(t, ids, d, objects):
            luminance[pixels] = weights @ obj.material.albedo(obj.surface(rel, pose[:3, 3])[1])
        depth = np.where(np.isfinite(t), t, 0).astype(np.float32)
        kernel = np.ones((3, 3), np.uint8)
        edge = cv2.dilate(depth, kernel) - cv2.erode(depth, kernel) > 0.05 * depth + 0.02
        return t, luminance.reshape(depth.shape) < 0.12, edge

    def _render_tof(self, pose: np.ndarray, objects: list, rng: np.random.Generator):
        """(h,w) float32 ToF depth: 1 % noise, holes beyond range, on dark surfaces and at depth
        edges (`_tof_view`), 0 = missing."""
        t, dark, edge = self._tof_view(pose, objects)
        depth = np.where(np.isfinite(t), t, 0).astype(np.float32)
        depth *= 1 + rng.normal(0, 0.01, depth.shape).astype(np.float32)
        depth[dark | edge] = 0
        return depth
