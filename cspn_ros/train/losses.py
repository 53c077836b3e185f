"""Training losses on torch tensors: masked L1/L2, their weighted combination, the per-frame RMSE
(the score evaluate reports, as a loss), the confidence loss (BCE to a 'good pixel' indicator),
edge-aware smoothness and the self-supervised photometric loss (view warping + SSIM/L1).

Shapes: depth (B,1,H,W) metres with 0 = no target; images (B,3,H,W) floats in [0,1];
intrinsics K (B,3,3) pixels; poses (B,4,4) rigid transforms in the camera optical frame.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _valid_mask(target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return (target > 0) if mask is None else mask.bool() & (target > 0)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` where `mask`; 0 (still attached to the graph) where nothing is valid."""
    mask = mask.expand_as(values)
    count = mask.sum()
    total = torch.where(mask, values, torch.zeros_like(values)).sum()
    return total / count.clamp(min=1)


def masked_l1(pred: torch.Tensor, target: torch.Tensor,
              mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean |pred - target| (metres) over pixels with target > 0 (and `mask`, if given)."""
    return _masked_mean((pred - target).abs(), _valid_mask(target, mask))


def masked_l2(pred: torch.Tensor, target: torch.Tensor,
              mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean (pred - target)^2 (metres^2) over pixels with target > 0 (and `mask`, if given)."""
    return _masked_mean((pred - target) ** 2, _valid_mask(target, mask))


def depth_loss(pred: torch.Tensor, target: torch.Tensor, l1_weight: float = 1.0,
               l2_weight: float = 1.0, mask: torch.Tensor | None = None) -> torch.Tensor:
    """l1_weight * masked L1 + l2_weight * masked L2 (the NLSPN / CSPN training objective)."""
    return (l1_weight * masked_l1(pred, target, mask)
            + l2_weight * masked_l2(pred, target, mask))


#: Floor (square metres) under a frame's mean squared error before the square root of
#: `frame_rmse`, so a perfect frame has a finite gradient.
FRAME_RMSE_EPS_M2 = 1e-8


def frame_rmse(pred: torch.Tensor, target: torch.Tensor,
               mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the frames of a batch of each frame's RMSE (metres) over its pixels with
    target > 0 (and `mask`); frames without such pixels are left out (0, still attached to the
    graph, when no frame has any).

    The score evaluate reports (RMSE per frame, averaged over frames) as a loss. Its gradient
    with respect to a frame's errors has the norm 1 / sqrt(pixels) whatever the frame's depth
    range, so a 3 m room seen by a ToF camera pulls as hard as a 60 m street seen by a LiDAR,
    and within a frame the largest errors (depth edges, occlusion shadows) pull hardest.
    """
    valid = _valid_mask(target, mask).expand_as(pred)
    squared = torch.where(valid, (pred - target) ** 2, torch.zeros_like(pred)).flatten(1)
    count = valid.flatten(1).sum(dim=1)
    mean_squared = squared.sum(dim=1) / count.clamp(min=1)
    rmse = torch.sqrt(mean_squared + FRAME_RMSE_EPS_M2)
    scored = count > 0
    return torch.where(scored, rmse, torch.zeros_like(rmse)).sum() / scored.sum().clamp(min=1)


def scaled_frame_loss(pred: torch.Tensor, target: torch.Tensor,
                      mask: torch.Tensor | None = None) -> torch.Tensor:
    """frame_rmse + mean absolute error of each frame, both on depths divided by the frame's
    median target depth (unitless): a 0.3 m table top and a 250 m street pull alike, so training
    on scenes of every scale learns shapes rather than one range."""
    valid = _valid_mask(target, mask).expand_as(pred)
    flat = torch.where(valid, target, torch.full_like(target, float('nan'))).flatten(1)
    scale = torch.nan_to_num(flat.nanmedian(dim=1).values, nan=1.0).clamp_min(1e-3)
    scale = scale.view(-1, *([1] * (pred.dim() - 1)))
    pred, target = pred / scale, target / scale
    absolute = torch.where(valid, (pred - target).abs(), torch.zeros_like(pred)).flatten(1)
    count = valid.flatten(1).sum(dim=1)
    scored = count > 0
    frame_mae = absolute.sum(dim=1) / count.clamp(min=1)
    mae = (torch.where(scored, frame_mae, torch.zeros_like(frame_mae)).sum()
           / scored.sum().clamp(min=1))
    return frame_rmse(pred, target, mask) + mae


#: A predicted depth is 'good' where |depth - target| <= max(GOOD_RELATIVE_ERROR * target,
#: GOOD_ABSOLUTE_ERROR_M): 5 % of the distance, but never less than 5 cm.
GOOD_RELATIVE_ERROR = 0.05
GOOD_ABSOLUTE_ERROR_M = 0.05
#: Confidences are clamped to [eps, 1 - eps] before the logarithms of the cross-entropy.
CONFIDENCE_EPS = 1e-6


def good_pixels(depth: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Bool (B,1,H,W): target > 0 and |depth - target| <= max(5 % of target, 0.05 m)."""
    tolerance = torch.clamp(GOOD_RELATIVE_ERROR * target, min=GOOD_ABSOLUTE_ERROR_M)
    return (target > 0) & ((depth - target).abs() <= tolerance)


def confidence_loss(confidence: torch.Tensor, depth: torch.Tensor, target: torch.Tensor,
                    mask: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy between confidence (B,1,H,W) in [0,1] and `good_pixels(depth,
    target)`, averaged over pixels with target > 0 (and `mask`). The depth is detached, so the
    loss trains the confidence alone; computed in float32 outside autocast."""
    with torch.autocast(confidence.device.type, enabled=False):
        good = good_pixels(depth.detach().float(), target.float()).float()
        probability = confidence.float().clamp(CONFIDENCE_EPS, 1 - CONFIDENCE_EPS)
        cross_entropy = -(good * probability.log() + (1 - good) * (1 - probability).log())
        return _masked_mean(cross_entropy, _valid_mask(target, mask))


def image_gradients(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward differences: dx (B,C,H,W-1), dy (B,C,H-1,W)."""
    return image[..., :, 1:] - image[..., :, :-1], image[..., 1:, :] - image[..., :-1, :]


def edge_aware_smoothness(depth: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Edge-aware smoothness (monodepth): |d(depth/mean)| weighted by exp(-|d image|).

    Depth is divided by its per-image mean so the loss does not depend on the scene's scale;
    gradients across strong image edges cost little. depth (B,1,H,W), image (B,3,H,W) in [0,1].
    """
    normalized = depth / depth.mean(dim=(2, 3), keepdim=True).clamp(min=1e-6)
    depth_dx, depth_dy = image_gradients(normalized)
    image_dx, image_dy = image_gradients(image)
    weight_x = torch.exp(-image_dx.abs().mean(dim=1, keepdim=True))
    weight_y = torch.exp(-image_dy.abs().mean(dim=1, keepdim=True))
    return (depth_dx.abs() * weight_x).mean() + (depth_dy.abs() * weight_y).mean()


def ssim_dissimilarity(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-pixel (1 - SSIM) / 2 in [0,1] over 3x3 windows (reflection padded), (B,C,H,W)."""
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    x = F.pad(x, (1, 1, 1, 1), mode='reflect')
    y = F.pad(y, (1, 1, 1, 1), mode='reflect')
    mu_x, mu_y = F.avg_pool2d(x, 3, 1), F.avg_pool2d(y, 3, 1)
    sigma_x = F.avg_pool2d(x * x, 3, 1) - mu_x ** 2
    sigma_y = F.avg_pool2d(y * y, 3, 1) - mu_y ** 2
    sigma_xy = F.avg_pool2d(x * y, 3, 1) - mu_x * mu_y
    numerator = (2 * mu_x * mu_y + c1) * (2 * sigma_xy + c2)
    denominator = (mu_x ** 2 + mu_y ** 2 + c1) * (sigma_x + sigma_y + c2)
    return ((1 - numerator / denominator) / 2).clamp(0, 1)


def photometric_error(pred: torch.Tensor, target: torch.Tensor,
                      ssim_weight: float = 0.85) -> torch.Tensor:
    """Per-pixel ssim_weight * (1-SSIM)/2 + (1-ssim_weight) * L1, channel mean: (B,1,H,W)."""
    l1 = (pred - target).abs().mean(dim=1, keepdim=True)
    ssim = ssim_dissimilarity(pred, target).mean(dim=1, keepdim=True)
    return ssim_weight * ssim + (1 - ssim_weight) * l1


def warp_to_target(source_image: torch.Tensor, target_depth: torch.Tensor, K: torch.Tensor,
                   T_source_from_target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample the source view into the target view using the target's depth.

    Each target pixel (u,v) with depth z is back-projected, moved into the source camera with
    T_source_from_target (B,4,4) and projected with K (B,3,3) (both views share K); the source
    image is sampled there bilinearly. Returns (warped (B,C,H,W), valid (B,1,H,W) bool: depth
    > 0, in front of the source camera and inside the source image).
    """
    batch, _, height, width = target_depth.shape
    dtype, device = target_depth.dtype, target_depth.device
    v, u = torch.meshgrid(torch.arange(height, dtype=dtype, device=device),
                          torch.arange(width, dtype=dtype, device=device), indexing='ij')
    pixels = torch.stack([u, v, torch.ones_like(u)]).reshape(1, 3, -1)       # (1,3,HW)
    rays = torch.linalg.inv(K.to(dtype)) @ pixels                              # (B,3,HW)
    points = rays * target_depth.reshape(batch, 1, -1)
    T = T_source_from_target.to(dtype)
    points_source = T[:, :3, :3] @ points + T[:, :3, 3:]
    projected = K.to(dtype) @ points_source
    z = projected[:, 2:3]
    uv = projected[:, :2] / z.clamp(min=1e-6)
    grid_x = 2 * uv[:, 0] / (width - 1) - 1
    grid_y = 2 * uv[:, 1] / (height - 1) - 1
    grid = torch.stack([grid_x, grid_y], dim=-1).reshape(batch, height, width, 2)
    warped = F.grid_sample(source_image, grid.to(source_image.dtype), mode='bilinear',
                           padding_mode='border', align_corners=True)
    inside = (grid.abs() <= 1).all(dim=-1).unsqueeze(1)
    valid = inside & (z.reshape(batch, 1, height, width) > 1e-6) & (target_depth > 0)
    return warped, valid


def photometric_loss(target_image: torch.Tensor, source_images: list[torch.Tensor],
                     target_depth: torch.Tensor, K: torch.Tensor,
                     T_sources_from_target: list[torch.Tensor],
                     ssim_weight: float = 0.85) -> torch.Tensor:
    """Self-supervised reconstruction loss (monodepth2-style per-pixel minimum over sources).

    Every source view is warped into the target view with `warp_to_target`; the per-pixel
    photometric error is minimised over the sources, and averaged over pixels that at least one
    source covers.
    """
    errors, valids = [], []
    for image, pose in zip(source_images, T_sources_from_target):
        warped, valid = warp_to_target(image, target_depth, K, pose)
        error = photometric_error(warped, target_image, ssim_weight)
        errors.append(torch.where(valid, error, torch.full_like(error, float('inf'))))
        valids.append(valid)
    best = torch.stack(errors).min(dim=0).values
    covered = torch.stack(valids).any(dim=0)
    return _masked_mean(torch.where(covered, best, torch.zeros_like(best)), covered)
