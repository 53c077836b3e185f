"""Soak test: completion_node fed at a steady rate for a long time; memory and latency must stay
flat.

The processes of bench/bench_e2e.py (synthetic publisher, completion_node, depth probe) run
for `--minutes`. Every `--sample-s` seconds it samples the node's host RSS (psutil, else
/proc/<pid>/status VmRSS) and its GPU memory (nvidia-smi --query-compute-apps for the node's
pid, on CUDA); latency (image stamp -> receipt of depth) is summarised per minute. Writes
bench/results/soak_<device>.json with the samples and least-squares slopes (RSS and GPU memory
in MiB per hour, latency p50 in ms per hour) over the run after its first minute.

  nice -n 10 python scripts/soak.py --device cpu --size 320x240 --beams 16 --rate 5 --minutes 10
  python3 scripts/soak.py --device cuda --size 1216x352 --rate 30 --minutes 10
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
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / 'bench')]

from cspn_ros.nodes.transport import large_data_environment  # noqa: E402
from bench_e2e import (DRAIN_S, Probe, add_node_arguments, device_name,  # noqa: E402
                       finish_node_arguments, latency_stats, parse_size, start_processes,
                       wait_publisher)

MIB = 1024 * 1024


def host_rss_mib(pid: int) -> float:
    """Resident set size of process pid in MiB."""
    try:
        import psutil
        return psutil.Process(pid).memory_info().rss / MIB
    except ImportError:
        status = Path(f'/proc/{pid}/status').read_text()
        return int(re.search(r'VmRSS:\s+(\d+) kB', status).group(1)) / 1024


def gpu_memory_mib(pid: int) -> Optional[float]:
    """GPU memory (MiB) nvidia-smi reports for pid, None without nvidia-smi or a context."""
    try:
        output = subprocess.run(['nvidia-smi', '--query-compute-apps=pid,used_memory',
                                 '--format=csv,noheader,nounits'], capture_output=True,
                                text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in output.splitlines():
        fields = [field.strip() for field in line.split(',')]
        if len(fields) == 2 and fields[0] == str(pid):
            return float(fields[1])
    return None


def slope_per_hour(times_s: list[float], values: list[Optional[float]]) -> Optional[float]:
    """Least-squares slope of values over times, per hour (None with fewer than 3 values)."""
    pairs = [(t, v) for t, v in zip(times_s, values) if v is not None]
    if len(pairs) < 3:
        return None
    t, v = np.array(pairs).T
    return round(float(np.polyfit(t / 3600.0, v, 1)[0]), 3)


def per_minute(probe: Probe, start_ns: int, end_ns: int) -> list[dict[str, Any]]:
    """Latency statistics (ms) and frames received for each whole minute of the window."""
    minutes = []
    for begin in range(start_ns, end_ns, 60 * 10**9):
        latency = probe.latencies_ms(begin, min(begin + 60 * 10**9, end_ns))
        minutes.append({'minute': len(minutes), 'received': int(latency.size),
                        **latency_stats(latency)})
    return minutes


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_node_arguments(parser)
    parser.add_argument('--size', type=parse_size, default=(1216, 352), help='WxH')
    parser.add_argument('--rate', type=float, default=30.0)
    parser.add_argument('--minutes', type=float, default=10.0)
    parser.add_argument('--sample-s', type=float, default=10.0)
    parser.add_argument('--out', type=Path, help='default bench/results/soak_<device>.json')
    return finish_node_arguments(parser.parse_args(argv))


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    os.environ.update(large_data_environment())  # the probe here and every process started
    name = device_name(args.device)
    domain_id = 1 + os.getpid() % 101
    duration_s = args.minutes * 60
    samples: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as workdir:
        probe = Probe(domain_id)
        node, publisher, summary_path = start_processes(args, args.size, args.rate, duration_s,
                                                        Path(workdir), domain_id)
        pid = node.process.pid
        try:
            started = time.monotonic()
            while publisher.poll() is None and node.running():
                elapsed = time.monotonic() - started
                samples.append({'t_s': round(elapsed, 1), 'rss_mib': round(host_rss_mib(pid), 1),
                                'gpu_mib': gpu_memory_mib(pid) if args.device == 'cuda'
                                else None})
                time.sleep(max(0.0, args.sample_s - (time.monotonic() - started - elapsed)))
            wait_publisher(node, publisher, timeout_s=60)
            time.sleep(DRAIN_S)
            summary = json.loads(summary_path.read_text())
            start_ns, end_ns = summary['measure_start_ns'], summary['measure_end_ns']
            latency = probe.latencies_ms(start_ns, end_ns)
            minutes = per_minute(probe, start_ns, end_ns)
            diagnostics = probe.latest_within(start_ns, end_ns)  # while the publisher ran
        finally:
            node.stop()
            probe.close()
    steady = [s for s in samples if s['t_s'] >= 60 + args.warmup_s]
    times = [s['t_s'] for s in steady]
    report = {
        'device': name, 'date': datetime.datetime.now().isoformat(timespec='seconds'),
        'size': f'{args.size[0]}x{args.size[1]}', 'depth_source': args.depth_source,
        'beams': args.beams, 'points': summary['points'], 'rate_hz': args.rate,
        'minutes': args.minutes, 'precision': args.precision,
        'published': summary['published'], 'received': int(latency.size),
        'dropped': summary['published'] - int(latency.size), 'latency_ms': latency_stats(latency),
        'slopes_per_hour_after_first_minute': {
            'rss_mib': slope_per_hour(times, [s['rss_mib'] for s in steady]),
            'gpu_mib': slope_per_hour(times, [s['gpu_mib'] for s in steady]),
            'latency_p50_ms': slope_per_hour([60 * m['minute'] for m in minutes[1:]],
                                             [m.get('p50') for m in minutes[1:]])},
        'rss_mib_first_last': [steady[0]['rss_mib'], steady[-1]['rss_mib']] if steady else None,
        'per_minute': minutes, 'samples': samples, 'node_diagnostics': diagnostics}
    slug = re.sub(r'[^a-z0-9]+', '_', name.lower()).strip('_')
    out = args.out or ROOT / 'bench' / 'results' / f'soak_{slug}.json'
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items()
                      if k not in ('samples', 'node_diagnostics')}, indent=1))
    print(f'wrote {out}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
