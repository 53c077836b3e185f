"""Procedural moving 3D scene: the embedded default sensor source (camera, LiDAR, ToF, truth).

A scene is a handful of analytic primitives (axis-aligned planes, yaw-oriented boxes, spheres)
with solid textures (checker / stripes / noise albedo) and Lambert shading, so colour edges sit on
depth edges. Rays are cast with vectorised numpy; each bounded object is only tested against the
rays inside its angular footprint: a 640x480 frame + a 64-beam x 1800 sweep + a 320x240 ToF
image take about 40 ms (max ~60 ms) of one CPU core, within the 10 Hz budget.

Frames: world z up; body (REP 103) x forward, y left, z up; optical frames z forward, x right,
y down. 'outdoor' is an endless street (buildings, parked cars, poles, balls; 1-60 m, sky beyond
= depth 0); 'indoor' a furnished room (0.5-8 m). `SyntheticScene(seed).frame(i)` is a pure function
of (seed, i, constructor arguments).

This module holds the rig's configuration and composes the pieces: `synthetic_layout` (where the
shapes are), `synthetic_motion` (the rig's path, the camera ring), `synthetic_sensors` (colour
camera, LiDAR, ToF models) on `synthetic_rays` (ray grids, casting) and `synthetic_shapes`
(materials, shapes).
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

from cspn_ros.core.camera import PinholeCamera
from cspn_ros.core.projection import transform_from_translation_quaternion
from cspn_ros.core.topics import FRAME_IDS
from cspn_ros.data.synthetic_layout import RoomLayout, StreetLayout
from cspn_ros.data.synthetic_motion import camera_pose, camera_ring
from cspn_ros.data.synthetic_sensors import (ColourCamera, SpinningLidar, TofCamera,
                                             focal_from_hfov, pinhole_camera)

#: LiDAR pose in the colour camera's optical frame (T_cam_from_lidar): 8 cm above, 5 cm behind,
#: 2 cm left of the camera; body axes x forward, y left, z up, yawed 1.5 deg, pitched -1 deg and
#: rolled 0.5 deg against the camera. [x, y, z] metres and [qx, qy, qz, qw].
DEFAULT_LIDAR_TRANSLATION = [-0.02, -0.08, -0.05]
DEFAULT_LIDAR_ROTATION = [0.499942, -0.508592, 0.504401, 0.486797]
#: ToF optical frame in the colour optical frame (T_cam_from_tof): 5 cm right, 1 cm down,
#: tilted 0.4 deg about x and -0.6 deg about y.
DEFAULT_TOF_TRANSLATION = [0.05, 0.01, 0.0]
DEFAULT_TOF_ROTATION = [0.003491, -0.005236, -0.000018, 0.999980]
DEFAULT_START_STAMP_NS = 1_700_000_000 * 10**9
SCENES = ('outdoor', 'indoor')


@dataclasses.dataclass
class SyntheticFrame:
    """One time step. Depths float32 metres, 0 = no measurement / no ground truth.

    rgb (H,W,3) uint8 and depth (H,W) ground truth in the colour camera; lidar_points (N,3)
    float32 in the LiDAR frame; tof_depth (h,w) in the ToF camera; T_cam_from_* (4,4) float64 map
    sensor points into the colour optical frame; T_world_from_cam (4,4) float64 camera pose.
    lidar_times_ns (N,) int64: when each LiDAR point was measured (a sweep that takes time,
    `lidar_sweep_s`; None for an instantaneous sweep at stamp_ns); lidar_points are then in the
    LiDAR frame *at that time*.
    """

    index: int
    stamp_ns: int
    rgb: np.ndarray
    depth: np.ndarray
    camera: PinholeCamera
    lidar_points: np.ndarray
    T_cam_from_lidar: np.ndarray
    tof_depth: np.ndarray
    tof_camera: PinholeCamera
    T_cam_from_tof: np.ndarray
    T_world_from_cam: np.ndarray
    lidar_times_ns: Optional[np.ndarray] = None


class SyntheticScene:
    """Endless procedural scene seen by a moving rig: colour camera + spinning LiDAR + ToF camera.

    seed: the scene layout and noise; width/height/fx: colour camera (fx default: 70 deg
    horizontal FOV); lidar_beams: 16, 32 or 64 (vertical FOV of VLP-16 / HDL-32E / HDL-64E);
    lidar_horizontal_resolution_deg: azimuth step; scene: 'outdoor' | 'indoor'; rate_hz and
    start_stamp_ns: frame i is stamped start_stamp_ns + i / rate_hz; tof_*: ToF image size and
    range (metres); lidar_/tof_ translation [x, y, z] m + rotation [qx, qy, qz, qw]: the sensors'
    poses in the colour optical frame (T_cam_from_sensor). lidar_sweep_s: seconds one LiDAR sweep
    takes (0 = instantaneous, at the frame stamp); a sweep ends at the frame stamp, spinning
    from azimuth -180 deg (behind) so it faces forward half-way, and is rendered in
    synthetic_sensors.SWEEP_SLICES time slices, each from the rig's pose at its time (the points'
    times).
    platform_motion: [speed m/s, yaw rate deg/s] replaces the default path by a circular arc
    (straight for yaw rate 0) at constant speed and yaw rate.
    """

    def __init__(self, seed: int = 0, width: int = 640, height: int = 480,
                 fx: Optional[float] = None, lidar_beams: int = 64,
                 lidar_horizontal_resolution_deg: float = 0.2, scene: str = 'outdoor',
                 rate_hz: float = 10.0, start_stamp_ns: int = DEFAULT_START_STAMP_NS,
                 tof_width: int = 320, tof_height: int = 240, tof_max_range: float = 8.0,
                 lidar_translation: Sequence[float] = DEFAULT_LIDAR_TRANSLATION,
                 lidar_rotation: Sequence[float] = DEFAULT_LIDAR_ROTATION,
                 tof_translation: Sequence[float] = DEFAULT_TOF_TRANSLATION,
                 tof_rotation: Sequence[float] = DEFAULT_TOF_ROTATION,
                 lidar_sweep_s: float = 0.0,
                 platform_motion: Optional[Sequence[float]] = None) -> None:
        if scene not in SCENES:
            raise ValueError(f'scene must be one of {SCENES}, got {scene!r}')
        if rate_hz <= 0 or tof_max_range <= 0:
            raise ValueError('rate_hz and tof_max_range must be positive')
        if lidar_sweep_s < 0:
            raise ValueError(f'lidar_sweep_s must be >= 0, got {lidar_sweep_s}')
        self.lidar_sweep_s = float(lidar_sweep_s)
        self.platform_motion = (None if platform_motion is None
                                else tuple(float(v) for v in platform_motion))
        self.seed, self.scene, self.rate_hz = int(seed), scene, float(rate_hz)
        self.start_stamp_ns = int(start_stamp_ns)
        self.camera = pinhole_camera(width, height, fx or focal_from_hfov(width, 70.0))
        self.tof_camera = pinhole_camera(tof_width, tof_height, focal_from_hfov(tof_width, 70.0))
        self.T_cam_from_lidar = transform_from_translation_quaternion(lidar_translation,
                                                                      lidar_rotation)
        self.T_cam_from_tof = transform_from_translation_quaternion(tof_translation, tof_rotation)
        self.max_range = 60.0 if scene == 'outdoor' else 12.0
        self.tof_max_range = float(tof_max_range)
        self._colour = ColourCamera(self.camera, self.max_range)
        self._tof = TofCamera(self.tof_camera, self.tof_max_range)
        self._lidar = SpinningLidar(lidar_beams, lidar_horizontal_resolution_deg, self.max_range)
        layout = np.random.default_rng([self.seed, 0])
        self._layout = (RoomLayout(layout) if scene == 'indoor'
                        else StreetLayout(self.seed, layout, self.max_range))

    def world_from_camera(self, index: int) -> np.ndarray:
        """(4,4) float64 pose of the colour optical frame at frame index: a smooth path with
        forward motion and yaw (outdoor: 6 m/s down a weaving street; indoor: a 1 m circle with
        the view sweeping left and right), or the `platform_motion` arc."""
        return self.pose_at(index / self.rate_hz)

    def pose_at(self, time: float) -> np.ndarray:
        """(4,4) float64 pose of the colour optical frame `time` seconds after frame 0."""
        return camera_pose(time, self.scene, self.platform_motion)

    def _stamp_ns(self, index: int) -> int:
        """Stamp (ns) of frame `index`."""
        return self.start_stamp_ns + round(index * 1e9 / self.rate_hz)

    def sensor_extrinsics(self, lidar: bool = True, tof: bool = True) -> dict[str, np.ndarray]:
        """Child frame id -> T_cam_from_child (4,4) of the sensors asked for: the rig's static
        tf, parent 'camera_optical' (FRAME_IDS), as bags and synthetic_source_node publish it."""
        extrinsics = {}
        if lidar:
            extrinsics[FRAME_IDS['lidar']] = self.T_cam_from_lidar
        if tof:
            extrinsics[FRAME_IDS['tof']] = self.T_cam_from_tof
        return extrinsics

    def ring_extrinsics(self, cameras: int) -> list[np.ndarray]:
        """T_lidar_from_camera (4,4) of `cameras` cameras spaced evenly in yaw around the
        LiDAR's vertical axis (a nuScenes-like ring); camera 0 is the scene's colour camera."""
        return camera_ring(self.T_cam_from_lidar, cameras)

    def view(self, index: int, T_cam_from_view: np.ndarray,
             offset_s: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """Colour image (H,W,3) uint8 and ground-truth depth (H,W) float32 m of a camera like
        the colour camera placed at T_cam_from_view (4,4), firing offset_s seconds after frame
        `index`'s stamp (a ring's cameras fire at their own times)."""
        world_from_cam = self.pose_at(index / self.rate_hz + offset_s)
        return self._colour.render(world_from_cam @ T_cam_from_view,
                                   self._layout.objects_near(world_from_cam[:3, 3]))

    def frame(self, index: int) -> SyntheticFrame:
        """Render frame `index` (>= 0): colour image + ground truth, LiDAR sweep and ToF image."""
        if index < 0:
            raise ValueError(f'frame index must be >= 0, got {index}')
        rng = np.random.default_rng([self.seed, 2, index])
        world_from_cam = self.world_from_camera(index)
        objects = self._layout.objects_near(world_from_cam[:3, 3])
        rgb, depth = self._colour.render(world_from_cam, objects)
        lidar_times_ns = None
        if self.lidar_sweep_s > 0:
            lidar_points, lidar_times_ns = self._lidar.sweep(
                lambda offset_s: self.pose_at(index / self.rate_hz + offset_s)
                @ self.T_cam_from_lidar, self.lidar_sweep_s, self._stamp_ns(index), objects, rng)
        else:
            lidar_points = self._lidar.scan(world_from_cam @ self.T_cam_from_lidar, objects, rng)
        return SyntheticFrame(
            index=index, stamp_ns=self._stamp_ns(index),
            rgb=rgb, depth=depth, camera=self.camera,
            lidar_points=lidar_points, lidar_times_ns=lidar_times_ns,
            T_cam_from_lidar=self.T_cam_from_lidar,
            tof_depth=self._tof.render(world_from_cam @ self.T_cam_from_tof, objects, rng),
            tof_camera=self.tof_camera, T_cam_from_tof=self.T_cam_from_tof,
            T_world_from_cam=world_from_cam)

    def tof_view(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The ToF camera's noise-free view of frame `index`: (t (h,w) float32 metres, inf =
        nothing within range; dark (h,w) bool; edge (h,w) bool), the holes `frame` cuts."""
        world_from_cam = self.world_from_camera(index)
        return self._tof.view(world_from_cam @ self.T_cam_from_tof,
                              self._layout.objects_near(world_from_cam[:3, 3]))
