"""Pinhole camera from sensor_msgs/CameraInfo: intrinsics, distortion, scaling, (back)projection.

Pixel convention (OpenCV / ROS): pixel centres sit at integer coordinates, so pixel (row, col)
covers u in [col - 0.5, col + 0.5) and v in [row - 0.5, row + 0.5).

A camera describes either the raw image (`rectified=False`: K and the distortion D) or the
rectified image (`rectified=True`: the projection matrix P, no distortion; R is kept as data
and, as in image_geometry, not applied: points are taken in the rectified optical frame).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

#: distortion_model -> most coefficients it uses (OpenCV order k1 k2 p1 p2 k3 k4 k5 k6; fisheye
#: k1 k2 k3 k4). '' / 'none' means no distortion.
DISTORTION_MODELS = {'': 0, 'none': 0, 'plumb_bob': 5, 'rational_polynomial': 8,
                     'equidistant': 4}


#: Coefficient names of each distortion model in CameraInfo order (ROS sends up to 14 for
#: rational_polynomial: k1 k2 p1 p2 k3 k4 k5 k6 s1 s2 s3 s4 taux tauy).
COEFFICIENT_NAMES = ('k1', 'k2', 'p1', 'p2', 'k3', 'k4', 'k5', 'k6', 's1', 's2', 's3', 's4',
                     'taux', 'tauy')
EQUIDISTANT_NAMES = ('k1', 'k2', 'k3', 'k4')
#: Plausible focal length per pixel of image size: about a 178 to 0.6 degree field of view.
FOCAL_PER_PIXEL_RANGE = (0.02, 100.0)


class CameraError(ValueError):
    """Invalid or unusable camera calibration, or an image that does not fit the camera."""


def _used_coefficients(D: np.ndarray, model: str) -> np.ndarray:
    """D cut to the coefficients `model` uses; extra ones must be zero (drivers pad D with
    zeros, e.g. 9 for plumb_bob or 14 for rational_polynomial), else CameraError names them."""
    used = DISTORTION_MODELS[model]
    extra = np.nonzero(D[used:])[0] + used
    if extra.size:
        names = EQUIDISTANT_NAMES if model == 'equidistant' else COEFFICIENT_NAMES
        named = [f'{names[i] if i < len(names) else f"D[{i}]"}={D[i]:g}' for i in extra]
        raise CameraError(f'{model!r} uses the first {used} distortion coefficients; '
                          f'unsupported non-zero coefficient(s): {", ".join(named)}')
    return D[:used]


def _is_torch(array: Any) -> bool:
    return type(array).__module__.startswith('torch')


def array_module(array: Any):
    """The array module (numpy or torch) whose sqrt / atan / floor / where fit `array`."""
    if _is_torch(array):
        import torch
        return torch
    return np


def as_float64(array: Any):
    """numpy array or torch tensor -> float64 of the same kind (on the same device)."""
    if _is_torch(array):
        import torch
        return array.to(torch.float64)
    return np.asarray(array, dtype=np.float64)


def _field(msg: Any, name: str) -> np.ndarray:
    """CameraInfo matrix by its ROS 2 (k, d, p, r) or ROS 1 (K, D, P, R) name."""
    value = getattr(msg, name, None)
    if value is None:
        value = getattr(msg, name.upper(), None)
    if value is None:
        raise CameraError(f'CameraInfo has no field {name!r} or {name.upper()!r}')
    return np.asarray(value, dtype=np.float64).reshape(-1)


@dataclasses.dataclass(eq=False)
class PinholeCamera:
    """Intrinsics of one image size. K (3,3), D (k,), P (3,4), R (3,3) float64, sizes in pixels."""

    width: int
    height: int
    K: np.ndarray
    D: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    distortion_model: str = 'plumb_bob'
    P: np.ndarray | None = None
    R: np.ndarray = dataclasses.field(default_factory=lambda: np.eye(3))
    rectified: bool = False
    _rays: np.ndarray | None = dataclasses.field(default=None, init=False, repr=False)
    _rays_by_device: dict = dataclasses.field(default_factory=dict, init=False, repr=False)
    _max_radius: float = dataclasses.field(default=np.inf, init=False, repr=False)

    def __post_init__(self) -> None:
        self.width, self.height = int(self.width), int(self.height)
        if self.width <= 0 or self.height <= 0:
            raise CameraError(f'camera size must be positive, got {self.width}x{self.height}')
        self.K = np.asarray(self.K, dtype=np.float64).reshape(3, 3)
        if not np.any(self.K):
            raise CameraError('camera matrix K is all zeros (uncalibrated camera)')
        self.D = np.asarray(self.D, dtype=np.float64).reshape(-1)
        if self.distortion_model not in DISTORTION_MODELS:
            raise CameraError(f'unsupported distortion model {self.distortion_model!r}; '
                              f'supported: {sorted(DISTORTION_MODELS)}')
        self.D = _used_coefficients(self.D, self.distortion_model)
        self.P = (np.hstack([self.K, np.zeros((3, 1))]) if self.P is None or not np.any(self.P)
                  else np.asarray(self.P, dtype=np.float64).reshape(3, 4))
        self.R = np.asarray(self.R, dtype=np.float64).reshape(3, 3)
        for name in ('K', 'D', 'P', 'R'):
            if not np.all(np.isfinite(getattr(self, name))):
                raise CameraError(f'{name} has non-finite values (NaN or inf): '
                                  f'{getattr(self, name).reshape(-1).tolist()}')
        self._check_intrinsics()
        if self.distorted:
            self._max_radius = self._monotonic_radius()
            self._check_distortion()

    def _check_intrinsics(self) -> None:
        """CameraError unless the focal lengths are positive and plausible for the image size
        (a field of view between about 1 and 178 degrees) and the principal point lies within
        one image size of the image."""
        matrix = self.camera_matrix
        fx, fy, cx, cy = matrix[0, 0], matrix[1, 1], matrix[0, 2], matrix[1, 2]
        if not (fx > 0 and fy > 0):
            raise CameraError(f'focal lengths must be positive, got fx={fx}, fy={fy}')
        low, high = FOCAL_PER_PIXEL_RANGE
        for name, focal, size in (('fx', fx, self.width), ('fy', fy, self.height)):
            if not low * size <= focal <= high * size:
                raise CameraError(f'implausible intrinsics: {name}={focal:g} px for an image '
                                  f'{size} px across (expected {low:g} to {high:g} x {size}); '
                                  'wrong units or a CameraInfo of another camera?')
        if not (-self.width <= cx <= 2 * self.width and -self.height <= cy <= 2 * self.height):
            raise CameraError(f'implausible principal point cx={cx:g}, cy={cy:g} for a '
                              f'{self.width}x{self.height} image')

    def _check_distortion(self) -> None:
        """CameraError when the distortion polynomial folds back (stops increasing) before
        half of the image's half-width: such coefficients cannot describe this image."""
        matrix = self.camera_matrix
        half_width = 0.5 * self.width / matrix[0, 0]  # normalized radius of half the image width
        if self._max_radius < 0.5 * half_width:
            raise CameraError(f'implausible {self.distortion_model} distortion D='
                              f'{self.D.tolist()}: the lens model folds back at a normalized '
                              f'radius of {self._max_radius:.3g}, inside the image '
                              f'(half-width {half_width:.3g})')

    @classmethod
    def from_camera_info(cls, msg: Any, rectified: bool = False) -> 'PinholeCamera':
        """From a sensor_msgs/CameraInfo (duck-typed; k/d/p/r or K/D/P/R). An all-zero P is
        taken as [K | 0]."""
        return cls(width=msg.width, height=msg.height, K=_field(msg, 'k'), D=_field(msg, 'd'),
                   distortion_model=msg.distortion_model or '', P=_field(msg, 'p'),
                   R=_field(msg, 'r'), rectified=rectified)

    @property
    def camera_matrix(self) -> np.ndarray:
        """(3,3) intrinsics of the image this camera describes: P[:, :3] if rectified, else K."""
        return self.P[:, :3] if self.rectified else self.K

    @property
    def distorted(self) -> bool:
        """True when projection applies a (non-zero) distortion model."""
        return not self.rectified and DISTORTION_MODELS[self.distortion_model] > 0 and bool(
            np.any(self.D))

    def scaled(self, width: int, height: int) -> 'PinholeCamera':
        """The same camera for an image resized to width x height (same aspect ratio).

        Focal lengths scale with the size; principal points scale about the pixel-centre
        convention (c' = (c + 0.5) * s - 0.5). Raises CameraError when the aspect ratio differs
        by more than one pixel.
        """
        width, height = int(width), int(height)
        if (width, height) == (self.width, self.height):
            return self
        if width <= 0 or height <= 0 or abs(width * self.height - height * self.width) > max(
                self.width, self.height):
            raise CameraError(f'image {width}x{height} does not have the aspect ratio of the '
                              f'camera info {self.width}x{self.height}')
        scale = np.array([[width / self.width], [height / self.height], [1.0]])
        shift = np.array([[0.5 * (scale[0, 0] - 1)], [0.5 * (scale[1, 0] - 1)], [0.0]])

        def rescale(matrix: np.ndarray) -> np.ndarray:
            out = matrix * scale
            out[:, 2:3] += shift * matrix[2:3, 2:3]
            return out

        return dataclasses.replace(self, width=width, height=height, K=rescale(self.K),
                                   P=rescale(self.P))

    def project(self, points_cam: Any) -> tuple[Any, Any]:
        """(N,3) points in the optical frame (metres) -> (uv (N,2) pixels, z (N,) metres).

        Works on numpy arrays and on torch tensors (any device), computing in float64 with the
        same operations in the same order, so both give bit-identical pixels. Distortion is the
        closed-form forward model. uv is NaN for points that do not project: z <= 0, or beyond
        the radius where the radial distortion polynomial stops increasing (points there would
        fold back into the image).
        """
        xp = array_module(points_cam)
        points = as_float64(points_cam)
        z = points[:, 2]
        u, v, projects = self.project_columns(points[:, 0], points[:, 1], z)
        nan = xp.full_like(u, float('nan'))
        return xp.stack([xp.where(projects, u, nan), xp.where(projects, v, nan)], 1), z

    def project_columns(self, x: Any, y: Any, z: Any) -> tuple[Any, Any, Any]:
        """`project` on float64 coordinate columns (N,) -> (u (N,), v (N,), projects (N,) bool).

        u, v are meaningless where `projects` is False; no NaN handling or stacking, for callers
        that mask anyway (the sparse-depth projection).
        """
        xp = array_module(z)
        projects = z > 0
        safe_z = xp.where(projects, z, xp.ones_like(z))
        xn, yn = x / safe_z, y / safe_z
        if self.distorted:
            projects = projects & (xn * xn + yn * yn <= self._max_radius ** 2)
            xn, yn = self._distort(xn, yn, xp)
        m = self.camera_matrix
        u = xn * float(m[0, 0]) + float(m[0, 2])
        if m[0, 1] != 0:
            u = u + yn * float(m[0, 1])
        v = yn * float(m[1, 1]) + float(m[1, 2])
        if self.rectified:
            u = u + float(self.P[0, 3]) / safe_z
            v = v + float(self.P[1, 3]) / safe_z
        return u, v, projects

    def _distort(self, x: Any, y: Any, xp: Any) -> tuple[Any, Any]:
        """Normalized (x, y) -> distorted normalized (x, y) (numpy or torch, float64)."""
        coefficients = np.zeros(8)
        coefficients[:self.D.size] = self.D
        r2 = x * x + y * y
        if self.distortion_model == 'equidistant':
            k1, k2, k3, k4 = (float(c) for c in coefficients[:4])
            r = xp.sqrt(r2)
            theta = xp.atan(r)
            t2 = theta * theta
            theta_d = theta * (1 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4))))
            scale = xp.where(r > 0, theta_d / xp.where(r > 0, r, xp.ones_like(r)),
                             xp.ones_like(r))
            return x * scale, y * scale
        k1, k2, p1, p2, k3, k4, k5, k6 = (float(c) for c in coefficients)
        radial = ((1 + r2 * (k1 + r2 * (k2 + r2 * k3)))
                  / (1 + r2 * (k4 + r2 * (k5 + r2 * k6))))
        xy = x * y
        xd = x * radial + 2 * p1 * xy + p2 * (r2 + 2 * x * x)
        yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * xy
        return xd, yd

    def _monotonic_radius(self) -> float:
        """Largest undistorted normalized radius up to which the distorted radius increases."""
        if self.distortion_model == 'equidistant':
            theta = np.linspace(0, np.pi / 2, 20001)[1:]
            radius = np.tan(theta)
        else:
            radius = np.linspace(0, 20, 20001)[1:]
        # signed, from 0: a radius that turns negative has folded back through the centre
        image_radius = np.concatenate([[0.0], self._distort(radius, np.zeros_like(radius),
                                                            np)[0]])
        falling = np.nonzero(np.diff(image_radius) <= 0)[0]
        return float(np.concatenate([[0.0], radius])[falling[0]]) if falling.size else np.inf

    def pixel_rays(self) -> np.ndarray:
        """(H*W, 2) float64 normalized (x/z, y/z) of every pixel centre, row-major; cached.

        Raw distorted images are undistorted with OpenCV's iterative solver.
        """
        if self._rays is None:
            cols, rows = np.meshgrid(np.arange(self.width, dtype=np.float64),
                                     np.arange(self.height, dtype=np.float64))
            pixels = np.stack([cols.ravel(), rows.ravel()], 1)
            if self.distorted:
                import cv2
                criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-12)
                undistort = (cv2.fisheye.undistortPoints
                             if self.distortion_model == 'equidistant' else cv2.undistortPoints)
                rays = undistort(pixels[:, None, :], self.K, self.D, criteria=criteria)
                self._rays = rays.reshape(-1, 2).astype(np.float64)
            else:
                m = self.camera_matrix
                y = (pixels[:, 1] - m[1, 2]) / m[1, 1]
                x = (pixels[:, 0] - m[0, 2] - m[0, 1] * y) / m[0, 0]
                self._rays = np.stack([x, y], 1)
        return self._rays

    def _device_rays(self, device: Any) -> Any:
        """`pixel_rays()` as a float64 tensor on `device`, copied there once per device."""
        import torch
        rays = self._rays_by_device.get(str(device))
        if rays is None:
            rays = torch.from_numpy(self.pixel_rays()).to(device)
            self._rays_by_device[str(device)] = rays
        return rays

    def backproject(self, depth: Any, stride: int = 1) -> tuple[Any, Any]:
        """(H,W) depth metres (0 / non-finite = missing) -> (N,3) float32 optical-frame points
        and (N,) int64 flat pixel indices (row * W + col) of the valid pixels.

        numpy in, numpy out; a torch tensor in gives tensors on its device, bit-identical to the
        numpy result (the same float64 operations). `stride` keeps every stride-th row and
        column (starting at 0).
        """
        if not _is_torch(depth):
            depth = np.asarray(depth)
        if tuple(depth.shape) != (self.height, self.width):
            raise CameraError(f'depth image {tuple(depth.shape)[::-1]} does not match the camera '
                              f'{self.width}x{self.height}')
        if stride < 1:
            raise ValueError(f'stride must be >= 1, got {stride}')
        xp = array_module(depth)
        if xp is np:
            rows, cols = np.arange(0, self.height, stride), np.arange(0, self.width, stride)
            all_rays = self.pixel_rays()
        else:
            rows = xp.arange(0, self.height, stride, device=depth.device)
            cols = xp.arange(0, self.width, stride, device=depth.device)
            all_rays = self._device_rays(depth.device)
        indices = (rows[:, None] * self.width + cols[None, :]).reshape(-1)
        z = as_float64(depth.reshape(-1)[indices])
        valid = xp.isfinite(z) & (z > 0)
        indices, z = indices[valid], z[valid]
        rays = all_rays[indices]
        x, y = rays[:, 0] * z, rays[:, 1] * z
        if self.rectified:
            y = y - self.P[1, 3] / self.P[1, 1]
            x = x - (self.P[0, 3] + self.P[0, 1] * (y - rays[:, 1] * z)) / self.P[0, 0]
        points = xp.stack([x, y, z], 1)
        if xp is np:
            return points.astype(np.float32), indices.astype(np.int64)
        return points.to(xp.float32), indices.to(xp.int64)


def camera_info_fields(camera: PinholeCamera) -> dict[str, Any]:
    """sensor_msgs/CameraInfo fields (without header and roi) describing `camera`: height,
    width, distortion_model, d, k (9,), r (9,), p (12,) as float64 arrays, binning 0 (= 1)."""
    return {'height': camera.height, 'width': camera.width,
            'distortion_model': camera.distortion_model,
            'd': np.asarray(camera.D, np.float64).reshape(-1).copy(),
            'k': np.asarray(camera.K, np.float64).reshape(-1).copy(),
            'r': np.asarray(camera.R, np.float64).reshape(-1).copy(),
            'p': np.asarray(camera.P, np.float64).reshape(-1).copy(),
            'binning_x': 0, 'binning_y': 0}
