"""FixedScaleNet: any registered fixed-scale network (EDSR x4, RRDBNet, a fork's) behind the Meta networks'
``forward(x, scale=..., out_size=...)``, so that ``MetaSRModel`` trains and evaluates it unchanged (with a
``choice`` scale sampler of its one scale), e.g. the fixed x4 model that a ``MetaSR`` is later started
from (``trunk_pretrained``; ``plain_state_dict`` gives the plain arch's checkpoint)."""
from typing import Dict, Mapping

import torch
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

from metasr_arch.ops.geometry import ScaleArg, SizeArg, resolve_scale
from metasr_arch.utils.options import OptionError
from metasr_arch.utils.registry import register

_EPS = 1e-6


@register(ARCH_REGISTRY)
class FixedScaleNet(nn.Module):
    """A plain fixed-scale network ``net`` that serves exactly one integer ``scale``.

    Args:
        net: the plain network's options, ``{type: EDSR, ..., upscale: 4}``.
        scale: its magnification (the request must say the same).

    Shapes:
        forward(x (N, C, h, w), scale=r or (r, r) or out_size=(r*h, r*w)) -> net(x), (N, C_out, r*h, r*w).

    Raises:
        ValueError from forward when the request is not this scale, or the network's output is not r*h x r*w.
    """

    def __init__(self, net: Mapping, scale: int):
        super().__init__()
        if not isinstance(net, Mapping) or 'type' not in net or net['type'] not in ARCH_REGISTRY:
            raise OptionError(f'network_g.net must be the options of a registered network, got {net!r}')
        if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
            raise OptionError(f'network_g.scale must be a positive integer, got {scale!r}')
        opt = dict(net)
        self.net_type = opt.pop('type')
        self.net = ARCH_REGISTRY.get(self.net_type)(**opt)
        self.scale = scale

    def forward(self, x: torch.Tensor, scale: ScaleArg = None, out_size: SizeArg = None) -> torch.Tensor:
        spec = resolve_scale(x.shape[2], x.shape[3], scale, out_size)
        r, (h, w) = self.scale, x.shape[-2:]
        if abs(spec.r_v - r) > _EPS or abs(spec.r_h - r) > _EPS or (spec.out_h, spec.out_w) != (r * h, r * w):
            asked = f'scale={scale!r}' if scale is not None else f'out_size={tuple(out_size)!r}'
            raise ValueError(f'FixedScaleNet({self.net_type}, scale={r}) serves only x{r}, got {asked}')
        out = self.net(x)
        if out.shape[-2:] != (r * h, r * w):
            raise ValueError(f'{self.net_type} gave {tuple(out.shape[-2:])} for a {h}x{w} input, not x{r}')
        return out


def plain_state_dict(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """A ``FixedScaleNet`` state dict as the plain network's (``net.`` prefix removed): what a BasicSR
    checkpoint of the plain arch holds, e.g. for ``MetaSR``'s ``trunk_pretrained``."""
    if not state or not all(k.startswith('net.') for k in state):
        raise ValueError('not a FixedScaleNet state dict (every key starts with net.)')
    return {k[4:]: v for k, v in state.items()}
