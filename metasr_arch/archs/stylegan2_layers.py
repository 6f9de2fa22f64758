"""StyleGAN2 building blocks as used by the Swapping Autoencoder (Park et al. 2020).

These layers reuse BasicSR's ``basicsr/archs/stylegan2_arch.py`` and ``basicsr/ops`` where those are
correct, and fill the gaps the Swapping Autoencoder needs:

* ``EqualConv2d`` gains ``lr_mul``; ``EqualLinear`` accepts (N, C, H, W) input through a 1x1 conv.
* ``Blur`` keeps its kernel as a buffer, supports an upsample gain and reflection padding.
* ``ConvLayer`` has ``pad`` / ``reflection_pad`` and the named children ``Blur`` / ``RefPad`` / ``Conv`` /
  ``Act`` (state-dict keys compatible with the Swapping Autoencoder's checkpoints).
* ``upfirdn2d`` and ``fused_leaky_relu`` dispatch: BasicSR's CUDA kernels when the extension is built
  and the tensors live on a GPU, otherwise an exact native PyTorch path. BasicSR's own
  ``fused_leaky_relu`` has no CPU path and its ``upfirdn2d`` raises ``NameError`` on a GPU without the
  extension; neither happens here.

Not registered in any registry: these are layers, not networks (the file is deliberately not ``*_arch.py``).
"""
import functools
import math
from collections import OrderedDict
from types import ModuleType
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.nn import functional as F

from basicsr.archs.stylegan2_arch import EqualConv2d as _BasicEqualConv2d
from basicsr.archs.stylegan2_arch import EqualLinear as _BasicEqualLinear
from basicsr.archs.stylegan2_arch import ScaledLeakyReLU  # correct as is: leaky_relu(x) * sqrt(2)
from basicsr.archs.stylegan2_arch import make_resample_kernel

__all__ = [
    'EqualConv2d', 'EqualLinear', 'make_kernel', 'Blur', 'ConvLayer', 'FusedLeakyReLU', 'fused_leaky_relu',
    'ScaledLeakyReLU', 'ResBlock', 'normalize', 'upfirdn2d', 'cuda_ops_available'
]

# --------------------------------------------------------------------------------------------------
# Optional CUDA extensions of BasicSR, imported lazily
# --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _basicsr_op_module(name: str) -> Optional[ModuleType]:
    """BasicSR's op module ``name`` ('upfirdn2d' or 'fused_act') if its compiled extension is present.

    BasicSR's op modules swallow the ``ImportError`` of a missing prebuilt extension (leaving the
    extension name undefined, so calling them later is a ``NameError``), and JIT-compile when
    ``BASICSR_JIT=True`` (which may fail with any exception). Both cases mean "not available" here.
    """
    ext_attr = {'upfirdn2d': 'upfirdn2d_ext', 'fused_act': 'fused_act_ext'}[name]
    try:
        module = __import__(f'basicsr.ops.{name}.{name}', fromlist=[name])
    except Exception:  # noqa: BLE001  (a failed JIT build raises arbitrary errors)
        return None
    return module if hasattr(module, ext_attr) else None


def cuda_ops_available(name: str) -> bool:
    """Whether BasicSR's compiled CUDA op ``name`` ('upfirdn2d' or 'fused_act') can be used."""
    if name not in ('upfirdn2d', 'fused_act'):
        raise ValueError(f"name must be 'upfirdn2d' or 'fused_act', got {name!r}")
    return _basicsr_op_module(name) is not None


def _use_cuda_op(name: str, *tensors: torch.Tensor) -> bool:
    return all(t.is_cuda for t in tensors) and cuda_ops_available(name)


# --------------------------------------------------------------------------------------------------
# upfirdn2d
# --------------------------------------------------------------------------------------------------


def upfirdn2d(input: torch.Tensor,
              kernel: torch.Tensor,
              up: int = 1,
              down: int = 1,
              pad: Union[Tuple[int, int], Tuple[int, int, int, int]] = (0, 0)) -> torch.Tensor:
    """Upsample (zero insertion), pad, FIR-filter (true convolution) and downsample (subsampling).

    Args:
        input (Tensor): (N, C, H, W).
        kernel (Tensor): (kh, kw) FIR filter, applied as a convolution (i.e. flipped correlation).
        up (int): upsampling factor on both axes (``up - 1`` zeros after each sample).
        down (int): downsampling factor on both axes (keeps every ``down``-th sample from the first).
        pad (tuple): (p0, p1) applied to both axes, or (x0, x1, y0, y1). Negative values crop.

    Returns:
        Tensor: (N, C, (H*up + y0 + y1 - kh) // down + 1, (W*up + x0 + x1 - kw) // down + 1).
    """
    if input.dim() != 4:
        raise ValueError(f'input must be (N, C, H, W), got shape {tuple(input.shape)}')
    if kernel.dim() != 2:
        raise ValueError(f'kernel must be 2-D (kh, kw), got shape {tuple(kernel.shape)}')
    if int(up) < 1 or int(down) < 1:
        raise ValueError(f'up and down must be >= 1, got up={up}, down={down}')
    if len(pad) == 2:
        pad4 = (int(pad[0]), int(pad[1]), int(pad[0]), int(pad[1]))
    elif len(pad) == 4:
        pad4 = tuple(int(p) for p in pad)
    else:
        raise ValueError(f'pad must have 2 or 4 entries, got {pad!r}')
    kernel = kernel.to(dtype=input.dtype, device=input.device)
    if _use_cuda_op('upfirdn2d', input):
        ops = _basicsr_op_module('upfirdn2d')
        return ops.UpFirDn2d.apply(input, kernel, (up, up), (down, down), pad4)
    # BasicSR's native path is exact (zero-insert, pad/crop, conv with the flipped kernel, subsample).
    from basicsr.ops.upfirdn2d.upfirdn2d import upfirdn2d_native
    return upfirdn2d_native(input, kernel, up, up, down, down, *pad4)


# --------------------------------------------------------------------------------------------------
# Activations
# --------------------------------------------------------------------------------------------------


def fused_leaky_relu(input: torch.Tensor,
                     bias: Optional[torch.Tensor],
                     negative_slope: float = 0.2,
                     scale: float = 2**0.5) -> torch.Tensor:
    """``leaky_relu(input + bias, negative_slope) * scale`` with the bias broadcast over channels.

    Args:
        input (Tensor): (N, C, ...) (any number of trailing dims, including none).
        bias (Tensor | None): (C,).
        negative_slope (float): slope for negative inputs.
        scale (float): output gain (sqrt(2) keeps the variance of a unit Gaussian).

    Returns:
        Tensor: same shape as ``input``.
    """
    if input.dim() < 2:
        raise ValueError(f'input must be (N, C, ...), got shape {tuple(input.shape)}')
    if bias is not None and (bias.dim() != 1 or bias.numel() != input.shape[1]):
        raise ValueError(f'bias must have shape ({input.shape[1]},), got {tuple(bias.shape)}')
    if bias is not None and _use_cuda_op('fused_act', input, bias) and input.dtype == bias.dtype:
        ops = _basicsr_op_module('fused_act')
        return ops.FusedLeakyReLUFunction.apply(input.contiguous(), bias, negative_slope, scale)
    if bias is not None:
        input = input + bias.view(1, -1, *([1] * (input.dim() - 2)))
    return F.leaky_relu(input, negative_slope) * scale


class FusedLeakyReLU(nn.Module):
    """Learned per-channel bias followed by a scaled leaky ReLU (see :func:`fused_leaky_relu`).

    Args:
        channel (int): number of channels C of the (N, C, ...) input.
        negative_slope (float): slope for negative inputs. Default: 0.2.
        scale (float): output gain. Default: sqrt(2).
    """

    def __init__(self, channel: int, negative_slope: float = 0.2, scale: float = 2**0.5):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channel))
        self.negative_slope = negative_slope
        self.scale = scale

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """(N, C, ...) -> (N, C, ...)."""
        return fused_leaky_relu(input, self.bias, self.negative_slope, self.scale)


# --------------------------------------------------------------------------------------------------
# Equalised-learning-rate layers
# --------------------------------------------------------------------------------------------------


class EqualConv2d(_BasicEqualConv2d):
    """BasicSR's equalised conv with a learning-rate multiplier.

    The weight is stored as N(0, 1) and scaled at run time by ``lr_mul / sqrt(in_channels * k * k)``,
    so the gradient that reaches the stored weight is ``lr_mul`` times that of an unscaled layer
    (the Swapping Autoencoder's definition: the initial weight is *not* divided by ``lr_mul``).

    Args:
        in_channels (int), out_channels (int), kernel_size (int), stride (int), padding (int), bias (bool),
        bias_init_val (float): as ``basicsr.archs.stylegan2_arch.EqualConv2d``.
        lr_mul (float): learning-rate multiplier of the weight. Default: 1.

    Shapes: (N, in_channels, H, W) -> (N, out_channels, H', W') as ``F.conv2d``.
    """

    def __init__(self,
                 in_channels: int,
                 out_channels: int,
                 kernel_size: int,
                 stride: int = 1,
                 padding: int = 0,
                 bias: bool = True,
                 bias_init_val: float = 0,
                 lr_mul: float = 1.0):
        if lr_mul <= 0:
            raise ValueError(f'lr_mul must be > 0, got {lr_mul}')
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, bias, bias_init_val)
        self.lr_mul = lr_mul
        self.scale = self.scale * lr_mul


class EqualLinear(_BasicEqualLinear):
    """BasicSR's equalised linear layer, extended to (N, C, H, W) input and any-device activation.

    ``activation='fused_lrelu'`` (or ``True``, the Swapping Autoencoder's spelling) applies
    :func:`fused_leaky_relu` with the layer's bias; otherwise the bias is added linearly.
    The effective weight is ``weight * lr_mul / sqrt(in_channels)`` and the effective bias ``bias * lr_mul``.

    Args:
        in_channels (int), out_channels (int), bias (bool), bias_init_val (float), lr_mul (float):
            as ``basicsr.archs.stylegan2_arch.EqualLinear``.
        activation (None | str | bool): None/False or 'fused_lrelu'/True.

    Shapes: (N, in_channels) -> (N, out_channels); (N, in_channels, H, W) -> (N, out_channels, H, W)
    through a 1x1 convolution.
    """

    def __init__(self,
                 in_channels: int,
                 out_channels: int,
                 bias: bool = True,
                 bias_init_val: float = 0,
                 lr_mul: float = 1,
                 activation: Union[None, str, bool] = None):
        if activation is True:
            activation = 'fused_lrelu'
        elif activation is False:
            activation = None
        if lr_mul <= 0:
            raise ValueError(f'lr_mul must be > 0, got {lr_mul}')
        super().__init__(in_channels, out_channels, bias, bias_init_val, lr_mul, activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in) -> (N, out), or (N, in, H, W) -> (N, out, H, W)."""
        if x.dim() not in (2, 4):
            raise ValueError(f'x must be (N, C) or (N, C, H, W), got shape {tuple(x.shape)}')
        if x.shape[1] != self.in_channels:
            raise ValueError(f'x has {x.shape[1]} channels, EqualLinear expects {self.in_channels}')
        bias = None if self.bias is None else self.bias * self.lr_mul
        weight = self.weight * self.scale
        linear_bias = None if self.activation == 'fused_lrelu' else bias
        if x.dim() == 4:
            out = F.conv2d(x, weight[:, :, None, None], bias=linear_bias)
        else:
            out = F.linear(x, weight, bias=linear_bias)
        if self.activation == 'fused_lrelu':
            out = fused_leaky_relu(out, bias)
        return out


# --------------------------------------------------------------------------------------------------
# Blur, ConvLayer, ResBlock
# --------------------------------------------------------------------------------------------------


def make_kernel(k: Sequence) -> torch.Tensor:
    """Normalised 2-D FIR kernel: the outer product of a 1-D ``k`` (or ``k`` itself if 2-D), summing to 1.

    Args:
        k (sequence | Tensor): 1-D taps (e.g. [1, 2, 1]) or a 2-D kernel.

    Returns:
        Tensor: (len(k), len(k)) float32 (or k's 2-D shape).
    """
    k_t = torch.as_tensor(k, dtype=torch.float32)
    if k_t.dim() not in (1, 2) or k_t.numel() == 0:
        raise ValueError(f'k must be a non-empty 1-D or 2-D kernel, got shape {tuple(k_t.shape)}')
    if float(k_t.sum()) == 0:
        raise ValueError('k must not sum to zero (it is normalised to sum 1)')
    return make_resample_kernel(k_t.tolist())


class Blur(nn.Module):
    """FIR low-pass filter (``upfirdn2d`` with up = down = 1), zero- or reflection-padded.

    Args:
        kernel (sequence): 1-D taps or 2-D kernel, normalised by :func:`make_kernel`; stored as a buffer.
        pad (tuple[int, int]): (before, after) padding of both spatial axes.
        upsample_factor (int): the kernel is multiplied by ``upsample_factor ** 2`` to restore the
            gain lost by zero-insertion when this blur follows a transposed (upsampling) conv.
        reflection_pad (bool): pad by reflection instead of zeros.

    Shapes: (N, C, H, W) -> (N, C, H + p0 + p1 - kh + 1, W + p0 + p1 - kw + 1).
    """

    def __init__(self,
                 kernel: Sequence,
                 pad: Tuple[int, int],
                 upsample_factor: int = 1,
                 reflection_pad: bool = False):
        super().__init__()
        if len(pad) != 2:
            raise ValueError(f'pad must be (before, after), got {pad!r}')
        kernel = make_kernel(kernel)
        if upsample_factor > 1:
            kernel = kernel * (upsample_factor**2)
        self.register_buffer('kernel', kernel)
        self.pad = (int(pad[0]), int(pad[1]))
        self.reflection = reflection_pad
        if reflection_pad:
            if min(self.pad) < 0:
                raise ValueError(f'reflection_pad needs a non-negative pad, got {pad!r}')
            # (left, right, top, bottom); upfirdn2d then pads nothing.
            self.reflection_pad = nn.ReflectionPad2d((self.pad[0], self.pad[1], self.pad[0], self.pad[1]))
            self.pad = (0, 0)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, C, H', W'), see the class docstring."""
        if self.reflection:
            input = self.reflection_pad(input)
        return upfirdn2d(input, self.kernel, pad=self.pad)


class ConvLayer(nn.Sequential):
    """Equalised conv with optional blur-downsampling (stride 2) and activation.

    Children (named as the Swapping Autoencoder's, so its checkpoints load): ``Blur`` (when
    downsampling), ``RefPad`` (reflection padding without downsampling), ``Conv`` (EqualConv2d) and
    ``Act`` (FusedLeakyReLU with the bias when ``bias``, else ScaledLeakyReLU(0.2)).

    Args:
        in_channels (int), out_channels (int), kernel_size (int).
        downsample (bool): blur with ``blur_kernel`` then convolve with stride 2.
        blur_kernel (sequence): 1-D taps of the anti-aliasing blur. Default: [1, 3, 3, 1].
        bias (bool): learn a bias (in the activation when ``activate``, else in the conv).
        activate (bool): apply the activation.
        pad (int | None): total blur padding when downsampling (default: len(blur_kernel) - 2 +
            kernel_size - 1, split ceil/floor), else the conv's padding (default kernel_size // 2).
        reflection_pad (bool): pad by reflection instead of zeros.

    Shapes: (N, in, H, W) -> (N, out, H', W'); without downsampling and default pad H' = H for odd
    kernel sizes; with downsampling and default pad H' = (H - 2) // 2 + 1 (= H / 2 for even H).
    """

    def __init__(self,
                 in_channels: int,
                 out_channels: int,
                 kernel_size: int,
                 downsample: bool = False,
                 blur_kernel: Sequence = (1, 3, 3, 1),
                 bias: bool = True,
                 activate: bool = True,
                 pad: Optional[int] = None,
                 reflection_pad: bool = False):
        layers: List[Tuple[str, nn.Module]] = []
        if downsample:
            factor = 2
            if pad is None:
                pad = (len(blur_kernel) - factor) + (kernel_size - 1)
            layers.append(('Blur', Blur(blur_kernel, pad=((pad + 1) // 2, pad // 2), reflection_pad=reflection_pad)))
            stride, padding = 2, 0
        else:
            stride = 1
            padding = kernel_size // 2 if pad is None else pad
            if reflection_pad:
                layers.append(('RefPad', nn.ReflectionPad2d(padding)))
                padding = 0
        layers.append(('Conv',
                       EqualConv2d(
                           in_channels,
                           out_channels,
                           kernel_size,
                           stride=stride,
                           padding=padding,
                           bias=bias and not activate)))
        if activate:
            layers.append(('Act', FusedLeakyReLU(out_channels) if bias else ScaledLeakyReLU(0.2)))
        super().__init__(OrderedDict(layers))
        self.padding = padding


class ResBlock(nn.Module):
    """Residual block: two 3x3 ConvLayers (the second optionally downsampling) plus a 1x1 skip,
    combined as ``(out + skip) / sqrt(2)`` to keep unit variance.

    Args:
        in_channels (int), out_channels (int).
        blur_kernel (sequence): anti-aliasing taps for the downsampling layers. Default: [1, 3, 3, 1].
        reflection_pad (bool): reflection padding in the main branch (not in the skip, as the seed).
        pad (int | None): passed to the main branch's ConvLayers.
        downsample (bool): halve the resolution. Default: True.

    Shapes: (N, in, H, W) -> (N, out, (H - 2) // 2 + 1, (W - 2) // 2 + 1) when downsampling with the
    default pad, else (N, out, H, W).
    """

    def __init__(self,
                 in_channels: int,
                 out_channels: int,
                 blur_kernel: Sequence = (1, 3, 3, 1),
                 reflection_pad: bool = False,
                 pad: Optional[int] = None,
                 downsample: bool = True):
        super().__init__()
        self.conv1 = ConvLayer(in_channels, in_channels, 3, reflection_pad=reflection_pad, pad=pad)
        self.conv2 = ConvLayer(
            in_channels,
            out_channels,
            3,
            downsample=downsample,
            blur_kernel=blur_kernel,
            reflection_pad=reflection_pad,
            pad=pad)
        self.skip = ConvLayer(
            in_channels, out_channels, 1, downsample=downsample, blur_kernel=blur_kernel, activate=False, bias=False)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """(N, in, H, W) -> (N, out, H', W'), see the class docstring."""
        out = self.conv2(self.conv1(input))
        return (out + self.skip(input)) / math.sqrt(2)


def normalize(v: Union[torch.Tensor, List[torch.Tensor]]) -> Union[torch.Tensor, List[torch.Tensor]]:
    """L2-normalise along dim 1: ``v / sqrt(sum(v**2, dim=1) + 1e-8)`` (lists element-wise).

    Args:
        v (Tensor | list[Tensor]): (N, C, ...) tensors.

    Returns:
        Same structure, each (N, C, ...) with unit norm over C at every other index.
    """
    if isinstance(v, (list, tuple)):
        return [normalize(vv) for vv in v]
    return v * torch.rsqrt(torch.sum(v**2, dim=1, keepdim=True) + 1e-8)
