"""CSPN: convolutional spatial propagation (Cheng, Wang, Yang, ECCV 2018), reference torch code.

One step, per pixel p with the k*k-1 neighbours n of its k x k window:

    H[t+1](p) = sum_n a(p, n) * H[t](n)  +  (1 - sum_n a(p, n)) * H[0](p)

with the '8sum' normalisation a(p, n) = g(p, n) / sum_n |g(p, n)| of the raw guidance g, so that
sum_n |a| <= 1 and the step is non-expansive (Gershgorin). The centre weight multiplies the initial
depth H[0], as in the authors' code and the CSPN++ formulation. After every step the valid sparse
inputs are put back (the paper's embedding, d = (1 - m) * d + m * sparse). Neighbours outside the
image take the border value (replicate padding).

This file is the CPU path and the numerical reference for the fused GPU kernels (`fused.py`,
which CSPNPropagation calls and which falls back to `cspn_propagate` here): keep it plain.
Guidance channel c holds the weight of neighbour `neighbor_offsets(k)[c]`, row-major over the
window with the centre left out; for k = 3: (-1,-1) (-1,0) (-1,1) (0,-1) (0,1) (1,-1) (1,0) (1,1)
as (dy, dx), i.e. channel c weights H(y + dy, x + dx).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cspn_ros.config import ModelConfig

#: Floor of the '8sum' denominator so all-zero guidance gives zero affinity instead of NaN.
AFFINITY_EPS = 1e-6


def neighbor_offsets(kernel_size: int) -> list[tuple[int, int]]:
    """(dy, dx) of the k*k-1 neighbours of a k x k window, row-major, centre excluded."""
    radius = kernel_size // 2
    return [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)
            if (dy, dx) != (0, 0)]


def normalize_affinity(guidance: torch.Tensor) -> torch.Tensor:
    """'8sum': (B,K,H,W) raw guidance -> affinity with sum over K of |a| <= 1 at every pixel."""
    return guidance / guidance.abs().sum(dim=1, keepdim=True).clamp_min(AFFINITY_EPS)


def convex_affinity(guidance: torch.Tensor) -> torch.Tensor:
    """'convex': (B,K+1,H,W) raw guidance (the last channel is the pixel itself) -> (B,K,H,W)
    non-negative neighbour affinities with sum <= 1 (a softmax that leaves the pixel's share
    to the initial depth), so every step is a convex combination."""
    return torch.softmax(guidance, dim=1)[:, :-1].contiguous()


def shifted_neighbors(depth: torch.Tensor, kernel_size: int):
    """The k*k-1 views of the replicate-padded (B,1,H,W) depth shifted by neighbor_offsets(k)."""
    radius = kernel_size // 2
    height, width = depth.shape[-2:]
    padded = F.pad(depth, (radius, radius, radius, radius), mode='replicate')
    return (padded[..., radius + dy:radius + dy + height, radius + dx:radius + dx + width]
            for dy, dx in neighbor_offsets(kernel_size))


def neighbor_sum(depth: torch.Tensor, affinity: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """base + sum over c of affinity[:, c] * depth shifted by neighbor_offsets(k)[c], summed in
    channel order; (B,1,H,W). One multiply-add per neighbour into one buffer (no (B,K,H,W)
    temporary: 4-5x faster on the CPU than gathering all neighbours first)."""
    kernel_size = math.isqrt(int(affinity.shape[1]) + 1)
    total = base.clone()
    for channel, neighbor in enumerate(shifted_neighbors(depth, kernel_size)):
        total.addcmul_(affinity[:, channel:channel + 1], neighbor)
    return total


def cspn_step(depth: torch.Tensor, affinity: torch.Tensor, init: torch.Tensor) -> torch.Tensor:
    """One propagation step. depth, init (B,1,H,W); affinity (B,k*k-1,H,W) already normalised."""
    return neighbor_sum(depth, affinity, (1.0 - affinity.sum(dim=1, keepdim=True)) * init)


def cspn_propagate(init: torch.Tensor, affinity: torch.Tensor, sparse_mask: torch.Tensor | None,
                   sparse: torch.Tensor, steps: int) -> torch.Tensor:
    """`steps` CSPN steps from init (B,1,H,W), replacing sparse where sparse_mask (bool) is set.

    The replacement is applied to the initial depth too, so valid inputs are kept bit for bit
    whatever the number of steps; sparse_mask None disables it.
    """
    return cspn_propagate_at(init, affinity, sparse_mask, sparse, [steps])[0]


def cspn_propagate_at(init: torch.Tensor, affinity: torch.Tensor,
                      sparse_mask: torch.Tensor | None, sparse: torch.Tensor,
                      counts) -> list[torch.Tensor]:
    """cspn_propagate's depth after each of `counts` steps (one run of max(counts) steps),
    results in the order of counts.

    Bit for bit cspn_step followed by the sparse replacement, with the loop invariants hoisted:
    the centre term (1 - sum a) * start is computed once, and the replacement is folded into it
    (replaced pixels take base = sparse and zero neighbour weights).
    """
    depth = init if sparse_mask is None else torch.where(sparse_mask, sparse, init)
    base = (1.0 - affinity.sum(dim=1, keepdim=True)) * depth
    if sparse_mask is not None:
        base = torch.where(sparse_mask, sparse, base)
        affinity = torch.where(sparse_mask, 0.0, affinity)
    done, results = 0, {}
    for count in sorted(set(counts)):
        for _ in range(count - done):
            depth = neighbor_sum(depth, affinity, base)
        done, results[count] = count, depth
    return [results[count] for count in counts]


class CSPNPropagation(nn.Module):
    """CSPN with a k x k kernel (config.kernel_size) for config.steps steps, in float32.

    `steps` is a plain attribute: it can be changed at run time without touching the weights.
    CSPN does not weight by confidence (NLSPN does); the argument is accepted for the interface.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.kernel_size = config.kernel_size
        self.steps = config.steps
        self.preserve_sparse = config.preserve_sparse
        self.convex = config.affinity == 'convex'

    @staticmethod
    def guidance_channels(config: ModelConfig) -> int:
        return config.kernel_size ** 2 - (0 if config.affinity == 'convex' else 1)

    def forward(self, init: torch.Tensor, guidance: torch.Tensor, sparse: torch.Tensor,
                confidence: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        """init, sparse (B,1,H,W) metres (sparse 0 = missing); guidance (B,k*k-1,H,W) raw
        (k*k channels with config.affinity 'convex').

        Returns the propagated depth (B,1,H,W) float32 and {'affinity': normalised guidance}.
        """
        # Triton kernels on CUDA, this file's cspn_propagate elsewhere (imported here: fused.py
        # imports this module).
        from cspn_ros.model.propagation.fused import cspn_propagate as fused_cspn_propagate
        affinity = (convex_affinity if self.convex else normalize_affinity)(guidance.float())
        sparse = sparse.float()
        sparse_mask = sparse > 0 if self.preserve_sparse else None
        depth = fused_cspn_propagate(init.float(), affinity, sparse_mask, sparse, self.steps)
        return depth, {'affinity': affinity}
