"""One frame of depth completion, shared by the live node, bag replay and training.

prepare:  image + camera_info + (PointCloud2 | ToF depth [+ its camera_info]) messages
          -> FrameInputs(rgb, sparse depth in the colour camera)          (convert + project)
complete: FrameInputs -> FrameResult(dense depth, confidence)             (the model)
process:  prepare + complete in numpy on the host, or `process_on_device` when the completer
          runs on a GPU (automatic): the message buffers are copied once into pinned host
          buffers reused across frames, sent with non_blocking H2D copies, projected on the
          device (`project_to_sparse_depth_torch`), completed with `complete_tensor` and brought
          back with one D2H copy. Both paths give the same sparse and dense images.

Depth is float32 metres with 0 = no measurement. Bad input raises `InputError` with a message
that says what is wrong; the pipeline never returns a silently wrong image.
Optional steps after the projection, the same on both paths: the occlusion filter (LiDAR only,
`core.occlusion`: drops points the camera cannot see) and the self-check's held-out points
(`core.selfcheck`: removed from the model's input, returned as `held_out` for scoring).
Timings are seconds per stage: convert, project, model (host path); convert, h2d, project,
model, d2h (device path, measured with CUDA events, one synchronisation per frame besides the
one the projection's z-buffer needs).
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Optional

import numpy as np

from cspn_ros.core.camera import CameraError, PinholeCamera, array_module
from cspn_ros.core.conversions import (NATIVE_BIGENDIAN, POINTFIELD_FLOAT32, ConversionError,
                                       depth_to_32fc1, image_size, image_to_depth, image_to_rgb,
                                       message_bytes, pointcloud2_to_xyz, stamp_to_ns)
from cspn_ros.core.input_check import (DEFAULT_MAX_IMAGE_SIZE, DEFAULT_MAX_INPUT_DISTANCE,
                                       DEFAULT_MIN_INPUT_PIXELS, InputCoverage, coverage_problem,
                                       far_from_input, image_size_problem, implausible_cloud,
                                       likely_causes, measure_coverage)
from cspn_ros.core.occlusion import OcclusionFilter
from cspn_ros.core.projection import (merge_clouds, project_to_sparse_depth,
                                      project_to_sparse_depth_torch, register_depth)
from cspn_ros.core.selfcheck import HeldOutPoints

DEPTH_SOURCES = ('lidar', 'tof')
#: Calibrations remembered by a pipeline (a camera whose CameraInfo changes makes a new entry).
MAX_CACHED_CAMERAS = 8
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
    it after its one download)."""

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


class CompletionPipeline:
    """Turns one matched set of messages into dense depth with `completer`.

    completer: a `DepthCompleter` (or anything with `.complete(rgb, sparse) -> (depth,
    confidence)`; the device path also needs `.device` and `.complete_tensor`); depth_source:
    'lidar' (PointCloud2, or a list of PointCloud2 from several LiDARs, merged through one
    z-buffer) or 'tof' (depth Image); T_cam_from_sensor: (4,4) maps sensor-frame points into
    the colour optical frame (default identity); (K,4,4) for a list of K clouds; min_depth / max_depth: metres kept
    from the sensor; min_confidence: output pixels below it are blanked (0); tof_registered: the
    ToF depth is already in the colour camera; on_device: `process` takes the device path (None =
    when the completer runs on CUDA); rectified: the colour image is rectified (image_rect), so
    its camera is P without distortion instead of K + D (the output depth is pixel-aligned
    with the image either way); min_input_pixels, max_input_distance, max_image_size: the
    input rules of `core.input_check` (`process` refuses frames with fewer input pixels; output
    pixels farther from any input get confidence 0 and are blanked; larger images are refused);
    occlusion: filter for LiDAR points the camera cannot see (None = keep all); holdout: the
    self-check's held-out points, keyed by the image stamp (None = none held out);
    motion: a `core.motion.MotionCompensation` that moves every cloud point to the image's
    stamp (None: clouds are projected as they are).
    """

    def __init__(self, completer: Any, depth_source: str = 'lidar',
                 T_cam_from_sensor: Optional[np.ndarray] = None, min_depth: float = 0.1,
                 max_depth: float = float('inf'), min_confidence: float = 0.0,
                 tof_registered: bool = False, on_device: Optional[bool] = None,
                 rectified: bool = False, min_input_pixels: int = DEFAULT_MIN_INPUT_PIXELS,
                 max_input_distance: float = DEFAULT_MAX_INPUT_DISTANCE,
                 max_image_size: tuple[int, int] = DEFAULT_MAX_IMAGE_SIZE,
                 occlusion: Optional[OcclusionFilter] = None,
                 holdout: Optional[HeldOutPoints] = None,
                 motion: Any = None) -> None:
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
        if self.T_cam_from_sensor.shape[-2:] != (4, 4) or self.T_cam_from_sensor.ndim > 3:
            raise ValueError('T_cam_from_sensor must be 4x4 (or K x 4 x 4 for K LiDARs), got '
                             f'{self.T_cam_from_sensor.shape}')
        self.min_depth = float(min_depth)
        self.max_depth = float(max_depth)
        self.min_confidence = float(min_confidence)
        self.tof_registered = bool(tof_registered)
        self.rectified = bool(rectified)
        self.motion = motion
        self._on_device = on_device
        self.min_input_pixels = int(min_input_pixels)
        self.max_input_distance = float(max_input_distance)
        self.max_image_size = tuple(int(size) for size in max_image_size)
        self.last_input_coverage: Optional[InputCoverage] = None
        self.occlusion = occlusion
        self.holdout = holdout
        self._staging: Optional[HostStaging] = None
        self._cameras: dict[tuple, PinholeCamera] = {}

    @property
    def on_device(self) -> bool:
        """Whether `process` takes the device path: as set, or (None) whether the current
        completer runs on CUDA (so a completer swapped to the CPU takes the host path)."""
        if self._on_device is not None:
            return bool(self._on_device)
        return getattr(getattr(self.completer, 'device', None), 'type', None) == 'cuda'

    def prepare(self, image_msg: Any, info_msg: Any, depth_msg: Any,
                depth_info_msg: Any = None) -> FrameInputs:
        """Convert and project: messages -> FrameInputs. depth_msg is the PointCloud2 (lidar) or
        the ToF depth Image; depth_info_msg is the ToF CameraInfo (unregistered ToF only)."""
        start = time.perf_counter()
        rgb, camera = self._colour(image_msg, info_msg)
        converted = time.perf_counter()
        if self.depth_source == 'lidar':
            sparse = self._sparse_from_cloud(depth_msg, camera, image_msg)
        else:
            sparse = self._sparse_from_tof(depth_msg, depth_info_msg, camera)
        sparse, held_out = self._hold_out(sparse, image_msg)
        projected = time.perf_counter()
        return FrameInputs(rgb=rgb, sparse=sparse, camera=camera, held_out=held_out,
                           timings={'convert': converted - start, 'project': projected - converted})

    def complete(self, inputs: FrameInputs) -> FrameResult:
        """Run the completer on prepared inputs; blank pixels below min_confidence."""
        start = time.perf_counter()
        completion = self.completer.complete(inputs.rgb, inputs.sparse)
        return self._finish_on_host(inputs, completion.depth, completion.confidence, start)

    def _finish_on_host(self, inputs: FrameInputs, depth: Any, confidence: Any,
                        start: float) -> FrameResult:
        """FrameResult of host model outputs (H,W) started at perf_counter `start`."""
        depth = np.asarray(depth, dtype=np.float32)
        confidence = np.asarray(confidence, dtype=np.float32)
        if depth.shape != inputs.sparse.shape:
            raise RuntimeError(f'completer returned {depth.shape}, expected {inputs.sparse.shape}')
        _check_output(int(np.count_nonzero(np.isfinite(depth))), depth.size)
        dense, depth, confidence = self._blank(depth, confidence, inputs.sparse)
        timings = {**inputs.timings, 'model': time.perf_counter() - start}
        return FrameResult(rgb=inputs.rgb, sparse=inputs.sparse, dense=dense,
                           dense_unblanked=depth, confidence=confidence, camera=inputs.camera,
                           timings=timings, held_out=inputs.held_out)

    def process(self, image_msg: Any, info_msg: Any, depth_msg: Any,
                depth_info_msg: Any = None) -> FrameResult:
        """stage + the completer + finish: one frame, on the host or (`on_device`) on the
        completer's device; InputError when the frame has fewer than min_input_pixels input
        pixels (`input_check`)."""
        staged = self.stage(image_msg, info_msg, depth_msg, depth_info_msg)
        if staged.on_device:
            depth, confidence = self.completer.complete_tensor(staged.rgb_model,
                                                               staged.sparse_model)
        else:
            completion = self.completer.complete(staged.rgb_model, staged.sparse_model)
            depth, confidence = completion.depth, completion.confidence
        return self.finish(staged, depth, confidence)

    def process_on_device(self, image_msg: Any, info_msg: Any, depth_msg: Any,
                          depth_info_msg: Any = None) -> FrameResult:
        """The same frame as `process`, computed on `completer.device` (any torch device)."""
        staged = self._stage_on_device(image_msg, info_msg, depth_msg, depth_info_msg)
        return self.finish(staged, *self.completer.complete_tensor(staged.rgb_model,
                                                                   staged.sparse_model))

    def stage(self, image_msg: Any, info_msg: Any, depth_msg: Any,
              depth_info_msg: Any = None) -> 'StagedFrame':
        """Everything of `process` before the model: converted, projected (and, on the host,
        checked for coverage) model inputs of one frame. Frames of several cameras staged
        alike can go through the model as one batch (`core.rig.RigCompleter`)."""
        if self.on_device:
            return self._stage_on_device(image_msg, info_msg, depth_msg, depth_info_msg)
        inputs = self.prepare(image_msg, info_msg, depth_msg, depth_info_msg)
        coverage = self._check_coverage(inputs.sparse, inputs.camera, depth_msg)
        return StagedFrame(on_device=False, rgb=inputs.rgb, camera=inputs.camera,
                           depth_msg=depth_msg, rgb_model=inputs.rgb, sparse_model=inputs.sparse,
                           held_out=inputs.held_out, timings=inputs.timings, coverage=coverage,
                           staged_at=time.perf_counter())

    def finish(self, staged: 'StagedFrame', depth: Any, confidence: Any) -> FrameResult:
        """FrameResult from a staged frame and the model's (H,W) depth and confidence (numpy
        for a host frame, tensors on the device for a device frame). The 'model' timing runs
        from the end of staging (in a batch: the model's time shared by its frames)."""
        if not staged.on_device:
            inputs = FrameInputs(rgb=staged.rgb, sparse=staged.sparse_model, camera=staged.camera,
                                 timings=staged.timings, held_out=staged.held_out)
            return dataclasses.replace(self._finish_on_host(inputs, depth, confidence,
                                                            staged.staged_at),
                                       input_coverage=staged.coverage)
        return self._finish_on_device(staged, depth, confidence)

    def _stage_on_device(self, image_msg: Any, info_msg: Any, depth_msg: Any,
                         depth_info_msg: Any = None) -> 'StagedFrame':
        """Host work is one copy of each message buffer into a pinned staging buffer (a float32
        x/y/z cloud is sent as raw bytes and decoded on the device; other layouts, several
        clouds and ToF depth are converted on the host first)."""
        import torch
        device = torch.device(self.completer.device)
        if self._staging is None or self._staging.device != device:
            self._staging = HostStaging(device)
        clock = StageClock(device)
        rgb, camera = self._colour(image_msg, info_msg)
        cloud = None
        if self.depth_source == 'lidar':
            cloud = (None if self.motion is not None or _several(depth_msg)
                     else self._cloud_layout(depth_msg))
            host_depth = (message_bytes(depth_msg.data) if cloud is not None
                          else self._cloud_points(depth_msg, image_msg))
        else:
            host_depth = self._tof_depth(depth_msg)
        clock.mark('convert')
        rgb_t = self._staging.upload('rgb', rgb)
        depth_t = self._staging.upload('depth', host_depth)
        clock.mark('h2d')
        if self.depth_source == 'lidar':
            sparse_t = self._project_on_device(depth_t, cloud, camera, depth_msg)
            if not bool((sparse_t > 0).any()):
                raise InputError(f'point cloud: no finite points project into the image within '
                                 f'[{self.min_depth}, {self.max_depth}] m '
                                 f'({_point_count(depth_msg)} points; '
                                 'check the extrinsic and the depth range)')
        else:
            sparse_t = self._register_tof(depth_t, depth_info_msg, camera)
        sparse_t, held_out_t = self._hold_out(sparse_t, image_msg)
        clock.mark('project')
        return StagedFrame(on_device=True, rgb=rgb, camera=camera, depth_msg=depth_msg,
                           rgb_model=rgb_t, sparse_model=sparse_t, held_out=held_out_t,
                           clock=clock)

    def _finish_on_device(self, staged: 'StagedFrame', depth_t: Any,
                          confidence_t: Any) -> FrameResult:
        """Blank on the device, then one D2H copy of every plane (views of one pinned host
        buffer per frame, reused by torch's caching host allocator once dropped)."""
        import torch
        sparse_t, held_out_t, clock = staged.sparse_model, staged.held_out, staged.clock
        if tuple(depth_t.shape) != tuple(sparse_t.shape):
            raise RuntimeError(f'completer returned {tuple(depth_t.shape)}, expected '
                               f'{tuple(sparse_t.shape)}')
        finite_t = torch.isfinite(depth_t).sum()
        dense_t, unblanked_t, confidence_t = self._blank(depth_t.float(), confidence_t.float(),
                                                         sparse_t)
        planes = [sparse_t, unblanked_t, confidence_t, depth_to_32fc1(dense_t)]
        if held_out_t is not None:
            planes.append(held_out_t)
        if dense_t is not unblanked_t:
            planes.append(dense_t)
        clock.mark('model')
        host = torch.stack(planes)
        if sparse_t.device.type == 'cuda':
            host = torch.empty(host.shape, dtype=host.dtype, pin_memory=True).copy_(
                host, non_blocking=True)
        clock.mark('d2h')
        timings = clock.seconds()
        sparse, unblanked, confidence, dense_32fc1, *rest = host.numpy()
        held_out = rest.pop(0) if held_out_t is not None else None
        coverage = self._check_coverage(sparse, staged.camera, staged.depth_msg)
        _check_output(int(finite_t), sparse.size)  # synchronised already by clock.seconds()
        return FrameResult(rgb=staged.rgb, sparse=sparse, dense=rest[0] if rest else unblanked,
                           dense_unblanked=unblanked, confidence=confidence,
                           camera=staged.camera, timings=timings, dense_32fc1=dense_32fc1,
                           input_coverage=coverage, held_out=held_out)

    def _hold_out(self, sparse: Any, image_msg: Any) -> tuple[Any, Any]:
        """(model input, held-out points or None) of a projected (H,W) sparse depth (numpy or
        torch), keyed by the image stamp."""
        if self.holdout is None:
            return sparse, None
        return self.holdout.split(sparse, stamp_to_ns(image_msg.header.stamp))

    def _blank(self, depth: Any, confidence: Any, sparse: Any) -> tuple[Any, Any, Any]:
        """(H,W) model depth, confidence and sparse input (numpy or torch) -> (dense, unblanked,
        confidence): non-finite and non-positive depths -> 0; confidence -> 0 where no input is
        within max_input_distance; in dense also confidence < min_confidence or confidence 0
        there -> 0 (dense is unblanked itself when nothing is blanked)."""
        xp = array_module(depth)
        zero = np.float32(0) if xp is np else 0.0
        depth = xp.where(xp.isfinite(depth) & (depth > 0), depth, zero)
        keep = None
        if self.max_input_distance > 0:
            keep = ~far_from_input(sparse > 0, self.max_input_distance)
            confidence = xp.where(keep, confidence, zero)
        if self.min_confidence > 0:
            confident = confidence >= self.min_confidence
            keep = confident if keep is None else keep & confident
        if keep is None:
            return depth, depth, confidence
        return xp.where(keep, depth, zero), depth, confidence

    def _check_coverage(self, sparse: np.ndarray, camera: PinholeCamera,
                        depth_msg: Any) -> InputCoverage:
        """Measure the input (kept as last_input_coverage); InputError naming the likely causes
        when it has fewer than min_input_pixels pixels."""
        coverage = measure_coverage(sparse)
        self.last_input_coverage = coverage
        problem = coverage_problem(coverage, self.min_input_pixels, (camera.width, camera.height))
        if problem:
            first = depth_msg[0] if _several(depth_msg) else depth_msg  # causes of the first
            raise InputError(f'{problem}; ' + likely_causes(
                camera, first, self.depth_source, self.T_cam_from_sensor.reshape(-1, 4, 4)[0],
                self.min_depth, self.max_depth))
        return coverage

    def _colour(self, image_msg: Any, info_msg: Any) -> tuple[np.ndarray, PinholeCamera]:
        """(H,W,3) uint8 rgb (a view of rgb8 messages) and the camera scaled to it."""
        try:
            self._check_size(*image_size(image_msg), 'image')
            rgb = image_to_rgb(image_msg)
        except ConversionError as error:
            raise InputError(f'image: {error}') from error
        height, width = rgb.shape[:2]
        return rgb, self._camera(info_msg, width, height, 'camera_info')

    @staticmethod
    def _cloud_layout(cloud_msg: Any) -> Optional[tuple[int, tuple[int, int, int]]]:
        """(floats per point, x/y/z float offsets) when the cloud's raw bytes can be decoded on
        the device: float32 x, y, z in this machine's byte order at 4-byte aligned offsets, no
        row padding. None otherwise (then it is converted on the host)."""
        fields = {field.name: field for field in cloud_msg.fields}
        point_step = int(cloud_msg.point_step)
        if (any(name not in fields or fields[name].datatype != POINTFIELD_FLOAT32
                or fields[name].offset % 4 for name in 'xyz')
                or bool(cloud_msg.is_bigendian) != NATIVE_BIGENDIAN or point_step % 4
                or int(cloud_msg.row_step) != int(cloud_msg.width) * point_step
                or int(cloud_msg.width) * int(cloud_msg.height) == 0
                or len(message_bytes(cloud_msg.data)) != int(cloud_msg.height) * int(
                    cloud_msg.row_step)):
            return None
        return point_step // 4, tuple(int(fields[name].offset) // 4 for name in 'xyz')

    def _project_on_device(self, depth_t: Any, cloud: Optional[tuple[int, tuple[int, int, int]]],
                           camera: PinholeCamera, cloud_msg: Any) -> Any:
        """Device cloud (raw bytes with layout `cloud`, or (N,3) float32 points) -> (H,W)
        sparse depth. Non-finite points are turned into NaN depth, which the z-buffer drops,
        so the image equals the host path's (which removes them first)."""
        import torch
        points = depth_t
        if cloud is not None:
            floats_per_point, offsets = cloud
            points = depth_t.view(torch.float32).view(-1, floats_per_point)[:, list(offsets)]
            finite = torch.isfinite(points).all(dim=1, keepdim=True)
            points = torch.where(finite, points, float('nan'))
        try:
            sparse = project_to_sparse_depth_torch(points, self._points_transform(cloud_msg),
                                                   camera,
                                                   min_depth=self.min_depth,
                                                   max_depth=self.max_depth)
        except CameraError as error:
            raise InputError(f'point cloud: {error}') from error
        return sparse if self.occlusion is None else self.occlusion(sparse)

    def _camera(self, info_msg: Any, width: int, height: int, topic: str) -> PinholeCamera:
        """The CameraInfo as a camera for a width x height image (scaled if sizes differ).

        Cameras are kept per calibration, so their pixel rays (an undistortion solve for
        distorted cameras) are computed once, not every frame."""
        if info_msg is None:
            raise InputError(f'{topic}: missing')
        self._check_size(int(info_msg.width), int(info_msg.height), topic)
        key = (topic, width, height, int(info_msg.width), int(info_msg.height),
               str(info_msg.distortion_model),
               *(np.asarray(values, dtype=np.float64).tobytes()
                 for values in (info_msg.k, info_msg.d, info_msg.r, info_msg.p)))
        camera = self._cameras.get(key)
        if camera is None:
            try:
                camera = PinholeCamera.from_camera_info(
                    info_msg, rectified=self.rectified and topic == 'camera_info'
                ).scaled(width, height)
            except CameraError as error:
                raise InputError(f'{topic}: {error}') from error
            if len(self._cameras) >= MAX_CACHED_CAMERAS:
                self._cameras.clear()
            self._cameras[key] = camera
        return camera

    def _cloud_points(self, cloud_msg: Any, image_msg: Any, lidar: int = 0) -> np.ndarray:
        """PointCloud2 (of LiDAR number `lidar`) -> (N,3) float32 finite points, moved to the
        image's stamp with `motion`; several PointCloud2 (one per LiDAR) -> their points merged
        in the camera frame (`projection.merge_clouds`, float64); InputError when there are
        none or the motion is unknown."""
        if _several(cloud_msg):
            transforms = self.T_cam_from_sensor.reshape(-1, 4, 4)
            if len(transforms) != len(cloud_msg):
                raise InputError(f'{len(cloud_msg)} clouds but {len(transforms)} extrinsics')
            return merge_clouds([self._cloud_points(cloud, image_msg, lidar)
                                 for lidar, cloud in enumerate(cloud_msg)], transforms)
        if int(cloud_msg.width) * int(cloud_msg.height) == 0:
            raise InputError('point cloud is empty (no finite points)')
        try:
            points = pointcloud2_to_xyz(cloud_msg)
        except ConversionError as error:
            raise InputError(f'point cloud: {error}') from error
        if len(points) == 0:
            raise InputError('point cloud has no finite points (empty or all NaN)')
        problem = implausible_cloud(points, cloud_msg.is_bigendian)
        if problem:
            raise InputError(f'point cloud: {problem}')
        if self.motion is not None:
            from cspn_ros.core.motion import MotionError
            try:
                points = self.motion.apply(cloud_msg, points,
                                           stamp_to_ns(image_msg.header.stamp), lidar)
            except MotionError as error:
                raise InputError(f'motion compensation: {error}') from error
        return points

    def _points_transform(self, cloud_msg: Any) -> np.ndarray:
        """The (4,4) the projection applies to `_cloud_points`: the extrinsic, or the identity
        for merged clouds (already in the camera frame)."""
        return np.eye(4) if _several(cloud_msg) else self.T_cam_from_sensor

    def _sparse_from_cloud(self, cloud_msg: Any, camera: PinholeCamera,
                           image_msg: Any) -> np.ndarray:
        points = self._cloud_points(cloud_msg, image_msg)
        try:
            sparse = project_to_sparse_depth(points, self._points_transform(cloud_msg), camera,
                                             min_depth=self.min_depth, max_depth=self.max_depth)
        except CameraError as error:
            raise InputError(f'point cloud: {error}') from error
        if self.occlusion is not None:
            sparse = self.occlusion(sparse)
        if not np.any(sparse > 0):
            raise InputError(f'none of the {len(points)} cloud points project into the image '
                             f'within [{self.min_depth}, {self.max_depth}] m '
                             '(check the extrinsic and the depth range)')
        return sparse

    def camera_info_problem(self, info_msg: Any) -> str:
        """Why a colour CameraInfo cannot be used (size over max_image_size, invalid or
        implausible calibration), or '': the node warms up only at a checked size."""
        try:
            self._camera(info_msg, int(info_msg.width), int(info_msg.height), 'camera_info')
        except InputError as error:
            return str(error)
        return ''

    def _check_size(self, width: int, height: int, what: str) -> None:
        problem = image_size_problem(width, height, self.max_image_size, what)
        if problem:
            raise InputError(problem)

    def _tof_depth(self, depth_msg: Any) -> np.ndarray:
        """ToF depth Image -> (h,w) float32 metres, 0 = missing (a view where possible)."""
        try:
            self._check_size(*image_size(depth_msg), 'ToF depth')
            return image_to_depth(depth_msg)
        except ConversionError as error:
            raise InputError(f'ToF depth: {error}') from error

    def _sparse_from_tof(self, depth_msg: Any, depth_info_msg: Any,
                         camera: PinholeCamera) -> np.ndarray:
        return self._register_tof(self._tof_depth(depth_msg), depth_info_msg, camera)

    def _register_tof(self, depth: Any, depth_info_msg: Any, camera: PinholeCamera) -> Any:
        """(h,w) ToF metres (numpy, or a torch tensor on any device) -> (H,W) sparse depth in
        the colour camera within [min_depth, max_depth], of the same kind."""
        xp = array_module(depth)
        height, width = depth.shape
        if self.tof_registered:
            if (height, width) != (camera.height, camera.width):
                raise InputError(f'registered ToF depth is {width}x{height} but the image is '
                                 f'{camera.width}x{camera.height}')
            in_range = (depth >= self.min_depth) & (depth <= self.max_depth)
            sparse = xp.where(in_range, depth, xp.zeros_like(depth))
        else:
            tof_camera = self._camera(depth_info_msg, width, height, 'tof/camera_info')
            try:
                sparse = register_depth(depth, tof_camera, self.T_cam_from_sensor, camera,
                                        min_depth=self.min_depth, max_depth=self.max_depth)
            except CameraError as error:
                raise InputError(f'ToF depth: {error}') from error
        if not bool((sparse > 0).any()):
            raise InputError(f'ToF depth has no valid pixel within [{self.min_depth}, '
                             f'{self.max_depth}] m (all zero, NaN or inf)')
        return sparse


def _several(depth_msg: Any) -> bool:
    """Whether the depth input is several clouds (a list or tuple, one per LiDAR)."""
    return isinstance(depth_msg, (list, tuple))


def _point_count(cloud_msg: Any) -> int:
    """Points in a cloud or in several clouds (width x height each)."""
    clouds = cloud_msg if _several(cloud_msg) else [cloud_msg]
    return sum(int(cloud.width) * int(cloud.height) for cloud in clouds)


def _check_output(finite: int, size: int) -> None:
    """ModelOutputError when more than MAX_NONFINITE_OUTPUT of the size model depths are not
    finite (finite of them are)."""
    if size - finite > MAX_NONFINITE_OUTPUT * size:
        raise ModelOutputError(f'the model returned {100 * (size - finite) / size:.1f}% '
                               'non-finite depth (corrupt or diverged weights?); nothing '
                               'published for this frame')


class HostStaging:
    """Host -> device uploads through page-locked (pinned on CUDA) host buffers, one per name,
    reused across frames and grown only when a frame needs more bytes. A buffer is refilled
    only after its previous copy finished (waited for on its CUDA event, normally long done).
    """

    def __init__(self, device: Any) -> None:
        import torch
        self.device = torch.device(device)
        self._buffers: dict[str, Any] = {}
        self._copied: dict[str, Any] = {}

    def upload(self, name: str, array: np.ndarray) -> Any:
        """Copy `array` (any strides) into the `name` buffer and start a non_blocking copy to
        the device -> tensor of array's shape and dtype on the device (on the CPU: a view of the
        buffer, valid until the next upload under `name`)."""
        import torch
        dtype = torch.from_numpy(np.empty(0, dtype=array.dtype)).dtype
        size = array.size * array.itemsize
        buffer = self._buffers.get(name)
        if buffer is None or buffer.numel() < size:
            buffer = torch.empty(max(size, 1), dtype=torch.uint8,
                                 pin_memory=self.device.type == 'cuda')
            self._buffers[name] = buffer
        if name in self._copied:
            self._copied.pop(name).synchronize()
        staged = buffer[:size].view(dtype).view(array.shape)
        np.copyto(staged.numpy(), array, casting='no')
        uploaded = staged.to(self.device, non_blocking=True)
        if self.device.type == 'cuda':
            self._copied[name] = torch.cuda.Event()
            self._copied[name].record()
        return uploaded


class StageClock:
    """Seconds per named stage of one frame: CUDA events on a CUDA device (the stages' device
    time, read after one synchronisation at the end), wall-clock perf_counter elsewhere."""

    def __init__(self, device: Any) -> None:
        import torch
        self._cuda = torch.device(device).type == 'cuda'
        self._marks: list[tuple[str, Any]] = [('start', self._now())]

    def _now(self) -> Any:
        if not self._cuda:
            return time.perf_counter()
        import torch
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def mark(self, stage: str) -> None:
        """The stage that started at the previous mark ends now."""
        self._marks.append((stage, self._now()))

    def seconds(self) -> dict[str, float]:
        """{stage: seconds}; on CUDA waits for the last mark (the frame's one synchronisation)."""
        pairs = zip(self._marks, self._marks[1:])
        if not self._cuda:
            return {stage: end - begin for (_, begin), (stage, end) in pairs}
        self._marks[-1][1].synchronize()
        return {stage: begin.elapsed_time(end) / 1e3 for (_, begin), (stage, end) in pairs}
