"""KernelRegressionFill: steering-kernel weights, reach, scales and gradients vs float64 loops."""
import math
import random

import numpy as np
import pytest
import torch

from cspn_ros.config import ModelConfig
from cspn_ros.model.kernel_regression import (REACH, SCALES, SIGMA_MAX, SIGMA_MIN, WINDOW,
                                              KernelRegressionFill, steering_kernel_regression)


@pytest.fixture(autouse=True)
def fresh_seed():
    seed = random.SystemRandom().randrange(2 ** 31)
    print(f'torch seed {seed}')
    torch.manual_seed(seed)


def random_sparse(batch, height, width, density, dtype=torch.float64):
    depth = 0.5 + 20 * torch.rand(batch, 1, height, width, dtype=dtype)
    return depth * (torch.rand(batch, 1, height, width, dtype=dtype) < density)


def reference_regression(sparse, params):
    """Float64 loop: Gaussian-weighted mean of the points in the window around each pixel."""
    sparse, params = sparse.double().numpy(), params.double().numpy()
    batch, _, height, width = sparse.shape
    radius = WINDOW // 2
    dense = np.zeros_like(sparse)
    valid = np.zeros(sparse.shape, dtype=bool)
    for b in range(batch):
        for y in range(height):
            for x in range(width):
                logits = params[b, :2, y, x]
                sig_u, sig_v = SIGMA_MIN + (SIGMA_MAX - SIGMA_MIN) / (1 + np.exp(-logits))
                angle = params[b, 2, y, x]
                cos, sin = np.cos(angle), np.sin(angle)
                rotation = np.array([[cos, -sin], [sin, cos]])
                covariance = rotation @ np.diag([sig_u ** 2, sig_v ** 2]) @ rotation.T
                precision = np.linalg.inv(covariance)
                weight_sum = weighted = 0.0
                for py in range(max(0, y - radius), min(height, y + radius + 1)):
                    for px in range(max(0, x - radius), min(width, x + radius + 1)):
                        if sparse[b, 0, py, px] <= 0:
                            continue
                        offset = np.array([px - x, py - y], dtype=float)
                        q = offset @ precision @ offset
                        valid[b, 0, y, x] |= q <= REACH ** 2
                        weight_sum += np.exp(-0.5 * q)
                        weighted += np.exp(-0.5 * q) * sparse[b, 0, py, px]
                if valid[b, 0, y, x]:
                    dense[b, 0, y, x] = weighted / weight_sum
    return dense, valid


def test_feature_channels():
    assert KernelRegressionFill.feature_channels(ModelConfig()) == 3 * len(SCALES)


def test_single_scale_matches_loop():
    sparse = random_sparse(2, 9, 11, 0.15)
    params = torch.randn(2, 3, 9, 11, dtype=torch.float64) * 2
    dense, valid = steering_kernel_regression(sparse, params)
    expected_dense, expected_valid = reference_regression(sparse, params)
    assert dense.shape == valid.shape == sparse.shape
    np.testing.assert_array_equal(valid.numpy(), expected_valid)
    np.testing.assert_allclose(dense.numpy(), expected_dense, rtol=1e-10, atol=1e-10)


def test_single_point_spreads_with_the_kernel_ellipse():
    size = 15
    sigma_u, sigma_v = 2.5, 0.8
    angle = random.uniform(0, math.pi)
    logit = lambda s: math.log((s - SIGMA_MIN) / (SIGMA_MAX - s))  # noqa: E731
    params = torch.tensor([logit(sigma_u), logit(sigma_v), angle], dtype=torch.float64)
    params = params.view(1, 3, 1, 1).expand(1, 3, size, size)
    sparse = torch.zeros(1, 1, size, size, dtype=torch.float64)
    sparse[0, 0, 7, 7] = 4.25
    dense, valid = steering_kernel_regression(sparse, params)
    u = np.array([math.cos(angle), math.sin(angle)])
    v = np.array([-math.sin(angle), math.cos(angle)])
    for y in range(size):
        for x in range(size):
            offset = np.array([7 - x, 7 - y])
            inside_window = max(abs(7 - x), abs(7 - y)) <= WINDOW // 2
            reached = (offset @ u / sigma_u) ** 2 + (offset @ v / sigma_v) ** 2 <= REACH ** 2
            assert bool(valid[0, 0, y, x]) == (inside_window and reached), (y, x)
            assert dense[0, 0, y, x].item() == pytest.approx(4.25 if valid[0, 0, y, x] else 0.0)
    assert valid.sum() > 5  # the ellipse is wider than the point itself


def test_constant_sparse_fills_to_the_constant_everywhere():
    constant = random.uniform(0.5, 80.0)
    sparse = (torch.rand(2, 1, 48, 64) < 0.05) * torch.tensor(constant)
    features = torch.randn(2, len(SCALES) * 3, 48, 64) + 4  # wide kernels
    dense, valid = KernelRegressionFill().fill(sparse, features)
    assert valid.all()
    torch.testing.assert_close(dense, torch.full_like(dense, constant))


def test_scales_fine_first_then_coarse_reach():
    sparse = torch.zeros(1, 1, 24, 32, dtype=torch.float64)
    sparse[0, 0, 5, 6] = 3.0  # block (1, 1) at scale 4
    sparse[0, 0, 18, 25] = 9.0  # block (4, 6)
    features = torch.randn(1, 3 * len(SCALES), 24, 32, dtype=torch.float64) + 4  # wide kernels
    fill = KernelRegressionFill()
    dense, valid = fill.fill(sparse, features)
    fine_dense, fine_valid = steering_kernel_regression(sparse, features[:, :3])
    assert torch.equal(fill(sparse, features), dense)
    assert torch.all(valid[fine_valid])
    torch.testing.assert_close(dense[fine_valid], fine_dense[fine_valid])
    assert torch.all(dense[~valid] == 0)
    coarse_only = valid & ~fine_valid
    assert coarse_only[0, 0, 0, 0]  # 5+ pixels from the nearest point, 1 block away
    values = dense[coarse_only]
    assert torch.all((values >= 3.0 - 1e-9) & (values <= 9.0 + 1e-9))
    # Blocks in columns 0-2 are more than 3 blocks from the far point: pure copies of the near one.
    near_only = dense[..., :12][coarse_only[..., :12]]
    torch.testing.assert_close(near_only, torch.full_like(near_only, 3.0))


def test_gradients_reach_features_and_depths():
    sparse = random_sparse(1, 20, 24, 0.1, dtype=torch.float32)
    sparse.requires_grad_(True)
    features = torch.randn(1, 3 * len(SCALES), 20, 24, requires_grad=True)
    dense = KernelRegressionFill()(sparse, features)
    (dense * torch.rand_like(dense)).sum().backward()
    assert torch.isfinite(features.grad).all() and features.grad.abs().sum() > 0
    assert torch.isfinite(sparse.grad).all() and sparse.grad.abs().sum() > 0
