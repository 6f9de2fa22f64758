"""Import every module of a package whose name ends with a suffix (as basicsr does with scandir)."""
import importlib
import pkgutil
from typing import Iterable, List


def import_submodules(package: str, path: Iterable[str], suffix: str) -> List[str]:
    """Import ``package.<name>`` for each module in ``path`` named ``*<suffix>``; return the names."""
    names = sorted(info.name for info in pkgutil.iter_modules(path) if info.name.endswith(suffix))
    for name in names:
        importlib.import_module(f'{package}.{name}')
    return names
