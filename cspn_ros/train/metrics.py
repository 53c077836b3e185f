"""Depth-completion metrics (KITTI / NYU conventions) on one frame, and their mean over frames.

Every valid ground-truth pixel (gt > 0) is scored. Aggregation over a sequence is the KITTI
convention: metrics are computed per frame, then averaged over frames (`mean_metrics`).
"""
from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np

#: delta-accuracy thresholds: key -> threshold on max(pred/gt, gt/pred).
DELTA_THRESHOLDS = {'d125': 1.25, 'd102': 1.02, 'd105': 1.05, 'd110': 1.10}
METRIC_KEYS = ('rmse', 'mae', 'irmse', 'imae', 'rel', *DELTA_THRESHOLDS)
#: Predictions are clamped to this many metres before inverting, so a hole (0) in a prediction
#: costs a large but finite inverse error instead of inf.
MIN_PREDICTED_DEPTH_M = 1e-3


def scored_pixels(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pixels every score uses and the values it sees: (prediction (N,) float64 metres, NaN
    -> 0 and clamped to at least MIN_PREDICTED_DEPTH_M, ground truth (N,) float64 metres,
    valid (H,W) bool = finite gt > 0)."""
    valid = np.isfinite(gt) & (gt > 0)
    p = np.nan_to_num(pred[valid].astype(np.float64), nan=0.0)
    return np.maximum(p, MIN_PREDICTED_DEPTH_M), gt[valid].astype(np.float64), valid


def compute_metrics(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """Score a predicted depth map against ground truth.

    pred, gt: (H,W) metres; gt == 0 marks pixels without ground truth. Returns `rmse`, `mae`
    (metres), `irmse`, `imae` (1/km), `rel` (mean |pred-gt|/gt), `d125`, `d102`, `d105`, `d110`
    (fraction of pixels with max(pred/gt, gt/pred) below 1.25, 1.02, 1.05, 1.10) and `count`
    (valid gt pixels). With no valid gt pixel the metrics are NaN and count is 0.
    """
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f'prediction shape {pred.shape} differs from ground truth {gt.shape}')
    p, g, valid = scored_pixels(pred, gt)
    count = int(valid.sum())
    if count == 0:
        return {**{k: float('nan') for k in METRIC_KEYS}, 'count': 0}
    err = p - g
    inv_err_per_km = (1.0 / p - 1.0 / g) * 1000.0
    ratio = np.maximum(p / g, g / p)
    result = {
        'rmse': float(np.sqrt(np.mean(err ** 2))),
        'mae': float(np.mean(np.abs(err))),
        'irmse': float(np.sqrt(np.mean(inv_err_per_km ** 2))),
        'imae': float(np.mean(np.abs(inv_err_per_km))),
        'rel': float(np.mean(np.abs(err) / g)),
    }
    for key, threshold in DELTA_THRESHOLDS.items():
        result[key] = float(np.mean(ratio < threshold))
    result['count'] = count
    return result


#: Frame RMSEs are floored here (m) before the logarithm of `geometric_mean_rmse`.
RMSE_FLOOR_M = 1e-4


def _scored(per_frame: Iterable[Mapping[str, float]]) -> list[Mapping[str, float]]:
    """The frames with ground truth (compute_metrics' count > 0)."""
    return [m for m in per_frame if m.get('count', 0) > 0]


def mean_metrics(per_frame: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Average per-frame metrics over frames (frames without ground truth are skipped).

    Returns the `METRIC_KEYS` means plus `frames` (frames averaged); NaN metrics when none.
    """
    scored = _scored(per_frame)
    summary = {k: float(np.mean([m[k] for m in scored])) if scored else float('nan')
               for k in METRIC_KEYS}
    summary['frames'] = len(scored)
    return summary


def geometric_mean_rmse(per_frame: Iterable[Mapping[str, float]]) -> float:
    """Geometric mean (m) of the frames' RMSE (frames without ground truth skipped; NaN when
    none). Unlike the arithmetic mean it is not ruled by the frames with the largest depths: a
    10 % gain on an indoor ToF frame counts as much as one on a street."""
    rmses = [m['rmse'] for m in _scored(per_frame)]
    if not rmses:
        return float('nan')
    return float(np.exp(np.mean(np.log(np.maximum(rmses, RMSE_FLOOR_M)))))
