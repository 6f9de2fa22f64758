"""Latitude-weighted RMSE, MAE and bias of gridded fields, for ``val: metrics:``; masked PSNR.

A row stands for the area of its cells: on a sphere the band between latitudes phi_a and phi_b has
an area proportional to ``|sin(phi_b) - sin(phi_a)|``. Row i of a grid with latitudes phi_i gets the
weight of its cell, with edges halfway between neighbouring rows and, at the first and last rows,
half a row spacing outwards, clipped to +-90 degrees (``cf_metadata.cell_bounds``):

    a_i = |sin(e_i,1) - sin(e_i,0)|,   w_i = a_i / mean_i a_i   (mean 1 over the rows that are scored)

For equally spaced rows away from the poles a_i is proportional to cos(phi_i); a pole row keeps the
small cap around the pole instead of weight 0. Errors count valid points only (``mask``):

    rmse_c = sqrt(sum_ij w_i m_ijc (img - img2)^2 / sum_ij w_i m_ijc)
    mae_c  = sum_ij w_i m_ijc |img - img2| / sum_ij w_i m_ijc
    bias_c = sum_ij w_i m_ijc (img - img2) / sum_ij w_i m_ijc      (positive: ``img`` too high)

per variable (channel) c, in the units of the arrays (m = 1 everywhere without a mask). The registered
``calculate_weighted_*`` return the mean over the channels (BasicSR metrics are one float);
``weighted_errors`` gives the per-variable values. Row latitudes: ``lat`` (the data's own latitude
coordinate, which MetaSRModel passes for MetaSRXarrayDataset), or equally spaced from ``lat_first`` (row
0) to ``lat_last`` (last row), both included; set ``lat_first``/``lat_last`` in the metric's options to
override the data's latitudes. Without either, 90 .. -90 (a global grid, north up).

``physical_units = True`` on the registered functions tells ``MetaSRModel`` to pass them denormalised
fields (the dataset's ``denormalize``) instead of the 0..255-scaled arrays PSNR/SSIM receive.
"""
from typing import Dict, Optional, Sequence, Union

import numpy as np
from basicsr.utils.registry import METRIC_REGISTRY

from metasr_arch.utils.cf_metadata import cell_bounds
from metasr_arch.utils.registry import register

BorderArg = Union[int, Sequence[int]]


def _check_lat(name: str, value) -> None:
    if not np.all(np.isfinite(value)) or np.any(np.abs(value) > 90):
        raise ValueError(f'{name} must be latitudes in [-90, 90] degrees, got {value!r}')


def latitude_weights(num_rows: int, lat_first: float = 90., lat_last: float = -90.,
                     lat: Optional[Sequence[float]] = None) -> np.ndarray:
    """(num_rows,) float64 cell-area weights of the rows (module docstring), normalised to mean 1.

    Args:
        num_rows: H, rows of the grid.
        lat_first, lat_last: latitudes in degrees of row 0 and row H - 1 (equal spacing in between).
        lat: (H,) the rows' latitudes in degrees (any spacing, monotonic); overrides lat_first/lat_last.
    """
    if isinstance(num_rows, bool) or not isinstance(num_rows, (int, np.integer)) or num_rows < 1:
        raise ValueError(f'num_rows must be a positive integer, got {num_rows!r}')
    if lat is None:
        for name, value in (('lat_first', lat_first), ('lat_last', lat_last)):
            _check_lat(name, value)
        lat = np.linspace(float(lat_first), float(lat_last), int(num_rows))
    else:
        lat = np.asarray(lat, dtype=np.float64).reshape(-1)
        _check_lat('lat', lat)
        if lat.size != num_rows:
            raise ValueError(f'lat has {lat.size} latitudes for {num_rows} rows')
    if lat.size == 1 or np.ptp(lat) == 0:  # one latitude: no spacing to give the cells a size
        weights = np.full(lat.size, max(np.cos(np.deg2rad(lat[0])), 0.0))
    else:
        edges = np.deg2rad(cell_bounds(lat, (-90.0, 90.0)))
        weights = np.abs(np.sin(edges[:, 1]) - np.sin(edges[:, 0]))
    if weights.max() < 1e-12:
        raise ValueError(f'all {num_rows} rows lie on a pole (lat_first={lat_first}, lat_last={lat_last}): '
                         'the rows have no area')
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


def _as_mask(mask, shape, input_order: str) -> Optional[np.ndarray]:
    """(H, W, C) bool from a (H, W), (H, W, C) or (C, H, W) mask (True / nonzero = valid)."""
    if mask is None:
        return None
    m = np.asarray(mask)
    if m.ndim == 3 and input_order == 'CHW':
        m = m.transpose(1, 2, 0)
    if m.ndim == 2:
        m = m[..., None]
    try:
        return np.broadcast_to(m != 0, shape)
    except ValueError:
        raise ValueError(f'mask of shape {np.shape(mask)} does not fit fields of shape {shape}') from None


def weighted_errors(img: np.ndarray, img2: np.ndarray, crop_border: BorderArg = 0, lat_first: Optional[float] = None,
                    lat_last: Optional[float] = None, input_order: str = 'HWC', lat: Optional[Sequence[float]] = None,
                    mask: Optional[np.ndarray] = None) -> Dict[str, np.ndarray]:
    """Per-variable latitude-weighted errors of ``img`` against the reference ``img2`` at valid points.

    Args:
        img, img2: (H, W) or (H, W, C) arrays in physical units (``input_order='CHW'``: (C, H, W)); values
            at masked points are never read (they may be NaN or anything).
        crop_border: rows/columns left out on each side, an int or (rows, columns). The latitudes are
            those of the full grid, so cropping does not shift them.
        lat_first, lat_last: latitudes of the first and last rows of the full grid (degrees); given,
            they override ``lat``.
        lat: (H,) latitudes of the rows of the full grid (the data's coordinate). Default 90 .. -90.
        mask: (H, W) or (H, W, C) (``CHW``: (C, H, W)) validity, True or nonzero = valid; None: all valid.

    Returns:
        {'rmse', 'mae', 'bias'}: each (C,) float64; NaN for a variable with no valid point.
    """
    a, b = _as_hwc(img, 'img', input_order), _as_hwc(img2, 'img2', input_order)
    if a.shape != b.shape:
        raise ValueError(f'img and img2 must have the same shape, got {a.shape} and {b.shape}')
    bv, bh = (crop_border, crop_border) if np.isscalar(crop_border) else tuple(crop_border)
    bv, bh = int(bv), int(bh)
    h, w = a.shape[:2]
    if bv < 0 or bh < 0 or 2 * bv >= h or 2 * bh >= w:
        raise ValueError(f'crop_border={crop_border!r} leaves nothing of a {h}x{w} field')
    if lat_first is not None or lat_last is not None or lat is None:
        weights = latitude_weights(h, 90. if lat_first is None else lat_first,
                                   -90. if lat_last is None else lat_last)
    else:
        weights = latitude_weights(h, lat=lat)
    m = _as_mask(mask, a.shape, 'HWC' if mask is None or np.ndim(mask) != 3 else input_order)
    m = np.ones(a.shape, dtype=bool) if m is None else m
    rows, cols = slice(bv, h - bv), slice(bh, w - bh)
    valid = m[rows, cols]
    diff = np.where(valid, a[rows, cols] - b[rows, cols], 0.0)  # masked points: never their values
    wd = weights[rows][:, None, None] * valid
    total = wd.sum(axis=(0, 1))
    with np.errstate(invalid='ignore', divide='ignore'):
        return {
            'rmse': np.sqrt((wd * diff ** 2).sum(axis=(0, 1)) / total),
            'mae': (wd * np.abs(diff)).sum(axis=(0, 1)) / total,
            'bias': (wd * diff).sum(axis=(0, 1)) / total,
        }


def masked_psnr(img: np.ndarray, img2: np.ndarray, mask: Optional[np.ndarray], crop_border: BorderArg = 0,
                peak: float = 255.) -> float:
    """PSNR (dB) of (H, W, C) ``img`` against ``img2`` over the valid points of ``mask`` (as
    ``weighted_errors``; no latitude weights): ``10 log10(peak^2 / mean_valid (img - img2)^2)``."""
    a, b = _as_hwc(img, 'img', 'HWC'), _as_hwc(img2, 'img2', 'HWC')
    m = _as_mask(mask, a.shape, 'HWC')
    m = np.ones(a.shape, dtype=bool) if m is None else m
    bv, bh = (crop_border, crop_border) if np.isscalar(crop_border) else tuple(crop_border)
    h, w = a.shape[:2]
    sel = m[bv:h - bv, bh:w - bh]
    if not sel.any():
        raise ValueError('masked_psnr: no valid point')
    d = (a - b)[bv:h - bv, bh:w - bh][sel]
    mse = float(np.mean(d ** 2))
    return float('inf') if mse == 0 else 10. * np.log10(peak ** 2 / mse)


def scoring_inputs(mask, dataset, num_rows: int):
    """What MetaSRModel passes to the metrics of one validation field besides the fields themselves.

    Args:
        mask: (1, C, H, W) or (1, 1, H, W) bool tensor of valid points (``losses.masked_loss.batch_mask``), or None.
        dataset: the validation dataset; its ``latitudes`` (MetaSRXarrayDataset: the rows the network
            sees) give the rows' latitudes.
        num_rows: H, the rows scored (the top rows of the dataset's grid).

    Returns:
        (mask as (H, W, C) bool numpy or None, (H,) latitudes or None).
    """
    lat = getattr(dataset, 'latitudes', None)
    lat = None if lat is None or len(lat) < num_rows else np.asarray(lat, dtype=np.float64)[:num_rows]
    if mask is None:
        return None, lat
    return mask[0].detach().cpu().numpy().transpose(1, 2, 0).astype(bool), lat


def _metric(kind: str):
    def metric(img: np.ndarray, img2: np.ndarray, crop_border: BorderArg = 0, lat_first: Optional[float] = None,
               lat_last: Optional[float] = None, input_order: str = 'HWC', lat=None, mask=None, **kwargs) -> float:
        # **kwargs: options BasicSR or MetaSRModel pass to every metric (test_y_channel) do not apply here
        values = weighted_errors(img, img2, crop_border, lat_first, lat_last, input_order, lat, mask)[kind]
        if np.isnan(values).all():
            raise ValueError(f'calculate_weighted_{kind}: no valid point to score')
        return float(np.nanmean(values))

    metric.__name__ = metric.__qualname__ = f'calculate_weighted_{kind}'
    metric.__doc__ = (f'Latitude-weighted {kind.upper() if kind != "bias" else "bias"} of ``img`` against '
                      '``img2`` at valid points, mean over the variables (see ``weighted_errors`` for the '
                      'arguments).')
    metric.physical_units = True
    return register(METRIC_REGISTRY)(metric)


calculate_weighted_rmse = _metric('rmse')
calculate_weighted_mae = _metric('mae')
calculate_weighted_bias = _metric('bias')
