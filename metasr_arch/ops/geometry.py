"""Scale resolution and the high-to-low resolution projection of the Meta-SR operator.

This module fixes the geometry every implementation shares (see ``docs/operator.md``):

* scale ``(r_v, r_h)`` (floats >= 1) or ``out_size=(H, W)``; with ``out_size``, ``r_v = H / h`` and
  ``r_h = W / w``. From a scale, ``H = floor(h * r_v + 1e-9)`` and ``W = floor(w * r_h + 1e-9)`` in
  float64, so that ``10 x 2.3`` gives 23, not 22.
* high-resolution row ``i`` projects to low-resolution row ``i_p = floor(i / r_v + 1e-9)`` (float64,
  clamped to ``h - 1``); its phase is ``fv = i / r_v - i_p`` clamped to ``[0, 1)``. Columns alike.
* the Pos2Weight input of pixel ``(i, j)`` is ``(fv(i), fh(j), 1 / r_v, 1 / r_h)``.

Phases repeat: for a rational scale ``p / q`` (lowest terms) an axis has only ``p`` distinct
phases. ``axis_projection`` returns them deduplicated (equal to 1e-8), which is what lets the
memory-efficient implementations run the weight MLP once per distinct phase pair.
"""
import math
from functools import lru_cache
from numbers import Real
from typing import NamedTuple, Optional, Sequence, Tuple, Union

import torch

EPS = 1e-9
_PHASE_QUANTUM = 1e8  # phases closer than 1e-8 are the same phase (float64 noise is ~1e-15)

ScaleArg = Union[float, int, Sequence[float], torch.Tensor, None]
SizeArg = Union[Sequence[int], torch.Size, None]


class ScaleSpec(NamedTuple):
    """Resolved geometry of one upscaling call: the scales and the exact output size."""
    r_v: float
    r_h: float
    out_h: int
    out_w: int


class AxisProjection(NamedTuple):
    """Projection of one high-resolution axis of length L onto a low-resolution axis.

    Attributes:
        lr_index: (L,) int64, the low-resolution index ``floor(i / r + 1e-9)`` of each output index.
        phase_index: (L,) int64, index into ``phases`` of each output index.
        phases: (P,) float64, the distinct fractional parts, ascending, each in [0, 1).
        frac: (L,) float64, the fractional part of each output index (``phases[phase_index]`` up to 1e-8).
    """
    lr_index: torch.Tensor
    phase_index: torch.Tensor
    phases: torch.Tensor
    frac: torch.Tensor


def _check_real(value, name: str) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f'{name} must be a number, got a tensor of shape {tuple(value.shape)}')
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f'{name} must be a real number, got {type(value).__name__}: {value!r}')
    value = float(value)
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f'{name} must be finite, got {value}')
    if value <= 0:
        raise ValueError(f'{name} must be positive (a magnification >= 1), got {value}')
    if value < 1:
        raise ValueError(f'{name} must be >= 1 (Meta-SR magnifies; use an image resize to shrink), got {value}')
    return value


def parse_scale(scale) -> Tuple[float, float]:
    """Turn ``scale`` (a number, or a pair ``(r_v, r_h)``) into two validated floats >= 1.

    Raises:
        TypeError / ValueError naming ``scale`` for anything else.
    """
    if isinstance(scale, torch.Tensor) and scale.numel() == 2:
        scale = scale.tolist()
    if isinstance(scale, (list, tuple)):
        if len(scale) != 2:
            raise ValueError(f'scale must be a number or a pair (r_v, r_h), got {len(scale)} values: {scale!r}')
        return _check_real(scale[0], 'scale[0] (r_v)'), _check_real(scale[1], 'scale[1] (r_h)')
    value = _check_real(scale, 'scale')
    return value, value


def output_length(in_len: int, r: float) -> int:
    """Output length ``floor(in_len * r + 1e-9)`` computed in float64."""
    return int(math.floor(float(in_len) * float(r) + EPS))


def resolve_scale(in_h: int, in_w: int, scale: ScaleArg = None, out_size: SizeArg = None) -> ScaleSpec:
    """Resolve exactly one of ``scale`` / ``out_size`` for an ``in_h x in_w`` input.

    Args:
        in_h, in_w: low-resolution size (h, w).
        scale: a float (both axes) or ``(r_v, r_h)``, each >= 1.
        out_size: ``(H, W)`` with ``H >= h`` and ``W >= w``.

    Returns:
        ScaleSpec(r_v, r_h, out_h, out_w).
    """
    if (scale is None) == (out_size is None):
        raise ValueError('give exactly one of scale=(r_v, r_h) and out_size=(H, W), got '
                         f'scale={scale!r} and out_size={out_size!r}')
    if in_h <= 0 or in_w <= 0:
        raise ValueError(f'input spatial size must be positive, got {in_h}x{in_w}')
    if scale is not None:
        r_v, r_h = parse_scale(scale)
        return ScaleSpec(r_v, r_h, output_length(in_h, r_v), output_length(in_w, r_h))
    if isinstance(out_size, torch.Tensor):
        out_size = out_size.tolist()
    if not isinstance(out_size, (list, tuple, torch.Size)) or len(out_size) != 2:
        raise ValueError(f'out_size must be a pair (H, W), got {out_size!r}')
    out_h, out_w = out_size
    for name, value, low in (('out_size[0] (H)', out_h, in_h), ('out_size[1] (W)', out_w, in_w)):
        if isinstance(value, bool) or not isinstance(value, (int, torch.SymInt)) and not (
                isinstance(value, float) and value.is_integer()):
            raise TypeError(f'{name} must be an integer, got {value!r}')
        if int(value) < low:
            raise ValueError(f'{name} = {value} is smaller than the input size {low}; '
                             'Meta-SR only magnifies (out_size must be >= the input size, and > 0)')
    out_h, out_w = int(out_h), int(out_w)
    return ScaleSpec(out_h / in_h, out_w / in_w, out_h, out_w)


@lru_cache(maxsize=512)
def _axis_projection_cpu(in_len: int, out_len: int, r: float) -> AxisProjection:
    # Cached tensors outlive the caller's mode: never create them as inference tensors, or a later
    # autograd call that saves them for backward fails.
    with torch.inference_mode(False):
        return _compute_axis_projection(in_len, out_len, r)


def _compute_axis_projection(in_len: int, out_len: int, r: float) -> AxisProjection:
    t = torch.arange(out_len, dtype=torch.float64) / r
    lr = torch.floor(t + EPS)
    frac = (t - lr).clamp_(min=0.0)
    lr_index = lr.clamp_(max=in_len - 1).to(torch.int64)
    key = torch.round(frac * _PHASE_QUANTUM).to(torch.int64)
    _, phase_index = torch.unique(key, sorted=True, return_inverse=True)
    num_phases = int(phase_index.max()) + 1 if out_len else 0
    phases = torch.zeros(num_phases, dtype=torch.float64).scatter_reduce(
        0, phase_index, frac, reduce='amin', include_self=False)
    return AxisProjection(lr_index, phase_index, phases, frac)


@lru_cache(maxsize=512)
def _axis_projection_on(in_len: int, out_len: int, r: float, device: str) -> AxisProjection:
    cpu = _axis_projection_cpu(in_len, out_len, r)
    with torch.inference_mode(False):
        return AxisProjection(*(t.to(device) for t in cpu))


# Excluded from torch.compile as a whole: torch.unique and .item() give data-dependent sizes, and
# tracing into them would break the graph several times per axis; this way there is one break per call.
@torch.compiler.disable
def axis_projection(in_len: int, out_len: int, r: float, device: Optional[torch.device] = None) -> AxisProjection:
    """Project ``out_len`` high-resolution indices onto ``in_len`` low-resolution ones at scale ``r``.

    Results are cached per (sizes, scale, device): per-batch random scales draw from a small set,
    and the cache avoids a host-to-device copy on every forward.
    """
    device = torch.device('cpu') if device is None else torch.device(device)
    if device.type == 'cpu':
        return _axis_projection_cpu(int(in_len), int(out_len), float(r))
    return _axis_projection_on(int(in_len), int(out_len), float(r), str(device))


def position_encoding(rows: AxisProjection, cols: AxisProjection, r_v: float, r_h: float,
                      per_pixel: bool = False, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Pos2Weight inputs ``(fv, fh, 1/r_v, 1/r_h)``.

    Args:
        per_pixel: False: one row per distinct phase pair, shape (Pv * Ph, 4), row ``a * Ph + b``
            for vertical phase ``a`` and horizontal phase ``b``. True: one row per output pixel,
            shape (H * W, 4), row ``i * W + j`` (what the paper's code and ``im2col`` use).
    """
    fv, fh = (rows.frac, cols.frac) if per_pixel else (rows.phases, cols.phases)
    grid_v, grid_h = torch.meshgrid(fv, fh, indexing='ij')
    inv = torch.tensor([1.0 / r_v, 1.0 / r_h], dtype=torch.float64, device=fv.device)
    pos = torch.cat([grid_v.reshape(-1, 1), grid_h.reshape(-1, 1), inv.expand(grid_v.numel(), 2)], dim=1)
    return pos.to(dtype)
