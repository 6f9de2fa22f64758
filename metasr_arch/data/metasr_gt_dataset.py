"""MetaSRGTDataset: ground-truth images only; the model makes the LR on the fly at each batch's scale.

Options (``datasets: train:`` or ``val_*:``)::

    type: MetaSRGTDataset
    dataroot_gt: datasets/DIV2K/DIV2K_train_HR       # folder, or an LMDB folder (*.lmdb) with io_backend lmdb
    io_backend: {type: disk}                         # or {type: lmdb}
    gt_size: 200          # train: random GT patch (int or [h, w]); must hold the largest scale's output
    use_hflip: true       # random horizontal flip
    use_rot: true         # random vertical flip + transpose (transpose only for square patches)
    materialize: null     # 'skimage_demo_train' / 'skimage_demo_val': write the demo photos if missing

Items: {'gt': (3, H, W) float32 RGB in [0, 1], 'gt_path': str}. Validation items are whole images.
"""
import os
import random
from os import path as osp
from typing import Dict, List, Tuple

import cv2
import numpy as np
import torch
from torch.utils import data

from basicsr.data.data_util import paths_from_folder, paths_from_lmdb
from basicsr.data.transforms import augment
from basicsr.utils import FileClient, img2tensor
from basicsr.utils.registry import DATASET_REGISTRY

from metasr_arch.utils.registry import register

IMAGE_EXTS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp', '.ppm')


def decode_image(content: bytes, path: str) -> np.ndarray:
    """Bytes of an 8/16-bit grey, RGB or RGBA image -> (H, W, 3) float32 BGR in [0, 1].

    Raises:
        OSError naming ``path`` when the bytes are not a readable image.
    """
    img = cv2.imdecode(np.frombuffer(content, np.uint8), cv2.IMREAD_UNCHANGED) if content else None
    if img is None:
        raise OSError(f'cannot read image {path!r}: the file is empty, truncated or not an image')
    peak = np.iinfo(img.dtype).max if np.issubdtype(img.dtype, np.integer) else 1.0
    img = img.astype(np.float32) / peak
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    elif img.shape[2] == 4:
        img = img[..., :3]  # alpha is not part of super-resolution targets
    elif img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    return np.ascontiguousarray(img)


def read_image(client: FileClient, path: str, key: str = 'gt') -> np.ndarray:
    """Read through a BasicSR FileClient; OSError naming the file when it is missing or corrupt."""
    try:
        content = client.get(path, key)
    except Exception as err:  # noqa: BLE001 (disk and LMDB backends raise different types)
        raise OSError(f'cannot read image {path!r}: {err}') from err
    return decode_image(content, path)


def parse_size(value, name: str) -> Tuple[int, int]:
    """int or [h, w] -> (h, w) of positive ints; ValueError naming the option."""
    pair = value if isinstance(value, (list, tuple)) else (value, value)
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in pair):
        raise ValueError(f'{name} must be a positive int or [h, w], got {value!r}')
    return int(pair[0]), int(pair[1])


def random_crop(img: np.ndarray, size: Tuple[int, int], path: str, option: str) -> np.ndarray:
    """Random (h, w) crop of an (H, W, ...) array; ValueError naming the file when it is smaller."""
    h, w = size
    H, W = img.shape[:2]
    if H < h or W < w:
        raise ValueError(f'{path!r} is {H}x{W}, smaller than {option} = {h}x{w}')
    top, left = random.randint(0, H - h), random.randint(0, W - w)
    return img[top:top + h, left:left + w, ...]


def flip_rotate(img: np.ndarray, hflip: bool, rot: bool) -> np.ndarray:
    """BasicSR's ``augment``; for non-square arrays only the flips (a transpose would change the size)."""
    if img.shape[0] == img.shape[1]:
        return augment(img, hflip, rot)
    if hflip and random.random() < 0.5:
        img = img[:, ::-1]
    if rot and random.random() < 0.5:
        img = img[::-1]
    return np.ascontiguousarray(img)


def check_dataroot(opt: dict, key: str) -> str:
    """The folder in ``opt[key]``, materialised if asked; FileNotFoundError naming the option when missing."""
    root = opt.get(key)
    name = opt.get('name', '?')
    if not root:
        raise ValueError(f'datasets.{name}.{key} is required')
    if opt.get('materialize'):
        from metasr_arch.data.demo_data import is_complete, materialize
        if not is_complete(root):
            materialize(opt['materialize'], root)
    if not osp.isdir(root):
        raise FileNotFoundError(f'datasets.{name}.{key} = {root!r} does not exist (relative paths are from '
                                f'{os.getcwd()})')
    return root


@register(DATASET_REGISTRY)
class MetaSRGTDataset(data.Dataset):
    """GT images from a folder or LMDB; random GT patches for training, whole images for validation.

    Returns items {'gt': (3, H, W) float32 RGB [0, 1], 'gt_path': str}.
    """

    # the dataset options it reads (besides BasicSR's common ones); utils.options_check checks them
    OPTIONS = ('dataroot_gt', 'io_backend', 'materialize', 'gt_size', 'use_hflip', 'use_rot')

    def __init__(self, opt: dict):
        super().__init__()
        self.opt = opt
        self.io_backend_opt = dict(opt.get('io_backend') or {'type': 'disk'})
        self.file_client = None
        root = check_dataroot(opt, 'dataroot_gt')
        if self.io_backend_opt['type'] == 'lmdb':
            self.io_backend_opt['db_paths'] = [root]
            self.io_backend_opt['client_keys'] = ['gt']
            self.paths: List[str] = paths_from_lmdb(root)
        else:
            self.paths = sorted(p for p in paths_from_folder(root) if p.lower().endswith(IMAGE_EXTS))
        if not self.paths:
            raise FileNotFoundError(f'datasets.{opt.get("name")}.dataroot_gt = {root!r} holds no images')
        self.is_train = opt.get('phase', 'train') == 'train'
        self.gt_size = None
        if self.is_train:
            if opt.get('gt_size') is None:
                raise ValueError(f'datasets.{opt.get("name")}.gt_size is required for training (GT patch size)')
            self.gt_size = parse_size(opt['gt_size'], f'datasets.{opt.get("name")}.gt_size')

    def __getitem__(self, index: int) -> Dict:
        if self.file_client is None:  # created lazily: one per dataloader worker
            self.file_client = FileClient(self.io_backend_opt.pop('type'), **self.io_backend_opt)
        path = self.paths[index]
        img = read_image(self.file_client, path, 'gt')
        if self.is_train:
            img = random_crop(img, self.gt_size, path, f'datasets.{self.opt.get("name")}.gt_size')
            img = flip_rotate(img, self.opt.get('use_hflip', True), self.opt.get('use_rot', True))
        gt = img2tensor(np.ascontiguousarray(img), bgr2rgb=True, float32=True)
        return {'gt': gt, 'gt_path': path}

    def __len__(self) -> int:
        return len(self.paths)


def to_tensor(arr: np.ndarray) -> torch.Tensor:
    """(H, W) or (C, H, W) array -> (C, H, W) float32 tensor."""
    arr = np.asarray(arr, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(arr[None] if arr.ndim == 2 else arr))
