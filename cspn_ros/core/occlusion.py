"""Occlusion filter: drop projected sensor points that the colour camera cannot see.

A LiDAR mounted away from the camera sees past the edges of near objects; projected into the
camera those background points land on the near object (parallax "see-through"). A point is
dropped when it lies inside a nearer surface: within `window` pixels of it, points nearer by
more than `min_gap` (relative) exist in at least `min_quadrants` of the four quadrants around
it. A see-through point inside the silhouette is surrounded by the near object's points. A
plane seen at a slant is nearer on one side only (a half-plane meets at most three quadrants,
two when it is axis-aligned), so with all four required (the default) it never loses a point,
and a true background point beside a silhouette edge has nearer points on one side only.
Requiring three removes more see-through points but also correct ones that completion needs
(bench/bench_occlusion.py, BENCHMARKS.md).

Quadrants (du = column offset, dv = row offset, the point itself excluded, every other offset in
exactly one): right-down du > 0, dv >= 0; left-down du <= 0, dv > 0; left-up du < 0, dv <= 0;
right-up du >= 0, dv < 0. Each quadrant's minimum is a rectangular min filter (cv2.erode in
numpy, max pooling of the negated depth in torch); only minima, negations and comparisons are
computed, so both versions give identical masks. Depth (H,W) float32 metres, 0 = no point.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import cv2
import numpy as np

from cspn_ros.core.camera import array_module


@dataclasses.dataclass(frozen=True)
class OcclusionFilter:
    """window: half-size (pixels) of the neighbourhood searched; min_gap: a neighbour is nearer
    when its depth < (1 - min_gap) * the point's; min_quadrants: nearer quadrants (1-4) that
    make a point occluded. The defaults are chosen with bench/bench_occlusion.py (BENCHMARKS.md).
    """

    window: int = 12
    min_gap: float = 0.2
    min_quadrants: int = 4

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
        depth = xp.where(sparse > 0, sparse, xp.full_like(sparse, float('inf')))
        quadrants = _quadrant_minima(depth, self.window)
        nearer_than = sparse * float(np.float32(1.0 - self.min_gap))  # exact in float32: both
        count = sum((quadrant < nearer_than).int() if xp is not np
                    else (quadrant < nearer_than).astype(np.int8) for quadrant in quadrants)
        return (sparse > 0) & (count >= self.min_quadrants)

    def __call__(self, sparse: Any) -> Any:
        """(H,W) sparse depth -> a copy with the occluded points set to 0 (numpy or torch)."""
        xp = array_module(sparse)
        return xp.where(self.occluded(sparse), xp.zeros_like(sparse), sparse)


def _quadrant_minima(depth: Any, r: int) -> tuple[Any, ...]:
    """(H,W) depth (inf = none; numpy or torch) -> the four (H,W) quadrant minima (right-down,
    left-down, left-up, right-up): two rectangular min filters of the inf-padded image
    (cv2.erode in numpy, max pooling of the negated image in torch: both exact), each read at
    two offsets."""
    height, width = depth.shape
    if array_module(depth) is np:
        padded = np.pad(depth, r, constant_values=np.inf)

        def minimum(rows: int, cols: int) -> Any:  # [y, x] = min padded[y:y+rows, x:x+cols]
            return cv2.erode(padded, np.ones((rows, cols), np.uint8), anchor=(0, 0),
                             borderType=cv2.BORDER_REPLICATE)
    else:
        import torch.nn.functional as functional
        padded = functional.pad(depth, (r, r, r, r), value=float('inf'))

        def minimum(rows: int, cols: int) -> Any:  # separable: a row pass, then a column pass
            negated = functional.max_pool2d(-padded[None, None], (1, cols), stride=1)
            return -functional.max_pool2d(negated, (rows, 1), stride=1)[0, 0]

    tall, wide = minimum(r + 1, r), minimum(r, r + 1)
    return (tall[r:r + height, r + 1:r + 1 + width], wide[r + 1:r + 1 + height, :width],
            tall[:height, :width], wide[:height, r:r + width])
