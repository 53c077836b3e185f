"""Triton kernel of the input bound's distance transform (`input_bound.row_distance`): the
second pass of the exact Euclidean distance transform, one program per block of a row, a loop
over the columns within the cap. `verified` compares it with the torch reference on each device
before first use (and bench/gpu_check_input_bound.py with the CPU path); a kernel that fails
to build or to match is not used. Triton is imported only when a kernel is first used.
"""
from __future__ import annotations

import functools
import logging
from typing import Callable

import torch

from cspn_ros.model.propagation.fused import available

LOGGER = logging.getLogger(__name__)

#: Pixels of a row one program computes.
BLOCK = 256


@functools.cache
def verified(device: torch.device, reference: Callable[[torch.Tensor], torch.Tensor],
             cap: float) -> bool:
    """Whether the kernel runs on `device` and equals `reference` on random column distances
    (a 3 x 67 x 301 frame with every distance from 0 to beyond the cap); logs why not."""
    if not available():
        return False
    generator = torch.Generator(device=device).manual_seed(0)
    column = torch.rand((3, 1, 67, 301), generator=generator, device=device) * (cap + 10)
    column = torch.where(column > cap, float('inf'), column.round()).clamp_max(cap)
    try:
        error = (row_distance(column, cap) - reference(column)).abs().max().item()
    except Exception as exc:  # a Triton build or launch failure: use the reference
        LOGGER.warning('input bound distance kernel unavailable on %s (%s); using the torch '
                       'loop', device, exc)
        return False
    if error > 1e-3:
        LOGGER.warning('input bound distance kernel differs from the torch loop on %s by %.3g '
                       'px; using the loop', device, error)
        return False
    return True


@functools.cache
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def row_distance_kernel(column, out, width, cap, CAP: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        x = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        inside = x < width
        base = row * width
        best = tl.load(column + base + x, mask=inside, other=0.0).to(tl.float32)
        best = best * best
        for shift in range(1, CAP + 1):
            left = x - shift
            right = x + shift
            a = tl.load(column + base + left, mask=inside & (left >= 0),
                        other=float('inf')).to(tl.float32)
            b = tl.load(column + base + right, mask=inside & (right < width),
                        other=float('inf')).to(tl.float32)
            offset = (shift * shift).to(tl.float32)
            best = tl.minimum(best, tl.minimum(a * a, b * b) + offset)
        tl.store(out + base + x, tl.minimum(tl.sqrt(best), cap), mask=inside)

    return row_distance_kernel


def row_distance(column: torch.Tensor, cap: float) -> torch.Tensor:
    """`input_bound.row_distance` of a CUDA (B,1,H,W) column-distance tensor (pixels)."""
    height, width = column.shape[-2:]
    rows = column.numel() // width
    source = column.float().contiguous()
    out = torch.empty_like(source)
    grid = (rows, (width + BLOCK - 1) // BLOCK)
    _kernel()[grid](source, out, width, float(cap), CAP=int(cap), BLOCK=BLOCK)
    return out.view(column.shape).to(column.dtype)
