"""Periodic width (longitude) for the networks: convolutions that wrap along W and zero-pad along H.

Global gridded fields are periodic in longitude: column ``w - 1`` is the western neighbour of column 0.
Zero padding puts a wall at the dateline, and the output shows a seam there. With ``periodic_w`` every
trunk convolution reads the other edge instead (``PeriodicWConv2d``), the Meta head reads its k x k
neighbourhood around the wrap (``MetaUpsample(..., periodic_w=True)``), and SwinIRMeta's shifted windows
join the two edges (``periodic_shift_mask``). Rows (latitude) keep zero padding: the poles are edges.
The bicubic resizes around such a network (LR synthesis, the bicubic skip, the bicubic baseline) wrap
as well (``imresize_periodic_w``, chosen by ``bicubic_for(net)``).
"""
from typing import Callable, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from metasr_arch.ops.geometry import AxisProjection
from metasr_arch.utils.resize import imresize_to


class PeriodicWConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose padding wraps around along W (circular) and stays zero along H.

    Same parameters and ``state_dict`` keys as the ``nn.Conv2d`` it replaces, so checkpoints load into
    either. Needs ``padding_w <= w`` (the input must be at least as wide as the padding).

    Shapes:
        (N, C_in, h, w) -> (N, C_out, h', w') exactly as the zero-padded conv.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad_h, pad_w = self.padding
        if pad_w:
            x = F.pad(x, (pad_w, pad_w, 0, 0), mode='circular')
        return F.conv2d(x, self.weight, self.bias, self.stride, (pad_h, 0), self.dilation, self.groups)


def _as_periodic(conv: nn.Conv2d) -> PeriodicWConv2d:
    if isinstance(conv.padding, str) or conv.padding_mode != 'zeros':
        raise ValueError(f'periodic_w needs convolutions with integer zero padding, got {conv!r}')
    # Swap the class of the module itself (as torch.nn.utils.parametrize does): the parameters stay the
    # same objects, so optimisers, EMA copies and state_dict keys are unaffected.
    conv.__class__ = PeriodicWConv2d
    return conv


def make_convs_periodic_w(module: nn.Module) -> int:
    """Turn, in place, every ``nn.Conv2d`` below ``module`` that pads along W into a ``PeriodicWConv2d``.

    Returns:
        the number of convolutions changed (1x1 convolutions have no padding and are kept).
    """
    convs = [m for m in module.modules()
             if type(m) is nn.Conv2d and (isinstance(m.padding, str) or m.padding[1] > 0)]
    for conv in convs:
        _as_periodic(conv)
    return len(convs)


def pad_projection_w(x: torch.Tensor, cols: AxisProjection, pad: int) -> Tuple[torch.Tensor, AxisProjection]:
    """Wrap ``pad`` columns of ``x`` around each side and move the column projection onto the padded map.

    The head's k x k window around LR column ``j_p`` then reads columns ``j_p - pad .. j_p + pad``
    modulo w, and the operator's own zero padding (at the padded map's edges) is never reached.

    Shapes:
        x (N, C, h, w) -> (N, C, h, w + 2 * pad); ``cols.lr_index + pad``, phases unchanged.
    """
    if pad == 0:
        return x, cols
    if pad > x.shape[3]:
        raise ValueError(f'periodic_w: the input is {x.shape[3]} columns wide, narrower than the head\'s '
                         f'padding {pad} (kernel_size // 2)')
    padded = F.pad(x, (pad, pad, 0, 0), mode='circular')
    return padded, AxisProjection(cols.lr_index + pad, cols.phase_index, cols.phases, cols.frac)


def periodic_shift_mask(x_size: Tuple[int, int], window_size: int, shift_size: int) -> torch.Tensor:
    """Attention mask of Swin's shifted windows for an input periodic along W.

    BasicSR's ``calculate_mask`` labels the regions that ``torch.roll`` brings together across both
    edges and forbids attention between different labels. Along W the rolled neighbour across the
    edge is the true neighbour, so only the H regions are labelled here.

    Returns:
        (num_windows, window_size**2, window_size**2) float32 with 0 (allowed) and -100 (masked).
    """
    h, w = x_size
    labels = torch.zeros(h, dtype=torch.float32)
    labels[h - window_size:h - shift_size] = 1
    labels[h - shift_size:] = 2
    grid = labels[:, None].expand(h, w)
    windows = grid.view(h // window_size, window_size, w // window_size, window_size).permute(0, 2, 1, 3)
    windows = windows.reshape(-1, window_size * window_size)
    diff = windows[:, None, :] - windows[:, :, None]
    return torch.where(diff != 0, torch.tensor(-100.0), torch.tensor(0.0))


class _PeriodicMask:
    """A picklable stand-in for a Swin block's ``calculate_mask`` (deep copies and pickles keep working)."""

    def __init__(self, window_size: int, shift_size: int):
        self.window_size, self.shift_size = window_size, shift_size

    def __call__(self, x_size: Tuple[int, int]) -> torch.Tensor:
        return periodic_shift_mask(x_size, self.window_size, self.shift_size)


def make_swin_blocks_periodic_w(module: nn.Module) -> int:
    """Give every shifted-window block below ``module`` the periodic mask; returns how many.

    The block's cached mask (a persistent buffer, kept for checkpoint compatibility) is for zero
    padding; clearing ``input_resolution`` makes the block build its mask from ``calculate_mask`` on
    every call, as BasicSR does for any input size other than the training patch.
    """
    count = 0
    for block in module.modules():
        if getattr(block, 'shift_size', 0) > 0 and hasattr(block, 'calculate_mask'):
            block.calculate_mask = _PeriodicMask(block.window_size, block.shift_size)
            block.input_resolution = None
            count += 1
    return count


def imresize_periodic_w(x: torch.Tensor, out_size: Tuple[int, int], antialias: bool = True) -> torch.Tensor:
    """``imresize_to`` (MATLAB bicubic) with columns that wrap around instead of mirroring at the edges.

    The input is tiled three times along W and resized at the same scale; the middle third is the
    periodic result (exact while the kernel, 4 / min(1, r_h) input columns, is narrower than the input).

    Shapes:
        (..., h, w) -> (..., H, W) with (H, W) = out_size.
    """
    out_h, out_w = int(out_size[0]), int(out_size[1])
    h, w = x.shape[-2:]
    tiled = torch.cat([x, x, x], dim=-1)
    y = imresize_to(tiled, (out_h, 3 * out_w), antialias, scale=(out_h / h, out_w / w))
    return y[..., out_w:2 * out_w]


def is_periodic_w(net: nn.Module) -> bool:
    """True for a Meta-SR network (or its DDP wrapper) built with ``periodic_w``."""
    bare = getattr(net, 'module', net)
    return bool(getattr(getattr(bare, 'upsample', None), 'periodic_w', False))


def bicubic_for(net: nn.Module) -> Callable[..., torch.Tensor]:
    """The bicubic resize that matches ``net``'s geometry: periodic along W or MATLAB's ``imresize_to``."""
    return imresize_periodic_w if is_periodic_w(net) else imresize_to
