"""NYU Depth v2 in the HDF5 layout of sparse-to-dense (Ma & Karaman 2018).

    root/{train,val}/{scene}/{frame}.h5   with 'rgb' (3,480,640) uint8 and 'depth' (480,640) m

Following that paper, each frame is resized by 250/480, centre-cropped to 228x304 and a sparse
input of `num_samples` (500) depths is drawn uniformly from the valid ground truth. Needs h5py.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from cspn_ros.data.augment import crop, rescale

#: Kinect colour intrinsics of the 640x480 NYU v2 images (fx, fy, cx, cy), from the toolbox.
NYU_INTRINSICS = (518.857901, 519.469611, 325.582449, 253.736166)
NYU_CROP = (228, 304)
NYU_SCALE = 250.0 / 480.0


def sample_sparse_depth(depth: np.ndarray, num_samples: int,
                        rng: np.random.Generator) -> np.ndarray:
    """Keep `num_samples` uniformly chosen valid pixels of `depth` (H,W) metres, zero the rest."""
    valid = np.flatnonzero(depth > 0)
    keep = rng.choice(valid, size=min(num_samples, valid.size), replace=False)
    sparse = np.zeros(depth.size, dtype=np.float32)
    sparse[keep] = depth.ravel()[keep]
    return sparse.reshape(depth.shape)


class NyuDepthV2:
    """Samples (rgb, sparse, target, K); the sparse pattern is fixed per (seed, index)."""

    def __init__(self, root: str | Path, split: str = 'train', num_samples: int = 500,
                 seed: int = 0):
        try:
            import h5py  # noqa: F401 (checked here so the error names the missing package)
        except ImportError as error:
            raise ImportError('reading NYU Depth v2 HDF5 files needs h5py '
                              '(pip install h5py)') from error
        self.files = sorted((Path(root) / split).glob('*/*.h5'))
        if not self.files:
            raise FileNotFoundError(f'no */*.h5 files under {Path(root) / split}')
        self.num_samples = num_samples
        self.seed = seed

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        """dict(rgb (228,304,3) uint8, sparse, target (228,304) float32 m, K (3,3) float64)."""
        import h5py
        with h5py.File(self.files[index], 'r') as file:
            rgb = np.transpose(np.asarray(file['rgb'], dtype=np.uint8), (1, 2, 0))
            depth = np.asarray(file['depth'], dtype=np.float32)
        fx, fy, cx, cy = NYU_INTRINSICS
        sx, sy = depth.shape[1] / 640.0, depth.shape[0] / 480.0  # intrinsics for this size
        K = np.array([[fx * sx, 0, (cx + 0.5) * sx - 0.5], [0, fy * sy, (cy + 0.5) * sy - 0.5],
                      [0, 0, 1]], dtype=np.float64)
        sample = rescale({'rgb': np.ascontiguousarray(rgb), 'target': depth, 'K': K},
                         NYU_SCALE * 480.0 / depth.shape[0])
        height, width = sample['rgb'].shape[:2]
        sample = crop(sample, (height - NYU_CROP[0]) // 2, (width - NYU_CROP[1]) // 2, *NYU_CROP)
        rng = np.random.default_rng([self.seed, index])
        sample['sparse'] = sample_sparse_depth(sample['target'], self.num_samples, rng)
        return sample
