"""Paired frames from rosbag2 files (sqlite3 or mcap, read with `rosbags`), lazily.

The same topics, matcher (`ApproximateTimeMatcher`) and conversion code (`CompletionPipeline.
prepare`) as the live node, so a training or evaluation frame is the frame the robot sees.

Opening a bag runs one index pass that keeps, per message, only its header stamp, log time and
connection id (the stamp is read from the first CDR bytes, nothing is deserialised); frames are
read back one at a time by log time, so bags larger than RAM work.

Extrinsics: `T_cam_from_sensor` maps sensor points into the colour optical frame, `p_cam = R
p_sensor + t`: tf's transform from the sensor frame into the camera frame (`lookup_transform(
camera_frame, sensor_frame)`). `sensor_extrinsic` reads it from the bag's /tf_static (then the
first sample of each /tf transform), composing chains, from the image header frame_id to the
depth message's header frame_id; a depth message in the image's own frame needs none
(identity). The --extrinsic-* flags that override it are `bag_arguments`'.

Compressed images: an image topic recorded only through image_transport (`<image>/compressed`
jpeg/png colour, `<depth>/compressedDepth` ToF) is found under its plain name and decoded by the
same conversions as the live node (`core.compressed`).
"""
from __future__ import annotations

import bisect
import logging
import math
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from cspn_ros.core.conversions import image_to_depth
from cspn_ros.core.extrinsic import same_frame
from cspn_ros.core.motion import MotionError, PoseTrack, body_from_sensor, pose_matrix
from cspn_ros.core.pipeline import CompletionPipeline, FrameInputs, InputError
from cspn_ros.core.sync import ApproximateTimeMatcher
from cspn_ros.core.topics import TF_STATIC_TOPIC, TF_TOPIC, recorded_topic
from cspn_ros.data.bag_reader import (BagError, BagTopics, FrameRef, MessageRef, chain_transform,
                                      header_stamp_ns, open_bag_reader, transform_edges)

LOGGER = logging.getLogger(__name__)
#: Poses read around a frame for motion compensation: from this long before its earliest
#: message stamp (a sweep stamped at its start) to this long after its image stamp.
MOTION_BEFORE_NS = 300_000_000
MOTION_AFTER_NS = 100_000_000


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
            self._readers[bag_index] = open_bag_reader(path or self.paths[bag_index])
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
