"""KITTI depth-completion and NYU v2 (sparse-to-dense HDF5) loaders on tiny files made here."""
import cv2
import numpy as np
import pytest

from cspn_ros.data.kitti import KITTI_CROP, KittiDepthCompletion, read_rectified_intrinsics


def _write_kitti(root, rng, height=360, width=1230):
    drive = '2011_09_26_drive_0001_sync'
    frames = {}
    for frame in ('0000000005.png', '0000000006.png'):
        sparse = np.where(rng.random((height, width)) < 0.05,
                          rng.integers(256, 80 * 256, (height, width)), 0).astype(np.uint16)
        gt = np.where(rng.random((height, width)) < 0.3,
                      rng.integers(256, 80 * 256, (height, width)), 0).astype(np.uint16)
        rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        for sub, image in (('data_depth_velodyne/train/{d}/proj_depth/velodyne_raw', sparse),
                           ('data_depth_annotated/train/{d}/proj_depth/groundtruth', gt)):
            path = root / sub.format(d=drive) / 'image_02' / frame
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), image)
        path = root / 'raw' / drive[:10] / drive / 'image_02' / 'data' / frame
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        frames[frame] = (sparse, gt, rgb)
    P = rng.uniform(100, 700, (3, 4))
    (root / 'raw' / drive[:10] / 'calib_cam_to_cam.txt').write_text(
        'calib_time: 09-Jan-2012\nP_rect_00: ' + ' '.join(['1'] * 12) + '\n'
        'P_rect_02: ' + ' '.join(f'{v:.9e}' for v in P.ravel()) + '\n')
    return frames, P


def test_kitti_loader_decodes_depth_and_applies_the_bottom_crop(tmp_path):
    rng = np.random.default_rng()
    frames, P = _write_kitti(tmp_path, rng)
    dataset = KittiDepthCompletion(tmp_path, 'train')
    assert len(dataset) == 2
    sample = dataset[1]
    sparse, gt, rgb = frames['0000000006.png']
    top, left = 360 - KITTI_CROP[0], (1230 - KITTI_CROP[1]) // 2
    window = np.s_[top:, left:left + KITTI_CROP[1]]
    assert sample['rgb'].shape == (*KITTI_CROP, 3)
    np.testing.assert_array_equal(sample['rgb'], rgb[window])
    np.testing.assert_array_equal(sample['sparse'], sparse[window].astype(np.float64) / 256)
    np.testing.assert_array_equal(sample['target'], gt[window].astype(np.float64) / 256)
    np.testing.assert_allclose(sample['K'][:2, 2], P[:2, 2] - [left, top], rtol=1e-8)
    np.testing.assert_allclose(sample['K'][0, 0], P[0, 0], rtol=1e-8)


def test_kitti_errors_name_the_missing_pieces(tmp_path):
    with pytest.raises(FileNotFoundError, match='data_depth_annotated'):
        KittiDepthCompletion(tmp_path)
    calib = tmp_path / 'calib.txt'
    calib.write_text('P_rect_00: 1 0 0 0 0 1 0 0 0 0 1 0\n')
    with pytest.raises(ValueError, match='P_rect_02'):
        read_rectified_intrinsics(calib, 'image_02')


def test_nyu_loader_crops_and_samples_500_points(tmp_path):
    h5py = pytest.importorskip('h5py', reason='h5py is not installed in this environment')
    from cspn_ros.data.nyu import NYU_CROP, NyuDepthV2
    rng = np.random.default_rng()
    path = tmp_path / 'val' / 'scene_0001' / '00001.h5'
    path.parent.mkdir(parents=True)
    depth = rng.uniform(0.5, 10, (480, 640)).astype(np.float32)
    with h5py.File(path, 'w') as file:
        file['rgb'] = rng.integers(0, 256, (3, 480, 640), dtype=np.uint8)
        file['depth'] = depth
    dataset = NyuDepthV2(tmp_path, 'val', num_samples=500, seed=3)
    sample = dataset[0]
    assert sample['rgb'].shape == (*NYU_CROP, 3) and sample['target'].shape == NYU_CROP
    assert np.count_nonzero(sample['sparse']) == 500
    kept = sample['sparse'] > 0
    np.testing.assert_array_equal(sample['sparse'][kept], sample['target'][kept])
    np.testing.assert_array_equal(dataset[0]['sparse'], sample['sparse'])  # fixed per index
