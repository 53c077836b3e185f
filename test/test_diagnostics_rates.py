"""/diagnostics tells the truth under load: three real processes over DDS (the benchmark's
sensor publisher at 30 Hz or flat out, completion_node, and the benchmark's probe here counting
the `depth` it receives); the output rate the node reports for windows inside the run is within
a few percent of the rate counted here over the same windows."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cspn_ros.demo import completion_parameters

BENCH = Path(__file__).resolve().parent.parent / 'bench'
sys.path.insert(0, str(BENCH))
from bench_e2e import Probe  # noqa: E402

W, H = 64, 48
WARMUP_S, DURATION_S = 6.0, 16.0
#: Largest relative difference between the mean reported and the mean counted rate.
TOLERANCE = 0.05


@pytest.mark.parametrize('rate', [30.0, 0.0], ids=['30 Hz', 'flat out'])
def test_reported_output_rate_is_the_counted_rate(rate, ros_domain, start_node, tmp_path):
    parameters = completion_parameters('lidar', 'classical', 'cpu')
    parameters.update(publish_sparse=False, warmup_size=[W, H], input_reliability='best_effort')
    node = start_node('completion_node', **parameters)
    probe = Probe(ros_domain)
    try:
        # Discovery on a loaded 2-core machine can take seconds: start once the node's reports
        # reach the probe, so every report of the measured run is counted.
        assert probe.wait_for_diagnostics(60.0), node.log()
        summary = tmp_path / 'publisher.json'
        publisher = subprocess.run(
            [sys.executable, str(BENCH / 'e2e_publisher.py'), '--width', str(W), '--height',
             str(H), '--beams', '16', '--rate', str(rate), '--frames', '4', '--warmup-s',
             str(WARMUP_S), '--duration-s', str(DURATION_S), '--reliability', 'best_effort',
             '--summary', str(summary)],
            timeout=300, capture_output=True, text=True)
        assert publisher.returncode == 0, publisher.stdout + publisher.stderr + node.log()
        run = json.loads(summary.read_text())
        time.sleep(1.5)  # the run's last report arrives
        reports = probe.reports_within(run['measure_start_ns'], run['measure_end_ns'])
        stamps = [stamp for stamp, _ in probe.diagnostics_history]
        receipts = np.array([receipt for _, _, receipt in probe.receipts])
    finally:
        probe.close()
    assert len(reports) >= 5, (run['measure_start_ns'], run['measure_end_ns'], stamps, reports,
                               node.log())
    reported, counted = [], []
    for stamp, _, values in reports:
        window_ns = float(values['rate window (s)']) * 1e9
        reported.append(float(values['output rate (Hz)']))
        counted.append(np.count_nonzero((receipts > stamp - window_ns) & (receipts <= stamp))
                       * 1e9 / window_ns)
    reported, counted = np.array(reported), np.array(counted)
    assert counted.min() > 1.0, (counted, node.log())  # the node published all along
    assert abs(reported.mean() - counted.mean()) <= TOLERANCE * counted.mean(), (reported,
                                                                                   counted)
    print(f'{rate or "flat out"}: reported {reported.mean():.2f} Hz, counted '
          f'{counted.mean():.2f} Hz over {len(reports)} windows')
