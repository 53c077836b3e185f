"""lifecycle_completion_node as a real process, driven by lifecycle_msgs ChangeState/GetState
service calls: unconfigured -> inactive -> active (output flows) -> inactive (no output) ->
active -> inactive -> unconfigured -> finalized, and a configure that fails stays unconfigured."""
from __future__ import annotations

from conftest import PlaneFramePublisher, call_service, publish_until
from lifecycle_msgs.msg import State, Transition
from lifecycle_msgs.srv import ChangeState, GetState
from sensor_msgs.msg import Image

from cspn_ros.core.conversions import stamp_to_ns

W, H = 48, 36


class Lifecycle:
    """ChangeState / GetState calls on /completion_node."""

    def __init__(self, ros_node):
        self.ros_node = ros_node

    def state(self) -> int:
        return call_service(self.ros_node, GetState, '/completion_node/get_state',
                            GetState.Request()).current_state.id

    def change(self, transition: int) -> bool:
        request = ChangeState.Request(transition=Transition(id=transition))
        return call_service(self.ros_node, ChangeState, '/completion_node/change_state',
                            request).success


def test_transitions_start_and_stop_the_output(start_node, ros_node):
    node = start_node('lifecycle_completion_node', checkpoint='classical')
    lifecycle = Lifecycle(ros_node)
    depth = ros_node.inbox(Image, 'depth')
    publish = PlaneFramePublisher(ros_node, W, H)
    sent = publish.sent

    def output_flows() -> None:
        first = sent[-1] + 1 if sent else 0
        found = publish_until(publish, depth, lambda m: stamp_to_ns(m.header.stamp) >= first)
        assert found is not None, node.log()

    def inactive_frames() -> range:
        """Publish frames while inactive; their stamps (checked for absence later)."""
        first = len(sent)
        for _ in range(10):
            publish()
        return range(sent[first], sent[-1] + 1)

    assert lifecycle.state() == State.PRIMARY_STATE_UNCONFIGURED
    unconfigured = inactive_frames()
    assert lifecycle.change(Transition.TRANSITION_CONFIGURE)
    assert lifecycle.state() == State.PRIMARY_STATE_INACTIVE
    configured = inactive_frames()
    assert lifecycle.change(Transition.TRANSITION_ACTIVATE)
    assert lifecycle.state() == State.PRIMARY_STATE_ACTIVE
    output_flows()
    assert lifecycle.change(Transition.TRANSITION_DEACTIVATE)
    assert lifecycle.state() == State.PRIMARY_STATE_INACTIVE
    deactivated = inactive_frames()
    assert lifecycle.change(Transition.TRANSITION_ACTIVATE)
    output_flows()
    # frames sent while not active were never completed (checked after later output arrived)
    for stamps_while_off in (unconfigured, configured, deactivated):
        assert not depth.wait_for(lambda m: stamp_to_ns(m.header.stamp) in stamps_while_off, 0)
    assert lifecycle.change(Transition.TRANSITION_DEACTIVATE)
    assert lifecycle.change(Transition.TRANSITION_CLEANUP)
    assert lifecycle.state() == State.PRIMARY_STATE_UNCONFIGURED
    assert lifecycle.change(Transition.TRANSITION_CONFIGURE)  # cleanup released everything
    assert lifecycle.change(Transition.TRANSITION_INACTIVE_SHUTDOWN)
    assert lifecycle.state() == State.PRIMARY_STATE_FINALIZED
    assert node.stop() == 0
    assert 'Traceback' not in node.log()


def test_shutdown_while_active_and_a_failing_configure(start_node, ros_node):
    node = start_node('lifecycle_completion_node', checkpoint='/no/such/weights.safetensors')
    lifecycle = Lifecycle(ros_node)
    assert not lifecycle.change(Transition.TRANSITION_CONFIGURE)
    assert lifecycle.state() == State.PRIMARY_STATE_UNCONFIGURED
    assert 'configure failed' in node.log() and 'no/such/weights' in node.log()
    assert lifecycle.change(Transition.TRANSITION_UNCONFIGURED_SHUTDOWN)
    assert lifecycle.state() == State.PRIMARY_STATE_FINALIZED
    assert node.stop() == 0  # the next node has the same name

    node = start_node('lifecycle_completion_node', checkpoint='classical')
    lifecycle = Lifecycle(ros_node)
    assert lifecycle.change(Transition.TRANSITION_CONFIGURE)
    assert lifecycle.change(Transition.TRANSITION_ACTIVATE)
    assert lifecycle.change(Transition.TRANSITION_ACTIVE_SHUTDOWN)
    assert lifecycle.state() == State.PRIMARY_STATE_FINALIZED
    assert node.stop() == 0 and 'Traceback' not in node.log()
