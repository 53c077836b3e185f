"""Textured analytic shapes of the synthetic scene (`data.synthetic`) and their ray intersection.

Materials are solid textures (checker / stripes / noise / plain albedo in [0, 1]) evaluated at
object-frame points; shapes are infinite axis-aligned planes, spheres and yaw-oriented boxes in
the world frame (metres, z up), each intersecting a grid of rays with vectorised numpy.

Shape interface:
- intersect(origin (3,) float64 world, d (3,h,w) float32 world directions, inv (3,h,w) = 1 / d,
  t (h,w) nearest hit so far, ids (h,w), k): writes t and k where this shape is hit nearer.
- surface(rel (3,N) float32 hit points minus the ray origin, origin (3,) float64 world) -> (unit
  normals facing the origin (3,N) or (3,1), object-frame points for the texture (3,N)).
- radius / center: bounding sphere (radius inf for planes); corners: (8,3) world box corners
  (None for other shapes), bit 0/1/2 of the corner index = +x/+y/+z side.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Optional, Sequence

import numpy as np

_EPS = 1e-4


# --- materials ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Material:
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


def random_material(rng: np.random.Generator, patterns: Sequence[str],
                     dark: bool = True) -> Material:
    """A random textured material; with dark=True some are dark enough to blind a ToF camera."""
    low = 0.05 if dark and rng.random() < 0.2 else 0.3
    return Material(color=tuple(rng.uniform(low, 0.95, 3)), pattern=str(rng.choice(patterns)),
                     scale=float(rng.uniform(0.2, 1.0)), contrast=float(rng.uniform(0.3, 0.8)),
                     axis=int(rng.integers(0, 3)), phase=tuple(rng.uniform(0, 1, 3)))


# --- shapes ---------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Plane:
    """The plane world[axis] == value; unbounded, seen from both sides."""

    axis: int
    value: float
    material: Material
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
class Sphere:
    """Sphere of `radius` metres around `center` (3,) world."""

    center: np.ndarray
    radius: float
    material: Material
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
class Box:
    """Box of half sizes `half` (3,) centred at `center`, rotated by `yaw` about world z."""

    center: np.ndarray
    half: np.ndarray
    yaw: float
    material: Material

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


