"""MetaSRPairedDataset: pre-generated LR/HR pairs in the multi-scale benchmark layout.

Layout (what ``scripts/data/generate_multiscale_lr.py`` writes)::

    <dataroot>/HR/baby.png
    <dataroot>/LR_bicubic/X2.50/baby.png          symmetric r = 2.5 (two decimals)
    <dataroot>/LR_bicubic/X2.00_X3.50/baby.png    r_v = 2.0 (rows) x r_h = 3.5 (columns)

Scale folders are named ``X{r:.2f}`` (symmetric) or ``X{r_v:.2f}_X{r_h:.2f}``; a scale that needs more
than two decimals keeps them (``X2.333333``). Each LR of size (h, w) is matched with the top-left
``resolve_scale(h, w, (r_v, r_h))`` crop of its HR image (the LR was made from that very crop).

Options::

    type: MetaSRPairedDataset
    dataroot: datasets/Set5             # or dataroot_gt (HR folder) + dataroot_lq (the LR_bicubic folder)
    scales: [2, 2.5, [2, 3.5]]          # optional: default every scale folder found

Items: {'lq': (3, h, w), 'gt': (3, H, W) float32 RGB [0, 1], 'scale': float64 tensor [r_v, r_h],
'lq_path', 'gt_path'}; item order is scale by scale.
"""
import os
import re
from os import path as osp
from typing import Dict, List, Tuple

import torch
from torch.utils import data

from basicsr.utils import FileClient, img2tensor
from basicsr.utils.registry import DATASET_REGISTRY

from metasr_arch.data.metasr_gt_dataset import IMAGE_EXTS, read_image
from metasr_arch.ops.geometry import resolve_scale
from metasr_arch.utils.naming import scale_tag
from metasr_arch.utils.registry import register
from metasr_arch.utils.scale_sampler import parse_scale_list

_FOLDER = re.compile(r'X(\d+(?:\.\d+)?)(?:_X(\d+(?:\.\d+)?))?')


def folder_scale(name: str) -> Tuple[float, float]:
    """``'X2.50'`` -> (2.5, 2.5); ``'X2.00_X3.50'`` -> (2.0, 3.5); ValueError otherwise."""
    m = _FOLDER.fullmatch(name)
    if not m:
        raise ValueError(f'{name!r} is not a scale folder name (X2.50 or X2.00_X3.50)')
    r_v = float(m.group(1))
    return r_v, float(m.group(2)) if m.group(2) else r_v


def folder_name(r_v: float, r_h: float) -> str:
    """Scale folder name of (r_v, r_h) (the project's one naming rule)."""
    return scale_tag(r_v, r_h)


@register(DATASET_REGISTRY)
class MetaSRPairedDataset(data.Dataset):
    """Benchmark pairs at fixed (r_v, r_h); see the module docstring for layout and options."""

    # the dataset options it reads (besides BasicSR's common ones); utils.options_check checks them
    OPTIONS = ('dataroot', 'dataroot_gt', 'dataroot_lq', 'scales')

    def __init__(self, opt: dict):
        super().__init__()
        self.opt = opt
        name = opt.get('name', '?')
        root = opt.get('dataroot')
        gt_root = opt.get('dataroot_gt') or (osp.join(root, 'HR') if root else None)
        lq_root = opt.get('dataroot_lq') or (osp.join(root, 'LR_bicubic') if root else None)
        if not gt_root or not lq_root:
            raise ValueError(f'datasets.{name}: give dataroot (with HR/ and LR_bicubic/) or dataroot_gt + dataroot_lq')
        for key, folder in (('dataroot_gt', gt_root), ('dataroot_lq', lq_root)):
            if not osp.isdir(folder):
                raise FileNotFoundError(f'datasets.{name}.{key} = {folder!r} does not exist')
        if opt.get('scales') is not None:
            scales = parse_scale_list(opt['scales'], f'datasets.{name}.scales')
            folders = [folder_name(*s) for s in scales]
            for f in folders:
                if not osp.isdir(osp.join(lq_root, f)):
                    raise FileNotFoundError(f'datasets.{name}: no LR folder {osp.join(lq_root, f)!r}; generate it '
                                            'with scripts/data/generate_multiscale_lr.py')
        else:
            folders = sorted(f for f in os.listdir(lq_root) if _FOLDER.fullmatch(f))
            scales = [folder_scale(f) for f in folders]
            if not folders:
                raise FileNotFoundError(f'datasets.{name}.dataroot_lq = {lq_root!r} has no scale folders (X2.50 ...)')
        self.items: List[Tuple[Tuple[float, float], str, str]] = []
        for scale, folder in zip(scales, folders):
            for fname in sorted(os.listdir(osp.join(lq_root, folder))):
                if not fname.lower().endswith(IMAGE_EXTS) or fname.startswith('.'):
                    continue
                gt_path = osp.join(gt_root, fname)
                if not osp.exists(gt_path):
                    raise FileNotFoundError(f'datasets.{name}: {osp.join(lq_root, folder, fname)!r} has no HR '
                                            f'image {gt_path!r}')
                self.items.append((scale, osp.join(lq_root, folder, fname), gt_path))
        self.file_client = None

    def __getitem__(self, index: int) -> Dict:
        if self.file_client is None:
            self.file_client = FileClient('disk')
        scale, lq_path, gt_path = self.items[index]
        lq = read_image(self.file_client, lq_path, 'lq')
        gt = read_image(self.file_client, gt_path, 'gt')
        spec = resolve_scale(lq.shape[0], lq.shape[1], scale)
        if gt.shape[0] < spec.out_h or gt.shape[1] < spec.out_w:
            raise ValueError(f'{gt_path!r} ({gt.shape[0]}x{gt.shape[1]}) is smaller than the {spec.out_h}x'
                             f'{spec.out_w} output of {lq_path!r} at scale {scale}')
        gt = gt[:spec.out_h, :spec.out_w]
        lq_t, gt_t = img2tensor([lq, gt], bgr2rgb=True, float32=True)
        return {'lq': lq_t, 'gt': gt_t, 'scale': torch.tensor(scale, dtype=torch.float64),
                'lq_path': lq_path, 'gt_path': gt_path}

    def __len__(self) -> int:
        return len(self.items)
