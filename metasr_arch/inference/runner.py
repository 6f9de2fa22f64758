"""Running a loaded network on one input: tiling, autocast, bicubic skip, channel adaptation."""
from typing import List, Optional, Sequence, Tuple

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


def _network_batch(data: torch.Tensor, net_channels: int) -> torch.Tensor:
    """(C, h, w) sample -> the network's (N, net_channels, h, w) input (see ``upscale_sample``)."""
    c = data.shape[0]
    if c == net_channels:
        return data[None]
    if c == 1:  # grey image, colour network: replicate, averaged back in _from_network
        return data.expand(net_channels, -1, -1)[None]
    if net_channels == 1:  # colour image, single-channel network: one batch item per channel
        return data[:, None]
    raise ValueError(f'input has {c} channels but the network takes {net_channels}')


def _from_network(y: torch.Tensor, c: int, net_channels: int) -> torch.Tensor:
    """The network's output for one sample of ``c`` channels -> (c, H, W)."""
    if c == net_channels:
        return y[0]
    if c == 1:
        return y[0].mean(dim=0, keepdim=True)
    return y[:, 0]


def upscale_sample(net: nn.Module, sample: Sample, request: Request, net_channels: int, device: torch.device,
                   tile: Optional[int] = None, tile_overlap: int = 0, fp16: bool = False,
                   bf16: bool = False) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Upscale one sample for one request; returns (data (C, H, W), alpha (1, H, W) or None) on the CPU."""
    return upscale_samples(net, [sample], request, net_channels, device, tile, tile_overlap, fp16, bf16)[0]


def upscale_samples(net: nn.Module, samples: Sequence[Sample], request: Request, net_channels: int,
                    device: torch.device, tile: Optional[int] = None, tile_overlap: int = 0, fp16: bool = False,
                    bf16: bool = False) -> List[Tuple[torch.Tensor, Optional[torch.Tensor]]]:
    """``upscale_sample`` for several samples, those of one shape and channel count in one forward.

    Returns:
        [(data (C, H, W), alpha (1, H, W) or None)] on the CPU, in the order of ``samples``; equal to
        one forward per sample up to float32 rounding (kernels may round differently per batch size).
    """
    kind, value = request
    scale, out_size = (value, None) if kind == 'scale' else (None, value)
    groups = {}
    for i, sample in enumerate(samples):
        groups.setdefault(tuple(sample.data.shape), []).append(i)
    outs: List = [None] * len(samples)
    for shape, members in groups.items():
        inputs = [_network_batch(samples[i].data.to(device), net_channels) for i in members]
        y = run_network(net, torch.cat(inputs), scale, out_size, tile, tile_overlap, fp16, bf16)
        for i, part in zip(members, torch.split(y, [len(x) for x in inputs])):
            out = _from_network(part, shape[0], net_channels)
            alpha = samples[i].alpha
            if alpha is not None:
                alpha = imresize_to(alpha, tuple(out.shape[-2:])).clamp_(0, 1)
            outs[i] = (out.cpu(), alpha)
    return outs


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


class LookAhead:
    """Batching for a loop that handles one input at a time: asked for one input's output, it also
    upscales the next inputs of the run (a window of ``batch`` files, those with the same shape) in the
    same forward and keeps their outputs until they are asked for (``infer --batch`` on image folders).

    Args:
        wanted: {path: requests} the loop will ask for, in the loop's order.
        read: ``path -> Sample`` (what the loop reads; a file that fails to read is left to the loop).
    """

    def __init__(self, net: nn.Module, net_channels: int, device: torch.device, batch: int, wanted, read,
                 tile: Optional[int] = None, tile_overlap: int = 0, fp16: bool = False, bf16: bool = False,
                 max_pixels: Optional[int] = None):
        self.net, self.net_channels, self.device, self.batch, self.read = net, net_channels, device, batch, read
        self.wanted = {p: list(r) for p, r in wanted.items()}
        self.order = list(self.wanted)
        self.options = dict(tile=tile, tile_overlap=tile_overlap, fp16=fp16, bf16=bf16)
        self.max_pixels = max_pixels
        self.ready = {}

    def upscale(self, path, sample: Sample, request: Request) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``upscale_sample(net, sample, request, ...)`` for ``path``, from a batch when one is ready."""
        if (path, request) in self.ready:
            return self.ready.pop((path, request))
        group, others = [sample], []
        start = self.order.index(path) + 1
        for other in self.order[start:start + self.batch - 1]:
            if request not in self.wanted[other] or (other, request) in self.ready:
                continue
            try:
                s = self.read(other)
                check_max_pixels(s.data.shape, request, self.max_pixels)
            except ValueError:  # the loop reports it when it gets there
                continue
            if tuple(s.data.shape) == tuple(sample.data.shape):
                group.append(s)
                others.append(other)
        results = upscale_samples(self.net, group, request, self.net_channels, self.device, **self.options)
        for other, result in zip(others, results[1:]):
            self.ready[(other, request)] = result
        return results[0]
