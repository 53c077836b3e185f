"""input_check: coverage figures, the distance-to-input rule (numpy and torch against OpenCV's
dilation), implausible clouds and the hint for inputs that have publishers but deliver nothing."""
import cv2
import numpy as np
import pytest
import torch

from cspn_ros.core.input_check import (GRID, far_from_input, implausible_cloud, measure_coverage,
                                       silent_input_hint)


def test_far_from_input_matches_a_dilation_in_numpy_and_torch():
    rng = np.random.default_rng()
    for _ in range(40):
        height, width = (int(n) for n in rng.integers(1, 60, 2))
        valid = rng.random((height, width)) < rng.choice([0.0, 0.005, 0.05, 0.3])
        share = float(rng.choice([0.0, 0.05, 0.1, 0.25, 1.0]))
        radius = int(share * max(height, width))
        kernel = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
        expected = cv2.dilate(valid.astype(np.uint8), kernel, borderValue=0) == 0
        np.testing.assert_array_equal(far_from_input(valid, share), expected)
        np.testing.assert_array_equal(far_from_input(torch.from_numpy(valid), share).numpy(),
                                      expected)


def test_measure_coverage_counts_pixels_share_and_grid_cells():
    sparse = np.zeros((48, 64), np.float32)
    sparse[0, 0] = sparse[1, 1] = 3.0  # one cell
    sparse[47, 63] = 2.0  # the opposite corner cell
    sparse[10, 20] = -1.0  # not an input
    coverage = measure_coverage(sparse)
    assert (coverage.pixels, coverage.cells) == (3, 2)
    assert coverage.share == 3 / sparse.size
    assert coverage.values()[f'input grid cells (of {GRID * GRID})'] == '2'


@pytest.mark.parametrize('height,width', [(352, 1216), (37, 53), (5, 3), (1, 9)])
def test_measure_coverage_cells_equal_the_cells_of_every_input_pixel(height, width):
    """Grid cells counted from bands equal the distinct cells of the input pixels' own
    coordinates (row * GRID // H, column * GRID // W), odd and tiny sizes included."""
    rng = np.random.default_rng()
    for share in (0.0, 0.001, 0.05, 0.9):
        sparse = np.where(rng.random((height, width)) < share, 5.0, 0.0).astype(np.float32)
        rows, cols = np.nonzero(sparse > 0)
        expected = len({(r * GRID // height, c * GRID // width) for r, c in zip(rows, cols)})
        coverage = measure_coverage(sparse)
        assert (coverage.pixels, coverage.cells) == (rows.size, expected)


def test_a_cloud_read_in_the_wrong_byte_order_is_implausible():
    points = np.random.default_rng().uniform(-30, 30, (500, 3)).astype(np.float32)
    assert implausible_cloud(points, False) == ''
    swapped = points.byteswap().view(np.float32)
    swapped = swapped[np.isfinite(swapped).all(axis=1)]
    assert 'declared byte order (is_bigendian=True)' in implausible_cloud(swapped, True)


def test_silent_input_hint_names_only_topics_with_publishers():
    assert silent_input_hint({'/points': 0}, 'best_effort') == ''
    hint = silent_input_hint({'/points': 1, '/image': 0}, 'best_effort')
    assert '/points has 1 publisher' in hint and '/image' not in hint
    assert 'set input_reliability: reliable' in hint
    assert 'check its QoS' in silent_input_hint({'/points': 2}, 'reliable')
