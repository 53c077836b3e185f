"""classical_fill: keeps valid inputs, fills every hole, sensible values on LiDAR and ToF maps."""
import numpy as np
import pytest

from cspn_ros.model.fill import classical_fill


def slanted_plane(height, width, near=4.0, far=12.0):
    """Depth growing linearly from left to right, (H,W) float32 metres."""
    return np.broadcast_to(np.linspace(near, far, width, dtype=np.float32), (height, width)).copy()


def test_lidar_sparse_input_is_kept_and_filled():
    rng = np.random.default_rng()
    truth = slanted_plane(48, 64)
    sparse = np.where(rng.random(truth.shape) < 0.05, truth, 0).astype(np.float32)
    dense = classical_fill(sparse)
    assert dense.dtype == np.float32 and dense.shape == truth.shape
    valid = sparse > 0
    assert np.array_equal(dense[valid], sparse[valid])  # bit for bit
    assert (dense > 0).all()
    assert np.abs(dense - truth).mean() < 0.05 * (truth.max() - truth.min())


def test_tof_holes_take_the_surrounding_depth():
    rng = np.random.default_rng()
    depth = np.full((40, 56), 3.0, np.float32) + rng.uniform(0, 0.01, (40, 56)).astype(np.float32)
    depth[8:20, 10:30] = 0.0  # a dropout patch
    depth[rng.random(depth.shape) < 0.05] = 0.0  # scattered holes
    dense = classical_fill(depth)
    holes = depth == 0
    assert np.array_equal(dense[~holes], depth[~holes])
    np.testing.assert_allclose(dense[holes], 3.0, atol=0.02)


def test_near_surface_wins_at_its_own_holes():
    """Inverted dilation favours the nearer surface: a hole inside a near object stays near."""
    depth = np.full((40, 40), 20.0, np.float32)
    depth[10:30, 10:30] = 2.0
    depth[18:22, 18:22] = 0.0
    dense = classical_fill(depth)
    np.testing.assert_allclose(dense[18:22, 18:22], 2.0, atol=1e-4)


def test_non_finite_beyond_range_and_empty_inputs():
    rng = np.random.default_rng()
    sparse = np.where(rng.random((24, 40)) < 0.1, rng.uniform(1, 30, (24, 40)), 0)
    sparse = sparse.astype(np.float32)
    with_nan = sparse.copy()
    with_nan[0, :5] = np.nan
    with_nan[1, :5] = np.inf
    dense = classical_fill(with_nan, max_depth=25.0)
    assert np.isfinite(dense).all() and (dense > 0).all()
    filled = ~(sparse > 0)
    assert dense[filled].max() <= 25.0
    assert np.array_equal(classical_fill(np.zeros((8, 9), np.float32)), np.zeros((8, 9)))
    with pytest.raises(ValueError, match=r'\(H, W\)'):
        classical_fill(np.zeros((4, 4, 1), np.float32))
