"""Archive-scale gridded inference (metasr_arch.inference.archive, dask_runner, compiled): streamed Zarr
output against an independent reference, batching, resuming after kill -9, refusals of a changed run,
bounded peak memory, Dask workers, the compiled path, progress lines."""
import importlib.util
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import metasr_arch  # noqa: F401  (before basicsr)

import numpy as np
import pytest
import torch

xr = pytest.importorskip('xarray', reason='the geo extra (pip install -e .[geo]) is not installed')
pytest.importorskip('zarr')

from metasr_arch.archs.metardn_arch import MetaRDN  # noqa: E402
from metasr_arch.infer import main  # noqa: E402
from metasr_arch.inference import archive  # noqa: E402
from metasr_arch.inference.archive import ArchiveJob, NetworkSpec, Progress, upscale_archive  # noqa: E402
from metasr_arch.inference.dask_runner import upscale_on_dask  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NET_OPT = {'type': 'MetaRDN', 'num_in_ch': 2, 'num_out_ch': 2, 'num_feat': 8, 'num_block': 1, 'num_layer': 2,
           'num_grow_ch': 4, 'hidden_channels': 8, 'img_range': 1.0, 'mean': 0.0, 'periodic_w': True}
NORM = {'type': 'mean_std', 'variables': ['u', 'v'], 'mean': [10.0, 0.0], 'std': [12.0, 3.0]}


def make_ckpt(path, seed=0):
    torch.manual_seed(seed)
    net = MetaRDN(**{k: v for k, v in NET_OPT.items() if k != 'type'}).eval()
    torch.save({'params': net.state_dict(), 'network_opt': NET_OPT, 'normalization': NORM}, path)
    return net


def make_input(path, steps, h=8, w=16, seed=0):
    """South-up (latitude ascending) fields with attributes, so row order and metadata are checked."""
    import pandas as pd
    rng = np.random.default_rng(seed)
    ds = xr.Dataset({'u': (('time', 'latitude', 'longitude'), rng.normal(10, 12, (steps, h, w)).astype('f4'),
                           {'units': 'm s-1', 'long_name': 'eastward wind'}),
                     'v': (('time', 'latitude', 'longitude'), rng.normal(0, 3, (steps, h, w)).astype('f4'))},
                    coords={'time': pd.date_range('2000-01-01', periods=steps, freq='h'),
                            'latitude': ('latitude', np.linspace(-90, 90, h), {'units': 'degrees_north'}),
                            'longitude': ('longitude', np.arange(w) * 360.0 / w, {'units': 'degrees_east'})},
                    attrs={'title': 'test archive'})
    ds.to_netcdf(path)
    return ds


@pytest.fixture()
def setup(tmp_path):
    net = make_ckpt(tmp_path / 'net.pth')
    ds = make_input(tmp_path / 'in.nc', 7)
    return tmp_path, net, ds


def reference(net, ds, out_size):
    """Independent: normalise each step by hand, flip to north-up, run the network, back to physical units."""
    mean, std = np.array(NORM['mean'])[:, None, None], np.array(NORM['std'])[:, None, None]
    outs = []
    for t in range(ds.sizes['time']):
        x = (np.stack([ds['u'].values[t], ds['v'].values[t]])[:, ::-1] - mean) / std
        with torch.no_grad():
            y = net(torch.from_numpy(x.astype(np.float32).copy())[None], out_size=out_size)[0].numpy()
        outs.append((y * std + mean)[:, ::-1])
    return np.stack(outs)


def run(*args):
    return main([str(a) for a in args] + ['--quiet', '--device', 'cpu'])


def fields(path):
    out = xr.open_zarr(path)
    return np.stack([out['u'].values, out['v'].values], axis=1)


def test_zarr_store_streamed_with_grid_and_attributes_batch_equal(setup):
    tmp, net, ds = setup
    assert run(tmp / 'in.nc', '--ckpt', tmp / 'net.pth', '--size', '15x32', '-o', tmp / 'b3.zarr', '--batch', '3') == 0
    out = xr.open_zarr(tmp / 'b3.zarr')
    ref = reference(net, ds, (15, 32))
    np.testing.assert_allclose(fields(tmp / 'b3.zarr'), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    np.testing.assert_allclose(out['latitude'].values, np.linspace(-90, 90, 15), atol=1e-9)  # input row order
    np.testing.assert_allclose(out['longitude'].values, np.arange(32) * 11.25, atol=1e-9)
    np.testing.assert_array_equal(out['time'].values, ds['time'].values)
    assert out.attrs['title'] == 'test archive' and out['u'].attrs['long_name'] == 'eastward wind'
    assert out['latitude'].attrs['units'] == 'degrees_north'
    assert out['u'].encoding['chunks'] == (3, 15, 32)  # chunked along time by the batch
    # batch 1 (and the folder default, <stem>_<tag>.zarr) equal: oneDNN may round differently per batch size
    assert run(tmp / 'in.nc', '--ckpt', tmp / 'net.pth', '--size', '15x32', '-o', tmp / 'dir', '--batch', '1') == 0
    one = fields(tmp / 'dir' / 'in_15x32.zarr')
    np.testing.assert_allclose(one, fields(tmp / 'b3.zarr'), rtol=0, atol=1e-6 * np.abs(one).max())
    # NetCDF output stays available, with the same values
    assert run(tmp / 'in.nc', '--ckpt', tmp / 'net.pth', '--size', '15x32', '-o', tmp / 'o.nc') == 0
    nc = xr.open_dataset(tmp / 'o.nc')
    np.testing.assert_allclose(nc['u'].values, one[:, 0], rtol=0, atol=1e-6 * np.abs(one).max())


def test_changed_run_refused_by_name_overwrite_starts_over(setup, capsys):
    tmp, net, ds = setup
    base = [tmp / 'in.nc', '--ckpt', tmp / 'net.pth', '--size', '15x32', '-o', tmp / 'a.zarr', '--batch', '4']
    dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True)
    (tmp / f'a.zarr.{int(dead.stdout)}.tmp').mkdir()  # a template left by a run killed while creating it
    assert run(*base) == 0
    assert not (tmp / f'a.zarr.{int(dead.stdout)}.tmp').exists()
    done = sorted(os.listdir(tmp / 'a.zarr' / archive.DONE_DIR))
    assert done == ['0', '1']
    assert run(*base) == 0  # same command: nothing left to do, still success
    make_ckpt(tmp / 'net.pth', seed=1)
    capsys.readouterr()
    assert run(*base) == 1
    assert 'checkpoint changed' in capsys.readouterr().err
    make_ckpt(tmp / 'net.pth', seed=0)  # same weights again: accepted
    assert run(*base) == 0
    assert run(*base[:-2], '--time', '0', '3') == 1
    assert 'time steps changed' in capsys.readouterr().err
    assert run(*base, '--tile', '4') == 1
    assert 'request changed' in capsys.readouterr().err
    os.utime(tmp / 'in.nc', ns=(1, 1))
    assert run(*base) == 1
    assert 'input changed' in capsys.readouterr().err
    assert run(*base, '--tile', '4', '--overwrite') == 0
    assert json.loads(xr.open_zarr(tmp / 'a.zarr').attrs[archive.RUN_ATTR])['request']['tile'] == 4
    # a folder that is not this tool's store is never taken over silently
    (tmp / 'other.zarr').mkdir()
    assert run(tmp / 'in.nc', '--ckpt', tmp / 'net.pth', '--size', '15x32', '-o', tmp / 'other.zarr') == 1
    assert 'not a Zarr store' in capsys.readouterr().err


def test_failed_chunk_is_not_recorded_and_rerun_completes(setup, monkeypatch):
    tmp, net, ds = setup
    spec = NetworkSpec(str(tmp / 'net.pth'))
    job = ArchiveJob(str(tmp / 'in.nc'), str(tmp / 'f.zarr'), ('size', (15, 32)), batch=2)
    real = archive.compute_chunk

    def broken(net, job, src, plan, a, b, *args, **kwargs):
        if a == 2:
            raise RuntimeError('disk full')
        return real(net, job, src, plan, a, b, *args, **kwargs)
    monkeypatch.setattr(archive, 'compute_chunk', broken)
    with pytest.raises(RuntimeError, match='disk full'):
        upscale_archive(spec.load(), job, spec, quiet=True)
    assert sorted(os.listdir(tmp / 'f.zarr' / archive.DONE_DIR)) == ['0']
    assert np.isnan(xr.open_zarr(tmp / 'f.zarr')['u'].values[2:]).all()  # unwritten chunks read as missing
    monkeypatch.setattr(archive, 'compute_chunk', real)
    res = upscale_archive(spec.load(), job, spec, quiet=True)
    assert (res['skipped'], res['steps']) == (2, 5)
    ref = reference(net, ds, (15, 32))
    np.testing.assert_allclose(fields(tmp / 'f.zarr'), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


@pytest.mark.slow  # ~20 s: two runs of the CLI in subprocesses
def test_kill_9_mid_run_then_rerun_equals_uninterrupted(tmp_path):
    make_ckpt(tmp_path / 'net.pth')
    make_input(tmp_path / 'in.nc', 60)
    cmd = [sys.executable, '-m', 'metasr_arch.infer', str(tmp_path / 'in.nc'), '--ckpt', str(tmp_path / 'net.pth'),
           '--scale', '2', '--batch', '1', '--device', 'cpu', '--quiet']
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1')
    assert main(cmd[3:] + ['-o', str(tmp_path / 'full.zarr')]) == 0  # the uninterrupted run, in this process
    proc = subprocess.Popen(cmd + ['-o', str(tmp_path / 'k.zarr')], env=env, stderr=subprocess.PIPE)
    markers = tmp_path / 'k.zarr' / archive.DONE_DIR
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not markers.is_dir() or len(os.listdir(markers)) < 3):
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = len([n for n in os.listdir(markers) if n.isdigit()])
    assert 3 <= killed_at < 60, f'the run was not killed mid-way ({killed_at} chunks done)'
    again = subprocess.run(cmd + ['-o', str(tmp_path / 'k.zarr')], env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    np.testing.assert_array_equal(fields(tmp_path / 'k.zarr'), fields(tmp_path / 'full.zarr'))
    assert len(os.listdir(markers)) == 60


PEAK_SCRIPT = textwrap.dedent('''
    import sys
    import metasr_arch
    from metasr_arch.inference.archive import ArchiveJob, NetworkSpec, peak_rss_bytes, upscale_archive
    spec = NetworkSpec(sys.argv[1])
    upscale_archive(spec.load(), ArchiveJob(sys.argv[2], sys.argv[3], ('scale', (4.0, 4.0)), batch=50), spec,
                    quiet=True)
    print(peak_rss_bytes())
''')


@pytest.mark.slow  # ~25 s: 2100 steps
def test_peak_memory_flat_from_100_to_2000_steps(tmp_path):
    """2000 steps of 2 x 64 x 128 outputs are 131 MB: a writer that kept them would grow by that much."""
    make_ckpt(tmp_path / 'net.pth')
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1')
    peaks = {}
    for steps in (100, 2000):
        make_input(tmp_path / f'in{steps}.nc', steps, 16, 32)
        res = subprocess.run([sys.executable, '-c', PEAK_SCRIPT, str(tmp_path / 'net.pth'), str(tmp_path / f'in{steps}.nc'),
                              str(tmp_path / f'o{steps}.zarr')], env=env, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        peaks[steps] = int(res.stdout.split()[-1])
    assert xr.open_zarr(tmp_path / 'o2000.zarr')['u'].notnull().all()
    assert peaks[2000] - peaks[100] < 30 * 2**20, peaks


def test_dask_retries_a_failed_block_and_reports_one_that_keeps_failing(setup, monkeypatch):
    """An in-process cluster (threads), so that the failure can be injected; its address goes to --dask."""
    distributed = pytest.importorskip('distributed')
    tmp, net, ds = setup
    spec = NetworkSpec(str(tmp / 'net.pth'))
    job = ArchiveJob(str(tmp / 'in.nc'), str(tmp / 'd.zarr'), ('size', (15, 32)), batch=2)
    real, calls = archive.compute_chunk, []

    def flaky(net, job, src, plan, a, b, *args, **kwargs):
        calls.append(a)
        if a == 2 and calls.count(2) == 1 or a == 4:  # chunk 1 fails once, chunk 2 always
            raise OSError(f'worker lost at step {a}')
        return real(net, job, src, plan, a, b, *args, **kwargs)
    monkeypatch.setattr(archive, 'compute_chunk', flaky)
    loaded = spec.load()
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None,
                                  silence_logs=40) as cl:
        with pytest.raises(RuntimeError, match=r'1 chunk\(s\) failed.*2 \(steps 4\.\.5\).*worker lost'):
            upscale_on_dask(loaded, job, spec, cl.scheduler_address, quiet=True)
    assert calls.count(2) == 2 and calls.count(4) == 3  # retried by Dask: 1 + RETRIES attempts
    assert sorted(os.listdir(tmp / 'd.zarr' / archive.DONE_DIR)) == ['0', '1', '3']
    monkeypatch.setattr(archive, 'compute_chunk', real)
    res = upscale_archive(loaded, job, spec, quiet=True)
    assert (res['skipped'], res['steps']) == (5, 2)
    ref = reference(net, ds, (15, 32))
    np.testing.assert_allclose(fields(tmp / 'd.zarr'), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


@pytest.mark.slow  # ~20 s: a LocalCluster of 2 processes starts and loads torch twice
def test_local_cluster_of_two_processes_equals_single_process(setup):
    tmp, net, ds = setup
    base = [tmp / 'in.nc', '--ckpt', tmp / 'net.pth', '--size', '15x32', '--batch', '2']
    assert run(*base, '-o', tmp / 'one.zarr') == 0
    assert run(*base, '-o', tmp / 'two.zarr', '--dask', 'local:2') == 0
    one = fields(tmp / 'one.zarr')
    np.testing.assert_allclose(fields(tmp / 'two.zarr'), one, rtol=0, atol=1e-6 * np.abs(one).max())
    assert len(os.listdir(tmp / 'two.zarr' / archive.DONE_DIR)) == 4


@pytest.mark.slow  # ~20 s: inductor compiles a C++ kernel
def test_compiled_path_equals_eager(setup):
    tmp, net, ds = setup
    base = [tmp / 'in.nc', '--ckpt', tmp / 'net.pth', '--size', '15x32', '--batch', '3']
    assert run(*base, '-o', tmp / 'eager.zarr') == 0
    assert run(*base, '-o', tmp / 'compiled.zarr', '--compile') == 0
    eager = fields(tmp / 'eager.zarr')
    np.testing.assert_allclose(fields(tmp / 'compiled.zarr'), eager, rtol=0, atol=1e-4 * np.ptp(eager))
    assert json.loads(xr.open_zarr(tmp / 'compiled.zarr').attrs[archive.RUN_ATTR])['request']['backend'] == 'compiled'


@pytest.mark.parametrize('args, message', [
    (['--batch', '0'], '--batch must be a positive'),
    (['--dask', 'local:0'], 'local:N with N >= 1'),
    (['--dask', 'nowhere'], 'scheduler address'),
    (['--compile', '--tile', '8'], '--compile runs the whole field'),
    (['-o', 'x.nc', '--batch', '2'], '--batch: for Zarr outputs'),
    (['-o', 'x.zarr', '--scale', '3'], 'names one output'),
])
def test_bad_archive_arguments_exit_2(setup, capsys, args, message):
    tmp, _, _ = setup
    with pytest.raises(SystemExit) as exc:
        main([str(tmp / 'in.nc'), '--ckpt', str(tmp / 'net.pth'), '--scale', '2'] + args)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_default_batch_follows_the_memory_estimate(setup, monkeypatch):
    from metasr_arch.utils.memory import head_bytes
    tmp, net, _ = setup
    per_step = head_bytes(1, net.upsample.in_channels, 2, 96, 144, 721, 1440, net.upsample.kernel_size)
    monkeypatch.setenv('METASR_MEMORY_LIMIT', str(int(per_step * 3 / archive.BATCH_MEMORY_SHARE) + 1))
    assert archive.default_batch(net, (2, 96, 144), (721, 1440), 'cpu', 1000) == 3
    assert archive.default_batch(net, (2, 96, 144), (721, 1440), 'cpu', 2) == 2
    monkeypatch.setenv('METASR_MEMORY_LIMIT', '1')
    assert archive.default_batch(net, (2, 96, 144), (721, 1440), 'cpu', 1000) == 1
    monkeypatch.setenv('METASR_MEMORY_LIMIT', 'off')
    assert archive.default_batch(net, (2, 8, 16), (15, 32), 'cpu', 1000) == archive.MAX_DEFAULT_BATCH
    # on the CPU a forward's estimate stays under CPU_BATCH_BYTES whatever the memory (batch 16 of a big
    # grid measured 2.5x slower than batch 1)
    monkeypatch.setattr(archive, 'CPU_BATCH_BYTES', per_step * 5 + 1)
    assert archive.default_batch(net, (2, 96, 144), (721, 1440), 'cpu', 1000) == 5
    monkeypatch.setattr(archive, 'CPU_BATCH_BYTES', per_step - 1)
    assert archive.default_batch(net, (2, 96, 144), (721, 1440), 'cpu', 1000) == 1


def test_progress_log_lines_and_summary():
    stream = io.StringIO()
    progress = Progress(10, 'era5.zarr', stream=stream, every=0.0, tty=False)
    progress.skip(4)
    progress.update(3)
    progress.update(3)
    text = progress.summary(peak=3 * 2**30)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith('era5.zarr: 4/10 steps') and 'already written by an earlier run' in lines[0]
    assert lines[1].startswith('era5.zarr: 7/10 steps') and 'steps/s' in lines[1] and 'ETA' in lines[1]
    assert lines[2].startswith('era5.zarr: 10/10 steps') and 'ETA' not in lines[2]
    assert text == lines[-1] and text.startswith('era5.zarr: 6 step(s) in ') and '4 already done' in text
    assert text.endswith('peak memory 3 GiB')
    bar = io.StringIO()
    progress = Progress(5, 'x', stream=bar, tty=True)
    progress.update(5)
    progress.summary()
    assert '5/5' in bar.getvalue() and 'step/s' in bar.getvalue()  # tqdm's bar with its rate
    quiet = io.StringIO()
    Progress(5, 'x', quiet=True, stream=quiet, tty=False).summary()
    assert quiet.getvalue() == ''


def test_benchmark_script_variants_in_process(tmp_path):
    """scripts/benchmark_archive.py, tiny: its input and checkpoint, three variants, their comparison."""
    from argparse import Namespace
    from test_tools import load_script
    bench = load_script('benchmark_archive.py')
    ckpt, path, _, out = bench.prepare(tmp_path, 3, tiny=True)
    rows = {}
    for variant in ('eager_b1', 'batched', 'onnxruntime'):
        if variant == 'onnxruntime' and importlib.util.find_spec('onnxruntime') is None:
            continue  # the deploy extra; --compile onnxruntime itself is tested in test_onnx_backend.py
        rows[variant] = bench.run_variant(Namespace(run=variant, ckpt=str(ckpt), input=str(path), out_size=list(out),
                                                    out=str(tmp_path / f'{variant}.zarr'), batch=None, threads=1,
                                                    device='cpu'))
    assert rows['eager_b1']['batch'] == 1 and rows['batched']['batch'] == 3
    assert rows['batched']['steps'] == 3 and rows['batched']['peak'].endswith(('MiB', 'GiB'))
    assert bench.compare(str(tmp_path / 'eager_b1.zarr'), str(tmp_path / 'batched.zarr')) < 1e-5
    if 'onnxruntime' in rows:
        assert rows['onnxruntime']['batch'] == 3
        assert bench.compare(str(tmp_path / 'eager_b1.zarr'), str(tmp_path / 'onnxruntime.zarr')) < 1e-4
    assert xr.open_zarr(tmp_path / 'batched.zarr')['t2m'].shape == (3, 40, 96)


def test_image_folder_batch_equals_one_at_a_time(tmp_path, monkeypatch):
    """--batch on a folder of .npy arrays: same-size files share a forward (window of N files), outputs
    equal one file at a time; a file that cannot be read still fails alone."""
    from metasr_arch.inference import runner
    opt = {'type': 'MetaRDN', 'num_in_ch': 1, 'num_out_ch': 1, 'num_feat': 8, 'num_block': 1, 'num_layer': 2,
           'num_grow_ch': 4, 'hidden_channels': 8, 'img_range': 1.0, 'mean': 0.0}
    torch.manual_seed(0)
    net = MetaRDN(**{k: v for k, v in opt.items() if k != 'type'}).eval()
    torch.save({'params': net.state_dict(), 'network_opt': opt}, tmp_path / 'net.pth')
    rng = np.random.default_rng(0)
    folder = tmp_path / 'in'
    folder.mkdir()
    for name, shape in (('a', (12, 16)), ('b', (12, 16)), ('c', (10, 10)), ('d', (12, 16)), ('e', (10, 10))):
        np.save(folder / f'{name}.npy', rng.random(shape).astype(np.float32))
    (folder / 'f.npy').write_bytes(b'not an array')
    calls = []
    real = runner.run_network
    monkeypatch.setattr(runner, 'run_network', lambda net, x, *a, **k: calls.append(len(x)) or real(net, x, *a, **k))
    assert run(folder, '--ckpt', tmp_path / 'net.pth', '--scale', '2.5', '-o', tmp_path / 'one') == 1  # f fails
    assert calls == [1] * 5
    calls.clear()
    assert run(folder, '--ckpt', tmp_path / 'net.pth', '--scale', '2.5', '-o', tmp_path / 'three', '--batch', '3') == 1
    assert sorted(calls) == [1, 2, 2]  # a+b, c+e, d
    for name in 'abcde':
        one, three = (np.load(tmp_path / d / f'{name}_X2.50.npy') for d in ('one', 'three'))
        x = torch.from_numpy(np.load(folder / f'{name}.npy'))[None, None]
        with torch.no_grad():
            ref = net(x, scale=(2.5, 2.5))[0, 0].numpy()
        np.testing.assert_allclose(one, ref, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(three, one, rtol=0, atol=1e-6 * np.ptp(one))
    assert not (tmp_path / 'three' / 'f_X2.50.npy').exists()


def test_zarr_store_equals_netcdf_on_a_cf_file_with_packing_and_missing_values(tmp_path):
    """The streamed store of a regional CF file (360-day time, int16 packing, missing values) holds what
    the NetCDF writer writes: the same values (to the packing's precision), missing points, attributes, time."""
    from test_gridded_masks import write_cf_file
    src_path = write_cf_file(tmp_path / 'rcm.nc')
    net_opt = {'type': 'MetaRDN', 'num_in_ch': 2, 'num_out_ch': 2, 'num_feat': 8, 'num_block': 1, 'num_layer': 2,
               'num_grow_ch': 4, 'hidden_channels': 8, 'img_range': 1.0, 'mean': 0.0}
    torch.manual_seed(0)
    net = MetaRDN(**{k: v for k, v in net_opt.items() if k != 'type'})
    torch.save({'params': net.state_dict(), 'network_opt': net_opt, 'normalization': {
        'type': 'mean_std', 'variables': ['tas', 'pr'], 'mean': [282.5, 0.5], 'std': [1.5, 0.3]}}, tmp_path / 'n.pth')
    base = [src_path, '--ckpt', tmp_path / 'n.pth', '--size', '11x15']
    assert run(*base, '-o', tmp_path / 'o.nc') == 0
    assert run(*base, '-o', tmp_path / 'o.zarr', '--batch', '2') == 0
    nc, zr = xr.open_dataset(tmp_path / 'o.nc'), xr.open_zarr(tmp_path / 'o.zarr')
    # the store is float32 (whether packed values fit is known only once every step is computed): NetCDF's
    # int16 tas is rounded to its scale_factor 0.01, the float32 pr is the same
    assert zr['tas'].encoding['dtype'] == np.float32 and nc['tas'].encoding['dtype'] == np.int16
    for v, atol in (('tas', 0.005 + 1e-4), ('pr', 1e-6)):
        np.testing.assert_allclose(zr[v].values, nc[v].values, rtol=0, atol=atol)
        np.testing.assert_array_equal(np.isnan(zr[v].values), np.isnan(nc[v].values))
        assert zr[v].attrs == nc[v].attrs
    assert list(zr['time'].values) == list(nc['time'].values)
    assert {k: v for k, v in zr.attrs.items() if k not in ('history', archive.RUN_ATTR)} == \
        {k: v for k, v in nc.attrs.items() if k != 'history'}


def test_netcdf_output_above_the_limit_is_refused_pointing_to_zarr(setup, monkeypatch, capsys):
    from metasr_arch.inference import gridded
    tmp, _, _ = setup
    monkeypatch.setattr(gridded, 'NETCDF_MAX_BYTES', 7 * 2 * 15 * 32 * 4 - 1)  # one byte less than 7 steps
    assert run(tmp / 'in.nc', '--ckpt', tmp / 'net.pth', '--size', '15x32', '-o', tmp / 'o.nc') == 1
    assert 'write a Zarr store instead' in capsys.readouterr().err and not (tmp / 'o.nc').exists()
    monkeypatch.setattr(gridded, 'NETCDF_MAX_BYTES', 7 * 2 * 15 * 32 * 4)
    assert run(tmp / 'in.nc', '--ckpt', tmp / 'net.pth', '--size', '15x32', '-o', tmp / 'o.nc') == 0


def test_default_fast_path_is_onnxruntime_for_long_runs_only(tmp_path):
    """Without --compile a run of AUTO_COMPILE_MIN_STEPS steps or more goes through ONNX Runtime (the fastest
    measured path) and equals the eager reference; a shorter run, or --compile off, stays eager."""
    pytest.importorskip('onnxruntime')
    net = make_ckpt(tmp_path / 'net.pth')
    n = archive.AUTO_COMPILE_MIN_STEPS
    long_ds = make_input(tmp_path / 'long.nc', n)
    base = ['--ckpt', tmp_path / 'net.pth', '--size', '15x32', '--batch', '4']

    def backend(path):
        return json.loads(xr.open_zarr(path).attrs[archive.RUN_ATTR])['request']['backend']

    assert run(tmp_path / 'long.nc', *base, '-o', tmp_path / 'long.zarr') == 0
    assert backend(tmp_path / 'long.zarr') == 'onnxruntime'
    want = reference(net, long_ds, (15, 32))
    np.testing.assert_allclose(fields(tmp_path / 'long.zarr'), want, rtol=0, atol=1e-4 * np.ptp(want))
    assert run(tmp_path / 'long.nc', *base, '-o', tmp_path / 'off.zarr', '--compile', 'off') == 0
    assert backend(tmp_path / 'off.zarr') == 'eager'
    assert run(tmp_path / 'long.nc', *base, '--time', '0', str(n - 1), '-o', tmp_path / 'short.zarr') == 0
    assert backend(tmp_path / 'short.zarr') == 'eager'
    # the same command again resumes the store: the choice is the same, so the record matches
    assert run(tmp_path / 'long.nc', *base, '-o', tmp_path / 'long.zarr') == 0


def test_nonfinite_network_output_is_never_written_to_netcdf(setup, monkeypatch, capsys):
    """A network that gives NaN at valid points fails that input by name (exit 1) and writes no NetCDF."""
    import metasr_arch.inference.gridded as gridded
    tmp, _, _ = setup
    real = gridded.run_network

    def nan_network(*args, **kwargs):
        y = real(*args, **kwargs)
        y[..., 0, 0] = float('nan')
        return y

    monkeypatch.setattr(gridded, 'run_network', nan_network)
    assert run(tmp / 'in.nc', '--ckpt', tmp / 'net.pth', '--size', '15x32', '-o', tmp / 'out.nc') == 1
    assert 'NonFiniteError' in capsys.readouterr().err and not (tmp / 'out.nc').exists()
    monkeypatch.setattr(gridded, 'run_network', real)
    assert run(tmp / 'in.nc', '--ckpt', tmp / 'net.pth', '--size', '15x32', '-o', tmp / 'out.nc') == 0
    assert np.isfinite(xr.open_dataset(tmp / 'out.nc')['u'].values).all()
