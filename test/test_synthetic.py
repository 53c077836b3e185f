"""SyntheticScene (procedural sensor rig) and write_synthetic_bag (rosbag2 round trip)."""
import math

import numpy as np
import pytest

from cspn_ros.core.camera import PinholeCamera
from cspn_ros.core.conversions import (image_to_depth, image_to_rgb, pointcloud2_to_xyz,
                                       stamp_to_ns)
from cspn_ros.core.projection import (project_to_sparse_depth, register_depth,
                                      transform_from_translation_quaternion)
from cspn_ros.data import synthetic_rays
from cspn_ros.data.synthetic import (DEFAULT_LIDAR_ROTATION, DEFAULT_LIDAR_TRANSLATION,
                                     DEFAULT_TOF_ROTATION, DEFAULT_TOF_TRANSLATION, SyntheticScene)
from cspn_ros.data.synthetic_rays import LIDAR_VERTICAL_FOV_DEG
from cspn_ros.core.topics import BAG_TOPICS, FRAME_IDS, TF_STATIC_TOPIC
from cspn_ros.data.synthetic_bag import write_synthetic_bag

SMALL = dict(width=160, height=120, lidar_beams=32, lidar_horizontal_resolution_deg=0.8,
             tof_width=80, tof_height=60)


def fresh_seed():
    return int(np.random.default_rng().integers(0, 2**31))


def assert_frames_equal(a, b):
    assert a.stamp_ns == b.stamp_ns
    for name in ('rgb', 'depth', 'lidar_points', 'tof_depth', 'T_cam_from_lidar',
                 'T_cam_from_tof', 'T_world_from_cam'):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


@pytest.mark.parametrize('scene', ['outdoor', 'indoor'])
def test_same_seed_and_index_give_the_same_frame(scene):
    seed = fresh_seed()
    walked = SyntheticScene(seed, scene=scene, **SMALL)
    for index in range(4):  # fills the street-cell cache along the way
        walked.frame(index)
    direct = SyntheticScene(seed, scene=scene, **SMALL)
    assert_frames_equal(walked.frame(57), direct.frame(57))
    other = SyntheticScene(seed + 1, scene=scene, **SMALL).frame(57)
    assert not np.array_equal(other.rgb, direct.frame(57).rgb)


@pytest.mark.parametrize('scene', ['outdoor', 'indoor'])
def test_frame_contents_shapes_units_and_extrinsics(scene):
    sc = SyntheticScene(fresh_seed(), scene=scene, rate_hz=20.0, start_stamp_ns=5 * 10**9,
                        **SMALL)
    frame = sc.frame(3)
    assert frame.stamp_ns == 5 * 10**9 + 3 * 50_000_000
    assert frame.rgb.shape == (120, 160, 3) and frame.rgb.dtype == np.uint8
    assert frame.depth.shape == (120, 160) and frame.depth.dtype == np.float32
    assert frame.tof_depth.shape == (60, 80) and frame.tof_depth.dtype == np.float32
    assert frame.lidar_points.dtype == np.float32 and frame.lidar_points.shape[1] == 3
    assert (frame.camera.width, frame.camera.height) == (160, 120)
    assert (frame.tof_camera.width, frame.tof_camera.height) == (80, 60)
    # default fx: 70 deg horizontal field of view
    assert frame.camera.K[0, 0] == pytest.approx(80 / math.tan(math.radians(35)))
    for depth in (frame.depth, frame.tof_depth):
        assert np.all(np.isfinite(depth)) and np.all(depth >= 0)
    np.testing.assert_allclose(frame.T_cam_from_lidar, transform_from_translation_quaternion(
        DEFAULT_LIDAR_TRANSLATION, DEFAULT_LIDAR_ROTATION))
    np.testing.assert_allclose(frame.T_cam_from_tof, transform_from_translation_quaternion(
        DEFAULT_TOF_TRANSLATION, DEFAULT_TOF_ROTATION))
    valid = frame.depth[frame.depth > 0]
    if scene == 'outdoor':
        assert 0.3 < valid.min() and valid.max() <= 60 and (frame.depth == 0).any()  # sky
    else:
        assert 0.3 < valid.min() and valid.max() < 10 and (frame.depth > 0).all()  # closed room
    assert frame.tof_depth.max() <= 8.0 * 1.06


@pytest.mark.parametrize('scene', ['outdoor', 'indoor'])
def test_ground_truth_points_lie_above_the_floor(scene):
    """Depth is metric along the pixel rays: back-projected to the world, points never go below
    the ground (z = 0) and the ground is seen."""
    frame = SyntheticScene(fresh_seed(), scene=scene, **SMALL).frame(11)
    points, _ = frame.camera.backproject(frame.depth)
    world = points.astype(np.float64) @ frame.T_world_from_cam[:3, :3].T
    z = world[:, 2] + frame.T_world_from_cam[2, 3]
    assert z.min() > -0.01 and np.mean(np.abs(z) < 0.01) > 0.05
    if scene == 'indoor':
        assert z.max() < 3.01  # the ceiling is at most 3 m high


@pytest.mark.parametrize('scene,beams', [('outdoor', 64), ('indoor', 16), ('outdoor', 32)])
def test_lidar_agrees_with_ground_truth_and_beam_layout(scene, beams):
    sc = SyntheticScene(fresh_seed(), scene=scene, **{**SMALL, 'lidar_beams': beams})
    frame = sc.frame(7)
    points = frame.lidar_points.astype(np.float64)
    ranges = np.linalg.norm(points, axis=1)
    assert len(points) > 1000 and ranges.min() >= 0.25
    # every point lies on one of the beams (range noise moves points along their rays only)
    elevations = np.degrees(np.arcsin(points[:, 2] / ranges))
    low, high = LIDAR_VERTICAL_FOV_DEG[beams]
    beam = np.linspace(low, high, beams)
    assert np.abs(elevations[:, None] - beam[None, :]).min(axis=1).max() < 0.01
    azimuths = np.degrees(np.arctan2(points[:, 1], points[:, 0])) + 180
    steps = azimuths / 0.8
    assert np.abs(steps - np.round(steps)).max() < 0.01
    # projected into the colour camera through the extrinsic, ranges match the ground truth
    sparse = project_to_sparse_depth(frame.lidar_points, frame.T_cam_from_lidar, frame.camera)
    both = (sparse > 0) & (frame.depth > 0)
    assert both.sum() > 50
    error = np.abs(sparse[both] - frame.depth[both]) / frame.depth[both]
    assert np.median(error) < 0.01 and np.quantile(error, 0.9) < 0.05


def test_tof_agrees_with_ground_truth_with_noise_and_holes():
    sc = SyntheticScene(fresh_seed(), scene='indoor', **SMALL)
    frame = sc.frame(20)
    tof = frame.tof_depth
    assert 0.02 < np.mean(tof == 0) < 0.6  # holes at depth edges / dark surfaces, not everywhere
    registered = register_depth(tof, frame.tof_camera, frame.T_cam_from_tof, frame.camera)
    both = (registered > 0) & (frame.depth > 0)
    assert both.sum() > 0.3 * tof.size
    error = (registered[both] - frame.depth[both]) / frame.depth[both]
    assert abs(np.median(error)) < 0.005 and 0.004 < np.median(np.abs(error)) < 0.03


def test_camera_moves_smoothly():
    sc = SyntheticScene(fresh_seed(), scene='outdoor', **SMALL)
    a, b, c = sc.frame(40), sc.frame(41), sc.frame(42)
    assert b.stamp_ns - a.stamp_ns == c.stamp_ns - b.stamp_ns == 100_000_000
    step_ab = np.linalg.norm(b.T_world_from_cam[:3, 3] - a.T_world_from_cam[:3, 3])
    step_bc = np.linalg.norm(c.T_world_from_cam[:3, 3] - b.T_world_from_cam[:3, 3])
    assert 0.1 < step_ab < 1.5 and step_bc == pytest.approx(step_ab, rel=0.1)
    assert not np.allclose(a.T_world_from_cam[:3, :3], c.T_world_from_cam[:3, :3])
    assert np.mean(a.rgb != b.rgb) > 0.05


@pytest.mark.parametrize('scene', ['outdoor', 'indoor'])
def test_footprint_culling_changes_nothing(scene, monkeypatch):
    """Rays are only tested against objects inside their footprint; testing every ray against
    every object must give the very same frame."""
    seed = fresh_seed()
    settings = {**SMALL, 'lidar_beams': 64, 'lidar_horizontal_resolution_deg': 0.5}
    culled = SyntheticScene(seed, scene=scene, **settings).frame(25)
    everything = [(slice(None), slice(None))]
    monkeypatch.setattr(synthetic_rays.PinholeRays, 'footprint', lambda *args: everything)
    monkeypatch.setattr(synthetic_rays.SpinningRays, 'footprint', lambda *args: everything)
    assert_frames_equal(culled, SyntheticScene(seed, scene=scene, **settings).frame(25))


def test_invalid_arguments():
    with pytest.raises(ValueError):
        SyntheticScene(0, lidar_beams=40)
    with pytest.raises(ValueError):
        SyntheticScene(0, scene='space')
    with pytest.raises(ValueError):
        SyntheticScene(0, **SMALL).frame(-1)


def read_bag(path):
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore
    out = {}
    with AnyReader([path], default_typestore=get_typestore(Stores.ROS2_HUMBLE)) as reader:
        for connection, log_time, raw in reader.messages():
            msg = reader.deserialize(raw, connection.msgtype)
            out.setdefault(connection.topic, []).append((log_time, msg))
    return out


@pytest.mark.parametrize('storage,depth_source,tof_encoding', [
    ('sqlite3', 'both', '32FC1'), ('mcap', 'both', '16UC1'), ('mcap', 'lidar', '32FC1'),
    ('sqlite3', 'tof', '16UC1')])
def test_bag_round_trip(tmp_path, storage, depth_source, tof_encoding):
    seed, frames = fresh_seed(), 3
    kwargs = dict(seed=seed, scene='indoor', **SMALL)
    path = write_synthetic_bag(tmp_path / 'bag', storage=storage, num_frames=frames,
                               depth_source=depth_source, tof_encoding=tof_encoding, **kwargs)
    messages = read_bag(path)
    expected = {'image', 'camera_info', 'ground_truth', 'odometry'}
    expected |= {'points'} if depth_source != 'tof' else set()
    expected |= {'tof_depth', 'tof_camera_info'} if depth_source != 'lidar' else set()
    assert set(messages) == {BAG_TOPICS[key] for key in expected} | {TF_STATIC_TOPIC}
    scene = SyntheticScene(**kwargs)
    truth = [scene.frame(i) for i in range(frames)]
    # The extrinsics of the recorded sensors, once: camera_optical <- sensor = T_cam_from_sensor.
    [(log_time, tf_message)] = messages[TF_STATIC_TOPIC]
    assert log_time == truth[0].stamp_ns
    extrinsics = {'lidar': scene.T_cam_from_lidar, 'tof': scene.T_cam_from_tof}
    recorded = [s for s in ('lidar', 'tof') if depth_source in (s, 'both')]
    assert [t.child_frame_id for t in tf_message.transforms] == [FRAME_IDS[s] for s in recorded]
    for stamped, sensor in zip(tf_message.transforms, recorded):
        assert stamped.header.frame_id == FRAME_IDS['camera']
        t, q = stamped.transform.translation, stamped.transform.rotation
        np.testing.assert_allclose(transform_from_translation_quaternion(
            [t.x, t.y, t.z], [q.x, q.y, q.z, q.w]), extrinsics[sensor], atol=1e-12)
    for key in expected:
        topic = messages[BAG_TOPICS[key]]
        assert len(topic) == frames
        for (log_time, msg), frame in zip(topic, truth):
            assert log_time == stamp_to_ns(msg.header.stamp) == frame.stamp_ns
            sensor = {'points': 'lidar', 'tof_depth': 'tof', 'tof_camera_info': 'tof',
                      'odometry': 'odom'}
            assert msg.header.frame_id == FRAME_IDS[sensor.get(key, 'camera')]
            if key == 'odometry':
                assert msg.child_frame_id == FRAME_IDS['camera']
                p, q = msg.pose.pose.position, msg.pose.pose.orientation
                np.testing.assert_allclose(transform_from_translation_quaternion(
                    [p.x, p.y, p.z], [q.x, q.y, q.z, q.w]),
                    scene.world_from_camera(frame.index), atol=1e-12)
            elif key == 'image':
                np.testing.assert_array_equal(image_to_rgb(msg), frame.rgb)
            elif key == 'ground_truth':
                assert msg.encoding == '32FC1'
                np.testing.assert_array_equal(image_to_depth(msg), frame.depth)
            elif key == 'points':
                np.testing.assert_array_equal(pointcloud2_to_xyz(msg), frame.lidar_points)
            elif key == 'tof_depth':
                assert msg.encoding == tof_encoding
                decoded = image_to_depth(msg)
                tolerance = 0.0005 + 1e-6 if tof_encoding == '16UC1' else 0
                np.testing.assert_allclose(decoded, frame.tof_depth, rtol=0, atol=tolerance)
                assert np.array_equal(decoded == 0, frame.tof_depth == 0)
            else:
                camera = frame.camera if key == 'camera_info' else frame.tof_camera
                decoded = PinholeCamera.from_camera_info(msg)
                assert (decoded.width, decoded.height) == (camera.width, camera.height)
                np.testing.assert_array_equal(decoded.K, camera.K)
                np.testing.assert_array_equal(decoded.P, camera.P)


def test_bag_refuses_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        write_synthetic_bag(tmp_path / 'a', storage='rosbag1')
    with pytest.raises(ValueError):
        write_synthetic_bag(tmp_path / 'b', depth_source='radar')
    with pytest.raises(ValueError):
        write_synthetic_bag(tmp_path / 'c', tof_encoding='8UC1')
