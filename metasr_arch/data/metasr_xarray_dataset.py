"""MetaSRXarrayDataset: gridded NetCDF/Zarr fields (variables as channels, time steps as samples).

Needs the ``geo`` extra (``pip install -e .[geo]``: xarray, netCDF4, zarr). Options::

    type: MetaSRXarrayDataset
    dataroot_gt: data/era5_*.nc          # NetCDF file(s) or Zarr store(s): a path, a glob or a list
    variables: [t2m, u10, v10]           # -> channels, in this order
    time_slice: ['1979-01', '2015-12']   # labels (inclusive, as xarray's .sel) or [start, stop) positions
    lat_name: null                       # default: latitude / lat; lon_name alike
    lat_order: north_up                  # row order the network sees: north_up or south_up
    select: null                         # e.g. {level: 500}: one value of each extra dimension
    normalization:                       # per variable, undone for metrics and saved outputs
      type: mean_std                     # mean_std, min_max or none
      time_slice: null                   # statistics from these steps (default: this dataset's own slice)
      # or given values: mean: [...], std: [...] (min: [...], max: [...]); or checkpoint: net_g_x.pth
    materialize: null                    # ncep_wind_200hpa: write the demo data to dataroot_gt if missing
    dataroot_lq: null                    # optional coarse data on its own grid (paired; same variables/times)
    out_size: null                       # [H, W]: the GT grid must have this size (checked)
    gt_size: null                        # train: random crop (int or [h, w]); null: whole fields
    use_hflip: false                     # train, GT-only: mirror east-west / north-south at random
    use_vflip: false                     # (augmentation for statistics that do not depend on direction)

Items: {'gt': (C, H, W) float32 normalised, 'gt_path': '<file stem>_<time>'}; paired also
{'lq': (C, h, w), 'lq_path', 'out_size': (H, W)}. GT-only items get their LR from MetaSRModel
(``imresize_to``, MATLAB bicubic, to ``train.lr_patch_size`` / ``val.lr_size``).

The statistics are a pure function of the options (files, variables, selection, slice), computed in
one pass over the steps and cached per process: ``MetaSRXarrayDataset.normalization_for(opt)`` is
what MetaSRModel records into checkpoints (``normalization``), and a validation set whose
``normalization.time_slice`` is the training slice reuses the training statistics.
Validation and test sets must say where their statistics come from (``time_slice`` of the training
data, given values, or ``checkpoint``): statistics of the validation steps themselves would feed the
network differently scaled inputs.
"""
import json
import random
from functools import lru_cache
from typing import Dict

import numpy as np
import torch
from torch.utils import data

from basicsr.utils import get_root_logger
from basicsr.utils.registry import DATASET_REGISTRY

from metasr_arch.data.metasr_gt_dataset import parse_size, random_crop, to_tensor
from metasr_arch.utils.gridded_io import GriddedSource, normalization_affine
from metasr_arch.utils.registry import register

NORM_TYPES = ('mean_std', 'min_max', 'none')


def _source_key(opt: dict, time_slice) -> str:
    keys = ('dataroot_gt', 'variables', 'lat_name', 'lon_name', 'lat_order', 'select')
    return json.dumps({**{k: opt.get(k) for k in keys}, 'time_slice': time_slice}, sort_keys=True, default=str)


@lru_cache(maxsize=16)
def _statistics(source_key: str, norm_type: str) -> Dict:
    """Per-variable statistics of the steps ``source_key`` describes, in one pass (float64 sums)."""
    opt = json.loads(source_key)
    src = GriddedSource(opt['dataroot_gt'], opt['variables'], opt['time_slice'], opt['lat_name'], opt['lon_name'],
                        opt['lat_order'] or 'north_up', opt['select'])
    c = len(src.variables)
    total, total_sq, count = np.zeros(c), np.zeros(c), 0
    lo, hi = np.full(c, np.inf), np.full(c, -np.inf)
    logger = get_root_logger()
    for i in range(len(src)):
        f = src.field(i).astype(np.float64).reshape(c, -1)
        total += f.sum(1)
        total_sq += (f ** 2).sum(1)
        count += f.shape[1]
        lo, hi = np.minimum(lo, f.min(1)), np.maximum(hi, f.max(1))
        if (i + 1) % 100 == 0:
            logger.info(f'normalisation statistics: {i + 1}/{len(src)} time steps')
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean ** 2, 0.0))
    if norm_type == 'mean_std':
        return {'type': 'mean_std', 'variables': src.variables, 'mean': mean.tolist(), 'std': std.tolist()}
    return {'type': 'min_max', 'variables': src.variables, 'min': lo.tolist(), 'max': hi.tolist()}


def resolve_normalization(opt: dict, is_train: bool) -> Dict:
    """The ``normalization`` option resolved to values: {'type', 'variables', 'mean'/'std' or 'min'/'max'}."""
    name = opt.get('name', '?')
    norm = dict(opt.get('normalization') or {'type': 'mean_std'})
    variables = list(opt.get('variables') or [])
    if 'checkpoint' in norm:
        ckpt = torch.load(norm['checkpoint'], map_location='cpu', weights_only=True)
        if not isinstance(ckpt.get('normalization'), dict):
            raise KeyError(f'datasets.{name}.normalization.checkpoint = {norm["checkpoint"]!r} records no '
                           'normalization (it was not trained on MetaSRXarrayDataset)')
        norm = dict(ckpt['normalization'])
    kind = norm.get('type', 'mean_std')
    if kind not in NORM_TYPES:
        raise ValueError(f'datasets.{name}.normalization.type must be one of {NORM_TYPES}, got {kind!r}')
    if kind == 'none':
        return {'type': 'none', 'variables': variables}
    names = ('mean', 'std') if kind == 'mean_std' else ('min', 'max')
    if all(k in norm for k in names):
        a, b = (np.asarray(norm[k], dtype=np.float64).reshape(-1) for k in names)
        if a.size != len(variables) or b.size != len(variables):
            raise ValueError(f'datasets.{name}.normalization: {names} need one value per variable {variables}')
        scale = b if kind == 'mean_std' else b - a
        if (scale <= 0).any():
            raise ValueError(f'datasets.{name}.normalization: {"std" if kind == "mean_std" else "max - min"} '
                             f'must be > 0 for every variable, got {scale.tolist()}')
        if norm.get('variables') not in (None, variables):
            raise ValueError(f'datasets.{name}.normalization is for variables {norm["variables"]}, the dataset '
                             f'reads {variables}')
        return {'type': kind, 'variables': variables, names[0]: a.tolist(), names[1]: b.tolist()}
    if 'time_slice' not in norm and not is_train:
        raise ValueError(f'datasets.{name}.normalization needs the statistics of the training data: set '
                         'normalization.time_slice to the training time_slice, give mean/std (min/max), or '
                         'checkpoint: <trained net_g .pth>')
    stats = _statistics(_source_key(opt, norm.get('time_slice', opt.get('time_slice'))), kind)
    if (normalization_affine(stats)[1] <= 0).any():
        raise ValueError(f'datasets.{name}: a variable of {variables} is constant over the statistics slice '
                         f'({stats}); normalise with given values')
    return stats


@register(DATASET_REGISTRY)
class MetaSRXarrayDataset(data.Dataset):
    """Gridded NetCDF/Zarr fields; see the module docstring. Items hold (C, H, W) float32 tensors."""

    float_data = True
    # the dataset options it reads (besides BasicSR's common ones); utils.options_check checks them
    OPTIONS = ('dataroot_gt', 'dataroot_lq', 'materialize', 'variables', 'time_slice', 'lat_name', 'lon_name',
               'lat_order', 'select', 'normalization', 'out_size', 'gt_size', 'use_hflip', 'use_vflip')

    def __init__(self, opt: dict):
        super().__init__()
        self.opt = opt
        name = opt.get('name', '?')
        self.is_train = opt.get('phase', 'train') == 'train'
        common = dict(variables=opt.get('variables'), time_slice=opt.get('time_slice'), lat_name=opt.get('lat_name'),
                      lon_name=opt.get('lon_name'), lat_order=opt.get('lat_order') or 'north_up',
                      select=opt.get('select'))
        if opt.get('dataroot_gt') is None:
            raise ValueError(f'datasets.{name}.dataroot_gt is required (NetCDF file(s) or Zarr store(s))')
        if opt.get('materialize'):
            from metasr_arch.data.grid_demo_data import materialize
            materialize(opt['materialize'], opt['dataroot_gt'])
        self.gt = GriddedSource(opt['dataroot_gt'], option=f'datasets.{name}.dataroot_gt', **common)
        self.lq = None
        if opt.get('dataroot_lq') is not None:
            self.lq = GriddedSource(opt['dataroot_lq'], option=f'datasets.{name}.dataroot_lq', **common)
            self._check_pair(name)
        if opt.get('out_size') is not None:
            want = tuple(parse_size(opt['out_size'], f'datasets.{name}.out_size'))
            have = (self.gt.lat.size, self.gt.lon.size)
            if want != have:
                raise ValueError(f'datasets.{name}.out_size = {list(want)} but the GT grid of {self.gt.paths[0]} is '
                                 f'{have[0]} x {have[1]}')
        self.gt_size = parse_size(opt['gt_size'], f'datasets.{name}.gt_size') \
            if self.is_train and opt.get('gt_size') is not None else None
        if self.gt_size is not None and self.lq is not None:
            raise ValueError(f'datasets.{name}: gt_size crops are for GT-only data, not with dataroot_lq')
        self.normalization = resolve_normalization(opt, self.is_train)
        self._offset, self._scale = normalization_affine(self.normalization)
        self.latitudes = self.gt.lat  # (H,) of the rows the network sees (for lat_first / lat_last)

    @classmethod
    def normalization_for(cls, opt: dict) -> Dict:
        """The statistics a training set with options ``opt`` uses (cached: no second pass)."""
        return resolve_normalization(opt, opt.get('phase', 'train') == 'train')

    def _check_pair(self, name: str) -> None:
        gt, lq = self.gt, self.lq
        if len(gt) != len(lq):
            raise ValueError(f'datasets.{name}: dataroot_lq has {len(lq)} time steps in time_slice, dataroot_gt '
                             f'{len(gt)}')
        for i in range(len(gt)):
            if gt.time_value(i) != lq.time_value(i):
                raise ValueError(f'datasets.{name}: time step {i} is {gt.time_label(i)} in dataroot_gt but '
                                 f'{lq.time_label(i)} in dataroot_lq')
        h, w, big_h, big_w = lq.lat.size, lq.lon.size, gt.lat.size, gt.lon.size
        if big_h < h or big_w < w:
            raise ValueError(f'datasets.{name}: the GT grid {big_h} x {big_w} is smaller than the LR grid {h} x {w}')
        lr_step = abs(lq.lat[-1] - lq.lat[0]) / max(h - 1, 1)
        if abs(lq.lat[0] - gt.lat[0]) > 1e-3 * lr_step + 1e-6 or abs(lq.lat[-1] - gt.lat[-1]) > 1e-3 * lr_step + 1e-6:
            raise ValueError(f'datasets.{name}: LR rows span latitudes {lq.lat[0]:g}..{lq.lat[-1]:g} but the GT '
                             f'rows {gt.lat[0]:g}..{gt.lat[-1]:g}: an output of {big_h} x {big_w} would not lie on '
                             'the GT grid')
        spans = [(c[-1] - c[0]) * c.size / max(c.size - 1, 1) for c in (lq.lon, gt.lon)]
        if abs(lq.lon[0] - gt.lon[0]) > 1e-6 or abs(spans[0] - spans[1]) > 1e-3 * spans[0] / max(w, 1):
            raise ValueError(f'datasets.{name}: LR columns start at longitude {lq.lon[0]:g} and span {spans[0]:g} '
                             f'degrees, the GT columns {gt.lon[0]:g} and {spans[1]:g}')

    # ------------------------------------------------------------------ normalisation
    def normalize(self, arr: np.ndarray) -> np.ndarray:
        """(C, H, W) physical -> normalised float32."""
        return ((arr - self._offset[:, None, None]) / self._scale[:, None, None]).astype(np.float32)

    def denormalize(self, arr: np.ndarray) -> np.ndarray:
        """(H, W, C) normalised (as MetaSRModel's metric arrays) -> physical units, float64."""
        return np.asarray(arr, dtype=np.float64) * self._scale + self._offset

    # ------------------------------------------------------------------ items
    def __getitem__(self, index: int) -> Dict:
        gt = self.normalize(self.gt.field(index))
        stem = self.gt.paths[self.gt.samples[index][0]].rstrip('/').split('/')[-1].rsplit('.', 1)[0]
        item = {'gt_path': f'{stem}_{self.gt.time_label(index)}'}
        if self.gt_size is not None:
            gt = random_crop(gt.transpose(1, 2, 0), self.gt_size, item['gt_path'],
                             f'datasets.{self.opt.get("name")}.gt_size').transpose(2, 0, 1)
        if self.is_train and self.lq is None:
            if self.opt.get('use_hflip', False) and random.random() < 0.5:
                gt = gt[:, :, ::-1]
            if self.opt.get('use_vflip', False) and random.random() < 0.5:
                gt = gt[:, ::-1]
        if self.lq is not None:
            item.update(lq=to_tensor(self.normalize(self.lq.field(index))), lq_path=item['gt_path'],
                        out_size=tuple(gt.shape[-2:]))
        item['gt'] = to_tensor(np.ascontiguousarray(gt))
        return item

    def __len__(self) -> int:
        return len(self.gt)
