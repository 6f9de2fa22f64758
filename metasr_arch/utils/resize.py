"""MATLAB-compatible bicubic resizing to an exact output size, batched on any device.

BasicSR's ``basicsr.utils.matlab_functions.imresize`` is the reference kernel (cubic, a = -0.5,
antialiased when shrinking, symmetric edge padding), but it takes one scale for both axes, derives
the output size as ``ceil(in * scale)`` and loops over pixels on one (C, H, W) image on the CPU.
Meta-SR training needs a different size per axis (r_v != r_h), sizes fixed by the operator's
geometry, and whole batches on the training device. So this module reuses BasicSR's
``calculate_weights_indices`` for the kernel weights and turns them into one dense (out, in)
interpolation matrix per axis; the resize is then two matrix products, ``M_v @ X @ M_h^T``.
With ``out = in * scale`` exactly, the result equals BasicSR's ``imresize`` (tested).
"""
from functools import lru_cache
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
from basicsr.utils.matlab_functions import calculate_weights_indices

SizeLike = Union[Sequence[int], torch.Size]


def _mirror(u: torch.Tensor, length: int) -> torch.Tensor:
    """Symmetric (edge-repeating) reflection of out-of-range indices, as BasicSR's symmetric copy."""
    u = torch.where(u < 0, -u - 1, u)
    u = torch.where(u >= length, 2 * length - 1 - u, u)
    return u.clamp_(0, length - 1)


@lru_cache(maxsize=256)
def _matrix_cpu(in_len: int, out_len: int, scale: float, antialias: bool) -> torch.Tensor:
    # cached: never an inference tensor, whatever mode the first caller runs in
    with torch.inference_mode(False):
        return _build_matrix(in_len, out_len, scale, antialias)


def _build_matrix(in_len: int, out_len: int, scale: float, antialias: bool) -> torch.Tensor:
    weights, indices, sym_len_s, _ = calculate_weights_indices(in_len, out_len, scale, 'cubic', 4, antialias)
    # indices are positions in BasicSR's padded copy (sym_len_s mirrored pixels in front); the taps of
    # output i are the contiguous padded positions indices[i, 0] + m.
    start = indices[:, :1].long()
    padded = start + torch.arange(weights.shape[1]).view(1, -1)
    source = _mirror(padded - sym_len_s, in_len)
    mat = torch.zeros(out_len, in_len, dtype=torch.float64)
    mat.scatter_add_(1, source, weights.double())
    return mat


@lru_cache(maxsize=256)
def _matrix_on(in_len: int, out_len: int, scale: float, antialias: bool, device: str,
               dtype: torch.dtype) -> torch.Tensor:
    with torch.inference_mode(False):
        return _matrix_cpu(in_len, out_len, scale, antialias).to(device=device, dtype=dtype)


def resize_matrix(in_len: int, out_len: int, scale: Optional[float] = None, antialias: bool = True,
                  device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The (out_len, in_len) bicubic interpolation matrix of one axis.

    Args:
        scale: the kernel's scale; default ``out_len / in_len`` (what MATLAB uses for a given output size).
    """
    if in_len < 1 or out_len < 1:
        raise ValueError(f'resize lengths must be positive, got in_len={in_len}, out_len={out_len}')
    scale = out_len / in_len if scale is None else float(scale)
    device = str(torch.device('cpu') if device is None else torch.device(device))
    return _matrix_on(int(in_len), int(out_len), scale, bool(antialias), device, dtype)


def _parse_size(out_size: SizeLike) -> Tuple[int, int]:
    if not isinstance(out_size, (list, tuple, torch.Size)) or len(out_size) != 2:
        raise ValueError(f'out_size must be a pair (h, w), got {out_size!r}')
    h, w = (int(v) for v in out_size)
    if h < 1 or w < 1:
        raise ValueError(f'out_size must be positive, got {out_size!r}')
    return h, w


def imresize_to(x: torch.Tensor, out_size: SizeLike, antialias: bool = True,
                scale: Optional[Tuple[float, float]] = None) -> torch.Tensor:
    """Resize to exactly ``out_size`` with MATLAB's bicubic kernel (BasicSR's ``imresize``).

    Args:
        x: (..., H, W) floating tensor, e.g. (N, C, H, W) or (C, H, W), on any device. Not clipped
            or rounded (like BasicSR's imresize).
        out_size: (h, w) output size.
        antialias: widen the kernel when shrinking (MATLAB default).
        scale: optional per-axis kernel scales (r_v, r_h) as out/in; default out/in of the sizes.

    Returns:
        (..., h, w) tensor, same dtype and device.
    """
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        raise ValueError(f'x must be a tensor of at least 2 dims (..., H, W), got {type(x).__name__}')
    if not x.is_floating_point():
        raise TypeError(f'x must be floating point, got {x.dtype}')
    out_h, out_w = _parse_size(out_size)
    in_h, in_w = x.shape[-2:]
    s_v, s_h = (None, None) if scale is None else scale
    # float64 inputs keep float64 matrices; half types compute in float32 for accuracy.
    mdtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    m_v = resize_matrix(in_h, out_h, s_v, antialias, x.device, mdtype)
    m_h = resize_matrix(in_w, out_w, s_h, antialias, x.device, mdtype)
    y = torch.matmul(torch.matmul(m_v, x.to(mdtype)), m_h.transpose(0, 1))
    return y.to(x.dtype)


def imresize_np(img: np.ndarray, out_size: SizeLike, antialias: bool = True) -> np.ndarray:
    """``imresize_to`` for a numpy image (H, W) or (H, W, C), float [0, 1]; returns float32 (h, w[, C])."""
    if not isinstance(img, np.ndarray) or img.ndim not in (2, 3):
        raise ValueError(f'img must be a numpy array (H, W) or (H, W, C), got {getattr(img, "shape", img)!r}')
    t = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))
    t = t[None] if img.ndim == 2 else t.permute(2, 0, 1)
    out = imresize_to(t, out_size, antialias)
    out = out[0] if img.ndim == 2 else out.permute(1, 2, 0)
    return out.numpy()
