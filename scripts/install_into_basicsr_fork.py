"""Make an existing BasicSR fork run this project's options files.

Usage::

    python scripts/install_into_basicsr_fork.py /path/to/fork/basicsr       # BasicSR itself, HAT, ...
    python scripts/install_into_basicsr_fork.py /path/to/Real-ESRGAN/realesrgan   # any package folder name

inserts one line, ``import metasr_arch; ...patch_init_dist()  # metasr_arch plugin``, at the top of
the ``train.py`` and ``test.py`` the package folder holds (after the module docstring and
``__future__`` imports); a fork with only one of them (Real-ESRGAN has no ``test.py``) gets that one
patched and is told which file was not found. All or nothing: every file is prepared first, and if a
write fails the files already written are restored. Idempotent; ``--undo`` removes the line. The
import registers MetaSRModel, MetaRDN, SwinIRMeta and the datasets in the fork's registries before its
pipeline builds anything; ``patch_init_dist`` lets ``--launcher pytorch`` run on CPU-only machines.
This package must be installed in the fork's environment (``pip install -e /path/to/metasr_arch``).

No edit at all: ``python -m metasr_arch.hook install`` (see docs/training.md).
"""
import argparse
import ast
import os
import sys
from typing import List, Optional, Sequence, Tuple

from metasr_arch.utils.atomic import atomic_write_bytes

MARK = '# metasr_arch plugin'
LINE = f'import metasr_arch; from metasr_arch.utils.launch import patch_init_dist; patch_init_dist()  {MARK}\n'
FILES = ('train.py', 'test.py')


def _insert_at(source: str) -> int:
    """Line index after the module docstring and ``from __future__`` imports (0 if unparsable)."""
    try:
        body = ast.parse(source).body
    except SyntaxError:
        return 0
    at = 0
    for i, node in enumerate(body):
        docstring = i == 0 and isinstance(node, ast.Expr) and isinstance(getattr(node, 'value', None), ast.Constant) \
            and isinstance(node.value.value, str)
        if docstring or (isinstance(node, ast.ImportFrom) and node.module == '__future__'):
            at = node.end_lineno
        else:
            break
    return at


def find_targets(package_dir: str) -> Tuple[List[str], List[str]]:
    """(paths of FILES present in ``package_dir``, names of those missing)."""
    present = [os.path.join(package_dir, n) for n in FILES if os.path.isfile(os.path.join(package_dir, n))]
    missing = [n for n in FILES if not os.path.isfile(os.path.join(package_dir, n))]
    return present, missing


def _patched(text: str, undo: bool) -> Optional[str]:
    lines = text.splitlines(keepends=True)
    has = any(MARK in line for line in lines)
    if undo and has:
        return ''.join(line for line in lines if MARK not in line)
    if not undo and not has:
        at = _insert_at(text)
        if at and not lines[at - 1].endswith('\n'):
            lines[at - 1] += '\n'
        lines.insert(at, LINE)
        return ''.join(lines)
    return None  # already in the requested state


def install(package_dir: str, undo: bool = False) -> List[str]:
    """Patch (or unpatch) the ``train.py``/``test.py`` present in ``package_dir``; returns the files changed.

    Raises:
        FileNotFoundError: ``package_dir`` holds neither file (nothing is changed).
        OSError: a write failed; the files written before it are restored.
    """
    present, _ = find_targets(package_dir)
    if not present:
        raise FileNotFoundError(f'{package_dir} holds neither train.py nor test.py: pass the fork\'s package '
                                'folder (e.g. /path/to/fork/basicsr or /path/to/Real-ESRGAN/realesrgan)')
    plan = []  # (path, original bytes, new text): everything is prepared before anything is written
    for path in present:
        with open(path, 'rb') as f:
            original = f.read()
        new = _patched(original.decode('utf-8'), undo)
        if new is not None:
            plan.append((path, original, new))
    done = []
    try:
        for path, original, new in plan:
            atomic_write_bytes(path, new.encode('utf-8'))
            done.append((path, original))
    except OSError:
        for path, original in done:
            atomic_write_bytes(path, original)
        raise
    return [path for path, _, _ in plan]


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('package_dir', help="the fork's package folder (holding train.py and/or test.py)")
    p.add_argument('--undo', action='store_true', help='remove the inserted line')
    args = p.parse_args(argv)
    try:
        changed = install(args.package_dir, args.undo)
    except (FileNotFoundError, OSError, UnicodeDecodeError) as err:
        print(f'error: {err} (nothing was changed)', file=sys.stderr)
        return 2
    present, missing = find_targets(args.package_dir)
    for path in present:
        state = ('unpatched ' if args.undo else 'patched ') if path in changed else 'already done: '
        print(state + path)
    for name in missing:
        print(f'not found (not patched): {os.path.join(args.package_dir, name)}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
