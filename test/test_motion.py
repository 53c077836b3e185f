"""LiDAR motion compensation (core/motion.py): per-point times of common driver layouts, pose
interpolation, compensation against a float64 loop and against the geometry it must restore, and
the synthetic moving platform whose sweep takes time."""
from __future__ import annotations

import math
import types

import numpy as np
import pytest

from cspn_ros.core.conversions import pointcloud2_fields, pointcloud2_to_xyz
from cspn_ros.core.motion import (DRIVER_TIME_FIELDS, MotionError, PoseTrack, TimeField,
                                  compensate, point_times_ns)
from cspn_ros.core.projection import project_to_sparse_depth, transform_from_translation_quaternion
from cspn_ros.data.synthetic import SyntheticScene

STAMP_NS = 1_700_000_000 * 10**9


def _cloud(xyz: np.ndarray, extra: dict) -> types.SimpleNamespace:
    fields = pointcloud2_fields(xyz, extra=extra)
    return types.SimpleNamespace(**{**fields, 'data': fields['data'].tobytes(), 'fields': [
        types.SimpleNamespace(**f) for f in fields['fields']]})


def _pose(t: float, speed: float = 10.0, yaw_rate_deg: float = 30.0) -> np.ndarray:
    """T_fixed_from_body at t s: straight along x at `speed`, yawing at a constant rate (so
    linear translation and slerp interpolate it exactly)."""
    yaw = math.radians(yaw_rate_deg) * t
    T = transform_from_translation_quaternion([speed * t, 0.3 * speed * t, 0.0],
                                              [0.0, 0.0, math.sin(yaw / 2), math.cos(yaw / 2)])
    return T


def _track(start_s: float, end_s: float, hz: float = 100.0, **motion) -> PoseTrack:
    track = PoseTrack()
    for t in np.arange(start_s, end_s + 1e-9, 1 / hz):
        track.add(STAMP_NS + round(t * 1e9), _pose(t, **motion))
    return track


@pytest.mark.parametrize('driver', ['velodyne', 'ouster', 'hesai', 'livox', 'livox_offset'])
def test_point_times_follow_each_driver_layout_and_the_kept_points(driver):
    rng = np.random.default_rng()
    n = 200
    xyz = rng.normal(0, 10, (n, 3)).astype(np.float32)
    xyz[rng.random(n) < 0.1, 1] = np.nan  # dropped by pointcloud2_to_xyz: times must follow
    offsets_ns = np.sort(rng.integers(0, 100_000_000, n))
    field = DRIVER_TIME_FIELDS[driver]
    absolute = field.reference == 'absolute'
    scale = {'s': 1e-9, 'ns': 1.0}[field.unit]
    values = ((STAMP_NS + offsets_ns) if absolute else offsets_ns) * scale
    dtype = {'velodyne': np.float32, 'ouster': np.uint32, 'livox_offset': np.uint32}.get(
        driver, np.float64)
    cloud = _cloud(xyz, {'intensity': rng.random(n).astype(np.float32),
                         field.name: values.astype(dtype)})
    times = point_times_ns(cloud, field, STAMP_NS)
    kept = np.isfinite(xyz).all(axis=1)
    assert times.shape == (len(pointcloud2_to_xyz(cloud)),) == (kept.sum(),)
    # float64 ns near 1.7e18 resolve 256 ns; float64 absolute seconds ~0.5 us
    tolerance = {'hesai': 1000}.get(driver, 300)
    np.testing.assert_allclose(times, STAMP_NS + offsets_ns[kept], rtol=0, atol=tolerance)
    with pytest.raises(MotionError, match="lacks field 'stamp'"):
        point_times_ns(cloud, TimeField('stamp'), STAMP_NS)
    with pytest.raises(ValueError, match='time unit'):
        TimeField('t', 'minutes')


def test_pose_track_interpolates_translation_and_rotation_exactly_between_samples():
    track = _track(0.0, 0.2, hz=20.0)
    rng = np.random.default_rng()
    times = rng.uniform(0.0, 0.2, 50)
    poses = track.at(STAMP_NS + times * 1e9)
    for t, pose in zip(times, poses):  # float64 ns stamps near 1.7e18 resolve 256 ns
        np.testing.assert_allclose(pose, _pose(t), atol=1e-5)
    np.testing.assert_allclose(track.at(STAMP_NS + 0.1e9), _pose(0.1), atol=1e-12)
    with pytest.raises(MotionError, match='platform motion unknown'):
        track.at(STAMP_NS + 0.3e9)  # 100 ms beyond the newest pose
    track.add(STAMP_NS, _pose(0.0))  # an older stamp: the bag looped, the track restarts
    assert len(track) == 1
    with pytest.raises(MotionError, match='1 pose sample'):
        track.at(STAMP_NS)


def test_compensate_matches_a_float64_loop_and_restores_the_geometry():
    """Static world points seen by a sensor (mounted off the body) while it moves: compensated
    to the target time, they are where the sensor sees them at that time."""
    rng = np.random.default_rng()
    world = rng.uniform(-30, 30, (500, 3))
    T_body_from_sensor = transform_from_translation_quaternion([0.5, -0.2, 1.5],
                                                               [0.1, -0.05, 0.3, 0.95])
    times_s = np.round(rng.uniform(-0.15, -0.05, len(world)), 4)  # multiples of 0.1 ms bins
    target_s = 0.0
    measured = np.array([np.linalg.inv(_pose(t) @ T_body_from_sensor) @ [*p, 1]
                         for t, p in zip(times_s, world)])[:, :3].astype(np.float32)
    track = _track(-0.3, 0.05)
    moved = compensate(measured, STAMP_NS + times_s * 1e9, STAMP_NS, track, T_body_from_sensor)
    expected = (np.linalg.inv(_pose(target_s) @ T_body_from_sensor) @ np.c_[world, np.ones(
        len(world))].T).T[:, :3]
    np.testing.assert_allclose(moved, expected, atol=2e-4)  # float32 points
    T_target = np.linalg.inv(track.at(STAMP_NS) @ T_body_from_sensor)
    loop = [T_target @ track.at(STAMP_NS + t * 1e9) @ T_body_from_sensor @ [*p, 1]
            for t, p in zip(times_s, measured.astype(np.float64))]
    np.testing.assert_allclose(moved, np.array(loop)[:, :3], atol=2e-4)
    assert np.abs(measured - expected).max() > 1.0  # the motion mattered
    with pytest.raises(MotionError):  # a sweep older than the odometry
        compensate(measured, STAMP_NS + (times_s - 1.0) * 1e9, STAMP_NS, track,
                   T_body_from_sensor)


def test_synthetic_sweep_has_point_times_and_compensation_removes_its_error():
    still = SyntheticScene(seed=4, width=152, height=44, lidar_beams=16,
                           lidar_horizontal_resolution_deg=0.5)
    assert still.frame(1).lidar_times_ns is None  # default: instantaneous, as before
    rig = dict(seed=4, width=304, height=88, lidar_beams=32, lidar_horizontal_resolution_deg=0.4,
               lidar_sweep_s=0.1)
    scene = SyntheticScene(**rig, platform_motion=(10.0, 30.0))
    frame = scene.frame(2)
    times = frame.lidar_times_ns
    assert times.shape == (len(frame.lidar_points),)
    assert frame.stamp_ns - 100_000_000 <= times.min() < times.max() <= frame.stamp_ns
    track = PoseTrack()
    for k in range(40):  # 100 Hz odometry of the camera (the body), 0.3 s before to 0.1 s after
        t = 2 / scene.rate_hz - 0.3 + k * 0.01
        track.add(scene.start_stamp_ns + round(t * 1e9), scene.pose_at(t))
    moved = compensate(frame.lidar_points, times, frame.stamp_ns, track, frame.T_cam_from_lidar)

    def mean_error(points, frame=frame):
        sparse = project_to_sparse_depth(points, frame.T_cam_from_lidar, frame.camera, 0.1, 100)
        both = (sparse > 0) & (frame.depth > 0)
        return float(np.abs(sparse[both] - frame.depth[both]).mean())
    # bench/bench_motion.py at 1216x352, 64 beams: 0.996 m -> 0.054 m (18x)
    assert mean_error(moved) < mean_error(frame.lidar_points) / 5
    # as good as a platform standing still (noise and LiDAR-camera parallax remain)
    standing = SyntheticScene(**rig, platform_motion=(0.0, 0.0)).frame(2)
    assert mean_error(moved) < 1.5 * mean_error(standing.lidar_points, standing)


def test_bags_compensate_a_moving_sweep_with_the_recorded_odometry(tmp_path):
    """A moving-platform bag (100 ms sweeps with per-point 'time', 100 Hz /odom): the sparse
    input prepared with --motion-topic is much closer to ground truth, and evaluate scores
    better with it."""
    import json
    from argparse import ArgumentParser

    from cspn_ros.data.bag_arguments import add_bag_arguments, frames_from_args
    from cspn_ros.core.pipeline import CompletionPipeline
    from cspn_ros.data.synthetic_bag import write_synthetic_bag
    from cspn_ros.nodes.evaluate import main as evaluate_main
    bag = write_synthetic_bag(tmp_path / 'moving', 'sqlite3', num_frames=3, width=304, height=88,
                              lidar_beams=32, lidar_horizontal_resolution_deg=0.4,
                              depth_source='lidar', lidar_sweep_s=0.1,
                              platform_motion=(10.0, 30.0), odometry_hz=100.0,
                              seed=int(np.random.default_rng().integers(99)))
    parser = ArgumentParser()
    add_bag_arguments(parser)
    errors = {}
    for name, extra in (('raw', []), ('compensated', ['--motion-topic', '/odom'])):
        args = parser.parse_args(extra)
        frames, options = frames_from_args(args, [bag], ground_truth='/ground_truth/depth')['lidar']
        assert ('motion' in options) == bool(extra)
        pipeline = CompletionPipeline(None, **options)
        values = []
        for index in range(len(frames)):
            messages = frames.read(index)
            sparse = frames.prepare(pipeline, messages, index).sparse
            gt = frames.ground_truth(messages, sparse.shape)
            both = (sparse > 0) & (gt > 0)
            values.append(np.abs(sparse[both] - gt[both]))
        errors[name] = float(np.concatenate(values).mean())
    assert errors['compensated'] < errors['raw'] / 4, errors
    maes = {}
    for name, extra in (('raw', []), ('compensated', ['--motion-topic', '/odom'])):
        out = tmp_path / name
        assert evaluate_main(['--bag', str(bag), '--checkpoint', 'classical', '--gt-topic',
                              '/ground_truth/depth', '--out', str(out), *extra]) == 0
        maes[name] = json.loads((out / 'summary.json').read_text())['model']['mae']
    assert maes['compensated'] < maes['raw']


def test_pipeline_projects_clouds_without_times_as_before_and_refuses_unknown_motion():
    from conftest import plane_frame

    from cspn_ros.core.motion import MotionCompensation
    from cspn_ros.core.pipeline import CompletionPipeline, InputError
    from cspn_ros.nodes.messages import pointcloud2_msg
    msgs = plane_frame(STAMP_NS, 48, 36)
    plain = CompletionPipeline(None)
    compensating = CompletionPipeline(None, motion=MotionCompensation(DRIVER_TIME_FIELDS['ouster']))
    expected = plain.prepare(msgs['image'], msgs['camera_info'], msgs['points']).sparse
    # no 't' field in the cloud: an instantaneous sweep, exactly as without compensation
    np.testing.assert_array_equal(
        compensating.prepare(msgs['image'], msgs['camera_info'], msgs['points']).sparse, expected)
    xyz = pointcloud2_to_xyz(msgs['points'])
    timed = pointcloud2_msg(pointcloud2_fields(xyz, extra={
        't': np.full(len(xyz), 5_000_000, np.uint32)}), msgs['points'].header)
    with pytest.raises(InputError, match='motion compensation: platform motion unknown'):
        compensating.prepare(msgs['image'], msgs['camera_info'], timed)  # empty track
    compensating.motion.track = _track(-0.05, 0.05, speed=0.0, yaw_rate_deg=0.0)  # standing
    np.testing.assert_allclose(
        compensating.prepare(msgs['image'], msgs['camera_info'], timed).sparse, expected,
        atol=1e-5)


def test_node_compensates_a_moving_sweep_with_odometry_over_dds(start_node, ros_node):
    """completion_node as a real process: a platform driving forward at 10 m/s along the
    camera's optical axis, a 100 ms sweep stamped at its start (per-point 't', Ouster layout),
    PoseStamped odometry of the camera at 100 Hz: the published sparse depth is the scene at
    the image stamp, not where the sweep saw it."""
    from conftest import plane_camera, plane_frame, plane_points, publish_until
    from geometry_msgs.msg import Point, Pose, PoseStamped, Quaternion
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2

    from cspn_ros.core.conversions import image_to_array, stamp_to_ns
    from cspn_ros.nodes.messages import header_msg, pointcloud2_msg
    width, height, speed = 48, 36, 10.0
    node = start_node('completion_node', checkpoint='classical', publish_sparse=True, slop=0.15,
                      **{'motion.odometry_topic': 'odom', 'motion.odometry_type': 'pose',
                         'motion.time_field': 'ouster'})
    publishers = {topic: ros_node.publisher(kind, topic) for topic, kind in
                  (('odom', PoseStamped), ('points', PointCloud2), ('camera_info', CameraInfo),
                   ('image', Image))}
    sparse_inbox = ros_node.inbox(Image, 'depth/sparse')
    truth = plane_points(width, height)  # in the camera (= LiDAR) frame at the image stamp
    rng = np.random.default_rng()
    offsets_ns = rng.integers(0, 100_000_000, len(truth)).astype(np.uint32)
    ago_s = (100_000_000 - offsets_ns.astype(np.float64)) / 1e9  # before the image
    measured = truth.copy()
    measured[:, 2] += (speed * ago_s).astype(np.float32)  # the camera was further back

    def publish(i: int) -> None:
        image_ns = STAMP_NS + i * 10**9
        for k in range(-20, 2):  # odometry: camera pose, z forward at `speed`
            stamp = image_ns + k * 10_000_000
            publishers['odom'].publish(PoseStamped(header=header_msg(stamp, 'odom'), pose=Pose(
                position=Point(x=0.0, y=0.0, z=speed * k * 0.01 + i * 100.0),
                orientation=Quaternion(x=0.0, y=0.0, z=0.0, w=1.0))))
        msgs = plane_frame(image_ns, width, height)
        msgs['points'] = pointcloud2_msg(pointcloud2_fields(measured, extra={'t': offsets_ns}),
                                         header_msg(image_ns - 100_000_000, 'lidar'))
        for topic in ('points', 'camera_info', 'image'):
            publishers[topic].publish(msgs[topic])

    sparse = publish_until(publish, sparse_inbox, timeout=60, period=0.5)
    assert sparse is not None, node.log()
    assert stamp_to_ns(sparse.header.stamp) % 10**9 == STAMP_NS % 10**9
    camera = plane_camera(width, height)
    received = np.nan_to_num(image_to_array(sparse))
    expected = project_to_sparse_depth(truth, np.eye(4), camera, 0.1, 100.0)
    uncompensated = project_to_sparse_depth(measured, np.eye(4), camera, 0.1, 100.0)
    both = (received > 0) & (expected > 0)
    assert both.sum() > 0.9 * (expected > 0).sum()
    np.testing.assert_allclose(received[both], expected[both], atol=2e-3)
    raw = (uncompensated > 0) & (expected > 0)
    # what it removed: the z-buffer keeps the nearest of several points per pixel (the least
    # shifted), so the uncompensated error is a fraction of the 0.5 m mean shift (0.17-0.3 m
    # seen); 20x the compensated tolerance is what the check needs
    assert np.abs(uncompensated[raw] - expected[raw]).mean() > 20 * 2e-3
    assert node.stop() == 0 and 'Traceback' not in node.log()


def _moving_ring(cameras: int = 6, **motion):
    """A moving platform (10 m/s, 30 deg/s yaw) with a 100 ms sweep and a ring of cameras
    firing at their own times (-100 ms .. +20 ms around the sweep's end): (scene, frame, cloud
    message with per-point 'time' (velodyne layout) in frame 'top', PoseTrack of camera 0's
    frame 'front' at 100 Hz, [(image offset s, T_camk_from_lidar)])."""
    from cspn_ros.nodes.messages import header_msg, pointcloud2_msg
    scene = SyntheticScene(seed=5, width=160, height=96, lidar_beams=32,
                           lidar_horizontal_resolution_deg=0.4, lidar_sweep_s=0.1,
                           platform_motion=motion.get('platform_motion', (10.0, 30.0)))
    frame = scene.frame(2)
    cloud = pointcloud2_msg(pointcloud2_fields(frame.lidar_points, extra={
        'time': ((frame.lidar_times_ns - frame.stamp_ns) / 1e9).astype(np.float32)}),
        header_msg(frame.stamp_ns, 'top'))
    track = PoseTrack()
    for k in range(41):
        t = 2 / scene.rate_hz - 0.3 + k * 0.01
        track.add(scene.start_stamp_ns + round(t * 1e9), scene.pose_at(t))
    ring = scene.ring_extrinsics(cameras)  # T_lidar_from_camk
    views = [(-0.1 + 0.12 * k / (cameras - 1), np.linalg.inv(T)) for k, T in enumerate(ring)]
    return scene, frame, cloud, track, views


def _camera_messages(scene, frame, offset_s: float, T_cam_from_lidar: np.ndarray, name: str):
    """Image + camera_info of a ring camera at its own stamp, and its ground-truth depth."""
    from cspn_ros.core.conversions import image_fields
    from cspn_ros.nodes.messages import camera_info_msg, header_msg, image_msg
    T_cam0_from_camk = frame.T_cam_from_lidar @ np.linalg.inv(T_cam_from_lidar)
    rgb, depth = scene.view(frame.index, T_cam0_from_camk, offset_s)
    header = header_msg(frame.stamp_ns + round(offset_s * 1e9), name)
    return (image_msg(image_fields(rgb, 'rgb8'), header), camera_info_msg(scene.camera, header),
            depth)


def _sparse_errors(sparse: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """|projected depth - ground truth| (m) at every pixel holding both."""
    both = (sparse > 0) & (truth > 0)
    assert both.sum() > 50
    return np.abs(sparse[both] - truth[both])


def test_each_camera_of_a_ring_compensates_the_sweep_to_its_own_stamp():
    """Six cameras around one LiDAR, each firing at its own time, odometry of camera 0
    ('front'): every camera's compensation (one shared pose track, its own image stamp and
    body <- LiDAR transform, via tf for cameras other than 'front') brings its projected input
    to the floor of a platform standing still (median 3-5 cm: LiDAR noise, parallax); without
    compensation it is off by decimetres, and compensated to another stamp too."""
    from cspn_ros.core.motion import MotionCompensation
    from cspn_ros.core.pipeline import CompletionPipeline
    from cspn_ros.nodes.messages import stamp_msg
    scene, frame, cloud, track, views = _moving_ring()
    shared = MotionCompensation(DRIVER_TIME_FIELDS['velodyne'], track)
    tf = {('front', 'top'): frame.T_cam_from_lidar}
    raw_all, compensated_all = [], []
    for k, (offset_s, T_cam_from_lidar) in enumerate(views):
        name = 'front' if k == 0 else f'camera{k}'
        image, info, truth = _camera_messages(scene, frame, offset_s, T_cam_from_lidar, name)
        raw = CompletionPipeline(None, T_cam_from_sensor=T_cam_from_lidar)
        compensating = CompletionPipeline(None, T_cam_from_sensor=T_cam_from_lidar,
                                          motion=shared.sharing_track())
        compensating.motion.set_sensors('front', name, ['top'], T_cam_from_lidar,
                                        lambda body, sensor: tf.get((body, sensor)))
        assert compensating.motion.track is track
        before = _sparse_errors(raw.prepare(image, info, cloud).sparse, truth)
        after = _sparse_errors(compensating.prepare(image, info, cloud).sparse, truth)
        assert np.median(after) < 0.06 and np.median(after) < np.median(before) / 1.8, name
        raw_all.append(before)
        compensated_all.append(after)
        if k == 0:  # fired at the sweep's start: compensating to the sweep's end is far off
            image.header.stamp = stamp_msg(frame.stamp_ns)
            elsewhere = _sparse_errors(compensating.prepare(image, info, cloud).sparse, truth)
            assert np.median(elsewhere) > 4 * np.median(after)
    # 6 cameras at 160x96, 32 beams: mean 0.70 m -> 0.14 m
    assert np.concatenate(compensated_all).mean() < np.concatenate(raw_all).mean() / 4


def test_two_lidars_are_compensated_each_with_its_own_body_transform():
    """One sweep seen by two LiDARs ('top', and 'side': turned 90 deg, 1 m off), odometry of
    'top': with each LiDAR's own body <- LiDAR transform the merged input is as close to the
    truth as one LiDAR's; the top's transform used for both is far off."""
    from cspn_ros.core.motion import MotionCompensation
    from cspn_ros.core.pipeline import CompletionPipeline
    from cspn_ros.nodes.messages import header_msg, pointcloud2_msg
    scene, frame, cloud, _, views = _moving_ring(cameras=2)
    track = PoseTrack()
    for k in range(41):  # odometry of the top LiDAR
        t = 2 / scene.rate_hz - 0.3 + k * 0.01
        track.add(scene.start_stamp_ns + round(t * 1e9), scene.pose_at(t) @ frame.T_cam_from_lidar)
    T_top_from_side = transform_from_translation_quaternion(
        [1.0, 0.5, 0.3], [0.0, 0.0, math.sin(math.pi / 4), math.cos(math.pi / 4)])
    top = pointcloud2_to_xyz(cloud)
    side_points = (np.c_[top, np.ones(len(top))] @ np.linalg.inv(T_top_from_side).T)[:, :3]
    side = pointcloud2_msg(pointcloud2_fields(side_points.astype(np.float32), extra={
        'time': ((frame.lidar_times_ns - frame.stamp_ns) / 1e9).astype(np.float32)}),
        header_msg(frame.stamp_ns, 'side'))
    offset_s, T_cam_from_top = views[0]
    image, info, truth = _camera_messages(scene, frame, offset_s, T_cam_from_top, 'front')
    extrinsics = np.stack([T_cam_from_top, T_cam_from_top @ T_top_from_side])
    one = CompletionPipeline(None, T_cam_from_sensor=T_cam_from_top,
                             motion=MotionCompensation(DRIVER_TIME_FIELDS['velodyne'], track))
    one.motion.set_sensors('top', 'front', ['top'], T_cam_from_top)
    two = CompletionPipeline(None, T_cam_from_sensor=extrinsics, motion=one.motion.sharing_track())
    two.motion.set_sensors('top', 'front', ['top', 'side'], extrinsics,
                           lambda body, sensor: T_top_from_side if sensor == 'side' else None)
    np.testing.assert_allclose(two.motion.T_body_from_sensor[1], T_top_from_side)
    def errors(pipeline, clouds):
        return _sparse_errors(pipeline.prepare(image, info, clouds).sparse, truth)
    alone, merged = errors(one, cloud), errors(two, [cloud, side])
    assert np.median(alone) < 0.06 and np.median(merged) < 1.2 * np.median(alone) + 0.01
    two.motion.T_body_from_sensor = np.stack([np.eye(4), np.eye(4)])  # the side's frame wrong
    wrong = errors(two, [cloud, side])
    # points on another surface (off by > 0.5 m): 6 % of pixels with the right transforms
    assert (wrong > 0.5).mean() > 2.5 * max((merged > 0.5).mean(), (alone > 0.5).mean())
