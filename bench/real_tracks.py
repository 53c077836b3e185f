"""Tracks of the real-data suite: real camera frames with a sparse input and held-out truth.

Every set in ../shared/data/real (each README.txt there says where it comes from) becomes one
or more tracks; a track holds Samples (rgb, sparse input, target), all seeded, so the numbers
repeat. Two kinds:

- 'lidar': the LiDAR points are projected into the camera with the project's own projection
  (cspn_ros.core.projection, z-buffer: the nearest point wins a pixel); a seeded 20% of the
  projected pixels is held out as the target, the other 80% is the input.
  Argoverse has no raw points: its truth is the LiDAR depth accumulated over 11 sweeps
  (depth = fx * baseline / disparity). Two tracks: 'argoverse_accumulated' feeds a seeded 80%
  of it and scores the rest (like the other LiDAR tracks, but semi-dense); 'argoverse_rings'
  feeds a single-sweep-like pattern, the accumulated pixels on the rings the two VLP-32C
  would scan from their mounting, and scores every other accumulated pixel.
- 'depthcam': a dense depth camera frame (Redwood, TUM, SUN RGB-D, NYU raw) is subsampled to
  an input (500 or 5000 random points, 32 or 64 one-pixel rows, or ToF-like holes: half the
  pixels hidden at random plus block holes); the target is every other valid pixel.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import sys
import zlib
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for _path in (str(ROOT), str(ROOT / 'scripts'), str(ROOT / 'bench')):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from cspn_ros.core.camera import PinholeCamera  # noqa: E402
from cspn_ros.core.projection import (project_to_sparse_depth,  # noqa: E402
                                      transform_from_translation_quaternion)
from cspn_ros.data.bag_samples import holdout_split  # noqa: E402
from cspn_ros.data.nyu import sample_sparse_depth  # noqa: E402
from eval_real import beam_rows  # noqa: E402
from real_to_bag import read_redwood  # noqa: E402

#: ../shared/data/real beside the checkout, else shared/data/real inside it (the GPU machine's
#: copy of the tree).
DEFAULT_ROOT = next((path for path in (ROOT.parent / 'shared' / 'data' / 'real',
                                       ROOT / 'shared' / 'data' / 'real') if path.is_dir()),
                    ROOT.parent / 'shared' / 'data' / 'real')
HOLDOUT_SHARE = 0.2
#: LiDAR samples per frame (camera): one per holdout seed.
HOLDOUT_SEEDS = {'kitti_hdl64': 5, 'nuscenes_hdl32': 2, 'pandar64_raw': 2,
                 'pandar64_undistorted': 2, 'livox_mid40': 1, 'argoverse_accumulated': 5}
#: Livox: points per rosette frame (about 0.1 s) and the chunks used as frames.
LIVOX_FRAME_POINTS = 10_000
LIVOX_CHUNKS = (0, 4, 8, 12, 16, 20)
#: Argoverse single-sweep-like input: VLP-32C beam elevations (degrees, from its manual), the
#: half width of a ring, and the samples (beam table shifts).
VLP32C_ELEVATIONS_DEG = (-25.0, -15.639, -11.31, -8.843, -7.254, -6.148, -5.333, -4.667, -4.0,
                         -3.667, -3.333, -3.0, -2.667, -2.333, -2.0, -1.667, -1.333, -1.0,
                         -0.667, -0.333, 0.0, 0.333, 0.667, 1.0, 1.333, 1.667, 2.333, 3.333,
                         4.667, 7.0, 10.333, 15.0)
RING_HALF_WIDTH_DEG = 0.03
ARGOVERSE_RING_OFFSETS = 5
#: depthcam regimes: name -> (rgb-free) input maker, see `depthcam_input`.
DEPTHCAM_REGIMES = ('random500', 'random5000', 'rows32', 'rows64', 'holes')
#: ToF-like holes: share of valid pixels hidden at random, block holes and their size range
#: (share of the image side).
HOLES_RANDOM_SHARE = 0.5
HOLES_BLOCKS = 8
HOLES_BLOCK_SIDE = (0.05, 0.15)
#: quick mode: samples per track, and images wider than this are halved.
QUICK_SAMPLES = 2
QUICK_MAX_WIDTH = 1300


@dataclasses.dataclass
class Sample:
    """One scored frame: rgb (H,W,3) uint8, sparse (H,W) float32 metres (0 = missing, the
    input), target (H,W) float32 metres (0 = not scored, never in the input)."""

    rgb: np.ndarray
    sparse: np.ndarray
    target: np.ndarray
    name: str


@dataclasses.dataclass
class Track:
    """Samples of one data set in one regime; kind is 'lidar' or 'depthcam'."""

    name: str
    kind: str
    frames: list[Sample]


def sample_rng(name: str) -> np.random.Generator:
    """A generator seeded by the sample's name (stable across runs and machines)."""
    return np.random.default_rng(zlib.crc32(name.encode()))


def read_rgb(path: Path) -> np.ndarray:
    """(H,W,3) uint8 RGB of an image file; ValueError if it cannot be read."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f'cannot read image {path}')
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_lidar(path: Path, fields: int) -> np.ndarray:
    """(N,3) float32 x, y, z metres of a flat float32 file with `fields` values per point."""
    return np.fromfile(path, np.float32).reshape(-1, fields)[:, :3]


def camera_from_calib(calib: dict, distorted: bool) -> PinholeCamera:
    """PinholeCamera of a calib.json (K, width, height, dist_coeffs); distorted=False for the
    pinhole (undistorted or rectified) image."""
    coefficients = np.asarray(calib['dist_coeffs'] if distorted else np.zeros(5), np.float64)
    return PinholeCamera(calib['width'], calib['height'], np.asarray(calib['K']),
                         D=coefficients, distortion_model='plumb_bob')


def _fit(rgb: np.ndarray, camera: PinholeCamera, quick: bool) -> tuple[np.ndarray, PinholeCamera]:
    """(rgb, camera), halved while wider than QUICK_MAX_WIDTH in quick mode."""
    while quick and camera.width > QUICK_MAX_WIDTH:
        camera = camera.scaled(camera.width // 2, camera.height // 2)
        rgb = cv2.resize(rgb, (camera.width, camera.height), interpolation=cv2.INTER_AREA)
    return rgb, camera


def holdout_samples(name: str, rgb: np.ndarray, points: np.ndarray, T_cam_from_lidar: np.ndarray,
                    camera: PinholeCamera, seeds: int, quick: bool) -> list[Sample]:
    """`seeds` Samples of one camera frame: points (N,3) in the LiDAR frame are projected
    (z-buffer), then a seeded HOLDOUT_SHARE of the hit pixels is the target."""
    rgb, camera = _fit(rgb, camera, quick)
    projected = project_to_sparse_depth(points, T_cam_from_lidar, camera)
    samples = []
    for seed in range(seeds):
        sample_name = f'{name}/seed{seed}'
        sparse, target = holdout_split(projected, HOLDOUT_SHARE, sample_rng(sample_name))
        samples.append(Sample(rgb, sparse, target, sample_name))
    return samples


def _kitti(root: Path, quick: bool) -> Iterator[Sample]:
    # 000000_stub is left out: 800 points on one ring under a 25-colour palette image.
    folder = root / 'kitti_object_mmdet3d' / '000008'
    calib = json.loads((folder / 'calib.json').read_text())
    yield from holdout_samples(
        'kitti/000008', read_rgb(folder / calib['image']),
        read_lidar(folder / calib['lidar'], len(calib['lidar_fields'])),
        np.asarray(calib['T_cam_from_lidar']), camera_from_calib(calib, False),
        HOLDOUT_SEEDS['kitti_hdl64'], quick)


def _nuscenes(root: Path, quick: bool) -> Iterator[Sample]:
    folder = root / 'nuscenes_mmdet3d'
    for calib_path in sorted(folder.glob('calib_CAM_*.json')):
        calib = json.loads(calib_path.read_text())
        yield from holdout_samples(
            f'nuscenes/{calib_path.stem[len("calib_"):]}', read_rgb(folder / calib['image']),
            read_lidar(folder / calib['lidar'], len(calib['lidar_fields'])),
            np.asarray(calib['T_cam_from_lidar']), camera_from_calib(calib, False),
            HOLDOUT_SEEDS['nuscenes_hdl32'], quick)


def _pandar(root: Path, quick: bool, distorted: bool) -> Iterator[Sample]:
    track = 'pandar64_raw' if distorted else 'pandar64_undistorted'
    for folder in sorted(p for p in (root / 'pjlab_pandar64_sensorscalib').iterdir()
                         if (p / 'calib.json').is_file()):
        calib = json.loads((folder / 'calib.json').read_text())
        image = calib['image'] if distorted else calib['image_undistorted']
        yield from holdout_samples(
            f'{track}/{folder.name}', read_rgb(folder / image),
            read_lidar(folder / calib['lidar'], len(calib['lidar_fields'])),
            np.asarray(calib['T_cam_from_lidar']), camera_from_calib(calib, distorted),
            HOLDOUT_SEEDS[track], quick)


def _livox(root: Path, quick: bool) -> Iterator[Sample]:
    """Raw (distorted) left and right images; each frame is one 10,000-point chunk of the
    acquisition-ordered scan (about one 0.1 s rosette)."""
    folder = root / 'livox_mid40_mlcc'
    for side in ('left', 'right'):
        calib = json.loads((folder / f'calib_{side}.json').read_text())
        points = read_lidar(folder / calib['lidar'], len(calib['lidar_fields']))
        rgb = read_rgb(folder / calib['image'])
        for chunk in LIVOX_CHUNKS:
            chunk_points = points[chunk * LIVOX_FRAME_POINTS:(chunk + 1) * LIVOX_FRAME_POINTS]
            if len(chunk_points) < LIVOX_FRAME_POINTS:
                continue
            yield from holdout_samples(
                f'livox/{side}/chunk{chunk}', rgb, chunk_points,
                np.asarray(calib['T_cam_from_lidar']), camera_from_calib(calib, True),
                HOLDOUT_SEEDS['livox_mid40'], quick)


def argoverse_depth(folder: Path) -> tuple[np.ndarray, dict]:
    """(depth (H,W) float32 metres from disparity.png, 0 = none; calib dict)."""
    calib = json.loads((folder / 'calib.json').read_text())
    raw = cv2.imread(str(folder / calib['depth_source']), cv2.IMREAD_UNCHANGED)
    if raw is None or raw.dtype != np.uint16:
        raise ValueError(f'{folder}: cannot read {calib["depth_source"]} as uint16 disparity')
    disparity = raw.astype(np.float32) / np.float32(calib['disparity_scale'])
    depth = np.where(disparity > 0,
                     calib['fx_times_baseline'] / np.maximum(disparity, 1e-6), 0)
    return depth.astype(np.float32), calib


def _argoverse(root: Path, quick: bool) -> Iterator[Sample]:
    """Truth and input are the accumulated LiDAR depth (the set has no raw points): a seeded
    80% of its pixels is the input, the other 20% the target. In quick mode the
    depth is re-projected through the same z-buffer into the halved camera."""
    folder = root / 'argoverse1_stereo_lidargt'
    depth, calib = argoverse_depth(folder)
    camera = camera_from_calib(calib, False)
    points, _ = camera.backproject(depth)
    yield from holdout_samples('argoverse', read_rgb(folder / calib['image']), points,
                               np.eye(4), camera, HOLDOUT_SEEDS['argoverse_accumulated'], quick)


def _argoverse_lidar_poses(folder: Path) -> list[np.ndarray]:
    """(4,4) T_lidar_from_camera of the up and down VLP-32C, through the vehicle frame.

    The rectified camera's pose is taken as the raw left stereo camera's (the rectifying
    rotation is not in the set; it is small next to the ring pattern's needs)."""
    calibration = json.loads((folder / 'vehicle_calibration_stereo_info.json').read_text())

    def pose(se3: dict) -> np.ndarray:
        w, x, y, z = se3['rotation']['coefficients']
        return transform_from_translation_quaternion(se3['translation'], [x, y, z, w])

    cameras = {entry['key']: entry['value'] for entry in calibration['camera_data_']}
    vehicle_from_camera = pose(cameras['image_raw_stereo_front_left']['vehicle_SE3_camera_'])
    return [np.linalg.inv(pose(calibration[key])) @ vehicle_from_camera
            for key in ('vehicle_SE3_up_lidar_', 'vehicle_SE3_down_lidar_')]


def ring_mask(points: np.ndarray, T_lidar_from_camera: np.ndarray, offset_deg: float
              ) -> np.ndarray:
    """(N,) bool: camera-frame points (N,3) whose elevation seen from the LiDAR lies within
    RING_HALF_WIDTH_DEG of a VLP-32C beam (shifted by offset_deg)."""
    lidar = points.astype(np.float64) @ T_lidar_from_camera[:3, :3].T + T_lidar_from_camera[:3, 3]
    elevation = np.degrees(np.arctan2(lidar[:, 2], np.hypot(lidar[:, 0], lidar[:, 1])))
    beams = np.asarray(VLP32C_ELEVATIONS_DEG) + offset_deg
    nearest = np.abs(elevation[:, None] - beams[None, :]).min(axis=1)
    return nearest <= RING_HALF_WIDTH_DEG


def _argoverse_rings(root: Path, quick: bool) -> Iterator[Sample]:
    """Single-sweep-like input from the accumulated depth: the pixels on the 2 x 32 rings
    that the up and down VLP-32C would scan from their mounting (elevation within
    RING_HALF_WIDTH_DEG of a beam); the target is every other accumulated pixel. The 11
    accumulated sweeps are smeared in elevation (no ring survives in them), so each sample
    shifts the beam table by a different fraction of the 1/3 deg beam spacing."""
    folder = root / 'argoverse1_stereo_lidargt'
    depth, calib = argoverse_depth(folder)
    rgb, camera = _fit(read_rgb(folder / calib['image']), camera_from_calib(calib, False),
                       quick)
    points, _ = camera_from_calib(calib, False).backproject(depth)
    depth = project_to_sparse_depth(points, np.eye(4), camera)
    points, pixels = camera.backproject(depth)
    poses = _argoverse_lidar_poses(folder)
    for index in range(ARGOVERSE_RING_OFFSETS):
        offset = index / ARGOVERSE_RING_OFFSETS / 3.0
        on_ring = np.zeros(depth.size, bool)
        on_ring[pixels] = np.logical_or.reduce([ring_mask(points, T, offset) for T in poses])
        on_ring = on_ring.reshape(depth.shape)
        yield Sample(rgb, np.where(on_ring, depth, 0).astype(np.float32),
                     np.where(on_ring, 0, depth).astype(np.float32),
                     f'argoverse_rings/offset{offset:.3f}deg')


def depthcam_input(depth: np.ndarray, regime: str, rng: np.random.Generator) -> np.ndarray:
    """(H,W) float32 metres input of `regime` (DEPTHCAM_REGIMES) from a dense depth frame."""
    valid = depth > 0
    if regime.startswith('random'):
        return sample_sparse_depth(depth, int(regime[len('random'):]), rng)
    if regime.startswith('rows'):
        on_row = np.zeros(depth.shape, bool)
        on_row[beam_rows(depth.shape[0], int(regime[len('rows'):]))] = True
        return np.where(on_row, depth, 0).astype(np.float32)
    if regime == 'holes':
        kept = valid & (rng.random(depth.shape) >= HOLES_RANDOM_SHARE)
        height, width = depth.shape
        for _ in range(HOLES_BLOCKS):
            h, w = (int(side * rng.uniform(*HOLES_BLOCK_SIDE)) for side in (height, width))
            top, left = rng.integers(0, height - h), rng.integers(0, width - w)
            kept[top:top + h, left:left + w] = False
        return np.where(kept, depth, 0).astype(np.float32)
    raise ValueError(f'unknown depth-camera regime {regime!r}; known: {DEPTHCAM_REGIMES}')


def depthcam_samples(set_name: str, frames: list[tuple[str, np.ndarray, np.ndarray]],
                     regime: str) -> list[Sample]:
    """Samples of `regime` from (frame name, rgb, depth metres) frames: input from
    `depthcam_input`, target = every other valid pixel."""
    samples = []
    for frame_name, rgb, depth in frames:
        name = f'{set_name}/{frame_name}/{regime}'
        sparse = depthcam_input(depth, regime, sample_rng(name))
        target = np.where(sparse > 0, 0, depth).astype(np.float32)
        samples.append(Sample(rgb, sparse, target, name))
    return samples


def read_redwood_frames(root: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, rgb, depth metres) of the 5 Redwood frames."""
    _, frames = read_redwood(root / 'redwood_rgbd')
    return [(f'{frame.index:05d}', frame.rgb, frame.depth_m) for frame in frames]


def _read_depth_u16(path: Path) -> np.ndarray:
    depth = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if depth is None or depth.dtype != np.uint16:
        raise ValueError(f'cannot read {path} as a 16-bit depth image')
    return depth


def read_other_rgbd_frames(root: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, rgb, depth metres) of the TUM, SUN RGB-D and NYU raw frames (other_formats/).

    TUM: depth / 5000; SUN: 16-bit rotate by 3 bits, / 1000; NYU raw Kinect: 351.3 / (1092.5 -
    raw), 2047 = no return (the file's bytes are little-endian), not registered to the colour
    camera (the colour is only a guide).
    """
    folder = root / 'redwood_rgbd' / 'other_formats'
    tum = _read_depth_u16(folder / 'TUM_depth.png').astype(np.float32) / 5000.0
    sun_raw = _read_depth_u16(folder / 'SUN_depth.png')
    sun = ((sun_raw >> 3) | (sun_raw << 13)).astype(np.float32) / 1000.0
    nyu_raw = _read_depth_u16(folder / 'NYU_depth.pgm')
    if nyu_raw.max() > 2047:  # stored little-endian under a big-endian PGM header
        nyu_raw = nyu_raw.byteswap()
    nyu_raw = nyu_raw.astype(np.float32)
    nyu = np.where(nyu_raw < 2047, 351.3 / np.maximum(1092.5 - nyu_raw, 1e-3), 0)
    nyu = np.where((nyu > 0) & (nyu < 10.0), nyu, 0).astype(np.float32)
    return [('tum', read_rgb(folder / 'TUM_color.png'), tum),
            ('sun', read_rgb(folder / 'SUN_color.jpg'), sun),
            ('nyu', read_rgb(folder / 'NYU_color.ppm'), nyu)]


LIDAR_TRACKS: dict[str, Callable[[Path, bool], Iterator[Sample]]] = {
    'kitti_hdl64': _kitti,
    'nuscenes_hdl32': _nuscenes,
    'pandar64_raw': functools.partial(_pandar, distorted=True),
    'pandar64_undistorted': functools.partial(_pandar, distorted=False),
    'livox_mid40': _livox,
    'argoverse_accumulated': _argoverse,
    'argoverse_rings': _argoverse_rings,
}
DEPTHCAM_SETS: dict[str, Callable[[Path], list]] = {
    'redwood': read_redwood_frames,
    'tum_sun_nyu': read_other_rgbd_frames,
}


def track_names() -> list[str]:
    """Every track name `load_tracks` can return, in its order."""
    return [*LIDAR_TRACKS, *(f'{s}_{r}' for s in DEPTHCAM_SETS for r in DEPTHCAM_REGIMES)]


def _spread(samples: list[Sample], count: int) -> list[Sample]:
    """`count` samples spread evenly over the list (all when it is not longer)."""
    if len(samples) <= count:
        return samples
    return [samples[i] for i in np.linspace(0, len(samples) - 1, count).round().astype(int)]


@functools.lru_cache(maxsize=4)
def _load(root: Path, quick: bool, names: tuple[str, ...]) -> tuple[Track, ...]:
    tracks = []
    for name, make in LIDAR_TRACKS.items():
        if name in names:
            samples = list(make(root, quick))
            tracks.append(Track(name, 'lidar', _spread(samples, QUICK_SAMPLES) if quick
                                else samples))
    for set_name, read in DEPTHCAM_SETS.items():
        wanted = [r for r in DEPTHCAM_REGIMES if f'{set_name}_{r}' in names]
        if not wanted:
            continue
        frames = read(root)
        if quick:
            frames = frames[:QUICK_SAMPLES]
        for regime in wanted:
            tracks.append(Track(f'{set_name}_{regime}', 'depthcam',
                                depthcam_samples(set_name, frames, regime)))
    return tuple(tracks)


def load_tracks(root: Path | None = None, quick: bool = False,
                names: list[str] | None = None) -> list[Track]:
    """Tracks of the real sets under `root` (default ../shared/data/real), cached in memory.

    quick: QUICK_SAMPLES samples per track, images wider than QUICK_MAX_WIDTH halved.
    names: only these tracks (default all, see `track_names`). Raises FileNotFoundError when
    root does not exist.
    """
    root = Path(root) if root is not None else DEFAULT_ROOT
    if not root.is_dir():
        raise FileNotFoundError(f'no real data at {root}')
    unknown = set(names or ()) - set(track_names())
    if unknown:
        raise ValueError(f'unknown tracks {sorted(unknown)}; known: {track_names()}')
    return list(_load(root.resolve(), quick, tuple(names or track_names())))
