"""The real-data suite's pieces on small synthetic arrays (no ../shared needed)."""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'bench'))

import ip_basic  # noqa: E402
import real_suite  # noqa: E402
import real_tracks  # noqa: E402
from cspn_ros.core.camera import PinholeCamera  # noqa: E402


def _wall_points(count: int, rng: np.random.Generator) -> np.ndarray:
    """(count,3) points on a slanted wall 4-9 m in front of a camera looking along +z."""
    x = rng.uniform(-2, 2, count)
    y = rng.uniform(-1.5, 1.5, count)
    return np.stack([x, y, 6.5 + x * 1.2], 1).astype(np.float32)


def _camera() -> PinholeCamera:
    return PinholeCamera(80, 60, np.array([[40.0, 0, 39.5], [0, 40.0, 29.5], [0, 0, 1]]))


def test_lidar_holdout_is_disjoint_complete_and_seeded_by_name():
    rgb = np.zeros((60, 80, 3), np.uint8)
    points = _wall_points(3000, np.random.default_rng(0))
    samples = real_tracks.holdout_samples('wall', rgb, points, np.eye(4), _camera(), 3, False)
    projected = samples[0].sparse + samples[0].target
    assert [s.name for s in samples] == ['wall/seed0', 'wall/seed1', 'wall/seed2']
    for sample in samples:
        assert not np.any((sample.sparse > 0) & (sample.target > 0))
        np.testing.assert_array_equal(sample.sparse + sample.target, projected)
        share = (sample.target > 0).sum() / (projected > 0).sum()
        assert share == pytest.approx(real_tracks.HOLDOUT_SHARE, abs=0.01)
    assert not np.array_equal(samples[0].target, samples[1].target)
    again = real_tracks.holdout_samples('wall', rgb, points, np.eye(4), _camera(), 1, False)
    np.testing.assert_array_equal(again[0].target, samples[0].target)


def test_quick_mode_halves_wide_images_through_the_projection():
    camera = PinholeCamera(2000, 1000, np.array([[900.0, 0, 999.5], [0, 900.0, 499.5],
                                                 [0, 0, 1]]))
    rgb = np.zeros((1000, 2000, 3), np.uint8)
    points = _wall_points(500, np.random.default_rng(1))
    sample, = real_tracks.holdout_samples('wide', rgb, points, np.eye(4), camera, 1, True)
    assert sample.rgb.shape == (500, 1000, 3) and sample.sparse.shape == (500, 1000)
    assert (sample.sparse > 0).sum() > 300


@pytest.mark.parametrize('regime', real_tracks.DEPTHCAM_REGIMES)
def test_depthcam_regimes_split_valid_pixels(regime):
    depth = np.random.default_rng(2).uniform(0.5, 4.0, (120, 160)).astype(np.float32)
    depth[:10] = 0  # a band without depth
    sample, = real_tracks.depthcam_samples('cam', [('f0', np.zeros((120, 160, 3), np.uint8),
                                                    depth)], regime)
    fed, scored = sample.sparse > 0, sample.target > 0
    assert not np.any(fed & scored)
    np.testing.assert_array_equal(fed | scored, depth > 0)
    np.testing.assert_array_equal(sample.sparse[fed], depth[fed])
    if regime.startswith('random'):
        assert fed.sum() == int(regime[len('random'):])
    if regime.startswith('rows'):
        assert len(np.unique(np.nonzero(fed)[0])) <= int(regime[len('rows'):])
    if regime == 'holes':
        assert 0.25 < fed.sum() / (depth > 0).sum() < 0.5


def _sparse_slanted_plane(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(sparse (60,80) with ~5% of a plane's pixels, dense plane) metres."""
    rows, cols = np.mgrid[0:60, 0:80]
    plane = (5.0 + 0.05 * cols + 0.02 * rows).astype(np.float32)
    keep = rng.random(plane.shape) < 0.05
    return np.where(keep, plane, 0).astype(np.float32), plane


@pytest.mark.parametrize('name', ['nearest', 'classical', 'ipbasic'])
def test_baseline_fills_are_dense_and_near_the_surface(name):
    sparse, plane = _sparse_slanted_plane(np.random.default_rng(3))
    dense = real_suite.baseline_fills()[name](np.zeros((60, 80, 3), np.uint8), sparse)
    assert dense.shape == sparse.shape and dense.dtype == np.float32
    assert np.all(dense > 0)
    assert np.abs(dense - plane).max() < 0.6  # within a few pixels' slope of the plane
    if name == 'nearest':
        np.testing.assert_array_equal(dense[sparse > 0], sparse[sparse > 0])


def test_nearest_fill_takes_the_nearest_input():
    sparse = np.zeros((5, 9), np.float32)
    sparse[2, 0], sparse[2, 8] = 1.0, 3.0
    dense = real_suite.nearest_fill(None, sparse)
    assert np.all(dense[:, :4] == 1.0) and np.all(dense[:, 5:] == 3.0)


def test_ip_basic_keeps_a_constant_depth_and_prefers_near_points():
    constant = np.zeros((40, 50), np.float32)
    constant[::4, ::4] = 7.0
    for dense in (ip_basic.fill_fast(constant), ip_basic.fill_multiscale(constant)):
        filled = dense > 0
        assert filled.mean() > 0.9
        np.testing.assert_allclose(dense[filled], 7.0, atol=1e-4)
    two = np.zeros((9, 9), np.float32)
    two[4, 3], two[4, 5] = 2.0, 50.0  # the dilation's max on inverted depth picks the near one
    assert ip_basic.fill_fast(two, extrapolate=False, blur='bilateral')[4, 4] < 3.0


def test_score_methods_and_table_compare_a_model_with_the_best_fill():
    sparse, plane = _sparse_slanted_plane(np.random.default_rng(4))
    target = np.where(sparse > 0, 0, plane).astype(np.float32)
    track = real_tracks.Track('plane', 'lidar', [
        real_tracks.Sample(np.zeros((60, 80, 3), np.uint8), sparse, target, 'plane/0')])
    methods = {**real_suite.baseline_fills(), 'oracle': lambda rgb, s: plane,
               'twice': lambda rgb, s: 2 * plane}
    results = real_suite.score_methods([track], methods)
    scores = results['plane']['methods']
    assert results['plane']['frames'] == 1
    assert scores['oracle']['rmse'] == pytest.approx(0, abs=1e-6)
    assert scores['twice']['mae'] == pytest.approx(plane[target > 0].mean(), rel=1e-4)
    table = real_suite.format_table(results)
    assert '| plane (1) | oracle |' in table and '-100.0%' in table
    best = min(scores[name]['rmse'] for name in ('nearest', 'classical', 'ipbasic'))
    assert f'{100 * (scores["twice"]["rmse"] / best - 1):+.1f}%' in table


def test_variant_changes_against_the_fp32_model_per_track():
    """Precision / step variants are compared with their own model, track by track; the
    largest absolute change is reported."""
    rng = np.random.default_rng(7)
    tracks = []
    for name in ('near', 'far'):
        sparse, plane = _sparse_slanted_plane(rng)
        target = np.where(sparse > 0, 0, plane).astype(np.float32)
        tracks.append(real_tracks.Track(name, 'lidar', [
            real_tracks.Sample(np.zeros((60, 80, 3), np.uint8), sparse, target, f'{name}/0')]))
    methods = {'model': lambda rgb, s: 1.1 * s.max() * np.ones_like(s),
               'model/fp16': lambda rgb, s: 1.12 * s.max() * np.ones_like(s),
               'model@8': lambda rgb, s: 1.1 * s.max() * np.ones_like(s),
               'nearest': real_suite.baseline_fills()['nearest']}
    results = real_suite.score_methods(tracks, methods)
    changes = real_suite.variant_changes(results)
    assert set(changes) == {'model/fp16', 'model@8'}
    assert changes['model@8']['max_rmse'] == 0 and changes['model@8']['max_mae'] == 0
    for track in ('near', 'far'):
        scores = results[track]['methods']
        expected = scores['model/fp16']['rmse'] / scores['model']['rmse'] - 1
        assert changes['model/fp16']['tracks'][track]['rmse'] == pytest.approx(expected)
    assert changes['model/fp16']['max_rmse'] == max(
        abs(t['rmse']) for t in changes['model/fp16']['tracks'].values()) > 0


def test_main_skips_cleanly_without_data(tmp_path, capsys):
    assert real_suite.main(['--data', str(tmp_path / 'absent'), '--no-model']) == 0
    assert 'skipped' in capsys.readouterr().out


def test_argoverse_rings_select_points_at_beam_elevations():
    beams = np.radians([0.0, 7.0])  # two VLP-32C beams
    between = np.radians(0.5)
    distance = 20.0
    # Camera frame = LiDAR frame rotated so that the camera looks along the LiDAR's x axis.
    T_lidar_from_camera = np.array([[0, 0, 1, 0], [-1, 0, 0, 0], [0, -1, 0, 0], [0, 0, 0, 1.0]])
    heights = distance * np.tan([*beams, between])
    points = np.stack([np.zeros(3), -heights, np.full(3, distance)], 1)  # camera y points down
    np.testing.assert_array_equal(real_tracks.ring_mask(points, T_lidar_from_camera, 0.0),
                                  [True, True, False])
    np.testing.assert_array_equal(real_tracks.ring_mask(points, T_lidar_from_camera, 0.5),
                                  [False, False, True])
