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


def nearest_depth_fill(depth: torch.Tensor) -> torch.Tensor:
    """(B,1,H,W) depth (> 0 valid, 0 missing) -> (B,1,H,W) with every missing pixel filled.

    Every filled value is one of the measured depths, bit for bit (max-pooling runs on negated
    depth, missing = -inf, so the nearest surface wins); valid inputs are returned unchanged; a
    frame without any valid pixel stays all 0. The number of pyramid levels follows the traced
    size, so an ONNX export is valid for inputs no larger than the one it was traced with.
    """
    negated = torch.where(depth > 0, -depth, torch.full_like(depth, float('-inf')))
    for kernel in LOCAL_KERNELS:
        dilated = F.max_pool2d(negated, kernel, stride=1, padding=kernel // 2)
        negated = torch.where(negated > float('-inf'), negated, dilated)
    pyramid = [negated]
    levels = min(MAX_LEVELS, (max(int(size) for size in depth.shape[-2:]) - 1).bit_length())
    for _ in range(levels):
        pyramid.append(F.max_pool2d(pyramid[-1], 2, stride=2, ceil_mode=True))
    filled = pyramid.pop()
    while pyramid:
        finer = pyramid.pop()
        coarse = F.interpolate(filled, size=finer.shape[-2:], mode='nearest')
        filled = torch.where(finer > float('-inf'), finer, coarse)
    return torch.where(filled > float('-inf'), -filled, torch.zeros_like(filled))
