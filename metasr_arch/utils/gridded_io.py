"""Reading and writing gridded NetCDF/Zarr fields with xarray (the optional ``geo`` extra).

Shared by ``MetaSRXarrayDataset`` and the inference package (``metasr_arch.inference.gridded``). xarray is imported lazily, so the image
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

from metasr_arch.utils.moved import moved_names

LAT_NAMES = ('latitude', 'lat', 'y')
LON_NAMES = ('longitude', 'lon', 'x')
GRIDDED_EXTS = ('.nc', '.nc4', '.netcdf', '.zarr')
LAT_ORDERS = ('north_up', 'south_up')


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
    save_netcdf(fields_dataset(fields, variables, lat, lon, lat_name, lon_name, time, attrs, var_attrs,
                               coord_attrs), path)


def fields_dataset(fields, variables: Sequence[str], lat: np.ndarray, lon: np.ndarray, lat_name: str = 'latitude',
                   lon_name: str = 'longitude', time=None, attrs=None, var_attrs: Optional[Dict[str, dict]] = None,
                   coord_attrs: Optional[Dict[str, dict]] = None):
    """The xarray Dataset of (T, C, H, W) (or (C, H, W)) ``fields`` (numpy or a lazy dask array) on
    (time, lat, lon), with the given attributes; what ``write_netcdf`` and the Zarr writer store."""
    xr = require_xarray()
    if not hasattr(fields, 'ndim'):
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
    return xr.Dataset(data_vars, coords=coords, attrs=dict(attrs or {}))


def output_dataset(src: 'GriddedSource', variables: Sequence[str], fields, out_lat: np.ndarray,
                   out_lon: np.ndarray, times=None):
    """The output Dataset of an upscaled ``src``: (T, C, H, W) ``fields`` (numpy or lazy dask) on the output
    grid, in the input's row order, with the input's global, variable and coordinate attributes.

    Args:
        out_lat, out_lon: the output grid in the order the network sees (``output_coords``).
        times: (T,) time values, or None for a static input (``fields`` then (1, C, H, W)).
    """
    ds = src.datasets[0]
    return fields_dataset(fields, variables, out_lat[::-1] if src.flip else out_lat, out_lon, src.lat_name,
                          src.lon_name, None if times is None else np.asarray(times), attrs=ds.attrs,
                          var_attrs={v: ds[v].attrs for v in variables},
                          coord_attrs={c: ds[c].attrs for c in (src.lat_name, src.lon_name) if c in ds.coords})


def save_netcdf(ds, path: str) -> None:
    """``ds.to_netcdf`` through a temporary file and ``os.replace``: an interrupted write leaves no partial file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f'.{os.path.basename(path)}.{os.getpid()}.tmp')
    try:
        ds.to_netcdf(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class GriddedSource:
    """Time steps of one or more NetCDF/Zarr files, read lazily, oriented to ``lat_order``.

    Shapes: ``field(i)`` -> (C, H, W) float32 of sample ``i`` (physical units).
    """

    def __init__(self, paths, variables: Sequence[str], time_slice=None, lat_name: Optional[str] = None,
                 lon_name: Optional[str] = None, lat_order: str = 'north_up', select: Optional[Dict] = None,
                 option: str = 'dataroot_gt'):
        if lat_order not in LAT_ORDERS:
            raise ValueError(f'lat_order must be one of {LAT_ORDERS}, got {lat_order!r}')
        if not variables or isinstance(variables, str):
            raise ValueError(f'variables must be a non-empty list of variable names, got {variables!r}')
        self.paths = expand_paths(paths, option)
        self.variables, self.select = list(variables), dict(select or {})
        self._opened: Tuple[int, list] = (os.getpid(), [open_gridded(p) for p in self.paths])
        first = self.datasets[0]
        missing = [v for v in self.variables if v not in first.data_vars]
        if missing:
            raise KeyError(f'variables {missing} are not in {self.paths[0]} (it has {sorted(first.data_vars)})')
        self.lat_name = find_coord(first, LAT_NAMES, 'lat_name', lat_name)
        self.lon_name = find_coord(first, LON_NAMES, 'lon_name', lon_name)
        lat = np.asarray(first[self.lat_name].values, dtype=np.float64)
        self.flip = is_north_up(lat) != (lat_order == 'north_up')
        self.lat = lat[::-1] if self.flip else lat
        self.lon = np.asarray(first[self.lon_name].values, dtype=np.float64)
        self.samples = self._select_times(time_slice)
        if not self.samples:
            raise ValueError(f'time_slice={time_slice!r} selects no time step of {self.paths}')

    @property
    def datasets(self) -> list:
        """The opened files; reopened in a new process (DataLoader workers), since HDF5 handles are not fork-safe."""
        if self._opened[0] != os.getpid():
            self._opened = (os.getpid(), [open_gridded(p) for p in self.paths])
        return self._opened[1]

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state['_opened'] = (-1, [])  # reopened by the process that unpickles it
        return state

    def _select_times(self, time_slice) -> List[Tuple[int, Optional[int]]]:
        """(dataset index, time position) of every selected step, in file order."""
        steps: List[Tuple[int, Optional[int]]] = []
        for k, ds in enumerate(self.datasets):
            n = ds.sizes['time'] if 'time' in ds.dims else None
            steps.extend([(k, t) for t in range(n)] if n is not None else [(k, None)])
        if time_slice is None:
            return steps
        if not isinstance(time_slice, (list, tuple)) or len(time_slice) != 2:
            raise ValueError(f'time_slice must be [start, stop] (labels or positions), got {time_slice!r}')
        start, stop = time_slice
        if all(v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in time_slice):
            return steps[slice(start, stop)]
        chosen = []
        for k, ds in enumerate(self.datasets):
            if 'time' not in ds.indexes:
                raise ValueError(f'time_slice with labels needs a time coordinate in {self.paths[k]}')
            pos = ds.indexes['time'].slice_indexer(start, stop)
            chosen.extend((k, t) for t in range(ds.sizes['time'])[pos])
        return chosen

    def __len__(self) -> int:
        return len(self.samples)

    def time_label(self, i: int) -> str:
        k, t = self.samples[i]
        if t is None:
            return 'static'
        return str(np.datetime_as_string(self.datasets[k]['time'].values[t], unit='h')
                   if np.issubdtype(self.datasets[k]['time'].dtype, np.datetime64)
                   else self.datasets[k]['time'].values[t])

    def time_value(self, i: int):
        k, t = self.samples[i]
        return None if t is None else self.datasets[k]['time'].values[t]

    def field(self, i: int) -> np.ndarray:
        k, t = self.samples[i]
        arr = field_array(self.datasets[k], self.variables, self.lat_name, self.lon_name, t, select=self.select)
        return np.ascontiguousarray(arr[:, ::-1]) if self.flip else arr


def normalization_affine(norm: Dict) -> Tuple[np.ndarray, np.ndarray]:
    """(offset, scale) per variable with normalised = (x - offset) / scale."""
    if norm['type'] == 'mean_std':
        return np.asarray(norm['mean']), np.asarray(norm['std'])
    if norm['type'] == 'min_max':
        return np.asarray(norm['min']), np.asarray(norm['max']) - np.asarray(norm['min'])
    c = len(norm['variables'])
    return np.zeros(c), np.ones(c)


def parse_time_arg(values: Optional[Sequence[str]]):
    """``--time`` values -> a ``time_slice``: none (all steps), one label or position, or a [start, stop] pair.

    Labels select inclusively (``1970-11`` is every step in November 1970); positions are [start, stop).
    """
    if not values:
        return None
    items = [int(v) if str(v).lstrip('-').isdigit() else str(v) for v in values]
    if len(items) == 1:
        return [items[0], items[0] + 1] if isinstance(items[0], int) else [items[0], items[0]]
    if len(items) == 2:
        return items
    raise ValueError(f'--time takes one label/position or a START STOP pair, got {list(values)}')


# moved up to metasr_arch.inference.gridded (it runs a network)
__getattr__ = moved_names(__name__, {'upscale_gridded': 'metasr_arch.inference.gridded'})
