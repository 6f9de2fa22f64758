"""Mixed precision, ``torch.compile`` and channels-last for training and inference (options in docs/training.md).

* ``amp_dtype('bf16' | 'fp16' | 'off', name)``: the autocast dtype of an option (None for off).
* ``autocast(device, dtype)``: ``torch.autocast`` for a device's type, or a no-op for ``dtype=None``.
* ``autocast_supported(device, dtype)``: whether torch autocasts to ``dtype`` on that device type.
* ``parse_compile(value, name)`` / ``compile_for_training(net, opts)``: the ``train.compile`` option.
  Scope ``trunk`` (default) compiles the network's ``forward_trunk`` only, whose input is the fixed LR
  patch: one graph for the whole run whatever the per-batch scale. Scope ``net`` compiles the whole
  network including the Meta head, whose shapes change with every scale (recompiles bounded by
  ``torch._dynamo.config.recompile_limit`` per code object, measured in BENCHMARKS.md).
* ``all_finite(loss, dist)``: whether a loss is finite on every rank (one decision for DDP).
"""
import warnings
from contextlib import nullcontext
from functools import lru_cache
from typing import Callable, ContextManager, Mapping, Optional, Union

import torch
from torch import nn

AMP_DTYPES = {'off': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}
COMPILE_SCOPES = ('trunk', 'net')
COMPILE_KEYS = ('mode', 'dynamic', 'backend', 'scope', 'fullgraph')


def amp_dtype(value: Union[str, bool, None], name: str) -> Optional[torch.dtype]:
    """``'bf16'`` / ``'fp16'`` / ``'off'`` (also None/false) -> torch.bfloat16 / torch.float16 / None.

    Raises ValueError naming the option ``name`` (e.g. 'train.amp') for anything else.
    """
    if value is None or value is False:
        return None
    if isinstance(value, str) and value.lower() in AMP_DTYPES:
        return AMP_DTYPES[value.lower()]
    raise ValueError(f"{name} must be one of 'bf16', 'fp16', 'off', got {value!r}")


def amp_name(dtype: Optional[torch.dtype]) -> str:
    """Inverse of ``amp_dtype``: torch.bfloat16 -> 'bf16', None -> 'off'."""
    return next(k for k, v in AMP_DTYPES.items() if v == dtype)


def _device_type(device: Union[torch.device, str, torch.Tensor]) -> str:
    if isinstance(device, torch.Tensor):
        return device.device.type
    return torch.device(device).type


def autocast_supported(device: Union[torch.device, str, torch.Tensor], dtype: torch.dtype) -> bool:
    """Whether ``torch.autocast`` runs ops in ``dtype`` on ``device``'s type (torch disables it otherwise)."""
    return _autocast_supported(_device_type(device), dtype)


@lru_cache(maxsize=None)  # asked once per training iteration
def _autocast_supported(device_type: str, dtype: torch.dtype) -> bool:
    if not torch.amp.is_autocast_available(device_type):
        return False
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # torch warns and disables autocast for an unsupported dtype
        with torch.autocast(device_type, dtype=dtype):
            return torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type) == dtype


def autocast(device: Union[torch.device, str, torch.Tensor], dtype: Optional[torch.dtype]) -> ContextManager:
    """``torch.autocast(device type, dtype)``, or a no-op when ``dtype`` is None.

    Raises RuntimeError when torch cannot autocast to ``dtype`` on that device type (instead of torch's
    warning and silent float32).
    """
    if dtype is None:
        return nullcontext()
    device_type = _device_type(device)
    if not autocast_supported(device_type, dtype):
        raise RuntimeError(f'torch {torch.__version__} has no {amp_name(dtype)} autocast on {device_type}')
    return torch.autocast(device_type, dtype=dtype)


def parse_compile(value: Union[bool, Mapping, None], name: str = 'train.compile') -> Optional[dict]:
    """``true`` / ``false`` / ``{mode, dynamic, backend, scope, fullgraph}`` -> the options, or None for off.

    Defaults: scope 'trunk', and torch.compile's own (mode 'default', backend 'inductor', dynamic None).
    """
    if value is None or value is False:
        return None
    if value is True:
        return {'scope': 'trunk'}
    if not isinstance(value, Mapping):
        raise ValueError(f'{name} must be true, false or a dict {{mode, dynamic, backend, scope}}, got {value!r}')
    unknown = sorted(set(value) - set(COMPILE_KEYS))
    if unknown:
        raise ValueError(f'{name} has unknown keys {unknown}; allowed: {list(COMPILE_KEYS)}')
    opts = {'scope': 'trunk', **value}
    if opts['scope'] not in COMPILE_SCOPES:
        raise ValueError(f"{name}.scope must be one of {COMPILE_SCOPES}, got {opts['scope']!r}")
    if opts.get('dynamic') not in (None, True, False):
        raise ValueError(f"{name}.dynamic must be true, false or null, got {opts['dynamic']!r}")
    return opts


class _TrainingOnly:
    """Calls ``compiled`` while autograd records (training) and ``eager`` otherwise (validation sizes vary)."""

    def __init__(self, eager: Callable, compiled: Callable):
        self.eager, self.compiled = eager, compiled

    def __call__(self, *args, **kwargs):
        return (self.compiled if torch.is_grad_enabled() else self.eager)(*args, **kwargs)


def compile_for_training(net: nn.Module, opts: Mapping, bare: Optional[nn.Module] = None) -> nn.Module:
    """Apply ``train.compile`` options (from ``parse_compile``) to ``net`` for the training forward.

    Args:
        net: the training network (possibly DDP-wrapped).
        bare: the unwrapped network (default ``net``).

    Returns:
        The module to call for training: ``torch.compile(net)`` for scope 'net'; for scope 'trunk' ``net``
        itself, whose bare module's ``forward_trunk`` is replaced (an instance attribute, so parameters,
        state_dict and DDP are unchanged) by a compiled version used only with grad enabled.
    """
    kwargs = {k: opts[k] for k in ('mode', 'dynamic', 'backend', 'fullgraph') if opts.get(k) is not None}
    if opts.get('scope', 'trunk') == 'net':
        return torch.compile(net, **kwargs)
    bare = net if bare is None else bare
    if not hasattr(bare, 'forward_trunk'):
        raise ValueError(f"train.compile.scope 'trunk' needs a network with forward_trunk (MetaRDN, SwinIRMeta); "
                         f"{type(bare).__name__} has none: use scope 'net'")
    eager = bare.forward_trunk
    bare.forward_trunk = _TrainingOnly(eager, torch.compile(eager, **kwargs))
    return net


def all_finite(loss: torch.Tensor, dist: bool = False) -> bool:
    """True when ``loss`` is finite here and, with ``dist``, on every rank (so all ranks skip together)."""
    finite = torch.isfinite(loss.detach()).all().to(torch.float32)
    if dist and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
    return bool(finite.item())
