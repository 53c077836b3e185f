"""CSPN propagation: vectorised torch code vs a per-pixel float64 loop, '8sum' bound, stability,
exact preservation of sparse inputs, and the propagation registry."""
import numpy as np
import pytest
import torch
from conftest import cspn_loop_reference

from cspn_ros.config import ModelConfig
from cspn_ros.model.propagation import build_propagation
from cspn_ros.model.propagation.cspn import (CSPNPropagation, cspn_propagate, cspn_propagate_at,
                                             cspn_step, normalize_affinity)


def random_inputs(generator, batch, channels, height, width, density=0.2):
    init = torch.rand(batch, 1, height, width, generator=generator) * 9 + 1
    guidance = torch.randn(batch, channels, height, width, generator=generator)
    keep = torch.rand(batch, 1, height, width, generator=generator) < density
    sparse = torch.where(keep, torch.rand(batch, 1, height, width, generator=generator) * 9 + 1,
                         torch.zeros(()))
    return init, guidance, sparse


@pytest.mark.parametrize('kernel_size, preserve', [(3, True), (3, False), (5, True)])
def test_propagation_matches_per_pixel_loop(kernel_size, preserve):
    generator = torch.Generator().manual_seed(1000 + kernel_size)
    config = ModelConfig(kernel_size=kernel_size, steps=3, preserve_sparse=preserve)
    init, guidance, sparse = random_inputs(generator, 2, kernel_size ** 2 - 1, 7, 9)
    depth, aux = CSPNPropagation(config)(init, guidance, sparse, None)
    expected = cspn_loop_reference(init, guidance, sparse, 3, kernel_size, preserve)
    assert depth.shape == (2, 1, 7, 9) and depth.dtype == torch.float32
    assert aux['affinity'].shape == guidance.shape
    np.testing.assert_allclose(depth.numpy(), expected, rtol=1e-5, atol=1e-5)
    # The plain reference function the fused kernels are checked against.
    reference = cspn_propagate(init, normalize_affinity(guidance),
                               sparse > 0 if preserve else None, sparse, 3)
    np.testing.assert_allclose(reference.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_8sum_bound_and_centre_weight():
    generator = torch.Generator().manual_seed(7)
    guidance = torch.randn(3, 8, 10, 11, generator=generator) * 5
    guidance[0, :, 0, 0] = 0.0  # all-zero guidance must not give NaN
    affinity = normalize_affinity(guidance)
    assert torch.isfinite(affinity).all()
    assert (affinity.abs().sum(1) <= 1 + 1e-6).all()
    # Where the guidance is not tiny the normalisation is exact: sum |a| == 1.
    torch.testing.assert_close(affinity.abs().sum(1)[1:], torch.ones(2, 10, 11))
    # A constant depth (init == depth) is a fixed point: neighbours + centre weights sum to 1.
    constant = torch.full((3, 1, 10, 11), 4.25)
    torch.testing.assert_close(cspn_step(constant, affinity, constant), constant)


def test_step_is_non_expansive():
    """|step(x) - step(y)|_inf <= |x - y|_inf for the same affinity and initial depth."""
    generator = torch.Generator().manual_seed(11)
    affinity = normalize_affinity(torch.randn(2, 8, 12, 13, generator=generator))
    init, x, y = (torch.randn(2, 1, 12, 13, generator=generator, dtype=torch.float64)
                  for _ in range(3))
    affinity = affinity.double()
    change = (cspn_step(x, affinity, init) - cspn_step(y, affinity, init)).abs().max()
    assert change <= (x - y).abs().max() + 1e-12


def test_many_steps_do_not_blow_up():
    generator = torch.Generator().manual_seed(3)
    init, guidance, sparse = random_inputs(generator, 2, 8, 24, 40, density=0.05)
    config = ModelConfig(steps=256)
    depth, _ = CSPNPropagation(config)(init, guidance * 10, sparse, None)
    assert torch.isfinite(depth).all()
    assert depth.abs().max() < 5 * init.abs().max()


def test_sparse_inputs_are_kept_bitwise():
    generator = torch.Generator().manual_seed(5)
    init, guidance, sparse = random_inputs(generator, 2, 8, 24, 40, density=0.05)
    mask = sparse > 0
    for steps in (0, 1, 24):
        depth, _ = CSPNPropagation(ModelConfig(steps=steps))(init, guidance, sparse, None)
        assert torch.equal(depth[mask], sparse[mask])
    # Off: the values at sparse pixels are propagated like every other pixel.
    depth, _ = CSPNPropagation(ModelConfig(steps=4, preserve_sparse=False))(
        init, guidance, sparse, None)
    assert not torch.equal(depth[mask], sparse[mask])


def test_cspn_propagate_without_mask_is_repeated_steps():
    generator = torch.Generator().manual_seed(9)
    init, guidance, _ = random_inputs(generator, 1, 8, 6, 8)
    affinity = normalize_affinity(guidance)
    expected = init
    for _ in range(5):
        expected = cspn_step(expected, affinity, init)
    torch.testing.assert_close(cspn_propagate(init, affinity, None, init, 5), expected)


def test_build_propagation_registry():
    config = ModelConfig(kernel_size=5, steps=7)
    module = build_propagation(config)
    assert isinstance(module, CSPNPropagation)
    assert module.steps == 7 and module.guidance_channels(config) == 24
    with pytest.raises(ValueError, match='classical'):
        build_propagation(ModelConfig(propagation='classical'))


@pytest.mark.parametrize('preserve', [True, False])
def test_hoisted_loop_is_bit_for_bit_the_step_loop(preserve):
    """cspn_propagate_at (centre term computed once, replacement folded in) returns exactly what
    cspn_step followed by the sparse replacement returns, after every step count."""
    generator = torch.Generator().manual_seed(int(torch.randint(0, 2 ** 31, ())))
    init, guidance, sparse = random_inputs(generator, 2, 24, 17, 23)
    affinity = normalize_affinity(guidance)
    mask = sparse > 0 if preserve else None
    results = cspn_propagate_at(init, affinity, mask, sparse, [5, 0, 2])
    depth = torch.where(mask, sparse, init) if preserve else init
    start, expected = depth, {0: depth}
    for step in range(1, 6):
        depth = cspn_step(depth, affinity, start)
        if preserve:
            depth = torch.where(mask, sparse, depth)
        expected[step] = depth
    for count, result in zip([5, 0, 2], results):
        assert torch.equal(result, expected[count]), count
    assert not torch.equal(results[0], results[1])  # propagation changed something


def test_hoisted_loop_has_the_step_loop_gradients():
    """Training backpropagates through cspn_propagate_at (the fused kernels' backward too):
    its gradients are the plain step loop's (float64)."""
    generator = torch.Generator().manual_seed(int(torch.randint(0, 2 ** 31, ())))
    init, guidance, sparse = (t.double() for t in random_inputs(generator, 1, 8, 9, 11))
    mask = sparse > 0
    weights = torch.rand(init.shape, generator=generator, dtype=torch.float64)
    gradients = []
    for hoisted in (True, False):
        leaf_init, leaf_guidance = init.clone().requires_grad_(), guidance.clone().requires_grad_()
        affinity = normalize_affinity(leaf_guidance)
        if hoisted:
            depth = cspn_propagate_at(leaf_init, affinity, mask, sparse, [4])[0]
        else:
            depth = start = torch.where(mask, sparse, leaf_init)
            for _ in range(4):
                depth = torch.where(mask, sparse, cspn_step(depth, affinity, start))
        (depth * weights).sum().backward()
        gradients.append((leaf_init.grad, leaf_guidance.grad))
    for hoisted, plain in zip(*gradients):
        torch.testing.assert_close(hoisted, plain, rtol=1e-12, atol=1e-12)
    assert gradients[0][1].abs().max() > 0
