"""Missing values of gridded fields as masks: filling the network's input, the output grid's mask.

A point is *valid* where the field holds a finite value. xarray turns ``_FillValue`` and
``missing_value`` into NaN when it opens a file, and a mask variable named in the options sets the
points it marks invalid to NaN too (``GriddedSource``), so one rule covers all three. Masks are
boolean (C, H, W) arrays (True = valid): a static land-sea mask and a mask that changes with the time
step are handled alike, since every sample carries its own.

Rules (docs/gridded.md, "Missing values"):

* the network's input at missing points is filled (``fill_missing``): ``nearest`` (default) copies the
  nearest valid point of the same channel (Euclidean distance in grid indices), ``zero`` writes 0 in
  normalised units (the training mean with ``mean_std``);
* an output point is missing where the nearest input point is missing (``output_valid``), nearest in
  index space: output row i sits at input row position ``i * (h - 1) / (H - 1)`` (both ends kept), column
  j at ``j * (w - 1) / (W - 1)`` on a regional grid or ``j * w / W`` (mod w) on a periodic one; positions
  halfway between two input points take the later one (``floor(p + 0.5)``).
"""
from typing import Optional

import numpy as np

from metasr_arch.utils.options import OptionError

FILL_MODES = ('nearest', 'zero')


def fill_missing(x: np.ndarray, valid: Optional[np.ndarray], mode: str = 'nearest') -> np.ndarray:
    """``x`` with its missing points replaced as the module docstring says.

    Args:
        x: (C, H, W) float array (NaN or any value at missing points).
        valid: (C, H, W) or (H, W) bool, True where ``x`` is valid; None: all valid.
        mode: 'nearest' or 'zero'.

    Returns:
        (C, H, W) float32 copy; a channel with no valid point is filled with 0.
    """
    if mode not in FILL_MODES:
        raise ValueError(f'fill must be one of {FILL_MODES}, got {mode!r}')
    out = np.array(x, dtype=np.float32, copy=True)
    if valid is None:
        return out
    valid = np.broadcast_to(np.asarray(valid, dtype=bool), out.shape)
    for c in range(out.shape[0]):
        missing = ~valid[c]
        if not missing.any():
            continue
        if mode == 'zero' or missing.all():
            out[c][missing] = 0.0
            continue
        from scipy.ndimage import distance_transform_edt  # scipy comes with BasicSR
        # indices of the nearest valid point for every point (valid points map to themselves)
        rows, cols = distance_transform_edt(missing, return_distances=False, return_indices=True)
        out[c] = out[c][rows, cols]
    return out


def nearest_index(n_in: int, n_out: int, periodic: bool = False) -> np.ndarray:
    """(n_out,) index of the nearest input point of every output point along one axis (module docstring)."""
    if n_out < 1 or n_in < 1:
        raise ValueError(f'axis sizes must be positive, got {n_in} -> {n_out}')
    if periodic:
        pos = np.arange(n_out, dtype=np.float64) * n_in / n_out
        return np.floor(pos + 0.5).astype(np.int64) % n_in
    if n_out == 1 or n_in == 1:
        return np.zeros(n_out, dtype=np.int64)
    pos = np.arange(n_out, dtype=np.float64) * (n_in - 1) / (n_out - 1)
    return np.minimum(np.floor(pos + 0.5).astype(np.int64), n_in - 1)


def output_valid(valid_in: np.ndarray, out_h: int, out_w: int, periodic_lon: bool = False) -> np.ndarray:
    """Mask of the output grid: valid where the nearest input point is valid.

    Args:
        valid_in: (C, h, w) bool mask of the input (rows in the order the network saw them).
        out_h, out_w: output size.
        periodic_lon: the longitude closes the circle (columns wrap).

    Returns:
        (C, out_h, out_w) bool.
    """
    valid_in = np.asarray(valid_in, dtype=bool)
    rows = nearest_index(valid_in.shape[-2], out_h)
    cols = nearest_index(valid_in.shape[-1], out_w, periodic_lon)
    return valid_in[..., rows[:, None], cols[None, :]]


def apply_mask(y: np.ndarray, valid: Optional[np.ndarray]) -> np.ndarray:
    """(C, H, W) ``y`` as float32 with NaN where ``valid`` (same shape, or None: nothing masked) is False."""
    out = np.array(y, dtype=np.float32, copy=True)
    if valid is not None:
        out[~np.broadcast_to(valid, out.shape)] = np.nan
    return out


def check_periodic_batch(periodic_w: bool, batch) -> None:
    """OptionError when a ``periodic_w`` network is fed fields whose longitudes do not close the circle.

    Args:
        periodic_w: the network wraps along W.
        batch: a collated batch; MetaSRXarrayDataset items carry ``lon_periodic`` (the grid closes the
            circle and the item spans its whole width), other datasets nothing (not checked).
    """
    flags = batch.get('lon_periodic') if hasattr(batch, 'get') else None
    if not periodic_w or flags is None:
        return
    if not bool(np.all(np.asarray(flags))):
        raise OptionError('network_g.periodic_w is true (longitude wraps around the globe) but a batch comes from a '
                          'regional grid or a crop narrower than the globe (gt_size): set periodic_w: false for '
                          'regional data, or train on whole global fields')
