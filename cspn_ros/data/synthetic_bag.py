"""Write SyntheticScene frames to a rosbag2 (sqlite3 or mcap) with the `rosbags` library.

The bag holds what a real rig records plus ground truth, on DEFAULT_TOPICS, every message of a
frame with the frame's header stamp (also used as the bag's log time). Message fields come from
the core conversions, so a bag decodes exactly like live messages.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from cspn_ros.core.camera import PinholeCamera
from cspn_ros.core.conversions import depth_fields, image_fields, pointcloud2_fields
from cspn_ros.data.synthetic import SyntheticScene

#: Topic of each stream (keys are what the node, bag reader and demo look up).
DEFAULT_TOPICS = {
    'image': '/image',                        # sensor_msgs/Image rgb8
    'camera_info': '/camera_info',            # sensor_msgs/CameraInfo of the colour camera
    'points': '/points',                      # sensor_msgs/PointCloud2 in FRAME_IDS['lidar']
    'tof_depth': '/tof/depth',                # sensor_msgs/Image 32FC1 m or 16UC1 mm
    'tof_camera_info': '/tof/camera_info',    # sensor_msgs/CameraInfo of the ToF camera
    'ground_truth': '/ground_truth/depth',    # sensor_msgs/Image 32FC1 m, NaN = no truth
}
FRAME_IDS = {'camera': 'camera_optical', 'lidar': 'lidar', 'tof': 'tof_optical'}
DEPTH_SOURCES = ('both', 'lidar', 'tof')
STORAGES = ('sqlite3', 'mcap')

_IMAGE = 'sensor_msgs/msg/Image'
_CAMERA_INFO = 'sensor_msgs/msg/CameraInfo'
_POINTS = 'sensor_msgs/msg/PointCloud2'


def camera_info_fields(camera: PinholeCamera) -> dict[str, Any]:
    """sensor_msgs/CameraInfo fields (without header) describing `camera`: height, width,
    distortion_model, d, k (9,), r (9,), p (12,) as float64 arrays, binning 0 (= 1)."""
    return {'height': camera.height, 'width': camera.width,
            'distortion_model': camera.distortion_model,
            'd': np.asarray(camera.D, np.float64).reshape(-1).copy(),
            'k': np.asarray(camera.K, np.float64).reshape(-1).copy(),
            'r': np.asarray(camera.R, np.float64).reshape(-1).copy(),
            'p': np.asarray(camera.P, np.float64).reshape(-1).copy(),
            'binning_x': 0, 'binning_y': 0}


def write_synthetic_bag(path: str | Path, storage: str = 'sqlite3', num_frames: int = 10,
                        depth_source: str = 'both', tof_encoding: str = '32FC1',
                        topics: Mapping[str, str] = DEFAULT_TOPICS, **scene_kwargs: Any) -> Path:
    """Render frames 0 .. num_frames-1 of SyntheticScene(**scene_kwargs) into a new rosbag2
    directory `path` (must not exist) and return it.

    storage: 'sqlite3' | 'mcap'; depth_source: which sensors to record ('both', 'lidar' = points
    only, 'tof' = ToF depth + its CameraInfo only); tof_encoding: '32FC1' (m, NaN invalid) or
    '16UC1' (mm, 0 invalid). Image, CameraInfo and ground truth are always recorded.
    """
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
    streams = {'image': _IMAGE, 'camera_info': _CAMERA_INFO, 'ground_truth': _IMAGE}
    if depth_source in ('both', 'lidar'):
        streams['points'] = _POINTS
    if depth_source in ('both', 'tof'):
        streams.update(tof_depth=_IMAGE, tof_camera_info=_CAMERA_INFO)

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

    plugin = StoragePlugin.MCAP if storage == 'mcap' else StoragePlugin.SQLITE3
    with Writer(path, version=8, storage_plugin=plugin) as writer:
        connections = {key: writer.add_connection(topics[key], msgtype, typestore=store)
                       for key, msgtype in streams.items()}
        for index in range(num_frames):
            frame = scene.frame(index)
            stamp = frame.stamp_ns
            camera_head = header(stamp, FRAME_IDS['camera'])
            messages = {
                'image': image(image_fields(frame.rgb, 'rgb8'), camera_head),
                'camera_info': camera_info(frame.camera, camera_head),
                'ground_truth': image(depth_fields(frame.depth, '32FC1'), camera_head),
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
