"""Running the chunks of an archive job (``metasr_arch.inference.archive``) on Dask workers.

``--dask local:N`` starts a ``distributed.LocalCluster`` of N worker processes (one thread each; torch
in each uses ``cpu_count // N`` threads) for the run; ``--dask ADDRESS`` connects to a running scheduler
(``dask-jobqueue`` on SLURM/PBS, ``dask worker`` on GPU nodes: docs/gridded.md). The client creates the
store and checks the run's record; each task is one chunk: the worker loads the network once (cached
per process, keyed by ``NetworkSpec``), computes the chunk, writes its own region of the store and
records it as done. A task that fails is retried by Dask (``RETRIES``); its marker is written only
after its region, so a failed attempt is never recorded as done, and the chunks that still fail are
reported by the client (and redone by the next run).
"""
import os
from typing import Dict, Optional, Tuple

from metasr_arch.inference.archive import (ArchiveJob, Forward, NetworkSpec, Progress, StorePlan, open_source,
                                           peak_rss_bytes, run_chunk, upscale_archive)

RETRIES = 2
_WORKER_STATE: Dict = {}  # per worker process: {NetworkSpec: network}, {key: (source, Forward)}


def parse_dask_arg(text: str) -> Tuple[str, object]:
    """``'local:N'`` -> ('local', N); a scheduler address (``tcp://host:8786``, ``host:8786``) -> ('address', it)."""
    text = str(text).strip()
    if text.startswith('local'):
        _, _, n = text.partition(':')
        if not n.isdigit() or int(n) < 1:
            raise ValueError(f"--dask {text!r}: give local:N with N >= 1 worker processes (e.g. local:2)")
        return 'local', int(n)
    if not text or ':' not in text:
        raise ValueError(f"--dask {text!r}: give local:N or a scheduler address such as tcp://host:8786")
    return 'address', text


def _worker_chunk(job: ArchiveJob, spec: NetworkSpec, plan: StorePlan, k: int, threads: Optional[int]) -> Dict:
    """One chunk on a worker: the network and input are opened once per worker process and reused."""
    import torch
    nets = _WORKER_STATE.setdefault('nets', {})
    if spec not in nets:
        if threads:
            torch.set_num_threads(threads)
        nets[spec] = spec.load()
    net = nets[spec]
    runs = _WORKER_STATE.setdefault('runs', {})
    key = (spec, job, plan.out_path)
    if key not in runs:
        # each worker process builds its own compiled function or ONNX Runtime session, once
        runs[key] = (open_source(net, job), Forward(net, job, plan.in_shape[1:], plan.batch, torch.device(spec.device)))
    src, forward = runs[key]
    steps = run_chunk(net, job, plan, k, src, forward, torch.device(spec.device))
    return {'chunk': k, 'steps': steps, 'peak_rss': peak_rss_bytes(), 'pid': os.getpid()}


def run_on_dask(dask: str, job: ArchiveJob, spec: NetworkSpec, plan: StorePlan, progress: Progress) -> Optional[int]:
    """Send ``plan.pending`` chunks to Dask, update ``progress`` as they finish.

    Returns:
        the largest peak RSS (bytes) reported by a worker process.
    Raises:
        RuntimeError listing the chunks that failed after their retries (the others are written and
        recorded; rerunning the command computes only the failed ones).
    """
    from distributed import Client, LocalCluster, as_completed
    kind, value = parse_dask_arg(dask)
    cluster = None
    if kind == 'local':
        import logging
        # silence_logs: the nanny's notes on stopping workers are no news to a user of the CLI
        cluster = LocalCluster(n_workers=value, threads_per_worker=1, processes=True, dashboard_address=None,
                               silence_logs=logging.ERROR)
        client, threads = Client(cluster), max(1, (os.cpu_count() or 1) // value)
    else:
        client, threads = Client(value), None
    peak, failed = 0, []
    try:
        futures = {client.submit(_worker_chunk, job, spec, plan, k, threads, key=f'metasr-chunk-{k}-{os.getpid()}',
                                 retries=RETRIES, pure=False): k for k in plan.pending}
        for future in as_completed(futures):
            k = futures[future]
            try:
                res = future.result()
            except Exception as err:  # noqa: BLE001 (any worker error is reported per chunk)
                failed.append((k, f'{type(err).__name__}: {err}'))
                continue
            peak = max(peak, res.get('peak_rss') or 0)
            progress.update(res['steps'])
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    if failed:
        failed.sort()
        chunks = ', '.join(f'{k} (steps {plan.chunks[k][0]}..{plan.chunks[k][1] - 1}): {why}' for k, why in failed[:5])
        raise RuntimeError(f'{len(failed)} chunk(s) failed on the Dask workers after {RETRIES} retries and are not '
                           f'recorded as done (rerun the command to compute them): {chunks}')
    return max(peak, peak_rss_bytes() or 0) or None


def upscale_on_dask(net, job: ArchiveJob, spec: NetworkSpec, dask: str, overwrite: bool = False, quiet: bool = False,
                    device='cpu', stream=None) -> Dict:
    """``archive.upscale_archive`` with the chunks computed on Dask (``dask``: ``'local:N'`` or a scheduler
    address); ``net`` only plans the store here."""
    parse_dask_arg(dask)
    return upscale_archive(net, job, spec, overwrite, quiet, device, stream,
                           runner=lambda job, spec, plan, progress: run_on_dask(dask, job, spec, plan, progress))
