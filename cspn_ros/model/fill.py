"""Classical depth completion without weights, in the style of IP-Basic (Ku et al., CRV 2018).

The baseline everywhere (demo, evaluate, benchmarks). Works on LiDAR-sparse maps and on dense ToF
maps with holes: depths are inverted so that morphological dilation (a max filter) favours near
points, holes are closed and filled with growing dilations, what is still empty takes the nearest
measured value, the result is smoothed (median, bilateral) and re-inverted; valid inputs are
finally put back unchanged.
"""
from __future__ import annotations

import cv2
import numpy as np

_DIAMOND_KERNEL_5 = np.array([[0, 0, 1, 0, 0],
                              [0, 1, 1, 1, 0],
                              [1, 1, 1, 1, 1],
                              [0, 1, 1, 1, 0],
                              [0, 0, 1, 0, 0]], dtype=np.uint8)
_FULL_KERNEL_5 = np.ones((5, 5), np.uint8)
_FULL_KERNEL_7 = np.ones((7, 7), np.uint8)
_FULL_KERNEL_31 = np.ones((31, 31), np.uint8)


def classical_fill(sparse: np.ndarray, max_depth: float = 120.0) -> np.ndarray:
    """(H,W) float32 metres, 0 = missing -> (H,W) float32 dense metres.

    Valid inputs (finite, > 0) are returned bit for bit; depths beyond max_depth are treated as
    max_depth while filling. An input without any valid pixel gives all zeros.
    """
    sparse = np.asarray(sparse)
    if sparse.ndim != 2:
        raise ValueError(f'classical_fill expects an (H, W) depth map, got shape {sparse.shape}')
    sparse = sparse.astype(np.float32, copy=False)
    valid = np.isfinite(sparse) & (sparse > 0)
    if not valid.any():
        return np.zeros(sparse.shape, np.float32)

    # Inverted depth: near = large, missing = 0, every valid value >= 1.
    top = np.float32(max_depth + 1.0)
    inverted = np.where(valid, top - np.minimum(sparse, max_depth), 0).astype(np.float32)
    inverted = cv2.dilate(inverted, _DIAMOND_KERNEL_5)
    inverted = cv2.morphologyEx(inverted, cv2.MORPH_CLOSE, _FULL_KERNEL_5)
    for kernel in (_FULL_KERNEL_7, _FULL_KERNEL_31):
        empty = inverted < 0.5
        inverted[empty] = cv2.dilate(inverted, kernel)[empty]
    empty = inverted < 0.5
    if empty.any():
        inverted = _nearest_fill(inverted, empty)
    inverted = cv2.medianBlur(inverted, 5)
    inverted = cv2.bilateralFilter(inverted, 5, 1.5, 2.0)

    dense = np.clip(top - inverted, 0, max_depth).astype(np.float32)
    dense[valid] = sparse[valid]
    return dense


def _nearest_fill(image: np.ndarray, empty: np.ndarray) -> np.ndarray:
    """Give every `empty` pixel the value of its nearest (L2) non-empty pixel."""
    _, labels = cv2.distanceTransformWithLabels(empty.astype(np.uint8), cv2.DIST_L2, 5,
                                                labelType=cv2.DIST_LABEL_PIXEL)
    # With DIST_LABEL_PIXEL each non-empty pixel gets its own label, numbered in row-major order.
    sources = image[~empty]
    return sources[labels - 1].astype(np.float32)
