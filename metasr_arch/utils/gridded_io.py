"""Reading and writing gridded NetCDF/Zarr fields with xarray (the optional ``geo`` extra).

Shared by ``MetaSRXarrayDataset`` and the inference package (``metasr_arch.inference.gridded``). xarray is imported lazily, so the image
path never needs it.

Conventions (``docs/gridded.md``):

* a field is (time, lat, lon) per variable; the network sees (C, H, W) with the variables as channels
  and row 0 at the north (``north_up``, the default) or at the south (``south_up``);
* missing values (NaN, ``_FillValue``/``missing_value``, a mask variable) are NaN in the fields read;
  filling and masks are ``metasr_arch.utils.gridded_mask``;
* output coordinates of an upscaled grid: latitude from the input's first to its last row, both
  included, with ``out_h`` equally spaced rows (an equiangular grid keeps its poles: 73 rows of 2.5
  degrees become 721 rows of 0.25 degrees); longitude likewise from the first to the last column on a
  regional grid, and periodic on a grid that closes the circle (``closes_circle``):
  ``lon0 + j * span / out_w`` with ``span = w * (lon1 - lon0)`` = 360, so the last column does not
  repeat the first;
* the output Dataset with its CF metadata is built by ``output_dataset`` alone (``cf_metadata`` helpers).
"""
import glob
import os
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from basicsr.utils import get_root_logger

from metasr_arch.utils.moved import moved_names
from metasr_arch.utils.options import OptionError

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
    """A path, a glob pattern, or a list of them -> sorted existing paths (OptionError naming ``name``)."""
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths or [])
    found: List[str] = []
    for item in items:
        matches = sorted(glob.glob(str(item))) if any(c in str(item) for c in '*?[') else [str(item)]
        missing = [m for m in matches if not os.path.exists(m)]
        if not matches or missing:
            raise OptionError(f'{name} = {item!r}: no such NetCDF/Zarr file')
        found.extend(matches)
    if not found:
        raise OptionError(f'{name} is empty: give a NetCDF file, a Zarr store, a glob or a list of them')
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
                time_dim: str = 'time', select: Optional[Dict] = None, var_option: str = 'variables',
                select_option: str = 'select') -> np.ndarray:
    """(C, lat, lon) float32 of ``variables`` at time position ``time_index`` (None: no time axis).

    Missing values (NaN, or ``_FillValue`` / ``missing_value``, which xarray decodes to NaN) stay NaN;
    infinities are refused (ValueError).
    """
    planes = []
    for var in variables:
        if var not in ds.data_vars:
            raise OptionError(f'{var_option}: {var!r} is not a variable of the data (it has {sorted(ds.data_vars)})')
        arr = ds[var]
        if select:
            arr = arr.sel(**{k: v for k, v in select.items() if k in arr.dims})
        if time_index is not None and time_dim in arr.dims:
            arr = arr.isel({time_dim: time_index})
        extra = [d for d in arr.dims if d not in (lat, lon)]
        if any(arr.sizes[d] != 1 for d in extra):
            raise OptionError(f'variable {var!r} has extra dimensions {extra} of sizes '
                              f'{[arr.sizes[d] for d in extra]}; choose one value each with '
                              f'{select_option}: {{dim: value}}')
        arr = arr.squeeze(extra, drop=True).transpose(lat, lon)
        planes.append(np.asarray(arr.values, dtype=np.float32))
    out = np.stack(planes)
    if np.isinf(out).any():
        raise ValueError(f'variables {list(variables)} contain infinite values (missing values must be NaN, '
                         '_FillValue or missing_value)')
    return out


def is_north_up(lat_values: np.ndarray) -> bool:
    """True when latitude decreases down the rows (row 0 northernmost)."""
    lat_values = np.asarray(lat_values, dtype=np.float64)
    return lat_values.size < 2 or lat_values[0] >= lat_values[-1]


def closes_circle(lon: np.ndarray, bounds: Optional[np.ndarray] = None) -> bool:
    """True when equally spaced longitudes ``lon`` (w,) cover the whole circle: ``w * step`` is 360 degrees
    (within 0.1 % of a step), or the cell bounds ((w, 2), CF ``bounds``) span 360 degrees."""
    lon = np.asarray(lon, dtype=np.float64)
    if bounds is not None:
        b = np.asarray(bounds, dtype=np.float64)
        span = abs(b[-1].max() - b[0].min()) if lon[-1] >= lon[0] else abs(b[0].max() - b[-1].min())
        step = span / max(lon.size, 1)
        return abs(span - 360.0) <= 1e-3 * step
    if lon.size < 2:
        return False
    step = abs(lon[-1] - lon[0]) / (lon.size - 1)
    return abs(step * lon.size - 360.0) <= 1e-3 * step


def output_coords(lat: np.ndarray, lon: np.ndarray, out_h: int, out_w: int,
                  periodic: Optional[bool] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Latitude and longitude of the upscaled grid (module docstring).

    Args:
        lat: (h,) input row latitudes; lon: (w,) input column longitudes, equally spaced.
        periodic: the longitudes close the circle (default: ``closes_circle(lon)``).

    Returns:
        (out_h,) latitudes from lat[0] to lat[-1] inclusive; (out_w,) longitudes: periodic
        ``lon[0] + j * span / out_w`` with ``span = w * step``, otherwise lon[0] to lon[-1] inclusive.
    """
    lat = np.asarray(lat, dtype=np.float64)
    lon = np.asarray(lon, dtype=np.float64)
    out_lat = np.linspace(lat[0], lat[-1], out_h) if lat.size > 1 else np.full(out_h, lat[0])
    if periodic is None:
        periodic = closes_circle(lon)
    if not periodic:
        out_lon = np.linspace(lon[0], lon[-1], out_w) if lon.size > 1 else np.full(out_w, lon[0])
        return out_lat, out_lon
    step = (lon[-1] - lon[0]) / (lon.size - 1) if lon.size > 1 else 360.0
    out_lon = lon[0] + np.arange(out_w) * (step * lon.size / out_w)
    return out_lat, out_lon


def output_grid(src: 'GriddedSource', out_h: int, out_w: int) -> Tuple[np.ndarray, np.ndarray]:
    """``output_coords`` of ``src`` at (out_h, out_w) with latitude in the file's row order: what
    ``output_dataset`` takes as ``out_lat``, ``out_lon``."""
    out_lat, out_lon = output_coords(src.lat, src.lon, out_h, out_w, src.lon_periodic)
    return (out_lat[::-1] if src.flip else out_lat), out_lon


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


def output_dataset(src: 'GriddedSource', variables: Sequence[str], fields, out_lat: np.ndarray,
                   out_lon: np.ndarray, steps: Optional[Sequence[int]] = None):
    """The output ``xarray.Dataset`` of an upscaled source, with its CF metadata (``cf_metadata``).

    Args:
        src: the input.
        variables: the C variables, in the order of ``fields``' channel axis.
        fields: (T, C, H, W) (or (C, H, W) for a source without a time axis) in physical units, rows in
            the file's order, NaN at missing points: a numpy array or a lazy dask array (nothing is
            computed here, so the result can serve as the template of a Zarr store written by regions).
        out_lat, out_lon: (H,), (W,) output coordinates in the file's row order.
        steps: sample indices of ``src`` that the T time steps are (default: all of them).

    Returns:
        Dataset with the variables on (time, lat, lon), their attributes and encodings (dtype where it
        can hold the values, ``_FillValue``/``missing_value``), the coordinates' attributes, time with its
        units, calendar and bounds, scalar coordinates, the grid-mapping variable, recomputed
        latitude/longitude bounds and the global attributes (docs/gridded.md lists them).
    """
    from metasr_arch.utils import cf_metadata as cf
    xr = require_xarray()
    steps = list(range(len(src))) if steps is None else [int(i) for i in steps]
    ds0 = src.datasets[0]
    has_time = src.time_value(steps[0]) is not None if steps else False
    lat_name, lon_name = src.lat_name, src.lon_name
    coords = {lat_name: cf.coordinate(ds0[lat_name], out_lat),
              lon_name: cf.coordinate(ds0[lon_name], out_lon)}
    dims = (lat_name, lon_name)
    files = [src.datasets[src.samples[i][0]] for i in steps] if has_time else []
    positions = [src.samples[i][1] for i in steps] if has_time else []
    if has_time:
        coords['time'] = cf.time_coordinate(files, positions)
        coords.update(cf.time_aux_coordinates(ds0, variables, files, positions))
        dims = ('time',) + dims
    coords.update(cf.scalar_coordinates(ds0, variables, (lat_name, lon_name, 'time'), src.select))
    data_vars = {var: cf.data_variable(ds0[var], dims, fields[:, c] if has_time else fields[c])
                 for c, var in enumerate(variables)}
    data_vars.update(cf.support_variables(ds0, variables, lat_name, lon_name, out_lat, out_lon, files,
                                          positions))
    return xr.Dataset(data_vars, coords=coords, attrs=cf.global_attrs(ds0.attrs, fields.shape[-2:]))


def write_netcdf(path: str, src: 'GriddedSource', variables: Sequence[str], fields, out_lat: np.ndarray,
                 out_lon: np.ndarray, steps: Optional[Sequence[int]] = None) -> None:
    """``output_dataset(...)`` written as NetCDF at ``path``, atomically (arguments as ``output_dataset``)."""
    save_netcdf(output_dataset(src, variables, fields, out_lat, out_lon, steps), path)


def _label(value) -> str:
    """A time value as a short readable label."""
    if isinstance(value, np.datetime64) or np.issubdtype(np.asarray(value).dtype, np.datetime64):
        return str(np.datetime_as_string(np.asarray(value, dtype='datetime64[ns]'), unit='h'))
    return str(value)


class GriddedSource:
    """Time steps of one or more NetCDF/Zarr files, read lazily, oriented to ``lat_order``.

    Shapes: ``field(i)`` -> (C, H, W) float32 of sample ``i`` in physical units, NaN at missing points
    (the file's fill values, and the points the ``mask`` option marks invalid).

    Args:
        mask: optional {'variable': name, 'file': path (default: the data files), 'valid': 'nonzero'
            or 'zero'}: a mask variable on (lat, lon), or on (time, lat, lon) matched by time label.
        names: how messages name the options (e.g. {'time_slice': '--time', 'variables': '--var'} for
            the inference CLI); default ``<option>`` as given in the YAML.
    """

    def __init__(self, paths, variables: Sequence[str], time_slice=None, lat_name: Optional[str] = None,
                 lon_name: Optional[str] = None, lat_order: str = 'north_up', select: Optional[Dict] = None,
                 option: str = 'dataroot_gt', mask: Optional[Dict] = None, names: Optional[Dict[str, str]] = None):
        self.names = {k: k for k in ('variables', 'time_slice', 'lat_name', 'lon_name', 'lat_order', 'select',
                                     'mask')}
        self.names.update(names or {})
        if lat_order not in LAT_ORDERS:
            raise OptionError(f'{self.names["lat_order"]} must be one of {LAT_ORDERS}, got {lat_order!r}')
        if not variables or isinstance(variables, str):
            raise OptionError(f'{self.names["variables"]} must be a non-empty list of variable names, '
                              f'got {variables!r}')
        self.paths = expand_paths(paths, option)
        self.variables, self.select = list(variables), dict(select or {})
        self._opened: Tuple[int, list] = (os.getpid(), [open_gridded(p) for p in self.paths])
        first = self.datasets[0]
        missing = [v for v in self.variables if v not in first.data_vars]
        if missing:
            raise OptionError(f'{self.names["variables"]}: {missing} are not variables of {self.paths[0]} '
                              f'(it has {sorted(first.data_vars)})')
        self.lat_name = self._coord(first, LAT_NAMES, 'lat_name', lat_name)
        self.lon_name = self._coord(first, LON_NAMES, 'lon_name', lon_name)
        lat = np.asarray(first[self.lat_name].values, dtype=np.float64)
        self.flip = is_north_up(lat) != (lat_order == 'north_up')
        self.lat = lat[::-1] if self.flip else lat
        self.lon = np.asarray(first[self.lon_name].values, dtype=np.float64)
        self.lon_periodic = closes_circle(self.lon, self._bounds(first, self.lon_name))
        self.mask_opt = self._check_mask(mask)
        self.samples = self._select_times(time_slice)

    def _coord(self, ds, names: Sequence[str], key: str, given: Optional[str]) -> str:
        try:
            return find_coord(ds, names, self.names[key], given)
        except KeyError as err:
            raise OptionError(err.args[0]) from None

    @staticmethod
    def _bounds(ds, coord: str) -> Optional[np.ndarray]:
        """(n, 2) CF cell bounds of a 1-D coordinate, when its ``bounds`` attribute names a variable."""
        name = ds[coord].attrs.get('bounds') or ds[coord].encoding.get('bounds')
        if not name or name not in ds.variables or ds[name].ndim != 2 or ds[name].shape[0] != ds[coord].size:
            return None
        return np.asarray(ds[name].values, dtype=np.float64)

    @property
    def datasets(self) -> list:
        """The opened files; reopened in a new process (DataLoader workers), since HDF5 handles are not fork-safe."""
        if self._opened[0] != os.getpid():
            self._opened = (os.getpid(), [open_gridded(p) for p in self.paths])
            self._mask_ds = None
        return self._opened[1]

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state['_opened'] = (-1, [])  # reopened by the process that unpickles it
        state['_mask_ds'] = None
        return state

    # ------------------------------------------------------------------ mask option
    def _check_mask(self, mask: Optional[Dict]) -> Optional[Dict]:
        key = self.names['mask']
        self._mask_ds = None
        if mask is None:
            return None
        if not isinstance(mask, dict) or not mask.get('variable'):
            raise OptionError(f'{key} must be a mapping with a variable (and optional file, valid), got {mask!r}')
        unknown = sorted(set(mask) - {'variable', 'file', 'valid'})
        if unknown:
            raise OptionError(f'{key}: unknown key(s) {unknown}; use variable, file, valid')
        valid = mask.get('valid', 'nonzero')
        if valid not in ('nonzero', 'zero'):
            raise OptionError(f'{key}.valid must be nonzero or zero, got {valid!r}')
        if mask.get('file') is not None:
            expand_paths(mask['file'], f'{key}.file')
        opt = {'variable': mask['variable'], 'file': mask.get('file'), 'valid': valid}
        source = self._mask_source(opt)
        arr = source[opt['variable']] if opt['variable'] in source.variables else None
        if arr is None:
            raise OptionError(f'{key}.variable: {opt["variable"]!r} is not a variable of '
                              f'{opt["file"] or self.paths[0]}')
        if self.lat_name not in arr.dims or self.lon_name not in arr.dims or \
                any(d not in (self.lat_name, self.lon_name, 'time') for d in arr.dims):
            raise OptionError(f'{key}.variable {opt["variable"]!r} must be on ({self.lat_name}, {self.lon_name}) or '
                              f'(time, {self.lat_name}, {self.lon_name}), it is on {arr.dims}')
        if arr.sizes[self.lat_name] != self.lat.size or arr.sizes[self.lon_name] != self.lon.size:
            raise OptionError(f'{key}.variable {opt["variable"]!r} is {arr.sizes[self.lat_name]} x '
                              f'{arr.sizes[self.lon_name]}, the data {self.lat.size} x {self.lon.size}')
        return opt

    def _mask_source(self, opt: Dict):
        if opt.get('file') is None:
            return self.datasets[0]
        if getattr(self, '_mask_ds', None) is None:
            self._mask_ds = open_gridded(expand_paths(opt['file'], f'{self.names["mask"]}.file')[0])
        return self._mask_ds

    def _mask_plane(self, k: int, t: Optional[int]) -> np.ndarray:
        """(lat, lon) bool validity of the ``mask`` option's variable at sample (file k, position t), file rows."""
        opt = self.mask_opt
        src = self.datasets[k] if opt['file'] is None else self._mask_source(opt)
        arr = src[opt['variable']]
        if 'time' in arr.dims:
            if opt['file'] is None and t is not None:
                arr = arr.isel(time=t)
            elif t is not None:
                arr = arr.sel(time=self.datasets[k]['time'].values[t])
            else:
                raise OptionError(f'{self.names["mask"]}.variable has a time axis but the data have none')
        values = np.asarray(arr.transpose(self.lat_name, self.lon_name).values)
        nonzero = np.nan_to_num(values.astype(np.float64), nan=0.0) != 0
        return nonzero if opt['valid'] == 'nonzero' else ~nonzero & np.isfinite(values.astype(np.float64))

    # ------------------------------------------------------------------ time steps
    def _covered(self) -> str:
        first, last = self.datasets[0], self.datasets[-1]
        if 'time' not in first.indexes or 'time' not in last.indexes:
            return 'no time axis'
        return f'{_label(first["time"].values[0])} .. {_label(last["time"].values[-1])}'

    def _time_text(self, time_slice) -> str:
        if self.names['time_slice'].startswith('--') and isinstance(time_slice, (list, tuple)) and \
                len(time_slice) == 2:
            a, b = time_slice
            if isinstance(a, int) and isinstance(b, int) and b == a + 1:
                return f'{self.names["time_slice"]} {a}'
            return f'{self.names["time_slice"]} {a}' if a == b else f'{self.names["time_slice"]} {a} {b}'
        return f'{self.names["time_slice"]} = {time_slice!r}'

    def _select_times(self, time_slice) -> List[Tuple[int, Optional[int]]]:
        """(dataset index, time position) of every selected step, in file order; warns when the range
        is partly outside the data, refuses one that selects nothing."""
        steps: List[Tuple[int, Optional[int]]] = []
        for k, ds in enumerate(self.datasets):
            n = ds.sizes['time'] if 'time' in ds.dims else None
            steps.extend([(k, t) for t in range(n)] if n is not None else [(k, None)])
        if time_slice is None:
            return steps
        text = self._time_text(time_slice)
        if not isinstance(time_slice, (list, tuple)) or len(time_slice) != 2:
            raise OptionError(f'{text}: give [start, stop] (labels or positions)')
        start, stop = time_slice
        if all(v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in time_slice):
            chosen = steps[slice(start, stop)]
            outside = any(v is not None and not -len(steps) <= v <= len(steps) for v in (start, stop))
        else:
            chosen, outside = [], False
            for k, ds in enumerate(self.datasets):
                if 'time' not in ds.indexes:
                    raise OptionError(f'{text}: labels need a time coordinate in {self.paths[k]}')
                index = ds.indexes['time']
                try:
                    pos = index.slice_indexer(start, stop)
                    # a label whose whole period lies before the first (after the last) step is outside
                    if k == 0 and start is not None:
                        outside |= len(range(index.size)[index.slice_indexer(None, start)]) == 0
                    if k == len(self.datasets) - 1 and stop is not None:
                        outside |= len(range(index.size)[index.slice_indexer(stop, None)]) == 0
                except (KeyError, ValueError, TypeError) as err:
                    raise OptionError(f'{text}: not a time label of {self.paths[k]} ({err})') from None
                chosen.extend((k, t) for t in range(ds.sizes['time'])[pos])
        if not chosen:
            raise OptionError(f'{text} selects no time step (the data cover {self._covered()})')
        if outside:
            k0, t0 = chosen[0]
            k1, t1 = chosen[-1]
            msg = (f'{text} is partly outside the data (they cover {self._covered()}): using the {len(chosen)} '
                   f'step(s) from {self._label_at(k0, t0)} to {self._label_at(k1, t1)}')
            warnings.warn(msg, UserWarning, stacklevel=3)
            get_root_logger().warning(msg)
        return chosen

    def _label_at(self, k: int, t: Optional[int]) -> str:
        return 'static' if t is None else _label(self.datasets[k]['time'].values[t])

    def __len__(self) -> int:
        return len(self.samples)

    def time_label(self, i: int) -> str:
        k, t = self.samples[i]
        return self._label_at(k, t)

    def time_value(self, i: int):
        k, t = self.samples[i]
        return None if t is None else self.datasets[k]['time'].values[t]

    def field(self, i: int) -> np.ndarray:
        """(C, H, W) float32 of sample ``i`` in the ``lat_order`` rows, NaN at missing points."""
        k, t = self.samples[i]
        arr = field_array(self.datasets[k], self.variables, self.lat_name, self.lon_name, t, select=self.select,
                          var_option=self.names['variables'], select_option=self.names['select'])
        if self.mask_opt is not None:
            arr[:, ~self._mask_plane(k, t)] = np.nan
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
