"""The completion node's outputs of one camera: publishers and the messages of one frame.

Topics (relative, under the camera's name in a rig: `front/depth`, ...): `depth` (32FC1
metres, NaN invalid, the image's header), `depth/camera_info` (the colour CameraInfo as scaled
to the image, same header), `depth/colorized` (bgr8), `depth/points` (PointCloud2 xyz+rgb),
`depth/sparse` (32FC1), `depth/confidence` (32FC1 in [0, 1]). The optional ones are built only
when enabled and subscribed to. Messages are built and serialized by `core.wire` and
published as bytes (no rclpy message objects).
"""
from __future__ import annotations

import time
from typing import Any, Callable

from rclpy.qos import QoSProfile
from sensor_msgs.msg import CameraInfo, Image, PointCloud2

from cspn_ros.core.colorize import colorize_depth
from cspn_ros.core.conversions import depth_fields, image_fields, pointcloud2_fields
from cspn_ros.core.projection import depth_to_points
from cspn_ros.core.rig import sensor_topic
from cspn_ros.core.wire import MESSAGES, encode

OUTPUT_TOPICS = {'depth': Image, 'depth/camera_info': CameraInfo, 'depth/colorized': Image,
                 'depth/points': PointCloud2, 'depth/sparse': Image, 'depth/confidence': Image}


class CameraOutputs:
    """The output publishers of camera `camera` ('' = the unnamed one).

    create_publisher: node.create_publisher or node.create_lifecycle_publisher; option(name):
    the current value of a run-time parameter (publish_*, points_stride)."""

    def __init__(self, camera: str, create_publisher: Callable[..., Any], qos: QoSProfile,
                 option: Callable[[str], Any]) -> None:
        self.publishers = {topic: create_publisher(msg_type, sensor_topic(camera, topic), qos)
                           for topic, msg_type in OUTPUT_TOPICS.items()}
        self._option = option

    def publish(self, header: Any, result: Any, min_depth: float,
                max_depth: float) -> dict[str, float]:
        """Publish the enabled outputs of one frame (a core FrameResult) with the image's
        header; returns seconds spent building and serializing messages (`core.wire`;
        'serialize') and handing the bytes to rclpy ('publish'). min_depth, max_depth: metres,
        the colour scale."""
        def wanted(topic: str, flag: str) -> bool:
            return self._option(flag) and self.publishers[topic].get_subscription_count() > 0

        publish = {'depth': lambda: MESSAGES.image(image_fields(result.dense_as_32fc1(),
                                                                '32FC1'), header),
                   'depth/camera_info': lambda: MESSAGES.camera_info(result.camera, header)}
        if wanted('depth/colorized', 'publish_colorized'):
            publish['depth/colorized'] = lambda: MESSAGES.image(image_fields(colorize_depth(
                result.dense, min_depth, max_depth), 'bgr8'), header)
        if wanted('depth/points', 'publish_points'):
            def points() -> Any:
                xyz, rgb = depth_to_points(result.dense, result.camera, result.rgb,
                                           stride=self._option('points_stride'))
                return MESSAGES.cloud(pointcloud2_fields(xyz, rgb), header)
            publish['depth/points'] = points
        if wanted('depth/sparse', 'publish_sparse'):
            projected = (result.sparse if result.held_out is None  # the self-check's points too
                         else result.sparse + result.held_out)
            publish['depth/sparse'] = lambda: MESSAGES.image(depth_fields(projected), header)
        if wanted('depth/confidence', 'publish_confidence'):
            publish['depth/confidence'] = lambda: MESSAGES.image(
                image_fields(result.confidence, '32FC1'), header)
        seconds = {'serialize': 0.0, 'publish': 0.0}
        for topic, build in publish.items():  # depth first: its subscribers wait the least
            start = time.perf_counter()
            msg = encode(build())
            built = time.perf_counter()
            self.publishers[topic].publish(msg)
            seconds['serialize'] += built - start
            seconds['publish'] += time.perf_counter() - built
        return seconds

    def destroy(self, destroy_publisher: Callable[[Any], Any]) -> None:
        """Destroy every publisher (node.destroy_publisher)."""
        for publisher in self.publishers.values():
            destroy_publisher(publisher)
        self.publishers = {}
