"""CSPN++: context- and resource-aware propagation (Cheng et al., AAAI 2020) in plain torch.

One CSPN branch per kernel size k in config.cspnpp_kernel_sizes, each run exactly as
`cspn.py` (same '8sum' normalisation, centre weight on the initial depth, replicate padding,
sparse replacement after every step) for max(config.cspnpp_steps) steps. The output mixes the
branches' depths at the listed step counts with per-pixel softmax weights over kernel sizes
(sigma, context-aware) and over step counts (lambda, resource-aware):

    depth(p) = sum_k sigma_k(p) sum_t lambda_t(p) H_k[t](p)

With one kernel size and one step count both weights are 1 and CSPN++ is CSPN.
"""
from __future__ import annotations

import torch
from torch import nn

from cspn_ros.config import ModelConfig
from cspn_ros.model.propagation.cspn import normalize_affinity
from cspn_ros.model.propagation.fused import cspn_propagate_at


class CSPNPlusPlusPropagation(nn.Module):
    """CSPN++ over config.cspnpp_kernel_sizes x config.cspnpp_steps.

    Guidance channels, in order: the raw affinities of every kernel size (k*k-1 each, channel
    order of `cspn.neighbor_offsets(k)`), then one kernel-weight logit per kernel size, then one
    step-weight logit per step count. Confidence is not used (accepted for the interface).
    Branches run through `fused.cspn_propagate_at` (Triton on CUDA, the CSPN reference elsewhere).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.kernel_sizes = tuple(config.cspnpp_kernel_sizes)
        self.configured_counts = tuple(config.cspnpp_steps)
        self.step_counts = self.configured_counts
        self.preserve_sparse = config.preserve_sparse

    @property
    def steps(self) -> int:
        """The longest step count. Setting it at run time rescales config.cspnpp_steps in
        proportion (e.g. (6, 12, 24) -> (3, 6, 12) for steps = 12); the weights stay valid."""
        return max(self.step_counts)

    @steps.setter
    def steps(self, steps: int) -> None:
        longest = max(self.configured_counts)
        self.step_counts = tuple(round(count * steps / longest) if longest else steps
                                 for count in self.configured_counts)

    @staticmethod
    def guidance_channels(config: ModelConfig) -> int:
        """Affinities for every kernel size + one logit per kernel size + one per step count."""
        affinities = sum(k * k - 1 for k in config.cspnpp_kernel_sizes)
        return affinities + len(config.cspnpp_kernel_sizes) + len(config.cspnpp_steps)

    def split_guidance(self, guidance: torch.Tensor
                       ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """(B, C, H, W) raw -> (normalised affinity (B, k*k-1, H, W) per kernel size,
        sigma (B, K, H, W), lambda (B, T, H, W)); sigma and lambda are softmaxes (sum 1)."""
        sizes = [k * k - 1 for k in self.kernel_sizes]
        sizes += [len(self.kernel_sizes), len(self.step_counts)]
        *raw_affinities, kernel_logits, step_logits = torch.split(guidance, sizes, dim=1)
        return ([normalize_affinity(raw) for raw in raw_affinities],
                kernel_logits.softmax(dim=1), step_logits.softmax(dim=1))

    def forward(self, init: torch.Tensor, guidance: torch.Tensor, sparse: torch.Tensor,
                confidence: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        """init, sparse (B,1,H,W) metres (sparse 0 = missing); guidance (B,C,H,W) raw.

        Computes in float32 or wider (float64 inputs stay float64). Returns depth (B,1,H,W) and
        aux {'kernel_weights': sigma (B,K,H,W), 'step_weights': lambda (B,T,H,W)}.
        """
        dtype = torch.promote_types(guidance.dtype, torch.float32)
        init, guidance, sparse = init.to(dtype), guidance.to(dtype), sparse.to(dtype)
        affinities, kernel_weights, step_weights = self.split_guidance(guidance)
        sparse_mask = sparse > 0 if self.preserve_sparse else None
        mixed = torch.zeros_like(init)
        for branch, affinity in enumerate(affinities):
            depths = cspn_propagate_at(init, affinity, sparse_mask, sparse, self.step_counts)
            for index, depth in enumerate(depths):
                weight = kernel_weights[:, branch:branch + 1] * step_weights[:, index:index + 1]
                mixed = mixed + weight * depth
        if sparse_mask is not None:
            mixed = torch.where(sparse_mask, sparse, mixed)  # exact despite rounding of the mix
        return mixed, {'kernel_weights': kernel_weights, 'step_weights': step_weights}
