"""The weight-free torch nearest-depth fill (initial_fill='morphological') and the output
bound by the inputs around each pixel (ModelConfig.input_bound)."""
import dataclasses

import numpy as np
import pytest
import torch

from cspn_ros.config import ModelConfig
from cspn_ros.model.completer import DepthCompleter
from cspn_ros.model.morphological_fill import (bound_by_inputs, bound_radius, bound_within,
                                               input_range, nearest_depth_fill)
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


@pytest.mark.parametrize('opencv', [True, False], ids=['opencv', 'max_pool'])
@pytest.mark.parametrize('radius', [1, 4])
def test_bound_by_inputs_clamps_to_the_window_range_of_the_inputs(opencv, radius):
    """Both filters equal a loop over each pixel's window; no input in it: unchanged."""
    rng = np.random.default_rng()
    sparse = torch.cat([_sparse(rng, 23, 31, 0.04), _sparse(rng, 23, 31, 0.0)])
    depth = torch.from_numpy(rng.uniform(0.1, 60.0, (2, 1, 23, 31)).astype(np.float32))
    lowest, highest = input_range(sparse, radius, opencv=opencv)
    out = torch.where(highest > 0, depth.clamp(lowest, highest), depth)
    expected = depth.clone()
    for b, y, x in np.ndindex(2, 23, 31):
        window = sparse[b, 0, max(0, y - radius):y + radius + 1, max(0, x - radius):x + radius + 1]
        inputs = window[window > 0]
        if inputs.numel():
            expected[b, 0, y, x] = depth[b, 0, y, x].clamp(inputs.min(), inputs.max())
    assert torch.equal(out, expected)
    assert torch.equal(bound_within(depth, sparse, radius), expected)
    assert torch.equal(out[1], depth[1])  # no inputs at all
    assert bound_within(depth, sparse, 0) is depth


def test_the_radius_follows_each_frames_input_spacing():
    assert bound_radius(0, 100, 100, 0.5) == 0
    assert bound_radius(100, 100, 100, 0.5) == 5       # one input per 10 x 10 pixels
    assert bound_radius(10000, 100, 100, 0.5) == 1     # dense: at least 1
    assert bound_radius(1, 1000, 1000, 2.0) == 24      # capped
    rng = np.random.default_rng()
    sparse = torch.cat([_sparse(rng, 40, 60, 0.01), _sparse(rng, 40, 60, 0.25)])
    depth = torch.from_numpy(rng.uniform(0.1, 60.0, (2, 1, 40, 60)).astype(np.float32))
    out = bound_by_inputs(depth, sparse, 0.5)
    for b in range(2):  # each frame with its own radius
        radius = bound_radius(int((sparse[b] > 0).sum()), 40, 60, 0.5)
        assert torch.equal(out[b:b + 1], bound_within(depth[b:b + 1], sparse[b:b + 1], radius))


def test_the_completer_bounds_its_output_and_the_network_is_unchanged():
    """input_bound acts in DepthCompleter after the network: every output pixel with inputs in
    its window lies within their range; the same weights without it give the raw output."""
    torch.manual_seed(0)
    config = ModelConfig(width=8, steps=2, initial_fill='morphological', residual='log')
    model = CompletionNet(config).eval()
    bounded = DepthCompleter(dataclasses.replace(config, input_bound=1.0), model)
    plain = DepthCompleter(config, model)
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 255, (37, 53, 3), dtype=np.uint8)
    sparse = _sparse(rng, 37, 53, 0.1)[0, 0].numpy()
    out, raw = bounded(rgb, sparse), plain(rgb, sparse)
    radius = bound_radius(int((sparse > 0).sum()), 37, 53, 1.0)
    lowest, highest = (x[0, 0].numpy() for x in input_range(torch.from_numpy(sparse)[None, None],
                                                            radius))
    inside = highest > 0
    assert np.all(out[inside] >= lowest[inside]) and np.all(out[inside] <= highest[inside])
    np.testing.assert_array_equal(out, np.where(inside, np.clip(raw, lowest, highest), raw))
    batch = bounded.complete_batch([rgb, rgb], [sparse, sparse])
    np.testing.assert_allclose(batch[0][0], out, rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match='input_bound'):
        ModelConfig(input_bound=-1)
