"""A size-agnostic StyleGAN2 ResNet discriminator for SR outputs of arbitrary sizes."""
from typing import Sequence

import torch
from torch import nn

from basicsr.utils.registry import ARCH_REGISTRY
from metasr_arch.utils.registry import register
from .stylegan2_layers import ConvLayer, EqualLinear, ResBlock


@register(ARCH_REGISTRY)
class StyleGAN2ResnetDiscriminator(nn.Module):
    """StyleGAN2 residual discriminator with global average pooling before the linear head.

    BasicSR's ``StyleGAN2Discriminator`` flattens a fixed 4x4 map, so it only accepts one input size;
    arbitrary-scale SR produces patches of arbitrary (even odd) sizes, so this one averages the last
    feature map over space instead. No minibatch-stddev layer: batches may hold one image.

    ``FromRGB`` (1x1 ConvLayer) -> ``num_downsampling`` downsampling ResBlocks -> ``FinalConv`` (3x3
    ConvLayer) -> spatial mean -> ``Head`` (EqualLinear with leaky ReLU, EqualLinear to one logit).

    Widths: ``nc(idx) = min(max_nc, round(nc_steepness ** (5 + idx) * scale_capacity))`` at level ``idx``
    (the encoder's rule, capped).

    Args:
        num_in_ch (int): input channels. Default: 3.
        num_downsampling (int): ResBlocks, each halving the resolution. Default: 4.
        scale_capacity (float): channel multiplier. Default: 1.0.
        nc_steepness (float): channel growth per level. Default: 2.0.
        max_nc (int): channel cap. Default: 512.
        blur_kernel (sequence): anti-aliasing taps of the downsampling blur. Default: [1, 3, 3, 1].

    Shapes:
        input: (N, num_in_ch, H, W) with H, W >= 2 * 2**num_downsampling (32 by default), any parity.
        returns: (N, 1) raw logits.
    """

    def __init__(self,
                 num_in_ch: int = 3,
                 num_downsampling: int = 4,
                 scale_capacity: float = 1.0,
                 nc_steepness: float = 2.0,
                 max_nc: int = 512,
                 blur_kernel: Sequence = (1, 3, 3, 1)):
        super().__init__()
        if int(num_in_ch) < 1:
            raise ValueError(f'num_in_ch must be >= 1, got {num_in_ch}')
        if int(num_downsampling) < 0:
            raise ValueError(f'num_downsampling must be >= 0, got {num_downsampling}')
        if scale_capacity <= 0 or nc_steepness <= 0 or max_nc < 1:
            raise ValueError('scale_capacity and nc_steepness must be > 0 and max_nc >= 1, got '
                             f'{scale_capacity}, {nc_steepness}, {max_nc}')
        self.num_in_ch = num_in_ch
        self.num_downsampling = num_downsampling
        self.scale_capacity = scale_capacity
        self.nc_steepness = nc_steepness
        self.max_nc = max_nc
        if self.nc(0) < 1:
            raise ValueError(f'scale_capacity={scale_capacity} gives 0 channels; increase it')

        self.FromRGB = ConvLayer(num_in_ch, self.nc(0), 1)
        self.ResBlocks = nn.Sequential()
        for i in range(num_downsampling):
            self.ResBlocks.add_module(f'ResBlockDownBy{2**i}', ResBlock(self.nc(i), self.nc(i + 1), blur_kernel))
        nchannels = self.nc(num_downsampling)
        self.FinalConv = ConvLayer(nchannels, nchannels, 3)
        self.Head = nn.Sequential(
            EqualLinear(nchannels, nchannels, activation='fused_lrelu'), EqualLinear(nchannels, 1))

    @property
    def min_size(self) -> int:
        """Smallest accepted input height/width: a 2x2 map after the last downsampling."""
        return 2 * 2**self.num_downsampling

    def nc(self, idx: int) -> int:
        """Channel width at downsampling level ``idx``."""
        return min(self.max_nc, int(round(self.nc_steepness**(5 + idx) * self.scale_capacity)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, num_in_ch, H, W) -> (N, 1) logits."""
        if x.dim() != 4 or x.shape[1] != self.num_in_ch:
            raise ValueError(f'x must be (N, {self.num_in_ch}, H, W), got shape {tuple(x.shape)}')
        if min(x.shape[-2:]) < self.min_size:
            raise ValueError(f'x must be at least {self.min_size}x{self.min_size} '
                             f'(num_downsampling={self.num_downsampling}), got {tuple(x.shape[-2:])}')
        out = self.FinalConv(self.ResBlocks(self.FromRGB(x)))
        return self.Head(out.mean(dim=(2, 3)))
