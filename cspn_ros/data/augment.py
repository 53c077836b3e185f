"""Geometry-consistent augmentation of training samples (numpy, no torch).

A sample is a dict: `rgb` (H,W,3) uint8, `sparse` and `target` (H,W) float32 metres (0 = none),
`K` (3,3) float64 pixel intrinsics, and for self-supervision `source_rgbs` (S,H,W,3) uint8 with
`T_sources_from_target` (S,4,4). Every geometric change updates K (and the poses) so projection
stays exact; depth maps are re-binned without interpolation (nearest depth wins), so no
invented depths appear between a foreground and a background point.
"""
from __future__ import annotations

import dataclasses

import cv2
import numpy as np

DEPTH_KEYS = ('sparse', 'target')
#: Flip of the camera x axis, applied on both sides of a pose when the images are mirrored.
_MIRROR_X = np.diag([-1.0, 1.0, 1.0, 1.0])


def _images(sample: dict) -> list[str]:
    return [k for k in ('rgb', *DEPTH_KEYS) if k in sample]


def hflip(sample: dict) -> dict:
    """Mirror left-right: images flipped, cx' = W-1-cx, poses conjugated by the x mirror."""
    out = dict(sample)
    width = sample['rgb'].shape[1]
    for key in _images(sample):
        out[key] = np.ascontiguousarray(sample[key][:, ::-1])
    K = sample['K'].copy()
    K[0, 2] = width - 1 - K[0, 2]
    out['K'] = K
    if 'source_rgbs' in sample:
        out['source_rgbs'] = np.ascontiguousarray(sample['source_rgbs'][:, :, ::-1])
        out['T_sources_from_target'] = _MIRROR_X @ sample['T_sources_from_target'] @ _MIRROR_X
    return out


def rebin_depth(depth: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resample a depth map (H,W) metres onto a (height,width) grid without interpolation.

    Each valid pixel moves to the new pixel containing its centre; where several land on one
    pixel the nearest (smallest depth) wins. Upscaling leaves the new pixels in between empty.
    """
    rows, cols = np.nonzero(depth > 0)
    z = depth[rows, cols]
    new_rows = np.minimum(((rows + 0.5) * height / depth.shape[0]).astype(np.int64), height - 1)
    new_cols = np.minimum(((cols + 0.5) * width / depth.shape[1]).astype(np.int64), width - 1)
    out = np.full(height * width, np.inf, dtype=np.float32)
    np.minimum.at(out, new_rows * width + new_cols, z)
    out[np.isinf(out)] = 0
    return out.reshape(height, width)


def rescale(sample: dict, scale: float) -> dict:
    """Resize by `scale`: RGB bilinear/area, depths re-binned, fx, fy, cx, cy scaled (depth
    values unchanged: a resized image of the same scene has the same metric depths)."""
    height, width = sample['rgb'].shape[:2]
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    out = dict(sample)
    out['rgb'] = cv2.resize(sample['rgb'], (new_w, new_h), interpolation=interpolation)
    for key in DEPTH_KEYS:
        if key in sample:
            out[key] = rebin_depth(sample[key], new_h, new_w)
    if 'source_rgbs' in sample:
        out['source_rgbs'] = np.stack([cv2.resize(img, (new_w, new_h), interpolation=interpolation)
                                       for img in sample['source_rgbs']])
    sx, sy = new_w / width, new_h / height
    K = sample['K'].copy()
    K[0, 0] *= sx
    K[1, 1] *= sy
    K[0, 2] = (K[0, 2] + 0.5) * sx - 0.5
    K[1, 2] = (K[1, 2] + 0.5) * sy - 0.5
    out['K'] = K
    return out


def crop(sample: dict, top: int, left: int, height: int, width: int) -> dict:
    """Cut the window [top:top+height, left:left+width]; cx -= left, cy -= top."""
    full_h, full_w = sample['rgb'].shape[:2]
    if not (0 <= top and top + height <= full_h and 0 <= left and left + width <= full_w):
        raise ValueError(f'crop {height}x{width} at ({top}, {left}) does not fit in a '
                         f'{full_h}x{full_w} image')
    out = dict(sample)
    for key in _images(sample):
        out[key] = np.ascontiguousarray(sample[key][top:top + height, left:left + width])
    if 'source_rgbs' in sample:
        out['source_rgbs'] = np.ascontiguousarray(
            sample['source_rgbs'][:, top:top + height, left:left + width])
    K = sample['K'].copy()
    K[0, 2] -= left
    K[1, 2] -= top
    out['K'] = K
    return out


def bottom_crop(sample: dict, height: int, width: int) -> dict:
    """KITTI's standard crop: the bottom rows (LiDAR covers no sky), horizontally centred."""
    full_h, full_w = sample['rgb'].shape[:2]
    return crop(sample, full_h - height, (full_w - width) // 2, height, width)


def color_jitter(rgb: np.ndarray, rng: np.random.Generator, brightness: float = 0.2,
                 contrast: float = 0.2, saturation: float = 0.2) -> np.ndarray:
    """Random brightness, contrast and saturation factors in [1-x, 1+x]; (H,W,3) uint8."""
    image = rgb.astype(np.float32)
    image *= rng.uniform(1 - brightness, 1 + brightness)
    mean = image.mean()
    image = (image - mean) * rng.uniform(1 - contrast, 1 + contrast) + mean
    gray = image.mean(axis=2, keepdims=True)
    image = (image - gray) * rng.uniform(1 - saturation, 1 + saturation) + gray
    return np.clip(image + 0.5, 0, 255).astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class Augmenter:
    """Training-time augmentation: random scale, random crop to `crop_size` (H,W), horizontal
    flip, colour jitter (the same jitter for all views). `crop_size=None` keeps the size."""

    crop_size: tuple[int, int] | None = None
    scale_range: tuple[float, float] = (1.0, 1.0)
    flip: bool = True
    jitter: float = 0.2

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        scale = rng.uniform(*self.scale_range)
        if scale != 1.0:
            sample = rescale(sample, scale)
        if self.crop_size is not None:
            sample = random_crop(sample, *self.crop_size, rng)
        if self.flip and rng.random() < 0.5:
            sample = hflip(sample)
        if self.jitter > 0:
            seed = int(rng.integers(1 << 31))
            sample = dict(sample)
            sample['rgb'] = color_jitter(sample['rgb'], np.random.default_rng(seed), self.jitter,
                                         self.jitter, self.jitter)
            if 'source_rgbs' in sample:
                sample['source_rgbs'] = np.stack([
                    color_jitter(img, np.random.default_rng(seed), self.jitter, self.jitter,
                                 self.jitter) for img in sample['source_rgbs']])
        return sample


def random_crop(sample: dict, height: int, width: int, rng: np.random.Generator) -> dict:
    """A uniformly placed (height,width) window; the image must be at least that large."""
    full_h, full_w = sample['rgb'].shape[:2]
    if full_h < height or full_w < width:
        raise ValueError(f'crop {height}x{width} is larger than the {full_h}x{full_w} image')
    return crop(sample, int(rng.integers(full_h - height + 1)),
                int(rng.integers(full_w - width + 1)), height, width)
