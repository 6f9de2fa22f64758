"""The Swapping Autoencoder's StyleGAN2 ResNet encoder (structure code + texture code)."""
from typing import Tuple

import torch
from torch import nn

from basicsr.utils.registry import ARCH_REGISTRY
from metasr_arch.utils.registry import register
from .stylegan2_layers import ConvLayer, EqualLinear, ResBlock, normalize


@register(ARCH_REGISTRY)
class StyleGAN2ResnetEncoder(nn.Module):
    """Encoder of the Swapping Autoencoder (Park et al. 2020).

    ``FromRGB`` (1x1 ConvLayer) -> ``DownToSpatialCode`` (``netE_num_downsampling_sp`` reflection-padded
    downsampling ResBlocks) -> ``ToSpatialCode`` (two 1x1 ConvLayers) gives the structure code;
    from the same midpoint ``DownToGlobalCode`` (``netE_num_downsampling_gl`` unpadded stride-2 3x3
    ConvLayers) -> spatial mean -> ``ToGlobalCode`` (EqualLinear) gives the texture code. Both codes
    are L2-normalised over channels.

    Channel widths follow the Swapping Autoencoder's rule
    ``nc(idx) = round(netE_nc_steepness ** (5 + idx) * netE_scale_capacity)`` (32, 64, ..., 2048 by default).

    Args:
        num_in_ch (int): input channels. Default: 3.
        netE_num_downsampling_sp (int): downsamplings to the structure code. Default: 4 (H/16).
        netE_num_downsampling_gl (int): further downsamplings before the texture code. Default: 2.
        spatial_code_ch (int): structure-code channels. Default: 8.
        global_code_ch (int): texture-code length. Default: 2048.
        netE_scale_capacity (float): channel multiplier. Default: 1.0.
        netE_nc_steepness (float): channel growth per level. Default: 2.0.
        use_antialias (bool): blur [1, 2, 1] before each downsampling in the ResBlocks (else [1]).
            Default: True.

    Shapes:
        input: (N, num_in_ch, H, W) with H, W multiples of 2**netE_num_downsampling_sp and the
        midpoint at least 2 * 2**netE_num_downsampling_gl - 1 pixels (e.g. 256x256).
        returns: structure code (N, spatial_code_ch, H / 2**sp, W / 2**sp) and texture code
        (N, global_code_ch), each with unit L2 norm over dim 1.
    """

    def __init__(self,
                 num_in_ch: int = 3,
                 netE_num_downsampling_sp: int = 4,
                 netE_num_downsampling_gl: int = 2,
                 spatial_code_ch: int = 8,
                 global_code_ch: int = 2048,
                 netE_scale_capacity: float = 1.0,
                 netE_nc_steepness: float = 2.0,
                 use_antialias: bool = True):
        super().__init__()
        for name, value in (('num_in_ch', num_in_ch), ('spatial_code_ch', spatial_code_ch),
                            ('global_code_ch', global_code_ch)):
            if int(value) < 1:
                raise ValueError(f'{name} must be >= 1, got {value}')
        for name, value in (('netE_num_downsampling_sp', netE_num_downsampling_sp), ('netE_num_downsampling_gl',
                                                                                    netE_num_downsampling_gl)):
            if int(value) < 0:
                raise ValueError(f'{name} must be >= 0, got {value}')
        if netE_scale_capacity <= 0 or netE_nc_steepness <= 0:
            raise ValueError('netE_scale_capacity and netE_nc_steepness must be > 0, got '
                             f'{netE_scale_capacity} and {netE_nc_steepness}')
        self.netE_num_downsampling_sp = netE_num_downsampling_sp
        self.netE_num_downsampling_gl = netE_num_downsampling_gl
        self.netE_scale_capacity = netE_scale_capacity
        self.netE_nc_steepness = netE_nc_steepness
        for idx in range(netE_num_downsampling_sp + netE_num_downsampling_gl + 1):
            if self.nc(idx) < 1:
                raise ValueError(f'netE_scale_capacity={netE_scale_capacity} gives {self.nc(idx)} channels '
                                 f'at level {idx}; increase it')

        # A very light Gaussian blur for anti-aliased downsampling, as the Swapping Autoencoder.
        blur_kernel = [1, 2, 1] if use_antialias else [1]

        self.FromRGB = ConvLayer(num_in_ch, self.nc(0), 1)

        self.DownToSpatialCode = nn.Sequential()
        for i in range(netE_num_downsampling_sp):
            # Reflection padding keeps position information out of the codes.
            self.DownToSpatialCode.add_module(f'ResBlockDownBy{2**i}',
                                              ResBlock(self.nc(i), self.nc(i + 1), blur_kernel, reflection_pad=True))

        nchannels = self.nc(netE_num_downsampling_sp)
        self.ToSpatialCode = nn.Sequential(
            ConvLayer(nchannels, nchannels, 1, activate=True, bias=True),
            ConvLayer(nchannels, spatial_code_ch, kernel_size=1, activate=False, bias=True))

        self.DownToGlobalCode = nn.Sequential()
        for i in range(netE_num_downsampling_gl):
            idx = netE_num_downsampling_sp + i
            self.DownToGlobalCode.add_module(
                f'ConvLayerDownBy{2**idx}',
                ConvLayer(self.nc(idx), self.nc(idx + 1), kernel_size=3, blur_kernel=[1], downsample=True, pad=0))

        nchannels = self.nc(netE_num_downsampling_sp + netE_num_downsampling_gl)
        self.ToGlobalCode = nn.Sequential(EqualLinear(nchannels, global_code_ch))

    def nc(self, idx: int) -> int:
        """Channel width at downsampling level ``idx`` (the Swapping Autoencoder's rule)."""
        return int(round(self.netE_nc_steepness**(5 + idx) * self.netE_scale_capacity))

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(N, C, H, W) -> (structure code (N, spatial_code_ch, H/2**sp, W/2**sp), texture code (N, global_code_ch))."""
        if x.dim() != 4:
            raise ValueError(f'x must be (N, C, H, W), got shape {tuple(x.shape)}')
        factor = 2**self.netE_num_downsampling_sp
        if x.shape[-2] % factor or x.shape[-1] % factor:
            raise ValueError(f'x height and width must be multiples of {factor} '
                             f'(2**netE_num_downsampling_sp), got {tuple(x.shape[-2:])}')
        # Unpadded stride-2 3x3 convs need 2**(gl+1) - 1 pixels; the last reflection-padded ResBlock needs > 2.
        min_mid = max(2**(self.netE_num_downsampling_gl + 1) - 1, 2 if self.netE_num_downsampling_sp else 1)
        if min(x.shape[-2:]) // factor < min_mid:
            raise ValueError(f'x is too small: needs at least {min_mid * factor} pixels per side '
                             f'for netE_num_downsampling_gl={self.netE_num_downsampling_gl}, got {tuple(x.shape[-2:])}')
        midpoint = self.DownToSpatialCode(self.FromRGB(x))
        sp = self.ToSpatialCode(midpoint)
        gl = self.DownToGlobalCode(midpoint).mean(dim=(2, 3))
        gl = self.ToGlobalCode(gl)
        return normalize(sp), normalize(gl)
