"""Faults the completion node survives without a restart: the device/out-of-memory policy (pure
and on the core's RigCompleter), sensor loss and return, overload (stale frames dropped, latency
bounded) and the clock jumping back under use_sim_time (real processes over DDS)."""
from __future__ import annotations

import itertools
import re
import threading
import time

import numpy as np
import pytest
import torch
from conftest import diagnostic_level, diagnostic_values, plane_frame, publish_until
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import Log
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, Image, PointCloud2

from cspn_ros.core.conversions import stamp_to_ns
from cspn_ros.core.diagnostics import OK, WARN
from cspn_ros.core.pipeline import CompletionPipeline
from cspn_ros.core.rig import RigCompleter, after_out_of_memory
from cspn_ros.model.completer import DepthCompleter
from cspn_ros.nodes.messages import stamp_msg
from cspn_ros.nodes.parameters import StartupError, choose_device

INPUT_TYPES = {'image': Image, 'camera_info': CameraInfo, 'points': PointCloud2}


def test_choose_device():
    assert choose_device('auto', False, True) == ('cuda', '')
    assert choose_device('cpu', True, True) == ('cpu', '')
    assert choose_device('auto', False, False) == ('cpu', '')
    device, warning = choose_device('cuda', False, False)
    assert device == 'cpu' and 'not available' in warning
    for requested in ('cuda', 'auto'):
        with pytest.raises(StartupError, match='require_gpu'):
            choose_device(requested, True, False)
    with pytest.raises(StartupError, match='must be one of'):
        choose_device('tpu', False, True)


def test_after_out_of_memory():
    assert after_out_of_memory(1, False) == after_out_of_memory(1, True) == 'retry'
    assert after_out_of_memory(2, False) == 'cpu'
    assert after_out_of_memory(2, True) == 'skip'


class OutOfMemoryPipeline:
    """Wraps a pipeline; stage() raises CUDA out of memory while `failures` is positive."""

    def __init__(self, pipeline, failures: int) -> None:
        self.pipeline, self.failures, self.calls = pipeline, failures, 0

    def stage(self, *messages, **options):
        self.calls += 1
        if self.failures > 0:
            self.failures -= 1
            raise torch.cuda.OutOfMemoryError('CUDA out of memory (test)')
        return self.pipeline.stage(*messages, **options)

    def __getattr__(self, name):  # finish, completer: the wrapped pipeline's
        return getattr(self.pipeline, name)

    def __setattr__(self, name, value):  # the rig swaps the completer on its pipelines
        if name == 'completer':
            self.pipeline.completer = value
        object.__setattr__(self, name, value)


def test_out_of_memory_retries_then_falls_back_to_cpu_or_skips():
    real = CompletionPipeline(DepthCompleter.from_config('classical'), min_depth=0.1,
                              max_depth=100.0)
    frame = plane_frame(1_700_000_000 * 10**9, 32, 24)
    frames = {'': (frame['image'], frame['camera_info'], frame['points'])}
    wrapped = OutOfMemoryPipeline(real, failures=1)  # once: freed cache, retried
    rig = RigCompleter({'': wrapped})
    assert rig.complete(frames)[''].dense.shape == (24, 32) and wrapped.calls == 2
    old_completer = rig.completer
    wrapped = OutOfMemoryPipeline(real, failures=2)  # twice: on to the CPU
    rig = RigCompleter({'': wrapped})
    assert rig.complete(frames)[''].dense.shape == (24, 32) and wrapped.calls == 3
    assert rig.completer is not old_completer and rig.completer.device.type == 'cpu'
    assert real.completer is rig.completer
    wrapped = OutOfMemoryPipeline(real, failures=5)  # require_gpu: the frame fails
    rig = RigCompleter({'': wrapped}, require_gpu=True)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        rig.complete(frames)
    assert wrapped.calls == 2


W, H = 48, 36


class Sensors:
    """Publishes plane-scene frames on the node's inputs, stamped by `stamp_ns(i)`."""

    def __init__(self, ros_node, width=W, height=H, clock: bool = False):
        self.publishers = {t: ros_node.publisher(m, t) for t, m in INPUT_TYPES.items()}
        self.clock = ros_node.publisher(Clock, '/clock') if clock else None
        self.width, self.height = width, height
        self.sent: list[int] = []

    def publish(self, stamp_ns: int, topics=tuple(INPUT_TYPES)) -> None:
        if self.clock is not None:
            self.clock.publish(Clock(clock=stamp_msg(stamp_ns)))
        msgs = plane_frame(stamp_ns, self.width, self.height)
        for topic in topics:
            self.publishers[topic].publish(msgs[topic])
        self.sent.append(stamp_ns)


def after(stamp_ns: int):
    return lambda m: stamp_to_ns(m.header.stamp) > stamp_ns


def test_sensor_loss_is_named_and_output_resumes(start_node, ros_node):
    node = start_node('completion_node', checkpoint='classical', input_timeout=0.5)
    sensors = Sensors(ros_node)
    depth, rosout = ros_node.inbox(Image, 'depth'), ros_node.rosout()
    diagnostics = ros_node.inbox(DiagnosticArray, '/diagnostics')
    assert publish_until(lambda i: sensors.publish(time.time_ns()), depth) is not None, node.log()
    for lost in ('points', 'camera_info', 'image'):
        others = tuple(t for t in INPUT_TYPES if t != lost)
        warned = publish_until(lambda i: sensors.publish(time.time_ns(), others), rosout,
                               lambda m: m.level == Log.WARN
                               and f'nothing received on /{lost} ' in m.msg)
        assert warned is not None, f'no warning naming /{lost}\n{node.log()}'
        status = diagnostics.wait_for(lambda m: diagnostic_level(m) == WARN
                                      and f'/{lost}' in m.status[0].message, 5)
        assert status is not None, node.log()
        back = sensors.sent[-1]
        assert publish_until(lambda i: sensors.publish(time.time_ns()), depth,
                             after(back)) is not None, f'no output after /{lost} came back'
        recovered = publish_until(lambda i: sensors.publish(time.time_ns()), diagnostics,
                                  lambda m: stamp_to_ns(m.header.stamp) > back
                                  and diagnostic_level(m) == OK)
        assert recovered is not None, node.log()
    assert node.stop() == 0 and 'Traceback' not in node.log()


def test_overload_keeps_the_newest_frame_and_bounded_latency(start_node, ros_node):
    """Frames at 100 Hz into a deliberately slow model (~50-100 ms a frame on a CPU): stale
    frames are dropped and counted, and the latency stays bounded (no queue grows)."""
    width, height = 160, 120
    node = start_node('completion_node', model_config='{"width": 8, "steps": 256}',
                      device='cpu', publish_colorized=False, warmup_size=[width, height])
    sensors = Sensors(ros_node, width, height)
    received: list[tuple[int, int]] = []  # (receipt, stamp) ns
    arrived = threading.Condition()

    def on_depth(msg):
        with arrived:
            received.append((time.time_ns(), stamp_to_ns(msg.header.stamp)))
            arrived.notify_all()
    ros_node.node.create_subscription(Image, 'depth', on_depth, 10)
    diagnostics = ros_node.inbox(DiagnosticArray, '/diagnostics')
    deadline = time.monotonic() + 60
    while not received:  # discovery, model load and warm-up
        sensors.publish(time.time_ns())
        with arrived:
            arrived.wait_for(lambda: received, 0.1)
        assert time.monotonic() < deadline, node.log()
    start = len(received)
    burst = 300
    for i in range(burst):  # 3 s at 100 Hz
        sensors.publish(time.time_ns())
        time.sleep(0.01)  # pacing the publisher, not synchronisation
    last = sensors.sent[-1]
    with arrived:  # the newest frame is always completed
        assert arrived.wait_for(lambda: any(s == last for _, s in received), 20), node.log()
    latencies = np.array([(r - s) / 1e9 for r, s in received[start:]])
    assert 3 <= len(latencies) < burst // 2, len(latencies)  # most frames were dropped
    assert latencies.max() < 1.5, latencies  # a growing queue would reach seconds
    status = diagnostics.wait_for(lambda m: int(diagnostic_values(m)['published'])
                                  >= len(received), 5)
    assert status is not None, node.log()
    values = diagnostic_values(status)
    matched, published = int(values['matched']), int(values['published'])
    dropped, failed = int(values['stale dropped']), int(values['failed'])
    never_taken = int(values['stale images never taken (DDS)'])  # overwritten while busy
    assert dropped >= burst // 2 and never_taken > 0
    dropped_after_pairing = dropped - never_taken
    assert (published + dropped_after_pairing + failed <= matched
            <= published + dropped_after_pairing + failed + 1)
    assert int(values['received /image']) + never_taken <= len(sensors.sent)
    assert float(values['latency p99 (ms)']) < 1500
    if dropped > (matched + never_taken) / 2:  # dropped of all frames offered to the model
        assert diagnostic_level(status) == WARN and 'dropped as stale' in status.status[0].message
    shares = [int(share) for m in diagnostics.messages
              for share in re.findall(r'(\d+)% of paired frames dropped', m.status[0].message)]
    assert all(share <= 100 for share in shares), shares
    # Ctrl-C while frames keep coming: the frame in progress finishes, nothing fails, and every
    # log line still reaches /rosout (the worker stops before the context goes).
    stop = threading.Event()

    def keep_publishing():
        while not stop.is_set():
            sensors.publish(time.time_ns())
            time.sleep(0.01)  # pacing the publisher, not synchronisation
    flood = threading.Thread(target=keep_publishing)
    flood.start()
    try:
        assert node.stop() == 0
    finally:
        stop.set()
        flood.join()
    log = node.log()
    assert 'Traceback' not in log and 'Failed to publish log message' not in log, log
    assert 'frame skipped' not in log and 'processed ' in log, log


def test_clock_jump_back_with_sim_time_restarts_pairing(start_node, ros_node):
    node = start_node('completion_node', checkpoint='classical', use_sim_time=True)
    sensors = Sensors(ros_node, clock=True)
    depth, rosout = ros_node.inbox(Image, 'depth'), ros_node.rosout()
    first_loop = itertools.count(2_000 * 10**9, 10**8)
    assert publish_until(lambda i: sensors.publish(next(first_loop)), depth) is not None, \
        node.log()
    jumped_at = sensors.sent[-1]
    second_loop = itertools.count(1_000 * 10**9, 10**8)  # the bag starts over, 1000 s earlier
    resumed = publish_until(lambda i: sensors.publish(next(second_loop)), depth,
                            lambda m: stamp_to_ns(m.header.stamp) < jumped_at)
    assert resumed is not None, node.log()
    assert rosout.wait_for(lambda m: 'jumped back' in m.msg, 5) is not None
    assert node.stop() == 0 and 'Traceback' not in node.log()
