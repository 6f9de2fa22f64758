"""MetaSRXarrayDataset: gridded NetCDF/Zarr fields (variables as channels, time steps as samples).

Needs the ``geo`` extra (``pip install -e .[geo]``: xarray, netCDF4, zarr). Options::

    type: MetaSRXarrayDataset
    dataroot_gt: data/era5_*.nc          # NetCDF file(s) or Zarr store(s): a path, a glob or a list
    variables: [t2m, u10, v10]           # -> channels, in this order
    time_slice: ['1979-01', '2015-12']   # labels (inclusive, as xarray's .sel) or [start, stop) positions
    lat_name: null                       # default: latitude / lat; lon_name alike
    lat_order: north_up                  # row order the network sees: north_up or south_up
    select: null                         # e.g. {level: 500}: one value of each extra dimension
    mask: null                           # {variable: lsm, file: null, valid: nonzero}: extra missing points
    fill: nearest                        # network input at missing points: nearest valid point, or zero
    normalization:                       # per variable, undone for metrics and saved outputs
      type: mean_std                     # mean_std, min_max or none
      time_slice: null                   # statistics from these steps (default: this dataset's own slice)
      subsample: null                    # N: from N steps evenly spaced over that slice (default: every step)
      # or given values: mean: [...], std: [...] (min: [...], max: [...]); or checkpoint: net_g_x.pth
    materialize: null                    # ncep_wind_200hpa: write the demo data to dataroot_gt if missing
    dataroot_lq: null                    # optional coarse data on its own grid (paired; same variables/times)
    out_size: null                       # [H, W]: the GT grid must have this size (checked)
    gt_size: null                        # train: random crop (int or [h, w]); null: whole fields
    use_hflip: false                     # train, GT-only: mirror east-west / north-south at random
    use_vflip: false                     # (augmentation for statistics that do not depend on direction)

Items: {'gt': (C, H, W) float32 normalised, 'mask': (C, H, W) float32 (1 = valid point),
'lon_periodic': whether the item's columns close the circle, 'gt_path': '<file stem>_<time>'}; paired
also {'lq': (C, h, w), 'lq_path', 'out_size': (H, W)}. GT-only items get their LR from MetaSRModel
(``imresize_to``, MATLAB bicubic, to ``train.lr_patch_size`` / ``val.lr_size``).

Missing values (NaN, ``_FillValue``/``missing_value``, points the ``mask`` variable marks invalid) are
filled in ``gt`` and ``lq`` as ``fill`` says (``utils.gridded_mask.fill_missing``, in normalised units)
and marked 0 in ``mask``; MetaSRModel's pixel loss, weighted metrics and bicubic baseline count the
valid points only. Statistics are over valid points. A ``gt_size`` crop without any valid point is
drawn again (up to 20 times, then another time step), counted in the log.

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
from metasr_arch.utils.gridded_mask import FILL_MODES, fill_missing
from metasr_arch.utils.options import OptionError
from metasr_arch.utils.registry import register

NORM_TYPES = ('mean_std', 'min_max', 'none')
CROP_TRIES = 20
SOURCE_KEYS = ('dataroot_gt', 'variables', 'lat_name', 'lon_name', 'lat_order', 'select', 'mask')


def _source_key(opt: dict, time_slice) -> str:
    return json.dumps({**{k: opt.get(k) for k in SOURCE_KEYS}, 'time_slice': time_slice}, sort_keys=True,
                      default=str)


def _option_names(name: str) -> Dict[str, str]:
    """How messages name this dataset's options: datasets.<name>.<key>."""
    return {k: f'datasets.{name}.{k}' for k in SOURCE_KEYS + ('time_slice',)}


def subsample_steps(n_steps: int, subsample) -> list:
    """Positions of the steps the statistics read: all, or ``subsample`` (int >= 1) evenly spaced from the
    first to the last step (deterministic, so training and validation compute the same values)."""
    if subsample is None or subsample >= n_steps:
        return list(range(n_steps))
    return sorted({int(round(p)) for p in np.linspace(0, n_steps - 1, subsample)})


@lru_cache(maxsize=16)
def _statistics(source_key: str, norm_type: str, subsample=None) -> Dict:
    """Per-variable statistics of the steps ``source_key`` describes (or ``subsample`` of them evenly
    spaced: ``subsample_steps``), in one pass (float64 sums)."""
    opt = json.loads(source_key)
    src = GriddedSource(opt['dataroot_gt'], opt['variables'], opt['time_slice'], opt['lat_name'], opt['lon_name'],
                        opt['lat_order'] or 'north_up', opt['select'], mask=opt['mask'])
    c = len(src.variables)
    total, total_sq, count = np.zeros(c), np.zeros(c), np.zeros(c)
    lo, hi = np.full(c, np.inf), np.full(c, -np.inf)
    logger = get_root_logger()
    steps = subsample_steps(len(src), subsample)
    if len(steps) < len(src):
        logger.info(f'normalisation statistics from {len(steps)} of {len(src)} time steps (normalization.subsample)')
    for n, i in enumerate(steps):
        f = src.field(i).astype(np.float64).reshape(c, -1)
        valid = np.isfinite(f)  # missing points do not count
        total += np.where(valid, f, 0).sum(1)
        total_sq += np.where(valid, f ** 2, 0).sum(1)
        count += valid.sum(1)
        lo = np.minimum(lo, np.where(valid, f, np.inf).min(1))
        hi = np.maximum(hi, np.where(valid, f, -np.inf).max(1))
        if (n + 1) % 100 == 0:
            logger.info(f'normalisation statistics: {n + 1}/{len(steps)} time steps')
    if (count == 0).any():
        raise OptionError(f'variables {[v for v, n in zip(src.variables, count) if n == 0]} have no valid point in '
                          'the statistics slice (all missing)')
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
            raise OptionError(f'datasets.{name}.normalization.checkpoint = {norm["checkpoint"]!r} records no '
                              'normalization (it was not trained on MetaSRXarrayDataset)')
        norm = dict(ckpt['normalization'])
    kind = norm.get('type', 'mean_std')
    if kind not in NORM_TYPES:
        raise OptionError(f'datasets.{name}.normalization.type must be one of {NORM_TYPES}, got {kind!r}')
    if kind == 'none':
        return {'type': 'none', 'variables': variables}
    names = ('mean', 'std') if kind == 'mean_std' else ('min', 'max')
    if all(k in norm for k in names):
        a, b = (np.asarray(norm[k], dtype=np.float64).reshape(-1) for k in names)
        if a.size != len(variables) or b.size != len(variables):
            raise OptionError(f'datasets.{name}.normalization: {names} need one value per variable {variables}')
        scale = b if kind == 'mean_std' else b - a
        if (scale <= 0).any():
            raise OptionError(f'datasets.{name}.normalization: {"std" if kind == "mean_std" else "max - min"} '
                              f'must be > 0 for every variable, got {scale.tolist()}')
        if norm.get('variables') not in (None, variables):
            raise OptionError(f'datasets.{name}.normalization is for variables {norm["variables"]}, the dataset '
                              f'reads {variables}')
        return {'type': kind, 'variables': variables, names[0]: a.tolist(), names[1]: b.tolist()}
    if 'time_slice' not in norm and not is_train:
        raise OptionError(f'datasets.{name}.normalization needs the statistics of the training data: set '
                          'normalization.time_slice to the training time_slice, give mean/std (min/max), or '
                          'checkpoint: <trained net_g .pth>')
    subsample = norm.get('subsample')
    if subsample is not None and (isinstance(subsample, bool) or not isinstance(subsample, int) or subsample < 1):
        raise OptionError(f'datasets.{name}.normalization.subsample must be a number of time steps >= 1 (or null '
                          f'for every step), got {subsample!r}')
    stats = _statistics(_source_key(opt, norm.get('time_slice', opt.get('time_slice'))), kind, subsample)
    if (normalization_affine(stats)[1] <= 0).any():
        raise OptionError(f'datasets.{name}: a variable of {variables} is constant over the statistics slice '
                          f'({stats}); normalise with given values')
    return stats


@register(DATASET_REGISTRY)
class MetaSRXarrayDataset(data.Dataset):
    """Gridded NetCDF/Zarr fields; see the module docstring. Items hold (C, H, W) float32 tensors."""

    float_data = True
    # the dataset options it reads (besides BasicSR's common ones); utils.options_check checks them
    OPTIONS = ('dataroot_gt', 'dataroot_lq', 'materialize', 'variables', 'time_slice', 'lat_name', 'lon_name',
               'lat_order', 'select', 'normalization', 'out_size', 'gt_size', 'use_hflip', 'use_vflip',
               'mask', 'fill')  # issue 21: masked fields

    def __init__(self, opt: dict):
        super().__init__()
        self.opt = opt
        name = opt.get('name', '?')
        try:
            self._build(opt, name)
        except OptionError:
            raise
        except (ValueError, KeyError, OSError) as err:
            # a problem of the options or of the files they name: a message, not a traceback (exit 2)
            text = err.args[0] if isinstance(err, KeyError) and err.args else err
            raise OptionError(f'datasets.{name}: {text}') from err
        self.resampled_crops = 0

    def _build(self, opt: dict, name: str) -> None:
        self.is_train = opt.get('phase', 'train') == 'train'
        self.fill = opt.get('fill', 'nearest')
        if self.fill not in FILL_MODES:
            raise OptionError(f'datasets.{name}.fill must be one of {FILL_MODES}, got {self.fill!r}')
        common = dict(variables=opt.get('variables'), time_slice=opt.get('time_slice'), lat_name=opt.get('lat_name'),
                      lon_name=opt.get('lon_name'), lat_order=opt.get('lat_order') or 'north_up',
                      select=opt.get('select'), mask=opt.get('mask'), names=_option_names(name))
        if opt.get('dataroot_gt') is None:
            raise OptionError(f'datasets.{name}.dataroot_gt is required (NetCDF file(s) or Zarr store(s))')
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
                raise OptionError(f'datasets.{name}.out_size = {list(want)} but the GT grid of {self.gt.paths[0]} is '
                                  f'{have[0]} x {have[1]}')
        self.gt_size = parse_size(opt['gt_size'], f'datasets.{name}.gt_size') \
            if self.is_train and opt.get('gt_size') is not None else None
        if self.gt_size is not None and self.lq is not None:
            raise OptionError(f'datasets.{name}: gt_size crops are for GT-only data, not with dataroot_lq')
        self.normalization = resolve_normalization(opt, self.is_train)
        self._offset, self._scale = normalization_affine(self.normalization)
        self.latitudes = self.gt.lat  # (H,) of the rows the network sees: the weighted metrics' latitudes

    @classmethod
    def normalization_for(cls, opt: dict) -> Dict:
        """The statistics a training set with options ``opt`` uses (cached: no second pass), with its
        ``fill`` when it is not the default, so that inference fills missing points the same way."""
        norm = resolve_normalization(opt, opt.get('phase', 'train') == 'train')
        fill = opt.get('fill') or 'nearest'
        return norm if fill == 'nearest' else {**norm, 'fill': fill}

    def _check_pair(self, name: str) -> None:
        gt, lq = self.gt, self.lq
        if len(gt) != len(lq):
            raise OptionError(f'datasets.{name}: dataroot_lq has {len(lq)} time steps in time_slice, dataroot_gt '
                              f'{len(gt)}')
        for i in range(len(gt)):
            if gt.time_value(i) != lq.time_value(i):
                raise OptionError(f'datasets.{name}: time step {i} is {gt.time_label(i)} in dataroot_gt but '
                                  f'{lq.time_label(i)} in dataroot_lq')
        h, w, big_h, big_w = lq.lat.size, lq.lon.size, gt.lat.size, gt.lon.size
        if big_h < h or big_w < w:
            raise OptionError(f'datasets.{name}: the GT grid {big_h} x {big_w} is smaller than the LR grid {h} x {w}')
        lr_step = abs(lq.lat[-1] - lq.lat[0]) / max(h - 1, 1)
        if abs(lq.lat[0] - gt.lat[0]) > 1e-3 * lr_step + 1e-6 or abs(lq.lat[-1] - gt.lat[-1]) > 1e-3 * lr_step + 1e-6:
            raise OptionError(f'datasets.{name}: LR rows span latitudes {lq.lat[0]:g}..{lq.lat[-1]:g} but the GT '
                              f'rows {gt.lat[0]:g}..{gt.lat[-1]:g}: an output of {big_h} x {big_w} would not lie on '
                              'the GT grid')
        spans = [(c[-1] - c[0]) * c.size / max(c.size - 1, 1) for c in (lq.lon, gt.lon)]
        if abs(lq.lon[0] - gt.lon[0]) > 1e-6 or abs(spans[0] - spans[1]) > 1e-3 * spans[0] / max(w, 1):
            raise OptionError(f'datasets.{name}: LR columns start at longitude {lq.lon[0]:g} and span {spans[0]:g} '
                              f'degrees, the GT columns {gt.lon[0]:g} and {spans[1]:g}')

    # ------------------------------------------------------------------ normalisation
    def normalize(self, arr: np.ndarray) -> np.ndarray:
        """(C, H, W) physical -> normalised float32."""
        return ((arr - self._offset[:, None, None]) / self._scale[:, None, None]).astype(np.float32)

    def denormalize(self, arr: np.ndarray) -> np.ndarray:
        """(H, W, C) normalised (as MetaSRModel's metric arrays) -> physical units, float64."""
        return np.asarray(arr, dtype=np.float64) * self._scale + self._offset

    # ------------------------------------------------------------------ items
    def filled(self, field: np.ndarray) -> np.ndarray:
        """(C, H, W) physical with NaN at missing points -> normalised float32, missing points filled."""
        valid = np.isfinite(field)
        return fill_missing(self.normalize(field), None if valid.all() else valid, self.fill)

    def _crop(self, field: np.ndarray, path: str) -> np.ndarray:
        """A ``gt_size`` crop of (C, H, W) ``field`` with at least one valid point, drawn again if needed."""
        option = f'datasets.{self.opt.get("name")}.gt_size'
        for _ in range(CROP_TRIES):
            crop = random_crop(field.transpose(1, 2, 0), self.gt_size, path, option).transpose(2, 0, 1)
            if np.isfinite(crop).any():
                return crop
            self.resampled_crops += 1
            if self.resampled_crops == 1 or self.resampled_crops % 100 == 0:
                get_root_logger().warning(f'{option}: {self.resampled_crops} crop(s) held no valid point (all '
                                          f'missing) and were drawn again ({path})')
        raise LookupError(f'{path}: {CROP_TRIES} random {option} crops held no valid point')

    def __getitem__(self, index: int) -> Dict:
        field = self.gt.field(index)
        if self.gt_size is not None:
            for _ in range(CROP_TRIES):  # a time step with no valid point in any crop: another step
                try:
                    field = self._crop(field, self._name(index))
                    break
                except LookupError:
                    index = random.randrange(len(self))
                    field = self.gt.field(index)
            else:
                raise ValueError(f'datasets.{self.opt.get("name")}: no gt_size crop with a valid point was found '
                                 f'in {CROP_TRIES} time steps; lower the share of missing points or raise gt_size')
        item = {'gt_path': self._name(index)}
        gt, mask = self.filled(field), np.isfinite(field)
        if self.is_train and self.lq is None:
            if self.opt.get('use_hflip', False) and random.random() < 0.5:
                gt, mask = gt[:, :, ::-1], mask[:, :, ::-1]
            if self.opt.get('use_vflip', False) and random.random() < 0.5:
                gt, mask = gt[:, ::-1], mask[:, ::-1]
        if self.lq is not None:
            item.update(lq=to_tensor(self.filled(self.lq.field(index))), lq_path=item['gt_path'],
                        out_size=tuple(gt.shape[-2:]))
        item['gt'] = to_tensor(np.ascontiguousarray(gt))
        item['mask'] = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))
        item['lon_periodic'] = bool(self.gt.lon_periodic and gt.shape[-1] == self.gt.lon.size)
        return item

    def _name(self, index: int) -> str:
        stem = self.gt.paths[self.gt.samples[index][0]].rstrip('/').split('/')[-1].rsplit('.', 1)[0]
        return f'{stem}_{self.gt.time_label(index)}'

    def __len__(self) -> int:
        return len(self.gt)
