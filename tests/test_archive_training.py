"""Training side at archive scale: normalisation statistics from a subsample of the training slice
(MetaSRXarrayDataset ``normalization.subsample``) and the data-loading benchmark on a chunked Zarr store."""
import metasr_arch  # noqa: F401  (before basicsr)

import numpy as np
import pytest

xr = pytest.importorskip('xarray', reason='the geo extra (pip install -e .[geo]) is not installed')

from metasr_arch.data import metasr_xarray_dataset as mxd  # noqa: E402
from test_archive import make_input  # noqa: E402
from test_tools import load_script  # noqa: E402


def test_statistics_from_an_evenly_spaced_subsample(tmp_path):
    ds = make_input(tmp_path / 'in.nc', 50)
    opt = {'name': 'train', 'phase': 'train', 'dataroot_gt': str(tmp_path / 'in.nc'), 'variables': ['u', 'v'],
           'normalization': {'type': 'mean_std', 'subsample': 6}}
    stats = mxd.MetaSRXarrayDataset.normalization_for(opt)
    steps = [0, 10, 20, 29, 39, 49]  # linspace(0, 49, 6) rounded
    assert mxd.subsample_steps(50, 6) == steps
    for c, v in enumerate(['u', 'v']):
        values = ds[v].values[steps].astype(np.float64)
        np.testing.assert_allclose(stats['mean'][c], values.mean(), rtol=1e-9)
        np.testing.assert_allclose(stats['std'][c], values.std(), rtol=1e-7)
    full = mxd.MetaSRXarrayDataset.normalization_for(dict(opt, normalization={'type': 'mean_std'}))
    np.testing.assert_allclose(full['mean'][0], ds['u'].values.astype(np.float64).mean(), rtol=1e-9)
    assert full['mean'][0] != stats['mean'][0]
    assert mxd.subsample_steps(5, 10) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match=r'normalization.subsample must be a number of time steps >= 1'):
        mxd.MetaSRXarrayDataset.normalization_for(dict(opt, normalization={'type': 'mean_std', 'subsample': 0}))


def test_data_loading_benchmark_reads_the_chunked_store(tmp_path):
    bench = load_script('benchmark_data_loading.py')
    store = tmp_path / 's.zarr'
    bench.write_store(store, 12, 8, 16, time_chunk=5)
    out = xr.open_zarr(store)
    assert out['t2m'].encoding['chunks'] == (5, 8, 16) and bool(out['v10'].notnull().all())
    assert np.abs(out['u10'].values).max() > 0.5  # written, not the zero template
    for workers in (0, 2):
        assert bench.samples_per_second(store, workers, batch=3, batches=3) > 0
