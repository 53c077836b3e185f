#!/usr/bin/env python3
"""Where does the squared error of ToF depth completion come from? (issue #4)

    python3 bench/tof_error_breakdown.py --heldout DIR [--checkpoint CKPT] [--out result.json]

DIR holds indoor bags written by scripts/make_synthetic_bags.py (names `indoor_<beams>b_seed<s>`).
Every frame goes through evaluate's path (BagFrames + CompletionPipeline.prepare / complete, ToF
depth source, /ground_truth/depth) with the model, the model's depth before propagation
('model_init', to see what CSPN adds) and the classical baseline. The frame is then
rendered again with SyntheticScene (same seed and settings; its ground truth must equal the bag's)
to label every scored pixel of the colour image:

- measured: a ToF sample landed on the pixel ('measured' if it is within max(5 %, 5 cm) of the
  truth, else 'measured_wrong_surface': a sample of another surface, e.g. seen through a gap of
  the foreground's registered samples);
- holes, by why the ToF has no sample there. The pixel's true 3D point is moved into the ToF
  camera: 'outside_footprint' (it leaves the ToF image), 'occluded_from_tof' (the ToF sees a
  nearer surface along that ray: the shadow of the 5 cm baseline), or the state of the ToF pixel
  it lands on: 'dark' (albedo luminance < 0.12), 'depth_edge' (flying-pixel filter),
  'beyond_range' (> 8 m), 'registration_gap' (the ToF measured it, but the 320x240 ToF samples
  registered into the 640x480 image leave this colour pixel empty).

Squared errors are pooled over all pixels of all frames and split by region, hole kind, distance
(px) to the nearest measurement, true depth and distance to the image border; the JSON also
holds each method's frame-mean RMSE (evaluate's number) and bias.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cspn_ros.core.pipeline import CompletionPipeline  # noqa: E402
from cspn_ros.data.bag_frames import BagFrames  # noqa: E402
from cspn_ros.data.bag_reader import BagTopics  # noqa: E402
from cspn_ros.data.synthetic import SyntheticScene  # noqa: E402
from cspn_ros.model.completer import DepthCompleter  # noqa: E402
from cspn_ros.train.metrics import compute_metrics  # noqa: E402

METHODS = ('model', 'baseline', 'model_init')
HOLE_KINDS = ('outside_footprint', 'occluded_from_tof', 'dark', 'depth_edge', 'beyond_range',
              'registration_gap')
REGIONS = ('measured', 'measured_wrong_surface', *HOLE_KINDS)
#: Bin edges: distance (px) to the nearest ToF sample, true depth (m), distance (px) to the border.
DISTANCE_EDGES_PX = (0, 1, 2, 3, 5, 8, 16, 32, np.inf)
DEPTH_EDGES_M = (0, 1, 2, 3, 4, 5, 6, 8, np.inf)
BORDER_EDGES_PX = (0, 8, 16, 32, 64, np.inf)
#: Tolerance (relative, absolute m) for "the ToF sees this very surface" and "a right sample".
SAME_SURFACE = (0.05, 0.05)
BAG_NAME = re.compile(r'(indoor|outdoor)_(\d+)b_seed(\d+)$')


def label_pixels(scene: SyntheticScene, index: int, gt: np.ndarray,
                 sparse: np.ndarray) -> np.ndarray:
    """(H,W) int8 index into REGIONS for every pixel with gt > 0 (-1 elsewhere)."""
    labels = np.full(gt.shape, -1, np.int8)
    valid = gt > 0
    tolerance = np.maximum(SAME_SURFACE[0] * gt, SAME_SURFACE[1])
    measured = valid & (sparse > 0)
    labels[measured] = REGIONS.index('measured')
    labels[measured & (np.abs(sparse - gt) > tolerance)] = REGIONS.index('measured_wrong_surface')
    holes = valid & (sparse <= 0)
    points, flat = scene.camera.backproject(np.where(holes, gt, 0))
    T_tof_from_cam = np.linalg.inv(scene.T_cam_from_tof)
    in_tof = points.astype(np.float64) @ T_tof_from_cam[:3, :3].T + T_tof_from_cam[:3, 3]
    uv, z = scene.tof_camera.project(in_tof)
    cols, rows = np.round(uv[:, 0]), np.round(uv[:, 1])
    inside = ((cols >= 0) & (cols < scene.tof_camera.width) & (rows >= 0)
              & (rows < scene.tof_camera.height) & (z > 0))
    kind = np.full(flat.size, HOLE_KINDS.index('outside_footprint'))
    tof_depth, dark, edge = scene.tof_view(index)  # noise-free; inf = nothing within range
    r, c = rows[inside].astype(int), cols[inside].astype(int)
    seen = tof_depth[r, c]
    z_in = z[inside]
    occluded = seen < z_in - np.maximum(SAME_SURFACE[0] * z_in, SAME_SURFACE[1])
    inner = np.select(
        [occluded, dark[r, c], edge[r, c], ~np.isfinite(seen)],
        [HOLE_KINDS.index(k) for k in ('occluded_from_tof', 'dark', 'depth_edge',
                                       'beyond_range')],
        HOLE_KINDS.index('registration_gap'))
    kind[inside] = inner
    labels.flat[flat] = np.asarray([REGIONS.index(k) for k in HOLE_KINDS])[kind]
    return labels


class Accumulator:
    """Pooled pixel counts, squared and signed errors per (split, bin) for each method."""

    def __init__(self) -> None:
        self.table: dict[str, dict[str, dict[str, float]]] = {}

    def add(self, split: str, bins: np.ndarray, names: list[str], errors: dict[str, np.ndarray]
            ) -> None:
        for number, name in enumerate(names):
            chosen = bins == number
            if not chosen.any():
                continue
            row = self.table.setdefault(split, {}).setdefault(name, {'pixels': 0})
            row['pixels'] += int(chosen.sum())
            for method, error in errors.items():
                e = error[chosen]
                row[f'{method}_sse'] = row.get(f'{method}_sse', 0.0) + float(np.sum(e * e))
                row[f'{method}_sum'] = row.get(f'{method}_sum', 0.0) + float(np.sum(e))
                row[f'{method}_over_10cm'] = (row.get(f'{method}_over_10cm', 0)
                                              + int(np.sum(np.abs(e) > 0.1)))

    def summary(self) -> dict:
        """Per split and bin: pixel share, each method's RMSE, bias, share of its total squared
        error and count of |error| > 10 cm."""
        result = {}
        for split, rows in self.table.items():
            total_pixels = sum(r['pixels'] for r in rows.values())
            totals = {m: sum(r[f'{m}_sse'] for r in rows.values()) for m in METHODS}
            result[split] = {
                name: {'pixel_share': r['pixels'] / total_pixels, 'pixels': r['pixels'],
                       **{f'{m}_{key}': value for m in METHODS for key, value in (
                           ('rmse', (r[f'{m}_sse'] / r['pixels']) ** 0.5),
                           ('bias', r[f'{m}_sum'] / r['pixels']),
                           ('sse_share', r[f'{m}_sse'] / totals[m]),
                           ('over_10cm', r[f'{m}_over_10cm']))}}
                for name, r in rows.items()}
        return result


def _bin(values: np.ndarray, edges: tuple) -> tuple[np.ndarray, list[str]]:
    names = [f'[{lo:g}, {hi:g})' for lo, hi in zip(edges[:-1], edges[1:])]
    return np.clip(np.digitize(values, edges[1:-1]), 0, len(names) - 1), names


def analyse(heldout: Path, checkpoint: Optional[str], max_frames: int = 0) -> dict:
    completers = {'model': DepthCompleter.from_checkpoint(checkpoint, 'cpu'),
                  'baseline': DepthCompleter.from_config('classical')}
    accumulator = Accumulator()
    per_frame = {m: [] for m in METHODS}
    tail = {m: [] for m in METHODS}
    bags = sorted(p for p in heldout.iterdir() if (m := BAG_NAME.search(p.name))
                  and m.group(1) == 'indoor')
    for bag in bags:
        _, beams, seed = BAG_NAME.search(bag.name).groups()
        frames = BagFrames([bag], BagTopics(ground_truth='/ground_truth/depth'), 'tof')
        T_cam_from_tof = frames.sensor_extrinsic('tof')
        pipelines = {m: CompletionPipeline(c, 'tof', T_cam_from_tof, 0.1, 100.0)
                     for m, c in completers.items()}
        count = len(frames) if max_frames <= 0 else min(max_frames, len(frames))
        scene = None
        for index in range(count):
            messages = frames.read(index)
            inputs = frames.prepare(pipelines['model'], messages)
            gt = frames.ground_truth(messages, inputs.sparse.shape)
            if scene is None:
                height, width = gt.shape
                scene = SyntheticScene(int(seed), width, height, lidar_beams=int(beams),
                                       scene='indoor')
            if not np.array_equal(scene.frame(index).depth, gt):
                raise RuntimeError(f'{bag}: frame {index} does not re-render to the same truth')
            valid = gt > 0
            errors = {}
            predictions = {m: p.complete(inputs).dense_unblanked for m, p in pipelines.items()}
            predictions['model_init'] = completers['model'].complete(inputs.rgb,
                                                                     inputs.sparse).depth_init
            for method, prediction in predictions.items():
                per_frame[method].append(compute_metrics(prediction, gt)['rmse'])
                errors[method] = (prediction.astype(np.float64) - gt)[valid]
                tail[method].append(errors[method])
            labels = label_pixels(scene, index, gt, inputs.sparse)[valid]
            accumulator.add('region', labels, list(REGIONS), errors)
            accumulator.add('hole_or_measured', (labels >= 2).astype(int),
                            ['measured (any)', 'hole (any)'], errors)
            holes = (inputs.sparse <= 0).astype(np.uint8)
            distance = cv2.distanceTransform(holes, cv2.DIST_L2, 5)[valid]
            accumulator.add('distance_to_sample_px', *_bin(distance, DISTANCE_EDGES_PX), errors)
            accumulator.add('true_depth_m', *_bin(gt[valid], DEPTH_EDGES_M), errors)
            rows, cols = np.nonzero(valid)
            border = np.minimum.reduce([rows, cols, gt.shape[0] - 1 - rows,
                                        gt.shape[1] - 1 - cols])
            accumulator.add('border_px', *_bin(border, BORDER_EDGES_PX), errors)
            print(f'{bag.name} frame {index}: RMSE model {per_frame["model"][-1]:.4f} '
                  f'baseline {per_frame["baseline"][-1]:.4f}', flush=True)
        frames.close()
    result = {'frame_mean_rmse': {m: float(np.mean(v)) for m, v in per_frame.items()},
              'frames': len(per_frame['model']), 'splits': accumulator.summary(),
              'largest_errors': {}}
    for method in METHODS:  # how concentrated the squared error is
        squared = np.sort(np.concatenate(tail[method]) ** 2)[::-1]
        total = squared.sum()
        result['largest_errors'][method] = {
            f'top_{share:g}%_pixels_sse_share': float(
                squared[:max(1, int(squared.size * share / 100))].sum() / total)
            for share in (0.1, 1, 5)}
        result['largest_errors'][method]['pooled_rmse'] = float(np.sqrt(total / squared.size))
    return result


def print_tables(result: dict) -> None:
    print('frame-mean RMSE: ' + ', '.join(f'{m} {v:.4f} m' for m, v in
                                          result['frame_mean_rmse'].items())
          + f" over {result['frames']} frames")
    for method, shares in result['largest_errors'].items():
        print(method, ', '.join(f'{k} {v:.3f}' for k, v in shares.items()))
    for split, rows in result['splits'].items():
        print(f'\n{split:24s} {"px %":>6s} {"RMSE mod":>9s} {"RMSE base":>9s} {"RMSE init":>9s} '
              f'{"bias mod":>9s} {"bias base":>9s} {"SSE% mod":>8s} {"SSE% base":>9s}')
        for name, r in rows.items():
            print(f'{name:24s} {100 * r["pixel_share"]:6.2f} {r["model_rmse"]:9.4f} '
                  f'{r["baseline_rmse"]:9.4f} {r["model_init_rmse"]:9.4f} {r["model_bias"]:+9.4f} '
                  f'{r["baseline_bias"]:+9.4f} {100 * r["model_sse_share"]:8.1f} '
                  f'{100 * r["baseline_sse_share"]:9.1f}')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--heldout', type=Path, required=True)
    parser.add_argument('--checkpoint', default=None, help='default: packaged weights')
    parser.add_argument('--max-frames', type=int, default=0, help='per bag; 0 = all')
    parser.add_argument('--out', type=Path, default=None)
    args = parser.parse_args()
    result = analyse(args.heldout, args.checkpoint, args.max_frames)
    print_tables(result)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == '__main__':
    main()
