"""Running a loaded network on one input: tiling, autocast, bicubic skip, channel adaptation."""
from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from metasr_arch.archs.meta_upsample_arch import MetaUpsample
from metasr_arch.archs.periodic import bicubic_for
from metasr_arch.ops.geometry import resolve_scale
from metasr_arch.utils.amp import autocast
from metasr_arch.utils.memory import check_request
from metasr_arch.utils.naming import Request
from metasr_arch.utils.resize import imresize_to
from metasr_arch.utils.sample_io import Sample


def run_network(net: nn.Module, x: torch.Tensor, scale=None, out_size=None, tile: Optional[int] = None,
                tile_overlap: int = 0, fp16: bool = False, bf16: bool = False) -> torch.Tensor:
    """``net(x, scale | out_size)``, tiled when ``tile`` is given, under fp16 or bf16 autocast when asked.

    Autocast runs on ``x``'s device type (CPU or CUDA); the Meta head keeps its weight prediction in
    float32 (``MetaUpsample``).

    Args:
        x: (N, C, h, w) on the network's device.
    Returns:
        (N, C_out, H, W) float32, exactly the size ``resolve_scale`` gives.
    Raises:
        RequestTooLargeError (a ValueError) before running when the output cannot fit in memory;
        ValueError: both ``fp16`` and ``bf16``; RuntimeError: torch cannot autocast to it on that device.
    """
    if fp16 and bf16:
        raise ValueError('give at most one of fp16 and bf16')
    spec = resolve_scale(x.shape[-2], x.shape[-1], scale, out_size)
    check_network_request(net, x, spec.out_h, spec.out_w)
    dtype = torch.float16 if fp16 else torch.bfloat16 if bf16 else None
    # no_grad rather than inference_mode: the operator caches index tensors (geometry.axis_projection)
    # across calls, and a tensor created under inference_mode would break later training in the process.
    with torch.no_grad(), autocast(x, dtype):
        if tile:
            from metasr_arch.inference.tiling import tiled_forward
            y = tiled_forward(net, x, scale=scale, out_size=out_size, tile=tile, overlap=tile_overlap)
        else:
            y = net(x, scale=scale, out_size=out_size)
    if getattr(net, 'metasr_bicubic_skip', False):  # in float32: a bf16 image keeps only about 8 bits
        y = y.float() + bicubic_for(net)(x.float(), tuple(y.shape[-2:]))
    if tuple(y.shape[-2:]) != (spec.out_h, spec.out_w):
        raise RuntimeError(f'{type(net).__name__} returned {tuple(y.shape[-2:])}, expected exactly '
                           f'{(spec.out_h, spec.out_w)} for r = ({spec.r_v:g}, {spec.r_h:g})')
    return y.float()


def check_network_request(net: nn.Module, x: torch.Tensor, out_h: int, out_w: int) -> int:
    """``memory.check_request`` for ``net`` on ``x`` (N, C, h, w) at (out_h, out_w), before anything runs.

    The head's channels and kernel come from the network's first ``MetaUpsample`` (other networks: the
    output alone is estimated, with C_out = C). Returns the estimate in bytes; raises RequestTooLargeError.
    """
    head = next((m for m in net.modules() if isinstance(m, MetaUpsample)), None)
    c_in, c_out, k = (head.in_channels, head.out_channels, head.kernel_size) if head else (0, x.shape[1], 1)
    return check_request(x.shape[0], c_in, c_out, x.shape[-2], x.shape[-1], out_h, out_w, k, 4, x.device,
                         what=f'{tuple(x.shape[-2:])} input to {out_h}x{out_w}')


def upscale_sample(net: nn.Module, sample: Sample, request: Request, net_channels: int, device: torch.device,
                   tile: Optional[int] = None, tile_overlap: int = 0, fp16: bool = False,
                   bf16: bool = False) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Upscale one sample for one request; returns (data (C, H, W), alpha (1, H, W) or None) on the CPU."""
    kind, value = request
    scale, out_size = (value, None) if kind == 'scale' else (None, value)
    data = sample.data.to(device)
    c = data.shape[0]
    if c == net_channels:
        batch = data[None]
    elif c == 1:  # grey image, colour network: replicate, average back below
        batch = data.expand(net_channels, -1, -1)[None]
    elif net_channels == 1:  # colour image, single-channel network: one batch item per channel
        batch = data[:, None]
    else:
        raise ValueError(f'input has {c} channels but the network takes {net_channels}')
    y = run_network(net, batch, scale, out_size, tile, tile_overlap, fp16, bf16)
    if c == net_channels:
        out = y[0]
    elif c == 1:
        out = y[0].mean(dim=0, keepdim=True)
    else:
        out = y[:, 0]
    alpha = None
    if sample.alpha is not None:
        alpha = imresize_to(sample.alpha, tuple(out.shape[-2:])).clamp_(0, 1)
    return out.cpu(), alpha


def check_max_pixels(sample_shape: Sequence[int], request: Request, max_pixels: Optional[int]) -> None:
    """Refuse (ValueError) an output of more than ``max_pixels`` pixels (H*W) before it is computed."""
    if max_pixels is None:
        return
    kind, value = request
    spec = resolve_scale(sample_shape[-2], sample_shape[-1], value if kind == 'scale' else None,
                         value if kind == 'size' else None)
    if spec.out_h * spec.out_w > max_pixels:
        raise ValueError(f'output {spec.out_h}x{spec.out_w} has {spec.out_h * spec.out_w} pixels, more than '
                         f'--max-pixels {max_pixels}')
