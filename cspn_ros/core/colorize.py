"""Depth maps as colour pictures for `depth/colorized` and for saved figures."""
from __future__ import annotations

import cv2
import numpy as np


def colorize_depth(depth: np.ndarray, min_depth: float, max_depth: float) -> np.ndarray:
    """(H,W) metres -> (H,W,3) uint8 BGR with the turbo colormap.

    Depths are mapped linearly from min_depth (blue) to max_depth (red) and clipped to that range;
    missing pixels (0, NaN or inf) are drawn black.
    """
    if not max_depth > min_depth:
        raise ValueError(f'max_depth ({max_depth}) must exceed min_depth ({min_depth})')
    depth = np.asarray(depth, dtype=np.float32)
    valid = np.isfinite(depth) & (depth > 0)
    scaled = (np.where(valid, depth, min_depth) - min_depth) / (max_depth - min_depth)
    levels = np.clip(scaled * 255.0 + 0.5, 0, 255).astype(np.uint8)
    bgr = cv2.applyColorMap(levels, cv2.COLORMAP_TURBO)
    bgr[~valid] = 0
    return bgr
