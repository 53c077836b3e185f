"""compute_metrics / mean_metrics against a float64 loop reference on random depth maps."""
import math

import numpy as np
import pytest

from cspn_ros.train.metrics import METRIC_KEYS, compute_metrics, geometric_mean_rmse, mean_metrics


def reference_metrics(pred, gt):
    sq = abs_err = inv_sq = inv_abs = rel = 0.0
    below = {1.25: 0, 1.02: 0, 1.05: 0, 1.10: 0}
    n = 0
    for p, g in zip(pred.ravel().tolist(), gt.ravel().tolist()):
        if not g > 0:
            continue
        p = max(p, 1e-3)
        n += 1
        sq += (p - g) ** 2
        abs_err += abs(p - g)
        inv_sq += ((1 / p - 1 / g) * 1000) ** 2
        inv_abs += abs(1 / p - 1 / g) * 1000
        rel += abs(p - g) / g
        for t in below:
            below[t] += max(p / g, g / p) < t
    return {'rmse': math.sqrt(sq / n), 'mae': abs_err / n, 'irmse': math.sqrt(inv_sq / n),
            'imae': inv_abs / n, 'rel': rel / n, 'd125': below[1.25] / n,
            'd102': below[1.02] / n, 'd105': below[1.05] / n, 'd110': below[1.10] / n,
            'count': n}


def test_metrics_match_float64_reference():
    rng = np.random.default_rng()
    for _ in range(5):
        gt = rng.uniform(0.5, 80.0, (23, 31)).astype(np.float32)
        gt[rng.random(gt.shape) < 0.6] = 0
        pred = (gt + rng.normal(0, 2.0, gt.shape)).astype(np.float32)
        pred[rng.random(gt.shape) < 0.05] = 0  # holes in the prediction stay finite
        pred = np.abs(pred)
        got = compute_metrics(pred, gt)
        want = reference_metrics(pred, gt)
        assert got['count'] == want['count']
        for key in METRIC_KEYS:
            assert got[key] == pytest.approx(want[key], rel=1e-9, abs=1e-12), key


def test_perfect_prediction_and_empty_ground_truth():
    rng = np.random.default_rng()
    gt = rng.uniform(1, 10, (8, 9)).astype(np.float32)
    perfect = compute_metrics(gt.copy(), gt)
    assert perfect['rmse'] == 0 and perfect['d102'] == 1 and perfect['count'] == 72
    empty = compute_metrics(gt, np.zeros_like(gt))
    assert empty['count'] == 0 and math.isnan(empty['rmse'])
    with pytest.raises(ValueError, match='shape'):
        compute_metrics(gt, gt[:, :-1])


def test_mean_metrics_averages_frames_not_pixels():
    rng = np.random.default_rng()
    frames = []
    for _ in range(4):
        gt = rng.uniform(1, 20, (10, 12)).astype(np.float32)
        gt[rng.random(gt.shape) < rng.uniform(0.1, 0.9)] = 0
        frames.append(compute_metrics(gt + rng.normal(0, 1, gt.shape), gt))
    frames.append(compute_metrics(gt, np.zeros_like(gt)))  # no gt: skipped
    summary = mean_metrics(frames)
    assert summary['frames'] == 4
    for key in METRIC_KEYS:
        assert summary[key] == pytest.approx(np.mean([f[key] for f in frames[:4]]))


def test_geometric_mean_rmse_skips_frames_without_ground_truth():
    rng = np.random.default_rng()
    frames = []
    for scale in (60.0, 3.0):  # a street and a room
        gt = rng.uniform(0.5, scale, (10, 12)).astype(np.float32)
        frames.append(compute_metrics(gt + rng.normal(0, 0.02 * scale, gt.shape), gt))
    frames.append(compute_metrics(gt, np.zeros_like(gt)))  # no gt: skipped
    expected = np.sqrt(frames[0]['rmse'] * frames[1]['rmse'])
    assert geometric_mean_rmse(frames) == pytest.approx(expected, rel=1e-12)
    assert geometric_mean_rmse(frames) < mean_metrics(frames)['rmse']
    assert np.isnan(geometric_mean_rmse(frames[2:]))
