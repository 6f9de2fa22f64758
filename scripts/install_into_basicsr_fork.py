"""Make an existing BasicSR fork run this project's options files.

Usage::

    python scripts/install_into_basicsr_fork.py /path/to/fork/basicsr     # the fork's package folder

inserts one line, ``import metasr_arch  # noqa: F401  (metasr_arch plugin)``, at the top of the fork's
``train.py`` and ``test.py`` (idempotent; ``--undo`` removes it). The import registers MetaSRModel,
MetaRDN, SwinIRMeta and the datasets in the fork's registries before its pipeline builds anything.
This package must be installed in the fork's environment (``pip install -e /path/to/metasr_arch``).
On CPU-only machines with ``--launcher pytorch`` the fork also needs
``metasr_arch.utils.launch.patch_init_dist()``; the inserted line does that as well.
"""
import argparse
import os
import sys
from typing import List, Optional, Sequence

MARK = '# metasr_arch plugin'
LINE = f'import metasr_arch; from metasr_arch.utils.launch import patch_init_dist; patch_init_dist()  {MARK}\n'
FILES = ('train.py', 'test.py')


def _insert_at(lines: List[str]) -> int:
    """After a module docstring / __future__ imports, before the first other statement."""
    i = 0
    while i < len(lines) and (lines[i].startswith('#') or lines[i].startswith('from __future__')
                              or not lines[i].strip()):
        i += 1
    return i


def install(package_dir: str, undo: bool = False) -> List[str]:
    """Patch (or unpatch) ``train.py`` and ``test.py`` of the fork's package folder; returns the files changed."""
    changed = []
    for name in FILES:
        path = os.path.join(package_dir, name)
        if not os.path.isfile(path):
            raise FileNotFoundError(f'{path} not found: pass the fork\'s package folder (the one holding train.py)')
        with open(path) as f:
            lines = f.readlines()
        has = any(MARK in line for line in lines)
        if undo and has:
            lines = [line for line in lines if MARK not in line]
        elif not undo and not has:
            lines.insert(_insert_at(lines), LINE)
        else:
            continue
        with open(path + '.tmp', 'w') as f:
            f.writelines(lines)
        os.replace(path + '.tmp', path)
        changed.append(path)
    return changed


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('package_dir', help="the fork's basicsr package folder (holding train.py and test.py)")
    p.add_argument('--undo', action='store_true', help='remove the inserted line')
    args = p.parse_args(argv)
    for path in install(args.package_dir, args.undo):
        print(('unpatched ' if args.undo else 'patched ') + path)
    return 0


if __name__ == '__main__':
    sys.exit(main())
