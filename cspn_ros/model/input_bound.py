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
3. **Window** (neither, and the inputs themselves): clamped to [min, max] of the inputs in the
   smallest window of WINDOW_RADII whose radius is at least the distance to the nearest input
   and `spacings` x the frame's mean input spacing sqrt(H W / inputs).

Only pixels with an input at or below them within ENCLOSURE_SPACINGS mean input spacings of
their column, or inputs at or left and at or right within as many of their row, are bounded.
Below the lowest measurements (the ground under a LiDAR's lowest ring) the ground comes nearer
than any measurement, and a clamp would copy the lowest ring down each column: there the
network's depth is kept. Above the top ring the bound stays: what stands there (walls, poles)
mostly continues the depth of the ring below it (on the held-out synthetic street bags the
clamp is 2-5% better there, and 25-37% worse below the lowest ring).

The nearest input distance is Euclidean (pixels, exact up to DISTANCE_CAP_PX). Shapes
(B,1,H,W), metres, 0 = no input. The same torch code runs on the GPU (max pooling, cummax, a
Triton kernel for the distance transform; no host synchronisation, so the completer captures
it in its CUDA graph) and on the CPU (OpenCV's min / max filters and distance transform).
Selections are written as products with 0 / 1 masks and NO_BOUND_M instead of torch.where,
which is ~10x slower than arithmetic on the CPU.
"""
from __future__ import annotations

import functools
import math
from typing import Optional

import cv2
import numpy as np
import torch
import torch.nn.functional as F

#: Window radii (pixels) the bound chooses from, about sqrt(2) apart (windows up to 32 px only
#: cost Argoverse 2-4% RMSE on the real-data suite); the CPU path grows only those a frame needs.
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
#: Stands for "no bound" (metres): finite, so that 0 / 1 masks multiply it without NaN.
NO_BOUND_M = 1e30
#: The gap (pixels) of a missing row / column neighbour: beyond every limit the rules compare.
NO_NEIGHBOUR_PX = float(1 << 30)
#: Half-width of the column (row) band, in the frame's mean input spacings, in which an input
#: below (inputs left and right of) a pixel let the bound act there.
ENCLOSURE_SPACINGS = 1.0


def bound_by_inputs(depth: torch.Tensor, sparse: torch.Tensor, spacings: float,
                    opencv: Optional[bool] = None) -> torch.Tensor:
    """(B,1,H,W) depth bounded by the inputs of sparse (B,1,H,W) around each pixel (module
    docstring), computed in float32 and returned in depth's dtype; `spacings` sets the
    smallest window in mean input spacings of each frame. opencv (default on the CPU): the
    CPU's filters and distance transform, frame by frame, windows only where and as large as
    needed; else the device path: the whole batch at once without host synchronisation (it can
    be captured in a CUDA graph), every window size at every pixel."""
    height, width = sparse.shape[-2:]
    depth32, sparse32 = depth.float(), sparse.float()  # NO_BOUND_M overflows float16
    opencv = depth.device.type == 'cpu' if opencv is None else opencv
    if not opencv:
        counts = (sparse32 > 0).sum((1, 2, 3), keepdim=True).double().clamp_min(1)
        spacing = (height * width / counts).sqrt()
        smallest, band = ((share * spacing).round().clamp_min(1).float()
                          for share in (spacings, ENCLOSURE_SPACINGS))
        return _bound(depth32, sparse32, smallest, band, opencv).to(depth.dtype)
    counts = (sparse32 > 0).flatten(1).sum(1).tolist()
    frames = []
    for b, count in enumerate(counts):
        smallest = smallest_radius(count, height, width, spacings)
        band = smallest_radius(count, height, width, ENCLOSURE_SPACINGS)
        frame = depth32[b:b + 1]
        frames.append(_bound(frame, sparse32[b:b + 1], smallest, band, opencv) if smallest
                      else frame)
    return torch.cat(frames).to(depth.dtype)


def smallest_radius(inputs: int, height: int, width: int, spacings: float) -> int:
    """Smallest window radius (pixels, >= 1) of `spacings` mean input spacings of a height x
    width frame with `inputs` valid input pixels; 0 without inputs (no bound)."""
    if inputs <= 0:
        return 0
    return max(1, round(spacings * math.sqrt(height * width / inputs)))


def _bound(depth: torch.Tensor, sparse: torch.Tensor, smallest: int | torch.Tensor,
           band: int | torch.Tensor, opencv: bool) -> torch.Tensor:
    """Frames (B,1,H,W) bounded with windows of radius >= smallest at the pixels enclosed
    within `band` (pixels; ints or (B,1,1,1) tensors). A frame without inputs comes back
    unchanged: no rule finds an input."""
    # (4,B,1,H,W): the nearest input up, down, left and right of each pixel
    gaps, values = (torch.cat(pieces) for pieces in zip(*(line_neighbours(sparse, dim)
                                                          for dim in (2, 3))))
    nearest = nearest_input_distance(sparse, opencv, column_gaps=gaps[:2])
    # rule 1: per axis (up, down) and (left, right); a missing neighbour's gap never passes
    pair = (gaps[0::2] + gaps[1::2] <= 2 * PAIR_GAP_FACTOR * nearest + 2).to(depth.dtype)
    pair_low = (pair * torch.minimum(values[0::2], values[1::2])).amax(0)
    pair_high = (pair * torch.maximum(values[0::2], values[1::2])
                 + (1 - pair) * NO_BOUND_M).amin(0)
    pair_high = torch.maximum(pair_high, pair_low)  # disjoint row and column pairs: the higher
    # rule 2: neighbours at most LINE_SLACK_PX farther than the nearest input
    near = (gaps <= nearest + LINE_SLACK_PX).to(depth.dtype)
    line_low = (near * values + (1 - near) * NO_BOUND_M).amin(0)
    line_high = (near * values).amax(0)
    missing = (sparse <= 0).to(depth.dtype)  # inputs take their window's range
    inside = enclosed(gaps, band, opencv).to(depth.dtype) * missing
    free = missing - inside  # beyond the inputs' extent: no bound
    by_pair = pair.amax(0) * inside
    by_line = near.amax(0) * inside * (1 - by_pair)
    by_window = 1 - by_pair - by_line - free
    # rule 3
    radius = torch.maximum(nearest.ceil(), torch.as_tensor(smallest, dtype=nearest.dtype,
                                                           device=nearest.device))
    window_low, window_high = _window_range(sparse, radius.clamp_max(WINDOW_RADII[-1]),
                                            by_window > 0, opencv)
    low = by_pair * pair_low + by_line * line_low + by_window * window_low
    high = (by_pair * pair_high + by_line * line_high + by_window * window_high
            + free * NO_BOUND_M)
    return torch.minimum(torch.maximum(depth, low), high)


def enclosed(gaps: torch.Tensor, band: int | torch.Tensor, opencv: bool) -> torch.Tensor:
    """bool (B,1,H,W): pixels with an input at or below within `band` columns, or at or left
    and at or right within `band` rows (module docstring), from line_neighbours' gaps
    (4,B,1,H,W: up, down, left, right). The bands widen the 'an input in my line' maps of
    down, left and right across lines: OpenCV's dilation (opencv), else the distance to the
    nearest line that has one, by `line_neighbours` across the lines."""
    seen = gaps[1:] < NO_NEIGHBOUR_PX  # down, left, right
    if opencv:
        widened = []
        for direction, frames in enumerate(seen.to(torch.uint8).numpy()):
            size = (1, 2 * band + 1) if direction == 0 else (2 * band + 1, 1)  # (rows, columns)
            kernel = np.ones(size, np.uint8)
            widened.append(np.stack([cv2.dilate(frame[0], kernel)[None] for frame in frames]))
        seen = torch.from_numpy(np.stack(widened)) > 0
    else:
        maps = seen.to(torch.float32)
        across = [line_neighbours(maps[lines].flatten(0, 1), dim)[0].amin(0).view_as(maps[lines])
                  for lines, dim in ((slice(0, 1), 3), (slice(1, 3), 2))]
        seen = torch.cat(across) <= band
    return seen[0] | (seen[1] & seen[2])


def _window_range(sparse: torch.Tensor, radius: torch.Tensor, wanted: torch.Tensor,
                  opencv: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(low, high) (B,1,H,W) at the `wanted` pixels (bool (B,1,H,W)): [min, max] of the inputs
    within the smallest window of WINDOW_RADII with at least `radius` (B,1,H,W, at most
    WINDOW_RADII[-1]) pixels; (0, NO_BOUND_M) where it holds none. With opencv only the wanted
    pixels are picked and windows grown only up to the largest one needs ((0, NO_BOUND_M) at
    the others); else every window size is grown and picked at every pixel (no host
    synchronisation)."""
    radii = _window_radii(radius.device, radius.dtype)
    if opencv:
        pixels = wanted.flatten().nonzero().squeeze(1)
        level = torch.searchsorted(radii, radius.flatten()[pixels].contiguous())
        needed = set(torch.unique(level).tolist())
    else:
        pixels, needed = None, set(range(len(WINDOW_RADII)))
        level = torch.searchsorted(radii, radius.flatten().contiguous())

    if pixels is not None:  # the CPU's wanted pixels take the ranges of their level
        taken_low, taken_high = (torch.zeros_like(level, dtype=sparse.dtype) for _ in range(2))
    low, high, previous, ranges = sparse, sparse, 0, []
    for index, size in enumerate(WINDOW_RADII[:max(needed, default=-1) + 1]):
        low, high = input_range(sparse if previous == 0 else None, size - previous, low, high,
                                opencv, spans=previous)
        previous = size
        if pixels is None:
            ranges.append(torch.cat([low, high], 1))
        elif index in needed:
            here = (level == index).to(sparse.dtype)
            taken_low = taken_low + here * low.flatten()[pixels]
            taken_high = taken_high + here * high.flatten()[pixels]
    if pixels is None:  # (levels,B,2,H,W) -> the level of each pixel, one gather
        choice = level.view(1, -1, 1, *sparse.shape[2:]).expand(1, -1, 2, -1, -1)
        picked = torch.stack(ranges).gather(0, choice)[0]
        taken_low, taken_high = picked[:, 0].flatten(), picked[:, 1].flatten()
    found = (taken_high > 0).to(sparse.dtype)
    taken_low, taken_high = found * taken_low, taken_high + (1 - found) * NO_BOUND_M
    if pixels is None:
        return taken_low.view_as(sparse), taken_high.view_as(sparse)
    low_out = torch.zeros_like(sparse).flatten()
    high_out = torch.full_like(low_out, NO_BOUND_M)
    low_out[pixels], high_out[pixels] = taken_low, taken_high
    return low_out.view_as(sparse), high_out.view_as(sparse)


@functools.cache
def _window_radii(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """WINDOW_RADII as a tensor on `device`, made once (the first call, not a CUDA graph's
    capture, copies it there)."""
    return torch.tensor(WINDOW_RADII, dtype=dtype, device=device)


def nearest_input_distance(sparse: torch.Tensor, opencv: Optional[bool] = None,
                           column_gaps: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(B,1,H,W) Euclidean distance (pixels) from each pixel to the nearest input of sparse
    (B,1,H,W) (> 0 valid), at most DISTANCE_CAP_PX (also where there is none). With opencv
    (default on the CPU) OpenCV's exact transform; else the two-pass transform (the column
    distance, then the nearest column within the cap along each row: `row_distance`), whose
    first pass is `line_neighbours(sparse, 2)`'s gaps (column_gaps, when already computed)."""
    if sparse.device.type == 'cpu' if opencv is None else opencv:
        distances = []
        for frame in sparse[:, 0]:
            missing = (frame <= 0).to(torch.uint8).numpy()
            distance = cv2.distanceTransform(missing, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
            if not (missing == 0).any():
                distance[:] = DISTANCE_CAP_PX
            distances.append(np.minimum(distance, DISTANCE_CAP_PX))
        return torch.from_numpy(np.stack(distances))[:, None].to(sparse.dtype)
    if column_gaps is None:
        column_gaps = line_neighbours(sparse, 2)[0]
    return row_distance(column_gaps.amin(0).clamp_max(DISTANCE_CAP_PX))


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


def line_neighbours(sparse: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(gaps, depths), each (2,B,1,H,W): distance in pixels and depth of the nearest input at
    or before each pixel of (B,1,H,W) frames along `dim` (2: up, then down the column; 3: left,
    then right along the row); where none: (>= NO_NEIGHBOUR_PX, 0). Scans run along the
    contiguous dimension (columns are transposed first: ~4x faster on the CPU)."""
    values = sparse if dim == 3 else sparse.transpose(2, 3)
    values = torch.stack([values, values.flip(3)]).contiguous()
    position = torch.arange(values.shape[-1], dtype=torch.int32, device=sparse.device)
    valid = (values > 0).to(torch.int32)
    # index of the last input so far; -NO_NEIGHBOUR_PX before the first
    last = (position * valid + (valid - 1) * int(NO_NEIGHBOUR_PX)).cummax(-1).values
    value = F.pad(values, (1, 0)).gather(-1, (last + 1).clamp_min(0).long())  # 0 where none
    gap = (position - last).to(sparse.dtype)
    gap, value = (torch.stack([x[0], x[1].flip(-1)]) for x in (gap, value))
    return (gap, value) if dim == 3 else (gap.transpose(-2, -1), value.transpose(-2, -1))


def input_range(sparse: Optional[torch.Tensor], radius: int, low: torch.Tensor,
                high: torch.Tensor, opencv: Optional[bool] = None, spans: int = 0
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Grow (low, high) (B,1,H,W), the lowest / highest valid depth within the window of radius
    `spans` of each pixel (NO_BOUND_M / 0 where none), by `radius` pixels (Chebyshev): windows
    compose, so growing the range of radius r by s gives the range of radius r + s. With
    `sparse` (> 0 valid) the range of radius `radius` of its inputs. Exact min / max filters:
    OpenCV's erode / dilate (opencv; default on the CPU), else separable max pooling; a growth
    by at most 2 spans + 1 pixels is one 3-tap max per axis (x - s, x, x + s: windows of radius
    spans around them leave no gap), whatever its size."""
    if sparse is not None:
        high = sparse
        low = sparse + (sparse <= 0).to(sparse.dtype) * NO_BOUND_M
        spans = 0
    size = 2 * radius + 1
    if low.device.type == 'cpu' if opencv is None else opencv:
        kernel = np.ones((size, size), np.uint8)
        # OpenCV's borders never win: the float maximum for erode, its negative for dilate
        grown_low, grown_high = (np.empty(tuple(x.shape), np.float32) for x in (low, high))
        for source, grown, grow in ((low, grown_low, cv2.erode), (high, grown_high, cv2.dilate)):
            for frame, out in zip(source.float().numpy(), grown):
                grow(frame[0], kernel, dst=out[0])
        return (torch.from_numpy(grown_low).to(low.dtype),
                torch.from_numpy(grown_high).to(high.dtype))
    taps, dilation = (3, radius) if radius <= 2 * spans + 1 else (size, 1)

    def window_max(values: torch.Tensor) -> torch.Tensor:
        # borders replicated: a tap outside the frame stands for the edge pixel's window,
        # which lies inside the grown window and holds all of the frame the tap would
        rows = F.max_pool2d(F.pad(values, (radius, radius, 0, 0), mode='replicate'),
                            (1, taps), stride=1, dilation=(1, dilation))
        return F.max_pool2d(F.pad(rows, (0, 0, radius, radius), mode='replicate'),
                            (taps, 1), stride=1, dilation=(dilation, 1))

    both = window_max(torch.cat([high, -low], dim=1))
    return -both[:, 1:], both[:, :1]
