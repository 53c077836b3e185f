"""Occlusion filter: a per-point loop reference, numpy == torch, see-through points removed and
edges / slanted planes kept, a synthetic rig with a LiDAR above the camera, and the pipeline's
host and device paths."""
import numpy as np
import pytest
import torch

from cspn_ros.core.occlusion import OcclusionFilter
from cspn_ros.core.pipeline import CompletionPipeline
from cspn_ros.core.projection import project_to_sparse_depth
from cspn_ros.core.selfcheck import HeldOutPoints
from cspn_ros.data.synthetic import SyntheticScene


def reference_occluded(sparse, window, min_gap, min_quadrants):
    """One point at a time: count the quadrants holding a point nearer than (1 - gap) x."""
    height, width = sparse.shape
    threshold_scale = np.float32(1.0 - min_gap)
    occluded = np.zeros(sparse.shape, bool)
    for v, u in zip(*np.nonzero(sparse)):
        nearer = set()
        for dv in range(-window, window + 1):
            for du in range(-window, window + 1):
                row, col = v + dv, u + du
                if (dv, du) == (0, 0) or not (0 <= row < height and 0 <= col < width):
                    continue
                depth = sparse[row, col]
                if depth > 0 and depth < sparse[v, u] * threshold_scale:
                    if du > 0 and dv >= 0:
                        nearer.add('right-down')
                    elif du <= 0 and dv > 0:
                        nearer.add('left-down')
                    elif du < 0 and dv <= 0:
                        nearer.add('left-up')
                    else:
                        nearer.add('right-up')
        occluded[v, u] = len(nearer) >= min_quadrants
    return occluded


@pytest.mark.parametrize('window,min_gap,min_quadrants', [(1, 0.1, 1), (2, 0.2, 3), (12, 0.2, 4),
                                                          (5, 0.3, 2)])
def test_mask_matches_the_per_point_reference_in_numpy_and_torch(window, min_gap, min_quadrants):
    rng = np.random.default_rng()
    sparse = np.where(rng.random((17, 23)) < 0.4, rng.uniform(0.5, 20, (17, 23)), 0)
    sparse = sparse.astype(np.float32)
    occlusion = OcclusionFilter(window, min_gap, min_quadrants)
    expected = reference_occluded(sparse, window, min_gap, min_quadrants)
    np.testing.assert_array_equal(occlusion.occluded(sparse), expected)
    np.testing.assert_array_equal(occlusion.occluded(torch.from_numpy(sparse)).numpy(), expected)
    filtered = occlusion(torch.from_numpy(sparse)).numpy()
    np.testing.assert_array_equal(filtered, np.where(expected, 0, sparse))
    np.testing.assert_array_equal(occlusion(sparse), filtered)


def test_see_through_points_go_and_edge_and_slanted_plane_points_stay():
    """Rows of points on a wall at 10 m; a box at 2 m covers rows 8-23, columns 10-29, and
    every other row of the box shows the wall through it (parallax see-through)."""
    sparse = np.zeros((32, 40), np.float32)
    sparse[::2, ::2] = 10.0
    box = np.zeros(sparse.shape, bool)
    box[8:24, 10:30] = True
    sparse[box & (np.arange(32)[:, None] % 4 == 0)] = np.where(sparse > 0, 2.0, 0)[
        box & (np.arange(32)[:, None] % 4 == 0)]
    see_through = box & (sparse == 10.0)
    inside = see_through.copy()
    inside[8:10] = inside[22:24] = False  # the box's first and last rows of wall: ambiguous
    inside[:, 10:12] = inside[:, 28:30] = False
    occluded = OcclusionFilter(window=3, min_gap=0.2, min_quadrants=3).occluded(sparse)
    assert occluded[inside].all()
    assert OcclusionFilter(window=3, min_gap=0.2, min_quadrants=4).occluded(sparse)[inside].all()
    assert not occluded[sparse == 2.0].any()
    wall_outside = (sparse == 10.0) & ~box
    assert not occluded[wall_outside].any()  # beside the silhouette: nearer points on one side
    rows, cols = np.mgrid[0:32, 0:40]
    ground = (5.0 + 0.3 * (31 - rows) + 0.05 * cols).astype(np.float32)  # slanted, nearer below
    ground = np.where((rows % 3 == 0) & (cols % 2 == 0), ground, 0).astype(np.float32)
    assert not OcclusionFilter(window=6, min_gap=0.05, min_quadrants=3).occluded(ground).any()


def test_lidar_above_the_camera_loses_its_worst_points_and_hardly_any_correct_ones():
    errors = {'before': [], 'after': []}
    wrong_total = wrong_removed = correct_total = correct_removed = 0
    for seed in range(3):
        scene = SyntheticScene(seed=seed, width=320, height=240, lidar_beams=32,
                               lidar_translation=[0.0, -0.3, -0.3])
        frame = scene.frame(seed)
        sparse = project_to_sparse_depth(frame.lidar_points, frame.T_cam_from_lidar, frame.camera)
        occluded = OcclusionFilter().occluded(sparse)
        scored = (sparse > 0) & (frame.depth > 0)
        error = sparse[scored] - frame.depth[scored]
        wrong = np.abs(error) > np.maximum(0.1, 0.05 * frame.depth[scored])
        removed = occluded[scored]
        errors['before'].append(error)
        errors['after'].append(error[~removed])
        wrong_total += wrong.sum()
        wrong_removed += (wrong & removed).sum()
        correct_total += (~wrong).sum()
        correct_removed += (~wrong & removed).sum()
    rmse = {k: float(np.sqrt(np.mean(np.concatenate(v) ** 2))) for k, v in errors.items()}
    assert rmse['after'] < 0.85 * rmse['before'], rmse  # the worst points go
    assert wrong_removed > 0.15 * wrong_total
    assert correct_removed < 0.003 * correct_total


def synthetic_messages(frame):
    """rclpy messages of a SyntheticFrame: image, camera_info, LiDAR cloud."""
    from cspn_ros.core.conversions import image_fields, pointcloud2_fields
    from cspn_ros.nodes.messages import camera_info_msg, header_msg, image_msg, pointcloud2_msg
    header = header_msg(frame.stamp_ns, 'camera_optical')
    return (image_msg(image_fields(frame.rgb, 'rgb8'), header),
            camera_info_msg(frame.camera, header),
            pointcloud2_msg(pointcloud2_fields(frame.lidar_points),
                            header_msg(frame.stamp_ns, 'lidar')))


def test_pipeline_filters_and_holds_out_alike_on_the_host_and_device_paths():
    from cspn_ros.model.completer import DepthCompleter
    frame = SyntheticScene(seed=4, width=160, height=120, lidar_beams=64,
                           lidar_translation=[0.0, -0.3, -0.3]).frame(2)
    messages = synthetic_messages(frame)
    completer = DepthCompleter.from_config({'width': 8, 'steps': 2}, device='cpu')
    options = dict(T_cam_from_sensor=frame.T_cam_from_lidar, max_depth=100.0,
                   occlusion=OcclusionFilter(), holdout=HeldOutPoints(0.1, seed=7))
    host = CompletionPipeline(completer, 'lidar', **options).process(*messages)
    device = CompletionPipeline(completer, 'lidar', on_device=True, **options).process(*messages)
    for name in ('sparse', 'held_out', 'dense', 'confidence'):
        np.testing.assert_array_equal(getattr(device, name), getattr(host, name))
    projected = project_to_sparse_depth(frame.lidar_points, frame.T_cam_from_lidar, frame.camera,
                                        max_depth=100.0)
    filtered = OcclusionFilter()(projected)
    assert 0 < np.count_nonzero(filtered) < np.count_nonzero(projected)
    np.testing.assert_array_equal(host.sparse + host.held_out, filtered)
    assert not np.any((host.sparse > 0) & (host.held_out > 0))
    assert 0.05 < np.count_nonzero(host.held_out) / np.count_nonzero(filtered) < 0.15
