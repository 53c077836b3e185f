"""synthetic_source_node as a real process: consistent frames on every topic."""
from __future__ import annotations

import numpy as np
import pytest
from sensor_msgs.msg import CameraInfo, Image, PointCloud2

from cspn_ros.core.camera import PinholeCamera
from cspn_ros.core.conversions import image_to_depth, image_to_rgb, pointcloud2_to_xyz, stamp_to_ns
from cspn_ros.core.projection import project_to_sparse_depth, transform_from_translation_quaternion
from cspn_ros.data.synthetic import DEFAULT_LIDAR_ROTATION, DEFAULT_LIDAR_TRANSLATION

W, H = 64, 48
TOPICS = {'image': Image, 'camera_info': CameraInfo, 'points': PointCloud2,
          'tof/depth': Image, 'tof/camera_info': CameraInfo, 'ground_truth/depth': Image}
FRAME_IDS = {'image': 'camera_optical', 'camera_info': 'camera_optical', 'points': 'lidar',
             'tof/depth': 'tof_optical', 'tof/camera_info': 'tof_optical',
             'ground_truth/depth': 'camera_optical'}


def test_every_topic_carries_the_same_frame_and_the_lidar_agrees_with_ground_truth(
        start_node, ros_node):
    node = start_node('synthetic_source_node', rate=10.0, width=W, height=H, lidar_beams=16,
                      seed=3)
    inboxes = {topic: ros_node.inbox(msg_type, topic) for topic, msg_type in TOPICS.items()}

    def complete(image) -> bool:
        return all(inboxes[t].wait_for(lambda m: m.header.stamp == image.header.stamp, 0)
                   for t in TOPICS)

    image = inboxes['image'].wait_for(complete, timeout=30)
    assert image is not None, node.log()
    frame = {t: inboxes[t].wait_for(lambda m: m.header.stamp == image.header.stamp, 0)
             for t in TOPICS}
    assert {t: m.header.frame_id for t, m in frame.items()} == FRAME_IDS
    assert image_to_rgb(image).shape == (H, W, 3) and image.encoding == 'rgb8'
    truth = image_to_depth(frame['ground_truth/depth'])
    assert truth.shape == (H, W) and frame['ground_truth/depth'].encoding == '32FC1'
    assert (truth > 0).mean() > 0.5
    tof_info = frame['tof/camera_info']
    assert image_to_depth(frame['tof/depth']).shape == (tof_info.height, tof_info.width)

    camera = PinholeCamera.from_camera_info(frame['camera_info'])
    assert (camera.width, camera.height) == (W, H)
    T = transform_from_translation_quaternion(DEFAULT_LIDAR_TRANSLATION, DEFAULT_LIDAR_ROTATION)
    sparse = project_to_sparse_depth(pointcloud2_to_xyz(frame['points']), T, camera)
    both = (sparse > 0) & (truth > 0)
    assert both.sum() > 20
    relative = np.abs(sparse[both] - truth[both]) / truth[both]
    assert np.median(relative) < 0.03  # LiDAR points land on the surfaces the camera sees

    stamps = sorted({stamp_to_ns(m.header.stamp) for m in inboxes['image'].messages})
    assert all(b > a for a, b in zip(stamps, stamps[1:]))
    assert node.stop() == 0 and 'Traceback' not in node.log()


def test_num_frames_then_idle_and_sensor_switches(start_node, ros_node):
    rosout = ros_node.rosout()
    images = ros_node.inbox(Image, 'image')
    node = start_node('synthetic_source_node', rate=20.0, width=W, height=H, lidar_beams=16,
                      num_frames=3, publish_lidar=False)
    idle = rosout.wait_for(lambda m: 'published 3 frames; idle' in m.msg, timeout=30)
    assert idle is not None, node.log()
    assert len(images.messages) <= 3
    names = {name for name, _ in ros_node.node.get_publisher_names_and_types_by_node(
        'synthetic_source_node', '/')}
    assert '/points' not in names and {'/image', '/tof/depth'} <= names


@pytest.mark.parametrize('publish_tof', [True, False])
def test_the_rig_is_broadcast_as_static_transforms_of_the_published_sensors(ros_domain,
                                                                            publish_tof):
    """The TransformStamped messages the node sends on /tf_static (where tf2_ros is installed)
    are the scene's extrinsics, camera_optical <- sensor, for the sensors it publishes."""
    import rclpy
    from rclpy.parameter import Parameter

    from cspn_ros.core.extrinsic import matrix_from_transform_msg
    from cspn_ros.data.synthetic import SyntheticScene
    from cspn_ros.nodes.synthetic_source_node import SyntheticSourceNode
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=ros_domain)
    node = SyntheticSourceNode(context=context, parameter_overrides=[
        Parameter('width', value=W), Parameter('height', value=H),
        Parameter('num_frames', value=1), Parameter('publish_tof', value=publish_tof)])
    try:
        transforms = {t.child_frame_id: t for t in node.static_transforms}
    finally:
        node.destroy_node()
        rclpy.shutdown(context=context)
    scene = SyntheticScene(seed=0, width=W, height=H)
    expected = {'lidar': scene.T_cam_from_lidar}
    if publish_tof:
        expected['tof_optical'] = scene.T_cam_from_tof
    assert set(transforms) == set(expected)
    for child, T in expected.items():
        assert transforms[child].header.frame_id == 'camera_optical'
        np.testing.assert_allclose(matrix_from_transform_msg(transforms[child]), T, atol=1e-12)
