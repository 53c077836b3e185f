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

The parts live in focused modules, re-exported here: `core.frame` (FrameInputs, FrameResult,
StagedFrame, InputError, ModelOutputError, DEPTH_SOURCES), `core.sensor_inputs` (messages ->
model inputs: decoding, checks, projection, ToF registration; `SensorInputs`, which
CompletionPipeline extends), `core.staging` (HostStaging, StageClock).
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Optional

import numpy as np

from cspn_ros.core.camera import PinholeCamera, array_module
from cspn_ros.core.conversions import depth_to_32fc1, message_bytes, stamp_to_ns
from cspn_ros.core.frame import (DEPTH_SOURCES, MAX_NONFINITE_OUTPUT, FrameInputs, FrameResult,
                                 InputError, ModelOutputError, StagedFrame, check_output,
                                 point_count, several_clouds)
from cspn_ros.core.input_check import (DEFAULT_MAX_IMAGE_SIZE, DEFAULT_MAX_INPUT_DISTANCE,
                                       DEFAULT_MIN_INPUT_PIXELS, InputCoverage, far_from_input)
from cspn_ros.core.occlusion import OcclusionFilter
from cspn_ros.core.selfcheck import HeldOutPoints
from cspn_ros.core.sensor_inputs import MAX_CACHED_CAMERAS, SensorInputs
from cspn_ros.core.staging import HostStaging, StageClock

__all__ = ['DEPTH_SOURCES', 'MAX_CACHED_CAMERAS', 'MAX_NONFINITE_OUTPUT', 'CompletionPipeline',
           'FrameInputs', 'FrameResult', 'HostStaging', 'InputError', 'ModelOutputError',
           'StageClock', 'StagedFrame']


class CompletionPipeline(SensorInputs):
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
        check_output(int(np.count_nonzero(np.isfinite(depth))), depth.size)
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
        self.check_points(staged)
        return self.finish(staged, *self.completer.complete_tensor(staged.rgb_model,
                                                                   staged.sparse_model))

    def _upload_depth(self, host_depth: np.ndarray, raw_cloud: Any,
                      shared: Optional[dict[int, Any]]) -> Any:
        """The depth input on the device; a raw cloud message (raw_cloud, whose bytes
        host_depth views) already in `shared` (device copies by message) is not uploaded again,
        and one uploaded is added to it."""
        shared = shared if raw_cloud is not None else None
        if shared is not None and id(raw_cloud) in shared:
            return shared[id(raw_cloud)]
        uploaded = self._staging.upload('depth', host_depth)
        if shared is not None:
            shared[id(raw_cloud)] = uploaded
        return uploaded

    def check_points(self, staged: 'StagedFrame', found: Optional[bool] = None) -> None:
        """InputError when no LiDAR point of a device-staged frame projected into the image;
        found: staged.points_found already read (else it is read here: a synchronisation)."""
        if staged.points_found is None:
            return
        if not (bool(staged.points_found) if found is None else found):
            raise InputError(f'point cloud: no finite points project into the image within '
                             f'[{self.min_depth}, {self.max_depth}] m '
                             f'({point_count(staged.depth_msg)} points; '
                             'check the extrinsic and the depth range)')

    def stage(self, image_msg: Any, info_msg: Any, depth_msg: Any,
              depth_info_msg: Any = None, check_points: bool = True,
              shared_uploads: Optional[dict[int, Any]] = None) -> 'StagedFrame':
        """Everything of `process` before the model: converted, projected (and, on the host,
        checked for coverage) model inputs of one frame. Frames of several cameras staged
        alike can go through the model as one batch (`core.rig.RigCompleter`, which passes
        check_points=False and checks its frames' points with one synchronisation, and one
        `shared_uploads` dict per sweep so that a cloud the cameras share is uploaded once)."""
        if self.on_device:
            staged = self._stage_on_device(image_msg, info_msg, depth_msg, depth_info_msg,
                                           shared_uploads)
            if check_points:
                self.check_points(staged)
            return staged
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
                         depth_info_msg: Any = None,
                         shared_uploads: Optional[dict[int, Any]] = None) -> 'StagedFrame':
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
            cloud = (None if self.motion is not None or several_clouds(depth_msg)
                     else self._cloud_layout(depth_msg))
            host_depth = (message_bytes(depth_msg.data) if cloud is not None
                          else self._cloud_points(depth_msg, image_msg))
        else:
            host_depth = self._tof_depth(depth_msg)
        clock.mark('convert')
        rgb_t = self._staging.upload('rgb', rgb)
        depth_t = self._upload_depth(host_depth, depth_msg if cloud is not None else None,
                                     shared_uploads)
        clock.mark('h2d')
        points_found = None
        if self.depth_source == 'lidar':
            sparse_t = self._project_on_device(depth_t, cloud, camera, depth_msg)
            points_found = (sparse_t > 0).any()  # read later: no synchronisation here
        else:
            sparse_t = self._register_tof(depth_t, depth_info_msg, camera)
        sparse_t, held_out_t = self._hold_out(sparse_t, image_msg)
        clock.mark('project')
        return StagedFrame(on_device=True, rgb=rgb, camera=camera, depth_msg=depth_msg,
                           rgb_model=rgb_t, sparse_model=sparse_t, held_out=held_out_t,
                           clock=clock, points_found=points_found)

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
        check_output(int(finite_t), sparse.size)  # synchronised already by clock.seconds()
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
