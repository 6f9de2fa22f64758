"""What a checkpoint's recorded network options may build: trusted types only, and no file named in them.

A checkpoint (``.pth`` or ``.safetensors``) records the options it was trained with (``network_opt``) so
that inference needs no options file. Those options come from the file, not from the user: a crafted
file could name another registered arch whose constructor loads a second file (BasicSR's ``SpyNet``
reads ``load_path``), so ``check_recorded_network`` allows only the plugin's Meta networks at the top,
the plugin's networks and BasicSR's SR trunks inside them (and the types the user names with
``--allow-arch``), and refuses every path-valued option by its dotted name. Ground floor: imports no arch.

Path-valued options (the documented rule, docs/reliability.md):

* a key named ``path``, ``load_path``, ``pretrained``, ``pretrain``, ``ckpt``, ``checkpoint``, ``weights``,
  ``file``, ``filename``, ``url``, ``root``, ``dir``, or starting with ``pretrain``/``ckpt``/``checkpoint``/
  ``weights``, or ending with ``_path``, ``_paths``, ``_file``, ``_dir``, ``_root``, ``_url``, ``_ckpt``,
  ``_checkpoint``, ``_weights`` or ``_pretrained`` (case-insensitive), whose value is anything but
  ``null``/``false``/``''`` (``pretrained: true`` downloads weights);
* any string value, under any key, that looks like a file or URL: it contains ``/``, ``\\`` or ``://``,
  starts with ``~`` or ``.``, or ends with a weight/data file extension (``.pth``, ``.pt``, ``.ckpt``,
  ``.safetensors``, ``.bin``, ``.pkl``, ``.pickle``, ``.npy``, ``.npz``, ``.onnx``, ``.h5``, ``.tar``, ``.zip``,
  ``.yml``, ``.yaml``, ``.json``).

``trunk_pretrained`` (the ``MetaSR`` wrapper's trunk weights for training) is dropped with one info
line instead: under strict loading the checkpoint already holds every weight of the network.
"""
import logging
import re
from copy import deepcopy
from typing import Any, Iterable, Mapping

logger = logging.getLogger(__name__)

# the plugin's Meta networks: what a checkpoint's recorded network_opt may build at its top level
TRUSTED_NETWORK_TYPES = frozenset({'MetaRDN', 'SwinIRMeta', 'FixedScaleRDN', 'MetaSR', 'FixedScaleNet'})
# BasicSR's own SR networks: allowed as nested trunks (MetaSR's ``trunk: {type: EDSR, ...}``)
TRUSTED_TRUNK_TYPES = frozenset({'EDSR', 'RCAN', 'RRDBNet', 'MSRResNet', 'SRVGGNetCompact', 'SwinIR'})
DROPPED_KEYS = ('trunk_pretrained',)

_PATH_KEYS = frozenset({'path', 'load_path', 'pretrained', 'pretrain', 'ckpt', 'checkpoint', 'weights', 'file',
                        'filename', 'url', 'root', 'dir'})
_PATH_PREFIXES = ('pretrain', 'ckpt', 'checkpoint', 'weights')
_PATH_SUFFIXES = ('_path', '_paths', '_file', '_dir', '_root', '_url', '_ckpt', '_checkpoint', '_weights',
                  '_pretrained')
_FILE_EXTENSIONS = ('.pth', '.pt', '.ckpt', '.safetensors', '.bin', '.pkl', '.pickle', '.npy', '.npz', '.onnx',
                    '.h5', '.tar', '.zip', '.yml', '.yaml', '.json')
_PATH_TEXT = re.compile(r'[/\\]|://|^[~.]')


class UntrustedNetworkError(ValueError):
    """A checkpoint's recorded network options name a type or a file that inference may not follow."""


def is_path_key(key: str) -> bool:
    """True for option names that hold a file, folder or URL (module docstring)."""
    k = str(key).lower()
    return k in _PATH_KEYS or k.startswith(_PATH_PREFIXES) or k.endswith(_PATH_SUFFIXES)


def looks_like_path(value: Any) -> bool:
    """True for a string that names a file, folder or URL (module docstring)."""
    if not isinstance(value, str):
        return False
    text = value.strip()
    return bool(_PATH_TEXT.search(text)) or text.lower().endswith(_FILE_EXTENSIONS)


def check_recorded_network(network_opt: Mapping, source: str, allow: Iterable[str] = ()) -> dict:
    """A copy of ``network_opt`` that is safe to build, or ``UntrustedNetworkError`` naming what is refused.

    Args:
        network_opt: network options recorded in a checkpoint (``{'type': ..., ...}``).
        source: where they come from (``network_opt recorded in --ckpt X``), for messages.
        allow: further type names the user trusts (``--allow-arch``), at the top level and nested.
    Returns:
        a deep copy without ``trunk_pretrained`` (dropped with one info line).
    Raises:
        UntrustedNetworkError (a ValueError) for a top-level type outside ``TRUSTED_NETWORK_TYPES`` and
        ``allow``, a nested ``type`` outside those and ``TRUSTED_TRUNK_TYPES``, or a path-valued option.
    """
    allow = frozenset(allow)
    if not isinstance(network_opt, Mapping):
        raise UntrustedNetworkError(f'{source}: expected a mapping of network options, got '
                                    f'{type(network_opt).__name__}')
    top = network_opt.get('type')
    if not isinstance(top, str) or top not in TRUSTED_NETWORK_TYPES | allow:
        raise UntrustedNetworkError(
            f'{source}: network type {top!r} is not one of the plugin\'s networks '
            f'({", ".join(sorted(TRUSTED_NETWORK_TYPES))}); a checkpoint builds only these unless you trust '
            f'its type: {_how_to_trust(top if isinstance(top, str) else "NAME")}')
    opt = deepcopy(dict(network_opt))
    drop_pretrained(opt, 'network_opt', source)
    _check_node(opt, 'network_opt', source, TRUSTED_NETWORK_TYPES | TRUSTED_TRUNK_TYPES | allow)
    return opt


def drop_pretrained(opt: dict, where: str, source: str) -> None:
    """Remove ``DROPPED_KEYS`` from ``opt`` (in place, any depth), with one info line each."""
    for key in DROPPED_KEYS:
        if key in opt:
            del opt[key]
            logger.info('%s: %s.%s dropped: the checkpoint already holds every weight', source, where, key)
    for key, value in opt.items():
        for name, item in _children(f'{where}.{key}', value):
            drop_pretrained(item, name, source)


def _children(where: str, value: Any):
    """(dotted name, dict) of the dicts directly inside ``value`` (itself, or the items of a list)."""
    if isinstance(value, dict):
        yield where, value
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _children(f'{where}[{i}]', item)


def _check_node(opt: dict, where: str, source: str, trusted: frozenset) -> None:
    if 'type' in opt and opt['type'] not in trusted:
        raise UntrustedNetworkError(
            f'{source}: {where}.type {opt["type"]!r} is not a trusted network; nested types must be the '
            f'plugin\'s or BasicSR\'s SR networks ({", ".join(sorted(TRUSTED_TRUNK_TYPES))}) unless you '
            f'trust it: {_how_to_trust(opt["type"])}')
    for key, value in opt.items():
        name = f'{where}.{key}'
        if is_path_key(key) and value not in (None, False, ''):
            raise UntrustedNetworkError(
                f'{source}: {name} is a path option ({value!r}); options recorded in a checkpoint may not '
                'name files (the checkpoint holds every weight); give the options with --opt to use it')
        _check_value(value, name, source, trusted)


def _check_value(value: Any, name: str, source: str, trusted: frozenset) -> None:
    if isinstance(value, dict):
        _check_node(value, name, source, trusted)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_value(item, f'{name}[{i}]', source, trusted)
    elif looks_like_path(value):
        raise UntrustedNetworkError(
            f'{source}: {name} = {value!r} looks like a file path; options recorded in a checkpoint may not '
            'name files (the checkpoint holds every weight); give the options with --opt to use it')


def _how_to_trust(net_type: str) -> str:
    """The flag that trusts ``net_type``: ``--allow-arch`` when it is registered, else ``--import``."""
    from basicsr.utils.registry import ARCH_REGISTRY
    if net_type in ARCH_REGISTRY:
        return f'--allow-arch {net_type}'
    return (f'{net_type!r} is not a registered architecture; --import MODULE (the fork\'s or package\'s module '
            f'that registers it, e.g. --import hat.archs) or --allow-arch {net_type} after importing it')
