"""Loading trained networks for inference: network options (from the checkpoint or an options file),
strict state-dict loading through BasicSR's registry, and small helpers on the loaded network (operator
implementation, input channels). Files are read by ``metasr_arch.utils.checkpoint`` (weights only).

Options recorded in a checkpoint build only trusted types and name no file (``utils.trust``); whatever
builds the network (an options file may name BasicSR archs whose constructors load files) reads with
``weights_only=True``, even with ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``; weights with NaN/inf are refused.
"""
import pickle
from typing import Dict, Iterable, Optional, Union

import torch
from torch import nn

from metasr_arch.archs.meta_upsample_arch import MetaUpsample
from metasr_arch.archs.metasr_base import MetaSRNet, mark_residual_from_state
from metasr_arch.utils.checkpoint import err_detail, load_checkpoint, select_params
from metasr_arch.utils.finite import check_finite_state
from metasr_arch.utils.launch import weights_only_loads
from metasr_arch.utils.options import check_network_options
from metasr_arch.utils.trust import check_recorded_network, drop_pretrained


def _load_yaml(path: str) -> dict:
    import yaml
    try:
        with open(path, encoding='utf-8') as f:
            opt = yaml.safe_load(f)
    except OSError as err:
        raise ValueError(f'--opt {path}: cannot read the options file ({err.strerror})') from None
    except yaml.YAMLError as err:
        raise ValueError(f'--opt {path}: not valid YAML ({err})') from None
    if isinstance(opt, dict) and isinstance(opt.get('network_g'), dict):
        return dict(opt['network_g'])
    if isinstance(opt, dict) and 'type' in opt:
        return dict(opt)
    raise ValueError(f'--opt {path}: expected a BasicSR options file with a network_g section '
                     '(or a network options dict with a type)')


def build_and_load(network_opt: dict, state: Dict[str, torch.Tensor], source: str = 'checkpoint',
                   section: str = 'network options') -> nn.Module:
    """Build ``network_opt`` through BasicSR's registry and load ``state`` strictly.

    Args:
        section: where ``network_opt`` comes from (``--opt X network_g``, ...), for messages.
    Raises:
        ValueError naming the network type and the mismatching keys/shapes; OptionError (a ValueError)
        naming ``section`` for an unregistered type or an unknown option key; NonFiniteError (a
        ValueError) naming the first weight with NaN/inf values.
    """
    from basicsr.archs import build_network
    net_type = network_opt.get('type')
    check_network_options(network_opt, section)
    # Checkpoints saved from DistributedDataParallel wrappers prefix every key with 'module.'.
    state = {(k[7:] if k.startswith('module.') else k): v for k, v in state.items()}
    check_finite_state(state, source)  # before building: a NaN weight would write all-black images
    try:
        with weights_only_loads():  # a constructor loading a file (SpyNet's load_path) reads weights only
            net = build_network(network_opt)
    except pickle.UnpicklingError as err:
        raise ValueError(f'{section}: building {net_type} loads a file that holds objects other than tensors '
                         f'and plain containers; refused, it is only read with weights_only=True '
                         f'({err_detail(err)})') from None
    except OSError as err:
        raise ValueError(f'{section}: building {net_type} failed to read a file: {err}') from None
    mark_residual_from_state(net, state)  # weights trained as a residual over bicubic carry a flag
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f'{k}: checkpoint {tuple(state[k].shape)} vs network {tuple(own[k].shape)}'
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        def few(items):
            return ', '.join(items[:5]) + (f' (+{len(items) - 5} more)' if len(items) > 5 else '')
        details = [f'missing keys: {few(missing)}' if missing else '',
                   f'unexpected keys: {few(unexpected)}' if unexpected else '',
                   f'shape mismatches: {few(shapes)}' if shapes else '']
        raise ValueError(f'{source} does not match the network {net_type} built from its options; '
                         + '; '.join(d for d in details if d))
    net.load_state_dict(state, strict=True)
    return net.eval()


def load_network(opt: Optional[str] = None, ckpt: Optional[str] = None, param_key: Optional[str] = None,
                 device: Union[str, torch.device] = 'cpu', allow_types: Iterable[str] = ()) -> nn.Module:
    """A network ready for inference, from an options YAML plus checkpoint, or a checkpoint alone.

    Args:
        opt: BasicSR options file (its ``network_g`` is used) or a YAML of network options; optional
            when the checkpoint records ``network_opt`` (MetaSRModel's checkpoints do).
        ckpt: checkpoint path (BasicSR format ``{'params': ..., 'params_ema': ...}``, ``.pth`` or ``.safetensors``).
        param_key: which weights to use; default ``params_ema`` when present, else ``params``.
        device: where the network goes.
        allow_types: network types the user trusts beyond the plugin's, for options recorded in the
            checkpoint (``utils.trust.check_recorded_network``): the ``--allow-arch`` names and the archs
            that ``--import MODULE`` registered (``utils.fork_imports``).
    Raises:
        ValueError (``UntrustedNetworkError``, ``NonFiniteError``, ...) naming the file and what is wrong.
    """
    if ckpt is None:
        raise ValueError('--ckpt is required (a checkpoint with params or params_ema)')
    checkpoint = load_checkpoint(ckpt)
    if opt is not None:  # the user's own options: any registered type, files read weights-only
        network_opt, section = _load_yaml(opt), f'--opt {opt} network_g'
        drop_pretrained(network_opt, 'network_g', f'--opt {opt}')
    elif isinstance(checkpoint.get('network_opt'), dict):
        section = f'network_opt recorded in --ckpt {ckpt}'
        network_opt = check_recorded_network(checkpoint['network_opt'], section, allow_types)
    else:
        raise ValueError(f'--ckpt {ckpt} records no network_opt; pass the training options with --opt')
    state, key = select_params(checkpoint, param_key, ckpt)
    net = build_and_load(network_opt, state, source=f'--ckpt {ckpt} [{key}]', section=section)
    # MetaSRModel's bicubic_skip: the network predicts the residual over bicubic, recorded in the checkpoint
    # (or set at the top level of the training options file)
    # (a network whose weights carry the residual flag was trained so whatever the options say)
    net.metasr_bicubic_skip = bool(checkpoint.get('bicubic_skip', False) or _yaml_bicubic_skip(opt)
                                   or any(isinstance(m, MetaSRNet) and m.predicts_residual for m in net.modules()))
    # MetaSRXarrayDataset's per-variable statistics: gridded inference normalises and denormalises with them
    net.metasr_normalization = checkpoint.get('normalization')
    return net.to(device)


def _yaml_bicubic_skip(path: Optional[str]) -> bool:
    if path is None:
        return False
    import yaml
    with open(path, encoding='utf-8') as f:
        opt = yaml.safe_load(f)
    return bool(isinstance(opt, dict) and opt.get('bicubic_skip', False))


def set_impl(net: nn.Module, impl: str) -> int:
    """Set ``impl`` on every MetaUpsample of ``net`` (a GPU-trained 'cuda' model run on a CPU, say).

    Returns:
        the number of heads changed.
    """
    heads = [m for m in net.modules() if isinstance(m, MetaUpsample)]
    for head in heads:
        head.impl = impl
    return len(heads)


def network_channels(net: nn.Module) -> int:
    """Input channels of ``net``: its ``num_in_ch``/``in_chans`` attribute or its first convolution."""
    for attr in ('num_in_ch', 'in_chans', 'in_channels'):
        value = getattr(net, attr, None)
        if isinstance(value, int):
            return value
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    raise ValueError(f'cannot tell the input channels of {type(net).__name__}; give it a num_in_ch attribute')
