"""Triton kernel of the input bound's distance transform (`input_bound.row_distance`): the
second pass of the exact Euclidean distance transform, one program per block of a row, a loop
over the columns within the cap. Checked against the torch reference on a GPU by
bench/gpu_check_input_bound.py. Triton is imported only when a kernel is first used.
"""
from __future__ import annotations

import functools

import torch

from cspn_ros.model.propagation.fused import available  # noqa: F401  (same condition)

#: Pixels of a row one program computes.
BLOCK = 256


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
