"""core.extrinsic: tf precedence, tf absent / late / changed, with real geometry_msgs
TransformStamped messages (built here and, in the last test, received over DDS).

tf2_ros and tf2_msgs are not installable here (no PyPI wheel), so the node's tf2_ros Buffer is
not exercised; `TfExtrinsic` is what the node runs on the Buffer's look-ups, and here its
look-ups answer from the TransformStamped messages a test has published or built.
"""
from __future__ import annotations

import numpy as np
import pytest
from geometry_msgs.msg import TransformStamped

from cspn_ros.core.extrinsic import (FixedExtrinsic, TfExtrinsic, extrinsic_choice,
                                     matrix_from_transform_msg)
from cspn_ros.core.pipeline import InputError
from cspn_ros.core.projection import quaternion_from_rotation, transform_from_translation_quaternion
from cspn_ros.nodes.messages import header_msg, transform_stamped_msg


def random_transform(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    return transform_from_translation_quaternion(rng.normal(size=3), q)


class TfState:
    """What tf knows: (camera frame, sensor frame) -> TransformStamped; a look-up of anything
    else raises as tf2 does."""

    def __init__(self) -> None:
        self.transforms: dict[tuple[str, str], TransformStamped] = {}
        self.lookups = 0

    def lookup(self, target: str, source: str) -> TransformStamped:
        self.lookups += 1
        if (target, source) not in self.transforms:
            raise LookupError(f'"{source}" passed to lookupTransform argument source_frame does '
                              'not exist')
        return self.transforms[target, source]

    def publish(self, T: np.ndarray, target: str = 'camera_optical', source: str = 'lidar'):
        self.transforms[target, source] = transform_stamped_msg(T, header_msg(0, target), source)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_transform_stamped_round_trip_matches_the_quaternion_convention():
    rng = np.random.default_rng(0)
    for _ in range(20):
        T = random_transform(rng)
        msg = transform_stamped_msg(T, header_msg(5, 'camera_optical'), 'lidar')
        assert isinstance(msg, TransformStamped) and msg.child_frame_id == 'lidar'
        np.testing.assert_allclose(matrix_from_transform_msg(msg), T, atol=1e-12)
        q = quaternion_from_rotation(T[:3, :3])
        assert q[3] >= 0 and np.isclose(np.linalg.norm(q), 1.0)


def test_absent_tf_skips_frames_with_a_clear_error_and_keeps_asking():
    tf, clock, logged = TfState(), Clock(), []
    source = TfExtrinsic(tf.lookup, logged.append, clock=clock)
    with pytest.raises(InputError, match=r'no tf camera_optical <- lidar after 0 s') as first:
        source.for_frames('camera_optical', 'lidar')
    assert 'static_transform_publisher' in str(first.value)
    assert 'extrinsic.from_tf false' in str(first.value)
    clock.now += 12.0
    with pytest.raises(InputError, match='after 12 s'):
        source.for_frames('camera_optical', 'lidar')
    assert tf.lookups == 2 and logged == []


def test_late_tf_is_used_as_soon_as_it_arrives():
    tf, clock, logged = TfState(), Clock(), []
    source = TfExtrinsic(tf.lookup, logged.append, clock=clock)
    with pytest.raises(InputError):
        source.for_frames('camera_optical', 'lidar')
    T = random_transform(np.random.default_rng(1))
    tf.publish(T)
    np.testing.assert_allclose(source.for_frames('camera_optical', 'lidar'), T, atol=1e-12)
    assert len(logged) == 1 and logged[0].startswith('extrinsic from tf camera_optical <- lidar')


def test_changed_tf_is_followed_within_the_refresh_period():
    tf, clock, logged = TfState(), Clock(), []
    source = TfExtrinsic(tf.lookup, logged.append, refresh_s=1.0, clock=clock)
    rng = np.random.default_rng(2)
    before, after = random_transform(rng), random_transform(rng)
    tf.publish(before)
    np.testing.assert_allclose(source.for_frames('camera_optical', 'lidar'), before, atol=1e-12)
    tf.publish(after)  # a recalibration on /tf_static
    clock.now += 0.5
    np.testing.assert_allclose(source.for_frames('camera_optical', 'lidar'), before, atol=1e-12)
    assert tf.lookups == 1  # no look-up inside the refresh period
    clock.now += 0.6
    np.testing.assert_allclose(source.for_frames('camera_optical', 'lidar'), after, atol=1e-12)
    assert 'changed (recalibrated)' in logged[-1] and len(logged) == 2
    clock.now += 1.1
    source.for_frames('camera_optical', 'lidar')
    assert len(logged) == 2  # unchanged: nothing new to say


def test_a_lost_transform_keeps_the_last_one_and_frames_are_told_apart():
    tf, clock, logged = TfState(), Clock(), []
    source = TfExtrinsic(tf.lookup, logged.append, clock=clock)
    rng = np.random.default_rng(3)
    lidar, tof = random_transform(rng), random_transform(rng)
    tf.publish(lidar)
    tf.publish(tof, source='tof_optical')
    np.testing.assert_allclose(source.for_frames('camera_optical', 'lidar'), lidar, atol=1e-12)
    np.testing.assert_allclose(source.for_frames('camera_optical', 'tof_optical'), tof,
                               atol=1e-12)
    tf.transforms.clear()  # e.g. the buffer cleared when a bag loops
    clock.now += 5.0
    np.testing.assert_allclose(source.for_frames('camera_optical', 'lidar'), lidar, atol=1e-12)


def test_empty_frame_ids_are_named():
    source = TfExtrinsic(TfState().lookup, print)
    with pytest.raises(InputError, match='sensor message has an empty header.frame_id'):
        source.for_frames('camera_optical', '')
    with pytest.raises(InputError, match='image message has an empty header.frame_id'):
        source.for_frames('', 'lidar')


def test_precedence_between_tf_and_parameters():
    assert extrinsic_choice(True, True)[0] == 'tf'
    assert 'ignored' in extrinsic_choice(True, True)[1]
    assert extrinsic_choice(True, False)[0] == 'parameters'
    assert 'tf2_ros is not installed' in extrinsic_choice(True, False)[1]
    assert extrinsic_choice(False, True)[0] == 'parameters'
    assert extrinsic_choice(False, False)[0] == 'parameters'
    T = random_transform(np.random.default_rng(4))
    np.testing.assert_array_equal(FixedExtrinsic(T).for_frames('a', 'b'), T)


def test_transforms_received_over_dds_late_then_changed(ros_node):
    """TransformStamped messages published over DDS (as static_transform_publisher would, on a
    topic of their own since tf2_msgs is missing here) drive the tf source: none yet -> frames
    skipped; the first -> used; a new one -> followed."""
    from rclpy.qos import DurabilityPolicy, QoSProfile
    qos = QoSProfile(depth=10, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    publisher = ros_node.publisher(TransformStamped, 'calibration', qos)
    inbox = ros_node.inbox(TransformStamped, 'calibration', qos)

    def lookup(target: str, source: str) -> TransformStamped:
        matching = [m for m in inbox.messages
                    if (m.header.frame_id, m.child_frame_id) == (target, source)]
        if not matching:
            raise LookupError(f'no transform {target} <- {source}')
        return matching[-1]

    clock, logged = Clock(), []
    source = TfExtrinsic(lookup, logged.append, refresh_s=1.0, clock=clock)
    with pytest.raises(InputError):
        source.for_frames('camera_optical', 'lidar')
    rng = np.random.default_rng(5)
    for count, T in enumerate((random_transform(rng), random_transform(rng)), start=1):
        publisher.publish(transform_stamped_msg(T, header_msg(count, 'camera_optical'), 'lidar'))
        assert inbox.wait_for(lambda m, c=count: m.header.stamp.sec == 0
                              and m.header.stamp.nanosec == c, timeout=30), 'not received'
        clock.now += 2.0
        np.testing.assert_allclose(source.for_frames('camera_optical', 'lidar'), T, atol=1e-12)
    assert len(logged) == 2 and 'changed' in logged[1]
