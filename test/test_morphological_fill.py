"""The weight-free torch nearest-depth fill (initial_fill='morphological')."""
import numpy as np
import pytest
import torch

from cspn_ros.config import ModelConfig
from cspn_ros.model.morphological_fill import nearest_depth_fill
from cspn_ros.model.network import CompletionNet


def _sparse(rng, height, width, density):
    depth = rng.uniform(0.5, 40.0, (1, 1, height, width)).astype(np.float32)
    depth[rng.random(depth.shape) > density] = 0
    return torch.from_numpy(depth)


@pytest.mark.parametrize('size', [(48, 64), (37, 53), (5, 3), (352, 1216)])
def test_every_pixel_is_filled_and_inputs_are_kept_exactly(size):
    rng = np.random.default_rng()
    sparse = _sparse(rng, *size, density=0.02)
    sparse[0, 0, 0, 0] = 7.0  # at least one point
    filled = nearest_depth_fill(sparse)
    assert (filled > 0).all()
    valid = sparse > 0
    assert torch.equal(filled[valid], sparse[valid])
    # every filled value is one of the measured depths up to rounding (no blending)
    measured = np.unique(sparse[valid].numpy())
    values = filled.numpy().ravel()
    above = np.clip(np.searchsorted(measured, values), 0, len(measured) - 1)
    below = np.clip(above - 1, 0, len(measured) - 1)
    nearest = np.where(np.abs(measured[above] - values) < np.abs(measured[below] - values),
                       measured[above], measured[below])
    np.testing.assert_allclose(values, nearest, rtol=1e-6)


def test_a_single_point_fills_the_whole_frame_and_an_empty_frame_stays_empty():
    sparse = torch.zeros(1, 1, 300, 200)
    sparse[0, 0, 250, 20] = 3.5
    torch.testing.assert_close(nearest_depth_fill(sparse), torch.full_like(sparse, 3.5))
    assert torch.equal(nearest_depth_fill(torch.zeros(2, 1, 40, 30)), torch.zeros(2, 1, 40, 30))


def test_the_nearer_surface_wins_where_two_points_reach():
    sparse = torch.zeros(1, 1, 9, 9)
    sparse[0, 0, 4, 3] = 10.0
    sparse[0, 0, 4, 5] = 2.0
    filled = nearest_depth_fill(sparse)
    assert filled[0, 0, 4, 4] == 2.0  # between the two: the near one
    assert filled[0, 0, 4, 3] == 10.0  # the far point itself is kept


def test_network_with_morphological_fill_runs_and_is_scale_equivariant():
    torch.manual_seed(0)
    model = CompletionNet(ModelConfig(width=8, steps=2, initial_fill='morphological',
                                     max_depth=1e4)).eval()
    rng = np.random.default_rng(1)
    rgb = torch.rand(1, 3, 37, 53)
    sparse = _sparse(rng, 37, 53, 0.05)
    with torch.no_grad():
        out = model(rgb, sparse)
        scaled = model(rgb, sparse * 4.0)
    assert out['depth'].shape == (1, 1, 37, 53) and torch.isfinite(out['depth']).all()
    torch.testing.assert_close(scaled['depth'], out['depth'] * 4.0, rtol=1e-4, atol=1e-4)
