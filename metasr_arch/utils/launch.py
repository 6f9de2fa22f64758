"""Running BasicSR's train/test pipelines with the plugin registered.

BasicSR's ``init_dist`` assumes one CUDA device per process (it calls ``torch.cuda.set_device`` and
uses NCCL). ``patch_init_dist`` wraps it so that ``--launcher pytorch`` / ``slurm`` also work on CPU
machines (gloo backend) and tolerate an already-initialised process group; on GPU machines it defers to
BasicSR unchanged.
"""
import os
import sys
from typing import Callable, Optional, Sequence

import torch
import torch.distributed as dist

import metasr_arch  # noqa: F401  (registers the plugin before BasicSR builds anything)


def _cpu_aware_init_dist(original: Callable) -> Callable:

    def init_dist(launcher: str, backend: str = 'nccl', **kwargs) -> None:
        if dist.is_available() and dist.is_initialized():
            return
        if torch.cuda.is_available():
            original(launcher, backend, **kwargs)
            return
        if launcher == 'slurm':  # let BasicSR's slurm logic set RANK/WORLD_SIZE/MASTER_* first
            os.environ.setdefault('RANK', os.environ.get('SLURM_PROCID', '0'))
            os.environ.setdefault('WORLD_SIZE', os.environ.get('SLURM_NTASKS', '1'))
            os.environ.setdefault('MASTER_PORT', str(kwargs.get('port') or 29500))
            os.environ.setdefault('MASTER_ADDR', '127.0.0.1')
        elif launcher != 'pytorch':
            raise ValueError(f"launcher must be 'pytorch' or 'slurm', got {launcher!r}")
        dist.init_process_group(backend='gloo')

    return init_dist


def patch_init_dist() -> None:
    """Install the CPU-aware ``init_dist`` into ``basicsr.utils.options`` (idempotent)."""
    import basicsr.utils.options as options
    if not getattr(options.init_dist, '_metasr_patched', False):
        patched = _cpu_aware_init_dist(options.init_dist)
        patched._metasr_patched = True
        options.init_dist = patched


def patch_load_resume_state() -> None:
    """Make ``basicsr.train.load_resume_state`` work without CUDA.

    BasicSR maps the resumed state onto ``torch.cuda.current_device()``, which fails on CPU machines,
    and its ``torch.load`` predates ``weights_only``. On CPU-only machines the wrapper loads onto the
    CPU with ``weights_only=True`` (training states hold only optimizer and scheduler state dicts, which
    load without running pickled code); elsewhere BasicSR's function runs unchanged.
    """
    import basicsr.train as train
    if getattr(train.load_resume_state, '_metasr_patched', False):
        return
    original = train.load_resume_state

    def load_resume_state(opt):
        if torch.cuda.is_available():
            return original(opt)
        real_load = train.torch.load
        real_device = torch.cuda.current_device
        try:
            train.torch.load = lambda f, map_location=None, **kw: real_load(f, map_location='cpu', weights_only=True)
            torch.cuda.current_device = lambda: 0
            return original(opt)
        finally:
            train.torch.load = real_load
            torch.cuda.current_device = real_device

    load_resume_state._metasr_patched = True
    train.load_resume_state = load_resume_state


def experiment_root() -> str:
    """Folder under which experiments/, results/ and tb_logger/ go: $METASR_ROOT or the working directory."""
    return os.path.abspath(os.environ.get('METASR_ROOT', os.getcwd()))


def run_pipeline(pipeline: Callable[[str], None], argv: Optional[Sequence[str]] = None) -> None:
    """Run a BasicSR pipeline (it parses ``sys.argv``) with the plugin registered."""
    if argv is not None:
        sys.argv = [sys.argv[0]] + list(argv)
    patch_init_dist()
    patch_load_resume_state()
    pipeline(experiment_root())
