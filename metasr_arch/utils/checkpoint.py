"""Reading checkpoint files without executing pickled code (``.pth`` with ``weights_only=True`` and
``.safetensors``), and picking the weights out of them. Arch-free: building a network from a checkpoint
is ``metasr_arch.inference.checkpoint``."""
import os
import pickle
import zipfile
from typing import Any, Dict, Optional, Tuple

import torch

from metasr_arch.utils.moved import moved_names
from metasr_arch.utils.safetensors_ckpt import is_safetensors_file, load_safetensors_checkpoint


def load_checkpoint(path: str, name: str = '--ckpt') -> dict:
    """Read a checkpoint on the CPU without executing pickled code (``weights_only=True``); safetensors
    files (recognised by content) load through ``_load_safetensors``.

    Args:
        name: the option ``path`` came from, for error messages.
    Raises:
        ValueError naming ``name``: missing file, corrupt file, or a file holding objects other than
        tensors and plain containers (a pickle that would run code is refused, never executed).
    """
    if is_safetensors_file(path):
        return _load_safetensors(path, name)
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
    except FileNotFoundError:
        raise ValueError(f'{name} {path}: no such file') from None
    except pickle.UnpicklingError as err:
        raise ValueError(f'{name} {path}: refused, the file holds objects other than tensors and plain '
                         f'containers and is only loaded with weights_only=True ({err_detail(err)})') from None
    except Exception as err:  # noqa: BLE001 (torch raises many types for corrupt files)
        raise ValueError(f'{name} {path}: not a readable PyTorch checkpoint ({type(err).__name__}: {err})') from None
    if not isinstance(ckpt, dict):
        raise ValueError(f'{name} {path}: expected a dict, got {type(ckpt).__name__}')
    return ckpt


def err_detail(err: BaseException) -> str:
    """The informative line of torch's weights-only refusal (which global it would have loaded)."""
    if isinstance(err, NotWeightsOnlyError):
        return err.detail
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    # torch's message: a generic first paragraph, then the offending global ("Unsupported global: ...")
    detail = [line for line in lines if 'Unsupported' in line or 'global' in line.lower()]
    return (detail or lines or [type(err).__name__])[0]


class NotWeightsOnlyError(pickle.UnpicklingError):
    """``torch.load(weights_only=True)`` refused ``filename``: it holds objects other than tensors, numbers
    and plain containers (a pickle that would run code). Nothing in it ran. An ``UnpicklingError`` (what
    torch raises) that names the file; ``filename`` is the file or ``'a file object'``."""

    def __init__(self, filename: str, err: BaseException):
        self.filename = filename
        self.detail = err_detail(err)
        super().__init__(f'{filename}: not a weights-only checkpoint: it holds objects other than tensors, '
                         f'numbers and plain containers; refused, nothing in it ran ({self.detail})')


def file_name(f: Any) -> str:
    """The name of what ``torch.load`` was given: a path, or the ``name`` of a file object."""
    if isinstance(f, (str, bytes, os.PathLike)):
        return os.fsdecode(f)
    return str(getattr(f, 'name', 'a file object'))


def check_weights_only_file(path: str) -> None:
    """Raise ``NotWeightsOnlyError`` naming ``path`` when a weights-only load would refuse it.

    Safetensors files (no pickle) pass at once; a ``.pth`` zip file is unpickled with its tensors memory-mapped,
    not read, so checking a large checkpoint costs little. Other read errors (a missing or damaged file) are
    left to the load that follows, which reports them in context.
    """
    if is_safetensors_file(path):
        return
    try:
        torch.load(path, map_location='cpu', weights_only=True, mmap=zipfile.is_zipfile(path))
    except NotWeightsOnlyError:
        raise
    except pickle.UnpicklingError as err:
        raise NotWeightsOnlyError(path, err) from None
    except Exception:  # noqa: BLE001,S110 (not this check's concern: the real load reports it)
        pass


def _load_safetensors(path: str, name: str = '--ckpt') -> dict:
    """A ``.safetensors`` network checkpoint in the ``.pth`` layout (``utils.safetensors_ckpt``)."""
    try:
        return load_safetensors_checkpoint(path)
    except ValueError as err:
        raise ValueError(f'{name} {err}') from None


def select_params(ckpt: dict, param_key: Optional[str], path: str = '') -> Tuple[Dict[str, torch.Tensor], str]:
    """The state dict of ``ckpt`` under ``param_key``; default ``params_ema``, else ``params``.

    A bare state dict (all values tensors) is accepted when no key is requested.
    """
    if param_key is not None:
        if param_key not in ckpt:
            keys = sorted(k for k in ckpt if isinstance(ckpt[k], dict))
            raise ValueError(f'--param-key {param_key!r} is not in checkpoint {path}; it has {keys}')
        return ckpt[param_key], param_key
    for key in ('params_ema', 'params'):
        if isinstance(ckpt.get(key), dict):
            return ckpt[key], key
    if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        return ckpt, '(state dict)'
    raise ValueError(f'--ckpt {path}: has neither params_ema nor params (keys: {sorted(ckpt)})')


# moved up to metasr_arch.inference (they build networks, so they need the archs)
__getattr__ = moved_names(__name__, {name: 'metasr_arch.inference.checkpoint' for name in (
    'build_and_load', 'load_network', 'set_impl', 'network_channels')})
