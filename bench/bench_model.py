"""Forward latency of the completion models in each inference mode, batch 1.

On CUDA, per model (cspn, cspn + kernel_regression fill, cspnpp, nlspn; untrained weights of the
shipped size, ModelConfig defaults) at 1216x352 and 640x480: median latency of
`DepthCompleter.complete_tensor` (device tensors in, depth + confidence out; CUDA events after
`warmup`, inputs rotated over several random frames) in the modes fp32, fp16 (autocast),
fp16+channels_last, fp16+cuda_graphs, fp16+channels_last+cuda_graphs, and with torch.compile
(fp16+compile, fp16+channels_last+compile+cuda_graphs: cspn only unless --compile-all, each
compile takes tens of seconds); steady-state peak GPU memory of each (max_memory_allocated after
warm-up: weights and activations, not cuDNN's autotuning workspaces; with CUDA graphs the graph's
private pool, reserved at capture, is not counted: about the eager row's figure);
and the propagation module alone, the torch reference against the fused kernels when
`fused.available()`. cuDNN autotuning (torch.backends.cudnn.benchmark) is on, as it should be
for a camera of fixed size. On the CPU: cspn fp32 and the classical baseline at the two sizes.

Writes <out-dir>/model_<device>.json after every row (a run cut short keeps what it measured)
and prints a markdown table last.

    source bench/gpu_env.sh; python3 bench/bench_model.py [--out-dir bench/results]
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cspn_ros.config import ModelConfig  # noqa: E402
from cspn_ros.model.checkpoint import load_checkpoint  # noqa: E402
from cspn_ros.model.completer import DEFAULT_CHECKPOINT, DepthCompleter  # noqa: E402
from cspn_ros.model.network import CompletionNet  # noqa: E402
from cspn_ros.model.propagation import fused  # noqa: E402

SIZES = ((352, 1216), (480, 640))  # (height, width)
MODELS = {
    'cspn': ModelConfig(propagation='cspn'),
    'cspn+kr': ModelConfig(propagation='cspn', initial_fill='kernel_regression'),
    'cspnpp': ModelConfig(propagation='cspnpp'),
    'nlspn': ModelConfig(propagation='nlspn'),
    # the packaged checkpoint's architecture (untrained weights like the others)
    'shipped': load_checkpoint(DEFAULT_CHECKPOINT)[1],
}
#: Mode name -> DepthCompleter keyword arguments.
MODES = {
    'fp32': dict(precision='fp32'),
    'fp16': dict(precision='fp16'),
    'fp16+cl': dict(precision='fp16', channels_last=True),
    'fp16+graphs': dict(precision='fp16', cuda_graphs=True),
    'fp16+cl+graphs': dict(precision='fp16', channels_last=True, cuda_graphs=True),
}
COMPILE_MODES = {
    'fp16+compile': dict(precision='fp16', compile=True),
    'fp16+cl+compile+graphs': dict(precision='fp16', channels_last=True, compile=True,
                                   cuda_graphs=True),
}
INPUT_SETS = 4
GOAL_MS = 2.0  # issue #3: cspn at 1216x352, fp16, on an H100/H200


def random_frames(height, width, device, generator):
    """INPUT_SETS (rgb (H,W,3) uint8, sparse (H,W) metres with ~5% valid) on device."""
    frames = []
    for _ in range(INPUT_SETS):
        rgb = torch.randint(0, 256, (height, width, 3), dtype=torch.uint8, device=device,
                            generator=generator)
        hits = torch.rand(height, width, device=device, generator=generator) < 0.05
        depth = 1 + 60 * torch.rand(height, width, device=device, generator=generator)
        frames.append((rgb, torch.where(hits, depth, 0.0)))
    return frames


def median_ms(run, inputs, repeats) -> float:
    """Median milliseconds of run(*inputs[i]) over rotating inputs: CUDA events on a GPU,
    the host clock on the CPU. Warm-up is the caller's."""
    times = []
    for i in range(repeats):
        args = inputs[i % len(inputs)]
        if args[0].is_cuda:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            run(*args)
            end.record()
            end.synchronize()
            times.append(begin.elapsed_time(end))
        else:
            start = time.perf_counter()
            run(*args)
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else the architecture."""
    cpuinfo = Path('/proc/cpuinfo')
    if cpuinfo.is_file():
        found = re.search(r'^model name\s*:\s*(.+)$', cpuinfo.read_text(), re.MULTILINE)
        if found:
            return found.group(1).strip()
    return platform.machine()


class Recorder:
    """Collects rows and rewrites the JSON after each one."""

    def __init__(self, path: Path, device: torch.device) -> None:
        self.path = path
        self.result = {
            'device': torch.cuda.get_device_name(device) if device.type == 'cuda'
            else f'{cpu_name()}, {os.cpu_count()} cores',
            'torch': torch.__version__, 'fused_available': fused.available(),
            'cudnn_benchmark': torch.backends.cudnn.benchmark,
            'date': time.strftime('%Y-%m-%d %H:%M:%S'), 'goal_ms': GOAL_MS,
            'forward': [], 'propagation': []}

    def add(self, table: str, row: dict) -> None:
        self.result[table].append(row)
        print(json.dumps(row), flush=True)
        self.path.write_text(json.dumps(self.result, indent=1))


def bench_forward(name, config, model, mode, modes, size, frames, repeats, recorder) -> None:
    """One model (a copy of `model`, None for 'classical') in one mode at one size: latency
    and peak memory."""
    height, width = size
    device = frames[0][0].device
    row = dict(model=name, size=f'{width}x{height}', mode=mode)
    try:
        completer = DepthCompleter(config, copy.deepcopy(model) if model is not None else None,
                                   device, **modes)
        start = time.perf_counter()
        completer.warmup(height, width, iterations=3 if device.type == 'cuda' else 1)
        row['warmup_s'] = round(time.perf_counter() - start, 2)
        if device.type == 'cuda':  # steady state: cuDNN autotuning workspaces left out
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        row['ms'] = median_ms(completer.complete_tensor, frames, repeats)
        if device.type == 'cuda':
            row['peak_mib'] = round(torch.cuda.max_memory_allocated(device) / 2 ** 20, 1)
    except Exception as error:  # a mode that fails is reported, the others still run
        row['error'] = f'{type(error).__name__}: {error}'[:300]
    recorder.add('forward', row)


def bench_propagation(name, model, size, frames, repeats, recorder) -> None:
    """The propagation module alone on the network's own init/guidance/confidence, fp32:
    the torch reference against the fused kernels."""
    model = model.to(frames[0][0].device).eval()
    rgb, sparse = frames[0]
    with torch.inference_mode():
        with mock.patch.object(fused, 'can_fuse', return_value=False):
            outputs = model(rgb.permute(2, 0, 1).unsqueeze(0).float() / 255, sparse[None, None])
        inputs = [(outputs['depth_init'], outputs['guidance'], sparse[None, None],
                   outputs['confidence'])]
        implementations = ['reference'] + (['fused'] if fused.available() else [])
        for implementation in implementations:
            row = dict(model=name, size=f'{size[1]}x{size[0]}', implementation=implementation)
            reference_only = mock.patch.object(fused, 'can_fuse', return_value=False)
            try:
                with reference_only if implementation == 'reference' else contextlib.nullcontext():
                    for _ in range(3):
                        model.propagation(*inputs[0])
                    row['ms'] = median_ms(model.propagation, inputs, repeats)
            except Exception as error:  # e.g. a fused kernel that does not compile
                row['error'] = f'{type(error).__name__}: {error}'[:300]
            recorder.add('propagation', row)


def markdown(result) -> str:
    """Forward ms per model x size (columns: modes), then the propagation rows."""
    modes = list(dict.fromkeys(row['mode'] for row in result['forward']))
    lines = [f"Device: {result['device']}, torch {result['torch']}, fused kernels: "
             f"{result['fused_available']}", '',
             '| model | size | ' + ' | '.join(modes) + ' | best | peak MiB (best) |',
             '|' + ' --- |' * (len(modes) + 4)]
    groups = {}
    for row in result['forward']:
        groups.setdefault((row['model'], row['size']), {})[row['mode']] = row
    for (model, size), rows in groups.items():
        cells = [f"{rows[m]['ms']:.2f}" if 'ms' in rows.get(m, {}) else
                 ('error' if m in rows else '') for m in modes]
        timed = [r for r in rows.values() if 'ms' in r]
        best = min(timed, key=lambda r: r['ms']) if timed else None
        best_cell = f"{best['ms']:.2f} ({best['mode']})" if best else ''
        peak = best.get('peak_mib', '') if best else ''
        lines.append(f'| {model} | {size} | ' + ' | '.join(cells) + f' | {best_cell} | {peak} |')
    if result['propagation']:
        lines += ['', '| propagation alone (fp32) | size | implementation | ms |',
                  '| --- | --- | --- | --- |']
        lines += [f"| {r['model']} | {r['size']} | {r['implementation']} | "
                  + (f"{r['ms']:.3f} |" if 'ms' in r else 'error |')
                  for r in result['propagation']]
    return '\n'.join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out-dir', type=Path, default=Path(__file__).parent / 'results')
    parser.add_argument('--repeats', type=int, default=None,
                        help='timed runs per row (default 30 on CUDA, 3 on the CPU)')
    parser.add_argument('--compile-all', action='store_true',
                        help='torch.compile rows for every model, not only cspn')
    parser.add_argument('--models', nargs='+', choices=tuple(MODELS), default=list(MODELS),
                        help='models to time on CUDA (default: all)')
    parser.add_argument('--sizes', nargs='+', default=[f'{w}x{h}' for h, w in SIZES],
                        help="image sizes 'WxH' to time on CUDA (default: 1216x352 640x480)")
    parser.add_argument('--budget-s', type=float, default=330,
                        help='skip compile rows once this many seconds have passed')
    args = parser.parse_args()
    started = time.perf_counter()
    cuda = torch.cuda.is_available()
    device = torch.device('cuda' if cuda else 'cpu')
    torch.backends.cudnn.benchmark = cuda
    tag = re.sub(r'[^a-z0-9]+', '_', torch.cuda.get_device_name().lower()).strip('_') if cuda \
        else 'cpu'
    args.out_dir.mkdir(parents=True, exist_ok=True)
    recorder = Recorder(args.out_dir / f'model_{tag}.json', device)
    repeats = args.repeats or (30 if cuda else 3)
    generator = torch.Generator(device).manual_seed(0)
    frames = {size: random_frames(*size, device, generator) for size in SIZES}

    if not cuda:
        torch.manual_seed(0)
        model = CompletionNet(MODELS['cspn'])
        for size in SIZES:
            bench_forward('cspn', MODELS['cspn'], model, 'fp32', MODES['fp32'], size,
                          frames[size], repeats, recorder)
            bench_forward('classical', ModelConfig(propagation='classical'), None, 'fp32', {},
                          size, frames[size], repeats, recorder)
    else:
        for name, config in MODELS.items():
            if name not in args.models:
                continue
            torch.manual_seed(0)
            model = CompletionNet(config)
            compiled = COMPILE_MODES if args.compile_all or name == 'cspn' else {}
            for size in SIZES:
                if f'{size[1]}x{size[0]}' not in args.sizes:
                    continue
                for mode, modes in {**MODES, **compiled}.items():
                    if 'compile' in modes and time.perf_counter() - started > args.budget_s:
                        print(f'budget spent: skipping {name} {size} {mode}', flush=True)
                        continue
                    bench_forward(name, config, model, mode, modes, size, frames[size],
                                  repeats, recorder)
                bench_propagation(name, copy.deepcopy(model), size, frames[size], repeats,
                                  recorder)
    print(f'\nwrote {recorder.path}\n')
    print(markdown(recorder.result))
    if cuda:
        goal = [r for r in recorder.result['forward']
                if r['model'] == 'cspn' and r['size'] == '1216x352' and 'ms' in r]
        if goal:
            best = min(goal, key=lambda r: r['ms'])
            print(f"\ncspn 1216x352 best: {best['ms']:.2f} ms ({best['mode']}); "
                  f'goal {GOAL_MS} ms')


if __name__ == '__main__':
    main()
