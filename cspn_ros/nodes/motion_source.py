"""The completion node's platform motion for LiDAR motion compensation (README "Moving LiDAR").

Policy and maths are `core.motion`; this module only connects them to ROS: the odometry
message type (nav_msgs/Odometry, or geometry_msgs/PoseStamped of the rig's base, the camera or
with several cameras the LiDAR, where nav_msgs is not installed), the callback that fills the
`PoseTrack`, and the body <- LiDAR transform of each camera's frame and LiDAR (camera
extrinsic, identity, or tf).
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import numpy as np

from cspn_ros.core.conversions import stamp_to_ns
from cspn_ros.core.motion import MotionCompensation, MotionError, pose_matrix
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
    """Poses from the odometry callback into `compensation.track` (every camera's
    compensation shares it: `compensation.sharing_track()`); `prepare(...)` sets a camera's
    T_body_from_sensor for its frame before the pipeline runs."""

    def __init__(self, compensation: MotionCompensation, pose_base: str = 'camera') -> None:
        self.compensation = compensation
        self.pose_base = pose_base  # whose pose a PoseStamped is (`core.rig.stamped_pose_base`)
        self.body_frame = ''  # the last odometry's child_frame_id ('' for PoseStamped)

    def callback(self, msg: Any) -> None:
        """One odometry / pose message: a pose sample T_fixed_from_body."""
        self.compensation.track.add(stamp_to_ns(msg.header.stamp), pose_matrix(msg))
        self.body_frame = getattr(msg, 'child_frame_id', '')

    def prepare(self, compensation: MotionCompensation, camera_frame: str,
                sensor_frames: Sequence[str], T_cam_from_sensor: np.ndarray,
                lookup: Optional[Callable[[str, str], np.ndarray]]) -> None:
        """Set one camera's T_body_from_sensor for a frame, one per LiDAR frame
        (`MotionCompensation.set_sensors`; lookup: tf, or None with parameter extrinsics);
        InputError naming the frames when one is unknown."""
        body_frame = self.body_frame or (sensor_frames[0] if self.pose_base == 'lidar' else '')
        try:
            compensation.set_sensors(body_frame, camera_frame, sensor_frames,
                                     T_cam_from_sensor, lookup)
        except MotionError as error:
            raise InputError(f'motion compensation: {error}') from error
