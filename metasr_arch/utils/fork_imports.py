"""``--import MODULE``: registering a fork's or another package's archs in the command lines, by consent.

A MetaSR checkpoint whose trunk is, say, HAT names ``type: HAT`` in its recorded options; BasicSR knows
that name only once ``hat.archs`` has been imported. The checkpoint could record the module, but
importing a module named by a file runs code the file chose; so nothing is imported unless the user
names it on the command line (``--import hat.archs``, repeatable). The archs such a module registers
are then the types the user allowed (``load_network(..., allow_types=...)``).

Arch-free (the ground floor): it reads BasicSR's ``ARCH_REGISTRY`` and imports only what the user named.
"""
import importlib
import os
import re
import sys
from typing import List, Sequence, Tuple

from metasr_arch.utils.options import OptionError

FLAG = '--import'
_MODULE_NAME = re.compile(r'^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$')
HELP = ('import MODULE first, so that the archs it registers in BasicSR\'s ARCH_REGISTRY (a fork\'s, e.g. '
        'hat.archs) can be built; repeatable. Only modules named here are imported (the working directory '
        'is searched too)')


def _registered() -> dict:
    from basicsr.utils.registry import ARCH_REGISTRY
    return dict(ARCH_REGISTRY._obj_map)  # noqa: SLF001 (BasicSR has no public listing)


def import_arch_modules(modules: Sequence[str], flag: str = FLAG) -> Tuple[str, ...]:
    """Import each of ``modules`` (dotted names) and return the arch names they register.

    A name counts when the import added it to ``ARCH_REGISTRY`` or when its class is defined in the module
    or below it (a module imported earlier registered its archs then).

    Raises:
        OptionError naming ``flag`` and the module: not a dotted name, not importable (with the reason), or
        raising on import.
    """
    before = _registered()
    if os.getcwd() not in sys.path and '' not in sys.path:
        sys.path.append(os.getcwd())  # a fork's package in the working directory, as `python -m` sees it
    for name in modules:
        if not isinstance(name, str) or not _MODULE_NAME.match(name):
            raise OptionError(f'{flag} {name!r}: not a module name (expected e.g. hat.archs)')
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise OptionError(f'{flag} {name}: cannot import it ({type(err).__name__}: {err})') from None
        except Exception as err:  # noqa: BLE001 (the user's module failed on import: say so, no traceback)
            raise OptionError(f'{flag} {name}: importing it failed ({type(err).__name__}: {err})') from None
    after = _registered()
    allowed = {key for key in after if key not in before}
    for key, obj in after.items():
        module = getattr(obj, '__module__', '') or ''
        if any(module == m or module.startswith(m + '.') for m in modules):
            allowed.add(key)
    return tuple(sorted(allowed))


def pop_import_args(argv: Sequence[str], flag: str = FLAG) -> Tuple[List[str], List[str]]:
    """Split ``--import MODULE`` / ``--import=MODULE`` out of a command line that another parser (BasicSR's)
    reads; returns (remaining arguments, modules in order).

    Raises:
        OptionError when ``flag`` ends the command line without a module.
    """
    rest, modules = [], []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == flag:
            if i + 1 >= len(args) or args[i + 1].startswith('-'):
                raise OptionError(f'{flag} needs a module name (e.g. {flag} hat.archs)')
            modules.append(args[i + 1])
            i += 2
            continue
        if arg.startswith(flag + '='):
            modules.append(arg[len(flag) + 1:])
        else:
            rest.append(arg)
        i += 1
    return rest, modules
