"""Paired frames from rosbag2 files (sqlite3 or mcap, read with `rosbags`), lazily.

The same topics, matcher (`ApproximateTimeMatcher`) and conversion code (`CompletionPipeline.
prepare`) as the live node, so a training or evaluation frame is the frame the robot sees.

Opening a bag runs one index pass that keeps, per message, only its header stamp, log time and
connection id (the stamp is read from the first CDR bytes, nothing is deserialised); frames are
read back one at a time by log time, so bags larger than RAM work. `BagTrainingSamples` turns
frames into supervised samples (dense / tof / lidar-holdout / photometric); lidar-holdout can
densify its targets with the neighbouring sweeps, moved into the frame's camera with odometry.

Extrinsics: `T_cam_from_sensor` maps sensor points into the colour optical frame, `p_cam = R
p_sensor + t`: tf's transform from the sensor frame into the camera frame (`lookup_transform(
camera_frame, sensor_frame)`). Without --extrinsic-* flags it is read from the bag's /tf_static
(then the first sample of each /tf transform), composing chains, from the image header frame_id
to the depth message's header frame_id; a depth message in the image's own frame needs none
(identity).

Compressed images: an image topic recorded only through image_transport (`<image>/compressed`
jpeg/png colour, `<depth>/compressedDepth` ToF) is found under its plain name and decoded by the
same conversions as the live node (`core.compressed`).
"""
from __future__ import annotations

import argparse
import bisect
import dataclasses
import logging
import math
import os
import struct
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from cspn_ros.core.conversions import image_to_depth, image_to_rgb, pointcloud2_to_xyz
from cspn_ros.core.extrinsic import matrix_from_transform_msg, same_frame
from cspn_ros.core.motion import (DRIVER_TIME_FIELDS, MotionCompensation, MotionError,
                                  PoseTrack, body_from_sensor, parse_time_field, pose_matrix)
from cspn_ros.core.occlusion import OcclusionFilter
from cspn_ros.core.pipeline import CompletionPipeline, FrameInputs, InputError
from cspn_ros.core.projection import project_to_sparse_depth, transform_from_translation_quaternion
from cspn_ros.core.sync import ApproximateTimeMatcher
from cspn_ros.core.topics import BAG_TOPICS, TF_STATIC_TOPIC, TF_TOPIC, recorded_topic

LOGGER = logging.getLogger(__name__)
SUPERVISIONS = ('dense', 'tof', 'lidar-holdout', 'photometric')
#: depth sources of a pipeline; training also reads 'both' (each bag feeds the sources it records).
DEPTH_SOURCES = ('lidar', 'tof')
#: Poses read around a frame for motion compensation: from this long before its earliest
#: message stamp (a sweep stamped at its start) to this long after its image stamp.
MOTION_BEFORE_NS = 300_000_000
MOTION_AFTER_NS = 100_000_000


class BagError(ValueError):
    """A bag cannot be used: unreadable, corrupt, missing topics or no paired frames."""


@dataclasses.dataclass(frozen=True)
class BagTopics:
    """Topic names (defaults: core/topics.py BAG_TOPICS). `ground_truth`: dense target depth
    Image (32FC1 / 16UC1) in the colour camera; `pose`: nav_msgs/Odometry or
    geometry_msgs/PoseStamped of the camera, needed only for photometric supervision."""

    image: str = BAG_TOPICS['image']
    camera_info: str = BAG_TOPICS['camera_info']
    points: str = BAG_TOPICS['points']
    tof_depth: str = BAG_TOPICS['tof_depth']
    tof_camera_info: str = BAG_TOPICS['tof_camera_info']
    ground_truth: Optional[str] = None
    pose: Optional[str] = None

    def sensor(self, depth_source: str, tof_registered: bool = False) -> tuple[str, ...]:
        """The topics of one depth source ('lidar' or 'tof')."""
        if depth_source == 'lidar':
            return (self.points,)
        return (self.tof_depth,) if tof_registered else (self.tof_depth, self.tof_camera_info)

    def paired(self, depth_source: str, tof_registered: bool = False) -> tuple[str, ...]:
        """Topics the matcher pairs, the image (reference) first; depth_source 'lidar' or 'tof'."""
        ground_truth = (self.ground_truth,) if self.ground_truth else ()
        return (self.image, self.camera_info, *self.sensor(depth_source, tof_registered),
                *ground_truth)


def header_stamp_ns(raw: bytes) -> int:
    """Header stamp (ns) of a CDR-serialised message that starts with std_msgs/Header."""
    if len(raw) < 12 or raw[0] != 0 or raw[1] not in (0, 1):
        raise ValueError(f'not a CDR message with a header ({len(raw)} bytes)')
    sec, nanosec = struct.unpack('<iI' if raw[1] == 1 else '>iI', raw[4:12])
    return sec * 1_000_000_000 + nanosec


def transform_edges(tf_message: Any) -> list[tuple[str, str, np.ndarray]]:
    """(parent frame, child frame, T_parent_from_child (4,4)) of every transform in a
    tf2_msgs/TFMessage (leading '/' of frame ids dropped, as tf2 does)."""
    edges = []
    for stamped in tf_message.transforms:
        edges.append((stamped.header.frame_id.lstrip('/'), stamped.child_frame_id.lstrip('/'),
                      matrix_from_transform_msg(stamped)))
    return edges


def chain_transform(edges: Sequence[tuple[str, str, np.ndarray]], target: str,
                    source: str) -> Optional[np.ndarray]:
    """T_target_from_source (4,4): the tf edges (parent, child, T_parent_from_child), walked in
    either direction, composed along the shortest chain; None when no chain joins the frames."""
    neighbours: dict[str, list[tuple[str, np.ndarray]]] = {}
    for parent, child, T_parent_from_child in edges:
        neighbours.setdefault(parent, []).append((child, T_parent_from_child))
        neighbours.setdefault(child, []).append((parent, np.linalg.inv(T_parent_from_child)))
    T_target_from = {target: np.eye(4)}
    queue = [target]
    for frame in queue:  # breadth first; the list grows while it is walked
        if frame == source:
            return T_target_from[frame]
        for other, T_frame_from_other in neighbours.get(frame, []):
            if other not in T_target_from:
                T_target_from[other] = T_target_from[frame] @ T_frame_from_other
                queue.append(other)
    return None


@dataclasses.dataclass(frozen=True)
class MessageRef:
    """Where one message lies in a bag: connection id, log time and header stamp (ns)."""

    connection_id: int
    log_time_ns: int
    stamp_ns: int


@dataclasses.dataclass(frozen=True)
class FrameRef:
    """One paired frame: the bag it is in, its (image) stamp and one MessageRef per topic."""

    bag_index: int
    stamp_ns: int
    messages: dict[str, MessageRef]


def _open_reader(path: Path):
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore
    reader = AnyReader([path], default_typestore=get_typestore(Stores.LATEST))
    try:
        reader.open()
    except Exception as error:  # rosbags raises several unrelated types for unreadable bags
        raise BagError(f'{path}: cannot open bag: {error}') from error
    return reader


class BagFrames:
    """Lazy sequence of matched frames over one or more bags (in bag order, then stamp order).

    `frames[i]` is a FrameRef; `read(i)` deserialises its messages -> {topic: message};
    `prepare(i)` runs the pipeline's prepare on them. `skipped` counts index-time drops
    (unmatched, out-of-order, duplicate messages) per bag.
    """

    def __init__(self, paths: Sequence[str | Path], topics: BagTopics = BagTopics(),
                 depth_source: str = 'lidar', tof_registered: bool = False,
                 slop_s: float = 0.05, queue_size: int = 10) -> None:
        self.paths = [Path(p) for p in paths]
        if not self.paths:
            raise BagError('no bag given')
        self.topics = topics
        self.paired_topics = topics.paired(depth_source, tof_registered)
        self.frames: list[FrameRef] = []
        self.poses: list[list[MessageRef]] = []
        self.matcher_stats: list[dict[str, Any]] = []
        self._readers: dict[int, Any] = {}
        self._reader_pid = os.getpid()
        for bag_index, path in enumerate(self.paths):
            self._index(bag_index, path, slop_s, queue_size)
        self.close()  # reopened on the first read: DataLoader workers inherit no open files
        if not self.frames:
            raise BagError(f'no paired frames in {[str(p) for p in self.paths]} on topics '
                           f'{list(self.paired_topics)} (slop {slop_s} s); matcher stats: '
                           f'{self.matcher_stats}')

    def _index(self, bag_index: int, path: Path, slop_s: float, queue_size: int) -> None:
        reader = self._reader(bag_index, path)
        available = {c.topic: c.msgtype for c in reader.connections}
        # recorded topic -> the topic it stands for: an image recorded only through
        # image_transport (`<image>/compressed`, `<depth>/compressedDepth`) is found by its name
        logical = {recorded_topic(t, available) or t: t for t in self.paired_topics}
        logical.update({t: t for t in [self.topics.pose] if t})
        missing = [t for r, t in logical.items() if r not in available]
        if missing:
            raise BagError(f'{path}: topic(s) {missing} not in the bag (nor their '
                           '/compressed or /compressedDepth transports); it has '
                           + ', '.join(f'{t} [{m}]' for t, m in sorted(available.items())))
        for recorded, topic in logical.items():
            if recorded != topic:
                LOGGER.info('%s: %s read from %s', path, topic, recorded)
        matcher = ApproximateTimeMatcher(self.paired_topics, slop_s, queue_size)
        connections = [c for c in reader.connections if c.topic in logical]
        poses: list[MessageRef] = []
        log_time = None
        try:
            for connection, log_time, raw in reader.messages(connections=connections):
                try:
                    ref = MessageRef(connection.id, log_time, header_stamp_ns(raw))
                except ValueError as error:
                    raise BagError(f'{path}: {connection.topic} message logged at {log_time} ns: '
                                   f'{error}') from error
                topic = logical[connection.topic]
                if topic == self.topics.pose:
                    poses.append(ref)
                    continue
                for matched in matcher.add(topic, ref.stamp_ns, ref):
                    self.frames.append(FrameRef(bag_index, matched.stamp_ns, matched.messages))
        except BagError:
            raise
        except Exception as error:  # corrupt chunk / database page: name where it happened
            after = f'after log time {log_time} ns' if log_time is not None else 'at the start'
            raise BagError(f'{path}: corrupt or unreadable data {after}: '
                           f'{type(error).__name__}: {error}') from error
        self.poses.append(sorted(poses, key=lambda r: r.stamp_ns))
        self.matcher_stats.append(matcher.stats)

    def _reader(self, bag_index: int, path: Optional[Path] = None):
        """This process's open reader of one bag (DataLoader workers open their own)."""
        if self._reader_pid != os.getpid():
            self._readers, self._reader_pid = {}, os.getpid()
        if bag_index not in self._readers:
            self._readers[bag_index] = _open_reader(path or self.paths[bag_index])
        return self._readers[bag_index]

    def __getstate__(self) -> dict:
        return {**self.__dict__, '_readers': {}}

    def close(self) -> None:
        """Close the open readers (they reopen on the next read)."""
        for reader in self._readers.values():
            reader.close()
        self._readers = {}

    def __len__(self) -> int:
        return len(self.frames)

    def validation_split(self, fraction: float) -> tuple[list[int], list[int]]:
        """(training, validation) frame indices: the last ceil(n * fraction) frames of each
        bag of n >= 2 frames are validation, so every recording (scene, sensor, rig) is
        validated on frames it did not train on; with one bag, its last frames."""
        by_bag: dict[int, list[int]] = {}
        for index, frame in enumerate(self.frames):
            by_bag.setdefault(frame.bag_index, []).append(index)
        training, validation = [], []
        for indices in by_bag.values():
            count = (math.ceil(len(indices) * fraction)
                     if len(indices) >= 2 and fraction > 0 else 0)
            training += indices[:len(indices) - count]
            validation += indices[len(indices) - count:]
        return training, validation

    def read_message(self, bag_index: int, topic: str, ref: MessageRef) -> Any:
        """Deserialise one indexed message; BagError names bag, topic and stamp on failure."""
        reader = self._reader(bag_index)
        path = self.paths[bag_index]
        try:
            connection = next(c for c in reader.connections if c.id == ref.connection_id)
            for _, _, raw in reader.messages(connections=[connection], start=ref.log_time_ns,
                                             stop=ref.log_time_ns + 1):
                if header_stamp_ns(raw) == ref.stamp_ns:
                    return reader.deserialize(raw, connection.msgtype)
        except Exception as error:
            raise BagError(f'{path}: cannot read {topic} message stamped {ref.stamp_ns} ns: '
                           f'{type(error).__name__}: {error}') from error
        raise BagError(f'{path}: {topic} message stamped {ref.stamp_ns} ns vanished from the bag')

    def read(self, index: int) -> dict[str, Any]:
        """The messages of frame `index`: {topic: deserialised message}."""
        frame = self.frames[index]
        return {topic: self.read_message(frame.bag_index, topic, ref)
                for topic, ref in frame.messages.items()}

    def lookup_transform(self, bag_index: int, target: str, source: str
                         ) -> tuple[Optional[np.ndarray], str]:
        """(T_target_from_source (4,4) or None, where it came from) from one bag's /tf_static,
        then the first sample of each /tf transform (read only until the chain is complete)."""
        reader = self._reader(bag_index)
        edges: dict[tuple[str, str], np.ndarray] = {}
        for topic in (TF_STATIC_TOPIC, TF_TOPIC):
            connections = [c for c in reader.connections if c.topic == topic]
            if not connections:
                continue
            try:
                for connection, _, raw in reader.messages(connections=connections):
                    message = reader.deserialize(raw, connection.msgtype)
                    for parent, child, T in transform_edges(message):
                        edges.setdefault((parent, child), T)
                    if topic == TF_TOPIC and self._chain(edges, target, source) is not None:
                        break
            except Exception as error:
                raise BagError(f'{self.paths[bag_index]}: cannot read {topic}: '
                               f'{type(error).__name__}: {error}') from error
            T = self._chain(edges, target, source)
            if T is not None:
                return T, topic
        frames = sorted({frame for pair in edges for frame in pair})
        return None, f'tf frames in the bag: {frames}'

    @staticmethod
    def _chain(edges: dict[tuple[str, str], np.ndarray], target: str,
               source: str) -> Optional[np.ndarray]:
        return chain_transform([(p, c, T) for (p, c), T in edges.items()], target, source)

    def sensor_extrinsic(self, depth_source: str) -> np.ndarray:
        """T_cam_from_sensor (4,4) of 'lidar' or 'tof' from the bags' tf: from the depth
        message's header frame_id into the image's. BagError naming the frames when a bag has
        no such transform or the bags disagree."""
        depth_topic = self.topics.points if depth_source == 'lidar' else self.topics.tof_depth
        extrinsic = None
        for bag_index, path in enumerate(self.paths):
            frame = next((f for f in self.frames if f.bag_index == bag_index), None)
            if frame is None:
                continue
            camera, sensor = (
                self.read_message(bag_index, topic, frame.messages[topic]).header.frame_id
                .lstrip('/') for topic in (self.topics.image, depth_topic))
            if not camera or not sensor:
                raise BagError(f'{path}: {self.topics.image} or {depth_topic} has an empty '
                               'header frame_id, so the extrinsic cannot be looked up in tf; '
                               'pass --extrinsic-translation and --extrinsic-rotation')
            T, origin = ((np.eye(4), 'the same frame (no tf needed)')
                         if same_frame(camera, sensor)
                         else self.lookup_transform(bag_index, camera, sensor))
            if T is None:
                raise BagError(
                    f'{path}: no extrinsic {camera!r} <- {sensor!r} ({depth_topic} into '
                    f'{self.topics.image}): no transform chain in {TF_STATIC_TOPIC} or '
                    f'{TF_TOPIC} ({origin}). Record the static transforms or pass '
                    '--extrinsic-translation X Y Z --extrinsic-rotation QX QY QZ QW (the sensor '
                    'frame in the camera optical frame: p_cam = R p_sensor + t)')
            LOGGER.info('%s: extrinsic %s <- %s from %s', path, camera, sensor, origin)
            if extrinsic is not None and not np.allclose(T, extrinsic, atol=1e-6):
                raise BagError(f'{path}: extrinsic {camera!r} <- {sensor!r} differs from the '
                               f'one in {self.paths[0]}; give bags of one rig per run')
            extrinsic = T
        return extrinsic

    def pipeline_arguments(self, messages: dict[str, Any], depth_source: str) -> tuple:
        """(image, camera_info, depth, depth_info | None): what `CompletionPipeline.prepare` /
        `.process` take, from a frame's messages."""
        depth_topic = self.topics.points if depth_source == 'lidar' else self.topics.tof_depth
        return (messages[self.topics.image], messages[self.topics.camera_info],
                messages[depth_topic], messages.get(self.topics.tof_camera_info))

    def prepare(self, pipeline: CompletionPipeline, messages: dict[str, Any],
                index: Optional[int] = None) -> FrameInputs:
        """pipeline.prepare on the messages of frame `index` (the node's convert + project);
        with motion compensation its pose track is first filled from the pose topic around the
        frame (`index` needed then)."""
        if pipeline.motion is not None:
            if index is None:
                raise ValueError('motion compensation needs the frame index')
            pipeline.motion.track = self.pose_track(index)
        return pipeline.prepare(*self.pipeline_arguments(messages, pipeline.depth_source))

    def pose_track(self, index: int, before_ns: int = MOTION_BEFORE_NS,
                   after_ns: int = MOTION_AFTER_NS) -> PoseTrack:
        """The pose topic's T_world_from_body samples from before_ns before the earliest stamp
        of frame `index` to after_ns after its image stamp, as a PoseTrack."""
        frame = self.frames[index]
        first = min(ref.stamp_ns for ref in frame.messages.values()) - before_ns
        last = frame.stamp_ns + after_ns
        poses = self.poses[frame.bag_index]
        stamps = [p.stamp_ns for p in poses]
        track = PoseTrack()
        for ref in poses[bisect.bisect_left(stamps, first):bisect.bisect_right(stamps, last)]:
            track.add(ref.stamp_ns, pose_matrix(self.read_message(frame.bag_index,
                                                                  self.topics.pose, ref)))
        return track

    def motion_body_extrinsic(self, T_cam_from_sensor: np.ndarray) -> np.ndarray:
        """T_body_from_sensor (4,4) for compensation (`core.motion.body_from_sensor`: the pose
        topic's body frame, an Odometry's child_frame_id, <- the LiDAR frame), from the first
        frame's frame ids and the bags' tf."""
        frame = self.frames[0]
        pose_ref = next(iter(self.poses[frame.bag_index]), None)
        if pose_ref is None:
            raise BagError(f'{self.paths[frame.bag_index]}: no {self.topics.pose} message for '
                           'motion compensation')
        messages = self.read(0)
        body = getattr(self.read_message(frame.bag_index, self.topics.pose, pose_ref),
                       'child_frame_id', '')
        try:
            return body_from_sensor(
                body, messages[self.topics.image].header.frame_id,
                messages[self.topics.points].header.frame_id, T_cam_from_sensor,
                lambda target, source: self.lookup_transform(frame.bag_index, target, source)[0])
        except MotionError as error:
            raise BagError(f'{self.paths[frame.bag_index]}: motion compensation: '
                           f'{error}') from error

    def ground_truth(self, messages: dict[str, Any], shape: tuple[int, int]) -> np.ndarray:
        """The ground-truth depth (H,W) metres of a frame; InputError if its size differs."""
        depth = image_to_depth(messages[self.topics.ground_truth])
        if depth.shape != tuple(shape):
            raise InputError(f'{self.topics.ground_truth}: ground truth is {depth.shape[1]}x'
                             f'{depth.shape[0]} but the image is {shape[1]}x{shape[0]}')
        return depth

    def camera_pose(self, index: int, slop_s: float,
                    T_body_from_camera: np.ndarray) -> Optional[np.ndarray]:
        """T_world_from_camera (4,4) at frame `index` from the nearest pose message within
        slop_s, or None. The pose topic gives T_world_from_body."""
        frame = self.frames[index]
        poses = self.poses[frame.bag_index]
        stamps = [p.stamp_ns for p in poses]
        position = bisect.bisect_left(stamps, frame.stamp_ns)
        candidates = [p for p in poses[max(0, position - 1):position + 1]
                      if abs(p.stamp_ns - frame.stamp_ns) <= slop_s * 1e9]
        if not candidates:
            return None
        best = min(candidates, key=lambda p: abs(p.stamp_ns - frame.stamp_ns))
        msg = self.read_message(frame.bag_index, self.topics.pose, best)
        return pose_matrix(msg) @ T_body_from_camera



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
    as the trainer's DataLoader workers get it (`train.trainer.EpochKeys`).
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


def add_bag_arguments(parser: argparse.ArgumentParser,
                      depth_sources: Sequence[str] = DEPTH_SOURCES) -> None:
    """Topic, pairing and projection options shared by `evaluate` and `training_node`; names
    and defaults are the completion node's parameters. depth_sources: the --depth-source
    choices (training also takes 'both')."""
    group = parser.add_argument_group('bag topics and projection (as the completion node)')
    defaults = BagTopics()
    group.add_argument('--image-topic', default=defaults.image)
    group.add_argument('--camera-info-topic', default=defaults.camera_info)
    group.add_argument('--points-topic', default=defaults.points)
    group.add_argument('--tof-depth-topic', default=defaults.tof_depth)
    group.add_argument('--tof-camera-info-topic', default=defaults.tof_camera_info)
    group.add_argument('--depth-source', choices=tuple(depth_sources), default='lidar')
    group.add_argument('--tof-registered', action='store_true',
                       help='the ToF depth is already in the colour camera')
    extrinsic = ('the sensor frame in the camera optical frame (p_cam = R p_sensor + t); '
                 "default: looked up in the bag's /tf_static or /tf")
    group.add_argument('--extrinsic-translation', type=float, nargs=3, default=None,
                       metavar=('X', 'Y', 'Z'), help=f'metres; {extrinsic}')
    group.add_argument('--extrinsic-rotation', type=float, nargs=4, default=None,
                       metavar=('QX', 'QY', 'QZ', 'QW'), help=f'quaternion; {extrinsic}')
    group.add_argument('--motion-topic', default='',
                       help='odometry (nav_msgs/Odometry or PoseStamped) of the platform: every '
                       "LiDAR point is moved to the image's stamp (motion compensation, "
                       'README "Moving LiDAR"); default: none')
    group.add_argument('--lidar-time-field', default='velodyne',
                       help='per-point time of the cloud for --motion-topic: a driver ('
                       + ', '.join(DRIVER_TIME_FIELDS) + ') or NAME[:UNIT[:REFERENCE]] '
                       "(unit s/ms/us/ns, reference relative/absolute); default %(default)s")
    group.add_argument('--slop', type=float, default=0.05, help='pairing slop, seconds')
    group.add_argument('--queue-size', type=int, default=10)
    group.add_argument('--min-depth', type=float, default=0.1, help='metres')
    group.add_argument('--max-depth', type=float, default=100.0, help='metres')
    occlusion = OcclusionFilter()
    group.add_argument('--no-occlusion-filter', dest='occlusion_filter', action='store_false',
                       help='keep LiDAR points the camera cannot see (the filter is on by default)')
    group.add_argument('--occlusion-window', type=int, default=occlusion.window,
                       help='occlusion filter: pixels searched around a point')
    group.add_argument('--occlusion-min-gap', type=float, default=occlusion.min_gap,
                       help='occlusion filter: relative depth gap of a nearer neighbour')
    group.add_argument('--occlusion-min-quadrants', type=int, default=occlusion.min_quadrants,
                       help='occlusion filter: quadrants with nearer points that drop a point')


def _extrinsic(args: argparse.Namespace, frames: BagFrames, depth_source: str) -> np.ndarray:
    """T_cam_from_sensor: the --extrinsic-* flags when given (a missing one is the identity),
    else the bags' tf; identity for ToF depth already registered to the colour camera."""
    if depth_source == 'tof' and args.tof_registered:
        return np.eye(4)
    if args.extrinsic_translation is not None or args.extrinsic_rotation is not None:
        LOGGER.info('extrinsic of the %s from --extrinsic-translation/--extrinsic-rotation',
                    depth_source)
        return transform_from_translation_quaternion(
            args.extrinsic_translation or [0.0, 0.0, 0.0],
            args.extrinsic_rotation or [0.0, 0.0, 0.0, 1.0])
    return frames.sensor_extrinsic(depth_source)


def _occlusion_filter(args: argparse.Namespace, depth_source: str) -> Optional[OcclusionFilter]:
    """The --occlusion-* filter for LiDAR input (None for ToF or --no-occlusion-filter)."""
    if depth_source != 'lidar' or not args.occlusion_filter:
        return None
    return OcclusionFilter(args.occlusion_window, args.occlusion_min_gap,
                           args.occlusion_min_quadrants)


def bag_topics(path: str | Path) -> set[str]:
    """The topic names a bag records."""
    reader = _open_reader(Path(path))
    try:
        return {connection.topic for connection in reader.connections}
    finally:
        reader.close()


def frames_from_args(args: argparse.Namespace, paths: Sequence[str | Path],
                     ground_truth: Optional[str] = None, pose: Optional[str] = None
                     ) -> dict[str, tuple[BagFrames, dict[str, Any]]]:
    """Per depth source: the BagFrames of the parsed `add_bag_arguments` options and the
    CompletionPipeline keyword arguments (all but the completer, extrinsic included).

    One source ('lidar' | 'tof'): every bag must record it. With --depth-source both, each bag
    feeds every source whose topics it records (an outdoor bag without a ToF feeds only
    'lidar'); both extrinsics then come from the bags' tf.
    """
    motion_topic = getattr(args, 'motion_topic', '')
    if pose and motion_topic and pose != motion_topic:
        raise ValueError(f'--motion-topic {motion_topic} and the pose topic {pose} differ: '
                         'give one odometry')
    topics = BagTopics(args.image_topic, args.camera_info_topic, args.points_topic,
                       args.tof_depth_topic, args.tof_camera_info_topic, ground_truth,
                       pose or motion_topic or None)
    both = args.depth_source == 'both'
    if both and (args.extrinsic_translation is not None or args.extrinsic_rotation is not None):
        raise ValueError("--depth-source both reads both extrinsics from the bag's tf; "
                         '--extrinsic-translation/--extrinsic-rotation describe one sensor')
    recorded = {str(path): bag_topics(path) for path in paths} if both else {}
    result = {}
    for source in DEPTH_SOURCES if both else (args.depth_source,):
        wanted = topics.sensor(source, args.tof_registered)
        source_paths = ([p for p in paths
                         if all(recorded_topic(t, recorded[str(p)]) for t in wanted)]
                        if both else list(paths))
        if not source_paths:
            continue
        frames = BagFrames(source_paths, topics, source, args.tof_registered, args.slop,
                           args.queue_size)
        options = {'depth_source': source, 'T_cam_from_sensor': _extrinsic(args, frames, source),
                   'min_depth': args.min_depth, 'max_depth': args.max_depth,
                   'tof_registered': args.tof_registered,
                   'occlusion': _occlusion_filter(args, source)}
        if motion_topic and source == 'lidar':
            options['motion'] = MotionCompensation(
                parse_time_field(args.lidar_time_field),
                T_body_from_sensor=frames.motion_body_extrinsic(options['T_cam_from_sensor']))
        result[source] = (frames, options)
    if not result:
        raise BagError(f'none of {[str(p) for p in paths]} records a LiDAR ({topics.points}) '
                       f'or ToF ({topics.tof_depth}) topic')
    return result
