"""Executables stop cleanly on SIGINT even when started with SIGINT ignored (a child of a
background job in a script, `nohup ... &`, inherits that; ros2 launch stops its nodes with
SIGINT), over a real process."""
from __future__ import annotations

import signal
import time

import pytest

from cspn_ros.demo import NodeProcess


@pytest.mark.parametrize('name', ['completion_node', 'synthetic_source_node'])
def test_a_node_started_with_sigint_ignored_still_stops_on_sigint(name, ros_domain, tmp_path):
    parameters = {'checkpoint': 'classical'} if name == 'completion_node' else {}
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # the child inherits SIG_IGN
    try:
        node = NodeProcess(name, parameters, tmp_path)
    finally:
        signal.signal(signal.SIGINT, previous)
    deadline = time.monotonic() + 60
    while '[INFO]' not in node.log() and node.running() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert node.running(), node.log()
    assert node.stop(timeout=20) == 0, node.log()


def test_ctrl_c_before_the_render_thread_starts_shuts_down_cleanly(ros_domain, monkeypatch):
    """SIGINT while synthetic_source_node is still being constructed (its render thread made,
    not started): shutting the context down destroys the half-built node without an error."""
    import threading

    import rclpy

    from cspn_ros.nodes.synthetic_source_node import SyntheticSourceNode

    def interrupted(thread):
        raise KeyboardInterrupt

    context = rclpy.Context()
    rclpy.init(context=context)
    monkeypatch.setattr(threading.Thread, 'start', interrupted)
    with pytest.raises(KeyboardInterrupt):
        SyntheticSourceNode(context=context)
    monkeypatch.undo()
    context.try_shutdown()  # destroys the node: raised "cannot join thread before it is started"
    assert not context.ok()
