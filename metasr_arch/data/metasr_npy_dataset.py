"""MetaSRNpyDataset: float gridded data (e.g. 721 x 1440 climate fields) from ``.npy`` files.

Each file holds one field, (H, W) or (C, H, W), any float/int dtype (read as float32). Options::

    type: MetaSRNpyDataset
    dataroot_gt: datasets/grid/train     # folder of .npy
    dataroot_lq: null                    # optional folder of LR .npy with the same names (paired)
    gt_size: null                        # train: random crop (int or [h, w]); null: whole fields
    use_hflip: false                     # flips only make sense for some fields (off by default)
    use_rot: false                       # vertical flip (never a transpose: fields are not square)
    data_range: null                     # [lo, hi]: stored as (x - lo) / (hi - lo)

Items: {'gt': (C, H, W) float32, 'gt_path'} (the model makes the LR with ``imresize_to`` to an exact
size), or with ``dataroot_lq`` also {'lq': (C, h, w), 'out_size': (H, W)}. ``float_data = True`` tells
MetaSRModel to compute metrics on the float values (no 8-bit rounding, no Y conversion); PSNR is
relative to a peak of 1, i.e. to the data range after ``data_range`` normalisation.
"""
import os
import random
from os import path as osp
from typing import Dict, List

import numpy as np
from torch.utils import data

from basicsr.utils.registry import DATASET_REGISTRY

from metasr_arch.data.metasr_gt_dataset import check_dataroot, parse_size, random_crop, to_tensor
from metasr_arch.utils.registry import register


def load_npy(path: str) -> np.ndarray:
    """(H, W) or (C, H, W) float32 from ``path``; OSError naming the file when unreadable or malformed."""
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as err:  # noqa: BLE001 (truncated files raise ValueError/EOFError/OSError)
        raise OSError(f'cannot read array {path!r}: {err}') from err
    if arr.ndim not in (2, 3) or not np.issubdtype(arr.dtype, np.number):
        raise OSError(f'{path!r} must hold a numeric (H, W) or (C, H, W) array, got {arr.dtype} {arr.shape}')
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise OSError(f'{path!r} contains NaN or inf values')
    return arr


@register(DATASET_REGISTRY)
class MetaSRNpyDataset(data.Dataset):
    """Gridded float fields; see the module docstring. Items hold (C, H, W) float32 tensors."""

    float_data = True
    # the dataset options it reads (besides BasicSR's common ones); utils.options_check checks them
    OPTIONS = ('dataroot_gt', 'dataroot_lq', 'materialize', 'gt_size', 'data_range', 'use_hflip', 'use_rot')

    def __init__(self, opt: dict):
        super().__init__()
        self.opt = opt
        name = opt.get('name', '?')
        root = check_dataroot(opt, 'dataroot_gt')
        self.paths: List[str] = sorted(osp.join(root, f) for f in os.listdir(root) if f.endswith('.npy'))
        if not self.paths:
            raise FileNotFoundError(f'datasets.{name}.dataroot_gt = {root!r} holds no .npy files')
        self.lq_root = opt.get('dataroot_lq')
        if self.lq_root is not None and not osp.isdir(self.lq_root):
            raise FileNotFoundError(f'datasets.{name}.dataroot_lq = {self.lq_root!r} does not exist')
        self.is_train = opt.get('phase', 'train') == 'train'
        self.gt_size = parse_size(opt['gt_size'], f'datasets.{name}.gt_size') \
            if self.is_train and opt.get('gt_size') is not None else None
        if self.gt_size is not None and self.lq_root is not None:
            raise ValueError(f'datasets.{name}: gt_size crops are for GT-only data, not with dataroot_lq')
        rng = opt.get('data_range')
        if rng is not None and (not isinstance(rng, (list, tuple)) or len(rng) != 2 or rng[1] <= rng[0]):
            raise ValueError(f'datasets.{name}.data_range must be [lo, hi] with hi > lo, got {rng!r}')
        self.data_range = rng

    def _norm(self, arr: np.ndarray) -> np.ndarray:
        if self.data_range is None:
            return arr
        lo, hi = self.data_range
        return (arr - lo) / (hi - lo)

    def __getitem__(self, index: int) -> Dict:
        path = self.paths[index]
        gt = self._norm(load_npy(path))
        gt = gt[None] if gt.ndim == 2 else gt
        item = {'gt_path': path}
        if self.gt_size is not None:
            gt = random_crop(gt.transpose(1, 2, 0), self.gt_size, path,
                             f'datasets.{self.opt.get("name")}.gt_size').transpose(2, 0, 1)
        if self.is_train and self.lq_root is None:  # paired LR would need the same flips
            if self.opt.get('use_hflip', False) and random.random() < 0.5:
                gt = gt[:, :, ::-1]
            if self.opt.get('use_rot', False) and random.random() < 0.5:
                gt = gt[:, ::-1]
        if self.lq_root is not None:
            lq_path = osp.join(self.lq_root, osp.basename(path))
            lq = self._norm(load_npy(lq_path))
            item.update(lq=to_tensor(lq), lq_path=lq_path, out_size=tuple(gt.shape[-2:]))
        item['gt'] = to_tensor(gt)
        return item

    def __len__(self) -> int:
        return len(self.paths)
