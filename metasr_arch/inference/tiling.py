"""Seam-free tiled inference for Meta-SR networks at any (r_v, r_h) or exact output size.

The trunk of a Meta-SR network works at the low resolution and dominates memory; the Meta head is
memory-lean (its weights are per phase, not per pixel). So the trunk runs on overlapping LR tiles,
the LR-resolution features of each tile's core (the overlap dropped) are stitched into one feature
map, and the head runs once on it. For a convolutional trunk whose receptive radius is at most the
overlap, the stitched features equal the whole-image features, so the output equals the untiled one
(up to float rounding) whatever the scale: no seams, no blending.

Networks opt in by exposing two methods::

    forward_features(x)                               # (N, C, h, w) -> (N, F, h, w)
    forward_head(feat, x, scale=None, out_size=None)  # -> (N, C_out, H, W); x is the LR input (skips)

or, as the project's ``MetaSRNet`` (MetaRDN, SwinIRMeta) does, ``forward_trunk(x)`` and a
``MetaUpsample`` head ``upsample`` whose output is mapped back by ``/ img_range + mean_out``.

Networks without them fall back to output-space tiling: each LR tile is upscaled whole and the
output rows/columns that project into its core are pasted. That is exact only where the tile origin
maps to an output pixel with the same phase (``y0 * r_v`` an integer, e.g. integer scales);
elsewhere the phases of a tile differ slightly from the whole image's.
"""
from typing import Callable, List, Optional, Tuple

import torch
from torch import nn

from metasr_arch.archs.meta_upsample_arch import MetaUpsample
from metasr_arch.ops.geometry import ScaleArg, SizeArg, axis_projection, resolve_scale


def _bare(net: nn.Module) -> nn.Module:
    return net.module if hasattr(net, 'module') and isinstance(net.module, nn.Module) else net


def _windows(length: int, tile: int) -> List[Tuple[int, int]]:
    """Core windows [a, b) of at most ``tile`` covering ``[0, length)``."""
    return [(a, min(a + tile, length)) for a in range(0, length, tile)]


def _call(net, x, scale, out_size):
    return net(x, scale=scale) if out_size is None else net(x, out_size=out_size)


def _split(net: nn.Module) -> Optional[Tuple[Callable, Callable]]:
    """(trunk, head) of ``net`` for feature tiling, or None when it exposes neither interface."""
    if callable(getattr(net, 'forward_head', None)) and callable(getattr(net, 'forward_features', None)):
        return net.forward_features, net.forward_head
    if callable(getattr(net, 'forward_trunk', None)) and isinstance(getattr(net, 'upsample', None), MetaUpsample):

        def head(feat, x, scale=None, out_size=None):  # MetaSRNet.forward without the trunk
            out = net.upsample(feat, scale=scale, out_size=out_size)
            mean = getattr(net, 'mean_out', None)
            out = out / getattr(net, 'img_range', 1.0)
            return out + mean.to(out.dtype) if mean is not None else out

        return net.forward_trunk, head
    return None


def supports_feature_tiling(net: nn.Module) -> bool:
    """True when ``net`` can be tiled exactly in feature space (see the module docstring)."""
    return _split(_bare(net)) is not None


def tiled_forward(net: nn.Module, x: torch.Tensor, scale: ScaleArg = None, out_size: SizeArg = None,
                  tile: Optional[int] = None, overlap: int = 0) -> torch.Tensor:
    """Run ``net(x, scale=... | out_size=...)`` tile by tile.

    Args:
        net: a Meta-SR network (``forward(x, scale=None, out_size=None)``), optionally DDP-wrapped.
        x: (N, C, h, w) LR input.
        scale / out_size: exactly one, as for the network.
        tile: core tile size in LR pixels (int or (th, tw)); None or >= the input: one untiled call.
        overlap: LR pixels of context added on each side of a tile (clipped at the image border);
            use at least the trunk's receptive radius for exact results.

    Returns:
        (N, C_out, H, W) with (H, W) = resolve_scale(h, w, scale, out_size).
    """
    if x.dim() != 4:
        raise ValueError(f'x must be (N, C, h, w), got shape {tuple(x.shape)}')
    h, w = x.shape[-2:]
    spec = resolve_scale(h, w, scale, out_size)
    if tile is None:
        return _call(net, x, scale, out_size)
    th, tw = (tile, tile) if isinstance(tile, int) else tuple(tile)
    if min(th, tw) < 1 or isinstance(overlap, bool) or not isinstance(overlap, int) or overlap < 0:
        raise ValueError(f'tile must be positive and overlap a non-negative int, got tile={tile!r}, '
                         f'overlap={overlap!r}')
    if getattr(getattr(_bare(net), 'upsample', None), 'periodic_w', False):
        tw = w  # periodic longitude: a tile narrower than the field would wrap onto itself, so tile rows only
    if th >= h and tw >= w:
        return _call(net, x, scale, out_size)
    split = _split(_bare(net))
    if split is not None:
        trunk, head = split
        return head(_stitched_features(trunk, x, th, tw, overlap), x, scale=scale, out_size=out_size)
    return _output_tiling(net, x, spec, th, tw, overlap)


def _stitched_features(trunk: Callable, x: torch.Tensor, th: int, tw: int, overlap: int) -> torch.Tensor:
    """(N, F, h, w) features of ``x`` assembled from the cores of overlapping tiles."""
    h, w = x.shape[-2:]
    feat = None
    for y0, y1 in _windows(h, th):
        for x0, x1 in _windows(w, tw):
            ya, yb = max(0, y0 - overlap), min(h, y1 + overlap)
            xa, xb = max(0, x0 - overlap), min(w, x1 + overlap)
            f = trunk(x[..., ya:yb, xa:xb])
            if feat is None:  # allocate once the feature width and dtype are known
                feat = f.new_zeros(f.shape[0], f.shape[1], h, w)
            feat[..., y0:y1, x0:x1] = f[..., y0 - ya:y1 - ya, x0 - xa:x1 - xa]
    return feat


def _output_spans(proj_index: torch.Tensor, a: int, b: int) -> Tuple[int, int]:
    """Output index range [i0, i1) whose LR projection lies in [a, b) (projections are monotone)."""
    idx = proj_index.cpu()
    return int(torch.searchsorted(idx, a)), int(torch.searchsorted(idx, b))


def _output_tiling(net: nn.Module, x: torch.Tensor, spec, th: int, tw: int, overlap: int) -> torch.Tensor:
    """Fallback: upscale each padded LR tile at the same scale and paste the rows of its core."""
    h, w = x.shape[-2:]
    rows = axis_projection(h, spec.out_h, spec.r_v, x.device).lr_index
    cols = axis_projection(w, spec.out_w, spec.r_h, x.device).lr_index
    out = None
    for y0, y1 in _windows(h, th):
        for x0, x1 in _windows(w, tw):
            ya, yb = max(0, y0 - overlap), min(h, y1 + overlap)
            xa, xb = max(0, x0 - overlap), min(w, x1 + overlap)
            y = net(x[..., ya:yb, xa:xb], scale=(spec.r_v, spec.r_h))
            i0, i1 = _output_spans(rows, y0, y1)
            j0, j1 = _output_spans(cols, x0, x1)
            ia, ja = _output_spans(rows, ya, ya + 1)[0], _output_spans(cols, xa, xa + 1)[0]
            # the tile's own output starts at its first LR row; offsets are rounded to that grid
            oi, oj = i0 - ia, j0 - ja
            if out is None:
                out = y.new_zeros(y.shape[0], y.shape[1], spec.out_h, spec.out_w)
            ni = min(i1 - i0, y.shape[-2] - oi)
            nj = min(j1 - j0, y.shape[-1] - oj)
            out[..., i0:i0 + ni, j0:j0 + nj] = y[..., oi:oi + ni, oj:oj + nj]
            if ni < i1 - i0 or nj < j1 - j0:  # rounding left a sliver: fill from the edge of the tile
                out[..., i0 + ni:i1, j0:j1] = out[..., i0 + ni - 1:i0 + ni, j0:j1]
                out[..., i0:i1, j0 + nj:j1] = out[..., i0:i1, j0 + nj - 1:j0 + nj]
    return out
