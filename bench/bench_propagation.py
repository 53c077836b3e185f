"""Time the fused propagation kernels against the torch references on a CUDA GPU.

CUDA events around each call after warm-up, median of many calls, inputs rotated over several
sets (more bytes than L2 holds). The bandwidth floor counts the fewest bytes a run must move:
every input plane read once and the output written once; measured / floor is the gap.
Writes JSON to --json and prints a markdown table last.

    python3 bench/bench_propagation.py --json $OUT/propagation_bench.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cspn_ros.config import ModelConfig  # noqa: E402
from cspn_ros.model.propagation import cspn, fused, nlspn  # noqa: E402
from cspn_ros.model.propagation.fused import LocalLaunch, SharedLaunch  # noqa: E402

HEIGHT, WIDTH, STEPS = 352, 1216, 24
INPUT_SETS = 4


def time_ms(run, input_sets, warmup=3, repeats=30) -> float:
    """Median milliseconds of run(*inputs) over rotating input sets (CUDA events)."""
    for i in range(warmup):
        run(*input_sets[i % len(input_sets)])
    times = []
    for i in range(repeats):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        run(*input_sets[i % len(input_sets)])
        end.record()
        end.synchronize()
        times.append(begin.elapsed_time(end))
    return statistics.median(times)


def host_ms(run, input_sets, repeats=30) -> float:
    """Median milliseconds the host spends in run(*inputs) (launches only; the GPU is idle
    before each call): the eager floor when it exceeds the GPU time."""
    times = []
    for i in range(repeats):
        torch.cuda.synchronize()
        begin = time.perf_counter()
        run(*input_sets[i % len(input_sets)])
        times.append((time.perf_counter() - begin) * 1e3)
    torch.cuda.synchronize()
    return statistics.median(times)


def time_graph_ms(run, input_sets, repeats=30) -> float:
    """Median milliseconds of a CUDA-graph replay of run (one graph per input set)."""
    graphs = []
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        for inputs in input_sets:
            run(*inputs)  # compile / warm up outside capture
    torch.cuda.synchronize()
    for inputs in input_sets:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            run(*inputs)
        graphs.append(graph)
    return time_ms(lambda g: g.replay(), [(g,) for g in graphs], repeats=repeats)


def copy_bandwidth() -> float:
    """Device-to-device copy, bytes read + written per second."""
    source = torch.rand(256 * 2 ** 20, device='cuda')
    target = torch.empty_like(source)
    ms = time_ms(lambda: target.copy_(source), [()], warmup=3, repeats=20)
    return 2 * source.numel() * 4 / (ms * 1e-3)


def local_inputs(kernel_size, dtype, generator):
    sets = []
    for _ in range(INPUT_SETS):
        init = 0.5 + 20 * torch.rand(1, 1, HEIGHT, WIDTH, device='cuda', generator=generator)
        pick = torch.rand(1, 1, HEIGHT, WIDTH, device='cuda', generator=generator) < 0.05
        sparse = torch.where(pick, init * 1.1, torch.zeros((), device='cuda'))
        guidance = torch.randn(1, kernel_size ** 2 - 1, HEIGHT, WIDTH, device='cuda',
                               generator=generator)
        affinity = cspn.normalize_affinity(guidance).to(dtype)
        sets.append((init.to(dtype), affinity, sparse > 0, sparse.to(dtype)))
    return sets


def local_floor_bytes(kernel_size, dtype) -> int:
    """Fewest bytes of a fused run: init, affinity, sparse, mask read once; output written."""
    item = torch.finfo(dtype).bits // 8
    per_pixel = item * (kernel_size ** 2 - 1 + 2) + 1 + 4
    return per_pixel * HEIGHT * WIDTH


#: 3x3 tilings timed: the previous default (global-memory scratch), then the shared-memory
#: kernel's (docs/kernels.md).
LOCAL_CANDIDATES = [LocalLaunch(8, 64, 64, 16, True)]
SHARED_CANDIDATES = [SharedLaunch(*c) for c in [
    (8, 64, 64, 2, 2, 16, False), (8, 64, 64, 4, 2, 16, False), (8, 64, 64, 8, 2, 8, False),
    (8, 64, 64, 2, 2, 16), (8, 64, 64, 4, 2, 16), (8, 64, 64, 8, 2, 8), (8, 64, 64, 1, 1, 16),
    (6, 64, 64, 4, 2, 16), (12, 64, 64, 4, 2, 16)]]


def bench_local(generator, bandwidth, rows, quick=False) -> None:
    # CSPN 3x3, 24 steps: reference, then fused tilings (eager, host-only and CUDA-graph times).
    shared = [fused.DEFAULT_SHARED_LAUNCH] if quick else SHARED_CANDIDATES
    candidates = LOCAL_CANDIDATES + (shared if fused.shared_kernel_available() else [])
    for dtype in (torch.float32, torch.float16):
        sets = local_inputs(3, dtype, generator)
        floor_ms = local_floor_bytes(3, dtype) / bandwidth * 1e3
        if dtype == torch.float32:
            ref = time_ms(lambda i, a, m, s: cspn.cspn_propagate(i, a, m, s, STEPS), sets)
            ref_graph = time_graph_ms(lambda i, a, m, s: cspn.cspn_propagate(i, a, m, s, STEPS), sets)
            rows.append(dict(name='cspn3 24 steps reference', dtype='float32', ms=ref,
                             floor_ms=floor_ms))
            rows.append(dict(name='cspn3 24 steps reference (CUDA graph)', dtype='float32',
                             ms=ref_graph, floor_ms=floor_ms))
        for launch in candidates:
            def run(i, a, m, s, launch=launch):
                fused.cspn_propagate(i, a, m, s, STEPS, launch)
            try:
                ms = time_ms(run, sets)
            except Exception as error:  # a tiling that does not compile (registers) is skipped
                rows.append(dict(name=f'cspn3 fused {launch}', dtype=str(dtype), error=repr(error)[:200]))
                continue
            rows.append(dict(name=f'cspn3 fused {launch}', dtype=str(dtype), ms=ms,
                             host_ms=host_ms(run, sets), floor_ms=floor_ms,
                             launchers=sorted({f.__qualname__
                                               for f in fused._SHARED_LAUNCHERS.values()})))
            rows.append(dict(name=f'cspn3 fused {launch} (CUDA graph)', dtype=str(dtype),
                             ms=time_graph_ms(run, sets), floor_ms=floor_ms))
    if fused.shared_kernel_available():
        bench_runner_relaunch(generator, bandwidth, rows)
        if not quick:
            bench_phases(generator, bandwidth, rows)


def bench_runner_relaunch(generator, bandwidth, rows) -> None:
    """The default tiling relaunched through Triton's public runner (`compiled[grid]`) instead
    of straight into its C launcher (`fused._direct_launcher`): the host time that saves."""
    sets = local_inputs(3, torch.float32, generator)

    def run(i, a, m, s):
        fused.cspn_propagate(i, a, m, s, STEPS)
    direct = fused._direct_launcher
    fused._direct_launcher = lambda kernel: None
    fused._SHARED_LAUNCHERS.clear()
    try:
        rows.append(dict(name=f'cspn3 fused {fused.DEFAULT_SHARED_LAUNCH} via the runner',
                         dtype='torch.float32', ms=time_ms(run, sets), host_ms=host_ms(run, sets),
                         floor_ms=local_floor_bytes(3, torch.float32) / bandwidth * 1e3))
    finally:
        fused._direct_launcher = direct
        fused._SHARED_LAUNCHERS.clear()


def bench_phases(generator, bandwidth, rows) -> None:
    """One launch (a propagation's first) of the default shared-memory tiling with 0, 1 and
    all its steps (CUDA graph, float32): the first is the per-launch cost of loading, folding
    and storing, the difference of the others the cost of a step."""
    launch = fused.DEFAULT_SHARED_LAUNCH
    sets = []
    for init, affinity, mask, sparse in local_inputs(3, torch.float32, generator):
        start, affinity, sparse = init.contiguous(), affinity.contiguous(), sparse.contiguous()
        sets.append((start, affinity, sparse, fused._mask_bytes(mask, start),
                     torch.empty_like(start)))
    floor_ms = local_floor_bytes(3, torch.float32) / bandwidth * 1e3
    for steps in (0, 1, launch.steps_per_launch):
        def run(start, affinity, sparse, mask, out, steps=steps):
            fused._shared_stepper(launch, 3, start, affinity, sparse, mask, True)(start, out, steps)
        rows.append(dict(name=f'cspn3 shared one launch of {steps} steps (CUDA graph) {launch}',
                         dtype='torch.float32', ms=time_graph_ms(run, sets), floor_ms=floor_ms))


def bench_cspnpp_branches(generator, bandwidth, rows) -> None:
    """CSPN++ branches 5x5 and 7x7 (counts 6, 12, 24): reference vs fused tilings."""
    for kernel_size, launches in ((5, [LocalLaunch(s, h, w, nw, False) for s, h, w, nw in [
            (2, 32, 64, 8), (3, 32, 64, 8)]]),
                                  (7, [LocalLaunch(s, h, w, nw, False) for s, h, w, nw in [
            (2, 32, 64, 8), (2, 32, 64, 4)]])):
        sets = local_inputs(kernel_size, torch.float32, generator)
        floor_ms = local_floor_bytes(kernel_size, torch.float32) / bandwidth * 1e3
        counts = (6, 12, 24)
        rows.append(dict(name=f'cspn{kernel_size} at (6,12,24) reference', dtype='float32',
                         ms=time_ms(lambda i, a, m, s: fused._cspn_reference_at(i, a, m, s, counts), sets),
                         floor_ms=floor_ms))
        for launch in launches:
            ms = time_ms(lambda i, a, m, s: fused.cspn_propagate_at(i, a, m, s, counts, launch), sets)
            rows.append(dict(name=f'cspn{kernel_size} at (6,12,24) fused {launch}',
                             dtype='float32', ms=ms, floor_ms=floor_ms))


def bench_nlspn(generator, bandwidth, rows) -> None:
    neighbours = 8
    module = nlspn.NLSPNPropagation(ModelConfig(propagation='nlspn')).cuda()
    sets = []
    for _ in range(INPUT_SETS):
        init = 0.5 + 20 * torch.rand(1, 1, HEIGHT, WIDTH, device='cuda', generator=generator)
        sparse = torch.where(torch.rand(1, 1, HEIGHT, WIDTH, device='cuda', generator=generator) < 0.05,
                             init, torch.zeros((), device='cuda'))
        offsets = torch.randn(1, neighbours, 2, HEIGHT, WIDTH, device='cuda', generator=generator)
        grid = module.sampling_grid(offsets)
        raw = torch.randn(1, neighbours, HEIGHT, WIDTH, device='cuda', generator=generator)
        affinity = module.affinities(raw, grid, None).detach()
        sets.append((init, affinity, grid, sparse > 0, sparse))
    # per pixel: affinity + grid (3 floats per neighbour), init, sparse, mask, output
    floor_ms = (4 * 3 * neighbours + 4 + 4 + 1 + 4) * HEIGHT * WIDTH / bandwidth * 1e3
    for name, run in (('reference', fused._nlspn_reference), ('fused', fused._nlspn_fused)):
        ms = time_ms(lambda i, a, g, m, s: run(i, a, g, m, s, STEPS), sets)
        graph_ms = time_graph_ms(lambda i, a, g, m, s: run(i, a, g, m, s, STEPS), sets)
        rows.append(dict(name=f'nlspn8 24 steps {name}', dtype='float32', ms=ms, floor_ms=floor_ms))
        rows.append(dict(name=f'nlspn8 24 steps {name} (CUDA graph)', dtype='float32',
                         ms=graph_ms, floor_ms=floor_ms))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--json', type=Path, required=True)
    parser.add_argument('--quick', action='store_true',
                        help='CSPN 3x3 only: the reference, the default tilings, the runner')
    args = parser.parse_args()
    if not fused.available():
        print('fused kernels unavailable (no CUDA device or no Triton)')
        return 1
    generator = torch.Generator(device='cuda').manual_seed(torch.seed() % 2 ** 31)
    bandwidth = copy_bandwidth()
    rows: list[dict] = []
    bench_local(generator, bandwidth, rows, args.quick)
    if not args.quick:
        bench_cspnpp_branches(generator, bandwidth, rows)
        bench_nlspn(generator, bandwidth, rows)
    reference = next(r['ms'] for r in rows if r['name'] == 'cspn3 24 steps reference')
    reference_graph = next(r['ms'] for r in rows
                           if r['name'] == 'cspn3 24 steps reference (CUDA graph)')
    for row in rows:
        if 'ms' in row:
            cspn3 = row['name'].startswith('cspn3')
            row['speedup_vs_reference'] = reference / row['ms'] if cspn3 else None
            row['speedup_vs_graph_reference'] = reference_graph / row['ms'] if cspn3 else None
            row['measured_over_floor'] = row['ms'] / row['floor_ms']
    args.json.write_text(json.dumps(dict(device=torch.cuda.get_device_name(),
                                         copy_bandwidth_bytes_per_s=bandwidth,
                                         size=[HEIGHT, WIDTH], steps=STEPS, rows=rows), indent=1))
    print(f'\n{torch.cuda.get_device_name()}, copy bandwidth {bandwidth / 1e12:.2f} TB/s, '
          f'{WIDTH}x{HEIGHT}, batch 1\n')
    print('| variant | dtype | ms (median) | host ms | x eager ref | x graph ref | floor ms '
          '| measured/floor |\n|---|---|---|---|---|---|---|---|')
    for row in rows:
        if 'ms' in row:
            speedups = ' | '.join(f'{row[k]:.1f}' if row[k] else ''
                                  for k in ('speedup_vs_reference', 'speedup_vs_graph_reference'))
            host = f"{row['host_ms']:.4f}" if 'host_ms' in row else ''
            print(f"| {row['name']} | {row['dtype'].replace('torch.', '')} | {row['ms']:.4f} | "
                  f"{host} | {speedups} | {row['floor_ms']:.4f} | {row['measured_over_floor']:.0f} |")
        else:
            print(f"| {row['name']} | {row['dtype']} | failed: {row['error'][:60]} | | | | | |")
    return 0


if __name__ == '__main__':
    sys.exit(main())
