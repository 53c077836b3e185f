"""A rig: several cameras around one or more LiDARs, completed together (ROS-free).

Names. A rig has cameras and LiDARs, each with a name; '' is the single unnamed camera or
LiDAR of the plain one-camera node. A named sensor's topics live under its name
(`sensor_topic`): camera `front` reads `front/image`, `front/camera_info` and publishes
`front/depth`, ...; LiDAR `top` reads `top/points`.

Extrinsics from parameters (`extrinsics_from_poses`): every named sensor has a pose
T_base_from_sensor in one base frame of the rig; an unnamed sensor is the base frame itself.
T_cam_from_lidar = inv(T_base_from_cam) @ T_base_from_lidar.

Batches (`SweepBatcher`): each camera pairs its image with the cloud(s) in its own matcher;
the newest matched set of each camera waits in a slot of one; sets that paired with the same
sweep leave together, so `RigCompleter` runs their model inputs through the network as one
batch (frames of one size share a forward pass).
"""
from __future__ import annotations

import time
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from cspn_ros.core.pipeline import CompletionPipeline


def sensor_topic(sensor: str, topic: str) -> str:
    """The relative topic of `sensor` ('' = the unnamed one: `topic` itself)."""
    return f'{sensor}/{topic}' if sensor else topic


def extrinsics_from_poses(poses: Mapping[str, np.ndarray], cameras: Sequence[str],
                          lidars: Sequence[str]) -> dict[tuple[str, str], np.ndarray]:
    """{(camera, lidar): T_cam_from_lidar (4,4)} from poses {name: T_base_from_sensor (4,4)}
    (a sensor without a pose, e.g. the unnamed one, is the base frame)."""
    def pose(name: str) -> np.ndarray:
        return np.asarray(poses.get(name, np.eye(4)), dtype=np.float64)
    return {(camera, lidar): np.linalg.inv(pose(camera)) @ pose(lidar)
            for camera in cameras for lidar in lidars}


class SweepBatcher:
    """The newest matched set per camera, handed out in batches of one sweep.

    cameras: the rig's camera names; sweep_topics: the matcher topics whose stamps identify a
    sweep (the cloud topics); wait_s: how long the first set of a sweep waits for the other
    cameras. A sweep's batch leaves once every camera either has its set for that sweep or
    already one for a later sweep (it will never pair with this one), or when wait_s has
    passed. A camera's set replaced by a newer one before leaving is counted in `dropped`.
    With one camera every set leaves at once (a drop-oldest queue of one).
    """

    def __init__(self, cameras: Sequence[str], sweep_topics: Sequence[str],
                 wait_s: float = 0.05) -> None:
        self.cameras = tuple(cameras)
        self.sweep_topics = tuple(sweep_topics)
        self.wait_s = float(wait_s)
        self.dropped = {camera: 0 for camera in self.cameras}
        self._slots: dict[str, tuple[tuple, Any, float]] = {}

    def sweep(self, matched: Any) -> tuple:
        """The sweep of a matched set: its stamps on the sweep topics."""
        return tuple(matched.stamps[topic] for topic in self.sweep_topics)

    def put(self, camera: str, matched: Any, now: float) -> None:
        """Keep `matched` (a core.sync.MatchedSet) as camera's newest set; now: monotonic s."""
        if camera in self._slots:
            self.dropped[camera] += 1
        self._slots[camera] = (self.sweep(matched), matched, now)

    def take(self, now: float) -> dict[str, Any]:
        """{camera: matched set} of the oldest sweep when its batch may leave, else {}."""
        if not self._slots:
            return {}
        oldest = min(sweep for sweep, _, _ in self._slots.values())
        batch = [camera for camera, (sweep, _, _) in self._slots.items() if sweep == oldest]
        complete = all(camera in self._slots for camera in self.cameras)
        first = min(self._slots[camera][2] for camera in batch)
        if not complete and now - first < self.wait_s:
            return {}
        return {camera: self._slots.pop(camera)[1] for camera in batch}

    def seconds_to_wait(self, now: float) -> Optional[float]:
        """Seconds until a waiting batch leaves anyway (None: nothing waits)."""
        if not self._slots:
            return None
        first = min(arrived for _, _, arrived in self._slots.values())
        return max(0.0, self.wait_s - (now - first))

    def clear(self) -> None:
        """Forget the waiting sets."""
        self._slots.clear()


def stamped_pose_base(cameras: Sequence[str], lidars: Sequence[str]) -> str:
    """Whose pose an odometry of geometry_msgs/PoseStamped (it names no body frame) gives: the
    rig's base, its unnamed sensor: 'camera' (one camera, with one LiDAR or several) or 'lidar'
    (several cameras around one LiDAR). ValueError when every sensor is named (the base is
    no sensor's frame: nav_msgs/Odometry names the body in child_frame_id)."""
    if tuple(cameras) == ('',):
        return 'camera'
    if tuple(lidars) == ('',):
        return 'lidar'
    raise ValueError('motion.odometry_type pose with named cameras and lidars: the pose is of '
                     "the rig's base, which is no sensor; use odometry (its child_frame_id "
                     'names the body)')


def after_out_of_memory(failures: int, require_gpu: bool) -> str:
    """What to do after the failures-th CUDA out-of-memory error on one batch (cache freed):
    'retry' the first time, then 'cpu' (fall back for good) or, with require_gpu, 'skip' the
    batch and stay on the GPU."""
    if failures <= 1:
        return 'retry'
    return 'skip' if require_gpu else 'cpu'


class RigCompleter:
    """Completes the frames of several cameras (one `CompletionPipeline` each, all sharing
    one completer) together: each frame is staged (converted, projected) by its pipeline,
    frames of one size go through `completer.complete_batch` as one batch, and each pipeline
    finishes its own frame. A bad frame fails alone. CUDA out of memory: the cache is freed
    and the batch retried, then (`after_out_of_memory`) the model moves to the CPU for good,
    or with require_gpu the batch is skipped.

    pipelines: {camera: pipeline}; log_warning(text): told about the move to the CPU.
    """

    def __init__(self, pipelines: Mapping[str, CompletionPipeline], require_gpu: bool = False,
                 log_warning: Callable[[str], None] = print) -> None:
        self.pipelines = dict(pipelines)
        self.require_gpu = require_gpu
        self._log_warning = log_warning

    @property
    def completer(self) -> Any:
        """The completer every pipeline runs."""
        return next(iter(self.pipelines.values())).completer

    def complete(self, frames: Mapping[str, tuple]) -> dict[str, Any]:
        """{camera: (image, camera_info, depth[, depth_info])} -> {camera: FrameResult, or the
        exception that failed that frame}; raises torch.cuda.OutOfMemoryError when a batch is
        skipped (require_gpu)."""
        import torch
        failures = 0
        while True:
            try:
                return self._complete_once(frames)
            except torch.cuda.OutOfMemoryError:
                failures += 1
                self.free_device_memory()
                action = after_out_of_memory(failures, self.require_gpu)
                if action == 'skip':
                    raise
                if action == 'cpu':
                    self._log_warning('CUDA out of memory twice on one frame: running on CPU '
                                      'from now on (set require_gpu to stay on the GPU)')
                    self.move_to_cpu()

    def _complete_once(self, frames: Mapping[str, tuple]) -> dict[str, Any]:
        import torch
        results: dict[str, Any] = {}
        staged = {}
        uploads: dict[int, Any] = {}  # the sweep's cloud, uploaded once for every camera
        for camera, messages in frames.items():
            try:
                staged[camera] = self.pipelines[camera].stage(*messages, check_points=False,
                                                              shared_uploads=uploads)
            except torch.cuda.OutOfMemoryError:
                raise
            except Exception as error:  # the pipeline's InputError, or a surprise: this frame
                results[camera] = error
        self._check_points(staged, results)
        groups: dict[tuple, list[str]] = {}
        for camera, frame in staged.items():
            groups.setdefault((frame.on_device, tuple(frame.sparse_model.shape)), []).append(
                camera)
        for cameras in groups.values():
            for camera in cameras:
                staged[camera].mark_batch_start()
            try:
                outputs = self.completer.complete_batch(
                    [staged[camera].rgb_model for camera in cameras],
                    [staged[camera].sparse_model for camera in cameras])
            except torch.cuda.OutOfMemoryError:
                raise
            except Exception as error:
                results.update({camera: error for camera in cameras})
                continue
            for camera, (depth, confidence) in zip(cameras, outputs):
                try:
                    results[camera] = self.pipelines[camera].finish(staged[camera], depth,
                                                                    confidence)
                except torch.cuda.OutOfMemoryError:
                    raise
                except Exception as error:
                    results[camera] = error
        return results

    def _check_points(self, staged: dict[str, Any], results: dict[str, Any]) -> None:
        """Move the staged frames without projected points from `staged` to `results` (their
        InputError), reading every frame's flag with one synchronisation."""
        import torch
        flagged = [camera for camera, frame in staged.items() if frame.points_found is not None]
        if not flagged:
            return
        found = torch.stack([staged[camera].points_found for camera in flagged]).tolist()
        for camera, present in zip(flagged, found):
            try:
                self.pipelines[camera].check_points(staged[camera], present)
            except Exception as error:
                results[camera] = error
                del staged[camera]

    def move_to_cpu(self) -> None:
        """Every pipeline runs the same model on the CPU from now on."""
        from cspn_ros.model.completer import DepthCompleter
        old = self.completer
        completer = DepthCompleter(old.config, old.model, 'cpu', old.precision, old.meta,
                                   channels_last=old.channels_last)
        for pipeline in self.pipelines.values():
            pipeline.completer = completer

    def free_device_memory(self) -> None:
        """Drop captured CUDA graphs and cached CUDA blocks (no-op on the CPU)."""
        import torch
        completer = self.completer
        if completer is not None and completer.cuda_graphs:
            completer.release_graphs()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def warm_up(self, height: int, width: int) -> float:
        """Run the model once on random height x width batches of one frame per camera, so
        the first frames are fast; with CUDA graphs also on every smaller batch (a sweep one
        camera missed), so each batch size is captured (and with compile, compiled) now and
        only replayed later. Returns the seconds it took."""
        start = time.perf_counter()
        cameras = len(self.pipelines)
        self.completer.warmup(height, width, batch=cameras)
        if getattr(self.completer, 'cuda_graphs', False):
            from cspn_ros.model.inference import MAX_CUDA_GRAPHS
            for batch in range(cameras - 1, max(0, cameras - MAX_CUDA_GRAPHS), -1):
                self.completer.warmup(height, width, iterations=1, batch=batch)
        return time.perf_counter() - start


class CameraChannel:
    """One camera's share of a completion node, ROS-free: its `pipeline`, `matcher` (its
    image and camera_info with the clouds or ToF depth), `self_check`, `diagnostics`, and the
    resolved input topic names (`topics`: matcher key -> topic, image first) they report.

    `depth_keys`: the matcher keys of the depth input, one per LiDAR (several are merged), or
    the ToF depth."""

    def __init__(self, name: str, pipeline: CompletionPipeline, matcher: Any, self_check: Any,
                 diagnostics: Any, topics: Mapping[str, str], depth_keys: Sequence[str]) -> None:
        self.name = name
        self.pipeline = pipeline
        self.matcher = matcher
        self.self_check = self_check
        self.diagnostics = diagnostics
        self.topics = dict(topics)
        self.depth_keys = tuple(depth_keys)
        self.frames_processed = 0
        self.last_batch = 0  # cameras completed with this one's last frame (itself included)
        self.images_skipped = 0  # reference images never taken (publisher sequence gaps)
        self.last_match = time.monotonic()
        self._last_sequence: dict[str, int] = {}

    def frame_messages(self, messages: Mapping[str, Any]) -> tuple:
        """A matched set's messages as `CompletionPipeline.process` arguments."""
        depth = [messages[key] for key in self.depth_keys]
        return (messages['image'], messages['camera_info'],
                depth[0] if len(depth) == 1 else depth, messages.get('tof/camera_info'))

    def count_skipped_images(self, publisher: str, sequence: Optional[int]) -> None:
        """Count images overwritten in DDS while the worker was busy (or lost in transport):
        gaps in their publisher's sequence numbers (where the RMW reports them)."""
        if sequence is None:
            return
        last = self._last_sequence.get(publisher)
        if last is not None and sequence > last + 1:
            self.images_skipped += sequence - last - 1
        self._last_sequence[publisher] = sequence
