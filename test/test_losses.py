"""Losses: masks honoured, smoothness edge-aware, photometric warping exact on synthetic views."""
import numpy as np
import pytest
import torch

from cspn_ros.train.losses import (depth_loss, edge_aware_smoothness, masked_l1, masked_l2,
                                   photometric_error, photometric_loss, warp_to_target)


def test_masked_l1_l2_match_loop_reference_and_ignore_missing_targets():
    g = torch.Generator().manual_seed(int(np.random.default_rng().integers(1 << 31)))
    pred = torch.rand(2, 1, 7, 9, generator=g, dtype=torch.float64) * 10
    target = torch.rand(2, 1, 7, 9, generator=g, dtype=torch.float64) * 10
    target[torch.rand(target.shape, generator=g) < 0.5] = 0
    extra = torch.rand(target.shape, generator=g) < 0.7
    for mask in (None, extra):
        pairs = [(p, t) for p, t, m in zip(pred.flatten().tolist(), target.flatten().tolist(),
                                          (extra if mask is not None else
                                           torch.ones_like(extra)).flatten().tolist())
                 if t > 0 and m]
        l1 = sum(abs(p - t) for p, t in pairs) / len(pairs)
        l2 = sum((p - t) ** 2 for p, t in pairs) / len(pairs)
        assert masked_l1(pred, target, mask).item() == pytest.approx(l1)
        assert masked_l2(pred, target, mask).item() == pytest.approx(l2)
        assert depth_loss(pred, target, 0.3, 2.0, mask).item() == pytest.approx(0.3 * l1 + 2 * l2)
    # Changing the prediction where the target is missing changes nothing.
    changed = pred.clone()
    changed[target == 0] += 100
    assert masked_l1(changed, target).item() == pytest.approx(masked_l1(pred, target).item())


def test_masked_loss_without_targets_is_zero_with_gradient():
    pred = torch.rand(1, 1, 4, 4, requires_grad=True)
    loss = masked_l1(pred, torch.zeros(1, 1, 4, 4))
    loss.backward()
    assert loss.item() == 0 and torch.all(pred.grad == 0)


def test_edge_aware_smoothness_is_cheaper_across_image_edges():
    depth = torch.ones(1, 1, 16, 16)
    depth[..., 8:] = 5.0  # depth step between columns 7 and 8
    flat_image = torch.full((1, 3, 16, 16), 0.5)
    edge_image = flat_image.clone()
    edge_image[..., 8:] = 1.0  # image edge at the same place
    assert edge_aware_smoothness(torch.full_like(depth, 3.0), flat_image).item() == 0
    assert (edge_aware_smoothness(depth, edge_image).item()
            < edge_aware_smoothness(depth, flat_image).item())
    # Scale invariant: depth normalised by its mean.
    assert edge_aware_smoothness(depth * 7, flat_image).item() == pytest.approx(
        edge_aware_smoothness(depth, flat_image).item(), rel=1e-5)


def _camera(width, height, f=20.0):
    return torch.tensor([[[f, 0, (width - 1) / 2], [0, f, (height - 1) / 2], [0, 0, 1]]],
                        dtype=torch.float64)


def test_warp_of_fronto_parallel_plane_is_the_expected_pixel_shift():
    rng = np.random.default_rng()
    height, width, depth_m, f = 12, 40, 4.0, 20.0
    shift = int(rng.integers(1, 5))  # pixels: f * tx / depth
    source = torch.from_numpy(rng.random((1, 3, height, width)))
    depth = torch.full((1, 1, height, width), depth_m, dtype=torch.float64)
    T = torch.eye(4, dtype=torch.float64)[None].clone()
    T[0, 0, 3] = shift * depth_m / f  # source camera at -tx: points move +tx in the source
    warped, valid = warp_to_target(source, depth, _camera(width, height, f), T)
    for v in range(height):
        for u in range(width - shift):
            assert valid[0, 0, v, u]
            assert torch.allclose(warped[0, :, v, u], source[0, :, v, u + shift], atol=1e-9)
    assert not valid[0, 0, :, width - shift:].any()  # projected outside the source image


def test_photometric_loss_is_lowest_at_the_true_depth():
    rng = np.random.default_rng()
    height, width, f, depth_m = 16, 48, 20.0, 5.0
    scene = torch.from_numpy(rng.random((1, 3, height, width + 8)))
    target = scene[..., :width]
    source = scene[..., 4:width + 4]  # the view shifted by 4 px at depth_m
    T = torch.eye(4, dtype=torch.float64)[None].clone()
    T[0, 0, 3] = -4 * depth_m / f
    K = _camera(width, height, f)

    def loss_at(d):
        return photometric_loss(target, [source], torch.full((1, 1, height, width), d,
                                                             dtype=torch.float64), K, [T]).item()
    # Only the SSIM windows touching the uncovered border columns differ at the true depth.
    assert loss_at(depth_m) < 0.01
    assert loss_at(depth_m * 1.5) > 10 * loss_at(depth_m)
    assert loss_at(depth_m / 1.5) > 10 * loss_at(depth_m)
    assert photometric_error(target, target).abs().max().item() < 1e-12
