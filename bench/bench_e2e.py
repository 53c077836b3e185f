"""End-to-end latency and throughput of completion_node with real processes over DDS.

Per run: bench/e2e_publisher.py (its own process: pre-rendered synthetic frames re-stamped with
the wall clock), completion_node (its own process, `python -m cspn_ros.nodes.completion_node`),
and a probe here that records, per frame, the latency from the image header stamp to receipt
of `depth` (a raw subscription: the serialized bytes' arrival, before any conversion to Python;
the publisher sends pre-serialized messages as a C++ driver would, so neither end's Python
message conversion is counted; up to session 6 both were), plus the node's /diagnostics. Frames out = depth messages whose stamp lies in the
scored window; dropped = frames published in that window - frames out. The node's reported
output rate (`diagnostics_output_rate_hz`) is the mean over its /diagnostics reports whose rate
window lies inside the scored window, and `node_diagnostics` holds the last reports made while
the publisher ran: a report read after it stopped averages the end of the run with the silence
after it (it read 54-56 Hz for a node sustaining 125-133 Hz). Afterwards the same
pipeline runs in this process on the same frames to split the per-frame time into convert /
h2d / project / model / d2h / serialize (the node's own split, where it reports one on
/diagnostics, is stored as node_diagnostics).

Inputs are RELIABLE by default: a 64-beam cloud is ~1.8 MB, which best-effort UDP over
loopback loses in fragments (the node's default input QoS is best_effort; --reliability
best_effort measures that).

  python bench/bench_e2e.py --device cuda --size 1216x352 --size 640x480 --rate 30 --rate 0
  python bench/bench_e2e.py --device cpu --size 320x240 --beams 16 --rate 5   (CPU smoke test)
  python bench/bench_e2e.py --node-defaults ...  (the node's default modes: --precision,
  --compile, --channels-last, --no-cuda-graphs are then ignored)
  python bench/bench_e2e.py --node-defaults --set self_check.enabled=false ...  (any node
  parameter, value parsed as YAML)
Writes bench/results/e2e_<device>.json and prints a markdown table last.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]

from cspn_ros.config import parse_setting  # noqa: E402
from cspn_ros.data.bag_reader import header_stamp_ns  # noqa: E402
from cspn_ros.demo import BackgroundNode, NodeProcess, completion_parameters  # noqa: E402
from cspn_ros.model.completer import DEFAULT_CHECKPOINT  # noqa: E402
from cspn_ros.nodes.spin import freeze_long_lived_objects  # noqa: E402
from cspn_ros.nodes.transport import large_data_environment  # noqa: E402

#: Untrained model used when the packaged default checkpoint is missing.
FALLBACK_MODEL = '{"width": 16}'
#: Seconds after the publisher's last frame that late outputs are still collected.
DRAIN_S = 3.0
STAGES = ('convert', 'h2d', 'project', 'model', 'd2h', 'serialize')


class Probe(BackgroundNode):
    """Receipt of each of `depth_topics` (topic, stamp ns, receipt ns) and every /diagnostics
    report (stamp ns, status name -> key-values)."""

    def __init__(self, domain_id: int, depth_topics: tuple[str, ...] = ('depth',)) -> None:
        super().__init__('e2e_probe', domain_id)
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image
        self.lock = threading.Lock()
        self.depth_topics = tuple(depth_topics)
        self.receipts: list[tuple[str, int, int]] = []
        self.diagnostics_history: list[tuple[int, dict[str, dict[str, str]]]] = []
        qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        for topic in self.depth_topics:
            self.node.create_subscription(Image, topic, lambda raw, t=topic: self._on_depth(
                t, raw), qos, raw=True)  # serialized: receipt is not delayed by conversion
        self.node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics, 100)
        # This process holds torch and the pipeline too (split_in_process): keep full garbage
        # collections from walking them while frames arrive, as the node does after warm-up.
        freeze_long_lived_objects()

    def _on_depth(self, topic: str, raw: bytes) -> None:
        receipt = time.time_ns()
        stamp = header_stamp_ns(raw)
        with self.lock:
            self.receipts.append((topic, stamp, receipt))

    def _on_diagnostics(self, msg: Any) -> None:
        statuses = {status.name: {kv.key: kv.value for kv in status.values}
                    for status in msg.status}
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        with self.lock:
            self.diagnostics_history.append((stamp, statuses))

    def wait_for_diagnostics(self, timeout_s: float) -> bool:
        """Whether a /diagnostics report arrived within timeout_s (s): the nodes and this probe
        have discovered each other, so the reports of a run that starts now are not lost."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                if self.diagnostics_history:
                    return True
            time.sleep(0.1)
        return False

    def reports_within(self, start_ns: int, end_ns: int
                       ) -> list[tuple[int, str, dict[str, str]]]:
        """(stamp ns, status name, values) of the /diagnostics statuses whose rate window lies
        in [start_ns, end_ns] (report stamps: the nodes' wall clock), oldest first."""
        with self.lock:
            history = list(self.diagnostics_history)
        return [(stamp, name, values) for stamp, statuses in history
                for name, values in statuses.items()
                if start_ns <= stamp - float(values.get('rate window (s)', 5.0)) * 1e9
                and stamp <= end_ns]

    def latest_within(self, start_ns: int, end_ns: int) -> dict[str, dict[str, str]]:
        """Status name -> values of its last report stamped in [start_ns, end_ns]: what the
        nodes said while the publisher ran, not after it stopped."""
        with self.lock:
            history = list(self.diagnostics_history)
        return {name: values for stamp, statuses in history if start_ns <= stamp <= end_ns
                for name, values in statuses.items()}

    def latencies_ms(self, start_ns: int, end_ns: int) -> np.ndarray:
        """Latency (ms) of every stamp in [start_ns, end_ns) received on all depth topics: from
        the stamp to the first receipt on the last of them (one camera: its depth)."""
        with self.lock:
            first: dict[int, dict[str, int]] = {}
            for topic, stamp, receipt in self.receipts:
                if start_ns <= stamp < end_ns:
                    first.setdefault(stamp, {}).setdefault(topic, receipt)
        return np.array([(max(receipts.values()) - stamp) * 1e-6
                         for stamp, receipts in first.items()
                         if len(receipts) == len(self.depth_topics)])


def node_parameters(args: argparse.Namespace,
                    size: tuple[int, int]) -> dict[str, Any]:
    """completion_node parameters: config/completion.yaml + GPU modes + the model to run,
    warmed up at start for width x height frames."""
    checkpoint = str(DEFAULT_CHECKPOINT) if DEFAULT_CHECKPOINT.is_file() else ''
    parameters = completion_parameters(args.depth_source, checkpoint, args.device)
    parameters.update(publish_sparse=False, publish_points=False, publish_colorized=False,
                      input_reliability=args.reliability, require_gpu=args.device == 'cuda',
                      warmup_size=list(size), **explicit_modes(args))
    if not checkpoint:
        parameters['model_config'] = args.model_config
    parameters.update(getattr(args, 'set', None) or {})
    return parameters


def explicit_modes(args: argparse.Namespace) -> dict[str, Any]:
    """The inference modes the options set, or none with --node-defaults (the node's and
    DepthCompleter.from_checkpoint's defaults then choose)."""
    if args.node_defaults:
        return {}
    return dict(precision=args.precision,
                cuda_graphs=args.device == 'cuda' and not args.no_cuda_graphs,
                compile=args.compile, channels_last=args.channels_last)


def start_processes(args: argparse.Namespace, size: tuple[int, int], rate: float,
                    duration_s: float, workdir: Path, domain_id: int
                    ) -> tuple[NodeProcess, subprocess.Popen, Path]:
    """completion_node and the publisher (which waits for the node's subscriptions)."""
    env = process_environment(domain_id)
    node = NodeProcess('completion_node', node_parameters(args, size), workdir, env)
    publisher, summary = start_publisher(args, size, rate, duration_s, workdir, env)
    return node, publisher, summary


def process_environment(domain_id: int) -> dict[str, str]:
    """The environment of the benchmark's processes: this one's, in `domain_id`."""
    return {**os.environ, 'ROS_DOMAIN_ID': str(domain_id), 'PYTHONUNBUFFERED': '1'}


def start_publisher(args: argparse.Namespace, size: tuple[int, int], rate: float,
                    duration_s: float, workdir: Path, env: dict[str, str], cameras: int = 1
                    ) -> tuple[subprocess.Popen, Path]:
    """bench/e2e_publisher.py for `cameras` cameras -> (process, its summary file)."""
    summary = workdir / f'publisher_{size[0]}x{size[1]}_{rate:g}.json'
    publisher = subprocess.Popen(
        [sys.executable, str(BENCH / 'e2e_publisher.py'), '--width', str(size[0]),
         '--height', str(size[1]), '--beams', str(args.beams), '--depth-source',
         args.depth_source, '--rate', str(rate), '--warmup-s', str(args.warmup_s),
         '--duration-s', str(duration_s), '--reliability', args.reliability,
         '--cameras', str(cameras), '--summary', str(summary)], env=env)
    return publisher, summary


def wait_publisher(nodes: NodeProcess | list[NodeProcess], publisher: subprocess.Popen,
                   timeout_s: float) -> None:
    """Wait for the publisher to finish; RuntimeError with a node's log if a process fails."""
    nodes = nodes if isinstance(nodes, list) else [nodes]
    deadline = time.monotonic() + timeout_s
    while publisher.poll() is None:
        for node in nodes:
            if not node.running():
                publisher.kill()
                raise RuntimeError(f'completion_node exited early:\n{node.log()[-4000:]}')
        if time.monotonic() > deadline:
            publisher.kill()
            raise RuntimeError(f'publisher did not finish in {timeout_s:.0f} s; node log:\n'
                               f'{nodes[0].log()[-4000:]}')
        time.sleep(0.2)
    if publisher.returncode:
        raise RuntimeError(f'publisher failed ({publisher.returncode}); node log:\n'
                           f'{nodes[0].log()[-4000:]}')


def latency_stats(latency_ms: np.ndarray) -> dict[str, float]:
    if latency_ms.size == 0:
        return {}
    p50, p95, p99 = np.percentile(latency_ms, [50, 95, 99])
    return {'p50': round(float(p50), 2), 'p95': round(float(p95), 2),
            'p99': round(float(p99), 2), 'max': round(float(latency_ms.max()), 2),
            'mean': round(float(latency_ms.mean()), 2)}


def run_once(args: argparse.Namespace, size: tuple[int, int], rate: float, workdir: Path,
             domain_id: int) -> dict[str, Any]:
    """One publisher + node + probe run -> its figures."""
    probe = Probe(domain_id)
    node, publisher, summary_path = start_processes(args, size, rate, args.duration_s, workdir,
                                                    domain_id)
    try:
        wait_publisher(node, publisher, timeout_s=180 + args.warmup_s + args.duration_s)
        time.sleep(DRAIN_S)
        summary = json.loads(summary_path.read_text())
        latency = probe.latencies_ms(summary['measure_start_ns'], summary['measure_end_ns'])
        window_s = (summary['measure_end_ns'] - summary['measure_start_ns']) * 1e-9
        start_ns, end_ns = summary['measure_start_ns'], summary['measure_end_ns']
        output_rates = [float(values['output rate (Hz)']) for _, _, values
                        in probe.reports_within(start_ns, end_ns) if 'output rate (Hz)' in values]
        diagnostics = probe.latest_within(start_ns, end_ns)
    finally:
        node.stop()
        probe.close()
    log = node.log()
    return {'size': f'{size[0]}x{size[1]}', 'depth_source': args.depth_source,
            'beams': args.beams if args.depth_source == 'lidar' else None,
            'points': summary['points'], 'rate_hz': rate, 'reliability': args.reliability,
            'window_s': round(window_s, 2), 'published': summary['published'],
            'publisher_late_ticks': summary['late_ticks'], 'received': int(latency.size),
            'dropped': summary['published'] - int(latency.size),
            'throughput_hz': round(latency.size / window_s, 2),
            'diagnostics_output_rate_hz': (round(float(np.mean(output_rates)), 2)
                                           if output_rates else None),
            'latency_ms': latency_stats(latency), 'node_diagnostics': diagnostics,
            'node_log_tail': log.splitlines()[-6:],
            'node_start': [line for line in log.splitlines()  # modes chosen, warm-up seconds
                           if 'warmed up' in line or re.search(r'model \w+ on \w', line)]}


def split_in_process(args: argparse.Namespace, size: tuple[int, int],
                     frames: int = 100) -> dict[str, float]:
    """Median ms per stage of CompletionPipeline.process + serialisation of `depth`, in this
    process on the publisher's frames decoded from their bytes (the node's code path, without
    DDS). The warm-up frames also check that the sparse depth equals prepare()'s numpy
    projection exactly."""
    import torch
    from rclpy.serialization import serialize_message

    from cspn_ros.core.conversions import image_fields
    from cspn_ros.core.pipeline import CompletionPipeline
    from cspn_ros.core.projection import transform_from_translation_quaternion
    from cspn_ros.core.wire import MESSAGES, decode, encode, type_name
    from e2e_publisher import render
    parameters = node_parameters(args, size)
    completer = bench_completer(args, parameters)
    T = transform_from_translation_quaternion(parameters['extrinsic.translation'],
                                              parameters['extrinsic.rotation'])
    pipeline = CompletionPipeline(completer, args.depth_source, T, parameters['min_depth'],
                                  parameters['max_depth'],
                                  tof_registered=parameters['tof.registered'])
    rendered = render(argparse.Namespace(width=size[0], height=size[1], beams=args.beams,
                                         depth_source=args.depth_source, frames=4))
    decoded = [{topic: decode(serialize_message(msg), type_name(type(msg)))  # as the node has
                for topic, (msg, _) in frame.items()} for frame in rendered]  # them
    stages: dict[str, list[float]] = {}
    for index in range(frames + 5):
        messages = decoded[index % len(decoded)]
        start = time.perf_counter()
        depth_msg = messages['points' if args.depth_source == 'lidar' else 'tof/depth']
        result = pipeline.process(messages['image'], messages['camera_info'], depth_msg,
                                  messages.get('tof/camera_info'))
        processed = time.perf_counter()
        encode(MESSAGES.image(image_fields(result.dense_as_32fc1(), '32FC1'),
                              messages['image'].header))
        done = time.perf_counter()
        if index < 5:  # warm-up: cuDNN, graph capture
            expected = pipeline.prepare(messages['image'], messages['camera_info'], depth_msg,
                                        messages.get('tof/camera_info')).sparse
            if not np.array_equal(result.sparse, expected):
                raise RuntimeError(f'process() sparse (on_device={pipeline.on_device}) differs '
                                   'from prepare() (numpy)')
            continue
        for stage, seconds in {**result.timings, 'serialize': done - processed,
                               'total': done - start}.items():
            stages.setdefault(stage, []).append(seconds)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return {stage: round(float(np.median(values)) * 1e3, 3) for stage, values in stages.items()}


def bench_completer(args: argparse.Namespace, parameters: dict[str, Any]) -> Any:
    """The DepthCompleter the node runs with `parameters` (node_parameters), in this process."""
    from cspn_ros.model.completer import DepthCompleter
    modes = dict(device=args.device, **explicit_modes(args))
    if DEFAULT_CHECKPOINT.is_file():
        return DepthCompleter.from_checkpoint(DEFAULT_CHECKPOINT, **modes)
    return DepthCompleter.from_config(json.loads(args.model_config), **modes)


def device_name(device: str) -> str:
    import torch
    if device == 'cuda':
        return torch.cuda.get_device_name()
    return 'cpu'


def table(report: dict[str, Any]) -> str:
    rows = ['| size | source | points | rate Hz | published | received | dropped | '
            'throughput Hz | /diagnostics Hz | p50 ms | p95 ms | p99 ms |', '|' + ' --- |' * 12]
    for run in report['runs']:
        lat = run['latency_ms']
        rows.append(f"| {run['size']} | {run['depth_source']} | {run['points']} | "
                    f"{run['rate_hz'] or 'max'} | {run['published']} | {run['received']} | "
                    f"{run['dropped']} | {run['throughput_hz']} | "
                    f"{run.get('diagnostics_output_rate_hz') or '-'} | {lat.get('p50', '-')} | "
                    f"{lat.get('p95', '-')} | {lat.get('p99', '-')} |")
    stages = [s for s in (*STAGES, 'total')
              if any(s in split for split in report['split_ms'].values())]
    rows += ['', f"In-process split, median ms ({report['device']}):", '',
             '| size | ' + ' | '.join(stages) + ' |', '|' + ' --- |' * (len(stages) + 1)]
    for size, split in report['split_ms'].items():
        rows.append(f'| {size} | ' + ' | '.join(f"{split.get(s, '-')}" for s in stages) + ' |')
    return '\n'.join(rows)


def report_header(args: argparse.Namespace) -> dict[str, Any]:
    """The device, date, model and inference modes of a run (the report's first keys); sets
    the Fast DDS large-data environment for the probe here and every process started."""
    os.environ.update(large_data_environment())
    return {'device': device_name(args.device),
            'date': datetime.datetime.now().isoformat(timespec='seconds'),
            'model': ('default checkpoint' if DEFAULT_CHECKPOINT.is_file()
                      else f'untrained {args.model_config}'),
            **(explicit_modes(args) or {'modes': 'node defaults'}),
            **({'node_parameters_set': args.set} if args.set else {})}


def slug(name: str) -> str:
    """A device name as a file name part ('NVIDIA H200' -> 'nvidia_h200')."""
    return re.sub(r'[^a-z0-9]+', '_', name.lower()).strip('_')


def write_report(report: dict[str, Any], out: Path, table: Any) -> None:
    """Write the JSON report to `out` and print table(report) (markdown) last."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f'wrote {out}\n')
    print(table(report))


def parse_size(text: str) -> tuple[int, int]:
    width, height = text.lower().split('x')
    return int(width), int(height)


def add_node_arguments(parser: argparse.ArgumentParser) -> None:
    """The sensor, model and QoS options bench_e2e and scripts/soak.py share."""
    parser.add_argument('--device', default='cuda', choices=('cuda', 'cpu'))
    parser.add_argument('--beams', type=int, default=64, choices=(16, 32, 64))
    parser.add_argument('--depth-source', default='lidar', choices=('lidar', 'tof'))
    parser.add_argument('--warmup-s', type=float, default=5.0)
    parser.add_argument('--precision', default='fp16', choices=('fp32', 'fp16', 'bf16'))
    parser.add_argument('--no-cuda-graphs', action='store_true')
    parser.add_argument('--compile', action='store_true',
                        help='torch.compile the network (node parameter compile)')
    parser.add_argument('--channels-last', action='store_true')
    parser.add_argument('--node-defaults', action='store_true',
                        help="the node's default inference modes (the four options above ignored)")
    parser.add_argument('--reliability', default='reliable', choices=('reliable', 'best_effort'))
    parser.add_argument('--model-config', default=FALLBACK_MODEL,
                        help='JSON model config used when the default checkpoint is missing')
    parser.add_argument('--set', type=parse_setting, action='append', metavar='NAME=VALUE',
                        help='a completion_node parameter (VALUE parsed as YAML), repeatable')


def finish_node_arguments(args: argparse.Namespace) -> argparse.Namespace:
    """fp16 means nothing on the CPU: run fp32 there; --set pairs become a dict."""
    if args.device == 'cpu' and args.precision == 'fp16':
        args.precision = 'fp32'
    args.set = dict(args.set or ())
    return args


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_node_arguments(parser)
    parser.add_argument('--size', type=parse_size, action='append',
                        help='WxH, repeatable (default 1216x352)')
    parser.add_argument('--rate', type=float, action='append',
                        help='Hz, repeatable; 0 = as fast as the publisher can (default 30)')
    parser.add_argument('--duration-s', type=float, default=20.0)
    parser.add_argument('--split-frames', type=int, default=100)
    parser.add_argument('--out', type=Path, help='default bench/results/e2e_<device>.json')
    args = parser.parse_args(argv)
    args.size = args.size or [(1216, 352)]
    args.rate = args.rate or [30.0]
    return finish_node_arguments(args)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    report = report_header(args)
    name, domain_id = report['device'], 1 + os.getpid() % 101
    report.update({
        'input_reliability': args.reliability,
        'note': 'latency = receipt of depth - image header stamp (wall clock, one machine); '
                'inputs reliable because best-effort UDP loses fragments of MB-sized clouds',
        'runs': [], 'split_ms': {}})
    with tempfile.TemporaryDirectory() as workdir:
        for size in args.size:
            for rate in args.rate:
                print(f'--- {size[0]}x{size[1]} at {rate or "max"} Hz', flush=True)
                run = run_once(args, size, rate, Path(workdir), domain_id)
                print(json.dumps({k: v for k, v in run.items() if k != 'node_log_tail'}),
                      flush=True)
                report['runs'].append(run)
    for size in args.size:
        report['split_ms'][f'{size[0]}x{size[1]}'] = split_in_process(args, size,
                                                                     args.split_frames)
    write_report(report, args.out or BENCH / 'results' / f'e2e_{slug(name)}.json', table)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
