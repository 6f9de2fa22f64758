"""Gridded data as scientists have it (issue 21): masked fields end to end, regional grids, CF metadata kept,
latitude weights from the data, errors in the user's words. Values against independent computations."""
import json
import math
import os
import subprocess
import sys

import metasr_arch  # noqa: F401  (before basicsr)

import numpy as np
import pytest
import torch

xr = pytest.importorskip('xarray', reason='the geo extra (pip install -e .[geo]) is not installed')
pytest.importorskip('netCDF4')

from metasr_arch.archs.metardn_arch import MetaRDN  # noqa: E402
from metasr_arch.data.metasr_xarray_dataset import MetaSRXarrayDataset  # noqa: E402
from metasr_arch.infer import main as infer_main  # noqa: E402
from metasr_arch.losses.masked_loss import masked_pixel_loss  # noqa: E402
from metasr_arch.models.metasr_model import MetaSRModel  # noqa: E402
from metasr_arch.utils.gridded_io import GriddedSource, closes_circle, output_coords  # noqa: E402
from metasr_arch.utils.gridded_mask import fill_missing  # noqa: E402

H, W = 12, 16          # a regional grid: 63 .. 30 N (north up), 200 .. 245 E (3-degree cells)
LAT = 63.0 - 3.0 * np.arange(H)
LON = 200.0 + 3.0 * np.arange(W)


def land(times=5, seed=0):
    """(T, H, W) bool, True on land (missing for an ocean field): a static block plus one moving point per step."""
    m = np.zeros((times, H, W), dtype=bool)
    m[:, 3:7, 9:14] = True
    rng = np.random.default_rng(seed)
    for t in range(times):
        m[t, rng.integers(0, H), rng.integers(0, W)] = True
    return m


def ocean_field(times=5, seed=0):
    yy, xx = np.meshgrid(np.linspace(0, 3, H), np.linspace(0, 4, W), indexing='ij')
    t = np.arange(times)[:, None, None]
    rng = np.random.default_rng(seed)
    return 15 + 4 * np.sin(yy + 0.3 * t) * np.cos(xx - 0.2 * t) + 0.1 * rng.normal(size=(times, H, W))


def write_masked(path, wild, times=5, how='mask_variable'):
    """An SST-like file: land points hold ``wild`` values and are marked invalid by a ``lsm`` variable
    (how='mask_variable') or are NaN, written with _FillValue -999 (how='fill')."""
    sst = ocean_field(times)
    m = land(times)
    sst[m] = wild
    coords = {'time': np.datetime64('2001-01-01') + np.arange(times) * np.timedelta64(31, 'D'),
              'lat': ('lat', LAT, {'units': 'degrees_north', 'standard_name': 'latitude'}),
              'lon': ('lon', LON, {'units': 'degrees_east', 'standard_name': 'longitude'})}
    data = {'sst': (('time', 'lat', 'lon'), sst, {'units': 'degC', 'long_name': 'sea surface temperature'})}
    encoding = {}
    if how == 'mask_variable':
        data['lsm'] = (('time', 'lat', 'lon'), m.astype(np.int8))
    else:
        data['sst'][1][m] = np.nan
        encoding = {'sst': {'_FillValue': -999.0, 'dtype': 'float32'}}
    xr.Dataset(data, coords=coords).to_netcdf(path, encoding=encoding)
    return path


def ds_opt(path, phase='train', **extra):
    opt = {'name': phase, 'phase': phase, 'dataroot_gt': str(path), 'variables': ['sst'],
           'normalization': {'type': 'mean_std', 'mean': [15.0], 'std': [3.0]}}
    return {**opt, **extra}


MASK = {'variable': 'lsm', 'valid': 'zero'}


def model_opts(exp, periodic=False):
    return {
        'name': 'masked', 'model_type': 'MetaSRModel', 'num_gpu': 0, 'manual_seed': 1, 'is_train': True,
        'dist': False, 'rank': 0, 'world_size': 1, 'bicubic_skip': True,
        'network_g': {'type': 'MetaRDN', 'num_in_ch': 1, 'num_out_ch': 1, 'num_feat': 8, 'num_block': 1,
                      'num_layer': 2, 'num_grow_ch': 4, 'hidden_channels': 8, 'img_range': 1.0, 'mean': 0.0,
                      'periodic_w': periodic},
        'path': {'pretrain_network_g': None, 'experiments_root': str(exp), 'models': str(exp / 'models'),
                 'training_states': str(exp / 'ts'), 'visualization': str(exp / 'vis')},
        'train': {'lr_patch_size': [6, 8], 'out_size': [H, W], 'optim_g': {'type': 'Adam', 'lr': 1e-3},
                  'scheduler': {'type': 'MultiStepLR', 'milestones': [100], 'gamma': 0.5}, 'total_iter': 2,
                  'pixel_opt': {'type': 'MSELoss', 'loss_weight': 1.0}},
        'val': {'lr_size': [6, 8], 'save_img': False, 'metrics': {
            'wrmse': {'type': 'calculate_weighted_rmse'}, 'wbias': {'type': 'calculate_weighted_bias'},
            'psnr': {'type': 'calculate_psnr', 'crop_border': 0}}},
    }


def test_wild_values_at_masked_points_change_nothing_at_valid_points(tmp_path):
    """Two files that differ only at land points (1e6 vs -3e4): same items, training loss and step, validation
    metrics (equal to an independent valid-points-only formula) and inference output; the output is NaN
    exactly where the nearest input point is land."""
    files = [write_masked(tmp_path / f'sst{k}.nc', wild) for k, wild in enumerate((1e6, -3e4))]
    sets = [MetaSRXarrayDataset(ds_opt(f, mask=MASK)) for f in files]
    for i in range(len(sets[0])):
        a, b = sets[0][i], sets[1][i]
        assert torch.equal(a['gt'], b['gt']) and torch.equal(a['mask'], b['mask'])
        np.testing.assert_array_equal(a['mask'][0].numpy() == 0, land()[i])
        assert a['gt'].abs().max() < 5  # the wild values never reach the network's input
    # training: same loss and the same weights after one step
    losses, weights = [], []
    for k, ds in enumerate(sets):
        torch.manual_seed(0)
        (tmp_path / f'e{k}' / 'models').mkdir(parents=True)
        model = MetaSRModel(model_opts(tmp_path / f'e{k}'))
        model.feed_data(torch.utils.data.default_collate([ds[0], ds[1]]))
        model.optimize_parameters(1)
        losses.append(model.log_dict['l_pix'])
        weights.append(torch.cat([p.detach().flatten() for p in model.net_g.parameters()]))
        assert model.mask is not None and not bool(model.mask.all())
        # the loss is the mean squared error over the valid points only (self.output: before the step)
        want = ((model.output.detach() - model.gt) ** 2)[model.mask].mean().item()
        assert losses[-1] == pytest.approx(want, rel=1e-5)
    assert losses[0] == losses[1]
    assert torch.equal(weights[0], weights[1])
    # validation: identical records, equal to the independent formula on valid points
    records = []
    for k, f in enumerate(files):
        exp = tmp_path / f'v{k}'
        (exp / 'models').mkdir(parents=True)
        torch.manual_seed(0)
        model = MetaSRModel(model_opts(exp))
        val = MetaSRXarrayDataset(ds_opt(f, 'val', mask=MASK))
        model.validation(torch.utils.data.DataLoader(val, batch_size=1), 2, None, False)
        records.append(json.loads((exp / 'metrics.jsonl').read_text().splitlines()[-1]))
        assert 'masked' in (exp / 'psnr_table.md').read_text()
    assert records[0] == records[1]
    assert records[0]['valid_fraction'] == pytest.approx(1 - land().mean(), rel=1e-9)
    # independent: bicubic's weighted RMSE at the valid points, cell areas of the data's latitudes (3-degree
    # cells around each row), written out with loops, averaged over the validation steps
    from metasr_arch.utils.resize import imresize_to
    area = [abs(math.sin(math.radians(lat + 1.5)) - math.sin(math.radians(lat - 1.5))) for lat in LAT]
    scores = []
    for k in range(len(val)):
        g = val[k]['gt'][None]
        bic = imresize_to(model.synthesize_lq(g, (2, 2), (6, 8), (H, W), phase='val')[0], (H, W))[0, 0]
        bic = bic.numpy().astype(np.float64) * 3 + 15
        truth, sea = ocean_field()[k], ~land()[k]
        num = sum(area[i] * (bic[i, j] - truth[i, j]) ** 2 for i in range(H) for j in range(W) if sea[i, j])
        den = sum(area[i] for i in range(H) for j in range(W) if sea[i, j])
        scores.append(math.sqrt(num / den))
    assert records[0]['wrmse_bicubic'] == pytest.approx(np.mean(scores), rel=1e-4)
    # inference: same output; NaN where the nearest input point is land, by coordinate distance
    ckpt = tmp_path / 'net.pth'
    torch.save({'params': model.net_g.state_dict(), 'network_opt': model_opts(tmp_path)['network_g'],
                'normalization': {'type': 'mean_std', 'variables': ['sst'], 'mean': [15.0], 'std': [3.0]}}, ckpt)
    outs = []
    for k in range(2):
        nan_file = write_masked(tmp_path / f'fill{k}.nc', (1e6, -3e4)[k], how='fill')
        assert infer_main([str(nan_file), '--ckpt', str(ckpt), '--size', '26x34', '-o', str(tmp_path / f'o{k}' / f'fill{k}_26x34.nc'),
                           '--quiet', '--device', 'cpu']) == 0
        outs.append(xr.open_dataset(tmp_path / f'o{k}' / f'fill{k}_26x34.nc'))
    np.testing.assert_array_equal(outs[0]['sst'].values, outs[1]['sst'].values)
    out_lat, out_lon = outs[0]['lat'].values, outs[0]['lon'].values
    for t in range(5):
        want = np.zeros((26, 34), dtype=bool)
        for i in range(26):
            for j in range(34):
                want[i, j] = land()[t][np.argmin(np.abs(LAT - out_lat[i])), np.argmin(np.abs(LON - out_lon[j]))]
        np.testing.assert_array_equal(np.isnan(outs[0]['sst'].values[t]), want)
    raw = xr.open_dataset(tmp_path / 'o0' / 'fill0_26x34.nc', mask_and_scale=False)
    assert raw['sst'].attrs['_FillValue'] == -999.0 and raw['sst'].dtype == np.float32


def test_masked_loss_is_the_mean_over_valid_points():
    torch.manual_seed(0)
    out, gt = torch.randn(2, 3, 5, 7, requires_grad=True), torch.randn(2, 3, 5, 7)
    mask = torch.rand(2, 3, 5, 7) > 0.4
    wild = out.detach().clone()
    wild[~mask] = float('inf')
    from basicsr.losses.basic_loss import CharbonnierLoss, L1Loss, MSELoss
    for loss, f in ((L1Loss(), lambda d: d.abs()), (MSELoss(), lambda d: d ** 2),
                    (CharbonnierLoss(eps=1e-3), lambda d: torch.sqrt(d ** 2 + 1e-3))):
        want = f(out.detach() - gt)[mask].mean()
        assert masked_pixel_loss(loss, out, gt, mask).item() == pytest.approx(want.item(), rel=1e-6)
        gt_wild = torch.where(mask, gt, torch.full_like(gt, 1e30))
        assert masked_pixel_loss(loss, wild, gt_wild, mask).item() == pytest.approx(want.item(), rel=1e-6)
    masked_pixel_loss(MSELoss(), out, gt, mask).backward()
    assert (out.grad[~mask] == 0).all() and (out.grad[mask] != 0).any()


def test_fill_nearest_copies_the_nearest_valid_point():
    x = np.arange(20, dtype=np.float32).reshape(1, 4, 5)
    valid = np.ones_like(x, dtype=bool)
    valid[0, 1:3, 1:3] = False
    got = fill_missing(np.where(valid, x, np.nan), valid, 'nearest')
    vi = np.argwhere(valid[0])
    for i, j in np.argwhere(~valid[0]):
        d = ((vi - [i, j]) ** 2).sum(1)
        assert got[0, i, j] in {x[0, a, b] for a, b in vi[d == d.min()]}
    np.testing.assert_array_equal(got[valid], x[valid])
    assert (fill_missing(np.where(valid, x, np.nan), valid, 'zero')[~valid] == 0).all()


def test_crops_without_a_valid_point_are_drawn_again(tmp_path):
    f = write_masked(tmp_path / 'sst.nc', 7.0)
    ds = MetaSRXarrayDataset(ds_opt(f, mask={'variable': 'lsm', 'valid': 'zero'}, gt_size=[3, 4]))
    ds.gt.field = lambda i, _f=ds.gt.field: np.where(np.arange(W) < 12, np.nan, _f(i))  # 4 valid columns
    import random
    random.seed(0)
    items = [ds[i % 5] for i in range(20)]
    assert all(it['mask'].sum() > 0 for it in items) and ds.resampled_crops > 0
    assert not any(it['lon_periodic'] for it in items)


def test_regional_longitudes_keep_both_ends_and_periodic_is_detected():
    lon = 225.0 + 3.0 * np.arange(31)  # 225 .. 315, the example
    assert not closes_circle(lon)
    lat_out, lon_out = output_coords(np.array([10.0, 0.0]), lon, 5, 121)
    np.testing.assert_allclose(lon_out, [225.0 + j * (315.0 - 225.0) / 120 for j in range(121)], rtol=1e-12)
    assert lon_out[0] == 225.0 and lon_out[-1] == pytest.approx(315.0, abs=1e-9)
    glob = np.arange(144) * 2.5
    assert closes_circle(glob) and closes_circle(glob - 180.0)
    _, g = output_coords(np.array([0.0, 1.0]), glob, 2, 288)
    np.testing.assert_allclose(g, np.arange(288) * 1.25, rtol=1e-12)
    # bounds say it when the centres alone could not: 30 columns of 5 degrees from 117.5 (the eofs SST grid)
    sst_lon = 117.5 + 5.0 * np.arange(30)
    assert not closes_circle(sst_lon, np.stack([sst_lon - 2.5, sst_lon + 2.5], 1))
    assert closes_circle(np.arange(72) * 5.0, np.stack([np.arange(72) * 5.0 - 2.5, np.arange(72) * 5.0 + 2.5], 1))


def test_periodic_network_on_a_regional_grid_is_a_named_error(tmp_path, capsys):
    f = write_masked(tmp_path / 'r.nc', 0.0, how='fill')
    net_opt = {'type': 'MetaRDN', 'num_in_ch': 1, 'num_out_ch': 1, 'num_feat': 8, 'num_block': 1, 'num_layer': 2,
               'num_grow_ch': 4, 'hidden_channels': 8, 'img_range': 1.0, 'mean': 0.0, 'periodic_w': True}
    net = MetaRDN(**{k: v for k, v in net_opt.items() if k != 'type'})
    ckpt = tmp_path / 'p.pth'
    torch.save({'params': net.state_dict(), 'network_opt': net_opt}, ckpt)
    assert infer_main([str(f), '--ckpt', str(ckpt), '--scale', '2', '--var', 'sst', '-o', str(tmp_path / 'o'),
                       '--quiet', '--device', 'cpu']) == 1
    err = capsys.readouterr().err
    assert 'periodic_w' in err and 'regional grid' in err and '200 .. 245' in err
    # training: the batch says its longitudes do not close the circle
    (tmp_path / 'e' / 'models').mkdir(parents=True)
    model = MetaSRModel(model_opts(tmp_path / 'e', periodic=True))
    ds = MetaSRXarrayDataset(ds_opt(f))
    from metasr_arch.utils.options import OptionError
    with pytest.raises(OptionError, match='periodic_w'):
        model.feed_data(torch.utils.data.default_collate([ds[0]]))


def test_time_range_partly_outside_warns_and_cli_names_its_flags(tmp_path, capsys):
    f = write_masked(tmp_path / 't.nc', 0.0, how='fill')  # 2001-01-01 .. 2001-05-05, every 31 days
    with pytest.warns(UserWarning, match=r"time_slice = \['2000-06', '2001-02'\] is partly outside the data "
                                         r"\(they cover 2001-01-01T00 .. 2001-05-05T00\): using the 2 step"):
        src = GriddedSource(str(f), ['sst'], ['2000-06', '2001-02'])
    assert len(src) == 2
    with pytest.warns(UserWarning, match='partly outside'):
        assert len(GriddedSource(str(f), ['sst'], [3, 9])) == 2
    net_opt = {'type': 'MetaRDN', 'num_in_ch': 1, 'num_out_ch': 1, 'num_feat': 8, 'num_block': 1, 'num_layer': 2,
               'num_grow_ch': 4, 'hidden_channels': 8, 'img_range': 1.0, 'mean': 0.0}
    ckpt = tmp_path / 'n.pth'
    torch.save({'params': MetaRDN(**{k: v for k, v in net_opt.items() if k != 'type'}).state_dict(),
                'network_opt': net_opt}, ckpt)
    assert infer_main([str(f), '--ckpt', str(ckpt), '--scale', '2', '--var', 'sst', '--time', '1990-01', '1991-12',
                       '-o', str(tmp_path / 'o'), '--quiet', '--device', 'cpu']) == 1
    err = capsys.readouterr().err
    assert '--time 1990-01 1991-12 selects no time step' in err and 'time_slice' not in err
    assert '2001-01-01T00 .. 2001-05-05T00' in err
    assert infer_main([str(f), '--ckpt', str(ckpt), '--scale', '2', '--var', 'nope', '-o', str(tmp_path / 'o'),
                       '--quiet', '--device', 'cpu']) == 1
    assert "--var: ['nope']" in capsys.readouterr().err


def test_dataset_option_error_exits_2_without_traceback(tmp_path):
    f = write_masked(tmp_path / 'e.nc', 0.0)
    import yaml
    opt = {'name': 'bad', 'model_type': 'MetaSRModel', 'num_gpu': 0, 'manual_seed': 0,
           'datasets': {'train': {**ds_opt(f), 'type': 'MetaSRXarrayDataset', 'name': 'tr', 'variables': ['sts'],
                                  'batch_size_per_gpu': 1, 'num_worker_per_gpu': 0, 'dataset_enlarge_ratio': 1}},
           'network_g': model_opts(tmp_path)['network_g'], 'path': {'pretrain_network_g': None},
           'train': {**model_opts(tmp_path)['train'], 'total_iter': 1},
           'logger': {'print_freq': 1, 'save_checkpoint_freq': 1}}  # complete: the whole-file check passes
    (tmp_path / 'bad.yml').write_text(yaml.safe_dump(opt))
    env = {**os.environ, 'METASR_ROOT': str(tmp_path), 'PYTHONPATH': os.path.dirname(os.path.dirname(__file__))}
    run = subprocess.run([sys.executable, '-m', 'metasr_arch.train', '-opt', str(tmp_path / 'bad.yml')],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 2, run.stderr[-2000:]
    assert "error: datasets.tr.variables: ['sts'] are not variables of" in run.stderr
    assert 'Traceback' not in run.stderr


def write_cf_file(path):
    """A regional-model-like file: 360-day calendar with time bounds, a rotated-pole grid mapping, a scalar
    height coordinate, lat/lon bounds, one variable packed in int16 and one float32 with missing_value."""
    cftime = pytest.importorskip('cftime')
    times = [cftime.Datetime360Day(2050, m, 16) for m in (1, 2, 3)]
    tb = np.array([[cftime.Datetime360Day(2050, m, 1), cftime.Datetime360Day(2050, m + 1, 1)] for m in (1, 2, 3)])
    lat = 40.0 + 2.0 * np.arange(6)
    lon = -10.0 + 2.0 * np.arange(8)
    rng = np.random.default_rng(3)
    tas = 280 + 5 * rng.random((3, 6, 8))
    pr = rng.random((3, 6, 8)).astype(np.float32)
    pr[:, 0, 0] = np.nan
    ds = xr.Dataset(
        {'tas': (('time', 'lat', 'lon'), tas, {'units': 'K', 'standard_name': 'air_temperature',
                                               'long_name': 'Near-surface air temperature', 'grid_mapping': 'crs',
                                               'cell_methods': 'time: mean'}),
         'pr': (('time', 'lat', 'lon'), pr, {'units': 'kg m-2 s-1', 'standard_name': 'precipitation_flux',
                                             'grid_mapping': 'crs'}),
         'crs': ((), np.int32(0), {'grid_mapping_name': 'rotated_latitude_longitude',
                                   'grid_north_pole_latitude': 39.25, 'grid_north_pole_longitude': -162.0}),
         'time_bnds': (('time', 'bnds'), tb),
         'lat_bnds': (('lat', 'bnds'), np.stack([lat - 1, lat + 1], 1)),
         'lon_bnds': (('lon', 'bnds'), np.stack([lon - 1, lon + 1], 1))},
        coords={'time': ('time', times, {'axis': 'T', 'bounds': 'time_bnds', 'standard_name': 'time'}),
                'lat': ('lat', lat, {'units': 'degrees_north', 'standard_name': 'latitude', 'axis': 'Y',
                                     'bounds': 'lat_bnds'}),
                'lon': ('lon', lon, {'units': 'degrees_east', 'standard_name': 'longitude', 'axis': 'X',
                                     'bounds': 'lon_bnds'}),
                'height': ((), 2.0, {'units': 'm', 'standard_name': 'height', 'positive': 'up', 'axis': 'Z'})},
        attrs={'Conventions': 'CF-1.8', 'institution': 'test', 'history': 'made by the test'})
    enc = {'time': {'units': 'days since 2050-01-01', 'calendar': '360_day', 'dtype': 'float64'},
           'time_bnds': {'units': 'days since 2050-01-01', 'calendar': '360_day'},
           'tas': {'dtype': 'int16', 'scale_factor': 0.01, 'add_offset': 280.0, '_FillValue': np.int16(-32767)},
           'pr': {'dtype': 'float32', 'missing_value': np.float32(1e20)}}
    ds.to_netcdf(path, encoding=enc)
    return path


def test_cf_round_trip_keeps_the_documented_metadata(tmp_path):
    """The attributes docs/gridded.md lists survive upscaling; times decode to the same 360-day dates; bounds are
    recomputed as independent midpoints; cf_xarray finds the axes, coordinates, bounds and grid mapping."""
    cf_xarray = pytest.importorskip('cf_xarray')  # noqa: F841 (registers the .cf accessor)
    src_path = write_cf_file(tmp_path / 'rcm.nc')
    net_opt = {'type': 'MetaRDN', 'num_in_ch': 2, 'num_out_ch': 2, 'num_feat': 8, 'num_block': 1, 'num_layer': 2,
               'num_grow_ch': 4, 'hidden_channels': 8, 'img_range': 1.0, 'mean': 0.0}
    torch.manual_seed(0)
    net = MetaRDN(**{k: v for k, v in net_opt.items() if k != 'type'})
    ckpt = tmp_path / 'n.pth'
    torch.save({'params': net.state_dict(), 'network_opt': net_opt, 'normalization': {
        'type': 'mean_std', 'variables': ['tas', 'pr'], 'mean': [282.5, 0.5], 'std': [1.5, 0.3]}}, ckpt)
    assert infer_main([str(src_path), '--ckpt', str(ckpt), '--size', '11x15', '-o', str(tmp_path / 'o' / 'rcm_11x15.nc'),
                       '--quiet', '--device', 'cpu']) == 0
    src = xr.open_dataset(src_path)
    out = xr.open_dataset(tmp_path / 'o' / 'rcm_11x15.nc')
    for v in ('tas', 'pr', 'crs', 'lat', 'lon', 'time', 'height'):
        assert out[v].attrs == src[v].attrs, v
    assert {k: v for k, v in out.attrs.items() if k != 'history'} == \
        {k: v for k, v in src.attrs.items() if k != 'history'}
    assert out.attrs['history'].endswith('\nmade by the test') and 'metasr_arch' in out.attrs['history']
    # time: same 360-day dates, calendar and units; the bounds of the chosen steps
    assert list(out['time'].values) == list(src['time'].values)
    assert out['time'].encoding['calendar'] == '360_day' and out['time'].encoding['units'] == 'days since 2050-01-01'
    assert (out['time_bnds'].values == src['time_bnds'].values).all()
    # storage: tas keeps its int16 packing and fill value (the values fit), pr its float32 and missing_value
    raw = xr.open_dataset(tmp_path / 'o' / 'rcm_11x15.nc', decode_cf=False)
    assert raw['tas'].dtype == np.int16 and raw['tas'].attrs['scale_factor'] == 0.01
    assert raw['tas'].attrs['_FillValue'] == -32767 and raw['tas'].attrs['add_offset'] == 280.0
    assert raw['pr'].dtype == np.float32 and raw['pr'].attrs['missing_value'] == np.float32(1e20)
    assert raw['pr'].attrs['_FillValue'] == np.float32(1e20) and raw['pr'].values[0, 0, 0] == np.float32(1e20)
    assert np.isnan(out['pr'].values[:, 0, 0]).all() and np.isfinite(out['tas'].values).all()
    assert '_FillValue' not in raw['lat'].attrs and '_FillValue' not in raw['time'].attrs
    # regional grid: both ends kept; bounds are the midpoints between the new centres, half a step at the ends
    lat = 40.0 + np.arange(11) * 1.0
    lon = -10.0 + np.arange(15) * 1.0
    np.testing.assert_allclose(out['lat'].values, lat, rtol=1e-12)
    np.testing.assert_allclose(out['lon'].values, lon, rtol=1e-12)
    np.testing.assert_allclose(out['lat_bnds'].values, np.stack([lat - 0.5, lat + 0.5], 1), rtol=1e-12)
    np.testing.assert_allclose(out['lon_bnds'].values, np.stack([lon - 0.5, lon + 0.5], 1), rtol=1e-12)
    assert float(out['height']) == 2.0 and out['tas'].encoding['coordinates'] == 'height'
    # CF views of the output, as cf_xarray reads them
    assert out.cf['latitude'].name == 'lat' and out.cf['longitude'].name == 'lon' and out.cf['T'].name == 'time'
    assert out.cf.bounds == {'lat': ['lat_bnds'], 'latitude': ['lat_bnds'], 'Y': ['lat_bnds'], 'lon': ['lon_bnds'],
                             'longitude': ['lon_bnds'], 'X': ['lon_bnds'], 'time': ['time_bnds'], 'T': ['time_bnds']}
    assert out.cf.grid_mapping_names == {'rotated_latitude_longitude': ['crs']}
    assert out.cf['air_temperature'].name == 'tas' and out.cf['height'].name == 'height'


def test_static_mask_from_another_file_and_empty_fields_skipped_in_validation(tmp_path, caplog, capfd):
    """A (lat, lon) land-sea mask in its own file masks every step alike; a step with no valid point at all is
    not scored, and the log says so."""
    f = tmp_path / 'sea.nc'
    sst = ocean_field()
    sst[2] = np.nan  # one winter entirely missing
    xr.Dataset({'sst': (('time', 'lat', 'lon'), sst)},
               coords={'time': np.datetime64('2001-01-01') + np.arange(5) * np.timedelta64(31, 'D'),
                       'lat': LAT, 'lon': LON}).to_netcdf(f)
    lsm = np.zeros((H, W), dtype=np.float32)
    lsm[:4, :5] = 1.0
    xr.Dataset({'lsm': (('lat', 'lon'), lsm)}, coords={'lat': LAT, 'lon': LON}).to_netcdf(tmp_path / 'lsm.nc')
    mask = {'variable': 'lsm', 'file': str(tmp_path / 'lsm.nc'), 'valid': 'zero'}
    val = MetaSRXarrayDataset(ds_opt(f, 'val', mask=mask))
    for i in (0, 4):
        np.testing.assert_array_equal(val[i]['mask'][0].numpy(), (lsm == 0).astype(np.float32))
    assert val[2]['mask'].sum() == 0
    (tmp_path / 'e' / 'models').mkdir(parents=True)
    model = MetaSRModel(model_opts(tmp_path / 'e'))
    model.validation(torch.utils.data.DataLoader(val, batch_size=1), 2, None, False)
    record = json.loads((tmp_path / 'e' / 'metrics.jsonl').read_text().splitlines()[-1])
    assert record['valid_fraction'] == pytest.approx(1 - lsm.mean(), rel=1e-9)  # mean over the 4 scored steps
    assert '1 field(s) had no valid point' in caplog.text + capfd.readouterr().err


def test_packed_storage_falls_back_to_float_when_values_do_not_fit():
    from metasr_arch.utils.cf_metadata import data_variable
    src = xr.DataArray(np.zeros((2, 3)), dims=('lat', 'lon'), attrs={'units': 'K', 'actual_range': [0, 1]})
    src.encoding = {'dtype': np.dtype('int16'), 'scale_factor': 0.01, 'add_offset': 280.0,
                    '_FillValue': np.int16(-32767), 'source': 'x.nc', 'chunksizes': (1, 3)}
    fits = data_variable(src, ('lat', 'lon'), np.full((2, 3), 290.0))
    assert fits.encoding == {'dtype': np.dtype('int16'), 'scale_factor': 0.01, 'add_offset': 280.0,
                             '_FillValue': -32767} and fits.attrs == {'units': 'K'}
    wide = data_variable(src, ('lat', 'lon'), np.full((2, 3), 700.0))  # (700 - 280) / 0.01 > 32767
    assert wide.encoding == {'dtype': np.dtype('float32'), '_FillValue': -32767}


def test_training_fill_is_recorded_and_followed_by_inference(tmp_path):
    """fill: zero is recorded with the statistics; inference then fills with zeros, as prepare_step does."""
    from metasr_arch.inference.gridded import finish_step, prepare_step, upscale_gridded
    f = write_masked(tmp_path / 's.nc', 0.0, how='fill')
    opt = ds_opt(f, fill='zero')
    norm = MetaSRXarrayDataset.normalization_for(opt)
    assert norm['fill'] == 'zero' and 'fill' not in MetaSRXarrayDataset.normalization_for(ds_opt(f))
    assert MetaSRXarrayDataset(opt)[0]['gt'][0][land()[0]].abs().max() == 0  # missing points hold 0 (north up)
    torch.manual_seed(0)
    net = MetaRDN(num_in_ch=1, num_out_ch=1, num_feat=8, num_block=1, num_layer=2, num_grow_ch=4, hidden_channels=8,
                  img_range=1.0, mean=0.0).eval()
    net.metasr_normalization = {**norm, 'variables': ['sst']}
    upscale_gridded(net, str(f), ('size', (20, 30)), 'cpu', str(tmp_path / 'z.nc'), time_slice=[1, 2])
    src = GriddedSource(str(f), ['sst'], [1, 2])
    x, valid = prepare_step(src, 0, np.array([15.0]), np.array([3.0]), 'zero')
    with torch.no_grad():
        y = net(torch.from_numpy(x)[None], out_size=(20, 30))[0].numpy().astype(np.float64) * 3 + 15
    want = finish_step(y, valid, src)
    np.testing.assert_allclose(xr.open_dataset(tmp_path / 'z.nc')['sst'].values[0], want[0], rtol=1e-5, atol=1e-5)
    x_near, _ = prepare_step(src, 0, np.array([15.0]), np.array([3.0]), 'nearest')
    assert np.abs(x_near - x).max() > 0.1  # the two fills differ, so the comparison above can fail


def test_output_dataset_takes_lazy_fields_as_a_zarr_template(tmp_path):
    """output_dataset with a dask array computes nothing; the Dataset is a Zarr template that regions fill."""
    da = pytest.importorskip('dask.array')
    pytest.importorskip('zarr')
    from metasr_arch.utils.gridded_io import output_dataset, output_grid
    src = GriddedSource(str(write_cf_file(tmp_path / 'rcm.nc')), ['tas', 'pr'])
    lat, lon = output_grid(src, 11, 15)
    ds = output_dataset(src, ['tas', 'pr'], da.zeros((3, 2, 11, 15), chunks=(1, 2, 11, 15), dtype='float32'), lat, lon)
    assert isinstance(ds['tas'].data, da.Array) and ds['tas'].dims == ('time', 'lat', 'lon')
    ds.to_zarr(tmp_path / 'o.zarr', compute=False, mode='w')
    region = ds[['tas', 'pr']].isel(time=slice(1, 2)).drop_vars(['lat', 'lon', 'height'])
    region['tas'] = region['tas'].copy(data=np.full(region['tas'].shape, 290.5, np.float32))
    region['pr'] = region['pr'].copy(data=np.full(region['pr'].shape, np.nan, np.float32))
    region.to_zarr(tmp_path / 'o.zarr', region={'time': slice(1, 2)})
    back = xr.open_zarr(tmp_path / 'o.zarr')
    np.testing.assert_allclose(back['tas'].values[1], 290.5, rtol=1e-6)
    assert np.isnan(back['pr'].values[1]).all() and np.isnan(back['tas'].values[0]).all()  # unwritten: missing
    assert back['time'].encoding['calendar'] == '360_day' and back['tas'].attrs['grid_mapping'] == 'crs'
