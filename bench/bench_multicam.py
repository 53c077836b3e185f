"""Many cameras around one LiDAR: one multi-camera completion_node against one node per camera.

Per mode, real processes over DDS (bench_e2e's harness): bench/e2e_publisher.py --cameras N
publishes a ring of N cameras (camera<k>/image + camera_info, synthetic_source_node's ring)
and one cloud on `points`, all stamped with the sweep's stamp (wall clock) at --rate Hz;
  one:      one completion_node with cameras [camera0, ...] (the sweep's frames as one batch)
  separate: N single-camera completion_nodes, node k in namespace /camera<k> (points remapped
            to /points), each with its camera's extrinsic.
The probe records, per sweep, the time from the sweep stamp to the receipt of the LAST
camera's depth (a sweep counts only when every camera's depth arrived; the others are
dropped), p50/p95/p99; and the nodes' /diagnostics (`time model p50 (ms)` per camera: the
cameras of one node share their batch's, so per sweep that is their largest; N separate
nodes' add up).

GPU time: the same frames in this process (no DDS) through the node's code: `RigCompleter`
(one batch per sweep, `one`) against each camera's `CompletionPipeline.process` in turn (what
N nodes make the GPU do, without their contention): per sweep, CUDA-event milliseconds from
before the first upload to after the last download on the default stream (on the CPU:
wall-clock milliseconds), median over --split-sweeps sweeps.

  GPU:  python3 bench/bench_multicam.py --device cuda          (6 x 1216x352, 64 beams, 10 Hz)
  CPU smoke: python bench/bench_multicam.py --device cpu --size 96x64 --cameras 3 --beams 16 \
             --rate 1 --duration-s 6 --warmup-s 4 --split-sweeps 3
Writes bench/results/multicam_<device>.json and prints a markdown table last.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]

from bench_e2e import (DRAIN_S, Probe, add_node_arguments, bench_completer,  # noqa: E402
                       finish_node_arguments, latency_stats,
                       node_parameters, parse_size, process_environment, report_header, slug,
                       start_publisher, wait_publisher, write_report)
from cspn_ros.core.projection import quaternion_from_rotation  # noqa: E402
from cspn_ros.demo import NodeProcess  # noqa: E402
from cspn_ros.data.synthetic import SyntheticScene  # noqa: E402
from cspn_ros.nodes.synthetic_source_node import ring_poses  # noqa: E402

MODES = ('one', 'separate')


def camera_names(cameras: int) -> list[str]:
    return [f'camera{k}' for k in range(cameras)]


def ring_from_lidar(cameras: int) -> list[np.ndarray]:
    """T_camera_from_lidar (4,4) of each ring camera (the publisher's ring)."""
    scene = SyntheticScene(width=32, height=24, lidar_beams=16)
    return [np.linalg.inv(T) for T in scene.ring_extrinsics(cameras)]


def start_nodes(args: argparse.Namespace, mode: str, size: tuple[int, int], workdir: Path,
                env: dict[str, str]) -> list[NodeProcess]:
    """The completion node(s) of `mode`, warmed up at `size`; their files under workdir."""
    parameters = node_parameters(args, size)
    if mode == 'one':
        parameters.update(cameras=camera_names(args.cameras), batch_wait=args.batch_wait,
                          **ring_poses(SyntheticScene(width=32, height=24, lidar_beams=16),
                                       args.cameras))
        return [NodeProcess('completion_node', parameters, workdir, env)]
    nodes = []
    for name, T in zip(camera_names(args.cameras), ring_from_lidar(args.cameras)):
        parameters.update({'extrinsic.translation': T[:3, 3].tolist(),
                           'extrinsic.rotation': quaternion_from_rotation(T[:3, :3]).tolist()})
        (workdir / name).mkdir()
        nodes.append(NodeProcess('completion_node', parameters, workdir / name, env,
                                 ros_args=['-r', f'__ns:=/{name}', '-r', 'points:=/points']))
    return nodes


def model_time_ms(diagnostics: dict[str, dict[str, str]]) -> dict[str, float]:
    """`time model p50 (ms)` of every camera's /diagnostics status."""
    return {name: float(values['time model p50 (ms)']) for name, values in diagnostics.items()
            if 'time model p50 (ms)' in values}


def run_mode(args: argparse.Namespace, mode: str, size: tuple[int, int], workdir: Path,
             domain_id: int) -> dict[str, Any]:
    """One publisher + node(s) + probe run -> its figures."""
    probe = Probe(domain_id, tuple(f'{name}/depth' for name in camera_names(args.cameras)))
    env = process_environment(domain_id)
    workdir = workdir / mode
    workdir.mkdir()
    nodes = start_nodes(args, mode, size, workdir, env)
    publisher, summary_path = start_publisher(args, size, args.rate, args.duration_s, workdir,
                                              env, args.cameras)
    try:
        wait_publisher(nodes, publisher, timeout_s=240 + args.warmup_s + args.duration_s)
        time.sleep(DRAIN_S)
        summary = json.loads(summary_path.read_text())
        latency = probe.latencies_ms(summary['measure_start_ns'], summary['measure_end_ns'])
        diagnostics = probe.latest_within(summary['measure_start_ns'], summary['measure_end_ns'])
    finally:
        for node in nodes:
            node.stop()
        probe.close()
    window_s = (summary['measure_end_ns'] - summary['measure_start_ns']) * 1e-9
    model_ms = model_time_ms(diagnostics)
    return {'mode': mode, 'nodes': len(nodes), 'cameras': args.cameras,
            'size': f'{size[0]}x{size[1]}', 'beams': args.beams, 'points': summary['points'],
            'rate_hz': args.rate, 'window_s': round(window_s, 2),
            'sweeps_published': summary['published'], 'sweeps_complete': int(latency.size),
            'sweeps_dropped': summary['published'] - int(latency.size),
            'latency_last_camera_ms': latency_stats(latency),
            'node_model_p50_ms': model_ms,
            # the cameras of one node share their batch's model time; separate nodes add up
            'node_model_ms_per_sweep': round((max(model_ms.values(), default=0.0) if mode == 'one'
                                              else sum(model_ms.values())), 2),
            'node_diagnostics': diagnostics,
            'node_log_tail': [line for node in nodes for line in node.log().splitlines()[-3:]]}


def gpu_time_per_sweep(args: argparse.Namespace, size: tuple[int, int]) -> dict[str, Any]:
    """Median ms per sweep of the ring's frames in this process: one batch (RigCompleter)
    against each camera's pipeline in turn (module docstring)."""
    import torch

    from cspn_ros.core.pipeline import CompletionPipeline
    from cspn_ros.core.rig import RigCompleter
    from e2e_publisher import render
    parameters = node_parameters(args, size)
    completer = bench_completer(args, parameters)
    names = camera_names(args.cameras)
    pipelines = {name: CompletionPipeline(completer, 'lidar', T, parameters['min_depth'],
                                          parameters['max_depth'])
                 for name, T in zip(names, ring_from_lidar(args.cameras))}
    rig = RigCompleter(pipelines, require_gpu=args.device == 'cuda')
    sweeps = render(argparse.Namespace(width=size[0], height=size[1], beams=args.beams,
                                       depth_source='lidar', frames=4, cameras=args.cameras))
    frames = [{name: (sweep[f'{name}/image'][0], sweep[f'{name}/camera_info'][0],
                      sweep['points'][0]) for name in names} for sweep in sweeps]
    cuda = args.device == 'cuda'

    def batched(sweep: dict) -> None:
        results = rig.complete(sweep)
        failed = [name for name, result in results.items() if isinstance(result, Exception)]
        if failed:
            raise RuntimeError(f'frames failed: {[str(results[n]) for n in failed]}')

    def separate(sweep: dict) -> None:
        for name, messages in sweep.items():
            pipelines[name].process(*messages)

    timings: dict[str, dict[str, list[float]]] = {}
    for label, run in (('one_batch', batched), ('per_camera', separate)):
        for index in range(args.split_sweeps + 3):
            sweep = frames[index % len(frames)]
            if cuda:
                torch.cuda.synchronize()
                begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(
                    enable_timing=True)
                begin.record()
            start = time.perf_counter()
            run(sweep)
            if cuda:
                end.record()
                end.synchronize()
            wall_ms = (time.perf_counter() - start) * 1e3
            if index < 3:  # warm-up: cuDNN, graph capture at this batch size
                continue
            entry = timings.setdefault(label, {'wall_ms': [], 'gpu_event_ms': []})
            entry['wall_ms'].append(wall_ms)
            if cuda:
                entry['gpu_event_ms'].append(begin.elapsed_time(end))
    return {label: {key: round(float(np.median(values)), 2) for key, values in entry.items()
                    if values} for label, entry in timings.items()}


def table(report: dict[str, Any]) -> str:
    rows = ['| mode | nodes | cameras x size | rate Hz | sweeps | complete | dropped | '
            'last camera p50 ms | p95 ms | p99 ms | node model ms per sweep |',
            '|' + ' --- |' * 11]
    for run in report['runs']:
        lat = run['latency_last_camera_ms']
        rows.append(f"| {run['mode']} | {run['nodes']} | {run['cameras']} x {run['size']} | "
                    f"{run['rate_hz']} | {run['sweeps_published']} | {run['sweeps_complete']} | "
                    f"{run['sweeps_dropped']} | {lat.get('p50', '-')} | {lat.get('p95', '-')} | "
                    f"{lat.get('p99', '-')} | {run['node_model_ms_per_sweep']} |")
    rows += ['', f"Per sweep in one process, median ms ({report['device']}):", '',
             '| path | wall ms | GPU (CUDA events) ms |', '| --- | --- | --- |']
    for label, figures in report['per_sweep_ms'].items():
        rows.append(f"| {label} | {figures.get('wall_ms', '-')} | "
                    f"{figures.get('gpu_event_ms', '-')} |")
    return '\n'.join(rows)


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_node_arguments(parser)
    parser.add_argument('--size', type=parse_size, default=(1216, 352), help='WxH per camera')
    parser.add_argument('--cameras', type=int, default=6)
    parser.add_argument('--rate', type=float, default=10.0, help='sweeps per second')
    parser.add_argument('--batch-wait', type=float, default=0.05,
                        help="the multi-camera node's batch_wait (s)")
    parser.add_argument('--modes', nargs='+', default=list(MODES), choices=MODES)
    parser.add_argument('--duration-s', type=float, default=20.0)
    parser.add_argument('--split-sweeps', type=int, default=50)
    parser.add_argument('--out', type=Path, help='default bench/results/multicam_<device>.json')
    args = finish_node_arguments(parser.parse_args(argv))
    if args.cameras < 2:
        parser.error('--cameras must be at least 2 (a ring)')
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    report = report_header(args)
    name, domain_id = report['device'], 1 + os.getpid() % 101
    report.update({
        'note': 'latency = receipt of the last camera\'s depth - sweep stamp (every camera '
                'stamped with the sweep; wall clock, one machine)', 'runs': []})
    with tempfile.TemporaryDirectory() as workdir:
        for mode in args.modes:
            print(f'--- {mode}: {args.cameras} cameras {args.size[0]}x{args.size[1]} at '
                  f'{args.rate:g} Hz', flush=True)
            run = run_mode(args, mode, args.size, Path(workdir), domain_id)
            print(json.dumps({k: v for k, v in run.items()
                              if k not in ('node_log_tail', 'node_diagnostics')}), flush=True)
            report['runs'].append(run)
    report['per_sweep_ms'] = gpu_time_per_sweep(args, args.size)
    write_report(report, args.out or BENCH / 'results' / f'multicam_{slug(name)}.json', table)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
