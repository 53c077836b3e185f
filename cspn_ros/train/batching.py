"""How training samples become batches: `collate_samples` (numpy sample dicts -> tensors,
dropped frames counted), `whole_batch` (sets that yield whole batches) and `EpochKeys`
((epoch, index) keys, so that DataLoader workers that persist across epochs draw each epoch's
random samples without seeing the main process's set_epoch)."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch


class EpochKeys(torch.utils.data.Sampler):
    """(epoch, index) keys from a sampler of indices; the trainer sets `epoch` every pass."""

    def __init__(self, sampler: torch.utils.data.Sampler) -> None:
        self.sampler, self.epoch = sampler, 0

    def __iter__(self):
        return ((self.epoch, index) for index in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


def collate_samples(samples: Sequence[Optional[dict]]) -> tuple[Optional[dict], int]:
    """Numpy sample dicts -> (batch of tensors, number of None samples dropped).

    rgb (B,3,H,W) float [0,1], sparse/target (B,1,H,W) metres, K (B,3,3); photometric:
    source_rgbs (B,S,3,H,W), T_sources_from_target (B,S,4,4). Batch is None if all dropped.
    """
    kept = [s for s in samples if s is not None]
    if not kept:
        return None, len(samples)
    batch = {
        'rgb': torch.from_numpy(np.stack([s['rgb'] for s in kept])).permute(0, 3, 1, 2)
        .float().div(255),
        'sparse': torch.from_numpy(np.stack([s['sparse'] for s in kept])).float().unsqueeze(1),
        'target': torch.from_numpy(np.stack([s['target'] for s in kept])).float().unsqueeze(1),
        'K': torch.from_numpy(np.stack([s['K'] for s in kept])).float(),
    }
    if 'source_rgbs' in kept[0]:
        batch['source_rgbs'] = (torch.from_numpy(np.stack([s['source_rgbs'] for s in kept]))
                                .permute(0, 1, 4, 2, 3).float().div(255))
        batch['T_sources_from_target'] = torch.from_numpy(
            np.stack([s['T_sources_from_target'] for s in kept])).float()
    return batch, len(samples) - len(kept)


def whole_batch(batch: dict) -> tuple[dict, int]:
    """collate_fn for a set that yields whole batches: (the batch, 0 samples dropped)."""
    return batch, 0
