"""NLSPN: non-local spatial propagation (Park et al., ECCV 2020) in plain torch.

Every pixel propagates from N learned neighbours instead of a fixed window. Neighbour n of
pixel (y, x) sits at (y + base_y[n] + dy[n], x + base_x[n] + dx[n]) pixels, where the base
grid is the N grid cells nearest the centre (N = 8: the 3x3 ring, N = 24: the 5x5 ring) and
(dy, dx) are learned fractional offsets. Values at fractional positions come from bilinear
interpolation (`torch.nn.functional.grid_sample`, align_corners=False, padding 'zeros': a
neighbour outside the image reads 0, like the deformable convolution of the paper; its
sampled confidence is 0 as well, so with a confidence map it gets no weight). No compiled DCN
dependency, so the module runs on any device and exports to ONNX (GridSample, opset >= 16).

One step, with a_0 = 1 - sum_n a_n so the weights sum to 1:
    depth_t+1(p) = a_0(p) depth_t(p) + sum_n a_n(p) depth_t(neighbour_n(p))
The step loop runs in `fused.nlspn_propagate` (Triton on CUDA, plain torch elsewhere).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cspn_ros.config import ModelConfig


def neighbour_grid(count: int) -> torch.Tensor:
    """(count, 2) integer (dy, dx) base positions: the cells of the 5x5 window nearest the centre.

    Ordered by distance, then row, then column, so 8 gives the 3x3 ring and 24 the 5x5 ring.
    """
    cells = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3) if (dy, dx) != (0, 0)]
    cells.sort(key=lambda cell: (cell[0] ** 2 + cell[1] ** 2, cell[0], cell[1]))
    return torch.tensor(cells[:count], dtype=torch.float32)


class NLSPNPropagation(nn.Module):
    """Non-local propagation with learned offsets, TGASS affinities and confidence weighting.

    Guidance channels (B, 3N, H, W), N = config.nlspn_neighbors: [dy_1..dy_N, dx_1..dx_N,
    a_1..a_N], offsets in pixels and raw affinities a_n. Affinity normalisation (the paper's
    TGASS): a_n = tanh(a_n) / gamma with a learnable gamma (initialised to N / 2), multiplied by
    the initial depth's confidence sampled at the neighbour, then divided by max(1, sum |a_n|)
    so the neighbour weights never sum to more than 1 in magnitude.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.steps = config.steps
        self.preserve_sparse = config.preserve_sparse
        self.neighbours = config.nlspn_neighbors
        self.register_buffer('base_offsets', neighbour_grid(self.neighbours), persistent=False)
        self.affinity_gamma = nn.Parameter(torch.tensor(0.5 * self.neighbours))

    @staticmethod
    def guidance_channels(config: ModelConfig) -> int:
        """3 channels per neighbour: dy, dx (pixels) and the raw affinity."""
        return 3 * config.nlspn_neighbors

    def sampling_grid(self, offsets: torch.Tensor) -> torch.Tensor:
        """Neighbour positions as a grid_sample grid (B, N*H, W, 2) in [-1, 1] (x, y) order.

        offsets: (B, N, 2, H, W) learned (dy, dx) in pixels.
        """
        batch, count, _, height, width = offsets.shape
        like = {'dtype': offsets.dtype, 'device': offsets.device}
        rows = torch.arange(height, **like).view(1, 1, height, 1)
        cols = torch.arange(width, **like).view(1, 1, 1, width)
        base = self.base_offsets.to(offsets.dtype).view(1, count, 2, 1, 1)
        y = rows + base[:, :, 0] + offsets[:, :, 0]
        x = cols + base[:, :, 1] + offsets[:, :, 1]
        grid = torch.stack(((2 * x + 1) / width - 1, (2 * y + 1) / height - 1), dim=-1)
        return grid.reshape(batch, count * height, width, 2)

    def affinities(self, raw: torch.Tensor, grid: torch.Tensor,
                   confidence: torch.Tensor | None) -> torch.Tensor:
        """Normalised neighbour weights (B, N, H, W), sum |a_n| <= 1 at every pixel.

        raw: (B, N, H, W) raw affinities; grid from `sampling_grid`; confidence (B, 1, H, W) in
        [0, 1] or None. The confidence is read through detached positions (as in the paper's
        code), so offsets learn from the depth they gather, not from hunting confident pixels.
        """
        weights = torch.tanh(raw) / (self.affinity_gamma + 1e-8)
        if confidence is not None:
            weights = weights * sample_neighbours(confidence, grid.detach())
        total = weights.abs().sum(dim=1, keepdim=True).clamp(min=1.0)
        return weights / total

    def forward(self, init: torch.Tensor, guidance: torch.Tensor, sparse: torch.Tensor,
                confidence: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        """Propagate config.steps times (float32 or wider; float64 inputs stay float64).

        init, sparse: (B, 1, H, W) metres (sparse 0 = missing); guidance (B, 3N, H, W);
        confidence (B, 1, H, W) in [0, 1] or None (then every neighbour counts fully).
        With config.preserve_sparse the valid sparse inputs replace the depth before the first
        step and after every step, as in cspn.py.
        Returns depth (B, 1, H, W) and aux {'offsets': (B, N, 2, H, W) pixels,
        'affinity': (B, N, H, W) normalised neighbour weights}.
        """
        dtype = torch.promote_types(guidance.dtype, torch.float32)
        init, guidance, sparse = init.to(dtype), guidance.to(dtype), sparse.to(dtype)
        if confidence is not None:
            confidence = confidence.to(dtype)
        batch, _, height, width = init.shape
        count = self.neighbours
        offsets = guidance[:, :2 * count].reshape(batch, 2, count, height, width).transpose(1, 2)
        grid = self.sampling_grid(offsets)
        weights = self.affinities(guidance[:, 2 * count:], grid, confidence)
        sparse_mask = sparse > 0 if self.preserve_sparse else None
        start = init if sparse_mask is None else torch.where(sparse_mask, sparse, init)
        # Imported here: fused.py imports sample_neighbours from this module.
        from cspn_ros.model.propagation.fused import nlspn_propagate
        depth = nlspn_propagate(start, weights, grid, sparse_mask, sparse, self.steps)
        return depth, {'offsets': offsets, 'affinity': weights}


def sample_neighbours(image: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Bilinear samples (B, N, H, W) of image (B, 1, H, W) at grid (B, N*H, W, 2); 0 outside."""
    batch, _, height, width = image.shape
    samples = F.grid_sample(image, grid, mode='bilinear', padding_mode='zeros',
                            align_corners=False)
    return samples.view(batch, -1, height, width)
