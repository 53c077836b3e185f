"""How training samples become batches: `collate_samples` (numpy sample dicts -> tensors,
dropped frames counted), `whole_batch` (sets that yield whole batches) and `EpochKeys`
((epoch, index) keys, so that DataLoader workers that persist across epochs draw each epoch's
random samples without seeing the main process's set_epoch) and `MixedBatches` (procedural
batches with a share of bag batches mixed in)."""
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


class MixedBatches(torch.utils.data.IterableDataset):
    """Whole batches from `batches` (e.g. data.procedural.ProceduralBatches: `batch(epoch, step)`
    on the device), a `share` of them replaced by batches of `samples` (a map-style set of
    numpy sample dicts keyed (epoch, position), e.g. a user's bags through BagTrainingSamples).

    Step k of epoch e takes `samples` with probability `share`, drawing `batch_size` positions
    without replacement; both choices are a pure function of (seed, e, k), so runs repeat and
    resume. Bag batches are collated on the CPU and keep the keys the procedural ones have
    (rgb (B,3,H,W) in [0,1], sparse / target (B,1,H,W) metres); a bag batch whose samples were
    all dropped is replaced by the procedural one. Both sets must make samples of one size.
    """

    KEYS = ('rgb', 'sparse', 'target')

    def __init__(self, batches, samples, share: float, batch_size: int, seed: int = 0) -> None:
        super().__init__()
        if not 0.0 <= share <= 1.0:
            raise ValueError(f'the share of bag batches must lie in [0, 1], got {share}')
        if len(samples) == 0:
            raise ValueError('the bag sample set is empty: 0 samples to mix in')
        self.batches, self.samples, self.share = batches, samples, share
        self.batch_size, self.seed, self.epoch = batch_size, seed, 0

    def __len__(self) -> int:
        return len(self.batches)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.batches.set_epoch(epoch)
        if hasattr(self.samples, 'set_epoch'):
            self.samples.set_epoch(epoch)

    def __iter__(self):
        for step in range(len(self)):
            batch = self.sample_batch(step) if self.takes_samples(step) else None
            yield batch if batch is not None else self.batches.batch(self.epoch, step)

    def takes_samples(self, step: int) -> bool:
        """Whether step `step` of this epoch is a batch of `samples`."""
        return np.random.default_rng([self.seed, self.epoch, step]).random() < self.share

    def sample_batch(self, step: int) -> Optional[dict]:
        """A collated batch of `samples` for step `step` (None if all its samples dropped)."""
        rng = np.random.default_rng([self.seed, self.epoch, step, 1])
        count = min(self.batch_size, len(self.samples))
        positions = rng.choice(len(self.samples), count, replace=False)
        batch, _ = collate_samples([self.samples[(self.epoch, int(p))] for p in positions])
        return None if batch is None else {key: batch[key] for key in self.KEYS}
