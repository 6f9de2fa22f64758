"""Training-side data loading from a chunked Zarr store: samples/s of MetaSRXarrayDataset through a
torch DataLoader with several worker counts, side by side.

    python scripts/benchmark_data_loading.py                        # 721x1440, 3 variables, 256 steps
    python scripts/benchmark_data_loading.py --workers 0 2 4 --batch 8 --markdown loading.md
    python scripts/benchmark_data_loading.py --tiny                  # a seconds-long smoke run

A Zarr store of ``--steps`` random fields (t2m, u10, v10 on a 721 x 1440 grid; ``--tiny``: 32 x 64)
chunked one time step per chunk (``--time-chunk``) is written to ``--work`` (default: a temporary
folder) unless it is there already; then for each worker count the same dataset (whole fields, given
normalisation statistics, so that nothing else is read) is read for ``--batches`` batches after one
warm-up batch (worker start-up excluded), in shuffled order as training reads it. The table gives
samples/s and MB/s of field data.
"""
import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

VARIABLES = ['t2m', 'u10', 'v10']


def write_store(path: Path, steps: int, h: int, w: int, time_chunk: int) -> None:
    """The benchmark's Zarr store, written chunk by chunk (never the whole array in memory)."""
    import numpy as np
    import pandas as pd
    import xarray as xr
    import dask.array as da
    template = xr.Dataset({v: (('time', 'latitude', 'longitude'),
                               da.zeros((steps, h, w), dtype='f4', chunks=(time_chunk, h, w))) for v in VARIABLES},
                          coords={'time': pd.date_range('2000-01-01', periods=steps, freq='h'),
                                  'latitude': np.linspace(90, -90, h), 'longitude': np.arange(w) * 360.0 / w})
    template.to_zarr(path, mode='w', compute=False)
    rng = np.random.default_rng(0)
    for a in range(0, steps, time_chunk):
        b = min(a + time_chunk, steps)
        block = xr.Dataset({v: (('time', 'latitude', 'longitude'), rng.standard_normal((b - a, h, w)).astype('f4'))
                            for v in VARIABLES})
        block.to_zarr(path, region={'time': slice(a, b), 'latitude': slice(0, h), 'longitude': slice(0, w)})


def samples_per_second(store: Path, workers: int, batch: int, batches: int) -> float:
    """Samples/s of a shuffled DataLoader over whole fields, after one warm-up batch."""
    import metasr_arch  # noqa: F401  (before basicsr)
    import torch
    from metasr_arch.data.metasr_xarray_dataset import MetaSRXarrayDataset
    ds = MetaSRXarrayDataset({'name': 'bench', 'phase': 'train', 'dataroot_gt': str(store), 'variables': VARIABLES,
                              'normalization': {'type': 'mean_std', 'mean': [0.0] * 3, 'std': [1.0] * 3}})
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers,
                                         persistent_workers=workers > 0, generator=torch.Generator().manual_seed(0))
    it = iter(loader)
    next(it)  # warm-up: worker start-up and the first reads
    start, n = time.perf_counter(), 0
    for _ in range(batches):
        try:
            n += len(next(it)['gt'])
        except StopIteration:
            it = iter(loader)
            n += len(next(it)['gt'])
    return n / (time.perf_counter() - start)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--steps', type=int, default=256)
    p.add_argument('--workers', type=int, nargs='+', default=[0, 2, 4])
    p.add_argument('--batch', type=int, default=8)
    p.add_argument('--batches', type=int, default=16, help='timed batches per worker count (after one warm-up)')
    p.add_argument('--time-chunk', type=int, default=1)
    p.add_argument('--tiny', action='store_true', help='32x64 fields (smoke test)')
    p.add_argument('--work', default=None, help='folder of the store (kept and reused; default: temporary)')
    p.add_argument('--markdown', default=None)
    args = p.parse_args()
    from metasr_arch.utils.bench import report
    h, w = (32, 64) if args.tiny else (721, 1440)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(args.work or tmp) / f'fields_{h}x{w}_{args.steps}_c{args.time_chunk}.zarr'
        if not store.exists():
            write_store(store, args.steps, h, w, args.time_chunk)
        mb = len(VARIABLES) * h * w * 4 / 1e6
        for workers in args.workers:
            rate = samples_per_second(store, workers, args.batch, args.batches)
            rows.append(f'| {workers} | {args.batch} | {rate:.3g} | {rate * mb:.3g} |')
            print(rows[-1], file=sys.stderr, flush=True)
    head = (f'MetaSRXarrayDataset over a Zarr store of {args.steps} steps of {len(VARIABLES)} x {h} x {w} float32, '
            f'{args.time_chunk} step(s) per chunk, whole fields, shuffled, {args.batches} batches after a warm-up; '
            f'{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {time.strftime("%Y-%m-%d")}')
    report(head + '\n\n' + '\n'.join(['| DataLoader workers | batch | samples/s | MB/s |', '|---:|---:|---:|---:|']
                                      + rows), args.markdown)
    return 0


if __name__ == '__main__':
    sys.exit(main())
