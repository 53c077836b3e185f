"""The range-free model form: a bounded log residual over weight-free fills, the 'blend' fill
and convex CSPN affinities (ModelConfig residual / initial_fill / affinity)."""
import math

import numpy as np
import pytest
import torch

from cspn_ros.config import ModelConfig
from cspn_ros.model.morphological_fill import interpolation_fill, nearest_depth_fill
from cspn_ros.model.network import CompletionNet
from cspn_ros.model.propagation.cspn import convex_affinity


def _inputs(seed, height=40, width=56, density=0.05):
    generator = torch.Generator().manual_seed(seed)
    rgb = torch.rand(2, 3, height, width, generator=generator)
    keep = torch.rand(2, 1, height, width, generator=generator) < density
    depth = 0.5 + 60 * torch.rand(2, 1, height, width, generator=generator)
    return rgb, torch.where(keep, depth, torch.zeros(()))


def _randomised(config, seed):
    """An untrained network whose heads give large outputs (the worst case for the bound)."""
    torch.manual_seed(seed)
    net = CompletionNet(config).eval()
    with torch.no_grad():
        for parameter in net.depth_head.parameters():
            parameter.mul_(50)
    return net


@pytest.mark.parametrize('bound', [0.1, 1.0])
def test_initial_depth_stays_within_the_bound_of_its_fill(bound):
    config = ModelConfig(width=8, steps=3, initial_fill='morphological', residual='log',
                         max_log_residual=bound, max_depth=1000.0)
    rgb, sparse = _inputs(1)
    with torch.inference_mode():
        init = _randomised(config, 2)(rgb, sparse)['depth_init']
    ratio = init / nearest_depth_fill(sparse)
    assert float(ratio.min()) >= math.exp(-bound) * (1 - 1e-4)
    assert float(ratio.max()) <= math.exp(bound) * (1 + 1e-4)
    assert float(ratio.log().abs().max()) > 0.5 * bound  # the head does move it


def test_log_residual_model_is_range_free():
    """Median normalisation + a log residual: metres scaled by s give depths scaled by s."""
    config = ModelConfig(width=8, steps=4, initial_fill='morphological', residual='log',
                         max_depth=1e6)
    net = _randomised(config, 3)
    rgb, sparse = _inputs(4)
    with torch.inference_mode():
        near = net(rgb, sparse)['depth']
        far = net(rgb, sparse * 37.0)['depth']
    torch.testing.assert_close(far, near * 37.0, rtol=1e-3, atol=1e-3)


def test_convex_propagation_never_leaves_the_range_of_its_inputs():
    config = ModelConfig(width=8, steps=12, initial_fill='blend', residual='log',
                         affinity='convex', max_log_residual=0.5, max_depth=1000.0)
    net = _randomised(config, 5)
    with torch.no_grad():
        for parameter in net.guidance_head.parameters():
            parameter.mul_(50)
    rgb, sparse = _inputs(6)
    with torch.inference_mode():
        out = net(rgb, sparse)
    for b in range(2):
        measured = sparse[b][sparse[b] > 0]
        low = min(float(measured.min()), float(out['depth_init'][b].min()))
        high = max(float(measured.max()), float(out['depth_init'][b].max()))
        assert float(out['depth'][b].min()) >= low * (1 - 1e-5)
        assert float(out['depth'][b].max()) <= high * (1 + 1e-5)
        # the blend of two fills, times at most exp(0.5), stays near the measured range
        assert float(out['depth_init'][b].max()) <= float(measured.max()) * math.exp(0.5) * 1.001
    torch.testing.assert_close(out['depth'][sparse > 0], sparse[sparse > 0])


def test_convex_affinity_is_a_partial_partition_of_unity():
    guidance = 10 * torch.randn(2, 9, 6, 7)
    affinity = convex_affinity(guidance)
    assert affinity.shape == (2, 8, 6, 7)
    assert float(affinity.min()) >= 0
    assert float(affinity.sum(1).max()) <= 1 + 1e-6


def test_interpolation_fill_averages_in_log_depth_and_keeps_inputs():
    rng = np.random.default_rng(7)
    depth = np.where(rng.random((1, 1, 30, 41)) < 0.05,
                     rng.uniform(1, 50, (1, 1, 30, 41)), 0).astype(np.float32)
    sparse = torch.from_numpy(depth)
    dense = interpolation_fill(sparse)
    assert bool((dense > 0).all())
    torch.testing.assert_close(dense[sparse > 0], sparse[sparse > 0], rtol=0, atol=0)
    measured = sparse[sparse > 0]
    assert float(dense.min()) >= float(measured.min()) * (1 - 1e-5)
    assert float(dense.max()) <= float(measured.max()) * (1 + 1e-5)
    # two points: the pixel midway gets their geometric mean
    pair = torch.zeros(1, 1, 1, 3)
    pair[0, 0, 0, 0], pair[0, 0, 0, 2] = 2.0, 8.0
    assert float(interpolation_fill(pair)[0, 0, 0, 1]) == pytest.approx(4.0, rel=1e-5)
    assert float(interpolation_fill(torch.zeros(1, 1, 4, 4)).abs().max()) == 0.0


def test_config_refuses_a_log_residual_without_a_base():
    with pytest.raises(ValueError, match='needs a base'):
        ModelConfig(residual='log')
    with pytest.raises(ValueError, match="needs residual 'log'"):
        ModelConfig(initial_fill='blend')
    with pytest.raises(ValueError, match='affinity'):
        ModelConfig(affinity='positive')
