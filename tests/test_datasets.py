"""MetaSR datasets: GT patches, benchmark pairs, .npy fields, the demo photographs, bad files."""
import os
import shutil

import cv2
import numpy as np
import pytest
import torch

from metasr_arch.data.metasr_gt_dataset import MetaSRGTDataset
from metasr_arch.data.metasr_npy_dataset import MetaSRNpyDataset
from metasr_arch.data.metasr_paired_dataset import MetaSRPairedDataset, folder_scale
from metasr_arch.ops.geometry import resolve_scale
from metasr_arch.utils.resize import imresize_np


def write_rgb(path, h, w, seed=0):
    img = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)  # BGR on disk
    cv2.imwrite(str(path), img)
    return img


def test_gt_dataset_crops_rgb_patches_from_the_image(tmp_path):
    bgr = write_rgb(tmp_path / 'a.png', 40, 50)
    ds = MetaSRGTDataset({'name': 't', 'phase': 'train', 'dataroot_gt': str(tmp_path), 'gt_size': [12, 20],
                          'use_hflip': False, 'use_rot': False})
    item = ds[0]
    gt = item['gt']
    assert gt.shape == (3, 12, 20) and gt.dtype == torch.float32 and item['gt_path'].endswith('a.png')
    rgb = torch.from_numpy(bgr[..., ::-1].copy()).permute(2, 0, 1).float() / 255
    # the patch is a window of the RGB image: find it
    hits = [(i, j) for i in range(40 - 12 + 1) for j in range(50 - 20 + 1)
            if torch.allclose(rgb[:, i:i + 12, j:j + 20], gt)]
    assert len(hits) == 1


def test_gt_dataset_reads_lmdb_like_the_folder(tmp_path):
    """An LMDB made by BasicSR's own writer (what scripts/data_preparation/create_lmdb.py calls) gives
    the same images, under the same keys, as the folder it was made from."""
    from basicsr.utils.lmdb_util import make_lmdb_from_imgs
    folder = tmp_path / 'HR'
    folder.mkdir()
    for i, (h, w) in enumerate([(20, 30), (17, 23)]):
        write_rgb(folder / f'im{i}.png', h, w, seed=i)
    make_lmdb_from_imgs(str(folder), str(tmp_path / 'HR.lmdb'), ['im0.png', 'im1.png'], ['im0', 'im1'],
                        multiprocessing_read=False)
    opt = {'name': 'v', 'phase': 'val'}
    disk = MetaSRGTDataset(dict(opt, dataroot_gt=str(folder)))
    lmdb = MetaSRGTDataset(dict(opt, dataroot_gt=str(tmp_path / 'HR.lmdb'), io_backend={'type': 'lmdb'}))
    assert len(lmdb) == len(disk) == 2 and sorted(lmdb.paths) == ['im0', 'im1']
    for i in range(2):
        a, b = disk[i], lmdb[lmdb.paths.index(os.path.splitext(os.path.basename(disk[i]['gt_path']))[0])]
        assert torch.equal(a['gt'], b['gt'])
    # py-lmdb refuses to open one environment twice in a process: the training set reads a copy
    shutil.copytree(tmp_path / 'HR.lmdb', tmp_path / 'train.lmdb')
    train = MetaSRGTDataset(dict(opt, phase='train', gt_size=8, dataroot_gt=str(tmp_path / 'train.lmdb'),
                                 io_backend={'type': 'lmdb'}, use_hflip=False, use_rot=False))
    patch, whole = train[1]['gt'], lmdb[1]['gt']  # both datasets list the keys in the same order
    assert patch.shape == (3, 8, 8)
    assert any(torch.equal(whole[:, i:i + 8, j:j + 8], patch)
               for i in range(whole.shape[1] - 7) for j in range(whole.shape[2] - 7))  # a window of the image


def test_gt_dataset_non_square_patches_keep_their_shape(tmp_path):
    write_rgb(tmp_path / 'a.png', 40, 50)
    ds = MetaSRGTDataset({'name': 't', 'phase': 'train', 'dataroot_gt': str(tmp_path), 'gt_size': [10, 30]})
    assert all(ds[0]['gt'].shape == (3, 10, 30) for _ in range(20))
    val = MetaSRGTDataset({'name': 'v', 'phase': 'val', 'dataroot_gt': str(tmp_path)})
    assert val[0]['gt'].shape == (3, 40, 50)


def test_gt_dataset_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='dataroot_gt'):
        MetaSRGTDataset({'name': 't', 'phase': 'train', 'dataroot_gt': str(tmp_path / 'missing'), 'gt_size': 8})
    (tmp_path / 'bad.png').write_bytes(b'\x89PNG\r\n\x1a\n garbage')
    ds = MetaSRGTDataset({'name': 't', 'phase': 'val', 'dataroot_gt': str(tmp_path)})
    with pytest.raises(OSError, match='bad.png'):
        ds[0]
    write_rgb(tmp_path / 'small.png', 8, 8)
    ds = MetaSRGTDataset({'name': 't', 'phase': 'train', 'dataroot_gt': str(tmp_path), 'gt_size': 16})
    with pytest.raises(ValueError, match='small.png'):
        ds[1]
    with pytest.raises(ValueError, match='gt_size'):
        MetaSRGTDataset({'name': 't', 'phase': 'train', 'dataroot_gt': str(tmp_path)})


def test_paired_dataset_benchmark_layout(tmp_path):
    hr = tmp_path / 'HR'
    hr.mkdir()
    bgr = write_rgb(hr / 'x.png', 23, 31)
    for (r_v, r_h), folder in (((2.5, 2.5), 'X2.50'), ((2.0, 3.5), 'X2.00_X3.50')):
        h, w = int(23 // r_v), int(31 // r_h)
        spec = resolve_scale(h, w, (r_v, r_h))
        lr = imresize_np(bgr[:spec.out_h, :spec.out_w].astype(np.float32) / 255, (h, w))
        (tmp_path / 'LR_bicubic' / folder).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / 'LR_bicubic' / folder / 'x.png'), np.clip(lr * 255 + 0.5, 0, 255).astype(np.uint8))
    ds = MetaSRPairedDataset({'name': 'p', 'phase': 'val', 'dataroot': str(tmp_path)})
    assert len(ds) == 2
    items = {tuple(ds[i]['scale'].tolist()): ds[i] for i in range(2)}
    assert set(items) == {(2.5, 2.5), (2.0, 3.5)}
    it = items[(2.0, 3.5)]
    assert it['lq'].shape == (3, 11, 8) and it['gt'].shape == (3, 22, 28)  # floor(11*2), floor(8*3.5)
    rgb = torch.from_numpy(bgr[..., ::-1].copy()).permute(2, 0, 1).float() / 255
    assert torch.allclose(it['gt'], rgb[:, :22, :28])
    only = MetaSRPairedDataset({'name': 'p', 'phase': 'val', 'dataroot': str(tmp_path), 'scales': [[2, 3.5]]})
    assert len(only) == 1
    with pytest.raises(FileNotFoundError, match='X3.00'):
        MetaSRPairedDataset({'name': 'p', 'phase': 'val', 'dataroot': str(tmp_path), 'scales': [3]})
    assert folder_scale('X2.00_X3.50') == (2.0, 3.5) and folder_scale('X4.00') == (4.0, 4.0)


def test_npy_dataset(tmp_path):
    rng = np.random.default_rng(0)
    field = rng.normal(size=(30, 40)).astype(np.float32) * 10 + 280
    np.save(tmp_path / 'f.npy', field)
    ds = MetaSRNpyDataset({'name': 'g', 'phase': 'val', 'dataroot_gt': str(tmp_path), 'data_range': [200, 360]})
    assert ds.float_data
    gt = ds[0]['gt']
    assert gt.shape == (1, 30, 40) and torch.allclose(gt[0], torch.from_numpy((field - 200) / 160), atol=1e-6)
    train = MetaSRNpyDataset({'name': 'g', 'phase': 'train', 'dataroot_gt': str(tmp_path), 'gt_size': [10, 12]})
    assert train[0]['gt'].shape == (1, 10, 12)
    (tmp_path / 'broken.npy').write_bytes(b'not an array')
    ds = MetaSRNpyDataset({'name': 'g', 'phase': 'val', 'dataroot_gt': str(tmp_path)})
    with pytest.raises(OSError, match='broken.npy'):
        ds[0]  # sorted: broken.npy comes first


def test_demo_data_materialises_disjoint_sets(tmp_path):
    from metasr_arch.data import demo_data
    assert not set(demo_data.TRAIN) & set(demo_data.VAL)
    ds = MetaSRGTDataset({'name': 'demo_val', 'phase': 'val', 'dataroot_gt': str(tmp_path / 'val'),
                          'materialize': 'skimage_demo_val'})
    assert len(ds) == len(demo_data.VAL)
    from skimage import data
    cam = ds.paths.index(str(tmp_path / 'val' / 'camera.png'))
    img = ds[cam]['gt']  # grey camera stored as RGB, centre crop of VAL_MAX
    ref = torch.from_numpy(data.camera()[128:384, 128:384].astype(np.float32) / 255)
    assert img.shape == (3, 256, 256) and torch.equal(img[0], ref) and torch.equal(img[1], img[2])
    mtime = os.path.getmtime(ds.paths[0])
    MetaSRGTDataset({'name': 'demo_val', 'phase': 'val', 'dataroot_gt': str(tmp_path / 'val'),
                     'materialize': 'skimage_demo_val'})
    assert os.path.getmtime(ds.paths[0]) == mtime  # not rewritten
