"""PinholeCamera: CameraInfo parsing, distortion against OpenCV, numpy/torch agreement,
backprojection round trips and scaling."""
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch

from cspn_ros.core.camera import CameraError, PinholeCamera

K = np.array([[420.0, 0.0, 161.3], [0.0, 415.0, 118.7], [0.0, 0.0, 1.0]])
DISTORTIONS = {
    'plumb_bob': [-0.28, 0.09, 0.0012, -0.0008, -0.012],
    'rational_polynomial': [0.8, -0.3, 0.001, 0.0015, 0.05, 1.1, -0.2, 0.09],
    'equidistant': [0.12, -0.03, 0.004, -0.0007],
}


def camera_info(**overrides):
    values = dict(width=320, height=240, distortion_model='plumb_bob', k=K.ravel().tolist(),
                  d=DISTORTIONS['plumb_bob'], r=np.eye(3).ravel().tolist(),
                  p=[400.0, 0, 158.0, 0, 0, 400.0, 121.0, 0, 0, 0, 1, 0])
    values.update(overrides)
    return SimpleNamespace(**values)


def points_in_view(rng, n, spread=0.5):
    """Random points in front of the camera whose rays stay within +-spread (normalized)."""
    z = rng.uniform(0.5, 30, n)
    xy = rng.uniform(-spread, spread, (n, 2)) * z[:, None]
    return np.column_stack([xy, z])


def opencv_projection(camera, points):
    if camera.distortion_model == 'equidistant':
        uv, _ = cv2.fisheye.projectPoints(points[:, None, :], np.zeros(3), np.zeros(3), camera.K,
                                          camera.D)
    else:
        uv, _ = cv2.projectPoints(points, np.zeros(3), np.zeros(3), camera.K, camera.D)
    return uv.reshape(-1, 2)


def test_from_camera_info_reads_lower_and_upper_case_fields():
    lower = PinholeCamera.from_camera_info(camera_info())
    upper_info = SimpleNamespace(width=320, height=240, distortion_model='plumb_bob',
                                 K=K.ravel().tolist(), D=DISTORTIONS['plumb_bob'],
                                 R=np.eye(3).ravel().tolist(), P=camera_info().p)
    upper = PinholeCamera.from_camera_info(upper_info)
    for camera in (lower, upper):
        np.testing.assert_array_equal(camera.K, K)
        np.testing.assert_array_equal(camera.D, DISTORTIONS['plumb_bob'])
        assert camera.P.shape == (3, 4) and camera.P[0, 0] == 400.0
        assert (camera.width, camera.height) == (320, 240) and not camera.rectified
        assert camera.distorted
    rectified = PinholeCamera.from_camera_info(camera_info(), rectified=True)
    np.testing.assert_array_equal(rectified.camera_matrix, rectified.P[:, :3])
    assert not rectified.distorted


def test_real_camera_info_message():
    from sensor_msgs.msg import CameraInfo
    msg = CameraInfo(width=320, height=240, distortion_model='plumb_bob', k=K.ravel(),
                     d=DISTORTIONS['plumb_bob'], r=np.eye(3).ravel(), p=camera_info().p)
    camera = PinholeCamera.from_camera_info(msg)
    np.testing.assert_array_equal(camera.K, K)
    assert camera.distorted


def test_invalid_camera_info_raises():
    with pytest.raises(CameraError, match='all zeros'):
        PinholeCamera.from_camera_info(camera_info(k=[0.0] * 9))
    with pytest.raises(CameraError, match='size must be positive'):
        PinholeCamera.from_camera_info(camera_info(width=0))
    with pytest.raises(CameraError, match="unsupported distortion model 'kannala'"):
        PinholeCamera.from_camera_info(camera_info(distortion_model='kannala'))
    with pytest.raises(CameraError, match='unsupported non-zero coefficient.*k4=0.1, k5=0.1'):
        PinholeCamera.from_camera_info(camera_info(d=[0.1] * 8))
    with pytest.raises(CameraError, match='focal lengths'):
        PinholeCamera.from_camera_info(camera_info(k=[-1.0, 0, 1, 0, 1, 1, 0, 0, 1]))
    assert issubclass(CameraError, ValueError)


def test_camera_info_must_be_finite_and_plausible():
    fx, cx = K[0, 0], K[0, 2]
    cases = {'K has non-finite': dict(k=[fx, 0, np.nan, 0, fx, 120, 0, 0, 1]),
             'D has non-finite': dict(d=[0.1, np.nan, 0, 0, 0]),
             'implausible intrinsics: fx=1e-300': dict(k=[1e-300, 0, cx, 0, 1e-300, 120, 0, 0, 1]),
             r'implausible intrinsics: fx=1e\+300': dict(k=[1e300, 0, cx, 0, 1e300, 120, 0, 0, 1]),
             'implausible principal point': dict(k=[fx, 0, 5000, 0, fx, 120, 0, 0, 1]),
             'implausible plumb_bob distortion': dict(d=[-1e6, 0, 0, 0, 0]),
             "uses the first 8 .* s1=0.01": dict(distortion_model='rational_polynomial',
                                                d=[0.1] + [0] * 7 + [0.01, 0, 0, 0, 0, 0])}
    for message, fields in cases.items():
        with pytest.raises(CameraError, match=message):
            PinholeCamera.from_camera_info(camera_info(**fields))


@pytest.mark.parametrize('model, size', [('plumb_bob', 9), ('rational_polynomial', 14),
                                         ('equidistant', 6)])
def test_trailing_zero_distortion_coefficients_are_accepted(model, size):
    padded = np.zeros(size)
    padded[:len(DISTORTIONS[model])] = DISTORTIONS[model]
    camera = PinholeCamera(320, 240, K, padded, model)
    reference = PinholeCamera(320, 240, K, DISTORTIONS[model], model)
    points = points_in_view(np.random.default_rng(), 100, spread=0.6)
    np.testing.assert_array_equal(camera.project(points)[0], reference.project(points)[0])


def test_all_zero_projection_matrix_falls_back_to_k():
    camera = PinholeCamera.from_camera_info(camera_info(p=[0.0] * 12, d=[]), rectified=True)
    np.testing.assert_array_equal(camera.camera_matrix, K)


@pytest.mark.parametrize('model', sorted(DISTORTIONS))
def test_projection_matches_opencv(model):
    rng = np.random.default_rng()
    camera = PinholeCamera(320, 240, K, DISTORTIONS[model], model)
    points = points_in_view(rng, 500, spread=0.6)
    uv, z = camera.project(points)
    np.testing.assert_allclose(uv, opencv_projection(camera, points), atol=1e-6)
    np.testing.assert_array_equal(z, points[:, 2])


def test_undistorted_and_rectified_projection_match_a_float64_loop():
    rng = np.random.default_rng()
    P = np.array([[400.0, 0.0, 158.0, -36.0], [0.0, 395.0, 121.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    rectified = PinholeCamera(320, 240, K, DISTORTIONS['plumb_bob'], 'plumb_bob', P,
                              rectified=True)
    plain = PinholeCamera(320, 240, K, [], '')
    points = points_in_view(rng, 50)
    for camera, matrix in ((rectified, P), (plain, np.hstack([K, np.zeros((3, 1))]))):
        uv, _ = camera.project(points)
        for i, point in enumerate(points.tolist()):
            homogeneous = [sum(matrix[r][c] * v for c, v in enumerate(point + [1.0]))
                           for r in range(3)]
            assert uv[i, 0] == pytest.approx(homogeneous[0] / homogeneous[2], abs=1e-9)
            assert uv[i, 1] == pytest.approx(homogeneous[1] / homogeneous[2], abs=1e-9)


@pytest.mark.parametrize('model', sorted(DISTORTIONS))
def test_numpy_and_torch_projection_are_identical(model):
    rng = np.random.default_rng()
    camera = PinholeCamera(320, 240, K, DISTORTIONS[model], model)
    points = points_in_view(rng, 2000, spread=3.0)
    points[:5, 2] = [-1.0, 0.0, 0.3, -5.0, 1e-9]
    uv, z = camera.project(points)
    uv_torch, z_torch = camera.project(torch.from_numpy(points))
    assert uv_torch.dtype == torch.float64
    if model == 'equidistant':  # atan is not correctly rounded: numpy and torch may differ by
        np.testing.assert_allclose(uv_torch.numpy(), uv, rtol=1e-13, atol=1e-10)  # ulps (px)
    else:
        np.testing.assert_array_equal(uv_torch.numpy(), uv)
    np.testing.assert_array_equal(z_torch.numpy(), z)
    assert np.isnan(uv[[0, 1, 3]]).all()


def test_points_beyond_the_monotonic_distortion_radius_do_not_fold_into_the_image():
    camera = PinholeCamera(320, 240, K, [-0.45, 0.05, 0, 0, 0], 'plumb_bob')
    # r (1 - 0.45 r^2 + 0.05 r^4) turns over at r = 0.94 and is 0 at r = 2: without the guard
    # the point at x/z = 2 would land on the principal point.
    uv, _ = camera.project(np.array([[2.0, 0.0, 1.0], [0.2, 0.1, 1.0]]))
    assert np.isnan(uv[0]).all() and np.isfinite(uv[1]).all()


@pytest.mark.parametrize('model', ['', *sorted(DISTORTIONS)])
def test_backproject_then_project_returns_pixel_centres(model):
    rng = np.random.default_rng()
    camera = PinholeCamera(48, 36, K / [[6.0], [6.0], [1.0]],
                           DISTORTIONS.get(model, []), model)
    depth = rng.uniform(0.5, 20, (36, 48)).astype(np.float32)
    depth[rng.random((36, 48)) < 0.3] = 0
    depth[0, 0] = np.nan
    points, indices = camera.backproject(depth)
    valid = np.flatnonzero(np.isfinite(depth.ravel()) & (depth.ravel() > 0))
    np.testing.assert_array_equal(indices, valid)
    np.testing.assert_array_equal(points[:, 2], depth.ravel()[valid])
    uv, _ = camera.project(points.astype(np.float64))
    np.testing.assert_allclose(uv[:, 0], valid % 48, atol=2e-3)
    np.testing.assert_allclose(uv[:, 1], valid // 48, atol=2e-3)


def test_rectified_backprojection_inverts_projection_with_baseline():
    P = np.array([[60.0, 0.0, 23.0, -9.0], [0.0, 58.0, 17.5, 0.0], [0.0, 0.0, 1.0, 0.0]])
    camera = PinholeCamera(48, 36, K, [], '', P, rectified=True)
    depth = np.random.default_rng().uniform(1, 10, (36, 48)).astype(np.float32)
    points, indices = camera.backproject(depth, stride=5)
    rows, cols = np.meshgrid(np.arange(0, 36, 5), np.arange(0, 48, 5), indexing='ij')
    np.testing.assert_array_equal(indices, (rows * 48 + cols).ravel())
    uv, z = camera.project(points.astype(np.float64))
    np.testing.assert_allclose(uv, np.column_stack([indices % 48, indices // 48]), atol=1e-3)


def test_scaled_camera_maps_pixels_like_the_resize():
    rng = np.random.default_rng()
    camera = PinholeCamera(320, 240, K, DISTORTIONS['plumb_bob'], 'plumb_bob')
    half = camera.scaled(160, 120)
    assert (half.width, half.height) == (160, 120)
    points = points_in_view(rng, 100)
    uv, _ = camera.project(points)
    uv_half, _ = half.project(points)
    # pixel centres at integers: a resize by s maps u to (u + 0.5) * s - 0.5
    np.testing.assert_allclose(uv_half, (uv + 0.5) * 0.5 - 0.5, atol=1e-9)
    np.testing.assert_array_equal(half.D, camera.D)
    assert camera.scaled(320, 240) is camera
    with pytest.raises(CameraError, match='aspect ratio'):
        camera.scaled(320, 200)
    with pytest.raises(CameraError, match='does not match the camera'):
        half.backproject(np.ones((240, 320), np.float32))
