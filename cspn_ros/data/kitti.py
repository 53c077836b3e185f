"""KITTI Depth Completion (Uhrig et al. 2017) in its published folder layout.

    root/data_depth_velodyne/{split}/{drive}/proj_depth/velodyne_raw/{camera}/{frame}.png
    root/data_depth_annotated/{split}/{drive}/proj_depth/groundtruth/{camera}/{frame}.png
    raw_root/{date}/{drive}/{camera}/data/{frame}.png          (KITTI raw RGB)
    raw_root/{date}/calib_cam_to_cam.txt                       (P_rect_02 / P_rect_03)

Depth PNGs are uint16 with metres = value / 256 and 0 = no measurement. Samples use the
standard bottom crop 352x1216 (rows without LiDAR returns are cut). `raw_root` defaults to
`root/raw`.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from cspn_ros.data.augment import bottom_crop

#: Standard KITTI depth-completion crop (height, width).
KITTI_CROP = (352, 1216)


def read_depth_png(path: Path) -> np.ndarray:
    """KITTI uint16 depth PNG -> (H,W) float32 metres (value / 256; 0 stays 0)."""
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None or raw.dtype != np.uint16 or raw.ndim != 2:
        raise ValueError(f'{path}: not a single-channel uint16 KITTI depth PNG')
    return raw.astype(np.float32) / 256.0


def read_rectified_intrinsics(calib_path: Path, camera: str) -> np.ndarray:
    """K (3,3) float64 of a rectified camera from calib_cam_to_cam.txt (P_rect_0X[:, :3])."""
    key = f'P_rect_{camera[-2:]}:'
    for line in Path(calib_path).read_text().splitlines():
        if line.startswith(key):
            return np.array(line[len(key):].split(), dtype=np.float64).reshape(3, 4)[:, :3].copy()
    raise ValueError(f'{calib_path}: no {key[:-1]} entry')


class KittiDepthCompletion:
    """Samples (rgb, sparse, target, K) of one split: every frame with a ground-truth PNG."""

    def __init__(self, root: str | Path, split: str = 'train', camera: str = 'image_02',
                 raw_root: str | Path | None = None, crop: tuple[int, int] | None = KITTI_CROP):
        self.root = Path(root)
        self.raw_root = Path(raw_root) if raw_root is not None else self.root / 'raw'
        self.camera = camera
        self.crop = crop
        pattern = f'*/proj_depth/groundtruth/{camera}/*.png'
        self.ground_truth = sorted((self.root / 'data_depth_annotated' / split).glob(pattern))
        if not self.ground_truth:
            raise FileNotFoundError(f'no ground truth matching {pattern} under '
                                    f'{self.root / "data_depth_annotated" / split}')
        self.split = split

    def __len__(self) -> int:
        return len(self.ground_truth)

    def __getitem__(self, index: int) -> dict:
        """dict(rgb (H,W,3) uint8, sparse, target (H,W) float32 m, K (3,3)), bottom-cropped."""
        gt_path = self.ground_truth[index]
        drive, frame = gt_path.parents[3].name, gt_path.name
        sparse_path = (self.root / 'data_depth_velodyne' / self.split / drive / 'proj_depth'
                       / 'velodyne_raw' / self.camera / frame)
        rgb_path = self.raw_root / drive[:10] / drive / self.camera / 'data' / frame
        bgr = cv2.imread(str(rgb_path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise FileNotFoundError(f'missing or unreadable RGB image {rgb_path}')
        sample = {
            'rgb': cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB),
            'sparse': read_depth_png(sparse_path),
            'target': read_depth_png(gt_path),
            'K': read_rectified_intrinsics(self.raw_root / drive[:10] / 'calib_cam_to_cam.txt',
                                           self.camera),
        }
        shapes = {k: sample[k].shape[:2] for k in ('rgb', 'sparse', 'target')}
        if len(set(shapes.values())) != 1:
            raise ValueError(f'{drive}/{frame}: image sizes differ {shapes}')
        return bottom_crop(sample, *self.crop) if self.crop else sample
