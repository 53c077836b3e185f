"""rclpy messages from the core's plain field dicts (the only place that builds sensor_msgs,
geometry_msgs and diagnostic_msgs).

Byte buffers go in through `array.array('B').frombytes` (one copy, no per-byte Python loop),
assigned after construction: the generated constructors run `array.array('B', data)`, a per-byte
loop (about 4 ms for a 1216x352 32FC1 image).
"""
from __future__ import annotations

import array
from typing import Any, Mapping

import numpy as np
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Quaternion, Transform, TransformStamped, Vector3
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2, PointField
from std_msgs.msg import Header

from cspn_ros.core.camera import PinholeCamera
from cspn_ros.core.projection import quaternion_from_rotation

NS_PER_S = 10 ** 9


def _byte_array(data: Any) -> array.array:
    """A 1-D uint8 numpy array (or bytes) -> array.array('B') for a uint8[] message field."""
    buffer = array.array('B')
    buffer.frombytes(np.ascontiguousarray(data, dtype=np.uint8).data
                     if isinstance(data, np.ndarray) else data)
    return buffer


def stamp_msg(stamp_ns: int) -> Time:
    """int nanoseconds -> builtin_interfaces/Time."""
    return Time(sec=int(stamp_ns // NS_PER_S), nanosec=int(stamp_ns % NS_PER_S))


def header_msg(stamp_ns: int, frame_id: str) -> Header:
    """std_msgs/Header from int nanoseconds and a frame id."""
    return Header(stamp=stamp_msg(stamp_ns), frame_id=frame_id)


def image_msg(fields: Mapping[str, Any], header: Header) -> Image:
    """sensor_msgs/Image from `conversions.image_fields` / `depth_fields` output."""
    msg = Image(header=header, height=int(fields['height']), width=int(fields['width']),
                encoding=fields['encoding'], is_bigendian=int(fields['is_bigendian']),
                step=int(fields['step']))
    msg.data = _byte_array(fields['data'])
    return msg


def compressed_image_msg(fields: Mapping[str, Any], header: Header) -> CompressedImage:
    """sensor_msgs/CompressedImage from `compressed.compressed_image_fields` /
    `compressed_depth_fields` output."""
    msg = CompressedImage(header=header, format=fields['format'])
    msg.data = _byte_array(fields['data'])
    return msg


def pointcloud2_msg(fields: Mapping[str, Any], header: Header) -> PointCloud2:
    """sensor_msgs/PointCloud2 from `conversions.pointcloud2_fields` output."""
    point_fields = [PointField(name=f['name'], offset=int(f['offset']),
                               datatype=int(f['datatype']), count=int(f['count']))
                    for f in fields['fields']]
    msg = PointCloud2(header=header, height=int(fields['height']), width=int(fields['width']),
                      fields=point_fields, is_bigendian=bool(fields['is_bigendian']),
                      point_step=int(fields['point_step']), row_step=int(fields['row_step']),
                      is_dense=bool(fields['is_dense']))
    msg.data = _byte_array(fields['data'])
    return msg


def camera_info_msg(camera: PinholeCamera, header: Header) -> CameraInfo:
    """sensor_msgs/CameraInfo describing `camera` (K, D, R, P and the distortion model)."""
    return CameraInfo(header=header, width=camera.width, height=camera.height,
                      distortion_model=camera.distortion_model,
                      d=[float(v) for v in camera.D],
                      k=[float(v) for v in camera.K.reshape(-1)],
                      r=[float(v) for v in camera.R.reshape(-1)],
                      p=[float(v) for v in camera.P.reshape(-1)])


def diagnostic_status_msg(name: str, hardware_id: str, level: int, message: str,
                          values: Mapping[str, str]) -> DiagnosticStatus:
    """diagnostic_msgs/DiagnosticStatus (level 0 OK, 1 WARN, 2 ERROR)."""
    return DiagnosticStatus(level=bytes([level]), name=name, message=message,
                            hardware_id=hardware_id,
                            values=[KeyValue(key=key, value=value)
                                    for key, value in values.items()])


def diagnostic_array_msg(header: Header, statuses: list[DiagnosticStatus]) -> DiagnosticArray:
    """diagnostic_msgs/DiagnosticArray of `diagnostic_status_msg` statuses."""
    return DiagnosticArray(header=header, status=statuses)


def transform_stamped_msg(T_parent_from_child: np.ndarray, header: Header,
                          child_frame_id: str) -> TransformStamped:
    """geometry_msgs/TransformStamped (parent = header's frame) of a (4,4) transform, the
    message tf2 broadcasts (`core.extrinsic.matrix_from_transform_msg` is the inverse)."""
    T = np.asarray(T_parent_from_child, dtype=np.float64)
    x, y, z = (float(v) for v in T[:3, 3])
    qx, qy, qz, qw = (float(v) for v in quaternion_from_rotation(T[:3, :3]))
    return TransformStamped(header=header, child_frame_id=child_frame_id, transform=Transform(
        translation=Vector3(x=x, y=y, z=z), rotation=Quaternion(x=qx, y=qy, z=qz, w=qw)))
