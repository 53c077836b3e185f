"""One frame of depth completion, shared by the live node, bag replay and training.

prepare:  image + camera_info + (PointCloud2 | ToF depth [+ its camera_info]) messages
          -> FrameInputs(rgb, sparse depth in the colour camera)          (convert + project)
complete: FrameInputs -> FrameResult(dense depth, confidence)             (the model)

Depth is float32 metres with 0 = no measurement. Bad input raises `InputError` with a message
that says what is wrong; the pipeline never returns a silently wrong image.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Optional

import numpy as np

from cspn_ros.core.camera import CameraError, PinholeCamera
from cspn_ros.core.conversions import (ConversionError, image_to_depth, image_to_rgb,
                                       pointcloud2_to_xyz)
from cspn_ros.core.projection import project_to_sparse_depth, register_depth

DEPTH_SOURCES = ('lidar', 'tof')


class InputError(ValueError):
    """A frame that cannot be completed (bad encoding, sizes, calibration, no valid depth)."""


@dataclasses.dataclass
class FrameInputs:
    """Model inputs in the colour camera: rgb (H,W,3) uint8, sparse (H,W) float32 metres."""

    rgb: np.ndarray
    sparse: np.ndarray
    camera: PinholeCamera
    timings: dict[str, float]


@dataclasses.dataclass
class FrameResult:
    """One completed frame, all (H,W) float32 in the colour camera.

    dense: metres, 0 where blanked by min_confidence; dense_unblanked: the model output before
    blanking (what metrics score); confidence: [0,1]; timings: seconds per stage.
    """

    rgb: np.ndarray
    sparse: np.ndarray
    dense: np.ndarray
    dense_unblanked: np.ndarray
    confidence: np.ndarray
    camera: PinholeCamera
    timings: dict[str, float]

    @property
    def coverage(self) -> float:
        """Fraction of pixels with a published (non-blanked, positive) depth."""
        return float(np.count_nonzero(self.dense > 0)) / self.dense.size


class CompletionPipeline:
    """Turns one matched set of messages into dense depth with `completer`.

    completer: a `DepthCompleter` (or anything with `.complete(rgb, sparse) -> (depth,
    confidence)`); depth_source: 'lidar' (PointCloud2) or 'tof' (depth Image);
    T_cam_from_sensor: (4,4) maps sensor-frame points into the colour optical frame (default
    identity); min_depth / max_depth: metres kept from the sensor; min_confidence: output pixels
    below it are blanked (0); tof_registered: the ToF depth is already in the colour camera.
    """

    def __init__(self, completer: Any, depth_source: str = 'lidar',
                 T_cam_from_sensor: Optional[np.ndarray] = None, min_depth: float = 0.1,
                 max_depth: float = float('inf'), min_confidence: float = 0.0,
                 tof_registered: bool = False) -> None:
        if depth_source not in DEPTH_SOURCES:
            raise ValueError(f'depth_source must be one of {DEPTH_SOURCES}, got {depth_source!r}')
        if not 0.0 <= min_depth < max_depth:
            raise ValueError(f'need 0 <= min_depth < max_depth, got {min_depth}, {max_depth}')
        if not 0.0 <= min_confidence <= 1.0:
            raise ValueError(f'min_confidence must be in [0, 1], got {min_confidence}')
        self.completer = completer
        self.depth_source = depth_source
        self.T_cam_from_sensor = (np.eye(4) if T_cam_from_sensor is None
                                  else np.asarray(T_cam_from_sensor, dtype=np.float64))
        if self.T_cam_from_sensor.shape != (4, 4):
            raise ValueError(f'T_cam_from_sensor must be 4x4, got {self.T_cam_from_sensor.shape}')
        self.min_depth = float(min_depth)
        self.max_depth = float(max_depth)
        self.min_confidence = float(min_confidence)
        self.tof_registered = bool(tof_registered)

    def prepare(self, image_msg: Any, info_msg: Any, depth_msg: Any,
                depth_info_msg: Any = None) -> FrameInputs:
        """Convert and project: messages -> FrameInputs. depth_msg is the PointCloud2 (lidar) or
        the ToF depth Image; depth_info_msg is the ToF CameraInfo (unregistered ToF only)."""
        start = time.perf_counter()
        try:
            rgb = image_to_rgb(image_msg)
        except ConversionError as error:
            raise InputError(f'image: {error}') from error
        height, width = rgb.shape[:2]
        camera = self._camera(info_msg, width, height, 'camera_info')
        converted = time.perf_counter()
        if self.depth_source == 'lidar':
            sparse = self._sparse_from_cloud(depth_msg, camera)
        else:
            sparse = self._sparse_from_tof(depth_msg, depth_info_msg, camera)
        projected = time.perf_counter()
        return FrameInputs(rgb=rgb, sparse=sparse, camera=camera,
                           timings={'convert': converted - start, 'project': projected - converted})

    def complete(self, inputs: FrameInputs) -> FrameResult:
        """Run the completer on prepared inputs; blank pixels below min_confidence."""
        start = time.perf_counter()
        completion = self.completer.complete(inputs.rgb, inputs.sparse)
        depth = np.asarray(completion.depth, dtype=np.float32)
        confidence = np.asarray(completion.confidence, dtype=np.float32)
        if depth.shape != inputs.sparse.shape:
            raise RuntimeError(f'completer returned {depth.shape}, expected {inputs.sparse.shape}')
        depth = np.where(np.isfinite(depth) & (depth > 0), depth, 0).astype(np.float32)
        dense = (depth if self.min_confidence <= 0
                 else np.where(confidence >= self.min_confidence, depth, 0).astype(np.float32))
        timings = {**inputs.timings, 'complete': time.perf_counter() - start}
        return FrameResult(rgb=inputs.rgb, sparse=inputs.sparse, dense=dense,
                           dense_unblanked=depth, confidence=confidence, camera=inputs.camera,
                           timings=timings)

    def process(self, image_msg: Any, info_msg: Any, depth_msg: Any,
                depth_info_msg: Any = None) -> FrameResult:
        """prepare + complete."""
        return self.complete(self.prepare(image_msg, info_msg, depth_msg, depth_info_msg))

    @staticmethod
    def _camera(info_msg: Any, width: int, height: int, topic: str) -> PinholeCamera:
        """The CameraInfo as a camera for a width x height image (scaled if sizes differ)."""
        if info_msg is None:
            raise InputError(f'{topic}: missing')
        try:
            return PinholeCamera.from_camera_info(info_msg).scaled(width, height)
        except CameraError as error:
            raise InputError(f'{topic}: {error}') from error

    def _sparse_from_cloud(self, cloud_msg: Any, camera: PinholeCamera) -> np.ndarray:
        if int(cloud_msg.width) * int(cloud_msg.height) == 0:
            raise InputError('point cloud is empty (no finite points)')
        try:
            points = pointcloud2_to_xyz(cloud_msg)
        except ConversionError as error:
            raise InputError(f'point cloud: {error}') from error
        if len(points) == 0:
            raise InputError('point cloud has no finite points (empty or all NaN)')
        try:
            sparse = project_to_sparse_depth(points, self.T_cam_from_sensor, camera,
                                             min_depth=self.min_depth, max_depth=self.max_depth)
        except CameraError as error:
            raise InputError(f'point cloud: {error}') from error
        if not np.any(sparse > 0):
            raise InputError(f'none of the {len(points)} cloud points project into the image '
                             f'within [{self.min_depth}, {self.max_depth}] m '
                             '(check the extrinsic and the depth range)')
        return sparse

    def _sparse_from_tof(self, depth_msg: Any, depth_info_msg: Any,
                         camera: PinholeCamera) -> np.ndarray:
        try:
            depth = image_to_depth(depth_msg)
        except ConversionError as error:
            raise InputError(f'ToF depth: {error}') from error
        if self.tof_registered:
            if depth.shape != (camera.height, camera.width):
                raise InputError(f'registered ToF depth is {depth.shape[1]}x{depth.shape[0]} but '
                                 f'the image is {camera.width}x{camera.height}')
            sparse = np.where((depth >= self.min_depth) & (depth <= self.max_depth), depth, 0)
            sparse = sparse.astype(np.float32)
        else:
            tof_camera = self._camera(depth_info_msg, depth.shape[1], depth.shape[0],
                                      'tof/camera_info')
            try:
                sparse = register_depth(depth, tof_camera, self.T_cam_from_sensor, camera,
                                        min_depth=self.min_depth, max_depth=self.max_depth)
            except CameraError as error:
                raise InputError(f'ToF depth: {error}') from error
        if not np.any(sparse > 0):
            raise InputError(f'ToF depth has no valid pixel within [{self.min_depth}, '
                             f'{self.max_depth}] m (all zero, NaN or inf)')
        return sparse
