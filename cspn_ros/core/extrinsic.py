"""Where T_cam_from_sensor comes from: fixed parameters, or tf with its changes followed.

The precedence (README "Robot integration"): with `extrinsic.from_tf` true and tf available the
transform `image frame <- sensor frame` is taken from tf alone and the extrinsic.* parameters are
ignored; frames wait (skipped with a clear, throttled error) until tf has it, and a changed
/tf_static (a recalibration) is followed without a restart. With `extrinsic.from_tf` false, or
where tf2_ros is not installed, the parameters are used. Data whose frame_id is the image's
(`same_frame`: a cloud or depth already in the camera optical frame) needs no tf: its transform
is the identity without a look-up (explicit parameters are still used as given).

ROS-free: tf is reached through a `lookup(target_frame, source_frame)` callable returning a
geometry_msgs/TransformStamped (duck-typed: `.transform.translation.x`, `.rotation.w`, ...) or
raising; the node passes tf2_ros's `Buffer.lookup_transform` at the latest time.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from cspn_ros.core.pipeline import InputError
from cspn_ros.core.projection import transform_from_translation_quaternion

#: Seconds between two tf look-ups once the transform is known (a changed /tf_static is
#: followed within this delay; each look-up costs a few tens of microseconds).
REFRESH_S = 1.0


def matrix_from_transform_msg(transform_stamped: Any) -> np.ndarray:
    """geometry_msgs/TransformStamped (parent <- child) -> T_parent_from_child (4,4) float64."""
    t, q = transform_stamped.transform.translation, transform_stamped.transform.rotation
    return transform_from_translation_quaternion([t.x, t.y, t.z], [q.x, q.y, q.z, q.w])


def same_frame(camera_frame: str, sensor_frame: str) -> bool:
    """Whether sensor data in `sensor_frame` is already in the camera's `camera_frame` (equal,
    non-empty frame ids; a leading '/' ignored, as tf2 does): T_cam_from_sensor = identity."""
    camera, sensor = camera_frame.lstrip('/'), sensor_frame.lstrip('/')
    return bool(camera) and camera == sensor


class FixedExtrinsic:
    """T_cam_from_sensor from parameters: the same matrix for every frame."""

    def __init__(self, T_cam_from_sensor: np.ndarray) -> None:
        self.T_cam_from_sensor = np.asarray(T_cam_from_sensor, dtype=np.float64)

    def for_frames(self, camera_frame: str, sensor_frame: str) -> np.ndarray:
        """The parameter extrinsic (frame ids are not used)."""
        return self.T_cam_from_sensor


class TfExtrinsic:
    """T_cam_from_sensor looked up in tf per (camera frame, sensor frame) pair (the identity,
    never looked up, when the frames are the same).

    lookup(target_frame, source_frame) -> TransformStamped, raising while tf does not have it.
    log(text): called once when a transform is first found and whenever it changes (with the
    new matrix). Until the first look-up succeeds every frame asks tf again and `for_frames`
    raises InputError (the frame is skipped, never guessed); after that tf is asked again at
    most every refresh_s seconds, and a failing look-up keeps the last transform (a cleared tf
    buffer after a bag loop does not stop the output).
    """

    def __init__(self, lookup: Callable[[str, str], Any], log: Callable[[str], None],
                 refresh_s: float = REFRESH_S, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self._lookup = lookup
        self._log = log
        self._refresh_s = refresh_s
        self._clock = clock
        self._known: dict[tuple[str, str], tuple[np.ndarray, float]] = {}
        self._waiting_since: dict[tuple[str, str], float] = {}

    def for_frames(self, camera_frame: str, sensor_frame: str) -> np.ndarray:
        """T_cam_from_sensor (4,4) for the image's and the sensor message's frame ids."""
        for role, frame in (('image', camera_frame), ('sensor', sensor_frame)):
            if not frame:
                raise InputError(f'the {role} message has an empty header.frame_id: tf cannot '
                                 'say where it is; set extrinsic.from_tf false and give the '
                                 'extrinsic.* parameters')
        if same_frame(camera_frame, sensor_frame):
            return np.eye(4)
        key = (camera_frame, sensor_frame)
        now = self._clock()
        known = self._known.get(key)
        if known is not None and now - known[1] < self._refresh_s:
            return known[0]
        try:
            transform = matrix_from_transform_msg(self._lookup(camera_frame, sensor_frame))
        except Exception as error:  # tf2 raises several unrelated exception types
            if known is not None:
                self._known[key] = (known[0], now)
                return known[0]
            waited = now - self._waiting_since.setdefault(key, now)
            raise InputError(
                f'no tf {camera_frame} <- {sensor_frame} after {waited:.0f} s ({error}); '
                f'publish it, e.g. `ros2 run tf2_ros static_transform_publisher --frame-id '
                f'{camera_frame} --child-frame-id {sensor_frame} --x .. --qx ..`, or set '
                'extrinsic.from_tf false to use the extrinsic.* parameters') from error
        if known is None:
            self._log(f'extrinsic from tf {camera_frame} <- {sensor_frame}: '
                      f'{_rounded(transform)}')
        elif not np.allclose(transform, known[0], rtol=0.0, atol=1e-9):
            self._log(f'tf {camera_frame} <- {sensor_frame} changed (recalibrated): now '
                      f'{_rounded(transform)}')
        self._waiting_since.pop(key, None)
        self._known[key] = (transform, now)
        return transform


def extrinsic_choice(from_tf: bool, tf_installed: bool) -> tuple[str, str]:
    """('tf' | 'parameters', why) for the `extrinsic.from_tf` parameter where tf2_ros is or is
    not installed (the precedence in the module docstring)."""
    if not from_tf:
        return 'parameters', 'extrinsic.from_tf is false'
    if tf_installed:
        return 'tf', 'extrinsic.from_tf is true: extrinsic.* parameters are ignored'
    return 'parameters', ('extrinsic.from_tf is true but tf2_ros is not installed (pip-only '
                          'install): using the extrinsic.* parameters')


def _rounded(transform: np.ndarray) -> list:
    return np.round(transform, 4).tolist()
