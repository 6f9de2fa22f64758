"""SwinIRMeta: BasicSR's SwinIR trunk followed by the Meta-SR upscaling head (any scale, any input size)."""
from typing import Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from basicsr.archs.arch_util import to_2tuple, trunc_normal_
from basicsr.archs.swinir_arch import RSTB, PatchEmbed, PatchUnEmbed
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

from metasr_arch.archs.meta_upsample_arch import MetaUpsample
from metasr_arch.archs.periodic import make_convs_periodic_w, make_swin_blocks_periodic_w
from metasr_arch.archs.metasr_base import (DEFAULT_RGB_MEAN, MeanArg, MetaSRNet, ScaleRangeArg, check_head_options,
                                           check_positive_int, check_positive_real)
from metasr_arch.utils.registry import register

RESI_CONNECTIONS = ('1conv', '3conv')


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad (N, C, h, w) at the bottom/right to multiples of ``multiple``.

    Reflect padding (as SwinIR's own test code) when the input is large enough for it; an input
    smaller than the padding it needs (e.g. 3 rows for an 8-window) is replicate-padded instead,
    since reflection cannot produce more rows than the input has.
    """
    h, w = x.shape[-2:]
    pad_h, pad_w = (-h) % multiple, (-w) % multiple
    if pad_h == 0 and pad_w == 0:
        return x
    mode = 'reflect' if pad_h < h and pad_w < w else 'replicate'
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


def _conv_block(dim: int, resi_connection: str) -> nn.Module:
    """The conv that closes each residual group, as SwinIR builds it ('1conv' or the lighter '3conv')."""
    if resi_connection == '1conv':
        return nn.Conv2d(dim, dim, 3, 1, 1)
    return nn.Sequential(
        nn.Conv2d(dim, dim // 4, 3, 1, 1), nn.LeakyReLU(negative_slope=0.2, inplace=True),
        nn.Conv2d(dim // 4, dim // 4, 1, 1, 0), nn.LeakyReLU(negative_slope=0.2, inplace=True),
        nn.Conv2d(dim // 4, dim, 3, 1, 1))


@register(ARCH_REGISTRY)
class SwinIRMeta(MetaSRNet):
    """SwinIR (Liang et al. 2021) with the Meta-SR upscaling head instead of a fixed-scale upsampler.

    The trunk is assembled from ``basicsr.archs.swinir_arch`` blocks with SwinIR's parameter names
    (``conv_first``, ``patch_embed``, ``layers``, ``norm``, ``conv_after_body``,
    ``conv_before_upsample``), so a classical-SR SwinIR checkpoint loads into the trunk with
    ``strict=False`` (its ``upsample``/``conv_last`` have no counterpart). Then
    ``conv_before_upsample`` (conv to ``num_feat`` + LeakyReLU, as SwinIR's 'pixelshuffle' path) and
    ``MetaUpsample(num_feat, in_chans, ...)``.

    Args (SwinIR's, see ``basicsr.archs.swinir_arch.SwinIR``):
        img_size: training patch size (fixes the cached attention masks; any size runs).
        patch_size: must be 1 (BasicSR's PatchEmbed does not patch).
        in_chans: input and output channels.
        embed_dim, depths, num_heads, window_size, mlp_ratio, qkv_bias, qk_scale, drop_rate,
        attn_drop_rate, drop_path_rate, norm_layer, patch_norm, img_range, resi_connection: as SwinIR.
        ape: absolute position embedding; not supported (it fixes the input size), must be False.
        use_checkpoint: must be False (basicsr 1.4.2's checkpointed path drops ``x_size``).
    Args (Meta head):
        num_feat: channels fed to the head.
        kernel_size, hidden_channels, impl: as ``MetaUpsample``.
        rgb_mean, mean, scale_range, periodic_w: as ``MetaRDN``. With ``periodic_w`` the shifted
            windows also join the first and last columns, and the input width must be a multiple of
            ``window_size`` (windows cannot tile a periodic axis otherwise).

    Shapes:
        forward(x (N, in_chans, h, w), scale=(r_v, r_h) or out_size=(H, W)) -> (N, in_chans, H, W), any h, w.
    """

    def __init__(self, img_size: Union[int, Tuple[int, int]] = 64, patch_size: int = 1, in_chans: int = 3,
                 embed_dim: int = 96, depths: Sequence[int] = (6, 6, 6, 6), num_heads: Sequence[int] = (6, 6, 6, 6),
                 window_size: int = 7, mlp_ratio: float = 4., qkv_bias: bool = True, qk_scale: float = None,
                 drop_rate: float = 0., attn_drop_rate: float = 0., drop_path_rate: float = 0.1,
                 norm_layer=nn.LayerNorm, ape: bool = False, patch_norm: bool = True, use_checkpoint: bool = False,
                 img_range: float = 1., resi_connection: str = '1conv', num_feat: int = 64, kernel_size: int = 3,
                 hidden_channels: int = 256, impl: str = 'auto', rgb_mean: Sequence[float] = DEFAULT_RGB_MEAN,
                 mean: MeanArg = 0.5, scale_range: ScaleRangeArg = None, periodic_w: bool = False):
        super().__init__()
        self._check_options(img_size, patch_size, embed_dim, depths, num_heads, window_size, mlp_ratio, ape,
                            use_checkpoint, resi_connection, num_feat, hidden_channels)
        check_head_options(kernel_size, impl)
        self._init_io(in_chans, in_chans, img_range, rgb_mean, mean, scale_range, 'in_chans', 'in_chans')
        self.window_size, self.embed_dim = window_size, embed_dim
        img_size = to_2tuple(img_size)
        resolution = (img_size[0], img_size[1])

        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        self.patch_embed = PatchEmbed(img_size=img_size, patch_size=1, in_chans=embed_dim, embed_dim=embed_dim,
                                      norm_layer=norm_layer if patch_norm else None)
        self.patch_unembed = PatchUnEmbed(img_size=img_size, patch_size=1, in_chans=embed_dim, embed_dim=embed_dim)
        self.pos_drop = nn.Dropout(p=drop_rate)
        # stochastic depth rate rises linearly over all blocks, as in SwinIR
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.layers = nn.ModuleList()
        for i, depth in enumerate(depths):
            start = sum(depths[:i])
            self.layers.append(
                RSTB(dim=embed_dim, input_resolution=resolution, depth=depth, num_heads=num_heads[i],
                     window_size=window_size, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale,
                     drop=drop_rate, attn_drop=attn_drop_rate, drop_path=dpr[start:start + depth],
                     norm_layer=norm_layer, downsample=None, use_checkpoint=False, img_size=img_size,
                     patch_size=1, resi_connection=resi_connection))
        self.norm = norm_layer(embed_dim)
        self.conv_after_body = _conv_block(embed_dim, resi_connection)
        self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, num_feat, 3, 1, 1), nn.LeakyReLU(inplace=True))
        # SwinIR's initialisation, applied to the trunk only: the head keeps MetaUpsample's own.
        for module in (self.patch_embed, self.layers, self.norm):
            module.apply(self._init_weights)
        self.upsample = MetaUpsample(num_feat, in_chans, kernel_size, hidden_channels, impl, periodic_w)
        self.periodic_w = periodic_w
        if periodic_w:
            make_convs_periodic_w(self)
            make_swin_blocks_periodic_w(self.layers)

    @staticmethod
    def _check_options(img_size, patch_size, embed_dim, depths, num_heads, window_size, mlp_ratio, ape,
                       use_checkpoint, resi_connection, num_feat, hidden_channels) -> None:
        for name, value in (('embed_dim', embed_dim), ('window_size', window_size), ('num_feat', num_feat),
                            ('hidden_channels', hidden_channels)):
            check_positive_int(value, name)
        sizes = img_size if isinstance(img_size, (list, tuple)) else (img_size, img_size)
        if len(sizes) != 2:
            raise ValueError(f'img_size must be an int or a pair (h, w), got {img_size!r}')
        for value in sizes:
            check_positive_int(value, 'img_size')
        # BasicSR's blocks silently shrink the window to the patch when it is larger, and their cached
        # shifted-window mask is built with window partitions of img_size: both need these checks.
        if window_size > min(sizes):
            raise ValueError(f'window_size={window_size} is larger than allowed: it must be <= min(img_size) = '
                             f'{min(sizes)} (the training patch), or BasicSR shrinks the windows silently')
        if any(s % window_size for s in sizes):
            raise ValueError(f'img_size={img_size!r} must be a multiple of window_size={window_size}')
        if patch_size != 1:
            raise ValueError(f'patch_size must be 1 (BasicSR\'s PatchEmbed does not patch), got {patch_size!r}')
        if not isinstance(depths, (list, tuple)) or not depths or not isinstance(num_heads, (list, tuple)) \
                or len(depths) != len(num_heads):
            raise ValueError(f'depths and num_heads must be non-empty lists of equal length, got depths={depths!r}, '
                             f'num_heads={num_heads!r}')
        for value in depths:
            check_positive_int(value, 'depths')
        for value in num_heads:
            check_positive_int(value, 'num_heads')
            if embed_dim % value:
                raise ValueError(f'embed_dim={embed_dim} must be divisible by every num_heads entry, got {value}')
        check_positive_real(mlp_ratio, 'mlp_ratio')
        if resi_connection not in RESI_CONNECTIONS:
            raise ValueError(f'resi_connection must be one of {RESI_CONNECTIONS}, got {resi_connection!r}')
        if resi_connection == '3conv' and embed_dim < 4:
            raise ValueError(f"resi_connection='3conv' needs embed_dim >= 4, got {embed_dim}")
        if ape:
            raise ValueError('ape=True is not supported: an absolute position embedding fixes the input size')
        if use_checkpoint:
            raise ValueError('use_checkpoint=True is not supported: basicsr 1.4.2 BasicLayer calls '
                             'checkpoint(blk, x) without x_size')

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.bias, 0)
            nn.init.constant_(m.weight, 1.0)

    @torch.jit.ignore
    def no_weight_decay_keywords(self):
        return {'relative_position_bias_table'}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """SwinIR's transformer body: (N, embed_dim, Hp, Wp) -> same shape (Hp, Wp multiples of the window)."""
        x_size = (x.shape[2], x.shape[3])
        x = self.pos_drop(self.patch_embed(x))
        for layer in self.layers:
            x = layer(x, x_size)
        return self.patch_unembed(self.norm(x), x_size)

    def forward_trunk(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_chans, h, w) -> (N, num_feat, h, w) for any h, w.

        The input is padded to multiples of ``window_size`` and the features are cropped back to
        h x w *before* the head. The head then sees exactly the input's geometry: output pixel
        (i, j) reads the k x k low-resolution neighbourhood of (floor(i / r_v), floor(j / r_h)) of
        the real input, with the same zero border as an unpadded input, and ``out_size`` / ``scale``
        give exactly the requested H x W in one step. Upscaling the padded map and cropping would
        instead (a) spend the head's cost, the largest tensor of the network, on discarded pixels,
        (b) need the padded output size recomputed per axis so that the crop lands exactly on
        (H, W) for non-integer scales, and (c) let padded features leak into the last rows through
        the head's kernel.
        """
        h, w = x.shape[2], x.shape[3]
        if self.periodic_w and w % self.window_size:
            raise ValueError(f'periodic_w needs an input width that is a multiple of window_size='
                             f'{self.window_size}, got {w} columns (pad or crop the longitudes)')
        x = (x - self.mean_in.to(x.dtype)) * self.img_range
        x = pad_to_multiple(x, self.window_size)
        x = self.conv_first(x)
        x = self.conv_after_body(self.forward_features(x)) + x
        x = self.conv_before_upsample(x)
        return x[:, :, :h, :w]
