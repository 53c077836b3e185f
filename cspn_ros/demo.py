"""The README's first command: `python -m cspn_ros.demo` (two real ROS 2 processes over DDS).

Starts completion_node and synthetic_source_node as subprocesses in a ROS domain of their own,
collects `image`, `ground_truth/depth`, `depth` and `depth/sparse` in-process, then prints frames
in/out, latency (image stamp -> receipt) and RMSE/MAE against ground truth for the model, the
plain sparse input (scored only at its own valid pixels) and the classical baseline
(`classical_fill` of the received sparse input); saves RGB | sparse | dense | error to
out/demo.png. Exits non-zero with a message when something fails.

`NodeProcess` and `BackgroundNode` are also the test suite's process and in-process node helpers.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import yaml

from cspn_ros.nodes.transport import large_data_environment

PACKAGE_ROOT = Path(__file__).resolve().parent
#: Seconds the node may take after the last image before the demo stops waiting.
DRAIN_S = 10.0
#: No depth for this long (s) after the scored frames: the node is done.
QUIET_S = 5.0


class NodeProcess:
    """`python -m cspn_ros.nodes.<name>` with a parameter file (plus `ros_args`, e.g. remapping
    rules); stdout+stderr go to a log file."""

    def __init__(self, name: str, parameters: dict[str, Any], workdir: Path,
                 env: Optional[dict[str, str]] = None, ros_args: Sequence[str] = ()) -> None:
        self.name = name
        params_file = Path(workdir) / f'{name}_params.yaml'
        params_file.write_text(yaml.safe_dump({'/**': {'ros__parameters': parameters}}))
        self.log_path = Path(workdir) / f'{name}.log'
        self._log = self.log_path.open('w')
        self.process = subprocess.Popen(
            [sys.executable, '-m', f'cspn_ros.nodes.{name}', '--ros-args', '--params-file',
             str(params_file), *ros_args],
            stdout=self._log, stderr=subprocess.STDOUT, env=dict(env or os.environ))

    def running(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        """Everything the process wrote so far."""
        return self.log_path.read_text()

    def stop(self, timeout: float = 10.0) -> Optional[int]:
        """Ctrl-C the process (kill it if it does not exit within timeout s); its return code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


class BackgroundNode:
    """An rclpy node in its own context and ROS domain, spun by a daemon thread."""

    def __init__(self, name: str, domain_id: int) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node(name, context=self.context)
        self._executor = SingleThreadedExecutor(context=self.context)
        self._executor.add_node(self.node)
        self._thread = threading.Thread(target=self._executor.spin, daemon=True)
        self._thread.start()

    def close(self) -> None:
        import rclpy
        self._executor.shutdown()
        self._thread.join()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


class Collector(BackgroundNode):
    """Keeps, per image stamp (ns), the rgb, ground truth, dense depth (+ receipt time) and the
    sparse input; depths as float32 metres with 0 = missing."""

    def __init__(self, domain_id: int) -> None:
        super().__init__('demo_collector', domain_id)
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        from cspn_ros.core.conversions import image_to_depth, image_to_rgb, stamp_to_ns
        self.frames: dict[str, dict[int, Any]] = {'image': {}, 'ground_truth/depth': {},
                                                  'depth': {}, 'depth/sparse': {}}
        self.latency_s: dict[int, float] = {}
        self.last_receipt: dict[str, float] = {}
        self.changed = threading.Condition()
        qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        for topic in self.frames:
            convert = image_to_rgb if topic == 'image' else image_to_depth

            def callback(msg, topic=topic, convert=convert):
                stamp = stamp_to_ns(msg.header.stamp)
                if topic == 'depth':
                    self.latency_s[stamp] = (time.time_ns() - stamp) * 1e-9
                self.last_receipt[topic] = time.monotonic()
                with self.changed:
                    self.frames[topic][stamp] = np.array(convert(msg))
                    self.changed.notify_all()
            self.node.create_subscription(Image, topic, callback, qos)

    def wait(self, predicate, timeout: float) -> bool:
        """Block until predicate() or timeout seconds; predicate() is checked on every received
        message and at least every 0.1 s (for graph conditions such as publisher counts)."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.changed.wait(min(remaining, 0.1))
        return True


def completion_parameters(depth_source: str, checkpoint: str, device: str) -> dict[str, Any]:
    """config/completion.yaml with the demo's choices and the synthetic rig's extrinsic as
    parameters (the demo knows its rig; with tf2_ros the source's /tf_static says the same)."""
    from cspn_ros.data.synthetic import (DEFAULT_LIDAR_ROTATION, DEFAULT_LIDAR_TRANSLATION,
                                         DEFAULT_TOF_ROTATION, DEFAULT_TOF_TRANSLATION)
    config = PACKAGE_ROOT.parent / 'config' / 'completion.yaml'
    if not config.is_file():  # an installed package: share/cspn_ros/config
        from ament_index_python.packages import get_package_share_directory
        config = Path(get_package_share_directory('cspn_ros')) / 'config' / 'completion.yaml'
    parameters = yaml.safe_load(config.read_text())['/**']['ros__parameters']
    # reliable inputs: a 64-beam cloud (~2 MB) over best-effort loopback UDP loses fragments
    parameters.update(depth_source=depth_source, checkpoint=checkpoint, device=device,
                      publish_sparse=True, input_reliability='reliable')
    parameters['extrinsic.from_tf'] = False
    if depth_source == 'tof':
        parameters.update({'extrinsic.translation': list(DEFAULT_TOF_TRANSLATION),
                           'extrinsic.rotation': list(DEFAULT_TOF_ROTATION),
                           'tof.registered': False, 'max_depth': 10.0})
    else:
        parameters.update({'extrinsic.translation': list(DEFAULT_LIDAR_TRANSLATION),
                           'extrinsic.rotation': list(DEFAULT_LIDAR_ROTATION),
                           'max_depth': 80.0})
    return parameters


def score(collector: Collector,
          window: list[int]) -> tuple[dict[str, dict[str, float]], list[int]]:
    """Mean metrics per method over the frames of window (image stamps) with output and ground
    truth; those stamps."""
    from cspn_ros.model.fill import classical_fill
    from cspn_ros.train.metrics import compute_metrics, mean_metrics
    frames = collector.frames
    stamps = [s for s in window if s in frames['depth'] and s in frames['ground_truth/depth']
              and s in frames['depth/sparse']]
    per_method: dict[str, list] = {'model': [], 'sparse input': [], 'classical baseline': []}
    for stamp in stamps:
        gt, sparse = frames['ground_truth/depth'][stamp], frames['depth/sparse'][stamp]
        per_method['model'].append(compute_metrics(frames['depth'][stamp], gt))
        per_method['sparse input'].append(compute_metrics(sparse, np.where(sparse > 0, gt, 0)))
        per_method['classical baseline'].append(compute_metrics(classical_fill(sparse), gt))
    return {name: mean_metrics(values) for name, values in per_method.items()}, stamps


def save_picture(collector: Collector, stamp: int, path: Path, max_depth: float) -> None:
    """RGB | sparse (dilated for visibility) | dense | |dense - gt| of one frame as a PNG."""
    import cv2
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    from cspn_ros.core.colorize import colorize_depth
    frames = collector.frames
    rgb = frames['image'].get(stamp)
    gt, dense = frames['ground_truth/depth'][stamp], frames['depth'][stamp]
    sparse = cv2.dilate(frames['depth/sparse'][stamp], np.ones((3, 3), np.uint8))
    error = np.where((gt > 0) & (dense > 0), np.abs(dense - gt), np.nan)
    panels = [('RGB', rgb if rgb is not None else np.zeros((*gt.shape, 3), np.uint8), None),
              ('sparse input', colorize_depth(sparse, 0.1, max_depth)[..., ::-1], None),
              ('dense output', colorize_depth(dense, 0.1, max_depth)[..., ::-1], None),
              ('|dense - ground truth| (m)', error, 'magma')]
    figure, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    for axis, (title, image, cmap) in zip(axes, panels):
        shown = axis.imshow(image, cmap=cmap)
        axis.set_title(title)
        axis.axis('off')
        if cmap:
            figure.colorbar(shown, ax=axis, fraction=0.035)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def table(rows: list[tuple[str, ...]]) -> str:
    """Left-aligned text table; the first row is the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ['  '.join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, '  '.join('-' * w for w in widths))
    return '\n'.join(lines)


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--frames', type=int, default=30,
                        help='frames scored, counted from the first completed one')
    parser.add_argument('--depth-source', choices=('lidar', 'tof'), default='lidar')
    parser.add_argument('--checkpoint', default='',
                        help="'' = packaged default, 'classical', or a checkpoint path")
    parser.add_argument('--device', choices=('cpu', 'cuda', 'auto'), default='auto')
    parser.add_argument('--rate', type=float, default=3.0,
                        help='source frame rate (Hz); a 2-core CPU completes ~4 frames/s at 320x240')
    parser.add_argument('--width', type=int, default=320)
    parser.add_argument('--height', type=int, default=240)
    parser.add_argument('--lidar-beams', type=int, choices=(16, 32, 64), default=32,
                        help='fewer beams, smaller clouds (a 64-beam sweep is ~2 MB per frame)')
    parser.add_argument('--scene', choices=('outdoor', 'indoor'), default=None,
                        help='default: outdoor for lidar, indoor for tof')
    parser.add_argument('--startup-timeout', type=float, default=60.0, help='seconds')
    parser.add_argument('--out', type=Path, default=Path('out/demo.png'))
    return parser.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    from cspn_ros.model.completer import DEFAULT_CHECKPOINT
    checkpoint, note = args.checkpoint, ''
    if checkpoint == '' and not DEFAULT_CHECKPOINT.is_file():
        checkpoint = 'classical'
        note = 'default checkpoint not trained yet: showing classical baseline as the model'
    scene = args.scene or ('outdoor' if args.depth_source == 'lidar' else 'indoor')
    domain_id = 1 + os.getpid() % 101
    os.environ.update(large_data_environment())  # this process's collector and the nodes
    env = {**os.environ, 'ROS_DOMAIN_ID': str(domain_id),
           'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST'}
    parameters = completion_parameters(args.depth_source, checkpoint, args.device)
    print(f'cspn_ros demo: {args.frames} frames, {args.depth_source}, {scene} scene, '
          f'{args.width}x{args.height} @ {args.rate:g} Hz, checkpoint {checkpoint!r}, '
          f'ROS_DOMAIN_ID={domain_id}', flush=True)

    processes: list[NodeProcess] = []
    collector = None
    with tempfile.TemporaryDirectory(prefix='cspn_demo_') as workdir:
        try:
            collector = Collector(domain_id)
            completion = NodeProcess('completion_node', parameters, Path(workdir), env)
            processes.append(completion)
            if not collector.wait(lambda: collector.node.count_publishers('depth') > 0
                                  or not completion.running(), args.startup_timeout) \
                    or not completion.running():
                return fail('completion_node did not start', completion)
            source = NodeProcess('synthetic_source_node', {
                'rate': args.rate, 'width': args.width, 'height': args.height,
                'scene': scene, 'lidar_beams': args.lidar_beams,
                'publish_lidar': args.depth_source == 'lidar',
                'publish_tof': args.depth_source == 'tof'}, Path(workdir), env)
            processes.append(source)
            # frames count from the first completed one: earlier ones may predate discovery
            outputs, images = collector.frames['depth'], collector.frames['image']
            collector.wait(lambda: outputs or not source.running(), args.startup_timeout)
            if not outputs:
                return fail('no dense depth within the start-up timeout', completion)
            first = min(outputs)

            def frames_in() -> list[int]:
                return [s for s in list(images) if s >= first]

            collector.wait(lambda: len(frames_in()) >= args.frames or not source.running(),
                           3.0 * args.frames / args.rate + DRAIN_S)
            window = frames_in()[:args.frames]
            collector.wait(lambda: all(s in outputs for s in window)
                           or time.monotonic() - collector.last_receipt['depth'] > QUIET_S,
                           DRAIN_S)
            source.stop()
            if not completion.running():
                return fail('completion_node exited early', completion)
            metrics, stamps = score(collector, window)
            if not stamps:
                return fail('no dense depth with ground truth was received', completion)
            save_picture(collector, stamps[-1], args.out, parameters['max_depth'])
            latency = np.array([collector.latency_s[s] for s in stamps]) * 1000.0
            frames_out = sum(s in outputs for s in window)
            report(args, len(window), frames_out, latency, metrics, note)
            return 0
        except KeyboardInterrupt:
            print('interrupted', file=sys.stderr)
            return 130
        finally:
            for process in processes:
                process.stop()
            if os.environ.get('CSPN_DEMO_LOGS'):
                for process in processes:
                    print(process.log())
            if collector is not None:
                collector.close()


def report(args: argparse.Namespace, frames_in: int, frames_out: int, latency_ms: np.ndarray,
           metrics: dict[str, dict[str, float]], note: str) -> None:
    print()
    print(table([('frames in (image)', 'frames out (depth)', 'latency p50 (ms)',
                  'latency p95 (ms)'),
                 (str(frames_in), str(frames_out), f'{np.percentile(latency_ms, 50):.0f}',
                  f'{np.percentile(latency_ms, 95):.0f}')]))
    print()
    rows = [('method', 'RMSE (m)', 'MAE (m)', 'd1.25', 'frames', 'scored at')]
    where = {'model': 'every ground-truth pixel',
             'sparse input': 'its own valid pixels only',
             'classical baseline': 'every ground-truth pixel'}
    for name, values in metrics.items():
        rows.append((name, f'{values["rmse"]:.3f}', f'{values["mae"]:.3f}',
                     f'{values["d125"]:.3f}', str(values['frames']), where[name]))
    print(table(rows))
    if note:
        print(f'\nNOTE: {note}')
    print(f'\npicture: {args.out}')


def fail(message: str, process: NodeProcess) -> int:
    """Print message and the end of the process's log; exit status 1."""
    tail = '\n'.join(process.log().splitlines()[-20:])
    print(f'demo failed: {message}\n--- last lines of {process.name} ---\n{tail}',
          file=sys.stderr)
    return 1


if __name__ == '__main__':
    raise SystemExit(main())
