"""FixedScaleRDN: the MetaRDN trunk with BasicSR's pixel-shuffle upsampler, for one integer scale.

It is the per-scale baseline of the Meta-SR paper's comparison (and of
``scripts/experiments/meta_vs_fixed.py``): the same residual dense trunk as ``MetaRDN``, followed by
``basicsr.archs.arch_util.Upsample`` (x2, x3, x4: 3x3 conv + PixelShuffle, twice for x4) and a 3x3 conv
to the output channels, as in EDSR/RCAN. Its forward takes the same ``scale=`` / ``out_size=`` arguments
as the Meta networks, so ``MetaSRModel`` trains and validates it unchanged (with a ``choice`` scale
sampler of its one scale); any other request is an error, not a silently wrong size.
"""
from typing import Sequence

import torch
from basicsr.archs.arch_util import Upsample
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

from metasr_arch.archs.metardn_arch import MetaRDN
from metasr_arch.archs.metasr_base import DEFAULT_RGB_MEAN, MeanArg
from metasr_arch.ops.geometry import ScaleArg, SizeArg
from metasr_arch.utils.registry import register

SUPPORTED_SCALES = (2, 3, 4)
_EPS = 1e-9


class PixelShuffleHead(nn.Module):
    """BasicSR's ``Upsample(scale, num_feat)`` followed by a 3x3 conv to ``num_out_ch``.

    Shapes:
        (N, num_feat, h, w) -> (N, num_out_ch, scale * h, scale * w).
    """

    def __init__(self, num_feat: int, num_out_ch: int, scale: int):
        super().__init__()
        # read by MetaSRNet's memory check before the trunk runs: its lower bound (the output twice plus
        # (C_in * k * k, h, w) unfolded features) holds for this head's 3x3 convs too
        self.in_channels, self.kernel_size = num_feat, 3
        self.upsample = Upsample(scale, num_feat)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        return self.conv_last(self.upsample(feat))


@register(ARCH_REGISTRY)
class FixedScaleRDN(MetaRDN):
    """RDN trunk (as ``MetaRDN``) + pixel-shuffle upsampler for one integer ``scale`` in {2, 3, 4}.

    Args:
        scale: the one magnification the network serves (2, 3 or 4).
        num_in_ch, num_out_ch, num_feat, num_block, num_layer, num_grow_ch, img_range, rgb_mean, mean:
            as ``MetaRDN`` (the trunk and the mean shift are MetaRDN's own code).

    Shapes:
        forward(x (N, num_in_ch, h, w), scale=r or (r, r) or out_size=(r*h, r*w)) -> (N, num_out_ch, r*h, r*w).

    Raises:
        ValueError from forward when the request is not exactly this network's scale.
    """

    def __init__(self, scale: int = 2, num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 64,
                 num_block: int = 16, num_layer: int = 8, num_grow_ch: int = 64, img_range: float = 255.,
                 rgb_mean: Sequence[float] = DEFAULT_RGB_MEAN, mean: MeanArg = 0.5):
        if isinstance(scale, bool) or scale not in SUPPORTED_SCALES:
            raise ValueError(f'scale must be one of {SUPPORTED_SCALES} (pixel-shuffle upsampler), got {scale!r}')
        # MetaRDN builds the trunk and a Meta head in one constructor: ask for the smallest head
        # (1x1 kernel, one hidden unit) and replace it; the trunk code stays MetaRDN's.
        super().__init__(num_in_ch, num_out_ch, num_feat, num_block, num_layer, num_grow_ch, kernel_size=1,
                         hidden_channels=1, img_range=img_range, rgb_mean=rgb_mean, mean=mean)
        self.scale = int(scale)
        self.upsample = PixelShuffleHead(num_feat, num_out_ch, self.scale)

    def residual_last_layer(self) -> nn.Module:
        """The pixel-shuffle head's last convolution (zeroed by ``zero_init_residual``)."""
        return self.upsample.conv_last

    @property
    def impl(self) -> str:
        """'pixelshuffle': there is no Meta-upscale operator to choose an implementation for."""
        return 'pixelshuffle'

    @impl.setter
    def impl(self, value: str) -> None:
        raise ValueError(f'FixedScaleRDN has no Meta-upscale head; impl={value!r} does not apply')

    def forward(self, x: torch.Tensor, scale: ScaleArg = None, out_size: SizeArg = None) -> torch.Tensor:
        """Super-resolve ``x`` (N, C_in, h, w) by this network's scale; ``scale``/``out_size`` must say the same.

        Returns:
            (N, C_out, scale * h, scale * w).
        """
        spec = self._resolve(x, scale, out_size)
        r = self.scale
        h, w = x.shape[-2:]
        if abs(spec.r_v - r) > _EPS or abs(spec.r_h - r) > _EPS or (spec.out_h, spec.out_w) != (r * h, r * w):
            asked = f'scale={scale!r}' if scale is not None else f'out_size={tuple(out_size)!r}'
            raise ValueError(f'FixedScaleRDN(scale={r}) serves only x{r} (output {r * h}x{r * w} for a {h}x{w} '
                             f'input), got {asked}')
        out = self.upsample(self.forward_trunk(x))
        return out / self.img_range + self.mean_out.to(out.dtype)


