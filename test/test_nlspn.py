"""NLSPN propagation vs a float64 per-pixel loop with its own bilinear interpolation."""
import math
import random

import numpy as np
import pytest
import torch

from cspn_ros.config import ModelConfig
from cspn_ros.model.propagation import build_propagation
from cspn_ros.model.propagation.nlspn import NLSPNPropagation, neighbour_grid

RING_3X3 = [(-1, 0), (0, -1), (0, 1), (1, 0), (-1, -1), (-1, 1), (1, -1), (1, 1)]


@pytest.fixture(autouse=True)
def fresh_seed():
    seed = random.SystemRandom().randrange(2 ** 31)
    print(f'torch seed {seed}')
    torch.manual_seed(seed)


def bilinear(image, y, x):
    """image (H, W) at fractional (y, x), pixel centres at integers, 0 outside the image."""
    height, width = image.shape
    y0, x0 = math.floor(y), math.floor(x)
    total = 0.0
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= yy < height and 0 <= xx < width:
                total += wy * wx * image[yy, xx]
    return total


def reference_nlspn(init, guidance, sparse, confidence, steps, gamma, base, preserve):
    """Float64 loop over pixels and neighbours, following the NLSPN paper's equations."""
    init, guidance, sparse = (t.double().numpy() for t in (init, guidance, sparse))
    batch, _, height, width = init.shape
    count = len(base)
    out = np.zeros_like(init)
    for b in range(batch):
        positions = np.zeros((height, width, count, 2))
        weights = np.zeros((height, width, count))
        for y in range(height):
            for x in range(width):
                for n, (by, bx) in enumerate(base):
                    py = y + by + guidance[b, n, y, x]
                    px = x + bx + guidance[b, count + n, y, x]
                    positions[y, x, n] = py, px
                    raw = guidance[b, 2 * count + n, y, x]
                    weight = math.tanh(raw) / (gamma + 1e-8)  # the paper code's epsilon
                    if confidence is not None:
                        weight *= bilinear(confidence[b, 0].double().numpy(), py, px)
                    weights[y, x, n] = weight
                weights[y, x] /= max(1.0, np.abs(weights[y, x]).sum())
        depth = init[b, 0].copy()
        mask = sparse[b, 0] > 0
        if preserve:
            depth[mask] = sparse[b, 0][mask]
        for _ in range(steps):
            new = np.zeros_like(depth)
            for y in range(height):
                for x in range(width):
                    value = (1 - weights[y, x].sum()) * depth[y, x]
                    for n in range(count):
                        value += weights[y, x, n] * bilinear(depth, *positions[y, x, n])
                    new[y, x] = value
            depth = new
            if preserve:
                depth[mask] = sparse[b, 0][mask]
        out[b, 0] = depth
    return out


def random_inputs(batch, count, height, width, dtype=torch.float64):
    init = 1 + 9 * torch.rand(batch, 1, height, width, dtype=dtype)
    sparse = (1 + 9 * torch.rand(batch, 1, height, width, dtype=dtype))
    sparse = sparse * (torch.rand(batch, 1, height, width, dtype=dtype) < 0.3)
    guidance = torch.randn(batch, 3 * count, height, width, dtype=dtype)
    guidance[:, :2 * count] *= 1.5  # offsets of a pixel or two, some outside the image
    confidence = torch.rand(batch, 1, height, width, dtype=dtype)
    return init, guidance, sparse, confidence


def test_neighbour_grid():
    assert neighbour_grid(8).tolist() == [list(map(float, cell)) for cell in RING_3X3]
    ring_5x5 = {(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)} - {(0, 0)}
    assert {tuple(map(int, cell)) for cell in neighbour_grid(24).tolist()} == ring_5x5
    assert NLSPNPropagation.guidance_channels(ModelConfig(nlspn_neighbors=5)) == 15


@pytest.mark.parametrize('use_confidence', [True, False])
@pytest.mark.parametrize('preserve', [True, False])
def test_matches_loop_reference(use_confidence, preserve):
    config = ModelConfig(propagation='nlspn', steps=3, nlspn_neighbors=8, preserve_sparse=preserve)
    module = build_propagation(config).double()
    assert isinstance(module, NLSPNPropagation)
    with torch.no_grad():
        module.affinity_gamma.fill_(random.uniform(0.3, 4.0))
    init, guidance, sparse, confidence = random_inputs(2, 8, 5, 7)
    confidence = confidence if use_confidence else None
    depth, aux = module(init, guidance, sparse, confidence)
    expected = reference_nlspn(init, guidance, sparse, confidence, 3,
                               module.affinity_gamma.item(), RING_3X3, preserve)
    np.testing.assert_allclose(depth.detach().numpy(), expected, rtol=1e-10, atol=1e-10)
    assert aux['offsets'].shape == (2, 8, 2, 5, 7)
    assert aux['affinity'].shape == (2, 8, 5, 7)


def test_normalisation_bounds():
    module = NLSPNPropagation(ModelConfig(nlspn_neighbors=12))
    init, guidance, sparse, confidence = random_inputs(2, 12, 16, 20, dtype=torch.float32)
    guidance[:, 24:] *= 5  # saturate tanh: many raw sums far above 1
    with torch.no_grad():
        module.affinity_gamma.fill_(0.5)
    _, aux = module(init, guidance, sparse, None)
    abs_sum = aux['affinity'].abs().sum(dim=1)
    assert torch.all(abs_sum <= 1 + 1e-6)
    assert torch.any(abs_sum > 1 - 1e-6)  # large raw affinities hit the bound exactly
    _, aux_conf = module(init, guidance, sparse, torch.zeros_like(confidence))
    assert torch.all(aux_conf['affinity'] == 0)  # zero confidence: nothing propagates


def test_sparse_inputs_kept_exactly_and_constant_depth_stays():
    module = NLSPNPropagation(ModelConfig(steps=4))
    init, guidance, sparse, confidence = random_inputs(1, 8, 12, 14, dtype=torch.float32)
    depth, _ = module(init, guidance, sparse, confidence)
    mask = sparse > 0
    assert torch.equal(depth[mask], sparse[mask])
    # Integer offsets and a constant depth: weights sum to 1, so the depth stays constant, also
    # at the border, where neighbours outside read confidence 0 and get no weight.
    guidance[:, :16] = torch.randint(-1, 2, guidance[:, :16].shape).float()
    constant = torch.full_like(init, 3.5)
    flat, _ = module(constant, guidance, torch.zeros_like(sparse), confidence)
    torch.testing.assert_close(flat, constant)


def test_gradients_flow():
    module = NLSPNPropagation(ModelConfig(steps=3))
    init, guidance, sparse, confidence = random_inputs(1, 8, 10, 12, dtype=torch.float32)
    for tensor in (init, guidance, confidence):
        tensor.requires_grad_(True)
    depth, _ = module(init, guidance, sparse, confidence)
    (depth * torch.rand_like(depth)).sum().backward()
    for grad in (init.grad, guidance.grad, confidence.grad, module.affinity_gamma.grad):
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert guidance.grad[:, :16].abs().sum() > 0  # offsets learn through the bilinear sampling
