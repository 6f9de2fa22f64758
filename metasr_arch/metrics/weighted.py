"""Latitude-weighted RMSE, MAE and bias of gridded fields (WeatherBench conventions), for ``val: metrics:``.

A row at latitude phi stands for an area proportional to cos(phi) on an equiangular grid, so errors
are weighted by ``w_i = cos(phi_i) / mean_i cos(phi_i)`` (mean 1 over the rows that are scored):

    rmse_c = sqrt(mean_{i,j} w_i (img - img2)^2),   mae_c = mean_{i,j} w_i |img - img2|,
    bias_c = mean_{i,j} w_i (img - img2)            (positive: ``img`` too high)

per variable (channel) c, in the units of the arrays. The registered ``calculate_weighted_*`` return the
mean over the channels (BasicSR metrics are one float); ``weighted_errors`` gives the per-variable values.
Row latitudes are equally spaced from ``lat_first`` (row 0) to ``lat_last`` (last row), both included:
the defaults 90 .. -90 are ERA5's 721 rows (and the 73 rows of a 2.5-degree grid), north up.

``physical_units = True`` on the registered functions tells ``MetaSRModel`` to pass them denormalised
fields (the dataset's ``denormalize``) instead of the 0..255-scaled arrays PSNR/SSIM receive.
"""
from typing import Dict, Sequence, Union

import numpy as np
from basicsr.utils.registry import METRIC_REGISTRY

from metasr_arch.utils.registry import register

BorderArg = Union[int, Sequence[int]]


def latitude_weights(num_rows: int, lat_first: float = 90., lat_last: float = -90.) -> np.ndarray:
    """(num_rows,) float64 weights cos(latitude), normalised to mean 1.

    Args:
        num_rows: H, rows of the grid.
        lat_first, lat_last: latitudes in degrees of row 0 and row H - 1 (equal spacing in between).
    """
    if isinstance(num_rows, bool) or not isinstance(num_rows, (int, np.integer)) or num_rows < 1:
        raise ValueError(f'num_rows must be a positive integer, got {num_rows!r}')
    for name, value in (('lat_first', lat_first), ('lat_last', lat_last)):
        if not np.isfinite(value) or abs(value) > 90:
            raise ValueError(f'{name} must be a latitude in [-90, 90] degrees, got {value!r}')
    lat = np.linspace(float(lat_first), float(lat_last), int(num_rows))
    weights = np.clip(np.cos(np.deg2rad(lat)), 0.0, None)
    if weights.max() < 1e-12:  # cos(90 degrees) is 6e-17 in floating point
        raise ValueError(f'all {num_rows} rows lie on a pole (lat_first={lat_first}, lat_last={lat_last}): '
                         'cos(latitude) weights are all zero')
    return weights / weights.mean()


def _as_hwc(img: np.ndarray, name: str, input_order: str) -> np.ndarray:
    arr = np.asarray(img, dtype=np.float64)
    if input_order not in ('HWC', 'CHW'):
        raise ValueError(f"input_order must be 'HWC' or 'CHW', got {input_order!r}")
    if arr.ndim == 2:
        return arr[..., None]
    if arr.ndim != 3:
        raise ValueError(f'{name} must be (H, W) or (H, W, C) (or (C, H, W) with input_order=CHW), got {arr.shape}')
    return arr.transpose(1, 2, 0) if input_order == 'CHW' else arr


def weighted_errors(img: np.ndarray, img2: np.ndarray, crop_border: BorderArg = 0, lat_first: float = 90.,
                    lat_last: float = -90., input_order: str = 'HWC') -> Dict[str, np.ndarray]:
    """Per-variable latitude-weighted errors of ``img`` against the reference ``img2``.

    Args:
        img, img2: (H, W) or (H, W, C) arrays in physical units (``input_order='CHW'``: (C, H, W)).
        crop_border: rows/columns left out on each side, an int or (rows, columns). The latitudes are
            those of the full grid, so cropping does not shift them.
        lat_first, lat_last: latitudes of the first and last rows of the full grid (degrees).

    Returns:
        {'rmse', 'mae', 'bias'}: each (C,) float64.
    """
    a, b = _as_hwc(img, 'img', input_order), _as_hwc(img2, 'img2', input_order)
    if a.shape != b.shape:
        raise ValueError(f'img and img2 must have the same shape, got {a.shape} and {b.shape}')
    bv, bh = (crop_border, crop_border) if np.isscalar(crop_border) else tuple(crop_border)
    bv, bh = int(bv), int(bh)
    h, w = a.shape[:2]
    if bv < 0 or bh < 0 or 2 * bv >= h or 2 * bh >= w:
        raise ValueError(f'crop_border={crop_border!r} leaves nothing of a {h}x{w} field')
    weights = latitude_weights(h, lat_first, lat_last)[bv:h - bv]
    weights = weights / weights.mean()  # mean 1 over the scored rows
    diff = (a - b)[bv:h - bv, bh:w - bh]
    wd = weights[:, None, None]
    return {
        'rmse': np.sqrt((wd * diff ** 2).mean(axis=(0, 1))),
        'mae': (wd * np.abs(diff)).mean(axis=(0, 1)),
        'bias': (wd * diff).mean(axis=(0, 1)),
    }


def _metric(kind: str):
    def metric(img: np.ndarray, img2: np.ndarray, crop_border: BorderArg = 0, lat_first: float = 90.,
               lat_last: float = -90., input_order: str = 'HWC', **kwargs) -> float:
        # **kwargs: options BasicSR or MetaSRModel pass to every metric (test_y_channel) do not apply here
        return float(weighted_errors(img, img2, crop_border, lat_first, lat_last, input_order)[kind].mean())

    metric.__name__ = metric.__qualname__ = f'calculate_weighted_{kind}'
    metric.__doc__ = (f'Latitude-weighted {kind.upper() if kind != "bias" else "bias"} of ``img`` against '
                      '``img2``, mean over the variables (see ``weighted_errors`` for the arguments).')
    metric.physical_units = True
    return register(METRIC_REGISTRY)(metric)


calculate_weighted_rmse = _metric('rmse')
calculate_weighted_mae = _metric('mae')
calculate_weighted_bias = _metric('bias')
