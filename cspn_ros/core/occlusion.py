"""Occlusion filter: drop projected sensor points that the colour camera cannot see.

A LiDAR mounted away from the camera sees past the edges of near objects; projected into the
camera those background points land on the near object (parallax "see-through"). A point is
dropped when it lies inside a nearer surface: within `window` pixels of it, points nearer by
more than `min_gap` (relative) exist in at least `min_quadrants` of the four quadrants around
it. A plane seen at a slant is nearer on one side only (a half-plane meets at most three
quadrants, two when it is axis-aligned), and a true background point just beside a silhouette
edge has nearer points on one side only, so both keep their points; a see-through point inside
the silhouette is surrounded.

Quadrants (du = column offset, dv = row offset, the point itself excluded, every other offset in
exactly one): right-down du > 0, dv >= 0; left-down du <= 0, dv > 0; left-up du < 0, dv <= 0;
right-up du >= 0, dv < 0. Each quadrant's minimum is a separable min filter; only minima and
comparisons are computed, so the numpy and torch versions (the same code on either) give
identical masks. Depth (H,W) float32 metres, 0 = no point.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from cspn_ros.core.camera import array_module


@dataclasses.dataclass(frozen=True)
class OcclusionFilter:
    """window: half-size (pixels) of the neighbourhood searched; min_gap: a neighbour is nearer
    when its depth < (1 - min_gap) * the point's; min_quadrants: nearer quadrants (1-4) that
    make a point occluded. The defaults are the best trade-off of bench/bench_occlusion.py
    (BENCHMARKS.md)."""

    window: int = 12
    min_gap: float = 0.2
    min_quadrants: int = 3

    def __post_init__(self) -> None:
        if not 1 <= self.window <= 64:
            raise ValueError(f'occlusion window must be 1-64 pixels, got {self.window}')
        if not 0.0 < self.min_gap < 1.0:
            raise ValueError(f'occlusion min_gap must be in (0, 1), got {self.min_gap}')
        if not 1 <= self.min_quadrants <= 4:
            raise ValueError(f'occlusion min_quadrants must be 1-4, got {self.min_quadrants}')

    def occluded(self, sparse: Any) -> Any:
        """(H,W) sparse depth (numpy or torch, any device) -> (H,W) bool mask of the points
        (depth > 0) inside a nearer surface, of the same kind."""
        xp = array_module(sparse)
        r = self.window
        height, width = sparse.shape
        depth = xp.where(sparse > 0, sparse, xp.full_like(sparse, float('inf')))
        padded = _pad_inf(depth, r)

        def columns(offsets) -> Any:  # min over column shifts, every padded row kept
            result = None
            for du in offsets:
                shifted = padded[:, r + du:r + du + width]
                result = shifted if result is None else xp.minimum(result, shifted)
            return result

        def rows(image: Any, offsets) -> Any:  # min over row shifts of a (H+2r, W) image
            result = None
            for dv in offsets:
                shifted = image[r + dv:r + dv + height]
                result = shifted if result is None else xp.minimum(result, shifted)
            return result

        right = columns(range(1, r + 1))
        left = columns(range(-r, 0))
        right_and_centre = xp.minimum(right, padded[:, r:r + width])
        left_and_centre = xp.minimum(left, padded[:, r:r + width])
        quadrants = (rows(right, range(0, r + 1)), rows(left_and_centre, range(1, r + 1)),
                     rows(left, range(-r, 1)), rows(right_and_centre, range(-r, 0)))
        nearer_than = sparse * float(np.float32(1.0 - self.min_gap))  # exact in float32: both
        count = sum((quadrant < nearer_than).int() if xp is not np
                    else (quadrant < nearer_than).astype(np.int8) for quadrant in quadrants)
        return (sparse > 0) & (count >= self.min_quadrants)

    def __call__(self, sparse: Any) -> Any:
        """(H,W) sparse depth -> a copy with the occluded points set to 0 (numpy or torch)."""
        xp = array_module(sparse)
        return xp.where(self.occluded(sparse), xp.zeros_like(sparse), sparse)


def _pad_inf(image: Any, width: int) -> Any:
    """(H,W) -> (H+2w, W+2w) with +inf around (numpy or torch)."""
    if array_module(image) is np:
        return np.pad(image, width, constant_values=np.inf)
    import torch.nn.functional as functional
    return functional.pad(image, (width, width, width, width), value=float('inf'))
