"""Gluon kernel for the 3x3 CSPN loop with the depth exchanged through shared memory.

Imported only where Triton >= 3.6 (`triton.experimental.gluon`) is installed. Same math as
`cspn.cspn_step` plus the sparse replacement of `cspn.cspn_propagate`; float16 or float32
inputs, float32 arithmetic and output.

One program owns a region of REG_H x REG_W pixels around its output tile (the region less a
halo of HALO pixels on each side). It reads its inputs once and keeps, per pixel, nine tap
weights, the constant centre term and the current depth in registers; each thread holds
ROWS_PER_THREAD vertically adjacent pixels of a column. A step stores the region's depth to
shared memory and reads each pixel's eight neighbours back (one `gl.gather`, which lowers to
one shared store, a CTA barrier and one shared load per address; the compiler merges most
loads of one address, so a thread's column of R pixels needs nearer 3R + 6 loads than 8R;
Gluon's shared-memory slices cannot start at an unaligned offset, hence the gather). The region
is stored flat (row stride REG_W) between two blocks of zeros, so the neighbour (dy, dx) of
region pixel i is element i + dy * REG_W + dx: a lookup past a region row wraps into the next
row, one past the region reads a zero, both only at the region's rim, which loses one ring of
valid pixels per step and which the halo discards. After `steps` <= HALO steps the tile is
exact and is written out.

Replicate padding at the image border is folded into the weights once: a neighbour outside the
image is the nearest image pixel, so its weight moves to that pixel's tap (one of the nine taps
(dy, dx) in {-1, 0, 1}^2, the centre tap (0, 0) weighting the pixel's own current depth);
region pixels outside the image then carry zero weight into every image pixel and only need
finite values (only regions that reach the border fold). The sparse replacement is folded in
too: a pixel with a sparse value has all tap weights zero and the sparse value as its centre
term, so every step yields that value exactly.

A propagation is several launches (HALO steps each). Launched as programmatic dependent
launches (PDL, sm_90+), a launch's programs start while the previous launch's last programs
still run, read and fold their weights, and only then wait for the previous grid and read its
output depth: the per-launch set-up overlaps the previous launch's tail.
"""
from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl


# Compiled once per dtypes and constants (no value or alignment specialisation), so that
# fused.py can relaunch the compiled kernel directly.
@gluon.jit(do_not_specialize=['height', 'width', 'steps'],
           do_not_specialize_on_alignment=['depth_in', 'start', 'affinity', 'sparse', 'sparse_mask',
                                           'depth_out'])
def cspn3_shared_kernel(depth_in, start, affinity, sparse, sparse_mask, depth_out,
                        height, width, steps, HALO: gl.constexpr, REG_H: gl.constexpr,
                        REG_W: gl.constexpr, ROWS_PER_THREAD: gl.constexpr,
                        COLUMN_WARPS: gl.constexpr, REPLACE: gl.constexpr, CHAINED: gl.constexpr,
                        PDL: gl.constexpr, NUM_WARPS: gl.constexpr):
    """`steps` (<= HALO) 3x3 CSPN steps for one tile; grid (tiles in x, tiles in y, B).

    depth_in (the depth after the steps so far), start (H[0] before replacement), sparse,
    depth_out: (B, H, W); sparse_mask (B, H, W) uint8 (read only with REPLACE); affinity
    (B, 8, H, W) normalised, channels as `cspn.neighbor_offsets(3)`. With REPLACE, depth_in and
    start take the sparse value where sparse_mask is set, before the first step and after
    every step. Threads: NUM_WARPS warps, COLUMN_WARPS of them side by side; each thread holds
    ROWS_PER_THREAD x 1 pixels per repeat. REG_H, REG_W powers of two, REG_W a multiple of
    32 * COLUMN_WARPS, REG_H of 2 * ROWS_PER_THREAD * NUM_WARPS / COLUMN_WARPS (the region's
    two halves in each thread's registers). CHAINED: depth_in is the output of the previous
    launch of this propagation (same start, affinity, sparse), so its sparse pixels hold their
    values already and it is the only input that launch wrote. PDL (launched as a programmatic
    dependent launch, sm_90+): every program first lets the next launch be scheduled, then waits
    for the previous grid before it reads what that grid may have written: before any read, or
    with CHAINED only before reading depth_in (the weights are read and folded meanwhile).
    """
    BLOCK: gl.constexpr = REG_H * REG_W
    PAD: gl.constexpr = BLOCK // 2  # zeros either side of the flat region
    TILE_H: gl.constexpr = REG_H - 2 * HALO
    TILE_W: gl.constexpr = REG_W - 2 * HALO
    gl.static_assert(REG_W + 1 <= PAD, 'a lookup reaches REG_W + 1 past the region')
    ROW_WARPS: gl.constexpr = NUM_WARPS // COLUMN_WARPS
    region: gl.constexpr = gl.BlockedLayout([ROWS_PER_THREAD, 1], [1, 32],
                                            [ROW_WARPS, COLUMN_WARPS], [1, 0])
    taps: gl.constexpr = gl.BlockedLayout([ROWS_PER_THREAD, 1, 8], [1, 32, 1],
                                          [ROW_WARPS, COLUMN_WARPS, 1], [2, 1, 0])

    batch = gl.program_id(2)
    origin_y = gl.program_id(1) * TILE_H - HALO
    origin_x = gl.program_id(0) * TILE_W - HALO
    local_y = gl.arange(0, REG_H, layout=gl.SliceLayout(1, region))[:, None]
    local_x = gl.arange(0, REG_W, layout=gl.SliceLayout(0, region))[None, :]
    y = origin_y + local_y
    x = origin_x + local_x
    # Region pixels past the image border read their nearest image pixel's inputs (finite).
    clamped_y = gl.minimum(gl.maximum(y, 0), height - 1)
    clamped_x = gl.minimum(gl.maximum(x, 0), width - 1)
    plane = height * width
    in_plane = clamped_y * width + clamped_x
    pixel = batch * plane + in_plane

    if PDL:
        _launch_dependents()
        if not CHAINED:
            _wait_for_previous_grid()
    start_depth = gl.load(start + pixel).to(gl.float32)
    weights = affinity + batch * 8 * plane + in_plane
    w_ul = gl.load(weights).to(gl.float32)
    w_u = gl.load(weights + plane).to(gl.float32)
    w_ur = gl.load(weights + 2 * plane).to(gl.float32)
    w_l = gl.load(weights + 3 * plane).to(gl.float32)
    w_r = gl.load(weights + 4 * plane).to(gl.float32)
    w_dl = gl.load(weights + 5 * plane).to(gl.float32)
    w_d = gl.load(weights + 6 * plane).to(gl.float32)
    w_dr = gl.load(weights + 7 * plane).to(gl.float32)
    if REPLACE:
        known = gl.load(sparse_mask + pixel) != 0
        value = gl.load(sparse + pixel).to(gl.float32)
    centre = (1.0 - (w_ul + w_u + w_ur + w_l + w_r + w_dl + w_d + w_dr)) * start_depth
    w_c = gl.zeros([REG_H, REG_W], gl.float32, region)

    # Replicate padding (regions that reach the image border only): the top / bottom row's
    # weights onto the middle row, then the left / right column's onto the middle column
    # (corners thus land on the pixel itself).
    if ((origin_y <= 0) | (origin_y + REG_H >= height) | (origin_x <= 0)
            | (origin_x + REG_W >= width)):
        w_ul, w_u, w_ur, w_l, w_c, w_r = _fold_edge(y <= 0, w_ul, w_u, w_ur, w_l, w_c, w_r)
        w_dl, w_d, w_dr, w_l, w_c, w_r = _fold_edge(y >= height - 1, w_dl, w_d, w_dr,
                                                    w_l, w_c, w_r)
        w_ul, w_l, w_dl, w_u, w_c, w_d = _fold_edge(x <= 0, w_ul, w_l, w_dl, w_u, w_c, w_d)
        w_ur, w_r, w_dr, w_u, w_c, w_d = _fold_edge(x >= width - 1, w_ur, w_r, w_dr,
                                                    w_u, w_c, w_d)

    if REPLACE:
        centre = gl.where(known, value, centre)
        w_ul = gl.where(known, 0.0, w_ul)
        w_u = gl.where(known, 0.0, w_u)
        w_ur = gl.where(known, 0.0, w_ur)
        w_l = gl.where(known, 0.0, w_l)
        w_c = gl.where(known, 0.0, w_c)
        w_r = gl.where(known, 0.0, w_r)
        w_dl = gl.where(known, 0.0, w_dl)
        w_d = gl.where(known, 0.0, w_d)
        w_dr = gl.where(known, 0.0, w_dr)

    if PDL and CHAINED:
        _wait_for_previous_grid()
    depth = gl.load(depth_in + pixel).to(gl.float32)
    if REPLACE and not CHAINED:  # a chained depth_in holds the sparse values already
        depth = gl.where(known, value, depth)

    # lookup[i * 8 + n]: position of neighbour n of flat region pixel i in [zeros|region|zeros].
    tap_rows = gl.arange(0, REG_H, layout=gl.SliceLayout(1, gl.SliceLayout(2, taps)))
    tap_cols = gl.arange(0, REG_W, layout=gl.SliceLayout(0, gl.SliceLayout(2, taps)))
    neighbour = gl.arange(0, 8, layout=gl.SliceLayout(0, gl.SliceLayout(1, taps)))
    window = neighbour + (neighbour >= 4)  # position in the 3x3 window, centre skipped
    shift = (window // 3 - 1) * REG_W + (window % 3 - 1)
    lookup = gl.reshape(PAD + (tap_rows * REG_W)[:, None, None] + tap_cols[None, :, None]
                        + shift[None, None, :], [8 * BLOCK])
    for step in range(steps):
        flat = gl.reshape(depth, [BLOCK])
        near = gl.reshape(gl.gather(_between_zeros(flat, PAD), lookup, 0), [REG_H, REG_W, 8])
        n_ul, n_u, n_ur, n_l, n_r, n_dl, n_d, n_dr = _columns8(near, REG_H, REG_W, region)
        depth = (centre + w_ul * n_ul + w_u * n_u + w_ur * n_ur + w_l * n_l + w_c * depth
                 + w_r * n_r + w_dl * n_dl + w_d * n_d + w_dr * n_dr)  # a chain of nine FMAs

    in_tile = ((y >= 0) & (y < height) & (x >= 0) & (x < width)
               & (local_y >= HALO) & (local_y < HALO + TILE_H)
               & (local_x >= HALO) & (local_x < HALO + TILE_W))
    gl.store(depth_out + pixel, depth, mask=in_tile)


@gluon.jit
def _fold_edge(edge, outer_a, outer_b, outer_c, inner_a, inner_b, inner_c):
    """Replicate padding at one image edge: where `edge` holds, each outer weight (the row or
    column past the edge) is added onto its inner one and becomes 0. Returns the outer three,
    then the inner three."""
    inner_a = gl.where(edge, inner_a + outer_a, inner_a)
    inner_b = gl.where(edge, inner_b + outer_b, inner_b)
    inner_c = gl.where(edge, inner_c + outer_c, inner_c)
    return (gl.where(edge, 0.0, outer_a), gl.where(edge, 0.0, outer_b),
            gl.where(edge, 0.0, outer_c), inner_a, inner_b, inner_c)


@gluon.jit
def _concat(low, high, N: gl.constexpr):
    """[low | high] of two 1D tensors of N elements (register moves only)."""
    return gl.reshape(gl.permute(gl.join(low, high), [1, 0]), [2 * N])


@gluon.jit
def _between_zeros(values, PAD: gl.constexpr):
    """[PAD zeros | values | PAD zeros] of a 1D tensor of 2 * PAD elements."""
    first, second = gl.split(gl.permute(gl.reshape(values, [2, PAD]), [1, 0]))
    zeros = gl.zeros_like(first)
    return _concat(_concat(zeros, first, PAD), _concat(second, zeros, PAD), 2 * PAD)


@gluon.jit
def _columns8(stacked, H: gl.constexpr, W: gl.constexpr, layout: gl.constexpr):
    """The eight (H, W) slices [..., n] of an (H, W, 8) tensor, in `layout`, n = 0..7."""
    even, odd = gl.split(gl.reshape(stacked, [H, W, 4, 2]))   # n = 2a + b: b = 0 | 1
    even_low, even_high = gl.split(gl.reshape(even, [H, W, 2, 2]))  # a = 2c + d: d = 0 | 1
    odd_low, odd_high = gl.split(gl.reshape(odd, [H, W, 2, 2]))
    n0, n4 = gl.split(even_low)   # c = 0 | 1
    n2, n6 = gl.split(even_high)
    n1, n5 = gl.split(odd_low)
    n3, n7 = gl.split(odd_high)
    return (gl.convert_layout(n0, layout, assert_trivial=True),
            gl.convert_layout(n1, layout, assert_trivial=True),
            gl.convert_layout(n2, layout, assert_trivial=True),
            gl.convert_layout(n3, layout, assert_trivial=True),
            gl.convert_layout(n4, layout, assert_trivial=True),
            gl.convert_layout(n5, layout, assert_trivial=True),
            gl.convert_layout(n6, layout, assert_trivial=True),
            gl.convert_layout(n7, layout, assert_trivial=True))


@gluon.jit
def _launch_dependents():
    """Let the next programmatic dependent launch start once every program got here."""
    gl.inline_asm_elementwise('griddepcontrol.launch_dependents; // $0', '=r', [], dtype=gl.int32,
                              is_pure=False, pack=1)


@gluon.jit
def _wait_for_previous_grid():
    """Wait until the previous grid in the stream has finished and its writes are visible."""
    gl.inline_asm_elementwise('griddepcontrol.wait; // $0', '=r', [], dtype=gl.int32,
                              is_pure=False, pack=1)
