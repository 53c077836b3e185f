"""IP-Basic (Ku, Harakeh, Waslander: "In Defense of Classical Image Processing: Fast Depth
Completion on the CPU", CRV 2018), re-implemented from the paper and its reference code for the
real-data suite. Both published variants:

- `fill_fast`: invert, dilate with a 5x5 diamond, close with 5x5, fill holes with a 7x7 dilation,
  (extrapolate: extend each column's top value to the image top, then a 31x31 dilation), median
  5x5, Gaussian (blurring only filled pixels) or bilateral blur, invert back. The paper's KITTI
  submission (and the reference demo's default) is extrapolate=True, blur='gaussian'.
- `fill_multiscale`: dilations by depth bin (near <= 15 m: 7x7 cross, 15-30 m: 5x5 cross,
  far: 3x3 cross, near wins), 5x5 close, median 5x5 on valid pixels, a 9x9 hole fill below each
  column's top point, six masked 5x5 dilations, median and bilateral blur, invert back.

Depths are inverted about `max_depth` (100 m in the paper) so that a max filter prefers near
points; 0.1 marks "empty" in the inverted image. Pixels left empty (above the top point without
extrapolation, or beyond every dilation) stay 0, as in the reference.
"""
from __future__ import annotations

import cv2
import numpy as np

EMPTY = 0.1
KERNEL_FULL_5 = np.ones((5, 5), np.uint8)
KERNEL_FULL_7 = np.ones((7, 7), np.uint8)
KERNEL_FULL_9 = np.ones((9, 9), np.uint8)
KERNEL_FULL_31 = np.ones((31, 31), np.uint8)
KERNEL_DIAMOND_5 = cv2.getStructuringElement(cv2.MORPH_CROSS, (5, 5)) | np.pad(
    np.ones((3, 3), np.uint8), 1)


def _cross(size: int) -> np.ndarray:
    """size x size uint8 kernel with a one-pixel plus sign."""
    return cv2.getStructuringElement(cv2.MORPH_CROSS, (size, size))


def _inverted(depth: np.ndarray, max_depth: float) -> np.ndarray:
    """(H,W) metres -> float32 copy with every value > EMPTY replaced by max_depth - value."""
    image = np.array(depth, dtype=np.float32, copy=True)
    valid = image > EMPTY
    image[valid] = np.float32(max_depth) - image[valid]
    return image


def _top_rows(image: np.ndarray) -> np.ndarray:
    """(W,) row of each column's first pixel above EMPTY (0 where the column has none)."""
    return np.argmax(image > EMPTY, axis=0)


def _above_top(image: np.ndarray) -> np.ndarray:
    """(H,W) bool: pixels above their column's first non-empty pixel."""
    return np.arange(image.shape[0])[:, None] < _top_rows(image)[None, :]


def _extend_to_top(image: np.ndarray) -> None:
    """In place: each column's topmost non-empty value is copied up to row 0."""
    top = _top_rows(image)
    values = image[top, np.arange(image.shape[1])]
    above = _above_top(image)
    image[above] = np.broadcast_to(values, image.shape)[above]


def fill_fast(depth: np.ndarray, max_depth: float = 100.0, extrapolate: bool = True,
              blur: str = 'gaussian') -> np.ndarray:
    """IP-Basic "fast": (H,W) metres, 0 = missing -> (H,W) float32 metres (0 = left empty)."""
    image = cv2.dilate(_inverted(depth, max_depth), KERNEL_DIAMOND_5)
    image = cv2.morphologyEx(image, cv2.MORPH_CLOSE, KERNEL_FULL_5)
    empty = image < EMPTY
    image[empty] = cv2.dilate(image, KERNEL_FULL_7)[empty]
    if extrapolate:
        _extend_to_top(image)
        empty = image < EMPTY
        image[empty] = cv2.dilate(image, KERNEL_FULL_31)[empty]
    image = cv2.medianBlur(image, 5)
    if blur == 'bilateral':
        image = cv2.bilateralFilter(image, 5, 1.5, 2.0)
    elif blur == 'gaussian':
        valid = image > EMPTY
        image[valid] = cv2.GaussianBlur(image, (5, 5), 0)[valid]
    else:
        raise ValueError(f"blur must be 'gaussian' or 'bilateral', got {blur!r}")
    return _inverted(image, max_depth)


def fill_multiscale(depth: np.ndarray, max_depth: float = 100.0, extrapolate: bool = False,
                    blur: str = 'bilateral') -> np.ndarray:
    """IP-Basic "multiscale": (H,W) metres, 0 = missing -> (H,W) float32 metres (0 = empty)."""
    depth = np.asarray(depth, dtype=np.float32)
    inverted = _inverted(depth, max_depth)
    bins = ((depth > 30.0, _cross(3)),
            ((depth > 15.0) & (depth <= 30.0), _cross(5)),
            ((depth > EMPTY) & (depth <= 15.0), _cross(7)))
    image = inverted.copy()
    for in_bin, kernel in bins:  # far first, so that nearer bins overwrite it
        dilated = cv2.dilate(inverted * in_bin, kernel)
        reached = dilated > EMPTY
        image[reached] = dilated[reached]
    image = cv2.morphologyEx(image, cv2.MORPH_CLOSE, KERNEL_FULL_5)
    valid = image > EMPTY
    image[valid] = cv2.medianBlur(image, 5)[valid]
    empty = ~valid & ~_above_top(image)
    image[empty] = cv2.dilate(image, KERNEL_FULL_9)[empty]
    if extrapolate:
        _extend_to_top(image)
    below_top = ~_above_top(image)
    for _ in range(6):
        empty = (image < EMPTY) & below_top
        image[empty] = cv2.dilate(image, KERNEL_FULL_5)[empty]
    valid = (image > EMPTY) & below_top
    image[valid] = cv2.medianBlur(image, 5)[valid]
    if blur == 'gaussian':
        valid = (image > EMPTY) & below_top
        image[valid] = cv2.GaussianBlur(image, (5, 5), 0)[valid]
    elif blur == 'bilateral':
        image[valid] = cv2.bilateralFilter(image, 5, 0.5, 2.0)[valid]
    else:
        raise ValueError(f"blur must be 'gaussian' or 'bilateral', got {blur!r}")
    return _inverted(image, max_depth)
