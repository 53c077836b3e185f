"""Where and how a training process runs: its rank under torchrun, its device, its seeds and
the learning-rate schedule."""
from __future__ import annotations

import math
import os
import random
from typing import Callable

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def warmup_cosine(total_steps: int, warmup_fraction: float) -> Callable[[int], float]:
    """LR factor per step: linear warm-up, then cosine decay to 0 at total_steps."""
    warmup = max(1, int(total_steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def distributed_ranks() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment; (0, 1, 0) otherwise."""
    world = int(os.environ.get('WORLD_SIZE', '1'))
    return int(os.environ.get('RANK', '0')), world, int(os.environ.get('LOCAL_RANK', '0'))


def is_main_process() -> bool:
    """Whether this process is rank 0 (or not launched by torchrun): the one that writes."""
    return distributed_ranks()[0] == 0


def training_device(name: str, local_rank: int, world: int) -> torch.device:
    """The device of a process: name 'auto' | 'cuda' | 'cpu' | 'cuda:N'; on CUDA with an explicit
    index (local_rank under torchrun, else the current device)."""
    if name == 'auto':
        name = 'cuda' if torch.cuda.is_available() else 'cpu'
    if name == 'cuda':  # an explicit index: torch.cuda.set_device and DDP device_ids need one
        name = f'cuda:{local_rank if world > 1 else torch.cuda.current_device()}'
    return torch.device(name)
