"""The completion node's 1 Hz /diagnostics: one DiagnosticStatus per camera.

The figures are the core's (`core.diagnostics.CompletionDiagnostics`, the matcher's counters,
the self-check); this module adds the node's state, names the likely cause of an ERROR (stamps
that never pair, or frames that all fail) or a WARN (silent inputs), logs both (throttled),
and publishes the array. Status names: `<node>: depth completion` for the single camera,
`<node>: depth completion <camera>` for each camera of a rig.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable, Mapping

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.logging import LoggingSeverity
from rclpy.node import Node

from cspn_ros.core.diagnostics import ERROR, OK, WARN, silent_topics
from cspn_ros.core.input_check import silent_input_hint
from cspn_ros.nodes.hardware import hardware_id
from cspn_ros.nodes.messages import diagnostic_array_msg, diagnostic_status_msg, header_msg


class DiagnosticsReport:
    """Publishes /diagnostics for a node's cameras.

    lock: guards the channels' diagnostics and self-checks (the worker writes them);
    log(severity, text): the node's throttled log; option(name): a parameter's value."""

    def __init__(self, node: Node, lock: threading.Lock,
                 log: Callable[[LoggingSeverity, str], None], option: Callable[[str], Any]
                 ) -> None:
        self.node = node
        self._lock = lock
        self._log = log
        self._option = option
        self.publisher = node.create_publisher(DiagnosticArray, '/diagnostics', 10)

    def publish(self, channels: Mapping[str, Any], stale_dropped: Mapping[str, int],
                completer: Any, model_source: str, active: bool) -> None:
        """One DiagnosticArray: a status per channel (`core.rig.CameraChannel`);
        stale_dropped: per camera, frames dropped for a newer one."""
        now = time.monotonic()
        common = {'device': completer.device, 'precision': completer.precision,
                  'propagation': completer.config.propagation,
                  'propagation steps': completer.steps, 'checkpoint': model_source,
                  'state': 'active' if active else 'inactive'}
        name = f'{self.node.get_fully_qualified_name()}: depth completion'
        statuses = [diagnostic_status_msg(
            f'{name} {camera}' if camera else name, hardware_id(completer.device),
            *self._camera_status(channel, now, stale_dropped[camera], common, active))
            for camera, channel in channels.items()]
        self.publisher.publish(diagnostic_array_msg(
            header_msg(self.node.get_clock().now().nanoseconds, ''), statuses))

    def _camera_status(self, channel: Any, now: float, stale_dropped: int,
                       common: Mapping[str, Any], active: bool) -> tuple[int, str, dict]:
        """(level, message, values) of one camera; logs (throttled) when not OK."""
        prefix = f'{channel.name}: ' if channel.name else ''
        extra = {**common, 'stale images never taken (DDS)': channel.images_skipped}
        if channel.name:  # a rig: how many cameras its last frame was completed with
            extra['cameras in last batch'] = channel.last_batch
        if channel.pipeline.last_input_coverage is not None:
            extra.update(channel.pipeline.last_input_coverage.values())
        stats = channel.matcher.stats
        stats['received'] = {channel.topics[t]: n for t, n in stats['received'].items()}
        self_check = channel.self_check
        with self._lock:
            if channel.pipeline.holdout is not None:
                extra.update(self_check.diagnostic_values())
            level, message, values = channel.diagnostics.report(
                now, stats, stale_dropped, extra, channel.images_skipped)
            silent = silent_topics(now, channel.diagnostics.last_arrival,
                                   channel.diagnostics.timeout_s)
            only_fallback = self_check.fallback_active and level == OK  # logged once
            if self_check.fallback_active:
                fallback = ('fallback: publishing the classical fill, the model is worse on '
                            'held-out points (self-check)')
                message = fallback if level == OK else f'{message}; {fallback}'
                level = max(level, WARN)
        if not active:
            return OK, 'inactive', values
        if level == ERROR:
            if now - channel.last_match > channel.diagnostics.timeout_s:
                message += (f': no paired frame, header stamps are further apart than '
                            f'slop={self._option("slop"):g} s (unmatched '
                            f'{stats["dropped_unmatched"]}, out of order '
                            f'{stats["dropped_out_of_order"]})')
            else:
                message += f': every frame fails, last error: {values["last error"]}'
            self._log(LoggingSeverity.ERROR, prefix + message)
        elif level == WARN and not only_fallback:
            message += silent_input_hint({topic: self.node.count_publishers(topic)
                                          for topic in silent},
                                         self._option('input_reliability'))
            self._log(LoggingSeverity.WARN, prefix + message)
        return level, message, values

    def destroy(self) -> None:
        """Destroy the publisher."""
        self.node.destroy_publisher(self.publisher)
