"""The Meta-SR upscaling head: Pos2Weight (weight prediction) and MetaUpsample (head module)."""
import torch
from torch import nn

from metasr_arch.ops.geometry import ScaleArg, SizeArg, axis_projection, position_encoding, resolve_scale
from metasr_arch.ops.meta_upscale import (check_input, meta_upscale_im2col, per_pixel_projection, phase_table_conv,
                                          resolve_impl)

MODULE_IMPLS = ('auto', 'im2col', 'gather', 'phase', 'cuda')


class Pos2Weight(nn.Module):
    """Predict per-position convolution weights from ``(fv, fh, 1/r_v, 1/r_h)``.

    Linear(4, hidden) -> ReLU -> Linear(hidden, k*k*C_in*C_out). The output of one position is read in
    the canonical layout (k1, k2, ci, co).

    Args:
        in_channels: C_in of the features the weights apply to.
        out_channels: C_out of the upscaled output.
        kernel_size: k (odd).
        hidden_channels: width of the hidden layer (256 in the paper).

    Shapes:
        input (P, 4) -> output (P, k*k*C_in*C_out).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, hidden_channels: int = 256):
        super().__init__()
        for name, value in (('in_channels', in_channels), ('out_channels', out_channels),
                            ('hidden_channels', hidden_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f'{name} must be a positive integer, got {value!r}')
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 \
                or kernel_size % 2 == 0:
            raise ValueError(f'kernel_size must be a positive odd integer, got {kernel_size!r}')
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.hidden_channels = kernel_size, hidden_channels
        self.meta_block = nn.Sequential(
            nn.Linear(4, hidden_channels),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_channels, kernel_size * kernel_size * in_channels * out_channels),
        )

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        return self.meta_block(pos)


class MetaUpsample(nn.Module):
    """Meta-SR upscaling head: any (r_v, r_h) >= 1 or an exact output size.

    Args:
        in_channels: C_in of the trunk features.
        out_channels: C_out of the output (3 for RGB, 1 for gridded data).
        kernel_size: k of the predicted kernels (odd).
        hidden_channels: Pos2Weight hidden width.
        impl: 'auto' (fastest valid for the device), 'phase' (memory-efficient phase table),
            'gather' (per-pixel weights, chunked custom backward), 'im2col' (paper-faithful reference)
            or 'cuda' (native op). Settable after construction.

    Shapes:
        forward(x (N, C_in, h, w), scale=(r_v, r_h) or out_size=(H, W)) -> (N, C_out, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, hidden_channels: int = 256,
                 impl: str = 'auto'):
        super().__init__()
        self.pos2weight = Pos2Weight(in_channels, out_channels, kernel_size, hidden_channels)
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.impl = impl

    @property
    def impl(self) -> str:
        return self._impl

    @impl.setter
    def impl(self, value: str) -> None:
        if value not in MODULE_IMPLS:
            raise ValueError(f'impl must be one of {MODULE_IMPLS}, got {value!r}')
        self._impl = value

    def extra_repr(self) -> str:
        return f'in_channels={self.in_channels}, out_channels={self.out_channels}, ' \
               f'kernel_size={self.kernel_size}, impl={self.impl!r}'

    def forward(self, x: torch.Tensor, scale: ScaleArg = None, out_size: SizeArg = None) -> torch.Tensor:
        check_input(x, self.kernel_size)
        if x.shape[1] != self.in_channels:
            raise ValueError(f'x has {x.shape[1]} channels, MetaUpsample expects in_channels={self.in_channels}')
        spec = resolve_scale(x.shape[2], x.shape[3], scale, out_size)
        impl = resolve_impl(self.impl, x.device, MODULE_IMPLS)
        n, k = x.shape[0], self.kernel_size
        if n == 0:
            return x.new_zeros(0, self.out_channels, spec.out_h, spec.out_w)
        rows = axis_projection(x.shape[2], spec.out_h, spec.r_v, x.device)
        cols = axis_projection(x.shape[3], spec.out_w, spec.r_h, x.device)
        param = self.pos2weight.meta_block[0].weight
        dtype = x.dtype if x.dtype == param.dtype else param.dtype
        per_pixel = impl in ('im2col', 'gather')
        pos = position_encoding(rows, cols, spec.r_v, spec.r_h, per_pixel=per_pixel, dtype=dtype)
        weights = self.pos2weight(pos).to(x.dtype)
        if impl == 'im2col':
            table = weights.view(spec.out_h, spec.out_w, k, k, self.in_channels, self.out_channels)
            return meta_upscale_im2col(x, table, rows, cols, k)
        if impl == 'gather':
            table = weights.view(spec.out_h, spec.out_w, k, k, self.in_channels, self.out_channels)
            return phase_table_conv(x, table, per_pixel_projection(rows), per_pixel_projection(cols), mode='pixel')
        table = weights.view(rows.phases.numel(), cols.phases.numel(), k, k, self.in_channels, self.out_channels)
        if impl == 'cuda':
            from metasr_arch.ops import native
            return native.table_conv(x, table, rows, cols)
        return phase_table_conv(x, table, rows, cols)
