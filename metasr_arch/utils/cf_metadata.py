"""CF metadata of an upscaled grid: the pieces ``gridded_io.output_dataset`` assembles.

What is kept (docs/gridded.md, "CF metadata"): the variables' attributes (``actual_range`` is dropped:
it described the input's values) and encodings (``dtype``, ``_FillValue``, ``missing_value``, packing
while the values fit); the coordinates' attributes and dtypes (``actual_range`` recomputed); time with
its units, calendar and bounds; scalar coordinates (a level chosen with ``select``, a size-1 dimension,
a scalar ``height``) and auxiliary coordinates on time alone; the grid-mapping variable the data
variables point at; latitude/longitude bounds, recomputed for the new grid (``cell_bounds``); the
global attributes, with a line added in front of ``history``. Auxiliary coordinates on latitude or
longitude (2-D curvilinear grids) are not regridded and are left out.
"""
import datetime
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

# encoding keys that describe how values are stored; the rest (source, chunks, compression) belong
# to the input file
_STORAGE_KEYS = ('dtype', '_FillValue', 'missing_value', 'scale_factor', 'add_offset', 'units', 'calendar')


def _xr():
    import xarray  # the caller (gridded_io) has checked it is installed
    return xarray


def storage_encoding(encoding: Dict) -> Dict:
    """The value-storage part of an xarray ``encoding`` (module docstring)."""
    return {k: v for k, v in encoding.items() if k in _STORAGE_KEYS}


def cell_bounds(centres: np.ndarray, limits: Optional[Tuple[float, float]] = None) -> np.ndarray:
    """(n, 2) bounds of cells around ``centres`` (n,): midpoints between neighbours, the outer edges half
    a step beyond the end centres, clipped to ``limits`` (e.g. (-90, 90) for latitude).

    Each row is (edge on the side of the previous centre, edge on the side of the next one).
    """
    c = np.asarray(centres, dtype=np.float64)
    if c.size == 1:
        edges = np.array([c[0], c[0]])
    else:
        mid = (c[:-1] + c[1:]) / 2
        edges = np.concatenate([[c[0] - (mid[0] - c[0])], mid, [c[-1] + (c[-1] - mid[-1])]])
    if limits is not None:
        edges = np.clip(edges, *limits)
    return np.stack([edges[:-1], edges[1:]], axis=1)


def _attrs_with_range(attrs: Dict, values: np.ndarray) -> Dict:
    out = dict(attrs)
    if 'actual_range' in out:
        dtype = np.asarray(out['actual_range']).dtype
        out['actual_range'] = np.array([np.nanmin(values), np.nanmax(values)], dtype=dtype)
    return out


def coordinate(src, values: np.ndarray):
    """An output coordinate (``xarray.Variable``) with ``src``'s attributes and storage dtype.

    Args:
        src: the input's 1-D coordinate (DataArray); values: the new (n,) positions.
    """
    xr = _xr()
    values = np.asarray(values, dtype=np.float64)
    var = xr.Variable(src.dims, values, _attrs_with_range(src.attrs, values))
    enc = {k: v for k, v in storage_encoding(src.encoding).items() if k == 'dtype'}
    if 'dtype' in enc and not np.issubdtype(np.dtype(enc['dtype']), np.floating):
        enc.pop('dtype')  # integer degrees cannot hold the finer grid
    enc['_FillValue'] = None  # CF: coordinates have no missing values
    var.encoding = enc
    return var


def time_coordinate(datasets: Sequence, positions: Sequence[int]):
    """The time coordinate of the chosen steps (step i is ``datasets[i]['time'][positions[i]]``), with the
    first file's attributes, units and calendar."""
    xr = _xr()
    src = datasets[0]['time']
    values = np.asarray([ds['time'].values[t] for ds, t in zip(datasets, positions)])
    var = xr.Variable(('time',), values, dict(src.attrs))
    var.encoding = {**{k: v for k, v in storage_encoding(src.encoding).items() if k in ('units', 'calendar', 'dtype')},
                    '_FillValue': None}
    return var


def scalar_coordinates(ds, variables: Sequence[str], skip: Sequence[str], select: Optional[Dict] = None) -> Dict:
    """Scalar coordinates of ``variables`` once ``select`` and the size-1 dimensions are taken away:
    {name: 0-d ``xarray.Variable``} with attributes and storage encoding."""
    xr = _xr()
    out = {}
    for name in variables:
        arr = ds[name]
        if select:
            arr = arr.sel(**{k: v for k, v in select.items() if k in arr.dims})
        arr = arr.squeeze([d for d in arr.dims if d not in skip and arr.sizes[d] == 1])
        for cname, coord in arr.coords.items():
            if cname in skip or coord.ndim != 0 or cname in out:
                continue
            var = xr.Variable((), coord.values, dict(coord.attrs))
            var.encoding = {**storage_encoding(coord.encoding), '_FillValue': None}
            out[cname] = var
    return out


def time_aux_coordinates(ds, variables: Sequence[str], datasets: Sequence, positions: Sequence[int]) -> Dict:
    """Auxiliary coordinates of ``variables`` on time alone (e.g. a forecast period), for the chosen steps."""
    xr = _xr()
    out = {}
    for name in variables:
        for cname, coord in ds[name].coords.items():
            if cname == 'time' or coord.dims != ('time',) or cname in out:
                continue
            values = np.asarray([d[cname].values[t] for d, t in zip(datasets, positions)])
            var = xr.Variable(('time',), values, dict(coord.attrs))
            var.encoding = {**storage_encoding(coord.encoding), '_FillValue': None}
            out[cname] = var
    return out


def _fits(data, enc: Dict) -> bool:
    """Whether packed integer storage (``enc``: dtype, scale_factor, add_offset) holds ``data``'s values."""
    if not isinstance(data, np.ndarray):
        return False  # lazy (dask) data: not read here to check, so stored as floats
    info = np.iinfo(np.dtype(enc['dtype']))
    finite = data[np.isfinite(data)]
    if finite.size == 0:
        return True
    packed = (finite.astype(np.float64) - float(enc.get('add_offset', 0.0))) / float(enc.get('scale_factor', 1.0))
    fill = enc.get('_FillValue', enc.get('missing_value'))
    return bool(packed.min() >= info.min and packed.max() <= info.max and
                (fill is None or not np.any(np.round(packed) == fill)))


def data_variable(src, dims: Tuple[str, ...], data):
    """An output data variable on ``dims`` holding ``data`` (numpy or dask), with ``src``'s attributes
    and storage encoding (module docstring).

    Integer storage is kept only when packing (``scale_factor``/``add_offset``) holds every value;
    otherwise the variable is stored as float32 with the same fill value. A file that marks missing
    points with ``missing_value`` alone (or beside a NaN ``_FillValue``) gets the same value as
    ``_FillValue`` too (otherwise xarray would write NaN as the fill value); where both are numbers and
    differ, ``_FillValue`` is written for both.
    """
    xr = _xr()
    attrs = {k: v for k, v in src.attrs.items() if k != 'actual_range'}
    enc = storage_encoding(src.encoding)
    enc.pop('units', None)
    enc.pop('calendar', None)
    if 'dtype' in enc and not np.issubdtype(np.dtype(enc['dtype']), np.floating):
        if not ('scale_factor' in enc and _fits(data, enc)):
            for key in ('scale_factor', 'add_offset'):
                enc.pop(key, None)
            enc['dtype'] = np.dtype('float32')
    if 'missing_value' in enc:
        fill = enc.get('_FillValue')
        if fill is None or (np.isnan(fill) and not np.isnan(enc['missing_value'])):
            enc['_FillValue'] = enc['missing_value']
        elif not np.array_equal(fill, enc['missing_value'], equal_nan=True):
            enc['missing_value'] = fill  # xarray writes one marker; the file's _FillValue wins
    var = xr.Variable(dims, data, attrs)
    var.encoding = enc
    return var


def _grid_mapping_names(value: str) -> List[str]:
    # CF: "crs" or the extended form "crs: lat lon crs2: x y"
    words = str(value).split()
    if len(words) == 1:
        return [words[0]]
    return [w[:-1] for w in words if w.endswith(':')]


def support_variables(ds, variables: Sequence[str], lat_name: str, lon_name: str, out_lat: np.ndarray,
                      out_lon: np.ndarray, time_datasets: Sequence,
                      time_positions: Sequence[int]) -> Dict:
    """Grid-mapping variables, recomputed lat/lon bounds and the time bounds of the chosen steps:
    {name: ``xarray.Variable``}."""
    xr = _xr()
    out = {}
    for name in variables:
        mapping = ds[name].attrs.get('grid_mapping') or ds[name].encoding.get('grid_mapping')
        for gm in _grid_mapping_names(mapping) if mapping else []:
            if gm in ds.variables and gm not in out:
                var = xr.Variable(ds[gm].dims, ds[gm].values, dict(ds[gm].attrs))
                var.encoding = storage_encoding(ds[gm].encoding)
                out[gm] = var
    for coord, centres, limits in ((lat_name, out_lat, (-90.0, 90.0)), (lon_name, out_lon, None)):
        bname = ds[coord].attrs.get('bounds') or ds[coord].encoding.get('bounds')
        if bname and bname in ds.variables and ds[bname].ndim == 2:
            var = xr.Variable((coord, ds[bname].dims[1]), cell_bounds(centres, limits), dict(ds[bname].attrs))
            var.encoding = {**{k: v for k, v in storage_encoding(ds[bname].encoding).items() if k == 'dtype'},
                            '_FillValue': None}
            out[bname] = var
    if time_datasets and 'time' in ds.coords:
        bname = ds['time'].attrs.get('bounds') or ds['time'].encoding.get('bounds')
        if bname and bname in ds.variables and ds[bname].dims[0] == 'time':
            values = np.stack([d[bname].values[t] for d, t in zip(time_datasets, time_positions)])
            var = xr.Variable(ds[bname].dims, values, dict(ds[bname].attrs))
            var.encoding = {**{k: v for k, v in storage_encoding(ds[bname].encoding).items()
                               if k in ('units', 'calendar', 'dtype')}, '_FillValue': None}
            out[bname] = var
    return out


def global_attrs(attrs: Dict, out_shape: Sequence[int]) -> Dict:
    """The input's global attributes with a ``history`` line saying what made this file."""
    out = dict(attrs)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')
    line = f'{stamp}: upscaled to {out_shape[0]} x {out_shape[1]} by metasr_arch'
    out['history'] = f'{line}\n{out["history"]}' if out.get('history') else line
    return out
