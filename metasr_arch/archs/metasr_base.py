"""``MetaSRNet``: the small base both Meta-SR networks of this package (MetaRDN, SwinIRMeta) share.

It holds the mean shift with ``img_range``, the scale-range warning, the option checks and
``forward(x, scale, out_size)``; a subclass builds its trunk and a ``MetaUpsample`` head.
"""
import math
import warnings
from numbers import Real
from typing import Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from metasr_arch.archs.meta_upsample_arch import MODULE_IMPLS, MetaUpsample
from metasr_arch.ops.geometry import ScaleArg, ScaleSpec, SizeArg, resolve_scale
from metasr_arch.utils.memory import check_request
# the option checks live on the ground floor (the CLIs use them without the archs); re-exported here
from metasr_arch.utils.options import OptionError, check_network_options, check_network_sections  # noqa: F401

DEFAULT_RGB_MEAN = (0.4488, 0.4371, 0.4040)  # DIV2K RGB mean, as in BasicSR's RCAN/SwinIR and the Meta-SR code
MeanArg = Union[float, Sequence[float]]
ScaleRangeArg = Optional[Sequence]
_RANGE_EPS = 1e-9  # scales on the range's edges are inside it despite float noise
# persistent flag buffer of a network trained as a residual over bicubic from a zero start (bicubic_skip)
RESIDUAL_FLAG = 'bicubic_residual'


def check_positive_int(value, name: str) -> int:
    """Return ``value`` if it is an int >= 1, else raise ValueError naming the option ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f'{name} must be a positive integer, got {value!r}')
    return value


def check_positive_real(value, name: str) -> float:
    """Return ``float(value)`` if it is a finite real > 0, else raise ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f'{name} must be a positive finite number, got {value!r}')
    return float(value)


def check_head_options(kernel_size, impl) -> None:
    """Validate the Meta head's ``kernel_size`` (odd, >= 1) and ``impl`` before an expensive trunk is built."""
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f'kernel_size must be a positive odd integer, got {kernel_size!r}')
    if impl not in MODULE_IMPLS:
        raise ValueError(f'impl must be one of {MODULE_IMPLS}, got {impl!r}')


def channel_mean(num_ch: int, rgb_mean: Sequence[float], mean: MeanArg, name: str,
                 option: str = 'mean') -> torch.Tensor:
    """Per-channel mean (1, C, 1, 1): ``rgb_mean`` for 3 channels, else ``mean`` (a number or C numbers).

    Args:
        num_ch: C, the channel count the mean applies to.
        name: the channel option (``num_in_ch`` ...) for error messages.
        option: the name of ``mean`` in messages; when it is not 'mean', ``mean`` applies to 3 channels too.
    """
    if num_ch == 3 and option == 'mean':
        values, option = rgb_mean, 'rgb_mean'
        if isinstance(values, Real) or len(values) != 3:
            raise ValueError(f'rgb_mean must be 3 numbers, got {rgb_mean!r}')
    else:
        values = [mean] * num_ch if isinstance(mean, Real) else list(mean)
        if len(values) != num_ch:
            raise ValueError(f'{option} must be a number or {num_ch} numbers ({name}={num_ch}), got {mean!r}')
    for v in values:
        if isinstance(v, bool) or not isinstance(v, Real) or not math.isfinite(v):
            raise ValueError(f'{option} must contain finite numbers, got {values!r}')
    # float64: a float32 copy of 0.4488 is off by ~1e-8, i.e. 3e-6 after img_range=255 (see the converter test);
    # forward casts to the input's dtype.
    return torch.tensor([float(v) for v in values], dtype=torch.float64).view(1, num_ch, 1, 1)


def parse_scale_range(scale_range: ScaleRangeArg) -> Optional[Tuple[Tuple[float, float], Tuple[float, float]]]:
    """``[lo, hi]`` (both axes) or ``[[lo_v, hi_v], [lo_h, hi_h]]`` -> ((lo_v, hi_v), (lo_h, hi_h)); None stays None."""
    if scale_range is None:
        return None

    def pair(value) -> Tuple[float, float]:
        if isinstance(value, (list, tuple)) and len(value) == 2 and all(
                isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v) for v in value):
            lo, hi = float(value[0]), float(value[1])
            if 1 <= lo <= hi:
                return lo, hi
        raise ValueError('scale_range must be [lo, hi] or [[lo_v, hi_v], [lo_h, hi_h]] with 1 <= lo <= hi, '
                         f'got {scale_range!r}')

    if isinstance(scale_range, (list, tuple)) and len(scale_range) == 2 \
            and all(isinstance(v, (list, tuple)) for v in scale_range):
        return pair(scale_range[0]), pair(scale_range[1])
    both = pair(scale_range)
    return both, both


class MetaSRNet(nn.Module):
    """Base of the Meta-SR networks: a trunk (``forward_trunk``) and a ``MetaUpsample`` head (``upsample``).

    Subclasses call ``_init_io`` and build ``self.upsample``; ``forward_trunk`` subtracts the mean and
    scales by ``img_range`` itself. ``forward`` adds the mean back to the head's output.

    Shapes:
        forward(x (N, C_in, h, w), scale=(r_v, r_h) or out_size=(H, W)) -> (N, C_out, H, W).
    """

    upsample: MetaUpsample

    def _init_io(self, num_in_ch: int, num_out_ch: int, img_range: float, rgb_mean: Sequence[float],
                 mean: MeanArg, scale_range: ScaleRangeArg, in_name: str = 'num_in_ch',
                 out_name: str = 'num_out_ch') -> None:
        self.num_in_ch = check_positive_int(num_in_ch, in_name)
        self.num_out_ch = check_positive_int(num_out_ch, out_name)
        self.img_range = check_positive_real(img_range, 'img_range')
        self.scale_range = parse_scale_range(scale_range)
        self._range_warned = False
        # Buffers follow .to()/.half() like the network's parameters. Non-persistent: the mean is a
        # constructor option (as in BasicSR's RCAN/SwinIR), so checkpoints do not depend on it.
        self.register_buffer('mean_in', channel_mean(num_in_ch, rgb_mean, mean, in_name), persistent=False)
        self.register_buffer('mean_out', channel_mean(num_out_ch, rgb_mean, mean, out_name), persistent=False)

    @property
    def impl(self) -> str:
        """The head's implementation (settable, see ``MetaUpsample``)."""
        return self.upsample.impl

    @impl.setter
    def impl(self, value: str) -> None:
        self.upsample.impl = value

    def _resolve(self, x: torch.Tensor, scale: ScaleArg, out_size: SizeArg) -> ScaleSpec:
        """Validate ``x`` and the request; warn once when the scale lies outside ``scale_range``.

        Raises:
            RequestTooLargeError (a ValueError) when the output cannot fit in memory
            (``metasr_arch.utils.memory``; ``METASR_MEMORY_LIMIT`` sets the limit).
        """
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise ValueError(f'x must be a 4-D tensor (N, C, h, w), got {getattr(x, "shape", type(x).__name__)}')
        if not x.is_floating_point():  # uint8 images would wrap around in the mean shift
            raise TypeError(f'x must be a floating-point tensor (an image scaled to [0, 1]), got {x.dtype}')
        if x.shape[1] != self.num_in_ch:
            raise ValueError(f'x has {x.shape[1]} channels, the network expects {self.num_in_ch}')
        spec = resolve_scale(x.shape[2], x.shape[3], scale, out_size)
        # before any allocation: --scale 1e6 would otherwise run for minutes and exhaust the memory.
        # Not inside a compiled graph (train.compile scope net): querying the machine would break it.
        if not torch.compiler.is_compiling():
            check_request(x.shape[0], self.upsample.in_channels, self.num_out_ch, x.shape[2], x.shape[3],
                          spec.out_h, spec.out_w, self.upsample.kernel_size, x.element_size(), x.device,
                          what=f'{type(self).__name__} at (r_v, r_h) = ({spec.r_v:g}, {spec.r_h:g})')
        if self.scale_range is not None and not self._range_warned:
            (lo_v, hi_v), (lo_h, hi_h) = self.scale_range
            if not (lo_v - _RANGE_EPS <= spec.r_v <= hi_v + _RANGE_EPS
                    and lo_h - _RANGE_EPS <= spec.r_h <= hi_h + _RANGE_EPS):
                self._range_warned = True  # once per network: evaluation sweeps would flood the log
                warnings.warn(
                    f'{type(self).__name__}: scale (r_v, r_h) = ({spec.r_v:.4g}, {spec.r_h:.4g}) is outside the '
                    f'training range {self.scale_range}; the output has the requested size but its quality is '
                    'not guaranteed there (warned once).', UserWarning, stacklevel=2)
        return spec

    def forward_trunk(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C_in, h, w) image -> (N, C_feat, h, w) features for the head (mean removed, times img_range)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ residual over bicubic (bicubic_skip)
    def residual_last_layer(self) -> nn.Module:
        """The layer whose output is the network's (up to scaling): the weight predictor's last Linear."""
        return self.upsample.pos2weight.meta_block[-1]

    @property
    def predicts_residual(self) -> bool:
        """True once ``zero_init_residual`` (or a checkpoint holding its flag) made the output a residual."""
        return RESIDUAL_FLAG in self._buffers

    def mark_residual(self) -> None:
        """Make ``forward`` return a residual: the mean is no longer added back (``mean_out`` zeroed).

        A persistent flag buffer (``bicubic_residual``) records it in the state dict, so a network rebuilt
        from its options and loaded from the checkpoint becomes a residual network too
        (``_load_from_state_dict``); checkpoints without the flag keep adding the mean, as trained.
        """
        if not self.predicts_residual:
            self.register_buffer(RESIDUAL_FLAG, torch.ones((), device=self.mean_out.device))
        self.mean_out.zero_()

    def zero_init_residual(self) -> None:
        """Start exactly at zero: the last layer of the output branch zeroed and the mean not added.

        Under MetaSRModel's ``bicubic_skip`` (output = network + bicubic of the input) the model then starts
        exactly at bicubic. The branch still learns: the zeroed layer's gradient is its input times the
        upstream gradient, which is not zero.
        """
        last = self.residual_last_layer()
        with torch.no_grad():
            last.weight.zero_()
            if last.bias is not None:
                last.bias.zero_()
        self.mark_residual()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if prefix + RESIDUAL_FLAG in state_dict:  # weights of a residual network: adopt its flag first
            self.mark_residual()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor, scale: ScaleArg = None, out_size: SizeArg = None) -> torch.Tensor:
        """Super-resolve ``x`` (N, C_in, h, w) by ``scale`` (float or (r_v, r_h)) or to ``out_size`` (H, W).

        Returns:
            (N, C_out, H, W) with H = floor(h * r_v + 1e-9) (or exactly out_size).
        """
        self._resolve(x, scale, out_size)  # fail before the trunk runs
        out = self.upsample(self.forward_trunk(x), scale=scale, out_size=out_size)
        return out / self.img_range + self.mean_out.to(out.dtype)


def mark_residual_from_state(net: nn.Module, state: Mapping[str, torch.Tensor]) -> bool:
    """``mark_residual`` every ``MetaSRNet`` inside ``net`` whose flag buffer is in ``state`` (before a strict
    key comparison; ``load_state_dict`` adopts the flag by itself). Returns True when any was marked."""
    marked = False
    for name, module in net.named_modules():
        if isinstance(module, MetaSRNet) and (f'{name}.' if name else '') + RESIDUAL_FLAG in state:
            module.mark_residual()
            marked = True
    return marked


def start_at_bicubic(opt: Mapping, *nets: Optional[nn.Module]) -> int:
    """MetaSRModel's ``bicubic_skip`` from scratch: ``zero_init_residual`` on each of ``nets`` (None skipped).

    Nothing happens without ``bicubic_skip`` or when weights are loaded (``path.pretrain_network_g``,
    set by resuming too). A network without ``zero_init_residual`` is left as it is, with a warning.
    Returns the number of networks zeroed.
    """
    if not opt.get('bicubic_skip') or (opt.get('path') or {}).get('pretrain_network_g'):
        return 0
    done = 0
    for net in nets:
        if net is None:
            continue
        if callable(getattr(net, 'zero_init_residual', None)):
            net.zero_init_residual()
            done += 1
        else:
            warnings.warn(f'bicubic_skip: {type(net).__name__} has no zero_init_residual(); it does not start '
                          'at bicubic', UserWarning, stacklevel=2)
    return done
