"""Write rosbag2 files (sqlite3 or mcap) with the `rosbags` library: `BagWriter` for any rig's
frames, `write_synthetic_bag` for SyntheticScene frames.

A synthetic bag holds what a real rig records plus ground truth, on `BAG_TOPICS`
(core/topics.py), every message of a frame with the frame's header stamp (also used as the bag's
log time): image, camera_info, points and/or tof/depth + tof/camera_info, ground_truth/depth, the
camera odometry on /odom (nav_msgs/Odometry, 'odom' <- 'camera_optical', the scene's
`world_from_camera`) and, once, the sensors' extrinsics on /tf_static (tf2_msgs/TFMessage,
transient local): 'camera_optical' <- 'lidar' = T_cam_from_lidar and 'camera_optical' <-
'tof_optical' = T_cam_from_tof, i.e. p_cam = R p_sensor + t. Message fields come from the core
conversions, so a bag decodes exactly like live messages.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from cspn_ros.core.compressed import compressed_depth_fields, compressed_image_fields
from cspn_ros.core.conversions import depth_fields, image_fields, pointcloud2_fields
from cspn_ros.core.topics import BAG_TOPICS, FRAME_IDS, TF_STATIC_TOPIC, transport_topic
from cspn_ros.core.wire import MessageBuilder
from cspn_ros.data.synthetic import SyntheticScene

DEPTH_SOURCES = ('both', 'lidar', 'tof')
STORAGES = ('sqlite3', 'mcap')


class BagWriter(MessageBuilder):
    """A new rosbag2 directory `path` (must not exist) being written, as a context manager.

    Builds rosbags messages (ROS 2 Humble types) from the core's field dicts (the
    `core.wire.MessageBuilder` methods, as the live node does) and writes them with
    `write(topic, stamp_ns, message)`; a topic's connection is made on its first message
    (/tf_static with the latched, transient-local QoS that tf2 uses). storage: 'sqlite3' | 'mcap'.
    """

    def __init__(self, path: str | Path, storage: str = 'sqlite3') -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer
        from rosbags.typesys import Stores, get_typestore

        if storage not in STORAGES:
            raise ValueError(f'storage must be one of {STORAGES}, got {storage!r}')
        self.path = Path(path)
        self.store = get_typestore(Stores.ROS2_HUMBLE)
        super().__init__(self.store)
        plugin = StoragePlugin.MCAP if storage == 'mcap' else StoragePlugin.SQLITE3
        self._writer = Writer(self.path, version=8, storage_plugin=plugin)
        self._connections: dict[str, Any] = {}

    def __enter__(self) -> 'BagWriter':
        self._writer.open()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._writer.close()

    def write(self, topic: str, stamp_ns: int, message: Any) -> None:
        """Serialise `message` (built by this writer) onto `topic` at log time stamp_ns."""
        msgtype = message.__msgtype__
        if topic not in self._connections:
            latched = topic == TF_STATIC_TOPIC
            qos = {'offered_qos_profiles': [self._latched_qos()]} if latched else {}
            self._connections[topic] = self._writer.add_connection(topic, msgtype,
                                                                   typestore=self.store, **qos)
        self._writer.write(self._connections[topic], stamp_ns,
                           self.store.serialize_cdr(message, msgtype))

    @staticmethod
    def _latched_qos() -> Any:
        from rosbags.interfaces import (Qos, QosDurability, QosHistory, QosLiveliness,
                                        QosReliability, QosTime)
        return Qos(QosHistory.KEEP_LAST, 1, QosReliability.RELIABLE,
                   QosDurability.TRANSIENT_LOCAL, QosTime(0, 0), QosTime(0, 0),
                   QosLiveliness.AUTOMATIC, QosTime(0, 0), False)


def write_synthetic_bag(path: str | Path, storage: str = 'sqlite3', num_frames: int = 10,
                        depth_source: str = 'both', tof_encoding: str = '32FC1',
                        topics: Mapping[str, str] = BAG_TOPICS, colour_codec: str = 'raw',
                        tof_compressed: bool = False, cloud_in_camera_frame: bool = False,
                        odometry_hz: float = 0.0, **scene_kwargs: Any) -> Path:
    """Render frames 0 .. num_frames-1 of SyntheticScene(**scene_kwargs) into a new rosbag2
    directory `path` (must not exist) and return it.

    storage: 'sqlite3' | 'mcap'; depth_source: which sensors to record ('both', 'lidar' = points
    only, 'tof' = ToF depth + its CameraInfo only; /tf_static holds the recorded sensors'
    extrinsics); tof_encoding: '32FC1' (m, NaN invalid) or '16UC1' (mm, 0 invalid). Image,
    CameraInfo, ground truth and odometry are always recorded. topics: stream -> topic, keys as
    in BAG_TOPICS. colour_codec: 'raw' (sensor_msgs/Image) or 'jpeg' / 'png' (CompressedImage on
    `<image>/compressed` only, as image_transport records it); tof_compressed: the ToF depth as
    compressedDepth (png of tof_encoding) on `<tof depth>/compressedDepth` only;
    cloud_in_camera_frame: the LiDAR points moved into the camera optical frame and stamped
    with its frame id, and no LiDAR transform in /tf_static (no /tf_static at all without a
    ToF): a rig that publishes its cloud in the camera frame. A scene with `lidar_sweep_s` > 0
    (a sweep that takes time, e.g. with `platform_motion` [m/s, deg/s]) records a float32 'time'
    field per point, seconds relative to the cloud's stamp = the sweep's end = the image stamp
    (so negative; `core.motion`'s 'velodyne' layout). odometry_hz > 0: /odom at that rate from 0.2 s before the first frame to
    the last (what compensation needs), instead of one per frame.
    """
    if storage not in STORAGES:
        raise ValueError(f'storage must be one of {STORAGES}, got {storage!r}')
    if depth_source not in DEPTH_SOURCES:
        raise ValueError(f'depth_source must be one of {DEPTH_SOURCES}, got {depth_source!r}')
    if tof_encoding not in ('32FC1', '16UC1'):
        raise ValueError(f'tof_encoding must be 32FC1 or 16UC1, got {tof_encoding!r}')
    if colour_codec not in ('raw', 'jpeg', 'png'):
        raise ValueError(f"colour_codec must be 'raw', 'jpeg' or 'png', got {colour_codec!r}")
    if num_frames < 1:
        raise ValueError(f'num_frames must be >= 1, got {num_frames}')
    scene = SyntheticScene(**scene_kwargs)
    records_lidar = depth_source in ('both', 'lidar')
    records_tof = depth_source in ('both', 'tof')
    extrinsics = scene.sensor_extrinsics(lidar=records_lidar and not cloud_in_camera_frame,
                                         tof=records_tof)
    lidar_frame = FRAME_IDS['camera' if cloud_in_camera_frame else 'lidar']
    topics = dict(topics)
    if colour_codec != 'raw':
        topics['image'] = transport_topic(topics['image'], 'compressed')
    if tof_compressed:
        topics['tof_depth'] = transport_topic(topics['tof_depth'], 'compressedDepth')
    with BagWriter(path, storage) as bag:
        if extrinsics:
            bag.write(TF_STATIC_TOPIC, scene.start_stamp_ns, bag.tf_message(
                extrinsics, bag.header(scene.start_stamp_ns, FRAME_IDS['camera'])))
        for index in range(num_frames):
            frame = scene.frame(index)
            stamp = frame.stamp_ns
            camera_head = bag.header(stamp, FRAME_IDS['camera'])
            messages = {
                'image': (bag.image(image_fields(frame.rgb, 'rgb8'), camera_head)
                          if colour_codec == 'raw' else bag.compressed_image(
                              compressed_image_fields(frame.rgb, colour_codec), camera_head)),
                'camera_info': bag.camera_info(frame.camera, camera_head),
                'ground_truth': bag.image(depth_fields(frame.depth, '32FC1'), camera_head),
            }
            if odometry_hz <= 0:
                messages['odometry'] = bag.odometry(frame.T_world_from_cam,
                                                    bag.header(stamp, FRAME_IDS['odom']),
                                                    FRAME_IDS['camera'])
            if records_lidar:
                points = frame.lidar_points
                if cloud_in_camera_frame:
                    T = frame.T_cam_from_lidar
                    points = (points @ T[:3, :3].T + T[:3, 3]).astype(np.float32)
                extra = None if frame.lidar_times_ns is None else {
                    'time': ((frame.lidar_times_ns - stamp) / 1e9).astype(np.float32)}
                messages['points'] = bag.cloud(pointcloud2_fields(points, extra=extra),
                                               bag.header(stamp, lidar_frame))
            if records_tof:
                tof_head = bag.header(stamp, FRAME_IDS['tof'])
                messages['tof_depth'] = (
                    bag.compressed_image(compressed_depth_fields(frame.tof_depth, tof_encoding),
                                         tof_head) if tof_compressed
                    else bag.image(depth_fields(frame.tof_depth, tof_encoding), tof_head))
                messages['tof_camera_info'] = bag.camera_info(frame.tof_camera, tof_head)
            for key, msg in messages.items():
                bag.write(topics[key], stamp, msg)
        if odometry_hz > 0:
            first = -0.2
            for k in range(int((num_frames - 1) / scene.rate_hz * odometry_hz
                               - first * odometry_hz) + 1):
                time_s = first + k / odometry_hz
                stamp = scene.start_stamp_ns + round(time_s * 1e9)
                bag.write(topics['odometry'], stamp, bag.odometry(
                    scene.pose_at(time_s), bag.header(stamp, FRAME_IDS['odom']),
                    FRAME_IDS['camera']))
    return Path(path)
