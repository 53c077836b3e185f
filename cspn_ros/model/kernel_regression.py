"""Learned steering-kernel regression: sparse depth -> dense differentiable initial depth.

After Liu et al., "Learning Steering Kernels for Guided Depth Completion" (TIP 2021). At every
pixel the features give an anisotropic Gaussian (a 2x2 covariance: two standard deviations and
an orientation); the sparse points inside a WINDOW x WINDOW neighbourhood are averaged with
those Gaussian weights. A pixel is filled when at least one point lies within REACH standard
deviations (Mahalanobis distance) of it; otherwise it stays 0 and is marked invalid.

Two scales cover sparse LiDAR: scale 1 works on full-resolution pixels, scale 4 on 4x4 blocks
(the mean of the valid depths in a block, at the block centre), so its 7x7 window reaches
about 14 pixels; a pixel takes the finest scale that reaches a point.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cspn_ros.config import ModelConfig

#: Window side (odd), in pixels of each scale.
WINDOW = 7
#: Block sizes of the scales, finest first.
SCALES = (1, 4)
#: Standard deviations are squashed into [SIGMA_MIN, SIGMA_MAX] pixels of the scale.
SIGMA_MIN = 0.5
SIGMA_MAX = WINDOW / 2
#: A point "reaches" a pixel when its Mahalanobis distance is at most REACH.
REACH = 3.0


class KernelRegressionFill(nn.Module):
    """Dense initial depth from sparse points with per-pixel learned steering kernels.

    features: (B, 3 * len(SCALES), H, W), per scale [sigma_u logit, sigma_v logit, angle in
    radians of the u axis from the image x axis]. No weights of its own: the network's feature
    head learns the kernels.
    """

    @staticmethod
    def feature_channels(config: ModelConfig) -> int:
        """Channels the network's kernel head produces: 3 per scale (same for every config)."""
        return 3 * len(SCALES)

    def forward(self, sparse: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """sparse (B, 1, H, W) metres, 0 = missing -> dense (B, 1, H, W) metres, 0 = unreached."""
        return self.fill(sparse, features)[0]

    def fill(self, sparse: torch.Tensor,
             features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Like forward, also returning the validity mask (B, 1, H, W) bool (a point in reach)."""
        height, width = sparse.shape[-2:]
        dense = torch.zeros_like(sparse)
        valid = torch.zeros_like(sparse, dtype=torch.bool)
        for index, scale in reversed(list(enumerate(SCALES))):
            params = features[:, 3 * index:3 * index + 3]
            if scale == 1:
                scale_dense, scale_valid = steering_kernel_regression(sparse, params)
            else:
                scale_dense, scale_valid = _coarse_regression(sparse, params, scale)
                scale_dense = scale_dense[..., :height, :width]
                scale_valid = scale_valid[..., :height, :width]
            dense = torch.where(scale_valid, scale_dense, dense)
            valid = valid | scale_valid
        return dense, valid


def steering_kernel_regression(sparse: torch.Tensor, params: torch.Tensor,
                               window: int = WINDOW) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian-weighted mean of the points in a window, one scale.

    sparse (B, 1, H, W) metres (0 = missing); params (B, 3, H, W) [sigma_u logit, sigma_v logit,
    angle]. The weight of the point at offset (dx, dy) from pixel p is exp(-q / 2),
    q = [dx dy] P(p) [dx dy]^T with P the inverse covariance. Returns dense (B, 1, H, W), 0
    where no point is within REACH, and that validity mask.
    """
    batch, _, height, width = sparse.shape
    radius = window // 2
    sigma = SIGMA_MIN + (SIGMA_MAX - SIGMA_MIN) * torch.sigmoid(params[:, :2])
    inv_u, inv_v = (1 / sigma.square()).unbind(dim=1)
    cos, sin = torch.cos(params[:, 2]), torch.sin(params[:, 2])
    p_xx = cos.square() * inv_u + sin.square() * inv_v
    p_yy = sin.square() * inv_u + cos.square() * inv_v
    p_xy = cos * sin * (inv_u - inv_v)
    steps = torch.arange(-radius, radius + 1, dtype=sparse.dtype, device=sparse.device)
    dy = steps.repeat_interleave(window).view(1, -1, 1, 1)
    dx = steps.repeat(window).view(1, -1, 1, 1)
    q = (p_xx.unsqueeze(1) * dx.square() + 2 * p_xy.unsqueeze(1) * dx * dy
         + p_yy.unsqueeze(1) * dy.square())
    depths = F.unfold(sparse, window, padding=radius).view(batch, window * window, height, width)
    weights = torch.exp(-0.5 * q) * (depths > 0)
    valid = weights.amax(dim=1, keepdim=True) >= math.exp(-0.5 * REACH ** 2)
    total = weights.sum(dim=1, keepdim=True)
    mean = (weights * depths).sum(dim=1, keepdim=True) / total.clamp(min=1e-12)
    return torch.where(valid, mean, torch.zeros_like(mean)), valid


def _coarse_regression(sparse: torch.Tensor, params: torch.Tensor,
                       scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Regression on scale x scale blocks, upsampled (nearest) to the padded full size."""
    height, width = sparse.shape[-2:]
    pad = (0, -width % scale, 0, -height % scale)
    sparse = F.pad(sparse, pad)
    params = F.pad(params, pad, mode='replicate')
    counts = F.avg_pool2d((sparse > 0).to(sparse.dtype), scale)
    block_mean = F.avg_pool2d(sparse, scale) / counts.clamp(min=1 / scale ** 2)
    dense, valid = steering_kernel_regression(block_mean, F.avg_pool2d(params, scale))
    upsample = [scale, scale]
    return (F.interpolate(dense, scale_factor=upsample, mode='nearest'),
            F.interpolate(valid.to(dense.dtype), scale_factor=upsample, mode='nearest') > 0)
