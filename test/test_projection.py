"""Projection to sparse depth: a hand-computed case, a per-point loop reference with z-buffer
collisions, numpy == torch, ToF registration of planes, transforms and depth_to_points."""
import math

import cv2
import numpy as np
import pytest
import torch

from cspn_ros.core.camera import CameraError, PinholeCamera
from cspn_ros.core.projection import (depth_to_points, project_to_sparse_depth,
                                      project_to_sparse_depth_torch, register_depth,
                                      transform_from_translation_quaternion)

PLUMB_BOB = [-0.2, 0.05, 0.001, -0.002, 0.0]


def random_transform(rng):
    return transform_from_translation_quaternion(rng.normal(0, 0.2, 3),
                                                 [*rng.normal(0, 0.05, 3), 1.0])


def random_cloud(rng, n):
    """Points ahead of the sensor, some behind it and some far outside the view."""
    return np.column_stack([rng.uniform(-15, 15, n), rng.uniform(-8, 8, n),
                            rng.uniform(-5, 40, n)]).astype(np.float32)


def reference_sparse_depth(points, transform, camera, min_depth, max_depth):
    """One point at a time in float64: pinhole + plumb_bob, round half up, nearest wins."""
    fx, fy, cx, cy = camera.K[0, 0], camera.K[1, 1], camera.K[0, 2], camera.K[1, 2]
    k1, k2, p1, p2, k3 = (list(camera.D) + [0.0] * 5)[:5]
    nearest = {}
    for point in points.tolist():
        x, y, z = (sum(transform[r][c] * v for c, v in enumerate(point + [1.0]))
                   for r in range(3))
        if not min_depth < z <= max_depth:
            continue
        a, b = x / z, y / z
        r2 = a * a + b * b
        radial = 1 + k1 * r2 + k2 * r2 ** 2 + k3 * r2 ** 3
        ad = a * radial + 2 * p1 * a * b + p2 * (r2 + 2 * a * a)
        bd = b * radial + p1 * (r2 + 2 * b * b) + 2 * p2 * a * b
        col, row = math.floor(fx * ad + cx + 0.5), math.floor(fy * bd + cy + 0.5)
        if 0 <= col < camera.width and 0 <= row < camera.height:
            nearest[row, col] = min(nearest.get((row, col), math.inf), z)
    depth = np.zeros((camera.height, camera.width), np.float32)
    for (row, col), z in nearest.items():
        depth[row, col] = z
    return depth


def test_hand_computed_projection():
    camera = PinholeCamera(4, 3, [[2.0, 0, 1.5], [0, 2.0, 1.0], [0, 0, 1]], [], '')
    lift = transform_from_translation_quaternion([0, 0, 0.5], [0, 0, 0, 1])
    points = np.array([[0, 0, 1], [0, 0, 2], [-0.5, -0.5, 1], [-3, 0, 3], [1.0, 0, 1],
                       [0, 0, 0.05], [0, 0, -1], [0, 1, 50]], np.float32)
    points[:, 2] -= 0.5  # the transform lifts z by 0.5
    expected = np.zeros((3, 4), np.float32)
    expected[1, 2] = 1.0  # u = 1.5 -> column 2 (round half up); the point at z = 2 is hidden
    expected[0, 1] = 1.0  # u = 0.5, v = 0
    expected[1, 0] = 3.0  # u = -0.5 is still inside column 0
    # u = 3.5 is outside the 4 columns; z = 0.05 and z = -1 are too near; z = 50 > max_depth
    result = project_to_sparse_depth(points, lift, camera, min_depth=0.1, max_depth=40)
    np.testing.assert_array_equal(result, expected)
    assert result.dtype == np.float32


@pytest.mark.parametrize('distortion', [[], PLUMB_BOB])
def test_matches_per_point_loop_with_collisions(distortion):
    rng = np.random.default_rng()
    camera = PinholeCamera(16, 12, [[9.0, 0, 7.6], [0, 8.5, 5.4], [0, 0, 1]], distortion,
                           'plumb_bob')
    points = random_cloud(rng, 3000)  # ~10 points per pixel: many z-buffer collisions
    transform = random_transform(rng)
    result = project_to_sparse_depth(points, transform, camera, min_depth=0.3, max_depth=30)
    expected = reference_sparse_depth(points, transform, camera, 0.3, 30)
    np.testing.assert_array_equal(result > 0, expected > 0)
    np.testing.assert_allclose(result, expected, rtol=1e-6)
    assert (result > 0).sum() > 100


@pytest.mark.parametrize('model,distortion', [
    ('', []), ('plumb_bob', PLUMB_BOB),
    ('rational_polynomial', [0.6, -0.2, 0.001, 0.002, 0.03, 0.9, -0.1, 0.05]),
    ('equidistant', [0.1, -0.02, 0.003, -0.0005])])
def test_numpy_and_torch_give_identical_images(model, distortion):
    rng = np.random.default_rng()
    camera = PinholeCamera(64, 48, [[40.0, 0, 31.7], [0, 41.0, 24.2], [0, 0, 1]], distortion,
                           model)
    for _ in range(3):
        points = random_cloud(rng, 20000)
        transform = random_transform(rng)
        expected = project_to_sparse_depth(points, transform, camera, 0.2, 35.0)
        result = project_to_sparse_depth_torch(torch.from_numpy(points),
                                               torch.from_numpy(transform), camera, 0.2, 35.0)
        assert result.dtype == torch.float32 and result.shape == (48, 64)
        np.testing.assert_array_equal(result.numpy(), expected)
        assert (expected > 0).mean() > 0.3


def test_transform_from_translation_quaternion():
    quarter_turn_z = transform_from_translation_quaternion(
        [1, 2, 3], [0, 0, math.sin(math.pi / 4), math.cos(math.pi / 4)])
    np.testing.assert_allclose(quarter_turn_z, [[0, -1, 0, 1], [1, 0, 0, 2], [0, 0, 1, 3],
                                                [0, 0, 0, 1]], atol=1e-15)
    rng = np.random.default_rng()
    q = rng.normal(size=4)
    q[3] = abs(q[3])
    axis = q[:3] / np.linalg.norm(q[:3])
    angle = 2 * math.atan2(np.linalg.norm(q[:3]), q[3])
    rodrigues, _ = cv2.Rodrigues(axis * angle)
    transform = transform_from_translation_quaternion(np.zeros(3), 3.7 * q)
    np.testing.assert_allclose(transform[:3, :3], rodrigues, atol=1e-12)
    with pytest.raises(ValueError, match='non-zero'):
        transform_from_translation_quaternion([0, 0, 0], [0, 0, 0, 0])
    with pytest.raises(ValueError, match='4-vector'):
        transform_from_translation_quaternion([0, 0, 0], [0, 0, 1])


def test_register_fronto_parallel_plane_is_exact():
    rng = np.random.default_rng()
    tof = PinholeCamera(40, 30, [[35.0, 0, 19.5], [0, 35.0, 14.5], [0, 0, 1]], [], '')
    colour = PinholeCamera(64, 48, [[50.0, 0, 31.5], [0, 50.0, 23.5], [0, 0, 1]], PLUMB_BOB,
                           'plumb_bob')
    distance = np.float32(rng.uniform(1, 5))
    depth = np.full((30, 40), distance, np.float32)
    shift = transform_from_translation_quaternion([0.05, -0.02, 0.0], [0, 0, 0, 1])
    registered = register_depth(depth, tof, shift, colour)
    hit = registered > 0
    assert hit.sum() > 600
    np.testing.assert_array_equal(registered[hit], distance)


def test_register_tilted_plane_matches_analytic_depth():
    tof = PinholeCamera(80, 60, [[70.0, 0, 39.5], [0, 70.0, 29.5], [0, 0, 1]], [], '')
    colour = PinholeCamera(64, 48, [[50.0, 0, 31.5], [0, 50.0, 23.5], [0, 0, 1]], [], '')
    T_colour_from_tof = transform_from_translation_quaternion([0.06, 0.01, 0.02],
                                                              [0.01, -0.03, 0.005, 1.0])
    rotation, translation = T_colour_from_tof[:3, :3], T_colour_from_tof[:3, 3]
    normal = np.array([0.2, -0.1, 1.0])  # plane normal . X = offset, in the colour frame
    offset = 3.0
    rays = np.column_stack([tof.pixel_rays(), np.ones(80 * 60)])
    tof_depth = ((offset - normal @ translation) / (rays @ (rotation.T @ normal)))
    registered = register_depth(tof_depth.reshape(60, 80).astype(np.float32), tof,
                                T_colour_from_tof, colour)
    hit = registered > 0
    assert hit.mean() > 0.7
    colour_rays = np.column_stack([colour.pixel_rays(), np.ones(64 * 48)])
    expected = (offset / (colour_rays @ normal)).reshape(48, 64)
    # a ToF point lands within half a pixel of the colour pixel centre
    np.testing.assert_allclose(registered[hit], expected[hit], rtol=5e-3)
    with pytest.raises(CameraError, match='does not match its camera'):
        register_depth(np.ones((30, 40), np.float32), tof, T_colour_from_tof, colour)


@pytest.mark.parametrize('model, D', [('', []), ('plumb_bob', [0.1, -0.05, 0.001, 0.002, 0.01]),
                                      ('equidistant', [0.05, -0.01, 0.002, -0.001])])
def test_register_depth_torch_equals_numpy(model, D):
    rng = np.random.default_rng()
    tof = PinholeCamera(80, 60, [[70.0, 0, 39.5], [0, 70.0, 29.5], [0, 0, 1]], D, model)
    colour = PinholeCamera(64, 48, [[50.0, 0, 31.5], [0, 50.0, 23.5], [0, 0, 1]], [], '')
    depth = rng.uniform(0.3, 8.0, (60, 80)).astype(np.float32)
    depth[rng.random(depth.shape) < 0.2] = 0
    depth[0, :5] = np.nan
    transform = random_transform(rng)
    expected = register_depth(depth, tof, transform, colour, min_depth=0.2, max_depth=7.0)
    registered = register_depth(torch.from_numpy(depth), tof, transform, colour, min_depth=0.2,
                                max_depth=7.0)
    assert isinstance(registered, torch.Tensor) and (expected > 0).sum() > 100
    np.testing.assert_array_equal(registered.numpy(), expected)
    points, indices = tof.backproject(depth, stride=3)
    points_t, indices_t = tof.backproject(torch.from_numpy(depth), stride=3)
    np.testing.assert_array_equal(points_t.numpy(), points)
    np.testing.assert_array_equal(indices_t.numpy(), indices)


def test_depth_to_points_strides_and_colours():
    rng = np.random.default_rng()
    camera = PinholeCamera(20, 15, [[18.0, 0, 9.5], [0, 18.0, 7.0], [0, 0, 1]], [], '')
    depth = rng.uniform(0.5, 9, (15, 20)).astype(np.float32)
    depth[rng.random((15, 20)) < 0.2] = 0
    rgb = rng.integers(0, 256, (15, 20, 3), dtype=np.uint8)
    points, colours = depth_to_points(depth, camera, rgb, stride=3)
    expected_points, expected_colours = [], []
    for row in range(0, 15, 3):
        for col in range(0, 20, 3):
            z = float(depth[row, col])
            if z > 0:
                expected_points.append([(col - 9.5) / 18 * z, (row - 7.0) / 18 * z, z])
                expected_colours.append(rgb[row, col])
    np.testing.assert_allclose(points, expected_points, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(colours, expected_colours)
    assert points.dtype == np.float32 and colours.dtype == np.uint8
    only_points, none = depth_to_points(depth, camera)
    assert none is None and len(only_points) == (depth > 0).sum()
