"""The input bound (model/input_bound.py) against a per-pixel loop written from its definition,
its pieces against each other (OpenCV / max-pool ranges, OpenCV / two-pass distances), the
case it is for (a vertical depth edge crossing rows of inputs) and its use in DepthCompleter."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from cspn_ros.config import ModelConfig
from cspn_ros.model.completer import DepthCompleter
from cspn_ros.model.input_bound import (ENCLOSURE_SPACINGS, LINE_SLACK_PX, NO_BOUND_M,
                                        PAIR_GAP_FACTOR, WINDOW_RADII, bound_by_inputs, input_range, line_neighbours,
                                        nearest_input_distance, row_distance, smallest_radius)
from cspn_ros.model.network import CompletionNet


def _sparse(rng: np.random.Generator, height: int, width: int, pattern: str) -> torch.Tensor:
    """(1,1,H,W) float32 depths in metres on a random, row, hole or empty pattern."""
    depth = rng.uniform(0.5, 60.0, (height, width)).astype(np.float32)
    if pattern == 'random':
        keep = rng.random((height, width)) < 0.05
    elif pattern == 'rows':
        keep = np.zeros((height, width), bool)
        keep[rng.integers(0, 4)::int(rng.integers(4, 9))] = True
        keep &= rng.random((height, width)) < 0.9
    elif pattern == 'holes':
        keep = rng.random((height, width)) < 0.9
        y, x = rng.integers(0, height), rng.integers(0, width)
        keep[max(0, y - 8):y + 8, max(0, x - 12):x + 12] = False
    else:
        keep = np.zeros((height, width), bool)
    return torch.from_numpy(np.where(keep, depth, 0.0).astype(np.float32))[None, None]


def _reference(depth: np.ndarray, sparse: np.ndarray, smallest: int, band: int) -> np.ndarray:
    """The module docstring's three rules at the enclosed pixels, pixel by pixel (H,W)."""
    height, width = sparse.shape
    ys, xs = np.nonzero(sparse > 0)
    out = depth.copy()
    if smallest == 0:
        return out
    for y, x in np.ndindex(height, width):
        in_columns, in_rows = np.abs(xs - x) <= band, np.abs(ys - y) <= band
        if sparse[y, x] <= 0 and not ((ys[in_columns] >= y).any()
                                      or (xs[in_rows] <= x).any() and (xs[in_rows] >= x).any()):
            continue  # below the lowest inputs
        nearest = min(float(np.sqrt(((ys - y) ** 2 + (xs - x) ** 2).min())) if len(ys)
                      else math.inf, WINDOW_RADII[-1] + 1.0)
        radius = min(max(math.ceil(nearest), smallest), WINDOW_RADII[-1])
        window = None
        for size in WINDOW_RADII:
            patch = sparse[max(0, y - size):y + size + 1, max(0, x - size):x + size + 1]
            if size >= radius and (patch > 0).any():
                window = (patch[patch > 0].min(), patch[patch > 0].max())
                break
        windowed = depth[y, x] if window is None else np.clip(depth[y, x], *window)
        if sparse[y, x] > 0:
            out[y, x] = windowed
            continue
        lines = {}  # direction -> (gap, depth) of the nearest input along it
        for name, dy, dx in (('up', -1, 0), ('down', 1, 0), ('left', 0, -1), ('right', 0, 1)):
            step = 1
            while 0 <= y + step * dy < height and 0 <= x + step * dx < width:
                if sparse[y + step * dy, x + step * dx] > 0:
                    lines[name] = (step, sparse[y + step * dy, x + step * dx])
                    break
                step += 1
        low, high, paired = 0.0, np.inf, False
        for a, b in (('up', 'down'), ('left', 'right')):
            if a in lines and b in lines and (lines[a][0] + lines[b][0]
                                              <= 2 * PAIR_GAP_FACTOR * nearest + 2):
                low = max(low, min(lines[a][1], lines[b][1]))
                high = min(high, max(lines[a][1], lines[b][1]))
                paired = True
        near = [v for gap, v in lines.values() if gap <= nearest + LINE_SLACK_PX]
        if paired:
            out[y, x] = np.clip(depth[y, x], low, max(high, low))
        elif near:
            out[y, x] = np.clip(depth[y, x], min(near), max(near))
        else:
            out[y, x] = windowed
    return out


@pytest.mark.parametrize('opencv', [True, False], ids=['opencv', 'device_path'])
@pytest.mark.parametrize('pattern', ['random', 'rows', 'holes', 'empty'])
def test_the_bound_is_its_definition(pattern, opencv):
    """Both paths: the CPU's (OpenCV) and the GPU's (max pooling, two-pass distance transform
    through its torch reference), run here on the CPU."""
    rng = np.random.default_rng()
    sparse = _sparse(rng, 29, 41, pattern)
    depth = torch.from_numpy(rng.uniform(0.1, 70.0, (1, 1, 29, 41)).astype(np.float32))
    out = bound_by_inputs(depth, sparse, 0.5, opencv=opencv)
    count = int((sparse > 0).sum())
    expected = _reference(depth[0, 0].numpy(), sparse[0, 0].numpy(),
                          smallest_radius(count, 29, 41, 0.5),
                          smallest_radius(count, 29, 41, ENCLOSURE_SPACINGS))
    np.testing.assert_array_equal(out[0, 0].numpy(), expected)
    if pattern == 'empty':
        assert torch.equal(out, depth)


@pytest.mark.parametrize('opencv', [True, False], ids=['opencv', 'device_path'])
def test_frames_of_a_batch_are_bounded_each_with_its_own_spacing(opencv):
    """The device path bounds the whole batch at once (no per-frame loop): each frame as the
    CPU path bounds it alone, a frame without inputs unchanged."""
    rng = np.random.default_rng()
    sparse = torch.cat([_sparse(rng, 30, 40, pattern) for pattern in ('random', 'rows', 'empty')])
    depth = torch.from_numpy(rng.uniform(0.1, 70.0, (3, 1, 30, 40)).astype(np.float32))
    out = bound_by_inputs(depth, sparse, 0.5, opencv=opencv)
    for b in range(3):
        assert torch.equal(out[b:b + 1], bound_by_inputs(depth[b:b + 1], sparse[b:b + 1], 0.5))
    assert torch.equal(out[2], depth[2])
    assert smallest_radius(0, 100, 100, 0.5) == 0
    assert smallest_radius(100, 100, 100, 0.5) == 5       # one input per 10 x 10 pixels
    assert smallest_radius(10000, 100, 100, 0.5) == 1     # dense: at least 1


def test_a_vertical_edge_across_rows_keeps_its_sides():
    """Rows of inputs every 8 pixels over a wall at 2 m (left) and a wall at 8 m (right);
    a depth blurred across the edge between them (the network keeps its inputs) comes out as
    the walls, exactly."""
    height, width, edge = 41, 60, 30
    truth = np.where(np.arange(width) < edge, 2.0, 8.0).astype(np.float32)[None].repeat(height, 0)
    sparse = np.zeros_like(truth)
    sparse[::8] = truth[::8]
    blurred = truth.copy()
    blurred[:, edge - 4:edge + 4] = np.linspace(2.0, 8.0, 8)
    blurred[::8] = truth[::8]
    out = bound_by_inputs(torch.from_numpy(blurred)[None, None],
                          torch.from_numpy(sparse)[None, None], 0.5)[0, 0].numpy()
    np.testing.assert_array_equal(out, truth)


@pytest.mark.parametrize('opencv', [True, False], ids=['opencv', 'device_path'])
def test_ground_below_the_lowest_ring_keeps_the_network_depth(opencv):
    """A LiDAR's rings cover the upper 2/3 of the frame; below the lowest ring the ground comes
    nearer than any measurement. There the network's depth stays (a clamp would copy the
    lowest ring down each column); between the rings and above the top one it is bounded."""
    height, width = 48, 64
    rows = np.arange(height, dtype=np.float32)[:, None].repeat(width, 1)
    truth = 400.0 / (rows + 8.0)  # a ground plane: nearer towards the bottom
    sparse = np.zeros_like(truth)
    sparse[2:32:5] = truth[2:32:5]
    network = truth * 1.3  # too far everywhere
    out = bound_by_inputs(torch.from_numpy(network)[None, None],
                          torch.from_numpy(sparse)[None, None], 0.25, opencv=opencv)[0, 0].numpy()
    np.testing.assert_array_equal(out[33:], network[33:])
    assert (out[:2] <= truth[2, 0]).all()  # above the top ring: bounded by it
    for top in range(2, 27, 5):  # between two rings: within their depths
        assert (out[top + 1:top + 5] <= truth[top, 0]).all()
        assert (out[top + 1:top + 5] >= truth[top + 5, 0]).all()
    assert not np.array_equal(out[3:27], network[3:27])


@pytest.mark.parametrize('pattern', ['random', 'rows', 'holes'])
def test_the_two_distance_transforms_agree(pattern):
    """OpenCV's exact transform (CPU) and the two-pass one (column distances, then rows: the
    GPU's, here through its torch reference) give the same distances up to float rounding."""
    rng = np.random.default_rng()
    sparse = _sparse(rng, 33, 47, pattern)
    column = line_neighbours(sparse, 2)[0].amin(0)
    two_pass = row_distance(column.clamp_max(WINDOW_RADII[-1] + 1.0))
    opencv = nearest_input_distance(sparse)
    torch.testing.assert_close(two_pass, opencv, rtol=0, atol=1e-4)
    ys, xs = np.nonzero(sparse[0, 0].numpy() > 0)
    y, x = 5, 7
    assert opencv[0, 0, y, x].item() == pytest.approx(np.sqrt(((ys - y) ** 2 + (xs - x) ** 2)
                                                              .min()), abs=1e-4)


@pytest.mark.parametrize('radius', [1, 4])
def test_both_range_filters_equal_a_loop_and_windows_compose(radius):
    rng = np.random.default_rng()
    sparse = torch.cat([_sparse(rng, 23, 31, 'random'), _sparse(rng, 23, 31, 'empty')])
    ranges = [input_range(sparse, radius, sparse, sparse, opencv=opencv)
              for opencv in (True, False)]
    for low, high in ranges:
        for b, y, x in np.ndindex(2, 23, 31):
            window = sparse[b, 0, max(0, y - radius):y + radius + 1,
                            max(0, x - radius):x + radius + 1]
            inputs = window[window > 0]
            assert high[b, 0, y, x] == (inputs.max() if inputs.numel() else 0)
            assert low[b, 0, y, x] == (inputs.min() if inputs.numel() else NO_BOUND_M)
    grown = input_range(None, 2, *ranges[0])
    assert all(torch.equal(a, b) for a, b in zip(grown, input_range(sparse, radius + 2, sparse,
                                                                      sparse)))
    # the device path grows by up to 2 r + 1 with one dilated 3-tap max per axis
    step = 2 * radius + 1
    dilated = input_range(None, step, *ranges[1], opencv=False, spans=radius)
    direct = input_range(sparse, radius + step, sparse, sparse, opencv=True)
    assert all(torch.equal(a, b) for a, b in zip(dilated, direct))


def test_the_completer_bounds_its_output_and_the_network_is_unchanged():
    """input_bound acts in DepthCompleter after the network, on single frames and batches; the
    same weights without it give the raw output."""
    torch.manual_seed(0)
    config = ModelConfig(width=8, steps=2, initial_fill='morphological', residual='log')
    model = CompletionNet(config).eval()
    bounded = DepthCompleter(dataclasses.replace(config, input_bound=0.5), model)
    plain = DepthCompleter(config, model)
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 255, (37, 53, 3), dtype=np.uint8)
    sparse = _sparse(rng, 37, 53, 'rows')[0, 0].numpy()
    out, raw = bounded(rgb, sparse), plain(rgb, sparse)
    expected = bound_by_inputs(torch.from_numpy(raw)[None, None],
                               torch.from_numpy(sparse)[None, None], 0.5)[0, 0].numpy()
    np.testing.assert_array_equal(out, expected)
    assert not np.array_equal(out, raw)
    batch = bounded.complete_batch([rgb, rgb], [sparse, sparse])
    np.testing.assert_allclose(batch[0][0], out, rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match='input_bound'):
        ModelConfig(input_bound=-1)


def test_half_precision_depth_is_bounded_in_float32():
    """A float16 depth (the network's dtype under autocast) comes back float16, finite and
    equal to the float32 result rounded."""
    rng = np.random.default_rng()
    sparse = _sparse(rng, 30, 40, 'rows')
    depth = torch.from_numpy(rng.uniform(0.1, 70.0, (1, 1, 30, 40)).astype(np.float32))
    half = bound_by_inputs(depth.half(), sparse, 0.25)
    assert half.dtype == torch.float16 and torch.isfinite(half).all()
    assert torch.equal(half, bound_by_inputs(depth.half().float(), sparse, 0.25).half())
