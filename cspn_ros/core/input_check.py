"""Whether a frame has enough depth input to be completed, and which output pixels are too far
from any input to count as measurements. ROS-free; numpy, or torch where noted.

The rules (README, "Bad input"):
- size: an image, CameraInfo or ToF depth image larger than `max_image_size` is refused.
- coverage: a frame needs at least `min_input_pixels` valid input pixels after projection into
  the colour image; otherwise it is refused (nothing published) and `likely_causes` names what
  usually makes a good sensor project onto a handful of pixels.
- distance: an output pixel with no input pixel within `max_input_distance` x the longer image
  side (Chebyshev distance: no input in the square of that half-size around it) is an
  extrapolation, not a measurement: confidence 0, and NaN in the published depth.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import numpy as np

from cspn_ros.core.camera import PinholeCamera, array_module
from cspn_ros.core.conversions import (NATIVE_BIGENDIAN, ConversionError, image_to_depth,
                                       pointcloud2_to_xyz)

#: Fewest valid input pixels a frame needs (a 16-beam LiDAR gives ~3000 at 320x240).
DEFAULT_MIN_INPUT_PIXELS = 20
#: Output pixels farther than this share of the longer image side from any input are blanked.
DEFAULT_MAX_INPUT_DISTANCE = 0.25
#: Largest accepted [width, height] of images, CameraInfos and ToF depth images.
DEFAULT_MAX_IMAGE_SIZE = (4096, 4096)
#: metres; a cloud whose points mostly lie farther away is not read right.
MAX_PLAUSIBLE_RANGE = 1e4
#: Spread of the input is counted in the cells of a GRID x GRID grid over the image.
GRID = 8


@dataclasses.dataclass(frozen=True)
class InputCoverage:
    """Valid input pixels of one frame: count, share of the image, and spread (cells of a
    GRID x GRID grid holding at least one)."""

    pixels: int
    share: float
    cells: int

    def values(self) -> dict[str, str]:
        """Diagnostic key -> value text."""
        return {'input pixels': str(self.pixels), 'input share (%)': f'{100 * self.share:.3f}',
                f'input grid cells (of {GRID * GRID})': str(self.cells)}


def measure_coverage(sparse: np.ndarray) -> InputCoverage:
    """(H,W) sparse depth, metres (> 0 = input) -> InputCoverage. Row r lies in grid row
    r * GRID // H, column c in grid column c * GRID // W; one pass of `any` over bands of
    rows, then over the bands' columns (no pixel coordinates: ~0.2 ms at 1216x352)."""
    valid = sparse > 0
    height, width = valid.shape
    pixels = int(np.count_nonzero(valid))
    bands = np.stack([valid[start:stop].any(axis=0) for start, stop in _grid_bounds(height)])
    cells = sum(int(np.count_nonzero(bands[:, start:stop].any(axis=1)))
                for start, stop in _grid_bounds(width))
    return InputCoverage(pixels=pixels, share=pixels / valid.size, cells=cells)


def _grid_bounds(size: int) -> list[tuple[int, int]]:
    """[start, stop) of the indices i < size with i * GRID // size == g, for g < GRID (empty
    ranges where size < GRID)."""
    starts = np.searchsorted(np.arange(size) * GRID // size, np.arange(GRID + 1))
    return list(zip(starts[:-1].tolist(), starts[1:].tolist()))


def image_size_problem(width: int, height: int, max_size: tuple[int, int], what: str) -> str:
    """Why a width x height `what` is refused under max_size [width, height], or ''."""
    if width > max_size[0] or height > max_size[1]:
        return (f'{what} is {width}x{height}, larger than max_image_size {max_size[0]}x'
                f'{max_size[1]}')
    return ''


def _box_count(counts: Any, axis: int, radius: int) -> Any:
    """(H,W) int counts (numpy or torch) -> sums over the entries within `radius` along `axis`
    (the image border clips the box), from one cumulative sum."""
    size = counts.shape[axis]
    if array_module(counts) is np:
        cumulative = np.cumsum(counts, axis=axis, dtype=np.int32)
        cumulative = np.concatenate([np.zeros_like(np.take(cumulative, [0], axis=axis)),
                                     cumulative], axis=axis)
        index = np.arange(size)
        upper, lower = np.minimum(index + radius + 1, size), np.maximum(index - radius, 0)
        return np.take(cumulative, upper, axis=axis) - np.take(cumulative, lower, axis=axis)
    import torch
    cumulative = torch.cumsum(counts, dim=axis, dtype=torch.int32)
    cumulative = torch.cat([torch.zeros_like(cumulative.narrow(axis, 0, 1)), cumulative], axis)
    index = torch.arange(size, device=counts.device)
    upper, lower = (index + radius + 1).clamp(max=size), (index - radius).clamp(min=0)
    return (cumulative.index_select(axis, upper) - cumulative.index_select(axis, lower))


def far_from_input(valid: Any, max_distance: float) -> Any:
    """(H,W) bool (numpy or torch): no True of `valid` within max_distance x max(H, W) pixels
    (Chebyshev distance, i.e. in the square around the pixel). Exact: box sums of cumulative
    sums, O(H W), no host sync."""
    radius = int(max_distance * max(valid.shape))
    return _box_count(_box_count(valid, 1, radius), 0, radius) == 0


def implausible_cloud(points: np.ndarray, is_bigendian: bool) -> str:
    """Why an (N,3) float32 cloud (metres, finite) cannot be a sensor's, or '': more than
    half of its points lie beyond MAX_PLAUSIBLE_RANGE, as when the byte order is declared wrong
    (every float then reads as a random power of two)."""
    if len(points) == 0:
        return ''
    beyond = np.count_nonzero(np.abs(points).max(axis=1) > MAX_PLAUSIBLE_RANGE)
    if beyond <= 0.5 * len(points):
        return ''
    return (f'{100 * beyond / len(points):.0f}% of the {len(points)} points lie beyond '
            f'{MAX_PLAUSIBLE_RANGE:g} m: the data does not match its declared byte order '
            f'(is_bigendian={bool(is_bigendian)}) or field types')


def likely_causes(camera: PinholeCamera, depth_msg: Any, depth_source: str,
                  T_cam_from_sensor: np.ndarray, min_depth: float, max_depth: float) -> str:
    """Why a sensor that works gives only a few input pixels: what the messages show first
    (field types, byte order, range, extrinsic), then the intrinsics and distortion."""
    causes = []
    if depth_source == 'lidar':
        causes += _cloud_causes(depth_msg, T_cam_from_sensor, min_depth, max_depth)
    else:
        causes += _tof_causes(depth_msg, min_depth, max_depth)
    matrix = camera.camera_matrix
    fov = np.degrees(2 * np.arctan(0.5 * camera.width / matrix[0, 0]))
    causes.append(f'intrinsics: fx={matrix[0, 0]:g}, fy={matrix[1, 1]:g}, cx={matrix[0, 2]:g}, '
                  f'cy={matrix[1, 2]:g} for {camera.width}x{camera.height} (horizontal field of '
                  f'view {fov:.1f} deg)')
    if camera.distorted:
        causes.append(f'distortion: {camera.distortion_model} D={camera.D.tolist()}')
    return 'likely causes: ' + '; '.join(causes)


def _cloud_causes(cloud_msg: Any, T_cam_from_sensor: np.ndarray, min_depth: float,
                  max_depth: float) -> list[str]:
    causes = []
    if bool(cloud_msg.is_bigendian) != NATIVE_BIGENDIAN:
        causes.append(f'endianness: the cloud is flagged is_bigendian={bool(cloud_msg.is_bigendian)}'
                      f', unlike this machine; a wrong flag garbles every coordinate')
    try:
        points = pointcloud2_to_xyz(cloud_msg)
    except ConversionError:
        return causes
    depth = points.astype(np.float64) @ T_cam_from_sensor[2, :3] + T_cam_from_sensor[2, 3]
    in_range = int(np.count_nonzero((depth > min_depth) & (depth <= max_depth)))
    causes.append(f'range / extrinsic: {in_range} of {len(points)} points lie within '
                  f'[{min_depth:g}, {max_depth:g}] m in front of the camera')
    return causes


def _tof_causes(depth_msg: Any, min_depth: float, max_depth: float) -> list[str]:
    try:
        depth = image_to_depth(depth_msg)
    except ConversionError:
        return []
    in_range = int(np.count_nonzero((depth >= min_depth) & (depth <= max_depth)))
    return [f'range / extrinsic: {in_range} of {depth.size} ToF pixels lie within '
            f'[{min_depth:g}, {max_depth:g}] m']


def coverage_problem(coverage: InputCoverage, min_input_pixels: int,
                     size: Optional[tuple[int, int]] = None) -> str:
    """Why a frame with `coverage` is refused under min_input_pixels, or ''."""
    if coverage.pixels >= min_input_pixels:
        return ''
    where = f' of {size[0]}x{size[1]}' if size else ''
    return (f'only {coverage.pixels} valid input pixel(s) ({100 * coverage.share:.3f}%{where}, '
            f'{coverage.cells} of {GRID * GRID} grid cells) after projection, below '
            f'min_input_pixels={min_input_pixels}; nothing published for this frame')


def silent_input_hint(publishers_of_silent: dict[str, int], reliability: str) -> str:
    """Text to append to 'nothing received on ...' for silent topics that do have publishers
    ({topic: publisher count}): their messages are lost on the way, not missing ('' if none)."""
    published = [f'{topic} has {count} publisher{"s" if count > 1 else ""}'
                 for topic, count in publishers_of_silent.items() if count > 0]
    if not published:
        return ''
    if reliability == 'best_effort':
        return (f'; {", ".join(published)} but nothing arrived: if it publishes, its messages '
                'are lost on the way (large messages over best-effort QoS lose fragments): set '
                'input_reliability: reliable')
    return (f'; {", ".join(published)} but nothing arrived: if it publishes, a best-effort '
            'publisher does not reach input_reliability: reliable; check its QoS')
