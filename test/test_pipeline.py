"""CompletionPipeline (one frame: convert + project + complete) and colorize_depth."""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from conftest import plane_camera, plane_depth, plane_frame

from cspn_ros.core.colorize import colorize_depth
from cspn_ros.core.conversions import depth_fields, image_fields, pointcloud2_fields
from cspn_ros.core.pipeline import CompletionPipeline, HostStaging, InputError
from cspn_ros.core.projection import transform_from_translation_quaternion
from cspn_ros.nodes.messages import camera_info_msg, header_msg, image_msg, pointcloud2_msg

W, H = 40, 30


@dataclasses.dataclass
class FakeCompletion:
    depth: np.ndarray
    confidence: np.ndarray


class RecordingCompleter:
    """Returns sparse + 1 m everywhere and a random confidence; remembers its inputs."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.calls = []

        self.device = 'cpu'

    def complete(self, rgb, sparse):
        self.calls.append((rgb.copy(), sparse.copy()))
        confidence = self.rng.random(sparse.shape).astype(np.float32)
        return FakeCompletion(sparse + np.float32(1.0), confidence)

    def complete_tensor(self, rgb_t, sparse_t):
        import torch
        depth = self.complete(rgb_t.numpy(), sparse_t.numpy())
        return torch.from_numpy(depth.depth), torch.from_numpy(depth.confidence)


def reference_projection(points, T, camera_matrix, width, height, min_depth, max_depth):
    """Nearest-point z-buffer, one point at a time in float64."""
    sparse = np.zeros((height, width), np.float64)
    for p in points.astype(np.float64):
        x, y, z = T[:3, :3] @ p + T[:3, 3]
        if not min_depth <= z <= max_depth:
            continue
        u = camera_matrix[0, 0] * x / z + camera_matrix[0, 2]
        v = camera_matrix[1, 1] * y / z + camera_matrix[1, 2]
        col, row = int(np.floor(u + 0.5)), int(np.floor(v + 0.5))
        if 0 <= col < width and 0 <= row < height and (sparse[row, col] == 0
                                                       or z < sparse[row, col]):
            sparse[row, col] = z
    return sparse


def random_cloud_frame(rng, count=400):
    """Plane-scene image + camera_info and a random cloud in front of the camera (sensor frame
    rotated and shifted by a random extrinsic). Returns messages, points, T_cam_from_sensor."""
    msgs = plane_frame(1_000, W, H, seed=int(rng.integers(1 << 30)))
    q = rng.normal(size=4) * [0.1, 0.1, 0.1, 1.0]
    T = transform_from_translation_quaternion(rng.uniform(-0.2, 0.2, 3), q)
    points_cam = np.column_stack([rng.uniform(-3, 3, count), rng.uniform(-2, 2, count),
                                  rng.uniform(-1, 12, count)])
    points = ((points_cam - T[:3, 3]) @ T[:3, :3]).astype(np.float32)  # = T^-1 p_cam
    msgs['points'] = pointcloud2_msg(pointcloud2_fields(points), header_msg(1_000, 'lidar'))
    return msgs, points, T


def test_lidar_frame_projects_like_reference_and_completes_it():
    rng = np.random.default_rng()
    msgs, points, T = random_cloud_frame(rng)
    completer = RecordingCompleter(seed=1)
    pipeline = CompletionPipeline(completer, 'lidar', T, min_depth=0.5, max_depth=10.0)
    result = pipeline.process(msgs['image'], msgs['camera_info'], msgs['points'])

    expected = reference_projection(points, T, plane_camera(W, H).K, W, H, 0.5, 10.0)
    np.testing.assert_allclose(result.sparse, expected, rtol=1e-6)
    assert result.sparse.dtype == np.float32 and np.count_nonzero(expected) > 20
    rgb_in, sparse_in = completer.calls[0]
    np.testing.assert_array_equal(rgb_in, np.asarray(msgs['image'].data).reshape(H, W, 3))
    np.testing.assert_array_equal(sparse_in, result.sparse)
    np.testing.assert_array_equal(result.dense, result.sparse + 1)
    assert set(result.timings) == {'convert', 'project', 'model'}


def test_min_confidence_blanks_dense_but_not_the_unblanked_depth():
    rng = np.random.default_rng()
    msgs, points, T = random_cloud_frame(rng)
    threshold = float(rng.uniform(0.2, 0.8))
    completer = RecordingCompleter(seed=int(rng.integers(1 << 30)))
    pipeline = CompletionPipeline(completer, 'lidar', T, min_confidence=threshold)
    result = pipeline.process(msgs['image'], msgs['camera_info'], msgs['points'])

    expected = np.where(result.confidence >= threshold, result.sparse + 1, 0)
    np.testing.assert_array_equal(result.dense, expected)
    np.testing.assert_array_equal(result.dense_unblanked, result.sparse + 1)
    assert result.coverage == pytest.approx(np.mean(result.confidence >= threshold))


def test_camera_info_of_a_larger_size_is_scaled_to_the_image():
    msgs = plane_frame(5, W, H)
    big = plane_frame(5, 2 * W, 2 * H)
    pipeline = CompletionPipeline(RecordingCompleter(0), 'lidar')
    result = pipeline.process(msgs['image'], big['camera_info'], big['points'])
    assert result.sparse.shape == (H, W) and result.camera.width == W
    # the same cloud through the image-sized camera gives the same sparse depth
    same = pipeline.process(msgs['image'], msgs['camera_info'], big['points'])
    np.testing.assert_allclose(result.sparse, same.sparse, rtol=1e-6)


def test_registered_tof_keeps_depth_in_range_and_drops_nan_inf():
    rng = np.random.default_rng()
    msgs = plane_frame(7, W, H)
    depth = rng.uniform(0.0, 8.0, (H, W)).astype(np.float32)
    depth[rng.random((H, W)) < 0.1] = np.nan
    depth[rng.random((H, W)) < 0.05] = np.inf
    tof = image_msg(depth_fields(depth), header_msg(7, 'camera_optical'))
    pipeline = CompletionPipeline(RecordingCompleter(0), 'tof', min_depth=1.0, max_depth=6.0,
                                  tof_registered=True)
    result = pipeline.process(msgs['image'], msgs['camera_info'], tof)
    expected = np.zeros((H, W), np.float32)
    for row in range(H):
        for col in range(W):
            if np.isfinite(depth[row, col]) and 1.0 <= depth[row, col] <= 6.0:
                expected[row, col] = depth[row, col]
    np.testing.assert_array_equal(result.sparse, expected)


def test_unregistered_tof_is_reprojected_into_the_colour_camera():
    msgs = plane_frame(9, W, H, tof_scale=2)
    pipeline = CompletionPipeline(RecordingCompleter(0), 'tof', np.eye(4))
    result = pipeline.process(msgs['image'], msgs['camera_info'], msgs['tof/depth'],
                              msgs['tof/camera_info'])
    valid = result.sparse > 0
    assert result.sparse.shape == (H, W) and valid.mean() > 0.2
    # each ToF pixel lands near its own ray: depth close to the plane at that column
    assert np.all(np.abs(result.sparse - plane_depth(W, H))[valid] < 0.15)


def bad_frames():
    """(name, messages-modifier, depth_source, expected text in the error)."""
    def nan_cloud(msgs):
        xyz = np.full((10, 3), np.nan, np.float32)
        msgs['points'] = pointcloud2_msg(pointcloud2_fields(xyz), msgs['points'].header)

    def empty_cloud(msgs):
        msgs['points'] = pointcloud2_msg(pointcloud2_fields(np.zeros((0, 3), np.float32)),
                                         msgs['points'].header)

    def behind_camera(msgs):
        xyz = np.array([[0.0, 0.0, -5.0], [1.0, 0.0, -3.0]], np.float32)
        msgs['points'] = pointcloud2_msg(pointcloud2_fields(xyz), msgs['points'].header)

    def depth_image_as_colour(msgs):
        msgs['image'] = image_msg(depth_fields(plane_depth(W, H)), msgs['image'].header)

    def square_camera_info(msgs):
        msgs['camera_info'] = camera_info_msg(plane_camera(W, W), msgs['camera_info'].header)

    def all_nan_tof(msgs):
        msgs['tof/depth'] = image_msg(depth_fields(np.full((H, W), np.nan, np.float32)),
                                      msgs['tof/depth'].header)

    def no_tof_info(msgs):
        msgs['tof/camera_info'] = None

    def colour_as_tof(msgs):
        msgs['tof/depth'] = image_msg(image_fields(np.zeros((H, W, 3), np.uint8), 'rgb8'),
                                      msgs['tof/depth'].header)

    return [('nan cloud', nan_cloud, 'lidar', 'no finite points'),
            ('empty cloud', empty_cloud, 'lidar', 'no finite points'),
            ('behind camera', behind_camera, 'lidar', 'project into the image'),
            ('32FC1 as colour', depth_image_as_colour, 'lidar', 'image'),
            ('aspect ratio', square_camera_info, 'lidar', 'camera_info'),
            ('all NaN ToF', all_nan_tof, 'tof', 'no valid pixel'),
            ('missing ToF camera_info', no_tof_info, 'tof', 'tof/camera_info'),
            ('rgb8 as ToF depth', colour_as_tof, 'tof', 'ToF depth')]


@pytest.mark.parametrize('on_device', [False, True], ids=['host', 'device'])
@pytest.mark.parametrize('name,modify,source,text', bad_frames(), ids=[b[0] for b in bad_frames()])
def test_bad_input_raises_input_error_and_never_calls_the_model(name, modify, source, text,
                                                                 on_device):
    msgs = plane_frame(11, W, H)
    modify(msgs)
    completer = RecordingCompleter(0)
    pipeline = CompletionPipeline(completer, source, on_device=on_device)
    depth_msg = msgs['points'] if source == 'lidar' else msgs['tof/depth']
    with pytest.raises(InputError, match=text):
        pipeline.process(msgs['image'], msgs['camera_info'], depth_msg, msgs['tof/camera_info'])
    assert completer.calls == []


def test_classical_completer_fills_between_lidar_rows():
    from cspn_ros.model.completer import DepthCompleter
    msgs = plane_frame(13, W, H)
    pipeline = CompletionPipeline(DepthCompleter.from_config('classical'), 'lidar')
    result = pipeline.process(msgs['image'], msgs['camera_info'], msgs['points'])
    interior = result.dense[4:-4, 4:-4]
    assert np.all(interior > 0)
    assert np.abs(interior - plane_depth(W, H)[4:-4, 4:-4]).max() < 0.2


def test_colorize_depth_matches_turbo_of_the_linear_scale_and_blacks_out_missing():
    rng = np.random.default_rng()
    depth = rng.uniform(0.5, 20.0, (H, W)).astype(np.float32)
    depth[rng.random((H, W)) < 0.2] = 0
    depth[0, 0], depth[0, 1] = np.nan, np.inf
    bgr = colorize_depth(depth, 1.0, 15.0)
    assert bgr.shape == (H, W, 3) and bgr.dtype == np.uint8
    turbo = cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None], cv2.COLORMAP_TURBO)[:, 0]
    for row in range(H):
        for col in range(W):
            d = float(depth[row, col])
            if not (np.isfinite(d) and d > 0):
                assert not bgr[row, col].any()
            else:
                level = int(np.clip((d - 1.0) / 14.0 * 255.0 + 0.5, 0, 255))
                np.testing.assert_array_equal(bgr[row, col], turbo[level])
    with pytest.raises(ValueError):
        colorize_depth(depth, 5.0, 5.0)


# ------------------------------------------------------------------ device path (torch on CPU)
def padded_cloud_msg(points, rng, dtype=np.float32):
    """A duck-typed PointCloud2 with an intensity field first, x/y/z of `dtype` after it and
    padding at the end of each point (the layout of many real drivers)."""
    item = np.dtype(dtype).itemsize
    offsets = {'intensity': 0, 'x': 4, 'y': 4 + item, 'z': 4 + 2 * item}
    point_step = 4 + 3 * item + 4
    record = np.zeros((len(points), point_step), np.uint8)
    record[:, 0:4] = rng.random(len(points)).astype(np.float32).view(np.uint8).reshape(-1, 4)
    record[:, 4:4 + 3 * item] = points.astype(dtype).view(np.uint8).reshape(len(points), -1)
    datatype = {np.float32: 7, np.float64: 8}[dtype]
    fields = [SimpleNamespace(name=name, offset=offset, datatype=7 if name == 'intensity'
                              else datatype, count=1) for name, offset in offsets.items()]
    return SimpleNamespace(height=1, width=len(points), fields=fields, is_bigendian=False,
                           point_step=point_step, row_step=point_step * len(points),
                           data=record.tobytes(), is_dense=False)


def small_completer():
    from cspn_ros.model.completer import DepthCompleter
    return DepthCompleter.from_config({'width': 8, 'steps': 2}, device='cpu')


@pytest.mark.parametrize('dtype', [np.float32, np.float64], ids=['raw-bytes', 'host-decoded'])
def test_device_path_gives_the_host_paths_sparse_and_dense(dtype):
    rng = np.random.default_rng()
    msgs, points, T = random_cloud_frame(rng, count=600)
    points[rng.random(len(points)) < 0.05] = np.nan
    points[rng.random(len(points)) < 0.03, int(rng.integers(3))] = np.inf
    cloud = padded_cloud_msg(points, rng, dtype)
    completer = small_completer()
    options = dict(T_cam_from_sensor=T, min_depth=0.5, max_depth=10.0)
    host = CompletionPipeline(completer, 'lidar', **options)
    device = CompletionPipeline(completer, 'lidar', on_device=True, **options)
    assert not host.on_device  # a CPU completer takes the host path by default
    confidence = host.process(msgs['image'], msgs['camera_info'], cloud).confidence
    host.min_confidence = device.min_confidence = float(np.quantile(confidence,
                                                                    rng.uniform(0.2, 0.8)))
    expected = host.process(msgs['image'], msgs['camera_info'], cloud)
    for _ in range(2):  # the second frame reuses the staging buffers
        result = device.process(msgs['image'], msgs['camera_info'], cloud)
        np.testing.assert_array_equal(result.sparse, expected.sparse)
        np.testing.assert_array_equal(result.dense_unblanked, expected.dense_unblanked)
        np.testing.assert_array_equal(result.confidence, expected.confidence)
        np.testing.assert_array_equal(result.dense, expected.dense)
        np.testing.assert_array_equal(result.rgb, expected.rgb)
        # the 32FC1 plane made on the device is the host's conversion of dense, NaN for NaN
        assert result.dense_32fc1 is not None and expected.dense_32fc1 is None
        np.testing.assert_array_equal(result.dense_as_32fc1(), expected.dense_as_32fc1())
        assert np.array_equal(np.isnan(result.dense_as_32fc1()), expected.dense == 0)
    finite = points[np.isfinite(points).all(axis=1)]
    reference = reference_projection(finite, T, plane_camera(W, H).K, W, H, 0.5, 10.0)
    np.testing.assert_allclose(result.sparse, reference, rtol=1e-6)
    assert 0 < np.count_nonzero(result.dense) < np.count_nonzero(result.dense_unblanked)
    assert set(result.timings) == {'convert', 'h2d', 'project', 'model', 'd2h'}
    assert all(seconds >= 0 for seconds in result.timings.values())


@pytest.mark.parametrize('registered', [True, False], ids=['registered', 'reprojected'])
def test_device_path_tof_matches_the_host_path(registered):
    rng = np.random.default_rng()
    msgs = plane_frame(17, W, H, tof_scale=1 if registered else 2,
                       seed=int(rng.integers(1 << 30)))
    completer = small_completer()
    options = dict(min_depth=float(rng.uniform(0.1, 1.0)), tof_registered=registered)
    arguments = (msgs['image'], msgs['camera_info'], msgs['tof/depth'], msgs['tof/camera_info'])
    expected = CompletionPipeline(completer, 'tof', **options).process(*arguments)
    result = CompletionPipeline(completer, 'tof', on_device=True, **options).process(*arguments)
    np.testing.assert_array_equal(result.sparse, expected.sparse)
    np.testing.assert_array_equal(result.dense, expected.dense)
    assert np.count_nonzero(result.sparse) > 0.2 * W * H


def test_host_staging_reuses_its_buffer_and_copies_strided_arrays():
    rng = np.random.default_rng()
    staging = HostStaging('cpu')
    image = rng.integers(0, 256, (H, 2 * W, 3), dtype=np.uint8)
    first = staging.upload('rgb', image[:, ::2])  # non-contiguous columns
    np.testing.assert_array_equal(first.numpy(), image[:, ::2])
    pointer = first.data_ptr()
    smaller = rng.random((H // 2, W), dtype=np.float32)
    second = staging.upload('rgb', smaller)  # fits: same memory, new shape and dtype
    assert second.data_ptr() == pointer and second.shape == (H // 2, W)
    np.testing.assert_array_equal(second.numpy(), smaller)
    larger = rng.random((4 * H, W), dtype=np.float32)
    np.testing.assert_array_equal(staging.upload('rgb', larger).numpy(), larger)


def test_pipeline_takes_the_device_path_when_the_completer_is_on_cuda():
    completer = SimpleNamespace(device=SimpleNamespace(type='cuda'))
    pipeline = CompletionPipeline(completer)
    assert pipeline.on_device
    assert not CompletionPipeline(completer, on_device=False).on_device
    pipeline.completer = RecordingCompleter(0)  # e.g. moved to the CPU after CUDA OOM
    assert not pipeline.on_device


def test_a_changed_camera_info_is_used_at_once():
    """Cameras are cached per calibration: a new K must give the new projection, the old K the
    old one again."""
    rng = np.random.default_rng()
    msgs, _, T = random_cloud_frame(rng, count=800)
    pipeline = CompletionPipeline(small_completer(), 'lidar', T_cam_from_sensor=T)
    first = pipeline.prepare(msgs['image'], msgs['camera_info'], msgs['points']).sparse
    changed = camera_info_msg(dataclasses.replace(plane_camera(W, H),
                                                  K=plane_camera(W, H).K * [[0.8], [0.8], [1]]),
                              msgs['camera_info'].header)
    second = pipeline.prepare(msgs['image'], changed, msgs['points']).sparse
    fresh = CompletionPipeline(small_completer(), 'lidar', T_cam_from_sensor=T)
    np.testing.assert_array_equal(second, fresh.prepare(msgs['image'], changed,
                                                        msgs['points']).sparse)
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(
        first, pipeline.prepare(msgs['image'], msgs['camera_info'], msgs['points']).sparse)
