"""core.rig (cameras batched through one model, sweep batches, rig extrinsics) and the merge
of several LiDARs' clouds through one z-buffer (core.projection.merge_clouds)."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import plane_camera, plane_frame

from cspn_ros.core.conversions import pointcloud2_fields
from cspn_ros.core.occlusion import OcclusionFilter
from cspn_ros.core.pipeline import CompletionPipeline, InputError
from cspn_ros.core.projection import (merge_clouds, project_to_sparse_depth,
                                      transform_from_translation_quaternion)
from cspn_ros.core.rig import (RigCompleter, SweepBatcher, extrinsics_from_poses,
                               sensor_topic)
from cspn_ros.core.sync import MatchedSet
from cspn_ros.model.completer import DepthCompleter
from cspn_ros.nodes.messages import header_msg, pointcloud2_msg

W, H = 48, 32


def _random_transform(rng: np.random.Generator) -> np.ndarray:
    return transform_from_translation_quaternion(rng.normal(0, 0.3, 3),
                                                 rng.normal(0, 1, 4) + [0, 0, 0, 4])


def test_merge_clouds_is_each_cloud_moved_into_the_camera():
    rng = np.random.default_rng(1)
    clouds = [rng.normal(0, 5, (n, 3)).astype(np.float32) for n in (7, 11)]
    transforms = np.stack([_random_transform(rng) for _ in clouds])
    merged = merge_clouds(clouds, transforms)
    expected = [[T[:3, :3] @ p + T[:3, 3] for p in points.astype(np.float64)]
                for points, T in zip(clouds, transforms)]
    np.testing.assert_allclose(merged, np.concatenate(expected), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match='2 clouds but 1 extrinsics'):
        merge_clouds(clouds, transforms[:1])


def _cloud_msg(points: np.ndarray, frame: str, stamp_ns: int = 0):
    return pointcloud2_msg(pointcloud2_fields(points.astype(np.float32)),
                           header_msg(stamp_ns, frame))


def test_two_lidars_merge_through_one_z_buffer_and_one_occlusion_filter():
    """A wall seen by LiDAR A and a nearer box seen only by LiDAR B: where both land on a
    pixel the nearer wins, and the occlusion filter drops A's wall points hidden behind B's
    box, exactly as for one cloud holding all points."""
    camera = plane_camera(W, H)
    wall = np.zeros((H, W), np.float32)
    wall[::2, ::2] = 10.0
    box = np.zeros((H, W), np.float32)
    box[8:24:4, 12:36:4] = 4.0  # on wall pixels: the z-buffer keeps the box
    box[9:24:2, 13:36:2] = 4.0  # between them: the wall pixels left see through the box
    wall_points, _ = camera.backproject(wall)
    box_points, _ = camera.backproject(box)
    T_cam_from_a = transform_from_translation_quaternion([0.2, 0, 0], [0, 0, 0, 1])
    T_cam_from_b = transform_from_translation_quaternion([0, -0.1, 0.05],
                                                         [0, 0.0998, 0, 0.995])
    in_a = (np.linalg.inv(T_cam_from_a) @ np.c_[wall_points, np.ones(len(wall_points))].T).T
    in_b = (np.linalg.inv(T_cam_from_b) @ np.c_[box_points, np.ones(len(box_points))].T).T
    occlusion = OcclusionFilter()
    pipeline = CompletionPipeline(None, T_cam_from_sensor=np.stack([T_cam_from_a, T_cam_from_b]),
                                  min_depth=0.1, max_depth=100.0, occlusion=occlusion)
    frame = plane_frame(0, W, H)
    clouds = [_cloud_msg(in_a[:, :3], 'lidar_a'), _cloud_msg(in_b[:, :3], 'lidar_b')]
    sparse = pipeline.prepare(frame['image'], frame['camera_info'], clouds).sparse
    everything = np.concatenate([wall_points, box_points])
    expected = occlusion(project_to_sparse_depth(everything, np.eye(4), camera, 0.1, 100.0))
    np.testing.assert_allclose(sparse, expected, rtol=0, atol=1e-5)
    on_box = box > 0
    assert np.all(sparse[on_box & (sparse > 0)] < 5.0)  # the nearer box wins its pixels
    unfiltered = project_to_sparse_depth(everything, np.eye(4), camera, 0.1, 100.0)
    assert np.count_nonzero(sparse) < np.count_nonzero(unfiltered)  # wall points behind dropped
    assert np.any(sparse == 10.0) and np.any(np.isclose(sparse, 4.0, atol=1e-4))
    pipeline.T_cam_from_sensor = T_cam_from_a
    with pytest.raises(InputError, match='2 clouds but 1 extrinsics'):
        pipeline.prepare(frame['image'], frame['camera_info'], clouds)


def test_extrinsics_from_poses_and_topic_names():
    rng = np.random.default_rng(2)
    poses = {'front': _random_transform(rng), 'top': _random_transform(rng)}
    pairs = extrinsics_from_poses(poses, ['front', 'left'], ['top'])
    point = np.array([1.0, 2.0, 3.0, 1.0])
    # the point in the base frame is the same seen from either sensor
    np.testing.assert_allclose(poses['front'] @ pairs[('front', 'top')] @ point,
                               poses['top'] @ point, atol=1e-12)
    np.testing.assert_allclose(pairs[('left', 'top')], poses['top'])  # 'left' is the base
    assert sensor_topic('front', 'image') == 'front/image'
    assert sensor_topic('', 'image') == 'image'


def _matched(stamp_ns: int, sweep_ns: int) -> MatchedSet:
    return MatchedSet(stamp_ns, {}, {'image': stamp_ns, 'points': sweep_ns})


def test_sweep_batcher_waits_for_the_other_cameras_of_a_sweep():
    batcher = SweepBatcher(['front', 'left', 'right'], ['points'], wait_s=0.05)
    batcher.put('front', _matched(10, 0), now=1.0)
    batcher.put('left', _matched(12, 0), now=1.01)
    assert batcher.take(now=1.02) == {}  # right has not paired with sweep 0 yet
    assert batcher.seconds_to_wait(now=1.02) == pytest.approx(0.03)
    batcher.put('right', _matched(11, 0), now=1.03)
    assert sorted(batcher.take(now=1.03)) == ['front', 'left', 'right']
    assert batcher.seconds_to_wait(now=1.03) is None
    # a camera already on a later sweep will never pair with the older one: no waiting
    batcher.put('front', _matched(110, 100), now=2.0)
    batcher.put('left', _matched(210, 200), now=2.03)
    assert list(batcher.take(now=2.0)) == []  # right may still deliver sweep 100
    assert list(batcher.take(now=2.06)) == ['front']  # waited long enough
    assert list(batcher.take(now=2.06)) == []
    assert list(batcher.take(now=2.2)) == ['left']
    # a newer set replaces one not taken yet, counted as dropped
    batcher.put('right', _matched(300, 300), now=3.0)
    batcher.put('right', _matched(400, 400), now=3.1)
    assert batcher.dropped == {'front': 0, 'left': 0, 'right': 1}
    assert batcher.take(now=3.2)['right'].stamp_ns == 400


def test_one_camera_batches_leave_at_once():
    batcher = SweepBatcher([''], ['points'], wait_s=0.5)
    batcher.put('', _matched(10, 0), now=1.0)
    assert list(batcher.take(now=1.0)) == ['']


def _frames(count: int, width: int = W, height: int = H) -> dict[str, tuple]:
    frames = {}
    for index in range(count):
        messages = plane_frame(1000 + index, width, height, seed=index)
        frames[f'camera{index}'] = (messages['image'], messages['camera_info'],
                                    messages['points'])
    return frames


@pytest.mark.parametrize('on_device', [False, True], ids=['host', 'device'])
def test_rig_completer_equals_each_camera_alone_and_fails_frames_alone(on_device):
    """Three cameras through one batched forward pass (CPU) give each camera's own result;
    a frame with a bad cloud fails alone and never reaches the model; a camera of another size
    runs in its own batch. On the device path (torch on the CPU here) the frames' projected
    points are checked together after staging."""
    completer = DepthCompleter.from_config({'width': 8, 'steps': 2})
    calls = []
    batch = completer.complete_batch
    completer.complete_batch = lambda rgbs, sparses: calls.append(len(rgbs)) or batch(rgbs,
                                                                                        sparses)
    pipelines = {f'camera{i}': CompletionPipeline(completer, min_depth=0.1, max_depth=100.0,
                                                  on_device=on_device)
                 for i in range(4)}
    rig = RigCompleter(pipelines)
    frames = _frames(3)
    frames['camera3'] = _frames(1, 64, 40)['camera0']
    results = rig.complete(frames)
    assert sorted(calls) == [1, 3]
    for result in results.values():  # the other cameras' staging is not the model's time
        assert result.timings['batch'] >= 0 and result.timings['model'] > 0
    assert results['camera0'].timings['batch'] >= results['camera2'].timings['batch']
    alone = CompletionPipeline(DepthCompleter(completer.config, completer.model),
                               min_depth=0.1, max_depth=100.0)
    for camera, messages in frames.items():
        expected = alone.process(*messages)
        np.testing.assert_allclose(results[camera].dense, expected.dense, rtol=0, atol=1e-4)
        np.testing.assert_array_equal(results[camera].sparse, expected.sparse)
    empty = pointcloud2_msg(pointcloud2_fields(np.zeros((0, 3), np.float32)),
                            header_msg(0, 'lidar'))
    frames['camera1'] = (*frames['camera1'][:2], empty)
    calls.clear()
    results = rig.complete(frames)
    assert isinstance(results['camera1'], InputError)
    assert 'no finite points' in str(results['camera1']) or not on_device
    assert sorted(calls) == [1, 2]
    assert all(not isinstance(results[c], Exception) for c in ('camera0', 'camera2', 'camera3'))


def test_complete_batch_equals_complete_and_checks_sizes():
    completer = DepthCompleter.from_config({'width': 8, 'steps': 2})
    rng = np.random.default_rng(3)
    rgbs = [rng.integers(0, 256, (H, W, 3), dtype=np.uint8) for _ in range(3)]
    sparses = [np.where(rng.random((H, W)) < 0.1, rng.uniform(1, 30, (H, W)),
                        0).astype(np.float32) for _ in range(3)]
    for (depth, confidence), rgb, sparse in zip(completer.complete_batch(rgbs, sparses), rgbs,
                                                sparses):
        one = completer.complete(rgb, sparse)
        np.testing.assert_allclose(depth, one.depth, rtol=0, atol=1e-4)
        np.testing.assert_allclose(confidence, one.confidence, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match='one batch takes frames of one size'):
        completer.complete_batch([rgbs[0], rgbs[1][:-2]], [sparses[0], sparses[1][:-2]])


def test_the_cameras_of_a_sweep_upload_their_shared_cloud_once(monkeypatch):
    """Device path (torch on the CPU here): three cameras pairing with one cloud message
    upload it once per sweep, and each camera's result equals its pipeline alone."""
    from cspn_ros.core.staging import HostStaging
    uploads = []
    upload = HostStaging.upload
    monkeypatch.setattr(HostStaging, 'upload', lambda self, name, array: uploads.append(name)
                        or upload(self, name, array))
    completer = DepthCompleter.from_config({'width': 8, 'steps': 2})
    frames = _frames(3)
    cloud = frames['camera0'][2]
    frames = {camera: (image, info, cloud) for camera, (image, info, _) in frames.items()}
    pipelines = {camera: CompletionPipeline(completer, min_depth=0.1, max_depth=100.0,
                                            on_device=True) for camera in frames}
    rig = RigCompleter(pipelines)
    for _ in range(2):  # a second sweep uploads again: nothing is kept between sweeps
        uploads.clear()
        results = rig.complete(frames)
        assert sorted(uploads) == ['depth', 'rgb', 'rgb', 'rgb']
    alone = CompletionPipeline(DepthCompleter(completer.config, completer.model),
                               min_depth=0.1, max_depth=100.0, on_device=True)
    for camera, messages in frames.items():
        expected = alone.process(*messages)
        np.testing.assert_array_equal(results[camera].sparse, expected.sparse)
        np.testing.assert_allclose(results[camera].dense, expected.dense, rtol=0, atol=1e-4)
