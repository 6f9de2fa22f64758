"""Checking options before anything is built: the error type the command lines report without a
traceback, and the check of ``network_*`` sections against the registered classes' signatures.

Arch-free on purpose (the ground floor): it reads BasicSR's ``ARCH_REGISTRY`` but imports no arch, so
the pipelines and the inference package can use it while the archs are still being imported.
"""
import difflib
import inspect
from typing import Mapping, Sequence


class OptionError(ValueError):
    """A problem of the whole run's options (or of a file they name), found before anything is built.

    The command-line entry points report it as ``error: <message>`` without a traceback and exit with
    status 2.
    """


def _closest(word: str, choices: Sequence[str]) -> str:
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f'; did you mean {match[0]!r}?' if match else ''


closest_hint = _closest  # '; did you mean ...?' for other modules' messages


def check_network_options(net_opt: Mapping, section: str = 'network_g') -> None:
    """Check ``net_opt`` (``{'type': ..., **kwargs}``) against its registered class's ``__init__``.

    Args:
        section: where the options come from (``network_g``, ``--opt X network_g``, ...), for messages.
    Raises:
        OptionError naming the section and an unregistered type, an unknown key (with the closest
        valid key) or a missing required key. Classes taking ``**kwargs`` accept any key.
    """
    from basicsr.utils.registry import ARCH_REGISTRY
    if not isinstance(net_opt, Mapping) or 'type' not in net_opt:
        raise OptionError(f'{section} must be a mapping with a type (e.g. type: MetaRDN), got {net_opt!r}')
    net_type = net_opt['type']
    registered = sorted(ARCH_REGISTRY._obj_map)  # noqa: SLF001 (BasicSR has no public listing)
    if net_type not in ARCH_REGISTRY:
        raise OptionError(f'{section}.type: {net_type!r} is not a registered architecture'
                          f'{_closest(str(net_type), registered)}')
    try:
        params = inspect.signature(ARCH_REGISTRY.get(net_type)).parameters
    except (TypeError, ValueError):  # no introspectable signature: BasicSR's build_network will tell
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    valid = [name for name, p in params.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL]
    for key in net_opt:
        if key != 'type' and key not in params:
            raise OptionError(f'{section}: unknown option {key!r} for {net_type}{_closest(str(key), valid)} '
                              f'(valid options: {", ".join(valid)})')
    missing = [name for name, p in params.items() if p.default is inspect.Parameter.empty
               and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and name not in net_opt]
    if missing:
        raise OptionError(f'{section}: {net_type} needs option(s) {", ".join(missing)}')
    # nested sections (MetaSR's trunk/head): the class checks them, naming e.g. network_g.trunk
    nested = getattr(ARCH_REGISTRY.get(net_type), 'check_nested_options', None)
    if callable(nested):
        nested(net_opt, section)


def check_network_sections(opt: Mapping) -> None:
    """``check_network_options`` on every ``network_*`` section of a BasicSR options dict."""
    for key, value in opt.items():
        if isinstance(key, str) and key.startswith('network_') and value is not None:
            check_network_options(value, key)
