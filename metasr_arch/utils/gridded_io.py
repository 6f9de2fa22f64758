"""Reading and writing gridded NetCDF/Zarr fields with xarray (the optional ``geo`` extra).

Shared by ``MetaSRXarrayDataset`` and the inference CLI. xarray is imported lazily, so the image
path never needs it.

Conventions (``docs/gridded.md``):

* a field is (time, lat, lon) per variable; the network sees (C, H, W) with the variables as channels
  and row 0 at the north (``north_up``, the default) or at the south (``south_up``);
* output coordinates of an upscaled grid: latitude from the input's first to its last row, both
  included, with ``out_h`` equally spaced rows (an equiangular grid keeps its poles: 73 rows of 2.5
  degrees become 721 rows of 0.25 degrees); longitude periodic, ``lon0 + j * span / out_w`` with
  ``span = w * (lon1 - lon0)`` (360 for a global grid), so the last column does not repeat the first.
"""
import glob
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

LAT_NAMES = ('latitude', 'lat', 'y')
LON_NAMES = ('longitude', 'lon', 'x')
GRIDDED_EXTS = ('.nc', '.nc4', '.netcdf', '.zarr')


def require_xarray():
    """The xarray module, or ImportError saying how to install the ``geo`` extra."""
    try:
        import xarray
    except ImportError as err:
        raise ImportError('NetCDF/Zarr data needs xarray and a NetCDF backend: pip install -e .[geo] '
                          f'(from the metasr_arch repository), or pip install xarray netCDF4 zarr ({err})') from err
    return xarray


def is_gridded_path(path: str) -> bool:
    """True for NetCDF files and Zarr stores (by extension)."""
    return str(path).rstrip('/').lower().endswith(GRIDDED_EXTS)


def expand_paths(paths, name: str) -> List[str]:
    """A path, a glob pattern, or a list of them -> sorted existing paths (FileNotFoundError naming ``name``)."""
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths or [])
    found: List[str] = []
    for item in items:
        matches = sorted(glob.glob(str(item))) if any(c in str(item) for c in '*?[') else [str(item)]
        missing = [m for m in matches if not os.path.exists(m)]
        if not matches or missing:
            raise FileNotFoundError(f'{name} = {item!r}: no such NetCDF/Zarr file')
        found.extend(matches)
    if not found:
        raise FileNotFoundError(f'{name} is empty: give a NetCDF file, a Zarr store, a glob or a list of them')
    return found


def open_gridded(path: str):
    """Open one NetCDF file or Zarr store lazily (nothing is read until values are indexed)."""
    xr = require_xarray()
    try:
        if path.rstrip('/').lower().endswith('.zarr'):
            return xr.open_dataset(path, engine='zarr', chunks=None)
        return xr.open_dataset(path)
    except Exception as err:  # noqa: BLE001 (backends raise many types for unreadable files)
        raise OSError(f'cannot open {path!r} as NetCDF/Zarr: {err}') from err


def find_coord(ds, names: Sequence[str], option: str, given: Optional[str] = None) -> str:
    """Name of the coordinate ``given`` or the first of ``names`` present in ``ds``."""
    candidates = [given] if given else list(names)
    for name in candidates:
        if name in ds.coords or name in ds.dims:
            return name
    raise KeyError(f'{option}: none of {candidates} is a coordinate of the data (it has {sorted(ds.coords)}); '
                   f'set {option}')


def field_array(ds, variables: Sequence[str], lat: str, lon: str, time_index: Optional[int] = None,
                time_dim: str = 'time', select: Optional[Dict] = None) -> np.ndarray:
    """(C, lat, lon) float32 of ``variables`` at time position ``time_index`` (None: no time axis)."""
    planes = []
    for var in variables:
        if var not in ds.data_vars:
            raise KeyError(f'variable {var!r} is not in the data (it has {sorted(ds.data_vars)})')
        arr = ds[var]
        if select:
            arr = arr.sel(**{k: v for k, v in select.items() if k in arr.dims})
        if time_index is not None and time_dim in arr.dims:
            arr = arr.isel({time_dim: time_index})
        extra = [d for d in arr.dims if d not in (lat, lon)]
        if any(arr.sizes[d] != 1 for d in extra):
            raise ValueError(f'variable {var!r} has extra dimensions {extra} of sizes '
                             f'{[arr.sizes[d] for d in extra]}; choose one value each with select: {{dim: value}}')
        arr = arr.squeeze(extra, drop=True).transpose(lat, lon)
        planes.append(np.asarray(arr.values, dtype=np.float32))
    out = np.stack(planes)
    if not np.isfinite(out).all():
        raise ValueError(f'variables {list(variables)} contain NaN or inf (fill missing values first)')
    return out


def is_north_up(lat_values: np.ndarray) -> bool:
    """True when latitude decreases down the rows (row 0 northernmost)."""
    lat_values = np.asarray(lat_values, dtype=np.float64)
    return lat_values.size < 2 or lat_values[0] >= lat_values[-1]


def output_coords(lat: np.ndarray, lon: np.ndarray, out_h: int, out_w: int) -> Tuple[np.ndarray, np.ndarray]:
    """Latitude and longitude of the upscaled grid (module docstring: endpoints kept, longitude periodic).

    Args:
        lat: (h,) input row latitudes; lon: (w,) input column longitudes, equally spaced.

    Returns:
        (out_h,) latitudes from lat[0] to lat[-1] inclusive, (out_w,) longitudes lon[0] + j * span / out_w.
    """
    lat = np.asarray(lat, dtype=np.float64)
    lon = np.asarray(lon, dtype=np.float64)
    out_lat = np.linspace(lat[0], lat[-1], out_h) if lat.size > 1 else np.full(out_h, lat[0])
    step = (lon[-1] - lon[0]) / (lon.size - 1) if lon.size > 1 else 360.0
    out_lon = lon[0] + np.arange(out_w) * (step * lon.size / out_w)
    return out_lat, out_lon


def write_netcdf(path: str, fields: np.ndarray, variables: Sequence[str], lat: np.ndarray, lon: np.ndarray,
                 lat_name: str = 'latitude', lon_name: str = 'longitude', time=None, attrs=None,
                 var_attrs: Optional[Dict[str, dict]] = None, coord_attrs: Optional[Dict[str, dict]] = None) -> None:
    """Write (T, C, H, W) (or (C, H, W)) ``fields`` as NetCDF variables on (time, lat, lon), atomically.

    ``attrs`` (global), ``var_attrs`` (per variable) and ``coord_attrs`` are copied from the input so that
    units and long names survive.
    """
    xr = require_xarray()
    fields = np.asarray(fields)
    if fields.ndim == 3:
        fields = fields[None]
    coords = {lat_name: (lat_name, np.asarray(lat), dict((coord_attrs or {}).get(lat_name, {}))),
              lon_name: (lon_name, np.asarray(lon), dict((coord_attrs or {}).get(lon_name, {})))}
    dims = (lat_name, lon_name)
    if time is not None:
        coords['time'] = ('time', np.asarray(time))
        dims = ('time',) + dims
    else:
        fields = fields[0]
    data_vars = {var: (dims, fields[..., c, :, :] if time is not None else fields[c],
                       dict((var_attrs or {}).get(var, {})))
                 for c, var in enumerate(variables)}
    ds = xr.Dataset(data_vars, coords=coords, attrs=dict(attrs or {}))
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), f'.{os.path.basename(path)}.{os.getpid()}.tmp')
    try:
        ds.to_netcdf(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
