"""Archive-scale gridded inference, side by side: fields/s and peak memory of the ways to run it.

    python scripts/benchmark_archive.py                             # SwinIRMeta 96x144 -> 721x1440, 64 steps
    python scripts/benchmark_archive.py --steps 64 --markdown archive.md
    python scripts/benchmark_archive.py --tiny --steps 6             # a seconds-long smoke run (tests, CI)
    python scripts/benchmark_archive.py --variants eager_b1 batched compiled onnxruntime      # the fast paths
    python scripts/benchmark_archive.py --device cuda --variants eager_b1 batched compiled   # GPU form
    python scripts/benchmark_archive.py --memory-steps 100 2000      # peak RSS against the number of steps

The network is ``network_g`` of ``options/train/train_SwinIRMeta_grid_721x1440.yml`` (``--tiny``: a
one-stage SwinIRMeta on 16x24 -> 40x96) with random weights (time does not depend on their values),
saved as a checkpoint with normalisation statistics; the input is a NetCDF file of ``--steps`` random
96x144 fields of t2m, u10, v10. Each variant runs ``metasr_arch.inference.archive.upscale_archive``
(what ``python -m metasr_arch.infer IN.nc -o OUT.zarr`` runs) in a fresh process, one after the other:

  eager_b1   one step per forward, eager PyTorch       (--batch 1)
  batched    --batch B (default: the memory-estimate default of the CLI)
  compiled   --compile with the same batch (compile time included in the time)
  onnxruntime  --compile onnxruntime with the same batch (export and session creation included)
  dask2      --dask local:2 with the same batch (cluster start-up included; 2 worker processes,
             cpu_count // 2 torch threads each)

Reported per variant: seconds for all steps (from the start of the run to the last chunk recorded,
loading the network excluded), fields (time steps) per second, peak RSS (for dask2 the largest of the
client and the workers), and the largest difference from eager_b1's store relative to its range.

``--memory-steps 100 2000`` instead measures peak RSS against the number of steps, on the tiny network
and grid (16x24 -> 40x96, 3 variables): for each count, the streamed Zarr writer (batch 50) and the
NetCDF writer (which keeps every output until it writes), each in a fresh process.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VARIABLES = ['t2m', 'u10', 'v10']
VARIANTS = ('eager_b1', 'batched', 'compiled', 'onnxruntime', 'dask2')
MEMORY_VARIANTS = ('zarr', 'netcdf')


def network_opt(tiny: bool) -> dict:
    import yaml
    if tiny:
        return {'type': 'SwinIRMeta', 'in_chans': 3, 'img_size': 8, 'window_size': 8, 'img_range': 1.0,
                'mean': 0.0, 'depths': [1], 'embed_dim': 12, 'num_heads': [2], 'mlp_ratio': 2,
                'resi_connection': '1conv', 'periodic_w': True}
    with open(REPO / 'options' / 'train' / 'train_SwinIRMeta_grid_721x1440.yml', encoding='utf-8') as f:
        return dict(yaml.safe_load(f)['network_g'])


def prepare(work: Path, steps: int, tiny: bool):
    """Write the checkpoint and the input file; returns (ckpt, input, (h, w), (H, W))."""
    import metasr_arch  # noqa: F401  (before basicsr)
    import numpy as np
    import pandas as pd
    import torch
    import xarray as xr
    from basicsr.archs import build_network
    opt = network_opt(tiny)
    torch.manual_seed(0)
    net = build_network(dict(opt))
    norm = {'type': 'mean_std', 'variables': VARIABLES, 'mean': [280.0, 0.0, 0.0], 'std': [20.0, 5.0, 5.0]}
    ckpt = work / 'net.pth'
    torch.save({'params': net.state_dict(), 'network_opt': opt, 'normalization': norm}, ckpt)
    (h, w), out = ((16, 24), (40, 96)) if tiny else ((96, 144), (721, 1440))
    rng = np.random.default_rng(0)
    data = {v: (('time', 'latitude', 'longitude'), (m + s * rng.standard_normal((steps, h, w))).astype('f4'))
            for v, m, s in zip(VARIABLES, norm['mean'], norm['std'])}
    ds = xr.Dataset(data, coords={'time': pd.date_range('2000-01-01', periods=steps, freq='h'),
                                  'latitude': np.linspace(90, -90, h), 'longitude': np.arange(w) * 360.0 / w})
    path = work / 'in.nc'
    ds.to_netcdf(path)
    return ckpt, path, (h, w), out


def run_variant(args) -> dict:
    """One variant in this process (``--run``); prints one JSON line."""
    import metasr_arch  # noqa: F401
    import torch
    from metasr_arch.inference.archive import ArchiveJob, NetworkSpec, upscale_archive
    torch.set_num_threads(args.threads)
    spec = NetworkSpec(args.ckpt, device=args.device)
    net = spec.load()
    if args.run in MEMORY_VARIANTS:
        from metasr_arch.inference.archive import peak_rss_bytes
        from metasr_arch.inference.gridded import upscale_gridded
        start = time.perf_counter()
        if args.run == 'netcdf':
            upscale_gridded(net, args.input, ('size', tuple(args.out_size)), torch.device(args.device), args.out)
        else:
            upscale_archive(net, ArchiveJob(args.input, args.out, ('size', tuple(args.out_size)), batch=50), spec,
                            quiet=True, device=torch.device(args.device))
        return {'variant': args.run, 'seconds': time.perf_counter() - start, 'peak_bytes': peak_rss_bytes()}
    batch = 1 if args.run == 'eager_b1' else args.batch
    job = ArchiveJob(args.input, args.out, ('size', tuple(args.out_size)), batch=batch,
                     compile={'compiled': 'torch', 'onnxruntime': 'onnxruntime'}.get(args.run))
    if args.run == 'dask2':
        from metasr_arch.inference.dask_runner import upscale_on_dask
        res = upscale_on_dask(net, job, spec, 'local:2', quiet=True, device=torch.device(args.device))
    else:
        res = upscale_archive(net, job, spec, quiet=True, device=torch.device(args.device))
    import re
    peak = re.search(r'peak memory (.*)$', res['summary'])
    peak = peak.group(1) if peak else '?'
    if torch.device(args.device).type == 'cuda':
        from metasr_arch.utils.memory import format_bytes
        peak += f' (CUDA {format_bytes(torch.cuda.max_memory_allocated())})'
    return {'variant': args.run, 'seconds': res['seconds'], 'steps': res['steps'], 'batch': res['batch'], 'peak': peak}


def compare(a: str, b: str) -> float:
    import numpy as np
    import xarray as xr
    x, y = xr.open_zarr(a), xr.open_zarr(b)
    worst = 0.0
    for v in VARIABLES:
        ref = x[v].values
        worst = max(worst, float(np.abs(y[v].values - ref).max() / max(np.ptp(ref), 1e-30)))
    return worst


def _run_child(args, variant: str, ckpt, path, store, out) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get('PYTHONPATH', ''))
    cmd = [sys.executable, __file__, '--run', variant, '--ckpt', str(ckpt), '--input', str(path), '--out', str(store),
           '--out-size', str(out[0]), str(out[1]), '--threads', str(args.threads), '--device', args.device]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f'{variant}: {res.stderr.strip()[-2000:]}')
    return json.loads(res.stdout.strip().splitlines()[-1])


def memory_table(args) -> int:
    """Peak RSS of the streamed Zarr writer and the in-memory NetCDF writer against the number of steps."""
    import torch
    from metasr_arch.utils.bench import report
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for steps in args.memory_steps:
            work = Path(args.work or tmp) / f'memory_{steps}'
            work.mkdir(parents=True, exist_ok=True)
            ckpt, path, _, out = prepare(work, steps, tiny=True)
            peaks = {}
            for variant, name in (('zarr', 'out.zarr'), ('netcdf', 'out.nc')):
                if (work / name).exists():
                    import shutil
                    shutil.rmtree(work / name) if (work / name).is_dir() else (work / name).unlink()
                peaks[variant] = _run_child(args, variant, ckpt, path, work / name, out)['peak_bytes']
            output = steps * 3 * out[0] * out[1] * 4
            rows.append(f"| {steps} | {output / 2**20:.1f} MiB | {peaks['zarr'] / 2**20:.0f} MiB | "
                        f"{peaks['netcdf'] / 2**20:.0f} MiB |")
            print(rows[-1], file=sys.stderr, flush=True)
    head = (f'peak RSS against the number of steps: tiny SwinIRMeta, 16x24 -> 40x96, 3 variables, NetCDF in; '
            f'torch {torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, '
            f'{time.strftime("%Y-%m-%d")}')
    report(head + '\n\n' + '\n'.join(['| steps | output size | Zarr, streamed (batch 50) | NetCDF, in memory |',
                                       '|---:|---:|---:|---:|'] + rows), args.markdown)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--steps', type=int, default=64)
    p.add_argument('--variants', nargs='+', default=list(VARIANTS), choices=VARIANTS)
    p.add_argument('--batch', type=int, default=None, help='batch of the batched/compiled/onnxruntime/dask2 variants '
                                                            '(default: the CLI default from the memory estimate)')
    p.add_argument('--threads', type=int, default=os.cpu_count(), help='torch threads of the single-process variants')
    p.add_argument('--device', default='cpu')
    p.add_argument('--tiny', action='store_true', help='a small network and grid (smoke test)')
    p.add_argument('--work', default=None, help='folder for the checkpoint, input and stores (default: temporary)')
    p.add_argument('--markdown', default=None, help='also write the table to this file')
    p.add_argument('--memory-steps', type=int, nargs='+', default=None, metavar='N',
                   help='peak RSS of the Zarr and NetCDF writers for these numbers of steps (tiny network)')
    p.add_argument('--run', choices=VARIANTS + MEMORY_VARIANTS, help=argparse.SUPPRESS)  # internal: one variant in this process
    p.add_argument('--ckpt', help=argparse.SUPPRESS)
    p.add_argument('--input', help=argparse.SUPPRESS)
    p.add_argument('--out', help=argparse.SUPPRESS)
    p.add_argument('--out-size', type=int, nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.run:
        print(json.dumps(run_variant(args)), flush=True)
        return 0
    from metasr_arch.utils.bench import report
    if args.memory_steps:
        return memory_table(args)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        ckpt, path, (h, w), out = prepare(work, args.steps, args.tiny)
        rows, stores = [], {}
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get('PYTHONPATH', ''))
        for variant in args.variants:
            store = work / f'{variant}.zarr'
            cmd = [sys.executable, __file__, '--run', variant, '--ckpt', str(ckpt), '--input', str(path),
                   '--out', str(store), '--out-size', str(out[0]), str(out[1]), '--threads', str(args.threads),
                   '--device', args.device]
            if args.batch:
                cmd += ['--batch', str(args.batch)]
            if store.exists():
                import shutil
                shutil.rmtree(store)
            res = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if res.returncode != 0:
                rows.append(f'| {variant} | failed: {res.stderr.strip().splitlines()[-1] if res.stderr.strip() else res.returncode} |')
                print(rows[-1], file=sys.stderr, flush=True)
                continue
            r = json.loads(res.stdout.strip().splitlines()[-1])
            stores[variant] = str(store)
            diff = compare(stores['eager_b1'], str(store)) if 'eager_b1' in stores else float('nan')
            rows.append(f"| {variant} | {r['batch']} | {r['seconds']:.1f} | {r['steps'] / r['seconds']:.3g} | "
                        f"{r['peak']} | {diff:.1e} |")
            print(rows[-1], file=sys.stderr, flush=True)
    import torch
    head = (f'{"tiny SwinIRMeta" if args.tiny else "SwinIRMeta of train_SwinIRMeta_grid_721x1440.yml"} (random '
            f'weights), {h}x{w} -> {out[0]}x{out[1]}, 3 variables, {args.steps} steps from NetCDF to Zarr on '
            f'{args.device}, {args.threads} torch threads; torch {torch.__version__}, '
            f'{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {time.strftime("%Y-%m-%d")}')
    table = ['| variant | batch | seconds | fields/s | peak RSS | max diff vs eager_b1 (of range) |',
             '|---|---:|---:|---:|---:|---:|'] + rows
    report(head + '\n\n' + '\n'.join(table), args.markdown)
    return 0 if all('failed' not in r for r in rows) else 1


if __name__ == '__main__':
    sys.exit(main())
