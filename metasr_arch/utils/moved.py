"""Old import paths of names that moved up to the ``metasr_arch.inference`` package.

The ground floor (``utils``, ``ops``) imports no arch. Names that need the archs (loading a network,
running it, tiling) now live in ``metasr_arch.inference``; their old modules keep working through a
module ``__getattr__`` (PEP 562) that imports the new home on first use and warns once per name, so
importing the old module still imports nothing above the ground floor.
"""
import importlib
import warnings
from typing import Any, Callable, Mapping


def moved_names(old_module: str, new_homes: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``old_module`` that serves ``name`` from ``new_homes[name]``.

    Args:
        old_module: the old module's ``__name__`` (for messages).
        new_homes: name -> the module it moved to.
    Returns:
        ``__getattr__(name)``: the object, after one DeprecationWarning naming the new import path;
        AttributeError for names that never lived here.
    """
    def __getattr__(name: str) -> Any:
        if name not in new_homes:
            raise AttributeError(f'module {old_module!r} has no attribute {name!r}')
        warnings.warn(f'{old_module}.{name} moved to {new_homes[name]}.{name}; import it from there',
                      DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(new_homes[name]), name)

    return __getattr__
