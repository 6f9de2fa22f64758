"""MetaRDN: the residual dense network trunk of the Meta-SR paper followed by the Meta-SR upscaling head."""
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

from metasr_arch.archs.meta_upsample_arch import MetaUpsample
from metasr_arch.archs.periodic import make_convs_periodic_w
from metasr_arch.archs.metasr_base import (DEFAULT_RGB_MEAN, MeanArg, MetaSRNet, ScaleRangeArg, channel_mean,
                                           check_head_options, check_positive_int)
from metasr_arch.utils.registry import register


class RDB(nn.Module):
    """Residual dense block: C densely connected 3x3 conv+ReLU layers, 1x1 local fusion, local residual.

    Args:
        num_feat: G0, channels in and out.
        num_grow_ch: G, channels each layer adds.
        num_layer: C, number of conv layers.

    Shapes:
        (N, G0, h, w) -> (N, G0, h, w).
    """

    def __init__(self, num_feat: int, num_grow_ch: int, num_layer: int):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(num_feat + c * num_grow_ch, num_grow_ch, 3, 1, 1) for c in range(num_layer))
        self.lff = nn.Conv2d(num_feat + num_layer * num_grow_ch, num_feat, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = x
        for conv in self.convs:
            # in-place ReLU: the conv's output is not needed by any backward, ReLU's own uses its output
            feats = torch.cat((feats, F.relu(conv(feats), inplace=True)), 1)
        return self.lff(feats) + x


@register(ARCH_REGISTRY)
class MetaRDN(MetaSRNet):
    """Meta-RDN (Hu et al. 2019): RDN trunk and a Meta-SR upscaling head, any (r_v, r_h) or exact size.

    Trunk (Zhang et al. 2018, configuration B of the Meta-SR paper by default): SFE1 and SFE2 (3x3),
    D residual dense blocks of C layers with growth G, global feature fusion (1x1 over all block
    outputs, then 3x3), global residual from SFE1. Head: ``MetaUpsample(num_feat, num_out_ch, ...)``.

    Args:
        num_in_ch: input channels (3 for RGB, 1 for single-channel data).
        num_out_ch: output channels.
        num_feat: G0, trunk width.
        num_block: D, number of residual dense blocks.
        num_layer: C, conv layers per block.
        num_grow_ch: G, growth rate.
        kernel_size: k of the head's predicted kernels (odd). The trunk's convs are 3x3 as in the paper.
        hidden_channels: hidden width of the weight-prediction MLP.
        img_range: input range multiplier (255 as in the paper's code: features see (x - mean) * 255).
        rgb_mean: mean subtracted when a side has 3 channels.
        mean: mean for any other channel count: a number or one per channel.
        out_mean: mean added back to the output when it differs from the input's (a number or one per
            output channel; a converted official checkpoint whose trained ``add_mean`` moved away from
            ``sub_mean``). Default None: ``rgb_mean`` / ``mean``.
        impl: the head's implementation (see ``MetaUpsample``).
        scale_range: training scales, ``[lo, hi]`` or ``[[lo_v, hi_v], [lo_h, hi_h]]``; a request
            outside warns once. None: no check.
        periodic_w: columns wrap around (longitude of a global grid): every 3x3 conv and the head read
            the other edge instead of zeros along W; rows keep zero padding. Default False (images).

    Shapes:
        forward(x (N, num_in_ch, h, w), scale=(r_v, r_h) or out_size=(H, W)) -> (N, num_out_ch, H, W).
    """

    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 64, num_block: int = 16,
                 num_layer: int = 8, num_grow_ch: int = 64, kernel_size: int = 3, hidden_channels: int = 256,
                 img_range: float = 255., rgb_mean: Sequence[float] = DEFAULT_RGB_MEAN, impl: str = 'auto',
                 mean: MeanArg = 0.5, scale_range: ScaleRangeArg = None, periodic_w: bool = False,
                 out_mean: Optional[MeanArg] = None):
        super().__init__()
        for name, value in (('num_feat', num_feat), ('num_block', num_block), ('num_layer', num_layer),
                            ('num_grow_ch', num_grow_ch), ('hidden_channels', hidden_channels)):
            check_positive_int(value, name)
        check_head_options(kernel_size, impl)
        self._init_io(num_in_ch, num_out_ch, img_range, rgb_mean, mean, scale_range)
        if out_mean is not None:
            self.mean_out = channel_mean(num_out_ch, [], out_mean, 'num_out_ch', option='out_mean')
        self.num_feat, self.num_block = num_feat, num_block

        self.sfe1 = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.sfe2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.rdbs = nn.ModuleList(RDB(num_feat, num_grow_ch, num_layer) for _ in range(num_block))
        self.gff = nn.Sequential(nn.Conv2d(num_block * num_feat, num_feat, 1), nn.Conv2d(num_feat, num_feat, 3, 1, 1))
        self.upsample = MetaUpsample(num_feat, num_out_ch, kernel_size, hidden_channels, impl, periodic_w)
        if periodic_w:
            make_convs_periodic_w(self)

    def forward_trunk(self, x: torch.Tensor) -> torch.Tensor:
        """(N, num_in_ch, h, w) -> (N, num_feat, h, w)."""
        x = (x - self.mean_in.to(x.dtype)) * self.img_range
        shallow = self.sfe1(x)
        feat = self.sfe2(shallow)
        block_outs = []
        for rdb in self.rdbs:
            feat = rdb(feat)
            block_outs.append(feat)
        return self.gff(torch.cat(block_outs, 1)) + shallow
