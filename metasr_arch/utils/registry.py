"""Idempotent registration into BasicSR's registries.

BasicSR's ``Registry.register`` asserts when a name is registered twice. That happens legitimately
when a module is imported twice under different names, reloaded, or re-imported by a spawned worker
that already imported it through a pickled reference. ``register`` below tolerates re-registration
of the *same* class (same module and qualified name) and still refuses a genuine name collision,
for example a plugin class named like one of BasicSR's own.
"""
from typing import Callable, TypeVar

from basicsr.utils.registry import Registry

T = TypeVar('T')


def _identity(obj) -> str:
    return f'{obj.__module__}.{obj.__qualname__}'


def register(registry: Registry, name: str = None) -> Callable[[T], T]:
    """Decorator: add ``obj`` to ``registry`` under ``name`` (default ``obj.__name__``), once.

    Raises:
        KeyError: another object (not a re-import of this one) already holds the name.
    """

    def deco(obj: T) -> T:
        key = name or obj.__name__
        existing = registry._obj_map.get(key)  # noqa: SLF001 (BasicSR exposes no public lookup without printing)
        if existing is not None and existing is not obj:
            if _identity(existing) != _identity(obj):
                raise KeyError(f"'{key}' is already registered in BasicSR's {registry._name} registry by "
                               f'{_identity(existing)}; rename {_identity(obj)}.')
        registry._obj_map[key] = obj  # re-import of the same class: keep the newest definition
        return obj

    return deco
