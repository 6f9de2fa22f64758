"""Running BasicSR's train/test pipelines with the plugin registered.

BasicSR's ``init_dist`` assumes one CUDA device per process (it calls ``torch.cuda.set_device`` and
uses NCCL). ``patch_init_dist`` wraps it so that ``--launcher pytorch`` / ``slurm`` also work on CPU
machines (gloo backend) and tolerate an already-initialised process group; on GPU machines it defers to
BasicSR unchanged. ``patch_init_dist`` also installs the whole-file options check into BasicSR's
``parse_options`` (``checked_parse_options``), so a fork's patched or hooked train.py checks as the
plugin's commands do. ``run_pipeline`` also makes every ``torch.load`` of the pipeline read weights
only (a crafted resume state or checkpoint cannot run code), resumes ``--auto_resume`` from the newest
complete training state, and reports a file it cannot write in one line.
"""
import errno
import functools
import os
import pickle
import site
import sys
import sysconfig
from collections import OrderedDict
from contextlib import contextmanager
from typing import Callable, Iterator, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

from metasr_arch.utils.atomic import WriteError
from metasr_arch.utils.checkpoint import NotWeightsOnlyError, check_weights_only_file, err_detail, file_name
from metasr_arch.utils.fork_imports import import_arch_modules, pop_import_args
from metasr_arch.utils.data_position import patch_enlarged_sampler
from metasr_arch.utils.options import OptionError
from metasr_arch.utils.options_check import check_options
from metasr_arch.utils.options_yaml import adopt_numbers, load_options
from metasr_arch.utils.trust import is_path_key

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
    """Install the CPU-aware ``init_dist`` and the whole-file options check (``patch_parse_options``) into
    ``basicsr.utils.options`` (idempotent).

    The one line a fork's train.py gets (``scripts/install_into_basicsr_fork.py``) and the startup hook
    call this, so a fork's own scripts check options as ``python -m metasr_arch.train`` does.
    """
    import basicsr.utils.options as options
    if not getattr(options.init_dist, '_metasr_patched', False):
        patched = _cpu_aware_init_dist(options.init_dist)
        patched._metasr_patched = True
        options.init_dist = patched
    patch_parse_options()


@contextmanager
def weights_only_loads() -> Iterator[None]:
    """Inside the block every ``torch.load`` reads with ``weights_only=True``, whatever its caller passes.

    BasicSR's own loads (resume states in ``train.py``, ``BaseModel.load_network``, VGG weights) predate
    ``weights_only`` and follow torch's default, which ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` (or a torch
    older than 2.6) turns into full unpickling; within the plugin's pipelines no file can run code. A file
    refused raises ``NotWeightsOnlyError`` (an ``UnpicklingError``) naming it.
    """
    real = torch.load
    if getattr(real, '_metasr_weights_only', False):
        yield
        return

    @functools.wraps(real)
    def load(f, map_location=None, *args, **kwargs):
        kwargs['weights_only'] = True
        try:
            return real(f, map_location, *args, **kwargs)
        except NotWeightsOnlyError:
            raise
        except pickle.UnpicklingError as err:  # torch's message does not say which file
            raise NotWeightsOnlyError(file_name(f), err) from None

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

        auto = opt.get('auto_resume')
        try:
            torch.load = load
            if not cuda:
                torch.cuda.current_device = lambda: 0
            if auto:  # BasicSR's own search takes the highest-numbered file, complete or not
                opt['auto_resume'] = False
                found = newest_complete_state(opt)
                if found is None:
                    return None
                opt['path']['resume_state'] = found
            return original(opt)
        finally:
            torch.load, torch.cuda.current_device = real_load, real_device
            if auto:
                opt['auto_resume'] = True

    load_resume_state._metasr_patched = True
    train.load_resume_state = load_resume_state


def _is_install_folder(path: str) -> bool:
    """True for a site-packages folder: BasicSR's own ``train.py`` run from its install (``python -m
    basicsr.train``) takes the folder above the package as its root, where no one looks for experiments."""
    path = os.path.realpath(path)
    sites = list(getattr(site, 'getsitepackages', lambda: [])()) + [site.getusersitepackages()]
    sites += [sysconfig.get_paths()[key] for key in ('purelib', 'platlib')]
    return path in {os.path.realpath(s) for s in sites} or os.path.basename(path) in ('site-packages',
                                                                                     'dist-packages')


class _PinnedRoot(OrderedDict):
    """Options whose ``root_path`` stays the one ``parse_options`` chose: BasicSR's train_pipeline assigns its
    own (the install folder) right after parsing, and would put ``tb_logger/`` there."""

    def __setitem__(self, key, value):
        if key == 'root_path' and key in self:
            return
        super().__setitem__(key, value)


def _strict_read(is_train: bool):
    """The ``-opt`` file of ``sys.argv`` read with the number grammar and checked whole (None without -opt)."""
    import argparse
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument('-opt', type=str, default=None)
    known, _ = parser.parse_known_args()
    if known.opt is None:
        return None  # BasicSR's own parser reports the missing -opt
    raw = load_options(known.opt)
    check_options(raw, is_train)
    return raw


def _network_files(opt) -> Iterator[Tuple[str, str]]:
    """(option, file) for every existing file the options name for network weights: ``path.pretrain_network_*``
    and path options (``load_path``, ...) anywhere inside ``network_*``."""
    for key, value in ((opt.get('path') or {}).items()):
        if isinstance(key, str) and key.startswith('pretrain_network') and isinstance(value, str):
            yield f'path.{key}', value

    def walk(node, where):
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, value in items:
            name = f'{where}[{key}]' if isinstance(key, int) else f'{where}.{key}'
            if isinstance(value, str) and isinstance(key, str) and is_path_key(key):
                yield name, value
            else:
                yield from walk(value, name)

    for key, value in opt.items():
        if isinstance(key, str) and key.startswith('network_'):
            yield from walk(value, key)


def check_network_files(opt) -> None:
    """Refuse, before anything is created on disk, network weights that a weights-only load would refuse
    (``OptionError`` naming the option and the file). A fork's BasicSR loads them with torch's default
    loader, which ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` makes unpickle everything: this check runs first."""
    for option, path in _network_files(opt):
        if os.path.isfile(path):
            try:
                check_weights_only_file(path)
            except NotWeightsOnlyError as err:
                raise OptionError(f'{option}: {err}') from None


def checked_parse_options(original: Callable) -> Callable:
    """Wrap a BasicSR ``parse_options(root_path, is_train)`` with the whole-file options check.

    Before BasicSR reads anything, the ``-opt`` file is read with the number grammar
    (``utils.options_yaml``) and checked (``utils.options_check``); after BasicSR's parsing (``--force_yml``
    applied) the result is checked again and grammar numbers YAML 1.1 left as text (``1e-4``) become
    floats; network weights the options name are checked to load weights-only (``check_network_files``).
    A problem ends the process with ``error: ...`` and exit status 2, before anything is created on disk.
    A root inside site-packages (``python -m basicsr.train``) is replaced by ``experiment_root()``.
    """
    if getattr(original, '_metasr_patched', False):
        return original

    def parse_options(root_path, is_train=True):
        redirect = _is_install_folder(root_path)
        if redirect:
            root_path = experiment_root()
        try:
            raw = _strict_read(is_train)
            opt, args = original(root_path, is_train=is_train)
            if raw is not None:
                adopt_numbers(opt, raw)
            check_options(opt, is_train)
            check_network_files(opt)
        except OptionError as err:  # a whole-run problem: a message, no traceback, exit status 2
            print(f'error: {err}', file=sys.stderr)
            raise SystemExit(2) from None
        if redirect:
            opt = _PinnedRoot(opt)
            opt['root_path'] = root_path
        return opt, args

    parse_options._metasr_patched = True
    return parse_options


def _readable_state(path: str) -> Optional[str]:
    """Why the training state at ``path`` cannot be resumed from, or None when it loads (weights only)."""
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as err:  # noqa: BLE001  (truncated zip, refused pickle, I/O error: all mean "skip it")
        return f'unreadable ({type(err).__name__})'
    if not isinstance(state, dict) or not isinstance(state.get('iter'), int) or 'optimizers' not in state:
        return 'not a training state'
    return None


def _networks_present(opt, iteration: int) -> Optional[str]:
    """Why the checkpoints of ``iteration`` are unusable (missing, not a checkpoint), or None."""
    import zipfile
    models = opt['path'].get('models') or ''
    labels = [key[len('network_'):] for key in opt if isinstance(key, str) and key.startswith('network_')]
    for label in labels:
        stem = os.path.join(models, f'net_{label}_{iteration}')
        if os.path.isfile(stem + '.pth'):
            if not zipfile.is_zipfile(stem + '.pth'):  # torch.save writes a zip: a cut file has no directory
                return f'{os.path.basename(stem)}.pth is incomplete'
        elif not os.path.isfile(stem + '.safetensors'):
            return f'{os.path.basename(stem)}.pth is missing'
    return None


def newest_complete_state(opt) -> Optional[str]:
    """The newest ``training_states/<iter>.state`` that loads and has its network checkpoints, or None.

    Skipped files (a truncated latest state, a stray ``latest.state``, a state whose ``net_g_<iter>.pth``
    is missing) are reported in one warning line on stderr (the run's logger does not exist yet).
    """
    folder = opt['path'].get('training_states')
    if not folder or not os.path.isdir(folder):
        return None
    candidates, skipped = [], []
    for name in os.listdir(folder):
        stem, ext = os.path.splitext(name)
        if ext != '.state':
            continue
        if stem.isdigit():
            candidates.append((int(stem), name))
        else:
            skipped.append(f'{name} (not <iter>.state)')
    found = None
    for iteration, name in sorted(candidates, reverse=True):
        path = os.path.join(folder, name)
        problem = _readable_state(path) or _networks_present(opt, iteration)
        if problem is None:
            found = path
            break
        skipped.append(f'{name} ({problem})')
    if skipped:
        outcome = f'resuming from {found}' if found else 'no complete state left: starting from iteration 0'
        print(f'warning: --auto_resume skipped {", ".join(skipped)} in {folder}; {outcome}', file=sys.stderr)
    return found


def patch_parse_options() -> None:
    """Install ``checked_parse_options`` into ``basicsr.utils.options`` (which a train.py run as a script
    imports from) and into ``basicsr.train`` / ``basicsr.test`` when they are already imported.

    An unknown key (``num_feats``, ``ema_decy``, ``val: scale``) would otherwise be ignored or surface
    as a raw ``KeyError``/``TypeError`` after the experiment folders exist.
    """
    import basicsr.utils.options as options
    options.parse_options = checked_parse_options(options.parse_options)
    for name in ('basicsr.train', 'basicsr.test'):
        module = sys.modules.get(name)
        if module is not None and hasattr(module, 'parse_options'):
            module.parse_options = checked_parse_options(module.parse_options)


WRITE_FAULTS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT})


def experiment_root() -> str:
    """Folder under which experiments/, results/ and tb_logger/ go: $METASR_ROOT or the working directory."""
    return os.path.abspath(os.environ.get('METASR_ROOT', os.getcwd()))


def run_pipeline(pipeline: Callable[[str], None], argv: Optional[Sequence[str]] = None) -> None:
    """Run a BasicSR pipeline (it parses ``sys.argv``) with the plugin registered.

    Every ``torch.load`` in the pipeline reads weights only; problems of the whole run (an unknown
    network option, a refused resume state or pretrained network) end with ``error: ...`` and exit status 2;
    a file refused later in the run (a resumed run's checkpoint) with ``error: ...`` and exit status 1.
    ``--import MODULE`` (repeatable) imports a module that registers archs (a fork's) before the options
    are read.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    patch_init_dist()
    patch_load_resume_state()
    patch_parse_options()
    patch_enlarged_sampler()
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
    except NotWeightsOnlyError as err:  # refused mid-run (checked options name no such file): nothing in it ran
        print(f'error: {err}', file=sys.stderr)
        raise SystemExit(1) from None
    except OSError as err:  # a file the run must write (or read) is out of reach: one line naming it
        if not isinstance(err, WriteError) and err.errno not in WRITE_FAULTS:
            raise
        what = 'could not write' if isinstance(err, WriteError) or err.errno in (errno.ENOSPC, errno.EROFS) \
            else 'cannot access'
        print(f'error: {what} {err.filename or "a file"}: {err.strerror or err} (the run stopped; '
              'files written before are intact)', file=sys.stderr)
        raise SystemExit(1) from None
