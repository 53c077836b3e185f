"""evaluate: score depth completion on a rosbag2 file through the node's own pipeline.

    evaluate --bag PATH [--checkpoint CKPT] [--gt-topic TOPIC | --holdout 0.2] [--out DIR]

Frames are paired by the node's matcher and completed by `CompletionPipeline` (prepare +
complete, i.e. `process`) with the model and, alongside, the classical baseline. Scoring is
against a ground-truth depth topic or against a held-out share of the sensor points (the rest is
the input; the split is fixed by --seed). Metrics are computed per frame and averaged over
frames (KITTI convention); blanking by min_confidence never enters them. The confidence report
(summary key "confidence") gives, for each min_confidence in CONFIDENCE_THRESHOLDS, the share
of scored pixels the model keeps (confidence >= threshold, as the node's blanking) and the RMSE
over the kept pixels, pooled over all frames. With --self-check SHARE the node's live
self-check runs too (`core.selfcheck`, the same held-out points, keyed by the image stamps):
that share of the input points is held out before both methods and scored (summary key
"self_check": RMSE / MAE of model and classical fill pooled over all frames, share of frames
the model wins); it needs no ground truth. Writes DIR/summary.json, DIR/frames.csv, DIR/frame_*.png (RGB |
sparse | prediction | error) and DIR/error_vs_distance.png. Same bag + checkpoint + seed ->
same numbers.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np

from cspn_ros.core.colorize import colorize_depth
from cspn_ros.core.pipeline import CompletionPipeline
from cspn_ros.core.selfcheck import SelfCheck, SelfCheckConfig
from cspn_ros.data.bag_arguments import add_bag_arguments, frames_from_args
from cspn_ros.data.bag_reader import BagError
from cspn_ros.data.bag_samples import holdout_split
from cspn_ros.model.completer import DepthCompleter
from cspn_ros.train.metrics import METRIC_KEYS, compute_metrics, mean_metrics, scored_pixels

LOGGER = logging.getLogger('evaluate')
#: Width (metres) of the distance bins of the error-vs-distance plot.
DISTANCE_BIN_M = 0.5
METHODS = ('model', 'baseline')
#: min_confidence values of the confidence report (0 keeps every pixel).
CONFIDENCE_THRESHOLDS = (0.0, 0.3, 0.5, 0.7, 0.9)


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog='evaluate', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--bag', required=True, help='rosbag2 folder (sqlite3 or mcap)')
    parser.add_argument('--checkpoint', default=None,
                        help="weights (.safetensors/.pt); default: packaged weights; "
                             "'classical' for the baseline alone")
    target = parser.add_mutually_exclusive_group()
    target.add_argument('--gt-topic', default=None, help='ground-truth depth Image topic')
    target.add_argument('--holdout', type=float, default=None,
                        help='score on this share of held-out sensor points (default 0.2 when '
                             'no --gt-topic)')
    parser.add_argument('--out', default='evaluation', help='output folder')
    parser.add_argument('--seed', type=int, default=0, help='seed of the holdout split')
    parser.add_argument('--device', default='cpu', help='cpu, cuda or auto')
    parser.add_argument('--pictures', type=int, default=4, help='frames drawn as PNG')
    parser.add_argument('--max-frames', type=int, default=0, help='0 = all')
    parser.add_argument('--self-check', type=float, default=0.0, metavar='SHARE',
                        help="also score the node's self-check on this held-out share of the "
                             'input points (the node parameter self_check.holdout_share); 0 = off')
    add_bag_arguments(parser)
    args = parser.parse_args(argv)
    if args.gt_topic is None and args.holdout is None:
        args.holdout = 0.2
    return args


def _completer(checkpoint: Optional[str], device: str) -> DepthCompleter:
    if checkpoint == 'classical':
        return DepthCompleter.from_config('classical', device)
    return DepthCompleter.from_checkpoint(checkpoint, device)


def error_picture(rgb: np.ndarray, sparse: np.ndarray, prediction: np.ndarray,
                  gt: np.ndarray) -> np.ndarray:
    """RGB | sparse | prediction | |error| at gt pixels, side by side, (H, 4W, 3) uint8 BGR."""
    valid = gt > 0
    top = float(np.percentile(gt[valid], 99)) if valid.any() else float(prediction.max() or 1)
    error = np.where(valid, np.abs(prediction - gt), 0)
    error_top = float(np.percentile(error[valid], 95)) if valid.any() else 1.0
    return np.concatenate([
        cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), colorize_depth(sparse, 0.0, top),
        colorize_depth(prediction, 0.0, top), colorize_depth(error, 0.0, max(error_top, 1e-3)),
    ], axis=1)


class DistanceErrors:
    """Mean |error| per ground-truth distance bin, accumulated over frames."""

    def __init__(self) -> None:
        self.sums: dict[str, np.ndarray] = {m: np.zeros(0) for m in METHODS}
        self.counts = np.zeros(0)

    def add(self, method: str, prediction: np.ndarray, gt: np.ndarray) -> None:
        valid = gt > 0
        bins = (gt[valid] / DISTANCE_BIN_M).astype(np.int64)
        errors = np.abs(prediction[valid].astype(np.float64) - gt[valid])
        size = max(self.counts.size, int(bins.max(initial=-1)) + 1)
        sums = np.bincount(bins, errors, minlength=size)
        sums[:self.sums[method].size] += self.sums[method]
        self.sums[method] = sums
        if method == METHODS[0]:
            counts = np.bincount(bins, minlength=size).astype(np.float64)
            counts[:self.counts.size] += self.counts
            self.counts = counts

    def plot(self, path: Path) -> None:
        import matplotlib
        matplotlib.use('Agg')
        from matplotlib import pyplot
        figure, axes = pyplot.subplots(figsize=(7, 4))
        used = np.flatnonzero(self.counts)
        centres = (used + 0.5) * DISTANCE_BIN_M
        for method in METHODS:
            sums = self.sums[method]
            sums = np.pad(sums, (0, max(0, self.counts.size - sums.size)))
            axes.plot(centres, sums[used] / self.counts[used], marker='.', label=method)
        axes.set_xlabel('ground-truth distance (m)')
        axes.set_ylabel('mean absolute error (m)')
        axes.grid(True, alpha=0.3)
        axes.legend()
        figure.tight_layout()
        figure.savefig(path, dpi=100)
        pyplot.close(figure)


class ConfidenceReport:
    """Coverage and RMSE of the pixels kept at each min_confidence, pooled over frames."""

    def __init__(self, thresholds: Sequence[float] = CONFIDENCE_THRESHOLDS) -> None:
        self.thresholds = tuple(thresholds)
        self.kept = np.zeros(len(self.thresholds), dtype=np.int64)
        self.squared_errors = np.zeros(len(self.thresholds))
        self.scored = 0

    def add(self, prediction: np.ndarray, confidence: np.ndarray, gt: np.ndarray) -> None:
        """prediction, gt (H,W) metres (gt 0 = not scored), confidence (H,W) in [0,1]."""
        predicted, truth, valid = scored_pixels(prediction, gt)  # as compute_metrics scores
        squared = (predicted - truth) ** 2
        self.scored += int(valid.sum())
        for index, threshold in enumerate(self.thresholds):
            kept = confidence[valid] >= threshold
            self.kept[index] += int(kept.sum())
            self.squared_errors[index] += float(squared[kept].sum())

    def rows(self) -> list[dict]:
        """[{min_confidence, coverage (fraction of scored pixels kept), rmse (m; None when no
        pixel is kept)}, ...]."""
        return [{'min_confidence': threshold,
                 'coverage': float(kept / max(self.scored, 1)),
                 'rmse': float(np.sqrt(squared / kept)) if kept else None}
                for threshold, kept, squared in zip(self.thresholds, self.kept,
                                                    self.squared_errors)]


def format_table(summary: dict) -> str:
    """The summary as a fixed-width text table (RMSE/MAE in m, iRMSE/iMAE in 1/km)."""
    columns = (('RMSE m', 'rmse', '.4f'), ('MAE m', 'mae', '.4f'), ('iRMSE', 'irmse', '.3f'),
               ('iMAE', 'imae', '.3f'), ('REL', 'rel', '.4f'), ('d<1.02', 'd102', '.4f'),
               ('d<1.05', 'd105', '.4f'), ('d<1.10', 'd110', '.4f'), ('d<1.25', 'd125', '.4f'),
               ('frames', 'frames', 'd'))
    rows = [f'{"":10s}' + ''.join(f' {title:>10s}' for title, _, _ in columns)]
    for method in METHODS:
        values = summary[method]
        rows.append(f'{method:10s}' + ''.join(f' {values[key]:>10{spec}}'
                                              for _, key, spec in columns))
    return '\n'.join(rows)


def evaluate(args: argparse.Namespace) -> dict:
    """Run the evaluation described by parsed arguments; returns the summary dict."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    frames, pipeline_options = frames_from_args(
        args, [args.bag], ground_truth=args.gt_topic)[args.depth_source]
    count = len(frames) if args.max_frames <= 0 else min(args.max_frames, len(frames))
    self_check = SelfCheck(SelfCheckConfig(holdout_share=args.self_check,
                                           window=max(count, 1)), classical=None)
    pipeline_options['holdout'] = self_check.holdout()
    pipelines = {'model': CompletionPipeline(_completer(args.checkpoint, args.device),
                                             **pipeline_options),
                 'baseline': CompletionPipeline(DepthCompleter.from_config('classical'),
                                                **pipeline_options)}
    drawn = set(np.linspace(0, count - 1, min(args.pictures, count)).round().astype(int).tolist())
    per_frame = {m: [] for m in METHODS}
    rows, skipped = [], []
    distances = DistanceErrors()
    confidence_report = ConfidenceReport()
    for index in range(count):
        stamp = frames.frames[index].stamp_ns
        try:
            messages = frames.read(index)
            inputs = frames.prepare(pipelines['model'], messages, index)
            if args.gt_topic:
                gt = frames.ground_truth(messages, inputs.sparse.shape)
            else:
                rng = np.random.default_rng([args.seed, index])
                inputs.sparse, gt = holdout_split(inputs.sparse, args.holdout, rng)
            if not np.any(gt > 0):
                raise ValueError('no target pixel to score (ground truth empty or too few '
                                 'sensor points to hold out)')
            results = {m: pipelines[m].complete(inputs) for m in METHODS}
        except ValueError as error:  # BagError, InputError, ConversionError: a bad frame
            LOGGER.warning('skipping frame %d (stamp %d ns): %s', index, stamp, error)
            skipped.append({'frame': index, 'stamp_ns': stamp, 'reason': str(error)})
            continue
        row = {'frame': index, 'stamp_ns': stamp,
               'input_points': int(np.count_nonzero(inputs.sparse))}
        for method, result in results.items():
            metrics = compute_metrics(result.dense_unblanked, gt)
            per_frame[method].append(metrics)
            distances.add(method, result.dense_unblanked, gt)
            row.update({f'{method}_{k}': metrics[k] for k in (*METRIC_KEYS, 'count')})
        model = results['model']
        confidence_report.add(model.dense_unblanked, model.confidence, gt)
        self_check.check(model, classical_depth=results['baseline'].dense_unblanked)
        rows.append(row)
        if index in drawn:
            cv2.imwrite(str(out / f'frame_{index:05d}.png'), error_picture(
                inputs.rgb, inputs.sparse, results['model'].dense_unblanked, gt))
    if not rows:
        raise BagError(f'{args.bag}: none of the {count} paired frames could be scored '
                       f'(first problem: {skipped[0]["reason"] if skipped else "none"})')
    summary = {m: mean_metrics(per_frame[m]) for m in METHODS}
    summary.update(aggregation='mean over frames of per-frame metrics',
                   target=args.gt_topic or f'holdout {args.holdout} (seed {args.seed})',
                   checkpoint=args.checkpoint or 'packaged default', skipped=skipped,
                   matcher=frames.matcher_stats[0], confidence=confidence_report.rows())
    if self_check.frames_scored:
        summary['self_check'] = {'holdout_share': args.self_check,
                                 **self_check.summary()}
    (out / 'summary.json').write_text(json.dumps(summary, indent=2))
    with open(out / 'frames.csv', 'w', newline='') as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    distances.plot(out / 'error_vs_distance.png')
    frames.close()
    return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    args = parse_args(argv)
    try:
        summary = evaluate(args)
    except (BagError, ValueError, FileNotFoundError) as error:
        print(f'evaluate: error: {error}', file=sys.stderr)
        return 1
    print(format_table(summary))
    print('model, kept pixels: ' + '; '.join(
        f'min_confidence {row["min_confidence"]:g}: coverage {row["coverage"]:.3f}, '
        f'RMSE {row["rmse"] if row["rmse"] is None else round(row["rmse"], 4)} m'
        for row in summary['confidence']))
    if 'self_check' in summary:
        check = summary['self_check']
        print(f'self-check on {check["points_in_window"]} held-out input points '
              f'({check["frames_scored"]} frames): model RMSE {check["model_rmse"]:.4f} m, MAE '
              f'{check["model_mae"]:.4f} m; classical fill RMSE {check["classical_rmse"]:.4f} m, '
              f'MAE {check["classical_mae"]:.4f} m; model wins {check["model_wins_share"]:.0%} '
              'of frames')
    print(f'{summary["aggregation"]}; target: {summary["target"]}; '
          f'skipped frames: {len(summary["skipped"])}; results in {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
