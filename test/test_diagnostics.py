"""core.diagnostics (pure: rate meter, percentile tracker, health levels, report) and the
/diagnostics a real completion_node process publishes."""
from __future__ import annotations

import platform
import socket
import time

import numpy as np
import pytest
from conftest import diagnostic_level, diagnostic_values, plane_frame, publish_until
from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import CameraInfo, Image, PointCloud2

from cspn_ros.core.diagnostics import (ERROR, OK, WARN, CompletionDiagnostics,
                                       PercentileTracker, RateMeter, assess)


def test_rate_meter_counts_the_events_of_its_window():
    rng = np.random.default_rng()
    window = float(rng.uniform(0.5, 3.0))
    meter = RateMeter(window)
    times = np.sort(rng.uniform(0, 20, 400))
    for t in times:
        meter.tick(float(t))
    for now in np.sort(rng.uniform(times[-1], times[-1] + 4, 20)):
        expected = sum(1 for t in times if now - window < t <= now) / window
        assert meter.rate(float(now)) == pytest.approx(expected)
    with pytest.raises(ValueError):
        RateMeter(0)


def test_rate_meter_reads_a_young_stream_at_its_own_rate():
    # A node publishing 130 Hz for 2 s (a flood that just began) read 52 Hz with a 5 s window.
    meter = RateMeter(5.0)
    for i in range(260):
        meter.tick(100.0 + i / 130)
    assert meter.rate(102.0) == pytest.approx(130, rel=0.01)
    assert meter.rate(107.05) == 0.0  # stopped: the window emptied
    for i in range(130):  # the same after a gap: the new stream's own rate
        meter.tick(200.0 + i / 130)
    assert meter.rate(201.0) == pytest.approx(130, rel=0.01)
    meter.tick(300.0)  # a single event reads at most 1 per MIN_SPAN_S
    assert meter.rate(300.1) == pytest.approx(1.0)


def test_percentile_tracker_keeps_only_the_last_samples():
    rng = np.random.default_rng()
    capacity = int(rng.integers(5, 50))
    tracker = PercentileTracker(capacity)
    assert all(np.isnan(v) for v in tracker.percentiles().values())
    samples = rng.exponential(0.02, 300)
    for value in samples:
        tracker.add(value)
    assert len(tracker) == capacity
    recent = np.sort(samples[-capacity:].astype(np.float64))
    for p, value in tracker.percentiles((0, 50, 95, 99, 100)).items():
        rank = p / 100 * (capacity - 1)  # linear interpolation between closest ranks
        low, high = int(np.floor(rank)), int(np.ceil(rank))
        expected = recent[low] + (recent[high] - recent[low]) * (rank - low)
        assert value == pytest.approx(expected)


def test_assess_levels():
    arrivals = {'/image': 9.8, '/points': 9.9}
    assert assess(10.0, arrivals, 2.0, 9.9, 1.0, 0.0) == (OK, 'running')
    level, message = assess(10.0, {**arrivals, '/points': 8.5}, 2.0, 9.9, 1.0, 0.0)
    assert level == WARN and message.startswith('nothing received on /points')
    level, message = assess(10.0, {**arrivals, '/image': None}, None, None, 1.0, 0.0)
    assert level == WARN and '/image' in message and '/points' not in message
    # inputs arrive but nothing was published for longer than the timeout
    assert assess(10.0, arrivals, 2.0, 7.0, 1.0, 0.0)[0] == ERROR
    assert assess(10.0, arrivals, 2.0, None, 1.0, 0.0)[0] == ERROR
    # ... but not when the inputs only just came back
    assert assess(10.0, arrivals, 9.5, 3.0, 1.0, 0.0)[0] == OK
    level, message = assess(10.0, arrivals, 2.0, 9.9, 1.0, 0.8)
    assert level == WARN and '80% of paired frames dropped' in message


def test_completion_diagnostics_report():
    rng = np.random.default_rng()
    diagnostics = CompletionDiagnostics(('/image', '/points'), timeout_s=1.0, window_s=2.0)
    latencies = rng.uniform(0.01, 0.05, 30)
    for i, latency in enumerate(latencies):
        now = 0.1 * i
        diagnostics.received('/image', now)
        diagnostics.received('/points', now)
        diagnostics.published_frame(now, latency, {'complete': 0.02, 'publish': 0.001})
    diagnostics.error('frame skipped, bad input: x', 2.9)
    stats = {'received': {'/image': 30, '/points': 30}, 'matched': 24, 'dropped_unmatched': 6,
             'resets': 0}
    level, message, values = diagnostics.report(3.0, stats, 4, {'device': 'cpu'})
    assert (level, message) == (OK, 'running')
    # 19 events (1.1 s ... 2.9 s) in the 2 s window ending at 3.0 s
    assert values['rate /image (Hz)'] == '9.50' and values['rate /points (Hz)'] == '9.50'
    assert values['received /image'] == '30' and values['dropped_unmatched'] == '6'
    assert values['pairing success'] == '0.800' and values['stale dropped'] == '4'
    assert values['published'] == '30' and values['failed'] == '1'
    assert float(values['latency p50 (ms)']) == pytest.approx(1e3 * np.median(latencies),
                                                              abs=0.06)
    assert float(values['latency p99 (ms)']) <= 1e3 * latencies.max() + 0.05
    assert values['time complete p50 (ms)'] == '20.00' and 'time publish p50 (ms)' in values
    assert values['last error'] == 'frame skipped, bad input: x'
    assert values['last error age (s)'] == '0.1' and values['device'] == 'cpu'
    # 100 more images overwritten in DDS before being taken: a share of all offered frames
    level, message, _ = diagnostics.report(3.0, stats, 4 + 100, never_taken=100)
    assert level == WARN and message.startswith('84% of paired frames dropped'), message
    # the cloud stops: WARN naming it; the rates fall as the window empties
    for i in range(30, 50):
        diagnostics.received('/image', 0.1 * i)
    level, message, values = diagnostics.report(5.0, stats, 4)
    assert level == WARN and '/points' in message and '/image' not in message
    assert values['rate /points (Hz)'] == '0.00'


W, H = 48, 36


def test_node_publishes_diagnostics_whose_counters_move(start_node, ros_node):
    node = start_node('completion_node', checkpoint='classical')
    diagnostics = ros_node.inbox(DiagnosticArray, '/diagnostics')
    depth = ros_node.inbox(Image, 'depth')
    publishers = {t: ros_node.publisher(m, t) for t, m in
                  (('image', Image), ('camera_info', CameraInfo), ('points', PointCloud2))}

    def publish(i):
        for topic, msg in plane_frame(time.time_ns(), W, H).items():
            if topic in publishers:
                publishers[topic].publish(msg)

    assert publish_until(publish, depth) is not None, node.log()
    first = publish_until(publish, diagnostics,
                          lambda m: int(diagnostic_values(m)['published']) >= 1)
    assert first is not None, node.log()
    later = publish_until(publish, diagnostics, lambda m: int(diagnostic_values(m)['published'])
                          >= int(diagnostic_values(first)['published']) + 3)
    assert later is not None, node.log()
    values = diagnostic_values(later)
    for key in ('rate /image (Hz)', 'rate /camera_info (Hz)', 'rate /points (Hz)',
                'received /image', 'matched', 'pairing success', 'dropped_unmatched',
                'dropped_out_of_order', 'resets', 'stale dropped', 'published', 'failed',
                'latency p50 (ms)', 'latency p95 (ms)', 'latency p99 (ms)',
                'time wait p50 (ms)', 'time wait p95 (ms)', 'time serialize p50 (ms)',
                'time publish p50 (ms)', 'time publish p95 (ms)', 'last error', 'device',
                'propagation', 'checkpoint'):
        assert key in values, key
    stages = [key for key in values if key.startswith('time ')]
    assert len(stages) >= 4, stages  # the pipeline's own stages, then serialize and publish
    assert int(values['received /image']) > int(diagnostic_values(first)['received /image'])
    assert float(values['rate /image (Hz)']) > 0 and values['propagation'] == 'classical'
    assert 0 <= float(values['latency p50 (ms)']) < 5000
    # the time before work is part of the latency (stamp -> publish), the rest is work
    assert 0 <= float(values['time wait p50 (ms)']) <= float(values['latency p50 (ms)']) + 0.1
    assert later.status[0].name == '/completion_node: depth completion'
    assert later.status[0].hardware_id == f'{socket.gethostname()}/cpu {platform.machine()}'
    assert diagnostic_level(later) in (OK, WARN)
