"""The diagnostics `hardware_id` of a node running a model: which machine, which processor."""
from __future__ import annotations

import platform
import socket
from typing import Any

import torch


def hardware_id(device: Any) -> str:
    """'<host name>/<processor>' for a torch device, e.g. 'robot1/cuda:0 NVIDIA H200' or
    'robot1/cpu x86_64', so statuses of nodes on several machines or GPUs stay apart."""
    device = torch.device(device)
    if device.type == 'cuda':
        index = torch.cuda.current_device() if device.index is None else device.index
        processor = f'cuda:{index} {torch.cuda.get_device_name(index)}'
    else:
        processor = f'{device.type} {platform.machine()}'
    return f'{socket.gethostname()}/{processor}'
