"""Triton kernels for the fused propagation loops (imported only where Triton is installed).

Kernels read float16 or float32 inputs, compute in float32 and write the output's dtype.
Depth planes are (B, H, W) contiguous, metres; weight planes have the same size.

`local_steps_kernel` (CSPN, CSPN++; math of `cspn.cspn_step`): one program owns an output tile
plus a halo of `HALO = steps_per_launch * (K // 2)` pixels (its region, REG_H x REG_W). It
keeps the region's neighbour weights in registers (3x3; larger windows reload them each step),
runs the launch's steps over the whole region and swaps the intermediate depth through a
private scratch buffer (two REG_H x REG_W float32 planes that stay in L1/L2) with a CTA barrier
between steps. The region loses one ring of valid pixels
per step; after the last step the tile (region minus halo) is exact and is written out.
Neighbours past the image border read the border pixel (replicate padding): their coordinates
are clamped to the image before they are looked up in the region.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def local_steps_kernel(depth_in, start, affinity, sparse, sparse_mask, depth_out, scratch,
                       height, width, steps, K: tl.constexpr, HALO: tl.constexpr, REG_H: tl.constexpr,
                       REG_W: tl.constexpr,
                       WEIGHTS_RESIDENT: tl.constexpr, REPLACE: tl.constexpr):
    """`steps` (<= HALO // (K // 2)) K x K steps for one tile.

    H[t+1](p) = sum_n a(p, n) H[t](n) + (1 - sum_n a(p, n)) S(p), then (REPLACE) the pixels
    where sparse_mask is set take their sparse value; with REPLACE the inputs depth_in and start
    are replaced first (S = start with sparse put in). depth_in, start, sparse, depth_out:
    (B, H, W); sparse_mask: (B, H, W) uint8 (read only with REPLACE);
    affinity: (B, K*K-1, H, W) normalised, neighbours row-major over the window without the
    centre; scratch: (programs, 2, REG_H * REG_W) float32. Grid: (tiles in x, tiles in y, B).
    WEIGHTS_RESIDENT (3x3 only) keeps the eight weights in registers; otherwise each step
    reloads them tap by tap from L1/L2 (larger windows).
    """
    TILE_H: tl.constexpr = REG_H - 2 * HALO
    TILE_W: tl.constexpr = REG_W - 2 * HALO
    BLOCK: tl.constexpr = REG_H * REG_W
    RADIUS: tl.constexpr = K // 2
    NEIGHBOURS: tl.constexpr = K * K - 1
    CENTRE: tl.constexpr = NEIGHBOURS // 2
    tile_x = tl.program_id(0)
    tile_y = tl.program_id(1)
    batch = tl.program_id(2)
    program = (batch * tl.num_programs(1) + tile_y) * tl.num_programs(0) + tile_x

    offs = tl.arange(0, BLOCK)
    local_y = offs // REG_W
    local_x = offs % REG_W
    origin_y = tile_y * TILE_H - HALO
    origin_x = tile_x * TILE_W - HALO
    y = origin_y + local_y
    x = origin_x + local_x
    inside = (y >= 0) & (y < height) & (x >= 0) & (x < width)
    # Region pixels past the border read (and compute) their nearest image pixel: nothing
    # inside the image ever reads them, because its neighbours are clamped to the image.
    clamped_y = tl.minimum(tl.maximum(y, 0), height - 1)
    clamped_x = tl.minimum(tl.maximum(x, 0), width - 1)
    plane = height * width
    pixel = batch * plane + clamped_y * width + clamped_x
    depth = tl.load(depth_in + pixel).to(tl.float32)
    start_depth = tl.load(start + pixel).to(tl.float32)
    if REPLACE:
        known = tl.load(sparse + pixel).to(tl.float32)
        is_known = tl.load(sparse_mask + pixel) != 0
        depth = tl.where(is_known, known, depth)
        start_depth = tl.where(is_known, known, start_depth)

    # Neighbour (dy, dx) is looked up at its image-clamped position, then clamped to the region
    # (a lookup clamped there only feeds the ring that the halo discards).
    weight_base = affinity + batch * NEIGHBOURS * plane + clamped_y * width + clamped_x
    if WEIGHTS_RESIDENT:  # 3x3 only: the eight weights and the six lookup rows/columns stay in registers
        w0 = tl.load(weight_base).to(tl.float32)
        w1 = tl.load(weight_base + plane).to(tl.float32)
        w2 = tl.load(weight_base + 2 * plane).to(tl.float32)
        w3 = tl.load(weight_base + 3 * plane).to(tl.float32)
        w4 = tl.load(weight_base + 4 * plane).to(tl.float32)
        w5 = tl.load(weight_base + 5 * plane).to(tl.float32)
        w6 = tl.load(weight_base + 6 * plane).to(tl.float32)
        w7 = tl.load(weight_base + 7 * plane).to(tl.float32)
        weight_sum = w0 + w1 + w2 + w3 + w4 + w5 + w6 + w7
        up = _clamp(_clamp(y - 1, 0, height - 1) - origin_y, 0, REG_H - 1) * REG_W
        middle = local_y * REG_W
        down = _clamp(_clamp(y + 1, 0, height - 1) - origin_y, 0, REG_H - 1) * REG_W
        left = _clamp(_clamp(x - 1, 0, width - 1) - origin_x, 0, REG_W - 1)
        centre_x = local_x
        right = _clamp(_clamp(x + 1, 0, width - 1) - origin_x, 0, REG_W - 1)
    else:
        weight_sum = tl.zeros((BLOCK,), dtype=tl.float32)
        for channel in tl.static_range(NEIGHBOURS):
            weight_sum += tl.load(weight_base + channel * plane).to(tl.float32)
    centre_term = (1.0 - weight_sum) * start_depth

    buffer = scratch + program * (2 * BLOCK)
    tl.store(buffer + offs, depth)
    tl.debug_barrier()
    for step in range(steps):
        source = buffer + (step % 2) * BLOCK
        target = buffer + ((step + 1) % 2) * BLOCK
        if WEIGHTS_RESIDENT:
            depth = (w0 * tl.load(source + up + left) + w1 * tl.load(source + up + centre_x)
                     + w2 * tl.load(source + up + right) + w3 * tl.load(source + middle + left)
                     + w4 * tl.load(source + middle + right) + w5 * tl.load(source + down + left)
                     + w6 * tl.load(source + down + centre_x)
                     + w7 * tl.load(source + down + right)) + centre_term
        else:
            total = tl.zeros((BLOCK,), dtype=tl.float32)
            for row in tl.static_range(K):
                near_row = _clamp(_clamp(y + (row - RADIUS), 0, height - 1) - origin_y,
                                  0, REG_H - 1) * REG_W
                for col in tl.static_range(K):
                    if row * K + col != CENTRE:
                        near_col = _clamp(_clamp(x + (col - RADIUS), 0, width - 1) - origin_x,
                                          0, REG_W - 1)
                        neighbour = row * K + col - (row * K + col > CENTRE)
                        tap_weight = tl.load(weight_base + neighbour * plane).to(tl.float32)
                        total += tap_weight * tl.load(source + near_row + near_col)
            depth = total + centre_term
        if REPLACE:
            depth = tl.where(is_known, known, depth)
        tl.store(target + offs, depth)
        tl.debug_barrier()

    in_tile = (inside & (local_y >= HALO) & (local_y < HALO + TILE_H)
               & (local_x >= HALO) & (local_x < HALO + TILE_W))
    tl.store(depth_out + pixel, depth.to(depth_out.dtype.element_ty), mask=in_tile)


@triton.jit
def _clamp(value, low, high):
    return tl.minimum(tl.maximum(value, low), high)


@triton.jit
def nonlocal_step_kernel(depth_in, affinity, grid, sparse, sparse_mask, depth_out, height, width,
                         N: tl.constexpr, N_PAD: tl.constexpr, BLOCK: tl.constexpr,
                         REPLACE: tl.constexpr):
    """One NLSPN step (math of `nlspn.NLSPNPropagation.forward`'s loop body).

    H[t+1](p) = (1 - sum_n a_n(p)) H[t](p) + sum_n a_n(p) bilinear(H[t], grid_n(p)), then
    (REPLACE) sparse put back where sparse_mask is set. depth_in, sparse, depth_out: (B, H, W);
    sparse_mask (B, H, W) uint8; affinity (B, N, H, W); grid (B, N*H, W, 2) grid_sample
    coordinates (x, y) in [-1, 1], align_corners=False, outside reads 0. Grid: (blocks, B).
    """
    batch = tl.program_id(1)
    plane = height * width
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < plane
    neighbour = tl.arange(0, N_PAD)
    used = (neighbour < N)[:, None] & valid[None, :]
    index = (batch * N + neighbour[:, None]) * plane + offs[None, :]
    weight = tl.load(affinity + index, mask=used, other=0.0).to(tl.float32)
    grid_x = tl.load(grid + 2 * index, mask=used, other=0.0).to(tl.float32)
    grid_y = tl.load(grid + 2 * index + 1, mask=used, other=0.0).to(tl.float32)
    ix = ((grid_x + 1) * width - 1) / 2
    iy = ((grid_y + 1) * height - 1) / 2
    x0 = tl.floor(ix)
    y0 = tl.floor(iy)
    source = depth_in + batch * plane
    sampled = tl.zeros((N_PAD, BLOCK), dtype=tl.float32)
    for corner in tl.static_range(4):
        cx = x0 + (corner % 2)
        cy = y0 + (corner // 2)
        corner_weight = (1.0 - tl.abs(ix - cx)) * (1.0 - tl.abs(iy - cy))
        col = cx.to(tl.int32)
        row = cy.to(tl.int32)
        hit = used & (col >= 0) & (col < width) & (row >= 0) & (row < height)
        value = tl.load(source + row * width + col, mask=hit, other=0.0).to(tl.float32)
        sampled += corner_weight * value
    pixel = batch * plane + offs
    depth = tl.load(depth_in + pixel, mask=valid, other=0.0).to(tl.float32)
    depth = (1.0 - tl.sum(weight, axis=0)) * depth + tl.sum(weight * sampled, axis=0)
    if REPLACE:
        known = tl.load(sparse + pixel, mask=valid, other=0.0).to(tl.float32)
        is_known = tl.load(sparse_mask + pixel, mask=valid, other=0) != 0
        depth = tl.where(is_known, known, depth)
    tl.store(depth_out + pixel, depth.to(depth_out.dtype.element_ty), mask=valid)
