"""Sparse depth from LiDAR points or a ToF depth image, with a z-buffer (nearest point wins).

Pixel rounding: pixel centres are at integer coordinates (OpenCV / ROS), so a point at (u, v)
lands in column floor(u + 0.5), row floor(v + 0.5). The numpy and torch versions share every
arithmetic step (float64, same order) and the z-buffer keeps the exact minimum, so both give
identical images. torch is imported only inside the *_torch function.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from cspn_ros.core.camera import CameraError, PinholeCamera, array_module, as_float64


def transform_from_translation_quaternion(translation: Any, quaternion_xyzw: Any) -> np.ndarray:
    """(3,) metres + (4,) quaternion [qx, qy, qz, qw] -> (4,4) float64 homogeneous transform.

    The quaternion is normalised; a zero (or non-finite) quaternion raises ValueError.
    """
    t = np.asarray(translation, dtype=np.float64).reshape(-1)
    q = np.asarray(quaternion_xyzw, dtype=np.float64).reshape(-1)
    if t.size != 3 or q.size != 4:
        raise ValueError(f'need a 3-vector translation and a 4-vector quaternion, got '
                         f'{t.size} and {q.size} values')
    norm = np.linalg.norm(q)
    if not np.isfinite(norm) or norm < 1e-12 or not np.all(np.isfinite(t)):
        raise ValueError(f'invalid transform: translation {t.tolist()}, quaternion xyzw '
                         f'{q.tolist()} (must be finite and non-zero)')
    x, y, z, w = q / norm
    transform = np.eye(4)
    transform[:3, :3] = [[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                         [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                         [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]]
    transform[:3, 3] = t
    return transform


def quaternion_from_rotation(rotation: np.ndarray) -> np.ndarray:
    """(3,3) rotation matrix -> unit quaternion [qx, qy, qz, qw] float64 (qw >= 0)."""
    m = np.asarray(rotation, dtype=np.float64)
    # The largest of 4 q_i^2 (from the trace and the diagonal) gives a well-conditioned divisor.
    squares = np.array([1 + m[0, 0] - m[1, 1] - m[2, 2], 1 - m[0, 0] + m[1, 1] - m[2, 2],
                        1 - m[0, 0] - m[1, 1] + m[2, 2], 1 + np.trace(m)])
    largest = int(np.argmax(squares))
    q = np.empty(4)
    q[largest] = 0.5 * np.sqrt(squares[largest])
    d = 0.25 / q[largest]
    off = {0: (m[1, 0] + m[0, 1], m[0, 2] + m[2, 0], m[2, 1] - m[1, 2]),
           1: (m[1, 0] + m[0, 1], m[2, 1] + m[1, 2], m[0, 2] - m[2, 0]),
           2: (m[0, 2] + m[2, 0], m[2, 1] + m[1, 2], m[1, 0] - m[0, 1]),
           3: (m[2, 1] - m[1, 2], m[0, 2] - m[2, 0], m[1, 0] - m[0, 1])}[largest]
    q[[i for i in range(4) if i != largest]] = np.array(off) * d
    q /= np.linalg.norm(q)
    return -q if q[3] < 0 else q


def merge_clouds(clouds: list, T_cam_from_sensors: Any) -> np.ndarray:
    """Clouds of several LiDARs as one: clouds[i] (N_i,3) points in LiDAR i's frame and
    T_cam_from_sensors (K,4,4) -> (sum N_i, 3) float64 points in the camera frame. Projected
    with the identity, they go through one z-buffer (the nearest point of any LiDAR wins a
    pixel) and then one occlusion filter, exactly as one cloud would."""
    transforms = np.asarray(T_cam_from_sensors, dtype=np.float64).reshape(-1, 4, 4)
    if len(clouds) != len(transforms):
        raise ValueError(f'{len(clouds)} clouds but {len(transforms)} extrinsics')
    return np.concatenate([as_float64(points) @ T[:3, :3].T + T[:3, 3]
                           for points, T in zip(clouds, transforms)])


def _pixel_hits(points: Any, T_cam_from_sensor: Any, camera: PinholeCamera, min_depth: float,
                max_depth: float) -> tuple[Any, Any]:
    """Points (N,3) in the sensor frame -> (flat pixel index, depth float32) of the points that
    land in the image with min_depth < z <= max_depth.

    numpy: (M,) arrays of those points only. torch: (N,) tensors, one per input point, where a
    dropped point has index H*W (a spare z-buffer slot): boolean indexing would make the device
    wait for the host on every call.
    """
    xp = array_module(points)
    transform = np.asarray(T_cam_from_sensor, dtype=np.float64).reshape(4, 4)
    sensor = as_float64(points)
    if sensor.ndim != 2 or sensor.shape[1] != 3:
        raise ValueError(f'points must have shape (N,3), got {tuple(sensor.shape)}')
    affine = transform[:3]

    def transformed(axis: int, x: Any, y: Any, z: Any) -> Any:
        a = [float(value) for value in affine[axis]]
        return x * a[0] + y * a[1] + z * a[2] + a[3]

    depth = transformed(2, sensor[:, 0], sensor[:, 1], sensor[:, 2])
    keep = (depth > min_depth) & (depth <= max_depth)
    if xp is np:  # on the host, project only the points in range
        sensor, depth, keep = sensor[keep], depth[keep], True
    x, y, z = sensor[:, 0], sensor[:, 1], sensor[:, 2]
    u, v, projects = camera.project_columns(transformed(0, x, y, z), transformed(1, x, y, z),
                                            depth)
    col = xp.floor(u + 0.5)
    row = xp.floor(v + 0.5)
    keep = keep & projects & (col >= 0) & (col < camera.width) & (row >= 0) & (row < camera.height)
    flat = row * camera.width + col
    if xp is np:
        return flat[keep].astype(np.int64), depth[keep].astype(np.float32)
    spare = float(camera.height * camera.width)
    return xp.where(keep, flat, spare).long(), depth.float()


def project_to_sparse_depth(points: np.ndarray, T_cam_from_sensor: np.ndarray,
                            camera: PinholeCamera, min_depth: float = 0.1,
                            max_depth: float = np.inf) -> np.ndarray:
    """(N,3) points in the sensor frame (metres) -> (H,W) float32 sparse depth, 0 = no point.

    T_cam_from_sensor (4,4) maps sensor points into the camera optical frame. Where several
    points hit one pixel the nearest (smallest z) wins. Points with z <= min_depth or
    z > max_depth, and points outside the image, are dropped.
    """
    flat, depth = _pixel_hits(np.asarray(points), T_cam_from_sensor, camera, min_depth,
                              max_depth)
    image = np.full(camera.height * camera.width, np.inf, dtype=np.float32)
    np.minimum.at(image, flat, depth)
    image[np.isinf(image)] = 0
    return image.reshape(camera.height, camera.width)


def project_to_sparse_depth_torch(points: Any, T_cam_from_sensor: Any, camera: PinholeCamera,
                                  min_depth: float = 0.1, max_depth: float = float('inf')) -> Any:
    """Torch twin of `project_to_sparse_depth`: (N,3) tensor -> (H,W) float32 tensor on the
    points' device, identical to the numpy result. T may be a tensor or an array."""
    import torch
    if isinstance(T_cam_from_sensor, torch.Tensor):
        T_cam_from_sensor = T_cam_from_sensor.detach().cpu().numpy()
    flat, depth = _pixel_hits(points, T_cam_from_sensor, camera, min_depth, max_depth)
    pixels = camera.height * camera.width
    image = torch.full((pixels + 1,), float('inf'), dtype=torch.float32, device=points.device)
    image.scatter_reduce_(0, flat, depth, reduce='amin')
    image = image[:pixels]
    return image.masked_fill_(torch.isinf(image), 0).reshape(camera.height, camera.width)


def register_depth(depth_src: np.ndarray, src_camera: PinholeCamera, T_dst_from_src: np.ndarray,
                   dst_camera: PinholeCamera, min_depth: float = 0.1,
                   max_depth: float = np.inf) -> np.ndarray:
    """ToF depth (h,w) metres in its own camera -> (H,W) float32 sparse depth in the colour
    camera (0 = none), through the same z-buffer as LiDAR points. A torch tensor in (e.g. on
    the GPU) gives a tensor out, identical to the numpy result."""
    if tuple(np.shape(depth_src)) != (src_camera.height, src_camera.width):
        raise CameraError(f'depth image of shape {tuple(np.shape(depth_src))} does not match '
                          f'its camera {src_camera.width}x{src_camera.height}')
    points, _ = src_camera.backproject(depth_src)
    project = (project_to_sparse_depth if array_module(points) is np
               else project_to_sparse_depth_torch)
    return project(points, T_dst_from_src, dst_camera, min_depth, max_depth)


def depth_to_points(depth: np.ndarray, camera: PinholeCamera, rgb: np.ndarray | None = None,
                    stride: int = 1) -> tuple[np.ndarray, np.ndarray | None]:
    """Dense depth (H,W) metres (+ (H,W,3) uint8 colour) -> (N,3) float32 optical-frame points
    and (N,3) uint8 colours (None without rgb), every stride-th row and column, valid only."""
    points, indices = camera.backproject(depth, stride)
    if rgb is None:
        return points, None
    if np.shape(rgb) != (camera.height, camera.width, 3):
        raise CameraError(f'colour image of shape {np.shape(rgb)} does not match the camera '
                          f'{camera.width}x{camera.height}')
    return points, np.asarray(rgb).reshape(-1, 3)[indices]
