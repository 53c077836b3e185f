"""Occlusion filter on synthetic rigs: projected-input error against ground truth before/after,
points removed, correct points wrongly removed, and the filter's time.

Every frame of `SyntheticScene` (ground truth in the colour camera) is projected as the node
does (`project_to_sparse_depth`) with the LiDAR mounted at several offsets from the camera, then
filtered (`OcclusionFilter`). Scored on the input's own pixels that have ground truth: RMSE and
MAE (metres, pooled over points), the share of points removed, the share of WRONG points
(|depth - truth| > max(0.1 m, 5% of the truth): see-through background, pixel-quantised edges)
removed, the share of CORRECT points removed, and what decides: the RMSE at every ground-truth
pixel of the classical fill (and with --model of the packaged model, 320x240 frames only) of the
input before / after the filter. Time: median ms per frame, numpy on the CPU and
the torch version on --device (CUDA events there; one thread on the CPU).

    .venv/bin/python bench/bench_occlusion.py [--frames 4] [--device cuda] [--model]
        [--setting 8 0.1 3 --setting 12 0.1 3 ...]   # window, min_gap, min_quadrants

Writes bench/results/occlusion_<device-or-hostname>.json and prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import platform
import socket
from pathlib import Path

import numpy as np
from bench_core import median_ms_cpu, median_ms_cuda

from cspn_ros.core.occlusion import OcclusionFilter
from cspn_ros.core.projection import project_to_sparse_depth
from cspn_ros.data.synthetic import DEFAULT_LIDAR_TRANSLATION, SyntheticScene
from cspn_ros.model.completer import DepthCompleter

#: name -> LiDAR origin [x, y, z] metres in the colour optical frame (x right, y down, z ahead).
RIGS = {'coincident (control)': [0.0, 0.0, 0.0],
        'default: 8 cm up, 5 cm back': DEFAULT_LIDAR_TRANSLATION,
        'roof: 30 cm up, 30 cm back': [0.0, -0.3, -0.3],
        'side: 30 cm right': [0.3, 0.0, 0.0],
        'mast: 60 cm up': [0.0, -0.6, 0.0]}
SIZES = ((320, 240), (640, 480))
BEAMS = (16, 32, 64)
SCENES = ('outdoor', 'indoor')
#: The packaged model (--model) is scored at this size only (a CPU run stays in minutes).
MODEL_SIZE = (320, 240)


def wrong_points(depth: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Points whose depth misses the truth by more than max(0.1 m, 5%)."""
    return np.abs(depth - truth) > np.maximum(0.1, 0.05 * truth)


class Tally:
    """Pooled squared / absolute errors and counts of one rig and filter setting."""

    def __init__(self) -> None:
        self.sums = dict.fromkeys(('points', 'kept', 'wrong', 'wrong_removed',
                                   'correct_removed', 'se_before', 'ae_before', 'se_after',
                                   'ae_after'), 0.0)
        self.dense: dict[str, list[float]] = {}  # method -> [pixels, se before, se after]

    def add_dense(self, method: str, before: np.ndarray, after: np.ndarray,
                  truth: np.ndarray) -> None:
        """Dense depth completed by `method` from the input before / after the filter, scored
        at every ground-truth pixel."""
        scored = truth > 0
        sums = self.dense.setdefault(method, [0.0, 0.0, 0.0])
        sums[0] += float(scored.sum())
        for index, dense in ((1, before), (2, after)):
            sums[index] += float(((dense[scored] - truth[scored]).astype(np.float64) ** 2).sum())

    def add(self, sparse: np.ndarray, occluded: np.ndarray, truth: np.ndarray) -> None:
        scored = (sparse > 0) & (truth > 0)
        error = (sparse[scored] - truth[scored]).astype(np.float64)
        removed, wrong = occluded[scored], wrong_points(sparse[scored], truth[scored])
        kept = error[~removed]
        for key, value in (('points', error.size), ('kept', kept.size), ('wrong', wrong.sum()),
                           ('wrong_removed', (removed & wrong).sum()),
                           ('correct_removed', (removed & ~wrong).sum()),
                           ('se_before', (error ** 2).sum()), ('ae_before', np.abs(error).sum()),
                           ('se_after', (kept ** 2).sum()), ('ae_after', np.abs(kept).sum())):
            self.sums[key] += float(value)

    def row(self) -> dict:
        s = self.sums
        return {'points': int(s['points']),
                'rmse_before': (s['se_before'] / s['points']) ** 0.5,
                'rmse_after': (s['se_after'] / s['kept']) ** 0.5,
                'mae_before': s['ae_before'] / s['points'], 'mae_after': s['ae_after'] / s['kept'],
                'wrong_share': s['wrong'] / s['points'],
                'removed_share': (s['points'] - s['kept']) / s['points'],
                'wrong_removed_share': s['wrong_removed'] / max(s['wrong'], 1),
                'correct_removed_share': s['correct_removed'] / (s['points'] - s['wrong']),
                **{f'{method}_rmse_{when}': (sums[index] / sums[0]) ** 0.5
                   for method, sums in self.dense.items()
                   for index, when in ((1, 'before'), (2, 'after'))}}


def run(args: argparse.Namespace) -> dict:
    filters = [OcclusionFilter(int(w), float(g), int(q)) for w, g, q in args.setting] or [
        OcclusionFilter()]
    tallies = {(rig, f): Tally() for rig in RIGS for f in filters}
    completers = {'classical': DepthCompleter.from_config('classical')}
    if args.model:
        completers['model'] = DepthCompleter.from_checkpoint(None, args.device)
    timings = {}
    for rig, translation in RIGS.items():
        for width, height in SIZES:
            for beams in BEAMS:
                for scene_kind in SCENES:
                    for seed in range(args.frames):
                        scene = SyntheticScene(seed=100 + seed, width=width, height=height,
                                               lidar_beams=beams, scene=scene_kind,
                                               lidar_translation=translation)
                        frame = scene.frame(3 * seed)
                        sparse = project_to_sparse_depth(frame.lidar_points,
                                                         frame.T_cam_from_lidar, frame.camera)
                        methods = {name: completer for name, completer in completers.items()
                                   if name == 'classical' or width == MODEL_SIZE[0]}
                        before = {name: completer(frame.rgb, sparse)
                                  for name, completer in methods.items()}
                        for occlusion in filters:
                            occluded = occlusion.occluded(sparse)
                            tally = tallies[rig, occlusion]
                            tally.add(sparse, occluded, frame.depth)
                            for name, completer in methods.items():
                                tally.add_dense(name, before[name], completer(
                                    frame.rgb, np.where(occluded, 0, sparse)), frame.depth)
                        if rig == next(iter(RIGS)) and seed == 0 and scene_kind == 'outdoor':
                            timings[f'{width}x{height} {beams} beams'] = time_filter(
                                filters[0], sparse, args.device)
    return {'machine': machine(args.device), 'frames_per_case': args.frames,
            'cases': {'sizes': SIZES, 'beams': BEAMS, 'scenes': SCENES},
            'results': [{'rig': rig, 'translation': RIGS[rig], **dataclass_dict(f),
                         **tallies[rig, f].row()} for rig in RIGS for f in filters],
            'timing_ms': timings}


def time_filter(occlusion: OcclusionFilter, sparse: np.ndarray, device: str) -> dict:
    """Median ms of the numpy filter and of the torch filter on `device`."""
    import torch
    tensor = torch.from_numpy(sparse).to(device)
    torch_ms = median_ms_cuda if device == 'cuda' else median_ms_cpu
    times = {'numpy_cpu': median_ms_cpu(lambda: occlusion(sparse), 10),
             f'torch_{device}': torch_ms(lambda: occlusion(tensor), 10)}
    if not torch.equal(occlusion.occluded(tensor).cpu(), torch.from_numpy(
            occlusion.occluded(sparse))):
        raise RuntimeError(f'torch on {device} and numpy masks differ')
    return times


def dataclass_dict(occlusion: OcclusionFilter) -> dict:
    return {'window': occlusion.window, 'min_gap': occlusion.min_gap,
            'min_quadrants': occlusion.min_quadrants}


def machine(device: str) -> str:
    if device == 'cuda':
        import torch
        return torch.cuda.get_device_name()
    return f'{socket.gethostname()} {platform.processor() or platform.machine()} CPU'


def table(summary: dict) -> str:
    lines = ['| rig | window, gap, quadrants | points | RMSE before -> after (m) | MAE before -> '
             'after (m) | removed | wrong points | wrong removed | correct removed | classical '
             'fill RMSE before -> after (m) | model RMSE before -> after (m, 320x240) |',
             '|---|---|---|---|---|---|---|---|---|---|---|']
    for r in summary['results']:
        lines.append(f'| {r["rig"]} | {r["window"]}, {r["min_gap"]:g}, {r["min_quadrants"]} | '
                     f'{r["points"]} | {r["rmse_before"]:.3f} -> {r["rmse_after"]:.3f} | '
                     f'{r["mae_before"]:.4f} -> {r["mae_after"]:.4f} | '
                     f'{r["removed_share"]:.2%} | {r["wrong_share"]:.2%} | '
                     f'{r["wrong_removed_share"]:.1%} | {r["correct_removed_share"]:.2%} | '
                     f'{r["classical_rmse_before"]:.3f} -> {r["classical_rmse_after"]:.3f} | '
                     + (f'{r["model_rmse_before"]:.3f} -> {r["model_rmse_after"]:.3f} |'
                        if 'model_rmse_before' in r else '- |'))
    lines.append('')
    lines.append('| frame | ' + ' | '.join(next(iter(summary['timing_ms'].values()))) + ' |')
    lines.append('|---|---|---|')
    for case, times in summary['timing_ms'].items():
        lines.append(f'| {case} | ' + ' | '.join(f'{ms:.2f} ms' for ms in times.values()) + ' |')
    return '\n'.join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--frames', type=int, default=4, help='frames per (rig, size, beams, '
                        'scene) case')
    parser.add_argument('--device', default='cpu', help='torch device of the timed torch filter')
    parser.add_argument('--setting', nargs=3, action='append', default=[],
                        metavar=('WINDOW', 'MIN_GAP', 'MIN_QUADRANTS'),
                        help='a filter setting (repeatable); default: OcclusionFilter()')
    parser.add_argument('--model', action='store_true', help='also complete with the packaged '
                        'model (at 320x240) before / after the filter')
    parser.add_argument('--out', default=None, help='JSON path (default bench/results/'
                        'occlusion_<device-or-hostname>.json)')
    args = parser.parse_args()
    if args.device == 'cpu':
        import torch
        torch.set_num_threads(1)  # as numpy: one core (intra-op threads thrash a shared CPU)
    summary = run(args)
    name = ('nvidia_' + summary['machine'].split()[-1].lower() if args.device == 'cuda'
            else socket.gethostname().split('.')[0])
    out = Path(args.out or Path(__file__).parent / 'results' / f'occlusion_{name}.json')
    out.write_text(json.dumps(summary, indent=2))
    print(table(summary))
    print(f'\n{summary["machine"]}; written to {out}')


if __name__ == '__main__':
    main()
