"""Training samples from paired bag frames (`bag_frames.BagFrames`) and their supervision.

`BagTrainingSamples` turns frames into supervised samples (dense / tof / lidar-holdout /
photometric); lidar-holdout can densify its targets with the neighbouring sweeps, moved into the
frame's camera with odometry. `ConcatenatedSamples` puts sample sets one after another (depth
source 'both'). `holdout_split` (also what `evaluate` holds points out with) and `nearest_depth`
are the supervision helpers.
"""
from __future__ import annotations

import bisect
import dataclasses
import logging
from typing import Callable, Optional, Sequence

import numpy as np

from cspn_ros.core.conversions import image_to_rgb, pointcloud2_to_xyz
from cspn_ros.core.pipeline import CompletionPipeline, FrameInputs, InputError
from cspn_ros.core.projection import project_to_sparse_depth
from cspn_ros.data.bag_frames import BagFrames
from cspn_ros.data.bag_reader import BagError

LOGGER = logging.getLogger(__name__)
SUPERVISIONS = ('dense', 'tof', 'lidar-holdout', 'photometric')


def holdout_split(sparse: np.ndarray, fraction: float,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Split valid depths (H,W) metres at random: (kept input, held-out `fraction` share)."""
    if not 0 < fraction < 1:
        raise ValueError(f'holdout fraction must be in (0, 1), got {fraction}')
    valid = np.flatnonzero(sparse > 0)
    held = rng.choice(valid, size=int(round(fraction * valid.size)), replace=False)
    held_out = np.zeros_like(sparse)
    held_out.flat[held] = sparse.flat[held]
    return np.where(held_out > 0, 0, sparse).astype(sparse.dtype), held_out


def nearest_depth(*depths: np.ndarray) -> np.ndarray:
    """Z-buffer merge of (H,W) sparse depth images (metres, 0 = none): the nearest per pixel."""
    stack = np.stack(depths)
    nearest = np.where(stack > 0, stack, np.inf).min(axis=0)
    return np.where(np.isfinite(nearest), nearest, 0).astype(np.float32)


@dataclasses.dataclass
class SupervisionOptions:
    """How targets are made. holdout_fraction: share of LiDAR points held out as targets;
    tof_input_points: ToF pixels fed as sparse input; pose_slop_s: largest stamp gap to a pose
    message; T_body_from_camera: camera pose in the pose topic's body frame (default identity:
    the pose topic tracks the camera optical frame); accumulate_sweeps (lidar-holdout, needs
    poses): the sweeps of this many previous and next frames of the same bag, moved into the
    frame's camera with the poses, add to the target (never to the input; pixels that hold an
    input point stay out of the target)."""

    supervision: str = 'dense'
    holdout_fraction: float = 0.2
    tof_input_points: int = 500
    pose_slop_s: float = 0.05
    T_body_from_camera: np.ndarray = dataclasses.field(default_factory=lambda: np.eye(4))
    accumulate_sweeps: int = 0


class BagTrainingSamples:
    """Training samples from BagFrames: dict(rgb, sparse, target, K[, source_rgbs,
    T_sources_from_target]) of numpy arrays (see data/augment.py), or None for a frame that
    cannot be used (logged with bag/topic/stamp; the trainer counts them).

    Randomness (holdout, ToF subset, augmentation) comes from (seed, epoch, index), so runs
    repeat exactly. The key is a position (in the epoch of `set_epoch`) or (epoch, position),
    as the trainer's DataLoader workers get it (`train.batching.EpochKeys`).
    """

    def __init__(self, frames: BagFrames, pipeline: CompletionPipeline,
                 options: SupervisionOptions = SupervisionOptions(),
                 indices: Optional[Sequence[int]] = None,
                 augment: Optional[Callable[[dict, np.random.Generator], dict]] = None,
                 seed: int = 0) -> None:
        if options.supervision not in SUPERVISIONS:
            raise ValueError(f'supervision must be one of {SUPERVISIONS}, '
                             f'got {options.supervision!r}')
        self.frames, self.pipeline, self.options = frames, pipeline, options
        self.augment, self.seed, self.epoch = augment, seed, 0
        self.indices = list(range(len(frames)) if indices is None else indices)
        self.frame_indices = frozenset(self.indices)
        self._check_mode()
        if options.supervision == 'photometric':  # frames need a neighbour on both sides
            self.indices = [i for i in self.indices if self._neighbours(i) is not None]
            if not self.indices:
                raise BagError('photometric supervision needs runs of 3 consecutive frames')

    def _check_mode(self) -> None:
        mode, topics = self.options.supervision, self.frames.topics
        sweeps = self.options.accumulate_sweeps
        if sweeps < 0 or (sweeps and mode != 'lidar-holdout'):
            raise ValueError(f'accumulate_sweeps ({sweeps}) must be >= 0 and needs supervision '
                             f"'lidar-holdout', not {mode!r}")
        if mode == 'dense' and not topics.ground_truth:
            raise ValueError("supervision 'dense' needs a ground-truth depth topic "
                             '(e.g. /ground_truth/depth)')
        if mode == 'tof' and self.pipeline.depth_source != 'tof':
            raise ValueError("supervision 'tof' needs depth_source 'tof'")
        if mode == 'lidar-holdout' and self.pipeline.depth_source != 'lidar':
            raise ValueError("supervision 'lidar-holdout' needs depth_source 'lidar'")
        needs_poses = ("supervision 'photometric'" if mode == 'photometric'
                       else f'accumulating {sweeps} neighbouring sweeps' if sweeps else None)
        if needs_poses and not any(self.frames.poses):
            raise BagError(
                f'{needs_poses} needs the relative pose between neighbouring frames, '
                'and the bag has no pose messages. Record odometry of the camera (nav_msgs/'
                'Odometry or geometry_msgs/PoseStamped, e.g. from wheel/visual-inertial '
                'odometry) and pass its topic (--pose-topic), with the camera-from-body '
                'extrinsic if the pose is not of the camera optical frame.')

    def set_epoch(self, epoch: int) -> None:
        """Select the random draws of this epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.indices)

    def _neighbours(self, index: int) -> Optional[tuple[int, int]]:
        frames = self.frames.frames
        if 0 < index < len(frames) - 1 and (
                frames[index - 1].bag_index == frames[index].bag_index
                == frames[index + 1].bag_index):
            return index - 1, index + 1
        return None

    def __getitem__(self, key: int | tuple[int, int]) -> Optional[dict]:
        epoch, position = key if isinstance(key, tuple) else (self.epoch, key)
        index = self.indices[position]
        frame = self.frames.frames[index]
        try:
            sample = self._sample(index, np.random.default_rng([self.seed, epoch, index]))
        except ValueError as error:  # BagError, InputError, ConversionError: a bad frame
            LOGGER.warning('skipping frame %d of %s (stamp %d ns): %s', index,
                           self.frames.paths[frame.bag_index], frame.stamp_ns, error)
            return None
        return sample

    def _sample(self, index: int, rng: np.random.Generator) -> dict:
        messages = self.frames.read(index)
        inputs = self.frames.prepare(self.pipeline, messages, index)
        sample = {'rgb': inputs.rgb, 'K': inputs.camera.camera_matrix.copy()}
        mode = self.options.supervision
        if mode == 'dense':
            sample['sparse'] = inputs.sparse
            sample['target'] = self.frames.ground_truth(messages, inputs.sparse.shape)
        elif mode == 'tof':
            valid = np.count_nonzero(inputs.sparse)
            fraction = min(self.options.tof_input_points / max(valid, 1), 0.5)
            sample['sparse'], _ = holdout_split(inputs.sparse, 1 - fraction, rng)
            sample['target'] = inputs.sparse
        elif mode == 'lidar-holdout':
            sample['sparse'], sample['target'] = holdout_split(
                inputs.sparse, self.options.holdout_fraction, rng)
            if self.options.accumulate_sweeps:
                accumulated = nearest_depth(sample['target'],
                                            *self._neighbour_sweeps(index, inputs))
                sample['target'] = np.where(sample['sparse'] > 0, 0, accumulated)
        else:
            sample['sparse'] = sample['target'] = inputs.sparse
            sample.update(self._sources(index, inputs))
        return self.augment(sample, rng) if self.augment else sample

    def _neighbour_sweeps(self, index: int, inputs: FrameInputs) -> list[np.ndarray]:
        """Sparse depth (H,W) metres in frame `index`'s camera of each sweep of the
        accumulate_sweeps frames before and after it in the same bag and in this sample set (a
        validation frame's sweep never supervises training): T_cam_i_from_sensor_j =
        inv(T_world_from_cam_i) @ T_world_from_cam_j @ T_cam_from_sensor, projected with the
        pipeline's z-buffer, depth range and occlusion filter."""
        frames, options, pipeline = self.frames, self.options, self.pipeline
        bag_index = frames.frames[index].bag_index
        T_world_from_cam_i = frames.camera_pose(index, options.pose_slop_s,
                                                options.T_body_from_camera)
        if T_world_from_cam_i is None:
            raise InputError(f'no {frames.topics.pose} message within {options.pose_slop_s} s '
                             f'of frame {index}')
        T_cam_i_from_world = np.linalg.inv(T_world_from_cam_i)
        sweeps = []
        reach = options.accumulate_sweeps
        for neighbour in range(max(0, index - reach), min(len(frames), index + reach + 1)):
            frame = frames.frames[neighbour]
            if (neighbour == index or frame.bag_index != bag_index
                    or neighbour not in self.frame_indices):
                continue
            T_world_from_cam_j = frames.camera_pose(neighbour, options.pose_slop_s,
                                                    options.T_body_from_camera)
            if T_world_from_cam_j is None:  # a gap in the odometry: that sweep is left out
                continue
            cloud = frames.read_message(bag_index, frames.topics.points,
                                        frame.messages[frames.topics.points])
            sweep = project_to_sparse_depth(
                pointcloud2_to_xyz(cloud),
                T_cam_i_from_world @ T_world_from_cam_j @ pipeline.T_cam_from_sensor,
                inputs.camera, pipeline.min_depth, pipeline.max_depth)
            sweeps.append(sweep if pipeline.occlusion is None else pipeline.occlusion(sweep))
        return sweeps

    def _sources(self, index: int, inputs: FrameInputs) -> dict:
        """Neighbouring views and their poses for the photometric loss."""
        options = self.options
        T_world_from_target = self.frames.camera_pose(index, options.pose_slop_s,
                                                      options.T_body_from_camera)
        rgbs, poses = [], []
        for neighbour in self._neighbours(index):
            T_world_from_source = self.frames.camera_pose(neighbour, options.pose_slop_s,
                                                          options.T_body_from_camera)
            if T_world_from_target is None or T_world_from_source is None:
                raise InputError(f'no {self.frames.topics.pose} message within '
                                 f'{options.pose_slop_s} s of frame {index} or {neighbour}')
            messages = self.frames.read(neighbour)
            rgb = image_to_rgb(messages[self.frames.topics.image])
            if rgb.shape != inputs.rgb.shape:
                raise InputError(f'neighbour frame {neighbour} is {rgb.shape}, frame {index} '
                                 f'is {inputs.rgb.shape}')
            rgbs.append(rgb)
            poses.append(np.linalg.inv(T_world_from_source) @ T_world_from_target)
        return {'source_rgbs': np.stack(rgbs), 'T_sources_from_target': np.stack(poses)}


class ConcatenatedSamples:
    """Sample sets one after another (the LiDAR-input and ToF-input samples of the same frames
    for depth source 'both'); `set_epoch` reaches every part."""

    def __init__(self, parts: Sequence[BagTrainingSamples]) -> None:
        self.parts = list(parts)
        self.ends = np.cumsum([len(part) for part in self.parts]).tolist()

    def set_epoch(self, epoch: int) -> None:
        """Select the random draws of this epoch in every part."""
        for part in self.parts:
            part.set_epoch(epoch)

    def __len__(self) -> int:
        return self.ends[-1] if self.ends else 0

    def __getitem__(self, key: int | tuple[int, int]) -> Optional[dict]:
        """key: a position or (epoch, position), as BagTrainingSamples takes it."""
        epoch, position = key if isinstance(key, tuple) else (None, key)
        if not 0 <= position < len(self):
            raise IndexError(f'sample {position} of {len(self)}')
        part = bisect.bisect_right(self.ends, position)
        position -= self.ends[part - 1] if part else 0
        return self.parts[part][position if epoch is None else (epoch, position)]
