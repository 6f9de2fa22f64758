"""``--compile onnxruntime`` (metasr_arch.inference.onnx_backend): ONNX Runtime against the eager network
(an RGB network with bicubic skip, a periodic two-variable gridded one), through the archive CLI and a Dask
worker's code, the bare ``--compile`` spelling, and the named errors (no onnxruntime, no Meta-SR head, a
graph that differs, a wrong batch)."""
import json
import sys

import metasr_arch  # noqa: F401  (before basicsr)

import numpy as np
import pytest
import torch

pytest.importorskip('onnxruntime', reason='the deploy extra (pip install -e .[deploy]) is not installed')
xr = pytest.importorskip('xarray', reason='the geo extra (pip install -e .[geo]) is not installed')

from metasr_arch.archs.metardn_arch import MetaRDN  # noqa: E402
from metasr_arch.infer import main, parse_args  # noqa: E402
from metasr_arch.inference import archive, dask_runner, onnx_backend  # noqa: E402
from metasr_arch.inference.onnx_backend import OnnxRuntimeMissingError, onnx_frozen  # noqa: E402
from metasr_arch.inference.runner import run_network  # noqa: E402
from test_archive import fields, make_ckpt, make_input, run  # noqa: E402

TINY_RGB = dict(num_in_ch=3, num_out_ch=3, num_feat=8, num_block=1, num_layer=2, num_grow_ch=4, hidden_channels=8)


@pytest.fixture()
def rgb_net():
    torch.manual_seed(0)
    net = MetaRDN(**TINY_RGB).eval()
    net.metasr_bicubic_skip = True  # as load_network sets it for a checkpoint trained with the skip
    return net


@pytest.mark.parametrize('request_', [('scale', (2.5, 2.5)), ('scale', (2.0, 3.5)), ('size', (23, 17))])
def test_onnxruntime_equals_eager_within_1e4_of_the_range(rgb_net, request_):
    x = torch.rand(2, 3, 9, 7)
    fast = onnx_frozen(rgb_net, request_, (9, 7), batch=2, threads=1)
    kind, value = request_
    ref = run_network(rgb_net, x, *((value, None) if kind == 'scale' else (None, value)))
    out = fast(x)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert float((out - ref).abs().max()) <= 1e-4 * float(ref.max() - ref.min())
    # the bicubic skip is in the graph: without it the output would differ by far more than the tolerance
    with torch.no_grad():
        bare = rgb_net(x, scale=value if kind == 'scale' else None, out_size=value if kind == 'size' else None)
    assert float((out - bare).abs().max()) > 1e-2
    assert onnx_frozen(rgb_net, request_, (9, 7), batch=2, threads=1) is fast  # built once per key
    with pytest.raises(ValueError, match=r'--compile onnxruntime: the session takes \(2, C, 9, 7\)'):
        fast(torch.rand(3, 3, 9, 7))


def test_archive_cli_onnxruntime_equals_eager_and_is_recorded(tmp_path):
    """7 steps in batches of 3 (the last one padded) of the periodic two-variable network."""
    make_ckpt(tmp_path / 'net.pth')
    make_input(tmp_path / 'in.nc', 7)
    base = [tmp_path / 'in.nc', '--ckpt', tmp_path / 'net.pth', '--size', '15x32', '--batch', '3']
    assert run(*base, '-o', tmp_path / 'eager.zarr') == 0
    assert run(*base, '-o', tmp_path / 'ort.zarr', '--compile', 'onnxruntime') == 0
    eager, ort = fields(tmp_path / 'eager.zarr'), fields(tmp_path / 'ort.zarr')
    assert np.isfinite(ort).all()
    np.testing.assert_allclose(ort, eager, rtol=0, atol=1e-4 * np.ptp(eager))
    record = json.loads(xr.open_zarr(tmp_path / 'ort.zarr').attrs[archive.RUN_ATTR])
    assert record['request']['backend'] == 'onnxruntime'
    # an eager store is not continued by an ONNX Runtime run: the backend is part of the record
    assert run(*base, '-o', tmp_path / 'eager.zarr', '--compile', 'onnxruntime') == 1


def test_dask_worker_builds_its_own_session(tmp_path, monkeypatch):
    """The code a Dask worker runs (``_worker_chunk``), in this process with a fresh worker state: it loads
    the network from the spec and builds its own ONNX Runtime session, once for all its chunks."""
    make_ckpt(tmp_path / 'net.pth')
    make_input(tmp_path / 'in.nc', 4)
    spec = archive.NetworkSpec(str(tmp_path / 'net.pth'))
    job = archive.ArchiveJob(str(tmp_path / 'in.nc'), str(tmp_path / 'w.zarr'), ('size', (15, 32)),
                             compile='onnxruntime', batch=2)
    net = spec.load()
    plan = archive.prepare_store(net, job, archive.checkpoint_identity(spec))
    built = []
    real = onnx_backend.build_session
    monkeypatch.setattr(onnx_backend, 'build_session', lambda *a, **k: built.append(a[3]) or real(*a, **k))
    monkeypatch.setattr(dask_runner, '_WORKER_STATE', {})
    for k in plan.pending:
        dask_runner._worker_chunk(job, spec, plan, k, threads=1)
    assert built == [2]
    archive.upscale_archive(net, archive.ArchiveJob(str(tmp_path / 'in.nc'), str(tmp_path / 'e.zarr'),
                                                    ('size', (15, 32)), batch=2), spec, quiet=True)
    eager = fields(tmp_path / 'e.zarr')
    np.testing.assert_allclose(fields(tmp_path / 'w.zarr'), eager, rtol=0, atol=1e-4 * np.ptp(eager))


def test_bare_compile_is_torch_and_backends_are_named(tmp_path):
    make_ckpt(tmp_path / 'net.pth')
    make_input(tmp_path / 'in.nc', 2)
    common = ['--ckpt', str(tmp_path / 'net.pth'), '--scale', '2']
    assert parse_args(['--compile', str(tmp_path / 'in.nc')] + common)[0].compile == 'torch'
    assert parse_args([str(tmp_path / 'in.nc'), '--compile'] + common)[0].compile == 'torch'
    assert parse_args([str(tmp_path / 'in.nc'), '--compile', 'onnxruntime'] + common)[0].compile == 'onnxruntime'
    assert parse_args([str(tmp_path / 'in.nc')] + common)[0].compile is None
    with pytest.raises(ValueError, match="--compile 'tensorrt'"):
        archive.compile_backend('tensorrt')


def test_bad_backend_and_missing_onnxruntime_exit_2(tmp_path, capsys, monkeypatch):
    make_ckpt(tmp_path / 'net.pth')
    make_input(tmp_path / 'in.nc', 2)
    argv = [str(tmp_path / 'in.nc'), '--ckpt', str(tmp_path / 'net.pth'), '--scale', '2', '--compile']
    with pytest.raises(SystemExit) as exc:
        main(argv + ['onnx'])
    assert exc.value.code == 2 and "invalid choice: 'onnx'" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, 'onnxruntime', None)  # import onnxruntime -> ImportError
    with pytest.raises(SystemExit) as exc:
        main(argv + ['onnxruntime'])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and '--compile onnxruntime needs the onnxruntime package' in err and '[deploy]' in err
    with pytest.raises(OnnxRuntimeMissingError):
        onnx_backend.require_onnxruntime()


def test_network_export_cannot_take_and_a_differing_graph_are_refused(rgb_net, monkeypatch):
    with pytest.raises(ValueError, match='--compile onnxruntime: Sequential is not a Meta-SR network'):
        onnx_frozen(torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3)), ('scale', (2.0, 2.0)), (8, 8), batch=1)
    fast = onnx_frozen(rgb_net, ('scale', (2.0, 2.0)), (6, 6), batch=1, threads=1)
    from metasr_arch.inference import runner
    real = runner.run_network
    monkeypatch.setattr(runner, 'run_network', lambda *a, **k: real(*a, **k) + 0.5)  # an eager path that disagrees
    with pytest.raises(RuntimeError, match='differs from the eager network'):
        fast(torch.rand(1, 3, 6, 6))


def test_benchmark_script_side_by_side_tiny(tmp_path, monkeypatch):
    """scripts/benchmark_export.py on a tiny network at 8 x 8: eager and ONNX Runtime built as the CLI
    builds them, their error against eager and the table with the ratio to ONNX Runtime."""
    from test_tools import load_script
    bench = load_script('benchmark_export.py')
    monkeypatch.setitem(bench.CASES, 'tiny', (lambda: {'type': 'MetaRDN', **TINY_RGB}, True))
    r = bench.time_case('tiny', 2.5, 8, repeats=2, threads=1, backends=('eager', 'onnxruntime'), batch=2)
    assert r['onnxruntime_err'] <= 1e-4 and r['eager'] > 0 and r['onnxruntime'] > 0 and r['mode'] == 'conv'
    rows = bench.table([r], ('eager', 'onnxruntime'))
    assert rows[0].startswith('| network | params | head form | eager PyTorch (s) | ONNX Runtime build (s)')
    assert rows[0].endswith('| eager PyTorch / ONNX Runtime |') and len(rows) == 3
    assert rows[2].endswith(f"| {r['eager'] / r['onnxruntime']:.2f}x |")
