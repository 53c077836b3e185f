"""Rigs over DDS with real processes: a ring of three cameras around one LiDAR served by one
completion_node (three correct depth streams, one diagnostics status per camera), and two
LiDARs merged into one camera's sparse input."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import rclpy
from conftest import plane_camera, plane_depth, plane_frame, publish_until
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.parameter import Parameter
from sensor_msgs.msg import CameraInfo, Image, PointCloud2

from cspn_ros.core.conversions import image_to_depth, pointcloud2_fields, stamp_to_ns
from cspn_ros.core.occlusion import OcclusionFilter
from cspn_ros.core.pipeline import CompletionPipeline
from cspn_ros.core.projection import quaternion_from_rotation, transform_from_translation_quaternion
from cspn_ros.data.synthetic import SyntheticScene
from cspn_ros.model.completer import DepthCompleter
from cspn_ros.nodes.completion_node import CompletionNode
from cspn_ros.nodes.messages import header_msg, pointcloud2_msg
from cspn_ros.nodes.parameters import StartupError
from cspn_ros.nodes.synthetic_source_node import ring_poses

W, H = 64, 48
CAMERAS = ('camera0', 'camera1', 'camera2')


def test_three_cameras_around_one_lidar_give_three_correct_depth_streams(start_node, ros_node):
    """synthetic_source_node publishes a ring of 3 cameras and one 32-beam cloud; one
    completion_node (cameras parameter, poses as parameters: no tf here) publishes each
    camera's depth under its name: its sparse input lands on that camera's ground truth (a
    wrong extrinsic would not), the dense depth follows the ground truth, and /diagnostics
    has one status per camera."""
    inboxes = {(camera, topic): ros_node.inbox(Image, f'{camera}/{topic}')
               for camera in CAMERAS
               for topic in ('depth', 'depth/sparse', 'ground_truth/depth')}
    diagnostics = ros_node.inbox(DiagnosticArray, '/diagnostics')
    poses = ring_poses(SyntheticScene(width=W, height=H, lidar_beams=32), len(CAMERAS))
    node = start_node('completion_node', checkpoint='classical', cameras=list(CAMERAS),
                      publish_sparse=True, batch_wait=0.5, input_timeout=60.0,
                      **{'extrinsic.from_tf': False, 'self_check.holdout_share': 0.0}, **poses)
    source = start_node('synthetic_source_node', rate=2.0, width=W, height=H, lidar_beams=32,
                        cameras=len(CAMERAS), seed=5)

    def published(camera: str, topic: str, stamp) -> Image:
        return inboxes[(camera, topic)].wait_for(lambda m: m.header.stamp == stamp, 0)

    def all_cameras(depth: Image) -> bool:
        return all(published(c, t, depth.header.stamp) is not None for c in CAMERAS
                   for t in ('depth', 'depth/sparse', 'ground_truth/depth'))

    first = inboxes[('camera0', 'depth')].wait_for(all_cameras, timeout=120)
    assert first is not None, node.log() + source.log()
    for camera in CAMERAS:
        depth = published(camera, 'depth', first.header.stamp)
        assert depth.header.frame_id == f'{camera}_optical'
        truth = image_to_depth(published(camera, 'ground_truth/depth', first.header.stamp))
        sparse = image_to_depth(published(camera, 'depth/sparse', first.header.stamp))
        both = (sparse > 0) & (truth > 0)
        assert both.sum() > 30, camera
        assert np.median(np.abs(sparse[both] - truth[both]) / truth[both]) < 0.03, camera
        dense = np.nan_to_num(image_to_depth(depth))
        scored = (dense > 0) & (truth > 0)
        assert scored.mean() > 0.3, camera
        assert np.median(np.abs(dense[scored] - truth[scored]) / truth[scored]) < 0.15, camera
    names = {f'/completion_node: depth completion {camera}' for camera in CAMERAS}
    def published_all(msg: DiagnosticArray) -> bool:
        return {s.name for s in msg.status} == names and all(
            kv.value != '0' for s in msg.status for kv in s.values if kv.key == 'published')

    report = diagnostics.wait_for(published_all, timeout=30)
    assert report is not None, [[s.name for s in m.status] for m in diagnostics.messages]
    for status in report.status:
        values = {kv.key: kv.value for kv in status.values}
        camera = status.name.rsplit(' ', 1)[1]
        assert f'received /{camera}/image' in values and 'received /points' in values
        assert values['cameras in last batch'] in ('1', '2', '3')
    assert node.stop() == 0 and 'Traceback' not in node.log()


def _cloud(points: np.ndarray, frame: str, stamp_ns: int) -> PointCloud2:
    return pointcloud2_msg(pointcloud2_fields(points.astype(np.float32)),
                           header_msg(stamp_ns, frame))


def test_two_lidars_are_merged_into_one_sparse_input(start_node, ros_node):
    """Two LiDARs, each seeing half of the plane from its own pose (given as parameters),
    are published on top/points and rear/points; the node's depth/sparse holds both halves,
    equal to the core's merge of the same clouds, and more than either alone."""
    camera = plane_camera(W, H)
    grid = np.zeros((H, W), np.float32)
    grid[::3, ::2] = plane_depth(W, H)[::3, ::2]
    points, _ = camera.backproject(grid)
    left = points[:, 0] < 0
    T_cam_from = {'top': transform_from_translation_quaternion([0.1, -0.3, 0.0],
                                                               [0, 0, 0.0998, 0.995]),
                  'rear': transform_from_translation_quaternion([-0.2, 0.05, 0.1],
                                                                [0.0499, 0, 0, 0.9988])}
    in_lidar = {name: ((np.c_[points[part], np.ones(part.sum())]
                        @ np.linalg.inv(T_cam_from[name]).T)[:, :3])
                for name, part in (('top', left), ('rear', ~left))}
    poses = {}
    for name, T in T_cam_from.items():  # the unnamed camera is the rig's base frame
        poses[f'{name}.extrinsic.translation'] = T[:3, 3].tolist()
        poses[f'{name}.extrinsic.rotation'] = quaternion_from_rotation(T[:3, :3]).tolist()
    sparse_inbox = ros_node.inbox(Image, 'depth/sparse')
    node = start_node('completion_node', checkpoint='classical', lidars=['top', 'rear'],
                      publish_sparse=True, **{'extrinsic.from_tf': False,
                                              'self_check.holdout_share': 0.0}, **poses)
    publishers = {'image': ros_node.publisher(Image, 'image'),
                  'camera_info': ros_node.publisher(CameraInfo, 'camera_info'),
                  'top/points': ros_node.publisher(PointCloud2, 'top/points'),
                  'rear/points': ros_node.publisher(PointCloud2, 'rear/points')}
    stamps = itertools.count(1_700_000_000 * 10**9, 10**8)
    sent = []

    def publish(_: int) -> None:
        sent.append(next(stamps))
        frame = plane_frame(sent[-1], W, H)
        publishers['image'].publish(frame['image'])
        publishers['camera_info'].publish(frame['camera_info'])
        for name in ('top', 'rear'):
            publishers[f'{name}/points'].publish(_cloud(in_lidar[name], f'lidar_{name}',
                                                        sent[-1]))

    received = publish_until(publish, sparse_inbox, timeout=60, period=0.3)
    assert received is not None, node.log()
    sparse = image_to_depth(received)
    frame = plane_frame(stamp_to_ns(received.header.stamp), W, H)
    clouds = [_cloud(in_lidar[name], f'lidar_{name}', 0) for name in ('top', 'rear')]
    pipeline = CompletionPipeline(DepthCompleter.from_config('classical'),
                                  T_cam_from_sensor=np.stack([T_cam_from['top'],
                                                              T_cam_from['rear']]),
                                  min_depth=0.1, max_depth=100.0, occlusion=OcclusionFilter())
    expected = pipeline.prepare(frame['image'], frame['camera_info'], clouds).sparse
    np.testing.assert_allclose(np.nan_to_num(sparse), expected, rtol=0, atol=1e-5)
    columns = np.flatnonzero((sparse > 0).any(axis=0))
    assert columns.min() < W // 4 and columns.max() > 3 * W // 4  # both halves are there
    assert node.stop() == 0 and 'Traceback' not in node.log()


def test_each_camera_compensates_the_moving_sweep_to_its_own_stamp_over_dds(start_node,
                                                                            ros_node):
    """Two cameras around one LiDAR (front, and back turned 180 deg; poses as parameters), the
    platform driving at 10 m/s along the front camera's axis, a 100 ms sweep with per-point
    times ('t', Ouster layout), PoseStamped odometry of the LiDAR (the rig's base): each
    camera fires at its own stamp (back 30 ms after front) and its published sparse depth is
    the scene at that stamp, not where the sweep saw it."""
    from geometry_msgs.msg import Point, Pose, PoseStamped, Quaternion
    from conftest import plane_points

    from cspn_ros.core.projection import project_to_sparse_depth
    speed, stamp0 = 10.0, 1_700_000_000 * 10**9
    fires_s = {'front': 0.0, 'back': 0.03}
    T_lidar_from = {'front': np.eye(4),
                    'back': transform_from_translation_quaternion([0, 0, 0], [0, 1, 0, 0])}
    poses = {}
    for name, T in T_lidar_from.items():
        poses[f'{name}.extrinsic.translation'] = T[:3, 3].tolist()
        poses[f'{name}.extrinsic.rotation'] = quaternion_from_rotation(T[:3, :3]).tolist()
    node = start_node('completion_node', checkpoint='classical', cameras=['front', 'back'],
                      publish_sparse=True, slop=0.15, batch_wait=0.5,
                      **{'extrinsic.from_tf': False, 'self_check.holdout_share': 0.0,
                         'motion.odometry_topic': 'odom', 'motion.odometry_type': 'pose',
                         'motion.time_field': 'ouster'}, **poses)
    publishers = {topic: ros_node.publisher(kind, topic) for topic, kind in (
        ('odom', PoseStamped), ('points', PointCloud2), *((f'{c}/{t}', k) for c in fires_s
                                                           for t, k in (('camera_info',
                                                                         CameraInfo),
                                                                        ('image', Image))))}
    inboxes = {camera: ros_node.inbox(Image, f'{camera}/depth/sparse') for camera in fires_s}
    truth = plane_points(W, H)  # each camera sees the plane, at its own image stamp
    rng = np.random.default_rng()
    sweep, offsets = [], []
    for camera, fire_s in fires_s.items():  # the points each camera sees, as the sweep saw them
        offset_ns = rng.integers(0, 100_000_000, len(truth)).astype(np.uint32)
        in_lidar = (np.c_[truth, np.ones(len(truth))] @ T_lidar_from[camera].T)[:, :3]
        ago_s = fire_s + (100_000_000 - offset_ns.astype(np.float64)) / 1e9
        in_lidar[:, 2] += speed * ago_s  # the LiDAR was further back along its z
        sweep.append(in_lidar)
        offsets.append(offset_ns)
    cloud_points = np.concatenate(sweep).astype(np.float32)

    def publish(i: int) -> None:
        image_ns = stamp0 + i * 10**9
        for k in range(-20, 6):  # odometry of the LiDAR, z forward at `speed`
            publishers['odom'].publish(PoseStamped(
                header=header_msg(image_ns + k * 10_000_000, 'odom'), pose=Pose(
                    position=Point(x=0.0, y=0.0, z=speed * k * 0.01 + i * 100.0),
                    orientation=Quaternion(x=0.0, y=0.0, z=0.0, w=1.0))))
        publishers['points'].publish(pointcloud2_msg(
            pointcloud2_fields(cloud_points, extra={'t': np.concatenate(offsets)}),
            header_msg(image_ns - 100_000_000, 'lidar')))
        for camera, fire_s in fires_s.items():
            frame = plane_frame(image_ns + round(fire_s * 1e9), W, H)
            for topic in ('camera_info', 'image'):
                frame[topic].header.frame_id = f'{camera}_optical'
                publishers[f'{camera}/{topic}'].publish(frame[topic])

    assert publish_until(publish, inboxes['back'], timeout=90, period=0.5) is not None, node.log()
    received = inboxes['front'].wait_for(lambda msg: True, timeout=30)
    assert received is not None, node.log()
    expected = project_to_sparse_depth(truth, np.eye(4), plane_camera(W, H), 0.1, 100.0)
    for camera, inbox in inboxes.items():
        sparse = inbox.messages[-1]
        stamp_ns = stamp_to_ns(sparse.header.stamp)
        assert (stamp_ns - stamp0) % 10**9 == round(fires_s[camera] * 1e9), camera
        got = np.nan_to_num(image_to_depth(sparse))
        both = (got > 0) & (expected > 0)
        assert both.sum() > 0.9 * (expected > 0).sum(), camera
        np.testing.assert_allclose(got[both], expected[both], atol=2e-3, err_msg=camera)
    assert node.stop() == 0 and 'Traceback' not in node.log()


@pytest.mark.parametrize('overrides, problem', [
    ({'cameras': ['front', 'front']}, 'cameras must be distinct names'),
    ({'lidars': ['top', '2nd']}, 'lidars must be distinct names'),
    ({'cameras': ['front', 'back'], 'depth_source': 'tof'}, 'cameras and lidars take '
     'depth_source lidar'),
    ({'cameras': ['front', 'back'], 'lidars': ['top', 'rear'], 'motion.odometry_topic': '/odom',
      'motion.odometry_type': 'pose'}, "the pose is of the rig's base"),
])
def test_rigs_the_node_refuses_at_start(ros_domain, overrides, problem):
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=ros_domain)
    try:
        with pytest.raises(StartupError, match=problem):
            CompletionNode(context=context, parameter_overrides=[
                Parameter('checkpoint', value='classical'),
                *(Parameter(name, value=value) for name, value in overrides.items())])
    finally:
        rclpy.shutdown(context=context)
