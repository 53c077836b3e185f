"""Write SyntheticScene frames to a rosbag2 (sqlite3 or mcap) with the `rosbags` library.

The bag holds what a real rig records plus ground truth, on `BAG_TOPICS` (core/topics.py), every
message of a frame with the frame's header stamp (also used as the bag's log time):
image, camera_info, points and/or tof/depth + tof/camera_info, ground_truth/depth, the camera
odometry on /odom (nav_msgs/Odometry, 'odom' <- 'camera_optical', the scene's
`world_from_camera`) and, once, the sensors' extrinsics on /tf_static (tf2_msgs/TFMessage,
transient local): 'camera_optical' <- 'lidar' = T_cam_from_lidar and 'camera_optical' <-
'tof_optical' = T_cam_from_tof, i.e. p_cam = R p_sensor + t. Message fields come from the core
conversions, so a bag decodes exactly like live messages.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from cspn_ros.core.camera import PinholeCamera, camera_info_fields
from cspn_ros.core.conversions import depth_fields, image_fields, pointcloud2_fields
from cspn_ros.core.topics import BAG_TOPICS, FRAME_IDS, TF_STATIC_TOPIC
from cspn_ros.data.synthetic import SyntheticScene

DEPTH_SOURCES = ('both', 'lidar', 'tof')
STORAGES = ('sqlite3', 'mcap')

_IMAGE = 'sensor_msgs/msg/Image'
_CAMERA_INFO = 'sensor_msgs/msg/CameraInfo'
_POINTS = 'sensor_msgs/msg/PointCloud2'
_ODOMETRY = 'nav_msgs/msg/Odometry'
_TF = 'tf2_msgs/msg/TFMessage'


def quaternion_from_rotation(rotation: np.ndarray) -> np.ndarray:
    """(3,3) rotation matrix -> unit quaternion [qx, qy, qz, qw] float64 (qw >= 0)."""
    m = np.asarray(rotation, dtype=np.float64)
    # The largest of 4 q_i^2 (from the trace and the diagonal) gives a well-conditioned divisor.
    squares = np.array([1 + m[0, 0] - m[1, 1] - m[2, 2], 1 - m[0, 0] + m[1, 1] - m[2, 2],
                        1 - m[0, 0] - m[1, 1] + m[2, 2], 1 + np.trace(m)])
    largest = int(np.argmax(squares))
    q = np.empty(4)
    q[largest] = 0.5 * np.sqrt(squares[largest])
    d = 0.25 / q[largest]
    off = {0: (m[1, 0] + m[0, 1], m[0, 2] + m[2, 0], m[2, 1] - m[1, 2]),
           1: (m[1, 0] + m[0, 1], m[2, 1] + m[1, 2], m[0, 2] - m[2, 0]),
           2: (m[0, 2] + m[2, 0], m[2, 1] + m[1, 2], m[1, 0] - m[0, 1]),
           3: (m[2, 1] - m[1, 2], m[0, 2] - m[2, 0], m[1, 0] - m[0, 1])}[largest]
    q[[i for i in range(4) if i != largest]] = np.array(off) * d
    q /= np.linalg.norm(q)
    return -q if q[3] < 0 else q


def write_synthetic_bag(path: str | Path, storage: str = 'sqlite3', num_frames: int = 10,
                        depth_source: str = 'both', tof_encoding: str = '32FC1',
                        topics: Mapping[str, str] = BAG_TOPICS, **scene_kwargs: Any) -> Path:
    """Render frames 0 .. num_frames-1 of SyntheticScene(**scene_kwargs) into a new rosbag2
    directory `path` (must not exist) and return it.

    storage: 'sqlite3' | 'mcap'; depth_source: which sensors to record ('both', 'lidar' = points
    only, 'tof' = ToF depth + its CameraInfo only; /tf_static holds the recorded sensors'
    extrinsics); tof_encoding: '32FC1' (m, NaN invalid) or '16UC1' (mm, 0 invalid). Image,
    CameraInfo, ground truth and odometry are always recorded. topics: stream -> topic, keys as
    in BAG_TOPICS.
    """
    from rosbags.interfaces import (Qos, QosDurability, QosHistory, QosLiveliness,
                                    QosReliability, QosTime)
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    if storage not in STORAGES:
        raise ValueError(f'storage must be one of {STORAGES}, got {storage!r}')
    if depth_source not in DEPTH_SOURCES:
        raise ValueError(f'depth_source must be one of {DEPTH_SOURCES}, got {depth_source!r}')
    if tof_encoding not in ('32FC1', '16UC1'):
        raise ValueError(f'tof_encoding must be 32FC1 or 16UC1, got {tof_encoding!r}')
    if num_frames < 1:
        raise ValueError(f'num_frames must be >= 1, got {num_frames}')
    path = Path(path)
    scene = SyntheticScene(**scene_kwargs)
    store = get_typestore(Stores.ROS2_HUMBLE)
    types = store.types
    streams = {'image': _IMAGE, 'camera_info': _CAMERA_INFO, 'ground_truth': _IMAGE,
               'odometry': _ODOMETRY}
    extrinsics = {}  # child frame -> T_cam_from_child
    if depth_source in ('both', 'lidar'):
        streams['points'] = _POINTS
        extrinsics[FRAME_IDS['lidar']] = scene.T_cam_from_lidar
    if depth_source in ('both', 'tof'):
        streams.update(tof_depth=_IMAGE, tof_camera_info=_CAMERA_INFO)
        extrinsics[FRAME_IDS['tof']] = scene.T_cam_from_tof

    def header(stamp_ns: int, frame_id: str) -> Any:
        stamp = types['builtin_interfaces/msg/Time'](sec=stamp_ns // 10**9,
                                                      nanosec=stamp_ns % 10**9)
        return types['std_msgs/msg/Header'](stamp=stamp, frame_id=frame_id)

    def image(fields: dict, head: Any) -> Any:
        return types[_IMAGE](header=head, **fields)

    def camera_info(camera: PinholeCamera, head: Any) -> Any:
        roi = types['sensor_msgs/msg/RegionOfInterest'](x_offset=0, y_offset=0, height=0,
                                                        width=0, do_rectify=False)
        return types[_CAMERA_INFO](header=head, roi=roi, **camera_info_fields(camera))

    def cloud(fields: dict, head: Any) -> Any:
        point_fields = [types['sensor_msgs/msg/PointField'](**f) for f in fields['fields']]
        return types[_POINTS](header=head, **{**fields, 'fields': point_fields})

    def vector(values: np.ndarray, kind: str) -> Any:
        return types[f'geometry_msgs/msg/{kind}'](*(float(v) for v in values))

    def transform(T: np.ndarray, head: Any, child: str) -> Any:
        return types['geometry_msgs/msg/TransformStamped'](
            header=head, child_frame_id=child, transform=types['geometry_msgs/msg/Transform'](
                translation=vector(T[:3, 3], 'Vector3'),
                rotation=vector(quaternion_from_rotation(T[:3, :3]), 'Quaternion')))

    def odometry(T_world_from_cam: np.ndarray, head: Any) -> Any:
        pose = types['geometry_msgs/msg/Pose'](
            position=vector(T_world_from_cam[:3, 3], 'Point'),
            orientation=vector(quaternion_from_rotation(T_world_from_cam[:3, :3]), 'Quaternion'))
        zero = vector(np.zeros(3), 'Vector3')
        return types[_ODOMETRY](
            header=head, child_frame_id=FRAME_IDS['camera'],
            pose=types['geometry_msgs/msg/PoseWithCovariance'](pose=pose,
                                                               covariance=np.zeros(36)),
            twist=types['geometry_msgs/msg/TwistWithCovariance'](
                twist=types['geometry_msgs/msg/Twist'](linear=zero, angular=zero),
                covariance=np.zeros(36)))

    latched = Qos(QosHistory.KEEP_LAST, 1, QosReliability.RELIABLE,
                  QosDurability.TRANSIENT_LOCAL, QosTime(0, 0), QosTime(0, 0),
                  QosLiveliness.AUTOMATIC, QosTime(0, 0), False)
    plugin = StoragePlugin.MCAP if storage == 'mcap' else StoragePlugin.SQLITE3
    with Writer(path, version=8, storage_plugin=plugin) as writer:
        connections = {key: writer.add_connection(topics[key], msgtype, typestore=store)
                       for key, msgtype in streams.items()}
        tf_static = writer.add_connection(TF_STATIC_TOPIC, _TF, typestore=store,
                                          offered_qos_profiles=[latched])
        camera_frame = header(scene.start_stamp_ns, FRAME_IDS['camera'])  # frame 0's stamp
        writer.write(tf_static, scene.start_stamp_ns, store.serialize_cdr(types[_TF](transforms=[
            transform(T, camera_frame, child) for child, T in extrinsics.items()]), _TF))
        for index in range(num_frames):
            frame = scene.frame(index)
            stamp = frame.stamp_ns
            camera_head = header(stamp, FRAME_IDS['camera'])
            messages = {
                'image': image(image_fields(frame.rgb, 'rgb8'), camera_head),
                'camera_info': camera_info(frame.camera, camera_head),
                'ground_truth': image(depth_fields(frame.depth, '32FC1'), camera_head),
                'odometry': odometry(frame.T_world_from_cam, header(stamp, FRAME_IDS['odom'])),
            }
            if 'points' in streams:
                messages['points'] = cloud(pointcloud2_fields(frame.lidar_points),
                                           header(stamp, FRAME_IDS['lidar']))
            if 'tof_depth' in streams:
                tof_head = header(stamp, FRAME_IDS['tof'])
                messages['tof_depth'] = image(depth_fields(frame.tof_depth, tof_encoding),
                                              tof_head)
                messages['tof_camera_info'] = camera_info(frame.tof_camera, tof_head)
            for key, msg in messages.items():
                writer.write(connections[key], stamp, store.serialize_cdr(msg, streams[key]))
    return path
