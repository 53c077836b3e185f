"""Bound a completed depth map by the measurements around each pixel (ModelConfig.input_bound).

A network blends the two sides of a depth edge and drifts inside large gaps; a nearest fill
picks a side. The bound keeps the network's depth where it lies between measurements that
enclose the pixel, and clamps it to their range otherwise:

1. **Enclosing pair on a row or a column.** The nearest input above and below the pixel (and
   left and right) enclose it; when such a pair is close, gap <= PAIR_GAP_FACTOR x 2 x the
   distance to the nearest input + 2 pixels, the depth is clamped to [min, max] of the pair,
   intersected over the row and the column. Scan lines, pixel rows and the rims of holes
   enclose every pixel of a gap this way, so a vertical edge crossing rows keeps its side.
2. **Line neighbour as near as the nearest input** (no close pair): clamped to the range of the
   row / column neighbours at most 1 pixel farther than the nearest input.
3. **Window** (neither): clamped to [min, max] of the inputs in the smallest window of
   WINDOW_RADII that holds an input and is at least `spacings` x the frame's mean input
   spacing sqrt(H W / inputs) wide (its radius).

Distances are Chebyshev and quantised to WINDOW_RADII (the nearest input distance is the
radius of the smallest window holding one). Shapes (B,1,H,W), metres, 0 = no input. The same
torch code runs on the GPU (max pooling, cummax; no host synchronisation but the frames' input
counts and one per window level) and on the CPU (OpenCV min / max filters, ~50x faster there
than torch's pooling).
"""
from __future__ import annotations

import math
from typing import Optional

import cv2
import numpy as np
import torch
import torch.nn.functional as F

#: Window radii (pixels) the bound chooses from, about sqrt(2) apart.
WINDOW_RADII = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)
#: A row or column pair of inputs enclosing a pixel bounds it when their gap (pixels) is at
#: most PAIR_GAP_FACTOR x 2 x the pixel's nearest input distance + 2.
PAIR_GAP_FACTOR = 5.0
#: Distances to the nearest input are computed up to this many pixels (beyond the largest
#: window).
DISTANCE_CAP_PX = float(WINDOW_RADII[-1] + 1)
#: Row / column neighbours at most this many pixels farther than the nearest input bound a
#: pixel that no close pair encloses.
LINE_SLACK_PX = 1.0


def bound_by_inputs(depth: torch.Tensor, sparse: torch.Tensor, spacings: float) -> torch.Tensor:
    """(B,1,H,W) depth bounded by the inputs of sparse (B,1,H,W) around each pixel (module
    docstring); `spacings` sets the smallest window in mean input spacings of each frame."""
    height, width = sparse.shape[-2:]
    counts = (sparse > 0).flatten(1).sum(1).tolist()
    return torch.cat([_bound_frame(depth[b:b + 1], sparse[b:b + 1].to(depth.dtype),
                                   smallest_radius(count, height, width, spacings))
                      for b, count in enumerate(counts)])


def smallest_radius(inputs: int, height: int, width: int, spacings: float) -> int:
    """Smallest window radius (pixels, >= 1) of `spacings` mean input spacings of a height x
    width frame with `inputs` valid input pixels; 0 without inputs (no bound)."""
    if inputs <= 0:
        return 0
    return max(1, round(spacings * math.sqrt(height * width / inputs)))


def _bound_frame(depth: torch.Tensor, sparse: torch.Tensor, smallest: int) -> torch.Tensor:
    """One frame (1,1,H,W) bounded with windows of radius >= smallest (0: unchanged)."""
    if smallest <= 0:
        return depth
    valid = sparse > 0
    nearest = nearest_input_distance(sparse)
    window_bounded = _window_bound(depth, sparse,
                                   nearest.ceil().clamp(smallest, WINDOW_RADII[-1]))
    pair_low, pair_high = depth.new_zeros(depth.shape), torch.full_like(depth, math.inf)
    paired = torch.zeros_like(valid)
    line_low, line_high = torch.full_like(depth, math.inf), depth.new_zeros(depth.shape)
    for dim in (2, 3):
        (gap_a, value_a), (gap_b, value_b) = (line_neighbour(sparse, dim, reverse)
                                              for reverse in (False, True))
        pair = ((value_a > 0) & (value_b > 0)
                & (gap_a + gap_b <= 2 * PAIR_GAP_FACTOR * nearest + 2))
        pair_low = torch.where(pair, torch.maximum(pair_low, torch.minimum(value_a, value_b)),
                               pair_low)
        pair_high = torch.where(pair, torch.minimum(pair_high, torch.maximum(value_a, value_b)),
                                pair_high)
        paired |= pair
        for gap, value in ((gap_a, value_a), (gap_b, value_b)):
            near = (value > 0) & (gap <= nearest + LINE_SLACK_PX)
            line_low = torch.where(near, torch.minimum(line_low, value), line_low)
            line_high = torch.where(near, torch.maximum(line_high, value), line_high)
    pair_high = torch.maximum(pair_high, pair_low)  # disjoint row and column pairs: the higher
    line_bounded = torch.where(line_high > 0, depth.clamp(line_low, line_high), window_bounded)
    bounded = torch.where(paired, depth.clamp(pair_low, pair_high), line_bounded)
    return torch.where(valid, window_bounded, bounded)


def _window_bound(depth: torch.Tensor, sparse: torch.Tensor, radius: torch.Tensor
                  ) -> torch.Tensor:
    """depth (1,1,H,W) clamped to [min, max] of the inputs within the smallest window of
    WINDOW_RADII with at least `radius` (1,1,H,W, at most WINDOW_RADII[-1]) pixels where it
    holds an input; unchanged elsewhere."""
    bounded, unset = depth, torch.ones_like(sparse, dtype=torch.bool)
    low, high, previous = sparse, sparse, 0
    for size in WINDOW_RADII:
        low, high = input_range(sparse if previous == 0 else None, size - previous, low, high)
        previous = size
        take = unset & (high > 0) & (radius <= size)
        bounded = torch.where(take, torch.minimum(torch.maximum(depth, low), high), bounded)
        unset &= ~take
        if not bool((unset & (radius > size)).any()):
            break
    return bounded


def nearest_input_distance(sparse: torch.Tensor) -> torch.Tensor:
    """(1,1,H,W) Euclidean distance (pixels) from each pixel to the nearest input of sparse
    (1,1,H,W) (> 0 valid), at most DISTANCE_CAP_PX (also where there is none). On the CPU
    OpenCV's exact transform; elsewhere the two-pass transform (the column distance, then the
    nearest column within the cap along each row: `row_distance`)."""
    if sparse.device.type == 'cpu':
        missing = (sparse[0, 0] <= 0).to(torch.uint8).numpy()
        distance = cv2.distanceTransform(missing, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        if not (missing == 0).any():
            distance[:] = DISTANCE_CAP_PX
        return torch.from_numpy(np.minimum(distance, DISTANCE_CAP_PX))[None, None].to(
            sparse.dtype)
    column = torch.minimum(*(line_neighbour(sparse, 2, reverse)[0] for reverse in (False, True)))
    return row_distance(column.clamp_max(DISTANCE_CAP_PX))


def row_distance(column: torch.Tensor) -> torch.Tensor:
    """min over columns x' within DISTANCE_CAP_PX of sqrt((x - x')^2 + column(x')^2), capped:
    the second pass of the Euclidean distance transform on (B,1,H,W) column distances (pixels).
    On CUDA the Triton kernel when it matches this function's torch loop (the reference) on a
    random input of the device at first use (input_bound_kernels.verified), else the loop."""
    if column.is_cuda:
        from cspn_ros.model import input_bound_kernels
        if input_bound_kernels.verified(column.device, row_distance_reference, DISTANCE_CAP_PX):
            return input_bound_kernels.row_distance(column, DISTANCE_CAP_PX)
    return row_distance_reference(column)


def row_distance_reference(column: torch.Tensor) -> torch.Tensor:
    """row_distance as a torch loop over the column shifts within the cap."""
    cap = int(DISTANCE_CAP_PX)
    squared = column.float() ** 2
    padded = F.pad(squared, (cap, cap), value=math.inf)
    width = column.shape[-1]
    best = squared
    for shift in range(-cap, cap + 1):
        best = torch.minimum(best, padded[..., cap + shift:cap + shift + width] + shift * shift)
    return best.sqrt().clamp_max(DISTANCE_CAP_PX).to(column.dtype)


def line_neighbour(sparse: torch.Tensor, dim: int, reverse: bool
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(distance in pixels, depth) of the nearest input at or before each pixel along `dim`
    (2: up the column, 3: left along the row; reverse: down / right); where none: (inf, 0)."""
    values = sparse.flip(dim) if reverse else sparse
    length = values.shape[dim]
    shape = [1, 1, 1, 1]
    shape[dim] = length
    position = torch.arange(length, device=sparse.device).view(shape).expand_as(values)
    last = torch.where(values > 0, position, -1).cummax(dim).values
    value = torch.where(last >= 0, values.gather(dim, last.clamp_min(0)), 0.0)
    gap = torch.where(last >= 0, (position - last).to(sparse.dtype), math.inf)
    if reverse:
        value, gap = value.flip(dim), gap.flip(dim)
    return gap, value


def input_range(sparse: Optional[torch.Tensor], radius: int, low: torch.Tensor,
                high: torch.Tensor, opencv: Optional[bool] = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Grow (low, high) (B,1,H,W), the lowest / highest valid depth within some window of each
    pixel (inf / 0 where none), by `radius` pixels (Chebyshev): windows compose, so growing
    the range of radius r by s gives the range of radius r + s. With `sparse` (> 0 valid) the
    range of radius `radius` of its inputs. Exact min / max filters: OpenCV's erode / dilate
    (opencv; default on the CPU), else separable max pooling (capturable in a CUDA graph)."""
    if sparse is not None:
        low = torch.where(sparse > 0, sparse, math.inf)
        high = sparse
    size = 2 * radius + 1
    if low.device.type == 'cpu' if opencv is None else opencv:
        kernel = np.ones((size, size), np.uint8)
        low_np = np.stack([cv2.erode(v[0], kernel)[None] for v in low.float().numpy()])
        low_np[low_np >= np.finfo(np.float32).max] = np.inf  # erode's border: the float max
        low_np[low_np >= np.finfo(np.float32).max] = np.inf  # erode's border: the float max
        high_np = np.stack([cv2.dilate(v[0], kernel)[None] for v in high.float().numpy()])
        return (torch.from_numpy(low_np).to(low.dtype), torch.from_numpy(high_np).to(high.dtype))

    def window_max(values: torch.Tensor) -> torch.Tensor:
        rows = F.max_pool2d(values, (1, size), stride=1, padding=(0, radius))
        return F.max_pool2d(rows, (size, 1), stride=1, padding=(radius, 0))

    both = window_max(torch.cat([high, -low], dim=1))
    return -both[:, 1:], both[:, :1]
