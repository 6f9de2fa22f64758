"""``python -m metasr_arch.hook install | uninstall | status [--target DIR]``: opt-in startup hook.

With the hook installed, every program of the environment that imports ``basicsr`` (BasicSR's own
``basicsr/train.py`` and ``test.py``, a fork's scripts, a notebook) sees this plugin's registrations,
with no change to its files. ``install`` writes two files into the active environment's
site-packages (or ``--target DIR``, any folder that ``site`` processes):

* ``_metasr_arch_hook.py``: a copy of ``metasr_arch/_startup_hook.py`` (a meta-path finder; it
  imports only ``sys`` at start-up and acts when ``basicsr`` is first imported);
* ``metasr_arch_hook.pth``: one line, ``import _metasr_arch_hook``, run by ``site`` at start-up.

``uninstall`` removes both (and their byte-code). Both commands are idempotent.
"""
import argparse
import py_compile
import sys
import sysconfig
from pathlib import Path
from typing import List, Optional, Sequence

from metasr_arch.utils.atomic import atomic_write_bytes

PTH_NAME = 'metasr_arch_hook.pth'
MODULE_NAME = '_metasr_arch_hook'
SOURCE = Path(__file__).with_name('_startup_hook.py')


def default_target() -> Path:
    """The active environment's site-packages (``sysconfig``'s purelib)."""
    return Path(sysconfig.get_paths()['purelib'])


def _files(target: Path) -> List[Path]:
    return [target / PTH_NAME, target / f'{MODULE_NAME}.py']


def _contents() -> List[bytes]:
    header = (b'# Written by `python -m metasr_arch.hook install`; '
              b'`python -m metasr_arch.hook uninstall` removes it.\n')
    return [f'import {MODULE_NAME}\n'.encode(), header + SOURCE.read_bytes()]


def status(target: Optional[Path] = None) -> str:
    """'installed', 'not installed', or 'outdated' (files differ from this version's)."""
    target = Path(target or default_target())
    present = [p.is_file() for p in _files(target)]
    if not any(present):
        return 'not installed'
    if all(present) and [p.read_bytes() for p in _files(target)] == _contents():
        return 'installed'
    return 'outdated'


def install(target: Optional[Path] = None) -> bool:
    """Write the hook into ``target`` (default: site-packages); returns False when it was already there.

    The module goes first and the ``.pth`` last, so an interrupted install never leaves a ``.pth``
    importing a missing module.
    """
    target = Path(target or default_target())
    if status(target) == 'installed':
        return False
    if not target.is_dir():
        raise FileNotFoundError(f'--target {target}: no such folder')
    pth, module = _files(target)
    pth_text, module_text = _contents()
    atomic_write_bytes(module, module_text)
    try:  # byte-code now: start-up then loads it instead of compiling the source (PYTHONDONTWRITEBYTECODE)
        py_compile.compile(str(module), doraise=True)
    except (OSError, py_compile.PyCompileError):
        pass
    atomic_write_bytes(pth, pth_text)
    return True


def uninstall(target: Optional[Path] = None) -> bool:
    """Remove the hook's files from ``target``; returns False when nothing was there."""
    target = Path(target or default_target())
    removed = False
    for path in _files(target) + sorted((target / '__pycache__').glob(f'{MODULE_NAME}.*.pyc')):
        if path.is_file():  # the .pth first (see _files): no start-up import of a removed module
            path.unlink()
            removed = True
    return removed


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog='python -m metasr_arch.hook', description=__doc__.split('\n\n')[0])
    p.add_argument('command', choices=('install', 'uninstall', 'status'))
    p.add_argument('--target', type=Path, default=None,
                   help=f'folder for the hook files (default: this environment\'s site-packages, {default_target()})')
    args = p.parse_args(argv)
    target = args.target or default_target()
    try:
        if args.command == 'install':
            print(('installed the hook in ' if install(target) else 'already installed in ') + str(target))
        elif args.command == 'uninstall':
            print(('removed the hook from ' if uninstall(target) else 'no hook in ') + str(target))
        else:
            print(f'{status(target)}: {target}')
    except OSError as err:
        print(f'error: {target}: {err.strerror or err} (write access needed; or choose --target)', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
