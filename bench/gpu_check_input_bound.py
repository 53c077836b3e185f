"""Check the input bound on a CUDA GPU against the CPU path, and time it with the model.

The CPU path (OpenCV filters and exact distance transform) is the reference the tests check
against a per-pixel loop; here the CUDA path (max pooling, cummax, the Triton distance kernel)
must give the same depths on random inputs of several patterns and sizes, one frame and a
batch. Then the model's latency at 1216x352 in the node's default modes (median of CUDA-event
timings after warm-up, `bench_core.median_ms_cuda`; the bound inside the CUDA graph), with and
without the bound, and the bound alone on 1 and 6 frames, eager and in a CUDA graph.

    python3 bench/gpu_check_input_bound.py [--checkpoint P] [--json OUT.json]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_core import median_ms_cuda  # noqa: E402

from cspn_ros.model.completer import DepthCompleter  # noqa: E402
from cspn_ros.model.inference import capture_cuda_graph  # noqa: E402
from cspn_ros.model.input_bound import bound_by_inputs, nearest_input_distance  # noqa: E402

SIZES = [(352, 1216), (480, 640), (37, 91)]
PATTERNS = ('lidar64', 'random500', 'rows32', 'holes')
#: Timed calls per latency figure (median, CUDA events, after bench_core's warm-up).
REPEATS = 200


def pattern(rng: np.random.Generator, name: str, height: int, width: int) -> np.ndarray:
    """(H,W) float32 sparse depth (metres, 0 = none) of a named input pattern."""
    depth = rng.uniform(0.5, 80.0, (height, width)).astype(np.float32)
    if name == 'lidar64':  # 64 wavy scan lines, points every 1-2 pixels
        keep = np.zeros((height, width), bool)
        columns = np.arange(0, width, 2)
        for ring in range(64):
            rows = (ring * height / 64 + 2 * np.sin(columns / 50 + ring)).astype(int)
            inside = (rows >= 0) & (rows < height)
            keep[rows[inside], columns[inside]] = True
    elif name == 'random500':
        keep = np.zeros(height * width, bool)
        keep[rng.choice(height * width, min(500, height * width // 4), replace=False)] = True
        keep = keep.reshape(height, width)
    elif name == 'rows32':
        keep = np.zeros((height, width), bool)
        keep[::max(1, height // 32)] = True
    else:
        keep = rng.random((height, width)) < 0.95
        keep[height // 4:height // 2, width // 3:width // 2] = False
    return np.where(keep, depth, 0.0).astype(np.float32)


def check(rng: np.random.Generator) -> list[dict]:
    """Per size and pattern: largest |CUDA - CPU| of the distance and of the bounded depth."""
    rows = []
    for height, width in SIZES:
        for name in PATTERNS:
            sparse = torch.from_numpy(pattern(rng, name, height, width))[None, None]
            depth = torch.from_numpy(rng.uniform(0.1, 90.0, (1, 1, height, width))
                                     .astype(np.float32))
            cpu = bound_by_inputs(depth, sparse, 0.5)
            gpu = bound_by_inputs(depth.cuda(), sparse.cuda(), 0.5).cpu()
            distance = (nearest_input_distance(sparse.cuda()).cpu()
                        - nearest_input_distance(sparse)).abs().max().item()
            rows.append(dict(size=f'{width}x{height}', pattern=name,
                             distance_max_error_px=distance,
                             depth_max_error_m=(gpu - cpu).abs().max().item(),
                             changed_pixels=int((cpu != depth).sum())))
            print(rows[-1], flush=True)
    # a batch: the device path bounds all frames at once, the CPU path one by one
    frames = [torch.from_numpy(pattern(rng, name, 480, 640))[None, None] for name in PATTERNS]
    sparse = torch.cat(frames + [torch.zeros_like(frames[0])])
    depth = torch.from_numpy(rng.uniform(0.1, 90.0, tuple(sparse.shape)).astype(np.float32))
    error = (bound_by_inputs(depth.cuda(), sparse.cuda(), 0.5).cpu()
             - bound_by_inputs(depth, sparse, 0.5)).abs().max().item()
    rows.append(dict(size='640x480', pattern='batch of ' + '+'.join(PATTERNS) + '+empty',
                     distance_max_error_px=0.0, depth_max_error_m=error,
                     changed_pixels=-1))
    print(rows[-1], flush=True)
    return rows


def latency(checkpoint: str | None, rng: np.random.Generator) -> dict:
    """Model latency at 1216x352 (64-line pattern) in the default modes, bound on and off."""
    height, width = 352, 1216
    sparse = torch.from_numpy(pattern(rng, 'lidar64', height, width)).cuda()
    rgb = torch.from_numpy(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).cuda()
    out = {}
    completer = DepthCompleter.from_checkpoint(checkpoint, device='cuda')
    bound = completer.config.input_bound
    completer.warmup(height, width)
    out['modes'] = dict(precision=str(completer.precision), cuda_graphs=completer.cuda_graphs,
                        input_bound=bound)
    out['model_with_bound_ms'] = median_ms_cuda(lambda: completer.complete_tensor(rgb, sparse),
                                                REPEATS)
    completer.config = dataclasses.replace(completer.config, input_bound=0.0)
    completer.release_graphs()  # captured with the bound
    out['model_without_bound_ms'] = median_ms_cuda(
        lambda: completer.complete_tensor(rgb, sparse), REPEATS)
    spacings = bound or 0.5
    for frames in (1, 6):
        depth = torch.rand(frames, 1, height, width, device='cuda') * 80
        inputs = sparse[None, None].expand(frames, 1, height, width).contiguous()
        out[f'bound_alone_{frames}_eager_ms'] = median_ms_cuda(
            lambda: bound_by_inputs(depth, inputs, spacings), REPEATS)
        captured = capture_cuda_graph(
            lambda d, s: {'depth': bound_by_inputs(d, s, spacings)}, (depth, inputs))
        out[f'bound_alone_{frames}_graph_ms'] = median_ms_cuda(captured.replay, REPEATS)
    print(out, flush=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--checkpoint', default=None)
    parser.add_argument('--json', default=None)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows = check(rng)
    result = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, checks=rows,
                  latency=latency(args.checkpoint, rng))
    failed = [r for r in rows if r['distance_max_error_px'] > 1e-3 or r['depth_max_error_m'] > 0]
    result['passed'] = not failed
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    print('PASSED' if not failed else f'FAILED: {failed}')
    return 0 if not failed else 1


if __name__ == '__main__':
    sys.exit(main())
