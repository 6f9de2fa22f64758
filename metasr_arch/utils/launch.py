"""Running BasicSR's train/test pipelines with the plugin registered.

BasicSR's ``init_dist`` assumes one CUDA device per process (it calls ``torch.cuda.set_device`` and
uses NCCL). ``patch_init_dist`` wraps it so that ``--launcher pytorch`` / ``slurm`` also work on CPU
machines (gloo backend) and tolerate an already-initialised process group; on GPU machines it defers to
BasicSR unchanged. ``run_pipeline`` also makes every ``torch.load`` of the pipeline read weights
only (a crafted resume state or checkpoint cannot run code) and checks the ``network_*`` options
before anything is built.
"""
import functools
import os
import pickle
import sys
from contextlib import contextmanager
from typing import Callable, Iterator, Optional, Sequence

import torch
import torch.distributed as dist

from metasr_arch.utils.checkpoint import err_detail
from metasr_arch.utils.fork_imports import import_arch_modules, pop_import_args
from metasr_arch.utils.options import OptionError, check_network_sections

# No arch is imported here (the ground floor): a fork patched by scripts/install_into_basicsr_fork.py
# imports this module from its basicsr/__init__ (through train.py and test.py), which can run while
# metasr_arch's own archs are half imported (tests/test_training_fork.py). Importing this module runs
# metasr_arch/__init__ first, which registers the plugin.


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


@contextmanager
def weights_only_loads() -> Iterator[None]:
    """Inside the block every ``torch.load`` reads with ``weights_only=True``, whatever its caller passes.

    BasicSR's own loads (resume states in ``train.py``, ``BaseModel.load_network``, VGG weights) predate
    ``weights_only`` and follow torch's default, which ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` (or a torch
    older than 2.6) turns into full unpickling; within the plugin's pipelines no file can run code.
    """
    real = torch.load
    if getattr(real, '_metasr_weights_only', False):
        yield
        return

    @functools.wraps(real)
    def load(f, map_location=None, *args, **kwargs):
        kwargs['weights_only'] = True
        return real(f, map_location, *args, **kwargs)

    load._metasr_weights_only = True
    torch.load = load
    try:
        yield
    finally:
        torch.load = real


def patch_load_resume_state() -> None:
    """Make ``basicsr.train.load_resume_state`` load weights only, and work without CUDA.

    Training states hold tensors, numbers and ``collections.Counter`` (the milestones of BasicSR's
    schedulers), all of which ``weights_only=True`` reads; a state holding anything else is refused with
    an ``OptionError`` naming the file, and nothing in it runs. On CPU-only machines the state is mapped
    onto the CPU (BasicSR maps it onto ``torch.cuda.current_device()``, which fails there).
    """
    import basicsr.train as train
    if getattr(train.load_resume_state, '_metasr_patched', False):
        return
    original = train.load_resume_state

    def load_resume_state(opt):
        cuda = torch.cuda.is_available()
        real_load, real_device = torch.load, torch.cuda.current_device

        def load(f, map_location=None, **kwargs):
            try:
                return real_load(f, map_location=map_location if cuda else 'cpu', weights_only=True)
            except pickle.UnpicklingError as err:
                raise OptionError(f'resume state {f}: refused, it holds objects other than tensors, numbers '
                                  f'and plain containers (loaded with weights_only=True; {err_detail(err)})') from None

        try:
            torch.load = load
            if not cuda:
                torch.cuda.current_device = lambda: 0
            return original(opt)
        finally:
            torch.load, torch.cuda.current_device = real_load, real_device

    load_resume_state._metasr_patched = True
    train.load_resume_state = load_resume_state


def patch_parse_options() -> None:
    """Check every ``network_*`` section right after BasicSR parses the options (train and test).

    An unknown key (a typo such as ``num_feats``) would otherwise surface as a raw ``TypeError`` from
    ``build_network`` after the experiment folders exist; ``check_network_sections`` names the section,
    the key and the closest valid key.
    """
    import basicsr.test as test
    import basicsr.train as train
    for module in (train, test):
        if getattr(module.parse_options, '_metasr_patched', False):
            continue
        original = module.parse_options

        def parse_options(root_path, is_train=True, _original=original):
            opt, args = _original(root_path, is_train=is_train)
            check_network_sections(opt)
            return opt, args

        parse_options._metasr_patched = True
        module.parse_options = parse_options


def experiment_root() -> str:
    """Folder under which experiments/, results/ and tb_logger/ go: $METASR_ROOT or the working directory."""
    return os.path.abspath(os.environ.get('METASR_ROOT', os.getcwd()))


def run_pipeline(pipeline: Callable[[str], None], argv: Optional[Sequence[str]] = None) -> None:
    """Run a BasicSR pipeline (it parses ``sys.argv``) with the plugin registered.

    Every ``torch.load`` in the pipeline reads weights only; problems of the whole run (an unknown
    network option, a refused resume state) end with ``error: ...`` and exit status 2. ``--import MODULE``
    (repeatable) imports a module that registers archs (a fork's) before the options are read.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    patch_init_dist()
    patch_load_resume_state()
    patch_parse_options()
    try:
        # --import MODULE (a fork's archs, by the user's consent) is ours: BasicSR's parser never sees it
        args, modules = pop_import_args(args)
        import_arch_modules(modules)
        sys.argv = [sys.argv[0]] + args
        with weights_only_loads():
            pipeline(experiment_root())
    except OptionError as err:  # a whole-run problem: a message, no traceback, exit status 2
        print(f'error: {err}', file=sys.stderr)
        raise SystemExit(2) from None
