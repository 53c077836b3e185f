"""A frame's messages -> model inputs, for `core.pipeline.CompletionPipeline` (ROS-free):
decoding and checking the colour image, CameraInfo, clouds (host or device projection, several
LiDARs merged, motion compensation) and ToF depth (registration), and the input coverage rule.

`SensorInputs` is the part of CompletionPipeline that does it; it reads the pipeline's
settings (depth_source, T_cam_from_sensor, min_depth, max_depth, tof_registered, rectified,
min_input_pixels, max_image_size, occlusion, motion) and keeps its calibration cache
(`_cameras`) and last_input_coverage.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from cspn_ros.core.camera import CameraError, PinholeCamera, array_module
from cspn_ros.core.conversions import (NATIVE_BIGENDIAN, POINTFIELD_FLOAT32, ConversionError,
                                       image_size, image_to_depth, image_to_rgb, message_bytes,
                                       pointcloud2_to_xyz, stamp_to_ns)
from cspn_ros.core.frame import InputError, several_clouds
from cspn_ros.core.input_check import (InputCoverage, coverage_problem, image_size_problem,
                                       implausible_cloud, likely_causes, measure_coverage)
from cspn_ros.core.projection import (merge_clouds, project_to_sparse_depth,
                                      project_to_sparse_depth_torch, register_depth)

#: Calibrations remembered by a pipeline (a camera whose CameraInfo changes makes a new entry).
MAX_CACHED_CAMERAS = 8


class SensorInputs:
    """Decoding, checks and projection of one frame's messages (see the module docstring)."""

    def _check_coverage(self, sparse: np.ndarray, camera: PinholeCamera,
                        depth_msg: Any) -> InputCoverage:
        """Measure the input (kept as last_input_coverage); InputError naming the likely causes
        when it has fewer than min_input_pixels pixels."""
        coverage = measure_coverage(sparse)
        self.last_input_coverage = coverage
        problem = coverage_problem(coverage, self.min_input_pixels, (camera.width, camera.height))
        if problem:
            first = depth_msg[0] if several_clouds(depth_msg) else depth_msg  # causes of the first
            raise InputError(f'{problem}; ' + likely_causes(
                camera, first, self.depth_source, self.T_cam_from_sensor.reshape(-1, 4, 4)[0],
                self.min_depth, self.max_depth))
        return coverage

    def _colour(self, image_msg: Any, info_msg: Any) -> tuple[np.ndarray, PinholeCamera]:
        """(H,W,3) uint8 rgb (a view of rgb8 messages) and the camera scaled to it."""
        try:
            self._check_size(*image_size(image_msg), 'image')
            rgb = image_to_rgb(image_msg)
        except ConversionError as error:
            raise InputError(f'image: {error}') from error
        height, width = rgb.shape[:2]
        return rgb, self._camera(info_msg, width, height, 'camera_info')

    @staticmethod
    def _cloud_layout(cloud_msg: Any) -> Optional[tuple[int, tuple[int, int, int]]]:
        """(floats per point, x/y/z float offsets) when the cloud's raw bytes can be decoded on
        the device: float32 x, y, z in this machine's byte order at 4-byte aligned offsets, no
        row padding. None otherwise (then it is converted on the host)."""
        fields = {field.name: field for field in cloud_msg.fields}
        point_step = int(cloud_msg.point_step)
        if (any(name not in fields or fields[name].datatype != POINTFIELD_FLOAT32
                or fields[name].offset % 4 for name in 'xyz')
                or bool(cloud_msg.is_bigendian) != NATIVE_BIGENDIAN or point_step % 4
                or int(cloud_msg.row_step) != int(cloud_msg.width) * point_step
                or int(cloud_msg.width) * int(cloud_msg.height) == 0
                or len(message_bytes(cloud_msg.data)) != int(cloud_msg.height) * int(
                    cloud_msg.row_step)):
            return None
        return point_step // 4, tuple(int(fields[name].offset) // 4 for name in 'xyz')

    def _project_on_device(self, depth_t: Any, cloud: Optional[tuple[int, tuple[int, int, int]]],
                           camera: PinholeCamera, cloud_msg: Any) -> Any:
        """Device cloud (raw bytes with layout `cloud`, or (N,3) float32 points) -> (H,W)
        sparse depth. Non-finite points are turned into NaN depth, which the z-buffer drops,
        so the image equals the host path's (which removes them first)."""
        import torch
        points = depth_t
        if cloud is not None:
            floats_per_point, offsets = cloud
            points = depth_t.view(torch.float32).view(-1, floats_per_point)[:, list(offsets)]
            finite = torch.isfinite(points).all(dim=1, keepdim=True)
            points = torch.where(finite, points, float('nan'))
        try:
            sparse = project_to_sparse_depth_torch(points, self._points_transform(cloud_msg),
                                                   camera,
                                                   min_depth=self.min_depth,
                                                   max_depth=self.max_depth)
        except CameraError as error:
            raise InputError(f'point cloud: {error}') from error
        return sparse if self.occlusion is None else self.occlusion(sparse)

    def _camera(self, info_msg: Any, width: int, height: int, topic: str) -> PinholeCamera:
        """The CameraInfo as a camera for a width x height image (scaled if sizes differ).

        Cameras are kept per calibration, so their pixel rays (an undistortion solve for
        distorted cameras) are computed once, not every frame."""
        if info_msg is None:
            raise InputError(f'{topic}: missing')
        self._check_size(int(info_msg.width), int(info_msg.height), topic)
        key = (topic, width, height, int(info_msg.width), int(info_msg.height),
               str(info_msg.distortion_model),
               *(np.asarray(values, dtype=np.float64).tobytes()
                 for values in (info_msg.k, info_msg.d, info_msg.r, info_msg.p)))
        camera = self._cameras.get(key)
        if camera is None:
            try:
                camera = PinholeCamera.from_camera_info(
                    info_msg, rectified=self.rectified and topic == 'camera_info'
                ).scaled(width, height)
            except CameraError as error:
                raise InputError(f'{topic}: {error}') from error
            if len(self._cameras) >= MAX_CACHED_CAMERAS:
                self._cameras.clear()
            self._cameras[key] = camera
        return camera

    def _cloud_points(self, cloud_msg: Any, image_msg: Any, lidar: int = 0) -> np.ndarray:
        """PointCloud2 (of LiDAR number `lidar`) -> (N,3) float32 finite points, moved to the
        image's stamp with `motion`; several PointCloud2 (one per LiDAR) -> their points merged
        in the camera frame (`projection.merge_clouds`, float64); InputError when there are
        none or the motion is unknown."""
        if several_clouds(cloud_msg):
            transforms = self.T_cam_from_sensor.reshape(-1, 4, 4)
            if len(transforms) != len(cloud_msg):
                raise InputError(f'{len(cloud_msg)} clouds but {len(transforms)} extrinsics')
            return merge_clouds([self._cloud_points(cloud, image_msg, lidar)
                                 for lidar, cloud in enumerate(cloud_msg)], transforms)
        if int(cloud_msg.width) * int(cloud_msg.height) == 0:
            raise InputError('point cloud is empty (no finite points)')
        try:
            points = pointcloud2_to_xyz(cloud_msg)
        except ConversionError as error:
            raise InputError(f'point cloud: {error}') from error
        if len(points) == 0:
            raise InputError('point cloud has no finite points (empty or all NaN)')
        problem = implausible_cloud(points, cloud_msg.is_bigendian)
        if problem:
            raise InputError(f'point cloud: {problem}')
        if self.motion is not None:
            from cspn_ros.core.motion import MotionError
            try:
                points = self.motion.apply(cloud_msg, points,
                                           stamp_to_ns(image_msg.header.stamp), lidar)
            except MotionError as error:
                raise InputError(f'motion compensation: {error}') from error
        return points

    def _points_transform(self, cloud_msg: Any) -> np.ndarray:
        """The (4,4) the projection applies to `_cloud_points`: the extrinsic, or the identity
        for merged clouds (already in the camera frame)."""
        return np.eye(4) if several_clouds(cloud_msg) else self.T_cam_from_sensor

    def _sparse_from_cloud(self, cloud_msg: Any, camera: PinholeCamera,
                           image_msg: Any) -> np.ndarray:
        points = self._cloud_points(cloud_msg, image_msg)
        try:
            sparse = project_to_sparse_depth(points, self._points_transform(cloud_msg), camera,
                                             min_depth=self.min_depth, max_depth=self.max_depth)
        except CameraError as error:
            raise InputError(f'point cloud: {error}') from error
        if self.occlusion is not None:
            sparse = self.occlusion(sparse)
        if not np.any(sparse > 0):
            raise InputError(f'none of the {len(points)} cloud points project into the image '
                             f'within [{self.min_depth}, {self.max_depth}] m '
                             '(check the extrinsic and the depth range)')
        return sparse

    def camera_info_problem(self, info_msg: Any) -> str:
        """Why a colour CameraInfo cannot be used (size over max_image_size, invalid or
        implausible calibration), or '': the node warms up only at a checked size."""
        try:
            self._camera(info_msg, int(info_msg.width), int(info_msg.height), 'camera_info')
        except InputError as error:
            return str(error)
        return ''

    def _check_size(self, width: int, height: int, what: str) -> None:
        problem = image_size_problem(width, height, self.max_image_size, what)
        if problem:
            raise InputError(problem)

    def _tof_depth(self, depth_msg: Any) -> np.ndarray:
        """ToF depth Image -> (h,w) float32 metres, 0 = missing (a view where possible)."""
        try:
            self._check_size(*image_size(depth_msg), 'ToF depth')
            return image_to_depth(depth_msg)
        except ConversionError as error:
            raise InputError(f'ToF depth: {error}') from error

    def _sparse_from_tof(self, depth_msg: Any, depth_info_msg: Any,
                         camera: PinholeCamera) -> np.ndarray:
        return self._register_tof(self._tof_depth(depth_msg), depth_info_msg, camera)

    def _register_tof(self, depth: Any, depth_info_msg: Any, camera: PinholeCamera) -> Any:
        """(h,w) ToF metres (numpy, or a torch tensor on any device) -> (H,W) sparse depth in
        the colour camera within [min_depth, max_depth], of the same kind."""
        xp = array_module(depth)
        height, width = depth.shape
        if self.tof_registered:
            if (height, width) != (camera.height, camera.width):
                raise InputError(f'registered ToF depth is {width}x{height} but the image is '
                                 f'{camera.width}x{camera.height}')
            in_range = (depth >= self.min_depth) & (depth <= self.max_depth)
            sparse = xp.where(in_range, depth, xp.zeros_like(depth))
        else:
            tof_camera = self._camera(depth_info_msg, width, height, 'tof/camera_info')
            try:
                sparse = register_depth(depth, tof_camera, self.T_cam_from_sensor, camera,
                                        min_depth=self.min_depth, max_depth=self.max_depth)
            except CameraError as error:
                raise InputError(f'ToF depth: {error}') from error
        if not bool((sparse > 0).any()):
            raise InputError(f'ToF depth has no valid pixel within [{self.min_depth}, '
                             f'{self.max_depth}] m (all zero, NaN or inf)')
        return sparse
