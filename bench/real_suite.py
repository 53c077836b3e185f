#!/usr/bin/env python3
"""Real-data validation suite: fills and models side by side on every real set in
../shared/data/real (the tracks are described in bench/real_tracks.py).

    python3 bench/real_suite.py [--checkpoint P ...] [--device cpu|cuda] [--quick]
                                [--out JSON] [--tracks NAME ...] [--backend B] [--steps N ...]
                                [--precision fp16 bf16 ...]

Methods: 'nearest' (every pixel takes its nearest input, cv2 distance transform), 'classical'
(cspn_ros.model.fill.classical_fill), 'ipbasic' (IP-Basic "fast", bilateral, no extrapolation:
bench/ip_basic.py) and one model per --checkpoint (default: the packaged weights). Metrics
(cspn_ros.train.metrics) are per sample, averaged per track. Prints a markdown table (with
the model's RMSE change against the best fill of each track) and writes a JSON to
bench/results/. The model runs in plain fp32 (eager, no CUDA graphs); --precision P also scores
it as the node runs by default on the device (inference.choose_modes: on CUDA channels_last,
compile, CUDA graphs) in precision P, and --steps N at N propagation steps: for those, the
largest per-track RMSE and MAE change against the fp32 model is printed and stored
('variants'). A benchmark, not a test: without ../shared/data/real it says so and exits 0.

Python API (bench/ is not a package: sys.path.insert(0, 'bench')):
    load_tracks(root=None, quick=False) -> list[Track]; baseline_fills() -> {name: fill};
    score_methods(tracks, methods) -> results; format_table(results) -> str; main(argv).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ip_basic import fill_fast  # noqa: E402
from real_tracks import (DEFAULT_ROOT, ROOT, Sample, Track, load_tracks,  # noqa: E402
                         track_names)

from cspn_ros.model.completer import DEFAULT_CHECKPOINT, DepthCompleter  # noqa: E402
from cspn_ros.model.fill import _nearest_fill, classical_fill  # noqa: E402
from cspn_ros.train.metrics import compute_metrics, mean_metrics  # noqa: E402

Method = Callable[[np.ndarray, np.ndarray], np.ndarray]
#: IP-Basic inverts about 100 m; the suite widens that to the frame's farthest input.
IPBASIC_MAX_DEPTH = 100.0


def nearest_fill(rgb: np.ndarray, sparse: np.ndarray) -> np.ndarray:
    """Every pixel takes the depth of its nearest (L2) input pixel; (H,W) float32 metres."""
    valid = sparse > 0
    if not valid.any():
        return np.zeros(sparse.shape, np.float32)
    return _nearest_fill(sparse.astype(np.float32), ~valid)


def ipbasic_fill(rgb: np.ndarray, sparse: np.ndarray) -> np.ndarray:
    """IP-Basic "fast" with the reference code's recommended setting (bilateral blur, no
    extrapolation); pixels it leaves empty take their nearest filled value so that every scored
    pixel has a depth. max_depth: 100 m, or just beyond the farthest input when that is farther
    (inputs beyond max_depth would be lost).

    Not the paper's KITTI setting (extrapolate, Gaussian): its blur averages empty pixels into
    the borders of holes the dilations cannot close, which costs metres on sparse or holed input
    (suite: Redwood 500 points 6.5 m RMSE instead of 0.21 m)."""
    max_depth = max(IPBASIC_MAX_DEPTH, float(sparse.max()) + 1.0)
    dense = fill_fast(sparse, max_depth, extrapolate=False, blur='bilateral')
    return nearest_fill(rgb, dense)


def project_classical_fill(rgb: np.ndarray, sparse: np.ndarray) -> np.ndarray:
    """The project's classical fill (cspn_ros.model.fill), rgb unused."""
    return classical_fill(sparse)


BASELINE_FILLS: dict[str, Method] = {'nearest': nearest_fill,
                                     'classical': project_classical_fill,
                                     'ipbasic': ipbasic_fill}
#: (fill, sample name, input shape and sums) -> (metrics, seconds): the fills are deterministic
#: and the tracks cached, so repeated score_methods calls (one per model decision) score each
#: fill once.
_FILL_SCORES: dict[tuple, tuple[dict, float]] = {}


def baseline_fills() -> dict[str, Method]:
    """Weight-free fills by name: (rgb (H,W,3) uint8, sparse (H,W) float32 m) -> (H,W) m."""
    return dict(BASELINE_FILLS)


def _score(method: Method, sample: Sample) -> tuple[dict, float]:
    """(compute_metrics of method on sample, seconds the method took); baseline fills' scores
    are remembered in memory."""
    key = None
    if any(method is fill for fill in BASELINE_FILLS.values()):
        key = (method, sample.name, sample.sparse.shape, float(sample.sparse.sum()),
               float(sample.target.sum()))
        if key in _FILL_SCORES:
            return _FILL_SCORES[key]
    start = time.perf_counter()
    prediction = method(sample.rgb, sample.sparse.copy())
    scored = compute_metrics(prediction, sample.target), time.perf_counter() - start
    if key is not None:
        _FILL_SCORES[key] = scored
    return scored


#: The reference modes of the suite's model: fp32, eager.
PLAIN = dict(precision='fp32', channels_last=False, compile=False, cuda_graphs=False)


def model_methods(checkpoints: Sequence[Optional[str]], device: str,
                  backend: str = 'auto', steps: Sequence[int] = (),
                  precisions: Sequence[str] = ()) -> dict[str, Method]:
    """{name: DepthCompleter} per checkpoint (None = the packaged weights, named 'model');
    others are named 'model:<file stem>'; each in fp32 eager (PLAIN), and also at every
    propagation step count in `steps` (named '<name>@<steps>') and in every precision of
    `precisions` with the device's default modes (named '<name>/<precision>')."""
    methods = {}
    for checkpoint in checkpoints:
        name = 'model' if checkpoint is None else f'model:{Path(checkpoint).stem}'
        methods[name] = DepthCompleter.from_checkpoint(checkpoint, device, backend=backend,
                                                       **PLAIN)
        for count in steps:
            methods[f'{name}@{count}'] = DepthCompleter.from_checkpoint(
                checkpoint, device, backend=backend, **PLAIN)
            methods[f'{name}@{count}'].steps = count
        for precision in precisions:
            methods[f'{name}/{precision}'] = DepthCompleter.from_checkpoint(
                checkpoint, device, precision, backend=backend)
    return methods


def variant_changes(results: dict) -> dict:
    """{variant ('<model>@<steps>' or '<model>/<precision>'): {'tracks': {track: {'rmse',
    'mae'}}, 'max_rmse', 'max_mae'}}: relative change of the variant's mean RMSE and MAE
    against its fp32 model on each track (0.01 = 1 % worse, negative = better), and the largest
    absolute change over the tracks."""
    changes = {}
    for track_name, track in results.items():
        for method, metrics in track['methods'].items():
            base = method.split('@')[0].split('/')[0]
            if base == method or base not in track['methods']:
                continue
            reference = track['methods'][base]
            entry = changes.setdefault(method, {'tracks': {}})
            entry['tracks'][track_name] = {key: metrics[key] / reference[key] - 1
                                           for key in ('rmse', 'mae')}
    for entry in changes.values():
        for key in ('rmse', 'mae'):
            entry[f'max_{key}'] = max(abs(track[key]) for track in entry['tracks'].values())
    return changes


def score_methods(tracks: Sequence[Track], methods: dict[str, Method]) -> dict:
    """{track: {'kind', 'frames', 'methods': {method: mean metrics (compute_metrics keys
    averaged over samples), 'scored_pixels' and 'seconds' per sample, 'samples': {sample name:
    {'rmse', 'mae'}}}}}.

    Every method sees the same input (a copy) and is scored on the sample's target only.
    Baseline fills' scores are remembered (seconds then is the first run's)."""
    results = {}
    for track in tracks:
        per_method = {}
        for method_name, method in methods.items():
            scored = [_score(method, sample) for sample in track.frames]
            summary = mean_metrics([metrics for metrics, _ in scored])
            summary.pop('frames')
            summary['scored_pixels'] = float(np.mean([m['count'] for m, _ in scored]))
            summary['seconds'] = sum(seconds for _, seconds in scored) / max(1, len(scored))
            summary['samples'] = {sample.name: {'rmse': metrics['rmse'], 'mae': metrics['mae']}
                                  for sample, (metrics, _) in zip(track.frames, scored)}
            per_method[method_name] = summary
        results[track.name] = {'kind': track.kind, 'frames': len(track.frames),
                               'methods': per_method}
    return results


def best_fill_rmse(track_result: dict) -> float:
    """Lowest RMSE among the baseline fills scored on a track (NaN when none)."""
    rmses = [m['rmse'] for name, m in track_result['methods'].items() if name in BASELINE_FILLS]
    return min(rmses) if rmses else float('nan')


def format_table(results: dict) -> str:
    """Markdown table track x method: RMSE, MAE (m), REL, d<1.25, and for methods that are not
    baseline fills the RMSE change against the track's best fill (negative = better)."""
    results = results.get('tracks', results)
    lines = ['| track (samples) | method | RMSE m | MAE m | REL | d<1.25 | model vs best fill |',
             '|---|---|---|---|---|---|---|']
    for track_name, track in results.items():
        best = best_fill_rmse(track)
        for method_name, metrics in track['methods'].items():
            change = ('' if method_name in BASELINE_FILLS
                      else f'{100 * (metrics["rmse"] / best - 1):+.1f}%')
            lines.append(f'| {track_name} ({track["frames"]}) | {method_name} | '
                         f'{metrics["rmse"]:.3f} | {metrics["mae"]:.3f} | {metrics["rel"]:.3f} | '
                         f'{metrics["d125"]:.3f} | {change} |')
    return '\n'.join(lines)


def file_sha256(path: str | Path) -> str:
    """First 12 hex digits of the file's SHA-256 (which weights a result came from)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]


def machine(device: str) -> dict:
    """Where the suite ran: host, CPU, cores, torch device name."""
    import torch
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path('/proc/cpuinfo')
    if cpuinfo.is_file():
        cpu = next((line.split(':', 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                    if line.startswith('model name')), cpu)
    info = {'host': platform.node(), 'platform': platform.platform(), 'cpu': cpu,
            'cpu_count': os.cpu_count(),
            'torch': torch.__version__, 'device': device}
    if device.startswith('cuda') and torch.cuda.is_available():
        info['gpu'] = torch.cuda.get_device_name(torch.device(device))
    return info


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--checkpoint', action='append', default=None,
                        help='model weights to score (repeatable; default: the packaged ones)')
    parser.add_argument('--device', default='cpu', help='cpu or cuda[:N]')
    parser.add_argument('--quick', action='store_true',
                        help='a few samples per track, large images halved')
    parser.add_argument('--data', type=Path, default=DEFAULT_ROOT, help='the real data folder')
    parser.add_argument('--tracks', nargs='+', default=None, choices=track_names(),
                        metavar='NAME', help=f'tracks to run (default all): {track_names()}')
    parser.add_argument('--no-model', action='store_true', help='score the fills only')
    parser.add_argument('--backend', default='auto', help='torch, onnxruntime or auto')
    parser.add_argument('--steps', type=int, nargs='*', default=(),
                        help='also score the model at these propagation step counts')
    parser.add_argument('--precision', nargs='*', default=(), choices=('fp16', 'bf16', 'fp32'),
                        help="also score the model in these precisions, in the device's default "
                             'modes (CUDA: channels_last, compile, CUDA graphs)')
    parser.add_argument('--out', type=Path, default=None,
                        help='JSON path (default bench/results/real_suite[_quick].json)')
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f'real_suite: no real data at {args.data} (../shared is absent); skipped')
        return 0
    start = time.perf_counter()
    tracks = load_tracks(args.data, args.quick, args.tracks)
    load_seconds = time.perf_counter() - start
    methods = dict(baseline_fills())
    checkpoints = args.checkpoint or [None]
    if not args.no_model:
        methods.update(model_methods(checkpoints, args.device, args.backend, args.steps,
                                     args.precision))
    scores = score_methods(tracks, methods)
    table = format_table(scores)
    print(table)
    variants = variant_changes(scores)
    for variant, change in variants.items():
        print(f"{variant} vs fp32: largest per-track change RMSE {100 * change['max_rmse']:.3f} "
              f"%, MAE {100 * change['max_mae']:.3f} % ({len(change['tracks'])} tracks)")
    result = {'settings': {'data': str(args.data), 'quick': args.quick,
                           'checkpoints': {} if args.no_model else
                           {c or 'packaged default': file_sha256(c or DEFAULT_CHECKPOINT)
                            for c in checkpoints},
                           'device': args.device, 'backend': args.backend,
                           'methods': list(methods),
                           'load_seconds': load_seconds,
                           'total_seconds': time.perf_counter() - start},
              'machine': machine(args.device), 'tracks': scores, 'variants': variants}
    out = args.out or ROOT / 'bench' / 'results' / (
        'real_suite_quick.json' if args.quick else 'real_suite.json')
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + '\n')
    print('wrote', out)
    return 0


if __name__ == '__main__':
    sys.exit(main())
