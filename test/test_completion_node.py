"""completion_node as a real process over DDS: LiDAR and ToF (registered and not) in, depth out."""
from __future__ import annotations

import time

import numpy as np
import pytest
from conftest import plane_depth, plane_frame, publish_until
from sensor_msgs.msg import CameraInfo, Image, PointCloud2

from cspn_ros.core.conversions import image_to_array, pointcloud2_to_xyz, stamp_to_ns
from cspn_ros.core.projection import depth_to_points

W, H = 64, 48
START_NS = 1_700_000_000 * 10**9
PERIOD_NS = 10**8
INPUT_TYPES = {'image': Image, 'camera_info': CameraInfo, 'points': PointCloud2,
               'tof/depth': Image, 'tof/camera_info': CameraInfo}


def frame_publisher(ros_node, topics, **frame_options):
    """publish(i): frame i of the plane scene on `topics`, stamped START_NS + i * 0.1 s."""
    publishers = {topic: ros_node.publisher(INPUT_TYPES[topic], topic) for topic in topics}

    def publish(i: int) -> None:
        msgs = plane_frame(START_NS + i * PERIOD_NS, W, H, **frame_options)
        for topic, publisher in publishers.items():
            publisher.publish(msgs[topic])
    return publish


def stamp_of(msg) -> int:
    return stamp_to_ns(msg.header.stamp)


def check_depth_header(depth, frame_id='camera_optical'):
    assert (stamp_of(depth) - START_NS) % PERIOD_NS == 0
    assert depth.header.frame_id == frame_id
    assert (depth.width, depth.height, depth.encoding) == (W, H, '32FC1')


def test_lidar_frame_gives_dense_depth_and_every_optional_output(start_node, ros_node):
    node = start_node('completion_node', checkpoint='classical', publish_points=True,
                      points_stride=2, publish_sparse=True, publish_confidence=True,
                      max_depth=10.0)
    topics = ('depth', 'depth/colorized', 'depth/points', 'depth/sparse', 'depth/confidence')
    inboxes = {t: ros_node.inbox(PointCloud2 if t == 'depth/points' else Image, t)
               for t in topics}

    def all_outputs(msg) -> bool:
        return all(inboxes[t].wait_for(lambda m: stamp_of(m) == stamp_of(msg), 0) for t in topics)

    depth = publish_until(frame_publisher(ros_node, ('image', 'camera_info', 'points')),
                          inboxes['depth'], all_outputs)
    assert depth is not None, node.log()
    check_depth_header(depth)
    same_frame = {t: inboxes[t].wait_for(lambda m: stamp_of(m) == stamp_of(depth), 0)
                  for t in topics}

    dense = image_to_array(depth)
    truth = plane_depth(W, H)
    assert np.all(np.isfinite(dense[4:-4, 4:-4]))  # classical fill closes the gaps between rows
    assert np.abs(dense - truth)[4:-4, 4:-4].max() < 0.2

    sparse = image_to_array(same_frame['depth/sparse'])
    measured = np.zeros((H, W), bool)
    measured[::4, ::2] = True  # plane_points: every 4th row, every 2nd column
    np.testing.assert_array_equal(np.isfinite(sparse), measured)
    np.testing.assert_allclose(sparse[measured], truth[measured], rtol=1e-5)

    colorized = same_frame['depth/colorized']
    assert (colorized.width, colorized.height, colorized.encoding) == (W, H, 'bgr8')
    confidence = image_to_array(same_frame['depth/confidence'])
    assert confidence.shape == (H, W) and np.all((confidence >= 0) & (confidence <= 1))

    cloud = same_frame['depth/points']
    assert cloud.header.frame_id == 'camera_optical'
    assert {f.name for f in cloud.fields} >= {'x', 'y', 'z', 'rgb'}
    from conftest import plane_camera
    expected, _ = depth_to_points(np.nan_to_num(dense), plane_camera(W, H), stride=2)
    np.testing.assert_allclose(pointcloud2_to_xyz(cloud), expected, rtol=1e-5, atol=1e-6)


def test_unregistered_tof_with_a_tiny_untrained_model(start_node, ros_node):
    node = start_node('completion_node', depth_source='tof',
                      model_config='{"width": 8, "steps": 2}', device='cpu')
    depth_inbox = ros_node.inbox(Image, 'depth')
    depth = publish_until(
        frame_publisher(ros_node, ('image', 'camera_info', 'tof/depth', 'tof/camera_info'),
                        tof_scale=2), depth_inbox, timeout=40)
    assert depth is not None, node.log()
    check_depth_header(depth)
    assert np.isfinite(image_to_array(depth)).mean() > 0.5
    assert 'UNTRAINED model' in node.log()


def test_registered_tof_keeps_the_camera_frame(start_node, ros_node):
    node = start_node('completion_node', depth_source='tof', checkpoint='classical',
                      **{'tof.registered': True, 'self_check.holdout_share': 0.0})  # every pixel in
    depth_inbox = ros_node.inbox(Image, 'depth')
    publish = frame_publisher(ros_node, ('image', 'camera_info', 'tof/depth'))
    depth = publish_until(publish, depth_inbox)
    assert depth is not None, node.log()
    check_depth_header(depth)
    # plane_frame's ToF depth at tof_scale=1 is the plane itself, already in the camera
    np.testing.assert_allclose(image_to_array(depth), plane_depth(W, H), rtol=1e-5)
    assert node.stop() == 0 and 'Traceback' not in node.log()


def test_packaged_default_checkpoint(start_node, ros_node):
    from cspn_ros.model.completer import DEFAULT_CHECKPOINT
    if not DEFAULT_CHECKPOINT.is_file():
        pytest.skip(f'{DEFAULT_CHECKPOINT} not trained yet')
    node = start_node('completion_node', device='cpu')
    depth = publish_until(frame_publisher(ros_node, ('image', 'camera_info', 'points')),
                          ros_node.inbox(Image, 'depth'), timeout=60)
    assert depth is not None, node.log()
    check_depth_header(depth)
    dense = image_to_array(depth)
    assert np.abs(dense - plane_depth(W, H))[8:-8, 8:-8].mean() < 1.0
    assert 'on cpu (onnxruntime, fp32)' in node.log()  # the CPU's fastest backend by default


def test_namespace_and_node_specific_remaps_reach_the_inputs(start_node, ros_node):
    """The inputs live on a hidden helper node: it must follow the node's namespace, its own
    (node-specific) remapping rules and the process-wide ones, and not be renamed by them."""
    node = start_node('completion_node', checkpoint='classical',
                      ros_args=['-r', '__ns:=/robot', '-r', '__node:=completer',
                                '-r', 'completer:image:=/cam/color',
                                '-r', 'points:=/lidar/points'])
    topics = {'image': '/cam/color', 'camera_info': '/robot/camera_info',
              'points': '/lidar/points'}
    publishers = {topic: ros_node.publisher(INPUT_TYPES[topic], name)
                  for topic, name in topics.items()}

    def publish(i: int) -> None:
        msgs = plane_frame(START_NS + i * PERIOD_NS, W, H)
        for topic, publisher in publishers.items():
            publisher.publish(msgs[topic])
    depth = publish_until(publish, ros_node.inbox(Image, '/robot/depth'))
    assert depth is not None, node.log()
    check_depth_header(depth)
    expected = {('completer', '/robot'), ('_completer_inputs', '/robot')}
    deadline = time.monotonic() + 10  # the ROS graph (node names) trails DDS discovery
    while not expected <= set(ros_node.node.get_node_names_and_namespaces()):
        assert time.monotonic() < deadline, ros_node.node.get_node_names_and_namespaces()
        time.sleep(0.1)
    assert node.stop() == 0 and 'Traceback' not in node.log()
