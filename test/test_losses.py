"""Losses: masks honoured, smoothness edge-aware, photometric warping exact on synthetic views."""
import numpy as np
import pytest
import torch

import math

from cspn_ros.train.losses import (CONFIDENCE_EPS, confidence_loss, depth_loss,
                                   edge_aware_smoothness, frame_rmse, good_pixels, masked_l1,
                                   masked_l2, photometric_error, photometric_loss, warp_to_target)


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


def test_frame_rmse_is_the_mean_of_per_frame_rmses_over_frames_with_targets():
    g = torch.Generator().manual_seed(int(np.random.default_rng().integers(1 << 31)))
    pred = torch.rand(4, 1, 6, 8, generator=g, dtype=torch.float64) * 10
    target = torch.rand(4, 1, 6, 8, generator=g, dtype=torch.float64) * 10
    target[torch.rand(target.shape, generator=g) < 0.4] = 0
    target[2] = 0  # a frame without any target is left out, not counted as 0
    extra = torch.rand(target.shape, generator=g) < 0.7
    for mask in (None, extra):
        keep = (target > 0) if mask is None else (target > 0) & extra
        rmses = []
        for frame in range(4):
            errors = [(p - t) ** 2 for p, t, k in zip(pred[frame].flatten().tolist(),
                                                      target[frame].flatten().tolist(),
                                                      keep[frame].flatten().tolist()) if k]
            if errors:
                rmses.append(math.sqrt(sum(errors) / len(errors)))
        assert len(rmses) == 3
        assert frame_rmse(pred, target, mask).item() == pytest.approx(sum(rmses) / 3, rel=1e-6)


def test_frame_rmse_pulls_each_frame_equally_whatever_its_depth_range():
    # A room (metres) and a street 20 x farther with 20 x larger errors: the same gradient norm
    # per frame, where the pooled L2 gives the street 20 x more.
    g = torch.Generator().manual_seed(int(np.random.default_rng().integers(1 << 31)))
    room = 1 + 3 * torch.rand(1, 1, 8, 8, generator=g, dtype=torch.float64)
    error = 0.1 * torch.randn(1, 1, 8, 8, generator=g, dtype=torch.float64)
    target = torch.cat([room, 20 * room])
    for loss, street_over_room in ((frame_rmse, 1.0), (masked_l2, 20.0)):
        pred = torch.cat([room + error, 20 * (room + error)]).requires_grad_(True)
        loss(pred, target).backward()
        norms = pred.grad.flatten(1).norm(dim=1)
        assert (norms[1] / norms[0]).item() == pytest.approx(street_over_room, rel=1e-6)
    perfect = target.clone().requires_grad_(True)
    frame_rmse(perfect, target).backward()
    assert torch.all(torch.isfinite(perfect.grad))


def test_masked_loss_without_targets_is_zero_with_gradient():
    for loss_function in (masked_l1, frame_rmse):
        pred = torch.rand(1, 1, 4, 4, requires_grad=True)
        loss = loss_function(pred, torch.zeros(1, 1, 4, 4))
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


def _confidence_case(generator):
    """Random target (some missing) and a depth near it: some pixels good, some not."""
    target = torch.rand(2, 1, 6, 8, generator=generator) * 20
    target[torch.rand(target.shape, generator=generator) < 0.3] = 0
    depth = target * (1 + 0.2 * (torch.rand(target.shape, generator=generator) - 0.5))
    depth = depth + 0.1 * (torch.rand(target.shape, generator=generator) - 0.5)
    return depth, target


def test_good_pixels_and_confidence_loss_match_a_loop_reference():
    g = torch.Generator().manual_seed(int(np.random.default_rng().integers(1 << 31)))
    depth, target = _confidence_case(g)
    confidence = torch.rand(depth.shape, generator=g)
    good = good_pixels(depth, target)
    terms = []
    for d, t, c, flag in zip(depth.flatten().tolist(), target.flatten().tolist(),
                             confidence.flatten().tolist(), good.flatten().tolist()):
        expected = t > 0 and abs(d - t) <= max(0.05 * t, 0.05)
        assert flag == expected
        if t > 0:
            c = min(max(c, CONFIDENCE_EPS), 1 - CONFIDENCE_EPS)
            terms.append(-math.log(c) if expected else -math.log(1 - c))
    assert 0 < good.sum() < (target > 0).sum()  # the case has both kinds of pixel
    assert confidence_loss(confidence, depth, target).item() == pytest.approx(
        sum(terms) / len(terms), rel=1e-5)


def test_confidence_loss_is_minimal_at_the_good_pixel_indicator():
    g = torch.Generator().manual_seed(int(np.random.default_rng().integers(1 << 31)))
    depth, target = _confidence_case(g)
    indicator = good_pixels(depth, target).float()
    best = confidence_loss(indicator, depth, target).item()
    assert best < 1e-5
    for _ in range(5):
        other = (indicator + 0.3 * torch.rand(depth.shape, generator=g)).clamp(0, 1)
        other = torch.where(torch.rand(depth.shape, generator=g) < 0.5, other, 1 - other)
        assert confidence_loss(other, depth, target).item() > best
    # Pixels without a target do not count.
    flipped = torch.where(target > 0, indicator, 1 - indicator)
    assert confidence_loss(flipped, depth, target).item() == pytest.approx(best)


def test_confidence_loss_trains_the_confidence_only_in_float32_under_autocast():
    g = torch.Generator().manual_seed(int(np.random.default_rng().integers(1 << 31)))
    depth, target = _confidence_case(g)
    depth.requires_grad_(True)
    logits = torch.randn(depth.shape, generator=g, requires_grad=True)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        confidence = torch.sigmoid(logits).to(torch.bfloat16)
        loss = confidence_loss(confidence, depth, target)
    assert loss.dtype == torch.float32
    loss.backward()
    assert depth.grad is None  # the depth is detached: no gradient reaches the depth path
    assert logits.grad.abs().sum() > 0
    assert torch.all(logits.grad[target == 0] == 0)
