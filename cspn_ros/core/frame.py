"""A frame's data types and errors (ROS-free): what `core.pipeline.CompletionPipeline` takes
apart and hands back, and the checks shared by its input and output steps.

DEPTH_SOURCES: 'lidar' (PointCloud2, or a list of them from several LiDARs) or 'tof' (depth
Image). Depth is float32 metres with 0 = no measurement.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Optional

import numpy as np

from cspn_ros.core.camera import PinholeCamera
from cspn_ros.core.conversions import depth_to_32fc1
from cspn_ros.core.input_check import InputCoverage

DEPTH_SOURCES = ('lidar', 'tof')
#: A model output with a larger share of non-finite depths is a failed frame, not an image.
MAX_NONFINITE_OUTPUT = 0.5


class InputError(ValueError):
    """A frame that cannot be completed (bad encoding, sizes, calibration, no valid depth)."""


class ModelOutputError(ValueError):
    """The model returned mostly non-finite depth (corrupt weights): the frame failed."""


@dataclasses.dataclass
class FrameInputs:
    """Model inputs in the colour camera: rgb (H,W,3) uint8, sparse (H,W) float32 metres;
    held_out: the self-check's held-out points (H,W) metres, not in sparse (None when off)."""

    rgb: np.ndarray
    sparse: np.ndarray
    camera: PinholeCamera
    timings: dict[str, float]
    held_out: Optional[np.ndarray] = None


@dataclasses.dataclass
class FrameResult:
    """One completed frame, all (H,W) float32 in the colour camera.

    dense: metres, 0 where blanked by min_confidence; dense_unblanked: the model output before
    blanking (what metrics score); confidence: [0,1]; timings: seconds per stage;
    dense_32fc1: dense as 32FC1 values (NaN where 0) where the device path made them on the GPU
    (None elsewhere: `dense_as_32fc1` makes them on the host); input_coverage: the valid input
    pixels (set by `process`); held_out: as in FrameInputs.
    """

    rgb: np.ndarray
    sparse: np.ndarray
    dense: np.ndarray
    dense_unblanked: np.ndarray
    confidence: np.ndarray
    camera: PinholeCamera
    timings: dict[str, float]
    dense_32fc1: Optional[np.ndarray] = None
    input_coverage: Optional[InputCoverage] = None
    held_out: Optional[np.ndarray] = None

    def dense_as_32fc1(self) -> np.ndarray:
        """dense as 32FC1 wire values: metres, NaN where missing (REP 117)."""
        return self.dense_32fc1 if self.dense_32fc1 is not None else depth_to_32fc1(self.dense)

    @property
    def coverage(self) -> float:
        """Fraction of pixels with a published (non-blanked, positive) depth."""
        return float(np.count_nonzero(self.dense > 0)) / self.dense.size


@dataclasses.dataclass
class StagedFrame:
    """One frame up to the model (`CompletionPipeline.stage`): rgb (H,W,3) uint8 on the host
    and camera for the outputs; rgb_model (H,W,3) uint8 and sparse_model (H,W) float32 metres:
    the model inputs (numpy, or tensors on the completer's device when on_device); held_out:
    the self-check's points (same kind, or None); timings + staged_at (host) or clock
    (device): the stages so far; coverage: the input measured (host; the device path measures
    it after its one download); points_found: on the device, a 0-d bool tensor, whether any
    LiDAR point projected (read by `CompletionPipeline.check_points`, a synchronisation)."""

    on_device: bool
    rgb: np.ndarray
    camera: PinholeCamera
    depth_msg: Any
    rgb_model: Any
    sparse_model: Any
    held_out: Any = None
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    staged_at: float = 0.0
    clock: Any = None
    coverage: Optional[InputCoverage] = None
    points_found: Any = None

    def mark_batch_start(self) -> None:
        """The model's batch starts now: the time since this frame was staged (the other
        cameras' staging) becomes the stage `batch`, so `model` is the batch's own time."""
        if self.clock is not None:
            self.clock.mark('batch')
        else:
            now = time.perf_counter()
            self.timings['batch'] = now - self.staged_at
            self.staged_at = now


def several_clouds(depth_msg: Any) -> bool:
    """Whether the depth input is several clouds (a list or tuple, one per LiDAR)."""
    return isinstance(depth_msg, (list, tuple))


def point_count(cloud_msg: Any) -> int:
    """Points in a cloud or in several clouds (width x height each)."""
    clouds = cloud_msg if several_clouds(cloud_msg) else [cloud_msg]
    return sum(int(cloud.width) * int(cloud.height) for cloud in clouds)


def check_output(finite: int, size: int) -> None:
    """ModelOutputError when more than MAX_NONFINITE_OUTPUT of the size model depths are not
    finite (finite of them are)."""
    if size - finite > MAX_NONFINITE_OUTPUT * size:
        raise ModelOutputError(f'the model returned {100 * (size - finite) / size:.1f}% '
                               'non-finite depth (corrupt or diverged weights?); nothing '
                               'published for this frame')
