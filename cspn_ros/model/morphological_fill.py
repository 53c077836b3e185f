"""A weight-free dense initial fill in torch: every pixel takes a nearby measured depth.

The GPU/ONNX-friendly cousin of the classical IP-Basic baseline (model/fill.py): max-pooling on
inverse depth spreads measurements so that the nearest surface wins where several meet, first
with small local dilations, then through a max-pool pyramid that reaches holes of any size (the
rows above the top LiDAR ring, say). With initial_fill='morphological' the network predicts a
residual over this fill, so where propagation cannot reach it starts from a sensible depth
instead of inventing one.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

#: Local dilation kernels (pixels), applied in turn before the pyramid.
LOCAL_KERNELS = (3, 5, 7)
#: Most pyramid levels: holes up to 2**MAX_LEVELS pixels across are filled.
MAX_LEVELS = 12
#: Holes up to 2**NEAR_LEVELS pixels across are filled from nearby measurements before the
#: topmost measurement of each column is extended to the top of the image.
NEAR_LEVELS = 4


def _pyramid_fill(values: torch.Tensor, levels: int) -> torch.Tensor:
    """(B,1,H,W) inverse depth, 0 = missing: fill holes up to 2**levels pixels across from a
    max-pool pyramid (the nearest surface of the finest cell that holds a value)."""
    pyramid = [values]
    for _ in range(levels):
        pyramid.append(F.max_pool2d(pyramid[-1], 2, stride=2, ceil_mode=True))
    filled = pyramid.pop()
    while pyramid:
        finer = pyramid.pop()
        coarse = F.interpolate(filled, size=finer.shape[-2:], mode='nearest')
        filled = torch.where(finer > 0, finer, coarse)
    return filled


def _extend_up(values: torch.Tensor) -> torch.Tensor:
    """(B,1,H,W), 0 = missing: every missing pixel above a column's topmost value takes that
    value (as IP-Basic extends the highest measurement to the top of the image: above a LiDAR's
    field of view, walls and trees go on upwards, the road ahead does not come nearer)."""
    height = values.shape[-2]
    present = values > 0
    rows = torch.arange(height, device=values.device).view(1, 1, -1, 1)
    first = torch.where(present, rows, height).amin(dim=-2, keepdim=True)      # (B,1,1,W)
    top = values.gather(-2, first.clamp(max=height - 1))
    return torch.where(~present & (rows < first), top, values)


def nearest_depth_fill(depth: torch.Tensor) -> torch.Tensor:
    """(B,1,H,W) depth (> 0 valid, 0 missing) -> (B,1,H,W) with every missing pixel filled.

    Max-pooling runs on inverse depth (missing = 0), so the nearest surface wins; a filled value
    is a measured depth up to float rounding (1/(1/d)), valid inputs are returned bit for bit and
    a frame without any valid pixel stays all 0. The number of pyramid levels follows the traced
    size, so an ONNX export is valid for inputs no larger than the one it was traced with.
    """
    valid = depth > 0
    ones = torch.ones_like(depth)
    inverse = torch.where(valid, 1.0 / torch.where(valid, depth, ones), torch.zeros_like(depth))
    for kernel in LOCAL_KERNELS:
        dilated = F.max_pool2d(inverse, kernel, stride=1, padding=kernel // 2)
        inverse = torch.where(inverse > 0, inverse, dilated)
    levels = min(MAX_LEVELS, (max(int(size) for size in depth.shape[-2:]) - 1).bit_length())
    inverse = _extend_up(_pyramid_fill(inverse, min(levels, NEAR_LEVELS)))
    filled = _pyramid_fill(inverse, levels)
    dense = torch.where(filled > 0, 1.0 / torch.where(filled > 0, filled, ones), filled)
    return torch.where(valid, depth, dense)


def interpolation_fill(depth: torch.Tensor) -> torch.Tensor:
    """(B,1,H,W) depth (> 0 valid, 0 missing) -> (B,1,H,W) with every missing pixel filled by
    a local average of the measured log depths (normalised convolution, push-pull).

    Small windows first (3, 5, 7 pixels), then a mean pyramid that reaches holes of any size;
    each missing pixel takes the geometric mean of the measurements of the finest window or
    pyramid cell that holds one. Valid inputs are returned bit for bit; a frame without any
    valid pixel stays all 0. Where surfaces at different depths meet, the fill lies between
    them (half the error of picking the wrong one).
    """
    valid = depth > 0
    weight = valid.to(depth.dtype)
    value = torch.where(valid, torch.log(torch.where(valid, depth, torch.ones_like(depth))), 0.0)
    filled, have = value, weight
    for kernel in LOCAL_KERNELS:
        total = F.avg_pool2d(value * weight, kernel, 1, kernel // 2, count_include_pad=False)
        count = F.avg_pool2d(weight, kernel, 1, kernel // 2, count_include_pad=False)
        mean = total / count.clamp_min(1e-12)
        filled = torch.where(have > 0, filled, mean)
        have = torch.where(have > 0, have, (count > 0).to(depth.dtype))
    sums, counts = [filled * have], [have]
    levels = min(MAX_LEVELS, (max(int(size) for size in depth.shape[-2:]) - 1).bit_length())
    for _ in range(levels):
        sums.append(F.avg_pool2d(sums[-1], 2, 2, ceil_mode=True))
        counts.append(F.avg_pool2d(counts[-1], 2, 2, ceil_mode=True))
    coarse = sums.pop() / counts.pop().clamp_min(1e-12)
    while sums:
        total, count = sums.pop(), counts.pop()
        up = F.interpolate(coarse, size=total.shape[-2:], mode='nearest')
        coarse = torch.where(count > 0, total / count.clamp_min(1e-12), up)
    dense = torch.where(have > 0, filled, coarse)
    dense = torch.where(valid.flatten(1).any(1).view(-1, 1, 1, 1), torch.exp(dense), 0.0)
    return torch.where(valid, depth, dense)
