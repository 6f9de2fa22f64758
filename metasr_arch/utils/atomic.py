"""Atomic file writes and the clean-up of temporaries left by killed writers.

Every file the project writes (checkpoints, training states, PSNR tables, inference outputs,
generated LR images, demo photos, converted checkpoints) goes to a hidden temporary beside its
target, named ``.<target name>.<pid>.tmp``, and is renamed over the target once complete. A process
killed mid-write leaves its temporary behind; the first successful write of a later process into
the same folder removes those of writers that are no longer running (never another live process's
temporary, never a file of another naming pattern).
"""
import errno
import os
import re
from pathlib import Path
from typing import BinaryIO, Callable, List, Set, Union

PathLike = Union[str, os.PathLike]
_TEMP_NAME = re.compile(r'^\.(?P<target>.+)\.(?P<pid>\d+)\.tmp$')
_cleaned: Set[str] = set()  # folders already swept by this process
# errors a retry cannot fix: the folder stays read-only / forbidden
PERMANENT_WRITE_ERRORS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})


class WriteError(OSError):
    """A file the run must write could not be written (read-only folder, full disk, ...).

    ``filename`` is the target (not its temporary); the command lines report it as one line
    ``error: could not write <path>: <reason>`` and stop with a non-zero status.
    """

    @classmethod
    def of(cls, err: OSError, path: PathLike) -> 'WriteError':
        """The ``WriteError`` for ``err`` raised while writing ``path``."""
        return cls(err.errno, err.strerror or str(err), str(path))


def temp_path(path: PathLike) -> Path:
    """The temporary a write of ``path`` by this process goes through: ``.<name>.<pid>.tmp`` beside it."""
    path = Path(path)
    return path.with_name(f'.{path.name}.{os.getpid()}.tmp')


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # a process of another user (or a platform without the check): leave its file alone
    return True


def remove_stale_temps(folder: PathLike) -> List[Path]:
    """Delete ``.<name>.<pid>.tmp`` files in ``folder`` whose writer process is not running.

    Returns:
        the paths removed (files that vanish meanwhile or cannot be removed are skipped silently).
    """
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if match is None or _alive(int(match.group('pid'))):
            continue
        try:
            if entry.is_file(follow_symlinks=False):
                os.remove(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            pass
    return removed


def atomic_write(path: PathLike, fill: Callable[[BinaryIO], None], fsync: bool = False) -> None:
    """Write ``path`` through its temporary: ``fill(f)`` writes the content, then the file is renamed.

    A failure (or kill) leaves the previous ``path`` untouched; a failure removes the temporary. After
    the first successful write into a folder, stale temporaries of dead writers there are removed.

    Args:
        fill: writes the whole content to the binary file object it is given.
        fsync: flush the content to disk before the rename (checkpoints: survives a power loss).
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, 'wb') as f:
            fill(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    folder = str(path.parent.resolve())
    if folder not in _cleaned:
        _cleaned.add(folder)
        remove_stale_temps(folder)


def atomic_write_bytes(path: PathLike, payload: bytes, fsync: bool = False) -> None:
    """``atomic_write`` of a bytes payload."""
    atomic_write(path, lambda f: f.write(payload), fsync)
