"""CSPN++ propagation vs a float64 per-pixel loop, and its reduction to CSPN."""
import random

import numpy as np
import pytest
import torch

from cspn_ros.config import ModelConfig
from cspn_ros.model.propagation import build_propagation
from cspn_ros.model.propagation.cspn import CSPNPropagation
from cspn_ros.model.propagation.cspnpp import CSPNPlusPlusPropagation


@pytest.fixture(autouse=True)
def fresh_seed():
    seed = random.SystemRandom().randrange(2 ** 31)
    print(f'torch seed {seed}')
    torch.manual_seed(seed)


def softmax(logits):
    exp = np.exp(logits - logits.max())
    return exp / exp.sum()


def reference_cspnpp(init, guidance, sparse, kernel_sizes, step_counts, preserve):
    """Float64 loop: independent CSPN branches (8sum, centre on H0, border clamp), then mixed."""
    init, guidance, sparse = (t.double().numpy() for t in (init, guidance, sparse))
    batch, _, height, width = init.shape
    out = np.zeros_like(init)
    for b in range(batch):
        mask = sparse[b, 0] > 0
        start = np.where(mask, sparse[b, 0], init[b, 0]) if preserve else init[b, 0]
        channel = sum(k * k - 1 for k in kernel_sizes)
        kernel_logits = guidance[b, channel:channel + len(kernel_sizes)]
        step_logits = guidance[b, channel + len(kernel_sizes):]
        first = 0
        for branch, k in enumerate(kernel_sizes):
            radius = k // 2
            window = range(-radius, radius + 1)
            offsets = [(dy, dx) for dy in window for dx in window if (dy, dx) != (0, 0)]
            raw = guidance[b, first:first + len(offsets)]
            first += len(offsets)
            depth = start.copy()
            for step in range(1, max(step_counts) + 1):
                new = np.zeros_like(depth)
                for y in range(height):
                    for x in range(width):
                        affinity = raw[:, y, x] / max(np.abs(raw[:, y, x]).sum(), 1e-6)
                        value = (1 - affinity.sum()) * start[y, x]
                        for a, (dy, dx) in zip(affinity, offsets):
                            row = min(max(y + dy, 0), height - 1)
                            col = min(max(x + dx, 0), width - 1)
                            value += a * depth[row, col]
                        new[y, x] = value
                depth = np.where(mask, sparse[b, 0], new) if preserve else new
                for index, count in enumerate(step_counts):
                    if count == step:
                        for y in range(height):
                            for x in range(width):
                                sigma = softmax(kernel_logits[:, y, x])[branch]
                                lam = softmax(step_logits[:, y, x])[index]
                                out[b, 0, y, x] += sigma * lam * depth[y, x]
        if preserve:
            out[b, 0][mask] = sparse[b, 0][mask]
    return out


def random_inputs(config, batch, height, width, dtype=torch.float64):
    init = 1 + 9 * torch.rand(batch, 1, height, width, dtype=dtype)
    sparse = (1 + 9 * torch.rand(batch, 1, height, width, dtype=dtype))
    sparse = sparse * (torch.rand(batch, 1, height, width, dtype=dtype) < 0.2)
    channels = CSPNPlusPlusPropagation.guidance_channels(config)
    return init, torch.randn(batch, channels, height, width, dtype=dtype), sparse


def test_guidance_channels():
    assert CSPNPlusPlusPropagation.guidance_channels(ModelConfig()) == 8 + 24 + 48 + 3 + 3
    config = ModelConfig(cspnpp_kernel_sizes=(5,), cspnpp_steps=(2, 4))
    assert CSPNPlusPlusPropagation.guidance_channels(config) == 24 + 1 + 2


@pytest.mark.parametrize('preserve', [True, False])
def test_matches_loop_reference(preserve):
    config = ModelConfig(propagation='cspnpp', cspnpp_kernel_sizes=(3, 5), cspnpp_steps=(3, 1),
                         preserve_sparse=preserve)
    module = build_propagation(config)
    assert isinstance(module, CSPNPlusPlusPropagation)
    init, guidance, sparse = random_inputs(config, 2, 6, 7)
    depth, aux = module(init, guidance, sparse)
    expected = reference_cspnpp(init, guidance, sparse, (3, 5), (3, 1), preserve)
    assert depth.dtype == torch.float64
    np.testing.assert_allclose(depth.numpy(), expected, rtol=1e-10, atol=1e-10)
    ones = torch.ones(2, 6, 7, dtype=torch.float64)
    for key in ('kernel_weights', 'step_weights'):
        assert aux[key].shape == (2, 2, 6, 7)
        torch.testing.assert_close(aux[key].sum(dim=1), ones)


@pytest.mark.parametrize('kernel_size, steps', [(3, 4), (5, 2)])
def test_one_kernel_one_step_count_is_cspn(kernel_size, steps):
    config = ModelConfig(kernel_size=kernel_size, steps=steps, cspnpp_kernel_sizes=(kernel_size,),
                         cspnpp_steps=(steps,))
    init, guidance, sparse = random_inputs(config, 2, 16, 20, dtype=torch.float32)
    depth, _ = CSPNPlusPlusPropagation(config)(init, guidance, sparse)
    expected, _ = CSPNPropagation(config)(init, guidance[:, :kernel_size ** 2 - 1], sparse)
    torch.testing.assert_close(depth, expected, rtol=0, atol=0)


def test_affinity_bound_and_sparse_kept_exactly():
    config = ModelConfig(cspnpp_steps=(2, 5))
    module = CSPNPlusPlusPropagation(config)
    init, guidance, sparse = random_inputs(config, 1, 12, 16, dtype=torch.float32)
    guidance[:, :80] *= 100
    affinities, _, _ = module.split_guidance(guidance)
    assert [a.shape[1] for a in affinities] == [8, 24, 48]
    for affinity in affinities:
        assert torch.all(affinity.abs().sum(dim=1) <= 1 + 1e-5)
    depth, _ = module(init, guidance, sparse)
    mask = sparse > 0
    assert torch.equal(depth[mask], sparse[mask])
    assert not torch.equal(depth[~mask], init[~mask])


def test_gradients_flow():
    config = ModelConfig(cspnpp_kernel_sizes=(3, 5), cspnpp_steps=(1, 3))
    module = CSPNPlusPlusPropagation(config)
    init, guidance, sparse = random_inputs(config, 1, 10, 12, dtype=torch.float32)
    init.requires_grad_(True)
    guidance.requires_grad_(True)
    depth, _ = module(init, guidance, sparse)
    (depth * torch.rand_like(depth)).sum().backward()
    for grad in (init.grad, guidance.grad):
        assert torch.isfinite(grad).all()
    per_channel = guidance.grad.abs().sum(dim=(0, 2, 3))
    assert torch.all(per_channel > 0)  # affinities, kernel logits and step logits all learn


def test_steps_set_at_run_time_rescale_the_step_counts():
    config = ModelConfig(propagation='cspnpp', cspnpp_kernel_sizes=(3,), cspnpp_steps=(6, 12, 24))
    module = CSPNPlusPlusPropagation(config)
    assert module.steps == 24
    module.steps = 12
    assert module.step_counts == (3, 6, 12) and module.steps == 12
    init, guidance, sparse = random_inputs(config, 1, 8, 9, dtype=torch.float32)
    halved, _ = module(init, guidance, sparse)
    expected, _ = CSPNPlusPlusPropagation(ModelConfig(cspnpp_kernel_sizes=(3,),
                                                      cspnpp_steps=(3, 6, 12)))(init, guidance, sparse)
    assert torch.equal(halved, expected)
    module.steps = 24
    assert module.step_counts == (6, 12, 24)
