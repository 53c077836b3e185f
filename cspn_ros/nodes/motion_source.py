"""The completion node's platform motion for LiDAR motion compensation (README "Moving LiDAR").

Policy and maths are `core.motion`; this module only connects them to ROS: the odometry
message type (nav_msgs/Odometry, or geometry_msgs/PoseStamped of the camera where nav_msgs is
not installed), the callback that fills the `PoseTrack`, and the body <- LiDAR transform of
each frame (camera extrinsic, identity, or tf).
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np

from cspn_ros.core.conversions import stamp_to_ns
from cspn_ros.core.motion import MotionCompensation, MotionError, body_from_sensor, pose_matrix
from cspn_ros.core.pipeline import InputError

ODOMETRY_TYPES = ('odometry', 'pose')


def odometry_message_type(kind: str) -> Any:
    """The message class of `motion.odometry_type`; ImportError with the fix when nav_msgs
    is missing."""
    if kind == 'pose':
        from geometry_msgs.msg import PoseStamped
        return PoseStamped
    try:
        from nav_msgs.msg import Odometry
    except ImportError as error:
        raise ImportError('motion.odometry_type odometry needs nav_msgs (rosdep installs it; '
                          'the pip-only .venv lacks it): install it, or publish '
                          'geometry_msgs/PoseStamped of the camera and set '
                          'motion.odometry_type pose') from error
    return Odometry


class MotionSource:
    """Poses from the odometry callback into `compensation.track`; `prepare(...)` sets the
    frame's T_body_from_sensor before the pipeline runs."""

    def __init__(self, compensation: MotionCompensation) -> None:
        self.compensation = compensation
        self.body_frame = ''  # the last odometry's child_frame_id ('' for PoseStamped)

    def callback(self, msg: Any) -> None:
        """One odometry / pose message: a pose sample T_fixed_from_body."""
        self.compensation.track.add(stamp_to_ns(msg.header.stamp), pose_matrix(msg))
        self.body_frame = getattr(msg, 'child_frame_id', '')

    def prepare(self, camera_frame: str, sensor_frame: str, T_cam_from_sensor: np.ndarray,
                lookup: Optional[Callable[[str, str], np.ndarray]]) -> None:
        """Set T_body_from_sensor for a frame (`core.motion.body_from_sensor`; lookup: tf, or
        None with parameter extrinsics); InputError naming the frames when it is unknown."""
        try:
            self.compensation.T_body_from_sensor = body_from_sensor(
                self.body_frame, camera_frame, sensor_frame, T_cam_from_sensor, lookup)
        except MotionError as error:
            raise InputError(f'motion compensation: {error}') from error
