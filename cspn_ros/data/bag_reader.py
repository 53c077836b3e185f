"""Reading rosbag2 files (sqlite3 or mcap) with `rosbags`: the pieces `bag_frames` builds on.

`BagTopics` names a rig's topics; `MessageRef` / `FrameRef` are the index entries of a paired
frame; `header_stamp_ns` reads a message's header stamp from its first CDR bytes without
deserialising it; `open_bag_reader` opens one bag (BagError when it cannot) and `bag_topics`
lists what it records; `transform_edges` / `chain_transform` compose tf2_msgs/TFMessage
transforms (/tf_static, /tf) into T_target_from_source.
"""
from __future__ import annotations

import dataclasses
import struct
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from cspn_ros.core.extrinsic import matrix_from_transform_msg
from cspn_ros.core.topics import BAG_TOPICS


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


def open_bag_reader(path: Path):
    """An open rosbags AnyReader of one bag (close it after use); BagError if unreadable."""
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore
    reader = AnyReader([path], default_typestore=get_typestore(Stores.LATEST))
    try:
        reader.open()
    except Exception as error:  # rosbags raises several unrelated types for unreadable bags
        raise BagError(f'{path}: cannot open bag: {error}') from error
    return reader


def bag_topics(path: str | Path) -> set[str]:
    """The topic names a bag records."""
    reader = open_bag_reader(Path(path))
    try:
        return {connection.topic for connection in reader.connections}
    finally:
        reader.close()
