"""Augmentation geometry, and the training loop end to end on tiny synthetic bags."""
import numpy as np
import pytest

from cspn_ros.data.augment import Augmenter, crop, hflip, rebin_depth, rescale


def _project(K, points):
    uvw = points @ K.T
    return uvw[:, :2] / uvw[:, 2:]


def _random_sample(rng, height=24, width=32):
    K = np.array([[rng.uniform(20, 40), 0, rng.uniform(10, 20)],
                  [0, rng.uniform(20, 40), rng.uniform(8, 14)], [0, 0, 1]])
    sparse = np.where(rng.random((height, width)) < 0.2,
                      rng.uniform(1, 10, (height, width)), 0).astype(np.float32)
    return {'rgb': rng.integers(0, 256, (height, width, 3), dtype=np.uint8), 'sparse': sparse,
            'target': sparse.copy(), 'K': K}


def test_flip_and_crop_keep_points_on_their_pixels():
    rng = np.random.default_rng()
    sample = _random_sample(rng)
    points = np.column_stack([rng.uniform(-1, 1, 20), rng.uniform(-1, 1, 20),
                              rng.uniform(2, 5, 20)])
    uv = _project(sample['K'], points)
    flipped = hflip(sample)
    mirrored = points * [-1, 1, 1]
    np.testing.assert_allclose(_project(flipped['K'], mirrored)[:, 0], 31 - uv[:, 0])
    np.testing.assert_array_equal(flipped['sparse'][:, ::-1], sample['sparse'])
    top, left = int(rng.integers(0, 8)), int(rng.integers(0, 10))
    cropped = crop(sample, top, left, 16, 20)
    np.testing.assert_allclose(_project(cropped['K'], points), uv - [left, top])
    np.testing.assert_array_equal(cropped['sparse'], sample['sparse'][top:top + 16,
                                                                     left:left + 20])
    with pytest.raises(ValueError, match='does not fit'):
        crop(sample, 10, 0, 20, 20)


def test_rescale_updates_intrinsics_and_rebins_depth_without_interpolation():
    rng = np.random.default_rng()
    sample = _random_sample(rng)
    half = rescale(sample, 0.5)
    assert half['rgb'].shape == (12, 16, 3) and half['sparse'].shape == (12, 16)
    # Pixel-centre convention: pixel (u, v) of the full image is (u+0.5)/2-0.5 in the half one.
    np.testing.assert_allclose(half['K'][:2, :2], sample['K'][:2, :2] * 0.5)
    np.testing.assert_allclose(half['K'][:2, 2], (sample['K'][:2, 2] + 0.5) / 2 - 0.5)
    # Loop reference: each 2x2 block keeps its nearest valid depth.
    for v in range(12):
        for u in range(16):
            block = sample['sparse'][2 * v:2 * v + 2, 2 * u:2 * u + 2]
            expected = block[block > 0].min() if np.any(block > 0) else 0
            assert half['sparse'][v, u] == expected
    assert set(np.unique(half['sparse'])) <= set(np.unique(sample['sparse']))
    double = rebin_depth(sample['sparse'], 48, 64)
    np.testing.assert_array_equal(double[1::2, 1::2], sample['sparse'])
    assert np.count_nonzero(double) == np.count_nonzero(sample['sparse'])


def test_augmenter_is_deterministic_per_generator_state():
    rng = np.random.default_rng()
    sample = _random_sample(rng)
    augment = Augmenter(crop_size=(16, 16), scale_range=(1.0, 1.5), jitter=0.3)
    seed = int(rng.integers(1 << 31))
    first = augment(sample, np.random.default_rng(seed))
    second = augment(sample, np.random.default_rng(seed))
    assert first['rgb'].shape == (16, 16, 3) and first['sparse'].shape == (16, 16)
    for key in ('rgb', 'sparse', 'target', 'K'):
        np.testing.assert_array_equal(first[key], second[key])
