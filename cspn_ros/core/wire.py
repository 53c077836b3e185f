"""Serialized ROS 2 messages (CDR bytes) <-> message objects with numpy fields: the `rosbags`
codec, one message layer for the live node (raw subscriptions, serialized publishing) and the
bags (reading and writing).

`decode` gives rosbags message objects whose arrays (`data` of Image, CompressedImage and
PointCloud2, CameraInfo's `d`/`k`/`r`/`p`) are numpy views over the received buffer (no copy,
read-only), so `core.conversions` reads them like any other message. `MessageBuilder` makes
messages from the core's field dicts (`conversions.image_fields`, `pointcloud2_fields`,
`camera.camera_info_fields`, ...); `encode` turns one into the bytes a publisher sends. The
bytes are what rclpy's own serialisation gives for the same fields (`test/test_wire.py`), so a
plain rclpy subscriber receives the same message.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from rosbags.serde import SerdeError
from rosbags.typesys import Stores, get_typestore

from cspn_ros.core.camera import PinholeCamera, camera_info_fields
from cspn_ros.core.projection import quaternion_from_rotation

#: Message definitions of rosbags' newest ROS 2 store (sensor_msgs, std_msgs, geometry_msgs,
#: nav_msgs, tf2_msgs have the same wire layout from Humble to Kilted).
TYPESTORE = get_typestore(Stores.LATEST)
NS_PER_S = 10 ** 9


class WireError(ValueError):
    """Bytes that are not a serialized message of the expected type."""


def decode(raw: bytes | memoryview, typename: str) -> Any:
    """CDR bytes (with their 4-byte encapsulation header) of a `typename` message
    ('sensor_msgs/msg/Image') -> its rosbags message, arrays viewing `raw`. WireError when the
    bytes do not hold such a message."""
    try:
        return TYPESTORE.deserialize_cdr(memoryview(raw), typename)
    except (SerdeError, KeyError) as error:  # KeyError: a type the store does not know
        raise WireError(f'cannot decode {len(raw)} bytes as {typename}: {error}') from None


def encode(message: Any) -> bytes:
    """A rosbags message -> CDR bytes (little endian) for `publisher.publish(bytes)`."""
    return bytes(TYPESTORE.serialize_cdr(message, message.__msgtype__))


def type_name(msg_type: Any) -> str:
    """'package/msg/Name' of a generated ROS 2 message class (e.g. sensor_msgs.msg.Image)."""
    return f'{msg_type.__module__.split(".")[0]}/msg/{msg_type.__name__}'


class MessageBuilder:
    """Messages of one rosbags type store (default TYPESTORE) from the core's field dicts."""

    def __init__(self, store: Any = TYPESTORE) -> None:
        self.types = store.types

    def header(self, stamp_ns: int, frame_id: str) -> Any:
        """std_msgs/Header for an int-nanosecond stamp."""
        stamp = self.types['builtin_interfaces/msg/Time'](sec=int(stamp_ns // NS_PER_S),
                                                           nanosec=int(stamp_ns % NS_PER_S))
        return self.types['std_msgs/msg/Header'](stamp=stamp, frame_id=frame_id)

    def image(self, fields: Mapping[str, Any], header: Any) -> Any:
        """sensor_msgs/Image from `image_fields` / `depth_fields`."""
        return self.types['sensor_msgs/msg/Image'](header=header, **fields)

    def compressed_image(self, fields: Mapping[str, Any], header: Any) -> Any:
        """sensor_msgs/CompressedImage from `compressed_image_fields` /
        `compressed_depth_fields`."""
        return self.types['sensor_msgs/msg/CompressedImage'](header=header, **fields)

    def camera_info(self, camera: PinholeCamera, header: Any) -> Any:
        """sensor_msgs/CameraInfo describing `camera` (zero roi, binning 0)."""
        roi = self.types['sensor_msgs/msg/RegionOfInterest'](x_offset=0, y_offset=0, height=0,
                                                             width=0, do_rectify=False)
        return self.types['sensor_msgs/msg/CameraInfo'](header=header, roi=roi,
                                                        **camera_info_fields(camera))

    def cloud(self, fields: Mapping[str, Any], header: Any) -> Any:
        """sensor_msgs/PointCloud2 from `pointcloud2_fields`."""
        point_fields = [self.types['sensor_msgs/msg/PointField'](**f) for f in fields['fields']]
        return self.types['sensor_msgs/msg/PointCloud2'](header=header,
                                                         **{**fields, 'fields': point_fields})

    def _vector(self, values: np.ndarray, kind: str) -> Any:
        return self.types[f'geometry_msgs/msg/{kind}'](*(float(v) for v in values))

    def tf_message(self, transforms: Mapping[str, np.ndarray], header: Any) -> Any:
        """tf2_msgs/TFMessage: child frame -> T_parent_from_child (4,4), parent = header's frame."""
        stamped = [self.types['geometry_msgs/msg/TransformStamped'](
            header=header, child_frame_id=child,
            transform=self.types['geometry_msgs/msg/Transform'](
                translation=self._vector(T[:3, 3], 'Vector3'),
                rotation=self._vector(quaternion_from_rotation(T[:3, :3]), 'Quaternion')))
            for child, T in transforms.items()]
        return self.types['tf2_msgs/msg/TFMessage'](transforms=stamped)

    def odometry(self, T_world_from_child: np.ndarray, header: Any, child_frame_id: str) -> Any:
        """nav_msgs/Odometry with pose T_world_from_child (4,4) (world = header's frame), zero
        twist and covariances."""
        pose = self.types['geometry_msgs/msg/Pose'](
            position=self._vector(T_world_from_child[:3, 3], 'Point'),
            orientation=self._vector(quaternion_from_rotation(T_world_from_child[:3, :3]),
                                     'Quaternion'))
        zero = self._vector(np.zeros(3), 'Vector3')
        return self.types['nav_msgs/msg/Odometry'](
            header=header, child_frame_id=child_frame_id,
            pose=self.types['geometry_msgs/msg/PoseWithCovariance'](pose=pose,
                                                                    covariance=np.zeros(36)),
            twist=self.types['geometry_msgs/msg/TwistWithCovariance'](
                twist=self.types['geometry_msgs/msg/Twist'](linear=zero, angular=zero),
                covariance=np.zeros(36)))


#: The builder of the live node (TYPESTORE).
MESSAGES = MessageBuilder()
