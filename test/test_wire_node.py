"""completion_node over DDS with serialized inputs and outputs (`core.wire`): a plain rclpy
subscriber receives, on every output topic, exactly the messages the node built with rclpy
messages before (`nodes.messages`) from the same inputs, field by field."""
from __future__ import annotations

import re

import numpy as np
from conftest import plane_frame, publish_until
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from test_completion_node import frame_publisher, stamp_of
from test_wire import rclpy_fields

from cspn_ros.core.colorize import colorize_depth
from cspn_ros.core.conversions import depth_fields, image_fields, pointcloud2_fields
from cspn_ros.core.occlusion import OcclusionFilter
from cspn_ros.core.pipeline import CompletionPipeline
from cspn_ros.core.projection import depth_to_points
from cspn_ros.model.completer import DepthCompleter
from cspn_ros.nodes.messages import camera_info_msg, image_msg, pointcloud2_msg

W, H = 64, 48
MAX_DEPTH = 10.0
STRIDE = 2
OUTPUTS = {'depth': Image, 'depth/camera_info': CameraInfo, 'depth/colorized': Image,
           'depth/points': PointCloud2, 'depth/sparse': Image, 'depth/confidence': Image}


def old_outputs(messages: dict) -> dict:
    """What completion_node published for these rclpy input messages before core.wire: the
    same pipeline (its parameters as set below) and the rclpy message builders."""
    pipeline = CompletionPipeline(DepthCompleter.from_config('classical'), 'lidar',
                                  np.eye(4), min_depth=0.1, max_depth=MAX_DEPTH,
                                  occlusion=OcclusionFilter())
    result = pipeline.process(messages['image'], messages['camera_info'], messages['points'])
    header = messages['image'].header
    xyz, rgb = depth_to_points(result.dense, result.camera, result.rgb, stride=STRIDE)
    return {'depth': image_msg(image_fields(result.dense_as_32fc1(), '32FC1'), header),
            'depth/camera_info': camera_info_msg(result.camera, header),
            'depth/colorized': image_msg(image_fields(colorize_depth(
                result.dense, 0.1, MAX_DEPTH), 'bgr8'), header),
            'depth/points': pointcloud2_msg(pointcloud2_fields(xyz, rgb), header),
            'depth/sparse': image_msg(depth_fields(result.sparse), header),
            'depth/confidence': image_msg(image_fields(result.confidence, '32FC1'), header)}


def test_every_output_is_received_as_the_rclpy_message_built_before(start_node, ros_node):
    node = start_node('completion_node', checkpoint='classical', publish_points=True,
                      points_stride=STRIDE, publish_sparse=True, publish_confidence=True,
                      max_depth=MAX_DEPTH, **{'self_check.holdout_share': 0.0})
    inboxes = {topic: ros_node.inbox(kind, topic) for topic, kind in OUTPUTS.items()}

    def all_outputs(msg) -> bool:
        return all(inboxes[t].wait_for(lambda m: stamp_of(m) == stamp_of(msg), 0)
                   for t in OUTPUTS)

    depth = publish_until(frame_publisher(ros_node, ('image', 'camera_info', 'points')),
                          inboxes['depth'], all_outputs, timeout=60)
    assert depth is not None, node.log()
    received = {t: inboxes[t].wait_for(lambda m: stamp_of(m) == stamp_of(depth), 0)
                for t in OUTPUTS}
    expected = old_outputs(plane_frame(stamp_of(depth), W, H))
    for topic in OUTPUTS:
        assert type(received[topic]) is type(expected[topic])
        got, want = rclpy_fields(received[topic]), rclpy_fields(expected[topic])
        assert got.keys() == want.keys()
        for field in want:
            assert got[field] == want[field], f'{topic}.{field} differs'
    assert np.isfinite(np.frombuffer(bytes(received['depth'].data), np.float32)).mean() > 0.8


def test_bytes_that_do_not_decode_are_a_logged_error_not_a_crash(start_node, ros_node):
    node = start_node('completion_node', checkpoint='classical')
    garbage = ros_node.publisher(Image, 'image')
    depth = ros_node.inbox(Image, 'depth')
    publish = frame_publisher(ros_node, ('image', 'camera_info', 'points'))

    def garbage_then_frame(i: int) -> None:
        garbage.publish(b'\x00\x01\x00\x00' + bytes(range(7)))  # CDR header, then 7 bytes
        publish(i)

    assert publish_until(garbage_then_frame, depth, timeout=60) is not None, node.log()
    # the RMW may pad the payload to whole 4-byte words
    assert re.search(r'/image: cannot decode 1[12] bytes as sensor_msgs/msg/Image', node.log()), \
        node.log()
    assert node.stop() == 0 and 'Traceback' not in node.log()
