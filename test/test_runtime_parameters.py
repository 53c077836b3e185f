"""Run-time parameters of a real completion_node process, changed over the SetParameters
service: bad values are rejected with a reason, good ones take effect without a restart."""
from __future__ import annotations

import numpy as np
from conftest import PlaneFramePublisher, call_service, publish_until
from rcl_interfaces.srv import SetParameters
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image

from cspn_ros.core.conversions import image_to_array, stamp_to_ns
from cspn_ros.nodes.parameters import parameter_problem

W, H = 48, 36


def set_parameters(ros_node, **values) -> list:
    """SetParameters on /completion_node, one parameter per request entry; the results."""
    request = SetParameters.Request(parameters=[
        Parameter(name, value=value).to_parameter_msg() for name, value in values.items()])
    return call_service(ros_node, SetParameters, '/completion_node/set_parameters',
                        request).results


def test_bad_values_are_rejected_with_a_reason_and_good_ones_apply_at_run_time(start_node,
                                                                              ros_node):
    node = start_node('completion_node', checkpoint='classical', publish_colorized=True,
                      max_depth=10.0)
    inboxes = {t: ros_node.inbox(Image, t) for t in ('depth', 'depth/colorized', 'depth/sparse')}
    publish = PlaneFramePublisher(ros_node, W, H)
    sent = publish.sent

    def frame_after_change(topic='depth'):
        """Publish until `topic` carries a frame stamped after the last change."""
        first = sent[-1] + 1 if sent else 0
        found = publish_until(publish, inboxes[topic], lambda m: stamp_to_ns(m.header.stamp)
                              >= first)
        assert found is not None, node.log()
        return found

    frame_after_change('depth/colorized')

    rejected = {
        'max_depth': (-1.0, 'range'),                 # out of the declared range (rclpy)
        'points_stride': (0, 'range'),
        'min_confidence': ('high', 'type'),           # wrong type (rclpy)
        'precision': ('fp8', 'precision must be one of'),
        'propagation_steps': (5, 'classical'),        # the classical model has no steps
        'depth_source': ('tof', 'read-only'),
        'checkpoint': ('/other.pt', 'read-only'),
    }
    for name, (value, reason) in rejected.items():
        result, = set_parameters(ros_node, **{name: value})
        assert not result.successful and reason in result.reason.lower(), (name, result.reason)
    result, = set_parameters(ros_node, min_depth=20.0)  # above max_depth 10
    assert not result.successful and 'below max_depth' in result.reason

    # toggles: colorized stops, sparse starts
    assert all(r.successful for r in set_parameters(ros_node, publish_colorized=False,
                                                    publish_sparse=True))
    changed_at = sent[-1] if sent else 0
    sparse = frame_after_change('depth/sparse')
    stamp = stamp_to_ns(sparse.header.stamp)
    assert inboxes['depth'].wait_for(lambda m: stamp_to_ns(m.header.stamp) == stamp, 5)
    assert not inboxes['depth/colorized'].wait_for(
        lambda m: changed_at < stamp_to_ns(m.header.stamp) <= stamp, 0)
    assert np.nanmax(image_to_array(sparse)) > 5.0  # the plane spans 4-6 m

    # the depth range: sensor depths beyond max_depth are ignored from the next frame on
    assert all(r.successful for r in set_parameters(ros_node, max_depth=5.0))
    sparse = frame_after_change('depth/sparse')
    values = image_to_array(sparse)
    assert np.nanmax(values) <= 5.0 and np.isfinite(values).any()

    assert all(r.successful for r in set_parameters(ros_node, publish_colorized=True))
    frame_after_change('depth/colorized')
    assert node.stop() == 0 and 'Traceback' not in node.log()
    assert 'max_depth set to 5.0' in node.log()


def test_propagation_steps_and_precision_change_on_a_network(start_node, ros_node):
    node = start_node('completion_node', model_config='{"width": 8, "steps": 2}', device='cpu')
    results = set_parameters(ros_node, propagation_steps=7, precision='bf16')
    assert all(r.successful for r in results), [r.reason for r in results]
    result, = set_parameters(ros_node, propagation_steps=300)
    assert not result.successful and 'range' in result.reason.lower()
    assert node.stop() == 0
    assert 'propagation_steps set to 7' in node.log() and 'precision set to bf16' in node.log()


def test_parameter_problem_is_pure():
    good = {'min_depth': 0.1, 'max_depth': 10.0, 'precision': 'fp32', 'propagation_steps': -1}
    assert parameter_problem(good, 'cspn') == ''
    assert parameter_problem(good, None) == ''
    assert 'below max_depth' in parameter_problem({**good, 'min_depth': 10.0}, 'cspn')
    assert 'precision' in parameter_problem({**good, 'precision': 'int8'}, 'cspn')
    assert parameter_problem({**good, 'propagation_steps': 3}, 'nlspn') == ''
    for propagation in ('classical', 'cspnpp'):
        assert propagation in parameter_problem({**good, 'propagation_steps': 3}, propagation)
