"""LiDAR motion compensation: every point of a sweep moved to where the sensor would have seen it
from its pose at the camera image's stamp. ROS-free (numpy).

A spinning LiDAR measures one sweep over ~100 ms while the platform moves, and the image is
taken at yet another time; projecting the raw sweep puts points where the platform *was*. With
the time of each point (`TimeField`, read by `point_times_ns`) and the platform's motion
(`PoseTrack`: poses of a body frame in a fixed frame, e.g. odometry, interpolated), a point p_i
measured at t_i in the sensor frame S is moved to the image stamp t:

    p_i' = inv(T_fixed_from_body(t) T_body_from_sensor)
           T_fixed_from_body(t_i) T_body_from_sensor p_i

(`compensate`), the gap between the cloud's stamp and the image's included. Poses are
interpolated linearly in translation and by slerp in rotation between the two samples around
each time; a time outside the track (beyond `max_extrapolation_ns`) raises MotionError, so a
frame is never compensated with a guessed motion. `MotionCompensation` is what
`core.pipeline.CompletionPipeline` applies to every cloud (its `motion`). In a rig every camera
has its own (one pose track shared): each moves the sweep(s) to its own image stamp, each LiDAR
with its own T_body_from_sensor.
"""
from __future__ import annotations

import bisect
import dataclasses
from typing import Any, Callable, Optional, Sequence

import numpy as np

from cspn_ros.core.conversions import ConversionError, pointcloud2_field, stamp_to_ns
from cspn_ros.core.extrinsic import same_frame
from cspn_ros.core.projection import quaternion_from_rotation, transform_from_translation_quaternion

TIME_UNITS = {'s': 1e9, 'ms': 1e6, 'us': 1e3, 'ns': 1.0}
TIME_REFERENCES = ('relative', 'absolute')
#: Pose samples kept by a PoseTrack (100 Hz odometry: 10 s).
MAX_POSES = 1000


class MotionError(ValueError):
    """A sweep cannot be compensated: no time field, or no motion known at its times."""


@dataclasses.dataclass(frozen=True)
class TimeField:
    """Where a cloud keeps its per-point time: field `name`, in `unit` ('s', 'ms', 'us', 'ns'),
    'relative' to the cloud's header stamp or 'absolute' (since the epoch, like header
    stamps)."""

    name: str
    unit: str = 's'
    reference: str = 'relative'

    def __post_init__(self) -> None:
        if self.unit not in TIME_UNITS:
            raise ValueError(f'time unit must be one of {tuple(TIME_UNITS)}, got {self.unit!r}')
        if self.reference not in TIME_REFERENCES:
            raise ValueError(f'time reference must be one of {TIME_REFERENCES}, '
                             f'got {self.reference!r}')


#: The per-point time of common drivers' PointCloud2 (check yours: `ros2 topic echo --once
#: <points> --field fields`).
DRIVER_TIME_FIELDS = {
    'velodyne': TimeField('time', 's', 'relative'),         # velodyne_pointcloud, float32
    'ouster': TimeField('t', 'ns', 'relative'),             # ouster-ros, uint32 ns offset
    'hesai': TimeField('timestamp', 's', 'absolute'),       # HesaiLidar ROS 2 driver, float64
    'robosense': TimeField('timestamp', 's', 'absolute'),   # rslidar_sdk XYZIRT, float64
    'livox': TimeField('timestamp', 'ns', 'absolute'),      # livox_ros_driver2, float64
    'livox_offset': TimeField('offset_time', 'ns', 'relative'),  # uint32 ns since the stamp
}


def parse_time_field(text: str) -> TimeField:
    """A driver name of DRIVER_TIME_FIELDS, or 'NAME[:UNIT[:REFERENCE]]' (e.g. 't:ns:relative')
    -> TimeField; ValueError naming the choices otherwise."""
    if text in DRIVER_TIME_FIELDS:
        return DRIVER_TIME_FIELDS[text]
    name, unit, reference = (text.split(':') + ['s', 'relative'])[:3]
    if not name or text.count(':') > 2:
        raise ValueError(f'time field {text!r}: give a driver ({", ".join(DRIVER_TIME_FIELDS)}) '
                         'or NAME[:UNIT[:REFERENCE]]')
    return TimeField(name, unit or 's', reference or 'relative')


def pose_matrix(msg: Any) -> np.ndarray:
    """T_fixed_from_body (4,4) of a nav_msgs/Odometry or geometry_msgs/PoseStamped (duck-typed:
    `pose.pose` or `pose`)."""
    pose = msg.pose.pose if hasattr(msg.pose, 'pose') else msg.pose
    p, q = pose.position, pose.orientation
    return transform_from_translation_quaternion([p.x, p.y, p.z], [q.x, q.y, q.z, q.w])


def body_from_sensor(body_frame: str, camera_frame: str, sensor_frame: str,
                     T_cam_from_sensor: np.ndarray,
                     lookup: Optional[Callable[[str, str], Optional[np.ndarray]]] = None
                     ) -> np.ndarray:
    """T_body_from_sensor (4,4) for `compensate`: the pose source's body frame ('' = the
    camera's, as a PoseStamped of the camera) <- the LiDAR frame. The camera extrinsic when
    the body is the camera, the identity when it is the LiDAR, else lookup(body, sensor) (tf;
    None or no lookup: MotionError naming the frames)."""
    body = body_frame.lstrip('/') or camera_frame.lstrip('/')
    if same_frame(body, camera_frame):
        return np.asarray(T_cam_from_sensor, dtype=np.float64)
    if same_frame(body, sensor_frame):
        return np.eye(4)
    T = lookup(body, sensor_frame) if lookup is not None else None
    if T is None:
        raise MotionError(f'no transform {body!r} <- {sensor_frame!r}: the odometry body frame '
                          'must be the camera frame, the LiDAR frame, or joined to it in tf')
    return np.asarray(T, dtype=np.float64)


def point_times_ns(cloud_msg: Any, field: TimeField, stamp_ns: int) -> np.ndarray:
    """(N,) float64 absolute times (ns; float64 resolves 0.26 us at today's epoch, 3 um at
    10 m/s) of the points `pointcloud2_to_xyz` keeps, in its order. stamp_ns: the cloud's
    header stamp. MotionError when the field is missing."""
    try:
        values = pointcloud2_field(cloud_msg, field.name)
    except ConversionError as error:
        raise MotionError(f'per-point time: {error}') from error
    nanoseconds = values * TIME_UNITS[field.unit]
    return nanoseconds + stamp_ns if field.reference == 'relative' else nanoseconds


def _quaternions(rotations: np.ndarray) -> np.ndarray:
    """(K,3,3) rotation matrices -> (K,4) unit quaternions [x, y, z, w] (w >= 0)."""
    quaternions = np.array([quaternion_from_rotation(r) for r in rotations], dtype=np.float64)
    return quaternions * np.where(quaternions[:, 3:] < 0, -1.0, 1.0)


def _rotations(quaternions: np.ndarray) -> np.ndarray:
    """(K,4) unit quaternions [x, y, z, w] -> (K,3,3) rotation matrices."""
    x, y, z, w = quaternions.T
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ], -2)


def _slerp(q0: np.ndarray, q1: np.ndarray, fraction: np.ndarray) -> np.ndarray:
    """Spherical interpolation of (K,4) quaternion pairs at (K,) fractions in [0, 1]."""
    dot = np.sum(q0 * q1, axis=1)
    q1 = np.where(dot[:, None] < 0, -q1, q1)  # the short way round
    dot = np.abs(dot)
    angle = np.arccos(np.clip(dot, -1.0, 1.0))
    sin = np.sin(angle)
    small = sin < 1e-9  # (nearly) equal rotations: linear interpolation is exact enough
    safe = np.where(small, 1.0, sin)
    w0 = np.where(small, 1 - fraction, np.sin((1 - fraction) * angle) / safe)
    w1 = np.where(small, fraction, np.sin(fraction * angle) / safe)
    q = w0[:, None] * q0 + w1[:, None] * q1
    return q / np.linalg.norm(q, axis=1, keepdims=True)


class PoseTrack:
    """Stamped poses T_fixed_from_body (4,4) of a moving platform (odometry), interpolated.

    add(stamp_ns, T) keeps samples in stamp order (an older stamp than the newest restarts the
    track: a bag loop); at most max_poses are kept. max_extrapolation_ns: how far beyond the
    first/last sample `at` may hold the end pose instead of raising (covers odometry slightly
    behind the image)."""

    def __init__(self, max_poses: int = MAX_POSES, max_extrapolation_ns: int = 20_000_000) -> None:
        self.max_poses = int(max_poses)
        self.max_extrapolation_ns = int(max_extrapolation_ns)
        self._stamps: list[int] = []
        self._translations: list[np.ndarray] = []
        self._quaternions: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self._stamps)

    def add(self, stamp_ns: int, T_fixed_from_body: np.ndarray) -> None:
        """Add one pose sample; a stamp at or before the newest one restarts the track (or is
        ignored when equal)."""
        if self._stamps and stamp_ns <= self._stamps[-1]:
            if stamp_ns == self._stamps[-1]:
                return
            self._stamps, self._translations, self._quaternions = [], [], []
        T = np.asarray(T_fixed_from_body, dtype=np.float64)
        self._stamps.append(int(stamp_ns))
        self._translations.append(T[:3, 3].copy())
        self._quaternions.append(_quaternions(T[None, :3, :3])[0])
        if len(self._stamps) > self.max_poses:
            del self._stamps[0], self._translations[0], self._quaternions[0]

    def at(self, stamps_ns: np.ndarray | Sequence[float] | float) -> np.ndarray:
        """(K,4,4) T_fixed_from_body at each stamp (ns; a scalar gives (4,4)). MotionError when
        a stamp lies outside the samples by more than max_extrapolation_ns."""
        scalar = np.ndim(stamps_ns) == 0
        stamps = np.atleast_1d(np.asarray(stamps_ns, dtype=np.float64))
        if len(self._stamps) < 2:
            raise MotionError(f'platform motion unknown: {len(self._stamps)} pose sample(s)')
        known = np.asarray(self._stamps, dtype=np.float64)
        low, high = stamps.min(), stamps.max()
        if (low < known[0] - self.max_extrapolation_ns
                or high > known[-1] + self.max_extrapolation_ns):
            raise MotionError(
                f'platform motion unknown at {(low - known[-1]) / 1e6:+.1f} .. '
                f'{(high - known[-1]) / 1e6:+.1f} ms from the newest pose (poses cover '
                f'{(known[-1] - known[0]) / 1e6:.1f} ms)')
        clipped = np.clip(stamps, known[0], known[-1])
        right = np.clip(np.searchsorted(known, clipped, side='right'), 1, len(known) - 1)
        left = right - 1
        fraction = (clipped - known[left]) / (known[right] - known[left])
        translations = np.asarray(self._translations)
        quaternions = np.asarray(self._quaternions)
        poses = np.zeros((len(stamps), 4, 4))
        poses[:, :3, :3] = _rotations(_slerp(quaternions[left], quaternions[right], fraction))
        poses[:, :3, 3] = (translations[left] * (1 - fraction)[:, None]
                           + translations[right] * fraction[:, None])
        poses[:, 3, 3] = 1.0
        return poses[0] if scalar else poses


def compensate(points: np.ndarray, times_ns: np.ndarray, target_ns: int, track: PoseTrack,
               T_body_from_sensor: Optional[np.ndarray] = None,
               time_step_ns: int = 100_000) -> np.ndarray:
    """(N,3) float32 sensor-frame points measured at times_ns (N,) -> (N,3) float32 in the
    sensor frame at target_ns (the equation in the module docstring).

    Points are grouped by time in steps of time_step_ns (0.1 ms: 1 mm at 10 m/s), one pose per
    group, so the cost is one 3x3 product per point. MotionError when the track does not
    cover the times."""
    points = np.asarray(points, dtype=np.float32)
    if len(points) == 0:
        return points
    T_body_from_sensor = np.eye(4) if T_body_from_sensor is None else np.asarray(
        T_body_from_sensor, dtype=np.float64)
    bins = np.round((np.asarray(times_ns, dtype=np.float64) - target_ns) / time_step_ns)
    groups, inverse = np.unique(bins, return_inverse=True)
    T_fixed_from_sensor = track.at(groups * time_step_ns + target_ns) @ T_body_from_sensor
    T_target_from_fixed = np.linalg.inv(track.at(target_ns) @ T_body_from_sensor)
    T_target_from_then = T_target_from_fixed @ T_fixed_from_sensor  # (G,4,4)
    rotations = T_target_from_then[inverse, :3, :3]
    moved = np.einsum('nij,nj->ni', rotations, points.astype(np.float64))
    return (moved + T_target_from_then[inverse, :3, 3]).astype(np.float32)


@dataclasses.dataclass
class MotionCompensation:
    """Compensation settings of one camera's pipeline: time_field (where the cloud keeps
    per-point times), track (the platform's poses around the frame, refilled by the caller:
    odometry; the cameras of a rig share one, `sharing_track`), and T_body_from_sensor (the
    track's body frame <- the LiDAR frame: (4,4), or (K,4,4) for the K LiDARs whose clouds the
    pipeline merges, in their order; `set_sensors`)."""

    time_field: TimeField
    track: PoseTrack = dataclasses.field(default_factory=PoseTrack)
    T_body_from_sensor: np.ndarray = dataclasses.field(default_factory=lambda: np.eye(4))

    def sharing_track(self) -> 'MotionCompensation':
        """Another camera's compensation: the same time field and pose track, its own
        T_body_from_sensor (each camera moves the sweep to its own image stamp)."""
        return dataclasses.replace(self, T_body_from_sensor=np.eye(4))

    def set_sensors(self, body_frame: str, camera_frame: str, sensor_frames: Sequence[str],
                    T_cam_from_sensor: np.ndarray,
                    lookup: Optional[Callable[[str, str], Optional[np.ndarray]]] = None) -> None:
        """Set T_body_from_sensor for a frame of `camera_frame` from each LiDAR frame of
        sensor_frames, with the camera's extrinsics T_cam_from_sensor ((4,4) or (K,4,4), one per
        LiDAR) (`body_from_sensor`; MotionError when one is unknown)."""
        extrinsics = np.asarray(T_cam_from_sensor, dtype=np.float64).reshape(-1, 4, 4)
        if len(extrinsics) != len(sensor_frames):
            raise MotionError(f'{len(sensor_frames)} LiDAR frames but {len(extrinsics)} '
                              'extrinsics')
        bodies = [body_from_sensor(body_frame, camera_frame, frame, T, lookup)
                  for frame, T in zip(sensor_frames, extrinsics)]
        self.T_body_from_sensor = bodies[0] if len(bodies) == 1 else np.stack(bodies)

    def apply(self, cloud_msg: Any, points: np.ndarray, target_ns: int,
              lidar: int = 0) -> np.ndarray:
        """The (N,3) points of cloud_msg (as `pointcloud2_to_xyz` gives them; LiDAR number
        `lidar` of T_body_from_sensor) moved to target_ns; unchanged when the cloud has no time
        field (an instantaneous sweep, as without compensation). MotionError when the track
        does not cover the sweep."""
        if not any(field.name == self.time_field.name for field in cloud_msg.fields):
            return points
        transforms = np.asarray(self.T_body_from_sensor, dtype=np.float64).reshape(-1, 4, 4)
        if lidar >= len(transforms):
            raise MotionError(f'no body <- LiDAR transform for LiDAR {lidar} '
                              f'({len(transforms)} set)')
        times = point_times_ns(cloud_msg, self.time_field, stamp_to_ns(cloud_msg.header.stamp))
        return compensate(points, times, target_ns, self.track, transforms[lidar])
