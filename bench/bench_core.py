"""Throughput of the pure core: message conversions and LiDAR/ToF projection.

numpy on the CPU always; the torch projection on CUDA when available (CUDA events after
warm-up). Every number is the median of repeated runs. Writes
bench/results/core_<device-or-hostname>.json and prints a markdown table.

    .venv/bin/python bench/bench_core.py [--repeats 20]
"""
from __future__ import annotations

import argparse
import json
import platform
import re
import socket
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from cspn_ros.core.camera import PinholeCamera
from cspn_ros.core.conversions import (depth_fields, image_fields, image_to_array,
                                       image_to_depth, pointcloud2_fields, pointcloud2_to_xyz)
from cspn_ros.core.projection import (depth_to_points, project_to_sparse_depth,
                                      project_to_sparse_depth_torch, register_depth,
                                      transform_from_translation_quaternion)

IMAGE_SIZES = ((1216, 352), (640, 480))  # KITTI depth completion crop, VGA (width, height)
LIDAR_POINTS = 120_000


def median_ms_cpu(function, repeats: int) -> float:
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def median_ms_cuda(function, repeats: int) -> float:
    import torch
    for _ in range(3):
        function()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        function()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def lidar_cloud_message(rng, n: int) -> SimpleNamespace:
    """An Ouster-like PointCloud2: x y z intensity float32, ring uint16, time uint32, 32 bytes."""
    dtype = np.dtype({'names': ['x', 'y', 'z', 'intensity', 'ring', 'time'],
                      'formats': ['<f4', '<f4', '<f4', '<f4', '<u2', '<u4'],
                      'offsets': [0, 4, 8, 16, 20, 24], 'itemsize': 32})
    cloud = np.zeros(n, dtype)
    azimuth = rng.uniform(-np.pi, np.pi, n)
    rng_m = rng.uniform(2, 80, n)
    cloud['x'], cloud['y'] = rng_m * np.cos(azimuth), rng_m * np.sin(azimuth)
    cloud['z'] = rng.uniform(-2, 2, n)
    fields = [SimpleNamespace(name=name, offset=dtype.fields[name][1], datatype=datatype,
                              count=1)
              for name, datatype in (('x', 7), ('y', 7), ('z', 7), ('intensity', 7),
                                     ('ring', 4), ('time', 6))]
    return SimpleNamespace(height=1, width=n, fields=fields, is_bigendian=False,
                           point_step=32, row_step=32 * n, data=cloud.view(np.uint8))


def camera_for(width: int, height: int) -> PinholeCamera:
    focal = 0.6 * width
    return PinholeCamera(width, height, [[focal, 0, width / 2 - 0.5],
                                         [0, focal, height / 2 - 0.5], [0, 0, 1]], [], '')


def run(repeats: int) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []

    def record(operation, size, backend, ms):
        rows.append({'operation': operation, 'size': size, 'backend': backend,
                     'median_ms': round(ms, 4)})
        print(f'{operation:34s} {size:>14s} {backend:12s} {ms:9.3f} ms', flush=True)

    cloud_msg = lidar_cloud_message(rng, LIDAR_POINTS)
    points = pointcloud2_to_xyz(cloud_msg)
    # LiDAR (x forward, z up) -> camera optical frame (z forward, y down)
    T_cam_from_lidar = transform_from_translation_quaternion([0.0, -0.08, -0.27],
                                                             [0.5, -0.5, 0.5, -0.5])
    cloud_size = f'{LIDAR_POINTS // 1000}k pts'
    record('pointcloud2_to_xyz', cloud_size, 'numpy',
           median_ms_cpu(lambda: pointcloud2_to_xyz(cloud_msg), repeats))

    for width, height in IMAGE_SIZES:
        size = f'{width}x{height}'
        camera = camera_for(width, height)
        depth = rng.uniform(0.5, 80, (height, width)).astype(np.float32)
        rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        depth_msg = SimpleNamespace(**depth_fields(depth))
        rgb_msg = SimpleNamespace(**image_fields(rgb, 'rgb8'))
        record('image_to_array 32FC1', size, 'numpy',
               median_ms_cpu(lambda: image_to_array(depth_msg), repeats))
        record('image_to_array rgb8', size, 'numpy',
               median_ms_cpu(lambda: image_to_array(rgb_msg), repeats))
        record('image_to_depth 32FC1', size, 'numpy',
               median_ms_cpu(lambda: image_to_depth(depth_msg), repeats))
        record('depth_fields 32FC1', size, 'numpy',
               median_ms_cpu(lambda: depth_fields(depth), repeats))
        record('depth_fields 16UC1', size, 'numpy',
               median_ms_cpu(lambda: depth_fields(depth, '16UC1'), repeats))
        dense_points, dense_rgb = depth_to_points(depth, camera, rgb, stride=1)
        record('depth_to_points stride 1', size, 'numpy',
               median_ms_cpu(lambda: depth_to_points(depth, camera, rgb, stride=1), repeats))
        record('pointcloud2_fields xyz+rgb', size, 'numpy',
               median_ms_cpu(lambda: pointcloud2_fields(dense_points, dense_rgb), repeats))
        record(f'project_to_sparse_depth {cloud_size}', size, 'numpy',
               median_ms_cpu(lambda: project_to_sparse_depth(points, T_cam_from_lidar, camera),
                             repeats))
        tof_camera = camera_for(width, height)
        tof_shift = transform_from_translation_quaternion([0.03, 0, 0], [0, 0, 0, 1])
        record('register_depth (ToF, same size)', size, 'numpy',
               median_ms_cpu(lambda: register_depth(depth, tof_camera, tof_shift, camera),
                             repeats))
        bench_torch_cuda(points, T_cam_from_lidar, camera, cloud_size, size, repeats, record)
    return rows


def bench_torch_cuda(points, transform, camera, cloud_size, size, repeats, record) -> None:
    """The torch projection on CUDA (points resident, and with upload + download)."""
    try:
        import torch
    except ImportError:
        return
    if not torch.cuda.is_available():
        return
    points_gpu = torch.from_numpy(points).cuda()
    transform_gpu = torch.from_numpy(transform)
    record(f'project_to_sparse_depth {cloud_size}', size, 'torch cuda',
           median_ms_cuda(lambda: project_to_sparse_depth_torch(points_gpu, transform_gpu,
                                                                camera), repeats))
    record(f'upload+project+download {cloud_size}', size, 'torch cuda',
           median_ms_cuda(lambda: project_to_sparse_depth_torch(
               torch.from_numpy(points).cuda(), transform_gpu, camera).cpu(), repeats))


def machine_name() -> str:
    try:
        import torch
        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return socket.gethostname()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--repeats', type=int, default=20, help='timed runs per operation')
    parser.add_argument('--out', type=Path, default=Path(__file__).parent / 'results')
    args = parser.parse_args()
    rows = run(args.repeats)
    name = machine_name()
    result = {'machine': name, 'cpu': platform.processor() or platform.machine(),
              'python': platform.python_version(), 'numpy': np.__version__,
              'repeats': args.repeats, 'results': rows}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"core_{re.sub(r'[^A-Za-z0-9]+', '_', name).strip('_').lower()}.json"
    path.write_text(json.dumps(result, indent=1) + '\n')
    print(f'\n{name}, median of {args.repeats} runs\n')
    print('| operation | size | backend | median ms |\n|---|---|---|---:|')
    for row in rows:
        print(f"| {row['operation']} | {row['size']} | {row['backend']} | "
              f"{row['median_ms']:.3f} |")
    print(f'\nwrote {path}')


if __name__ == '__main__':
    main()
