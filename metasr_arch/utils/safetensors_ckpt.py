"""Network checkpoints in the safetensors format (tensors and JSON text only: loading runs no code).

A ``.safetensors`` checkpoint holds what a BasicSR ``.pth`` network checkpoint holds, so both load into
the same dict ``{'params': state dict, 'params_ema': ..., 'network_opt': {...}, 'bicubic_skip': bool}``:

* tensors: the state dict of the one param key under its own names (a plain state dict that other
  tools load), or, with several keys (EMA training saves ``params`` and ``params_ema``),
  ``<param_key>/<name>`` (state-dict names never contain '/');
* metadata (strings): ``format`` = ``metasr_arch``, ``param_keys`` (JSON list), and every other entry
  of the checkpoint as JSON (``network_opt``, ``bicubic_skip``).

A safetensors file written elsewhere (no ``param_keys``) loads as a bare state dict.
"""
import json
import os
from pathlib import Path
from typing import Dict, Union

import torch

from metasr_arch.utils.atomic import atomic_write_bytes

SAFETENSORS_SUFFIX = '.safetensors'
FORMAT_TAG = 'metasr_arch'
_RESERVED = ('format', 'param_keys')
PathLike = Union[str, Path]


def is_safetensors_file(path: PathLike) -> bool:
    """True when ``path`` starts like a safetensors file: an 8-byte little-endian header length, then '{'.

    (A ``.pth`` is a zip archive, 'PK', or a legacy pickle, 0x80.) False for missing files.
    """
    try:
        size = os.path.getsize(path)
        with open(path, 'rb') as f:
            head = f.read(9)
    except OSError:
        return False
    if len(head) < 9:
        return False
    header_len = int.from_bytes(head[:8], 'little')
    return 2 <= header_len <= size - 8 and head[8:9] == b'{'


def checkpoint_to_bytes(ckpt: Dict) -> bytes:
    """Serialise a network checkpoint dict (param keys -> state dicts, other entries JSON-serialisable).

    Raises:
        ValueError naming an entry that is neither a state dict nor JSON-serialisable.
    """
    from safetensors.torch import save
    params = {k: v for k, v in ckpt.items() if isinstance(v, dict) and v
              and all(isinstance(t, torch.Tensor) for t in v.values())}
    if not params:
        if ckpt and all(isinstance(t, torch.Tensor) for t in ckpt.values()):  # a bare state dict
            params = {'params': ckpt}
            ckpt = {'params': ckpt}
        else:
            raise ValueError(f'checkpoint has no state dict to save (keys: {sorted(ckpt)})')
    keys = list(params)
    tensors = {}
    for key in keys:
        for name, t in params[key].items():
            # contiguous private copies: safetensors refuses views and tensors sharing storage
            tensors[name if len(keys) == 1 else f'{key}/{name}'] = t.detach().cpu().contiguous().clone()
    metadata = {'format': FORMAT_TAG, 'param_keys': json.dumps(keys)}
    for key, value in ckpt.items():
        if key in params:
            continue
        if key in _RESERVED:
            raise ValueError(f'checkpoint entry {key!r} clashes with a safetensors metadata field')
        try:
            metadata[key] = json.dumps(value)
        except TypeError:
            raise ValueError(f'checkpoint entry {key!r} ({type(value).__name__}) is not JSON-serialisable; '
                             'safetensors metadata holds text only') from None
    return save(tensors, metadata=metadata)


def save_safetensors_checkpoint(ckpt: Dict, path: PathLike) -> None:
    """Write ``ckpt`` to ``path`` atomically (temporary file beside it, fsync, rename)."""
    atomic_write_bytes(path, checkpoint_to_bytes(ckpt), fsync=True)  # sweeps stale temporaries too


def load_safetensors_checkpoint(path: PathLike) -> Dict:
    """Read a safetensors checkpoint on the CPU into the ``.pth`` checkpoint layout (module docstring).

    Raises:
        ValueError naming ``path`` for unreadable files or inconsistent metadata.
    """
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework='pt', device='cpu') as f:
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as err:  # noqa: BLE001 (SafetensorError, OSError, ...)
        raise ValueError(f'{path}: not a readable safetensors file ({type(err).__name__}: {err})') from None
    if 'param_keys' not in metadata:
        return tensors  # written by another tool: a bare state dict
    try:
        keys = json.loads(metadata['param_keys'])
        extra = {k: json.loads(v) for k, v in metadata.items() if k not in _RESERVED}
    except json.JSONDecodeError as err:
        raise ValueError(f'{path}: malformed metadata ({err})') from None
    if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
        raise ValueError(f'{path}: metadata param_keys must be a non-empty list of names, got {keys!r}')
    ckpt = dict(extra)
    if len(keys) == 1:
        ckpt[keys[0]] = tensors
        return ckpt
    for key in keys:
        ckpt[key] = {}
    for name, t in tensors.items():
        key, _, rest = name.partition('/')
        if key not in ckpt or not rest:
            raise ValueError(f'{path}: tensor {name!r} belongs to none of the param keys {keys}')
        ckpt[key][rest] = t
    return ckpt


def read_network_checkpoint(path: PathLike) -> Dict:
    """A network checkpoint, ``.pth`` (``torch.load(weights_only=True)``) or safetensors (by content).

    A missing ``X.pth`` whose sibling ``X.safetensors`` exists reads the sibling: BasicSR's resume
    always names the ``.pth`` file of the resumed iteration.
    """
    path = Path(path)
    if not path.exists() and path.suffix == '.pth' and path.with_suffix(SAFETENSORS_SUFFIX).is_file():
        path = path.with_suffix(SAFETENSORS_SUFFIX)
    if is_safetensors_file(path):
        return load_safetensors_checkpoint(path)
    return torch.load(str(path), map_location='cpu', weights_only=True)
