"""Upscaling whole NetCDF/Zarr archives into one Zarr store: streamed, batched, resumable.

The output store is laid out by ``gridded_io.output_dataset`` (coordinates, attributes) and chunked
along time: one chunk of ``chunk`` steps per variable, each (chunk, H, W). A run

1. creates the store's metadata and coordinates (in a temporary folder renamed into place), with the
   run's *record* (``RUN_ATTR``: input, checkpoint, request) in its attributes; chunks not yet written
   read as NaN (the fill value), so ``xr.open_zarr`` works while a run is going;
2. computes each chunk in forwards of ``batch`` steps, writes it as a Zarr region, and only then
   records it as done: an empty marker file ``DONE_DIR/<k>`` created by an atomic rename. A killed run
   leaves at most chunks without a marker, which the next run computes again;
3. on a rerun of the same command, skips the chunks that have a marker. A store whose record differs
   (another input, checkpoint or request) is refused, naming what differs; ``overwrite`` starts over.

Peak memory is bounded by one chunk (inputs, outputs and the network's activations of one batch), not by
the number of steps. Chunks are independent, so ``metasr_arch.inference.dask_runner`` sends them to Dask
workers (``upscale_on_dask``); the same ``run_chunk`` runs there.
"""
import hashlib
import json
import os
import shutil
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from metasr_arch.inference.gridded import finish_step, open_for_network, prepare_step
from metasr_arch.inference.runner import check_max_pixels, run_network
from metasr_arch.ops.geometry import resolve_scale
from metasr_arch.utils.finite import nonfinite_summary
from metasr_arch.utils.gridded_io import GriddedSource, output_dataset, output_grid, require_xarray
from metasr_arch.utils.memory import head_bytes, memory_limit
from metasr_arch.utils.naming import Request, request_tag

RUN_ATTR = 'metasr_run'
DONE_DIR = '.metasr_done'
# The default batch keeps one forward's estimated memory (``memory.head_bytes``) under this share of
# the memory limit, and at most MAX_DEFAULT_BATCH steps: beyond that a CPU gains nothing per step.
BATCH_MEMORY_SHARE = 0.25
MAX_DEFAULT_BATCH = 16
# On the CPU a batch pays only while one forward's working set stays small: measured side by side
# (BENCHMARKS.md, archive-scale inference), 64 steps of 96 x 144 -> 721 x 1440 (head estimate 69 MiB a
# step) took 90 s at batch 1 and 225 s at batch 16. The CPU default keeps a forward's estimate under this.
CPU_BATCH_BYTES = 64 * 2**20
# ``--compile`` backends; a bare ``--compile`` is the first
COMPILE_BACKENDS = ('torch', 'onnxruntime')
# The default (``compile='auto'``): ONNX Runtime for runs of at least this many same-size steps on the CPU.
# Measured side by side (BENCHMARKS.md, "Fast paths"): ONNX Runtime 1.16x faster than torch.compile and
# 1.6-1.9x faster than eager; its one-off export (1 s for the demo network, 60 s for the full-size MetaRDN)
# is repaid after about 6 steps of either, so 16 leaves a margin.
AUTO_COMPILE_MIN_STEPS = 16
# how each path is recorded in a store's record ('compiled' for torch: the name of stores written before
# the ONNX Runtime backend existed, so they still resume)
_RECORDED_BACKEND = {None: 'eager', 'torch': 'compiled', 'onnxruntime': 'onnxruntime'}


def compile_backend(value) -> Optional[str]:
    """``ArchiveJob.compile`` -> None (eager), 'torch' or 'onnxruntime' (ValueError naming ``--compile``);
    'auto' must be resolved first (``resolve_auto_compile``)."""
    if value is None or value is False or value == 'off':
        return None
    if value is True:
        return COMPILE_BACKENDS[0]
    if value in COMPILE_BACKENDS:
        return value
    raise ValueError(f'--compile {value!r}: give one of {", ".join(COMPILE_BACKENDS)} (a bare --compile is torch)')


@dataclass(frozen=True)
class NetworkSpec:
    """How a process loads the network (Dask workers load it once each): the CLI's checkpoint arguments."""
    ckpt: str
    opt: Optional[str] = None
    param_key: Optional[str] = None
    impl: Optional[str] = None
    device: str = 'cpu'
    allow_arch: Tuple[str, ...] = ()
    imports: Tuple[str, ...] = ()

    def load(self):
        """The network, in eval mode on ``device`` (``checkpoint.load_network``; ``allow_arch``: the CLI's
        ``--allow-arch``; ``imports``: its ``--import`` modules, imported again in each worker process)."""
        from metasr_arch.inference.checkpoint import load_network, set_impl
        from metasr_arch.utils.fork_imports import import_arch_modules
        allowed = (*self.allow_arch, *import_arch_modules(self.imports))
        net = load_network(self.opt, self.ckpt, self.param_key, torch.device(self.device), allowed)
        if self.impl is not None and not set_impl(net, self.impl):
            raise ValueError(f'--impl {self.impl}: the network has no MetaUpsample head')
        return net


@dataclass(frozen=True)
class ArchiveJob:
    """One input upscaled at one request into one Zarr store (everything but the network).

    ``batch``: steps per forward (None: ``default_batch``); ``chunk``: steps per Zarr chunk of a new
    store (None: the batch); an existing store keeps its chunks. ``compile``: the fast path
    (``compile_backend``): False/None eager, True or 'torch' ``torch.compile``, 'onnxruntime' ONNX Runtime.
    """
    path: str
    out_path: str
    request: Request
    variables: Optional[Tuple[str, ...]] = None
    time_slice: Optional[Tuple] = None
    tile: Optional[int] = None
    tile_overlap: int = 0
    fp16: bool = False
    bf16: bool = False
    compile: Union[bool, str, None] = False
    batch: Optional[int] = None
    chunk: Optional[int] = None
    max_pixels: Optional[int] = None


@dataclass
class StorePlan:
    """An output store ready to be filled: chunk k holds steps ``chunks[k]`` = [start, stop)."""
    out_path: str
    variables: List[str]
    chunks: List[Tuple[int, int]]
    done: List[int]
    batch: int
    in_shape: Tuple[int, int, int]
    out_hw: Tuple[int, int]
    has_time: bool
    fill: str = 'nearest'
    extra: Dict = field(default_factory=dict)

    @property
    def pending(self) -> List[int]:
        done = set(self.done)
        return [k for k in range(len(self.chunks)) if k not in done]

    @property
    def steps(self) -> int:
        return self.chunks[-1][1] if self.chunks else 0


@contextmanager
def quiet_zarr():
    """Silence zarr's notes on this layout: the marker folder ``DONE_DIR`` is no Zarr node, and Zarr 3
    calls consolidated metadata an extension (xarray writes it so that opening a store is one read)."""
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='.*(not recognized as a component|Consolidated metadata).*')
        yield


# --------------------------------------------------------------------------- the run's record
def _file_identity(path: str) -> Dict:
    """Size and modification time of a file, or of every file of a folder (a Zarr store): what changes
    when the data change, read without reading the data."""
    if os.path.isdir(path):
        size, mtime, count = 0, 0, 0
        for root, _, files in os.walk(path):
            for name in files:
                st = os.stat(os.path.join(root, name))
                size, mtime, count = size + st.st_size, max(mtime, st.st_mtime_ns), count + 1
        return {'path': os.path.abspath(path), 'bytes': size, 'files': count, 'mtime_ns': mtime}
    st = os.stat(path)
    return {'path': os.path.abspath(path), 'bytes': st.st_size, 'mtime_ns': st.st_mtime_ns}


def file_sha256(path: str) -> str:
    """Hex SHA-256 of a file (the checkpoint: a store is refused when its weights change)."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def run_record(job: ArchiveJob, src: GriddedSource, variables: Sequence[str], checkpoint: Dict) -> Dict:
    """What a store was made from; a rerun must match it key by key (``check_record``).

    Args:
        checkpoint: identifies the weights, e.g. ``{'sha256': ..., 'param_key': ..., 'impl': ...}``.
    """
    times = [str(src.time_value(i)) for i in range(len(src))]
    return {
        'input': [_file_identity(p) for p in src.paths],
        'variables': list(variables),
        'time steps': {'count': len(times), 'first': times[0], 'last': times[-1],
                       'sha256': hashlib.sha256('\n'.join(times).encode()).hexdigest()},
        'checkpoint': checkpoint,
        'request': {'tag': request_tag(job.request), 'tile': job.tile,
                    'tile_overlap': job.tile_overlap if job.tile else None, 'fp16': job.fp16, 'bf16': job.bf16,
                    'backend': _RECORDED_BACKEND[compile_backend(job.compile)]},
    }


def check_record(stored: Dict, record: Dict, out_path: str) -> None:
    """Refuse (ValueError naming every differing key) to continue a store made by another run."""
    differs = [key for key in record if stored.get(key) != record[key]]
    if differs:
        details = '; '.join(f'{key}: store {json.dumps(stored.get(key))} vs this run {json.dumps(record[key])}'
                            for key in differs)
        raise ValueError(f'{out_path} was written by a different run ({", ".join(differs)} changed): {details}. '
                         'Pass --overwrite to start it over, or write to another output')


# --------------------------------------------------------------------------- planning the store
def default_batch(net, in_shape: Tuple[int, int, int], out_hw: Tuple[int, int], device, steps: int) -> int:
    """Steps per forward: the most (up to MAX_DEFAULT_BATCH and ``steps``) whose ``memory.head_bytes``
    estimate stays within BATCH_MEMORY_SHARE of the memory limit (``memory.memory_limit``) and, on the CPU,
    within CPU_BATCH_BYTES (at least 1)."""
    from metasr_arch.archs.meta_upsample_arch import MetaUpsample
    head = next((m for m in net.modules() if isinstance(m, MetaUpsample)), None)
    c_in, c_out, k = (head.in_channels, head.out_channels, head.kernel_size) if head else (0, in_shape[0], 1)
    per_step = head_bytes(1, c_in, c_out, in_shape[1], in_shape[2], out_hw[0], out_hw[1], k)
    limit, _ = memory_limit(device)
    fits = MAX_DEFAULT_BATCH if limit is None else int(BATCH_MEMORY_SHARE * limit // max(per_step, 1))
    if torch.device(device).type == 'cpu':
        fits = min(fits, int(CPU_BATCH_BYTES // max(per_step, 1)))
    return max(1, min(MAX_DEFAULT_BATCH, steps, fits))


def _done_chunks(out_path: str) -> List[int]:
    folder = os.path.join(out_path, DONE_DIR)
    if not os.path.isdir(folder):
        return []
    return sorted(int(n) for n in os.listdir(folder) if n.isdigit())


def mark_done(out_path: str, k: int) -> None:
    """Record chunk ``k`` as written: an empty file renamed into place (atomic on POSIX and Windows)."""
    folder = os.path.join(out_path, DONE_DIR)
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f'.{k}.{os.getpid()}.tmp')
    with open(tmp, 'w', encoding='utf-8'):
        pass
    os.replace(tmp, os.path.join(folder, str(k)))


def open_source(net, job: ArchiveJob):
    """The input of ``job`` as ``net`` reads it (``gridded.open_for_network``): (src, variables, offset,
    scale, fill); opened lazily."""
    time_slice = list(job.time_slice) if job.time_slice is not None else None
    return open_for_network(net, job.path, job.variables, time_slice)


def prepare_store(net, job: ArchiveJob, checkpoint: Dict, overwrite: bool = False,
                  device='cpu') -> StorePlan:
    """Create ``job.out_path`` (or check an existing one against this run) and return what is left to do.

    Raises:
        ValueError: a store of another run (without ``overwrite``), a path that is not a store of this
        tool, or a request refused by ``--max-pixels``.
    """
    xr = require_xarray()
    import dask.array as da
    src, variables, _, _, fill = open_source(net, job)
    in_shape = (len(variables), len(src.lat), len(src.lon))
    kind, value = job.request
    check_max_pixels(in_shape, job.request, job.max_pixels)
    spec = resolve_scale(in_shape[1], in_shape[2], value if kind == 'scale' else None,
                         value if kind == 'size' else None)
    out_hw = (spec.out_h, spec.out_w)
    record = run_record(job, src, variables, checkpoint)
    has_time = src.time_value(0) is not None
    steps = len(src)
    batch = job.batch or default_batch(net, in_shape, out_hw, device, steps)
    out = job.out_path
    if os.path.exists(out) and overwrite:
        _remove_store(out)
    if os.path.exists(out):
        try:
            with quiet_zarr():
                stored_ds = xr.open_zarr(out, consolidated=None)
        except Exception as err:  # noqa: BLE001 (zarr raises many types for a folder that is no store)
            raise ValueError(f'{out} exists and is not a Zarr store ({err}); pass --overwrite to replace it') from err
        if RUN_ATTR not in stored_ds.attrs:
            raise ValueError(f'{out} is a Zarr store not written by metasr_arch.infer (no {RUN_ATTR} record); '
                             'pass --overwrite to replace it')
        check_record(json.loads(stored_ds.attrs[RUN_ATTR]), record, out)
        chunk = stored_ds[variables[0]].encoding.get('chunks', (steps,))[0] if has_time else 1
    else:
        chunk = (job.chunk or batch) if has_time else 1
        out_lat, out_lon = output_grid(src, *out_hw)
        lazy = (da.zeros((steps, len(variables)) + out_hw, dtype=np.float32, chunks=(chunk, 1) + out_hw) if has_time
                else da.zeros((len(variables),) + out_hw, dtype=np.float32, chunks=(1,) + out_hw))
        # output_dataset sets the CF encodings (dtype, _FillValue): chunks not yet written read as missing
        ds = output_dataset(src, variables, lazy, out_lat, out_lon)
        ds.attrs[RUN_ATTR] = json.dumps(record)
        for v in variables:
            ds[v].encoding['chunks'] = ((chunk,) if has_time else ()) + out_hw
        _remove_stale_templates(out)
        tmp = f'{out.rstrip(os.sep)}.{os.getpid()}.tmp'
        if os.path.exists(tmp):
            _remove_store(tmp)
        try:
            with quiet_zarr():
                ds.to_zarr(tmp, mode='w', compute=False)
            os.replace(tmp, out)  # the store appears complete or not at all
        finally:
            if os.path.exists(tmp):
                _remove_store(tmp)
    chunks = [(a, min(a + chunk, steps)) for a in range(0, steps, chunk)]
    return StorePlan(out, variables, chunks, [k for k in _done_chunks(out) if k < len(chunks)], batch, in_shape,
                     out_hw, has_time, fill)


def _remove_stale_templates(out: str) -> None:
    """Remove ``<out>.<pid>.tmp`` folders of runs killed while creating the store (their process is gone)."""
    import glob
    for stale in glob.glob(glob.escape(out.rstrip(os.sep)) + '.*.tmp'):
        pid = stale.rsplit('.', 2)[-2]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            _remove_store(stale)
        except (PermissionError, OSError):  # alive (another user's) or not ours to judge
            pass


def _remove_store(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path)
    else:
        os.remove(path)


# --------------------------------------------------------------------------- computing chunks
class Forward:
    """``(N, C, h, w) -> (N, C, H, W)`` for one job: eager ``run_network``, or with ``job.compile`` the
    network frozen at the request and input size and run at a fixed batch: channels-last and compiled once
    (``compiled.compile_frozen``, 'torch'), or exported to ONNX and run by one ONNX Runtime session
    (``onnx_backend.onnx_frozen``, 'onnxruntime'; on ``device``, with torch's number of threads).
    """

    def __init__(self, net, job: ArchiveJob, in_hw: Tuple[int, int], batch: int, device='cpu'):
        self.net, self.job, self.batch = net, job, batch
        kind, value = job.request
        self.scale, self.out_size = (value, None) if kind == 'scale' else (None, value)
        self.compiled = None
        backend = compile_backend(job.compile)
        if backend == 'torch':
            from metasr_arch.inference.compiled import compile_frozen
            self.compiled = compile_frozen(net, job.request, in_hw, job)
        elif backend == 'onnxruntime':
            from metasr_arch.inference.onnx_backend import onnx_frozen
            self.compiled = onnx_frozen(net, job.request, in_hw, batch, device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.compiled is not None:
            n = x.shape[0]
            if n < self.batch:  # pad the last, short batch: one compiled shape for the whole run
                x = torch.cat([x, x[-1:].expand(self.batch - n, -1, -1, -1)])
            return self.compiled(x)[:n]
        return run_network(self.net, x, self.scale, self.out_size, self.job.tile, self.job.tile_overlap,
                           self.job.fp16, self.job.bf16)


def compute_chunk(net, job: ArchiveJob, source, plan: StorePlan, a: int, b: int,
                  forward: Optional[Forward] = None, device='cpu',
                  on_steps: Optional[Callable[[int], None]] = None) -> np.ndarray:
    """Steps [a, b) in forwards of ``plan.batch`` (``source``: ``open_source``'s tuple).

    Returns:
        (b - a, C, H, W) float32 in physical units, rows in the file's order, NaN where the input is missing.
    Raises:
        NonFiniteError (a ValueError) when the network gives NaN or inf: nothing of the chunk is written.
    """
    from metasr_arch.utils.finite import NonFiniteError
    src, _, offset, scale, fill = source
    forward = forward or Forward(net, job, plan.in_shape[1:], plan.batch, device)
    out = np.empty((b - a, len(plan.variables)) + plan.out_hw, dtype=np.float32)
    for s in range(a, b, plan.batch):
        e = min(s + plan.batch, b)
        items = [prepare_step(src, i, offset, scale, fill) for i in range(s, e)]
        y = forward(torch.from_numpy(np.stack([x for x, _ in items])).to(device))
        summary = nonfinite_summary(y)
        if summary:
            raise NonFiniteError(f'the network gave {summary} for steps {s}..{e - 1}; nothing of them is written')
        y = y.cpu().numpy().astype(np.float64) * scale[:, None, None] + offset[:, None, None]
        for j, (_, valid) in enumerate(items):
            out[s - a + j] = finish_step(y[j], valid, src)
        if on_steps is not None:
            on_steps(e - s)
    return out


def write_chunk(plan: StorePlan, k: int, fields: np.ndarray) -> None:
    """Write chunk ``k`` (its region of the store), then record it as done (``mark_done``)."""
    xr = require_xarray()
    a, b = plan.chunks[k]
    with quiet_zarr():
        dims = xr.open_zarr(plan.out_path, consolidated=None)[plan.variables[0]].dims
    region = xr.Dataset({v: (dims, fields[:, c] if plan.has_time else fields[0, c])
                         for c, v in enumerate(plan.variables)})
    # every region is whole chunks: writers of different chunks (Dask workers) never share a Zarr chunk
    with quiet_zarr():
        region.to_zarr(plan.out_path, region={d: slice(a, b) if d == 'time' else slice(0, region.sizes[d])
                                              for d in dims}, mode='r+', consolidated=False)
    mark_done(plan.out_path, k)


def run_chunk(net, job: ArchiveJob, plan: StorePlan, k: int, source=None,
              forward: Optional[Forward] = None, device='cpu', on_steps=None) -> int:
    """Compute, write and record chunk ``k`` (``source``: ``open_source``'s tuple, opened when None);
    returns its number of steps."""
    src = source or open_source(net, job)
    a, b = plan.chunks[k]
    write_chunk(plan, k, compute_chunk(net, job, src, plan, a, b, forward, device, on_steps))
    return b - a


# --------------------------------------------------------------------------- progress
def peak_rss_bytes() -> Optional[int]:
    """This process's peak resident memory (``getrusage``), or None where unavailable."""
    try:
        import resource
        import sys
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == 'darwin' else peak * 1024  # macOS reports bytes, Linux KiB
    except (ImportError, OSError):
        return None


class Progress:
    """Steps done: a tqdm bar (steps/s, ETA) on a terminal, plain log lines every ``every`` seconds
    otherwise (files, CI logs, batch jobs), nothing when ``quiet``; ``summary()`` for the end."""

    def __init__(self, total: int, desc: str, quiet: bool = False, stream=None, every: float = 30.0,
                 tty: Optional[bool] = None):
        import sys
        self.total, self.desc, self.quiet, self.every = total, desc, quiet, every
        self.stream = stream or sys.stderr
        self.done = self.skipped = 0
        self.start = self.last = time.monotonic()
        tty = self.stream.isatty() if tty is None else tty
        self.bar = None
        if tty and not quiet:
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc=desc, unit='step', file=self.stream, dynamic_ncols=True)

    def skip(self, n: int) -> None:
        """``n`` steps already done by an earlier run."""
        self.skipped += n
        if self.bar is not None:
            self.bar.update(n)
        self._log(force=n > 0, note=f'{n} step(s) already written by an earlier run')

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        self._log()

    def _log(self, force: bool = False, note: str = '') -> None:
        if self.bar is not None or self.quiet:
            return
        now = time.monotonic()
        if not force and now - self.last < self.every and self.done + self.skipped < self.total:
            return
        self.last = now
        rate = self.done / max(now - self.start, 1e-9)
        left = self.total - self.done - self.skipped
        eta = f', ETA {left / rate:.0f} s' if rate > 0 and left else ''
        print(f'{self.desc}: {self.done + self.skipped}/{self.total} steps, {rate:.3g} steps/s{eta}'
              + (f' ({note})' if note else ''), file=self.stream, flush=True)

    def summary(self, peak: Optional[int] = None) -> str:
        """``'<desc>: N steps in T s (R steps/s), peak memory M'``; printed unless quiet."""
        from metasr_arch.utils.memory import format_bytes
        if self.bar is not None:
            self.bar.close()
        elapsed = time.monotonic() - self.start
        peak = peak if peak is not None else peak_rss_bytes()
        text = (f'{self.desc}: {self.done} step(s) in {elapsed:.1f} s ({self.done / max(elapsed, 1e-9):.3g} steps/s)'
                + (f', {self.skipped} already done' if self.skipped else '')
                + (f', peak memory {format_bytes(peak)}' if peak else ''))
        if not self.quiet:
            print(text, file=self.stream, flush=True)
        return text


# --------------------------------------------------------------------------- the whole run
def checkpoint_identity(spec: NetworkSpec) -> Dict:
    """What identifies the weights in a run's record: the checkpoint file's hash and how it is read."""
    return {'sha256': file_sha256(spec.ckpt), 'param_key': spec.param_key, 'impl': spec.impl,
            'opt': None if spec.opt is None else file_sha256(spec.opt)}


def resolve_auto_compile(net, job: ArchiveJob, device='cpu') -> ArchiveJob:
    """``job`` with ``compile='auto'`` (the CLI's default) made concrete: 'onnxruntime' for a run of at least
    ``AUTO_COMPILE_MIN_STEPS`` steps on the CPU in float32 without tiles when ONNX Runtime is installed, else
    eager (False). Other values are returned unchanged. The choice is recorded in the store like an explicit
    ``--compile``, so a rerun of the same command makes the same choice and resumes."""
    if job.compile != 'auto':
        return job
    from metasr_arch.inference.onnx_backend import OnnxRuntimeMissingError, require_onnxruntime
    choice = False
    if torch.device(device).type == 'cpu' and not (job.tile or job.fp16 or job.bf16):
        src = open_source(net, job)[0]
        if len(src) >= AUTO_COMPILE_MIN_STEPS:
            try:
                require_onnxruntime()
                choice = 'onnxruntime'
            except OnnxRuntimeMissingError:
                pass
    return replace(job, compile=choice)


def upscale_archive(net, job: ArchiveJob, spec: NetworkSpec, overwrite: bool = False, quiet: bool = False,
                    device='cpu', stream=None, runner: Optional[Callable] = None) -> Dict:
    """Upscale ``job`` into its Zarr store; resumes an interrupted store of the same run.

    Args:
        net: the loaded network (plans the store; computes the chunks unless ``runner`` is given).
        spec: how the checkpoint is read (the run's record; Dask workers load the network from it).
        runner: ``runner(job, spec, plan, progress) -> peak RSS or None`` computes ``plan.pending``
            elsewhere (``dask_runner.upscale_on_dask`` passes Dask's); default: in this process.
    Returns:
        {'steps': computed, 'skipped': already done, 'chunks', 'seconds', 'summary', 'batch'}.
    """
    job = resolve_auto_compile(net, job, device)
    plan = prepare_store(net, job, checkpoint_identity(spec), overwrite, device)
    progress = Progress(plan.steps, os.path.basename(job.out_path.rstrip(os.sep)), quiet, stream)
    progress.skip(sum(plan.chunks[k][1] - plan.chunks[k][0] for k in plan.done))
    peak = None
    if runner is not None:
        peak = runner(job, spec, plan, progress)
    else:
        src = open_source(net, job)
        forward = Forward(net, job, plan.in_shape[1:], plan.batch, device) if plan.pending else None
        for k in plan.pending:
            run_chunk(net, job, plan, k, src, forward, device, progress.update)
    text = progress.summary(peak)
    return {'steps': progress.done, 'skipped': progress.skipped, 'chunks': len(plan.chunks),
            'seconds': time.monotonic() - progress.start, 'summary': text, 'batch': plan.batch}


def job_dict(job: ArchiveJob) -> Dict:
    """``job`` as plain data (logs, tests)."""
    return asdict(job)
