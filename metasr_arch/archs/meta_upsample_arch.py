"""The Meta-SR upscaling head: Pos2Weight (weight prediction) and MetaUpsample (head module)."""
from contextlib import nullcontext

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from metasr_arch.archs.periodic import pad_projection_w
from metasr_arch.ops.geometry import (AxisProjection, ScaleArg, ScaleSpec, SizeArg, axis_projection, position_encoding,
                                      resolve_scale)
from metasr_arch.ops.factorized import factorized_meta_upscale
from metasr_arch.ops.meta_upscale import (MODULE_IMPLS, check_input, meta_upscale_im2col, per_pixel_projection,
                                          phase_table_conv, resolve_impl)
from metasr_arch.utils.memory import check_request

# Largest phase table (weights + the MLP's hidden layer) built at once. Scales whose phases do not
# repeat (e.g. out_size 721x1439 from 96x144) would otherwise build a table as large as per-pixel
# weights; above this size 'phase' switches to the factorised form (no table at all), and 'cuda'
# produces the output in row blocks whose tables are recomputed in backward.
TABLE_BUDGET_BYTES = 128 * 2**20


def _float32_region(t: torch.Tensor):
    """Autocast switched off (when on) for ``t``'s device: the weight MLP and the position encoding keep
    float32 (a bf16 phase offset would move weights by up to 2^-8 of their range)."""
    device_type = t.device.type
    return torch.autocast(device_type, enabled=False) if torch.is_autocast_enabled(device_type) else nullcontext()


def _conv_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the head's convolution runs in: autocast's when on for ``x``'s device, else ``x``'s."""
    device_type = x.device.type
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else x.dtype


def _row_block(rows: AxisProjection, r0: int, r1: int) -> AxisProjection:
    """Projection of output rows [r0, r1) with the phases renumbered to those the block uses."""
    used, local = torch.unique(rows.phase_index[r0:r1], sorted=True, return_inverse=True)
    return AxisProjection(rows.lr_index[r0:r1], local, rows.phases[used], rows.frac[r0:r1])


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
        impl: 'auto' (fastest valid for the device), 'phase' (memory-efficient phase table; switches to
            'factorized' when phases do not repeat), 'factorized' (through the MLP's last layer),
            'gather' (per-pixel weights, chunked custom backward), 'im2col' (paper-faithful reference)
            or 'cuda' (native op). Settable after construction.
        periodic_w: the input wraps around along W (longitude of a global grid): the k x k window of
            the first and last columns reads the other edge instead of zeros. Default False (images).

    Shapes:
        forward(x (N, C_in, h, w), scale=(r_v, r_h) or out_size=(H, W)) -> (N, C_out, H, W).

    Raises:
        RequestTooLargeError (a ValueError, ``metasr_arch.utils.memory``) before allocating anything when
        the output cannot fit in memory (``METASR_MEMORY_LIMIT`` sets the limit).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, hidden_channels: int = 256,
                 impl: str = 'auto', periodic_w: bool = False):
        super().__init__()
        self.pos2weight = Pos2Weight(in_channels, out_channels, kernel_size, hidden_channels)
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.impl = impl
        if not isinstance(periodic_w, bool):
            raise ValueError(f'periodic_w must be true or false, got {periodic_w!r}')
        self.periodic_w = periodic_w

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
               f'kernel_size={self.kernel_size}, impl={self.impl!r}' + (', periodic_w=True' if self.periodic_w else '')

    def forward(self, x: torch.Tensor, scale: ScaleArg = None, out_size: SizeArg = None) -> torch.Tensor:
        check_input(x, self.kernel_size)
        if x.shape[1] != self.in_channels:
            raise ValueError(f'x has {x.shape[1]} channels, MetaUpsample expects in_channels={self.in_channels}')
        spec = resolve_scale(x.shape[2], x.shape[3], scale, out_size)
        # before any allocation (a huge scale would otherwise fill the memory first); MetaSRNet checks
        # its larger need itself. Not inside a compiled graph: querying the machine would break it.
        if not torch.compiler.is_compiling():
            check_request(x.shape[0], self.in_channels, self.out_channels, x.shape[2], x.shape[3], spec.out_h,
                          spec.out_w, self.kernel_size, x.element_size(), x.device, output_copies=1,
                          what=f'MetaUpsample at (r_v, r_h) = ({spec.r_v:g}, {spec.r_h:g})')
        # with the dtype, 'auto' hands the native op this (device, dtype) only after its self-check passed
        impl = resolve_impl(self.impl, x.device, MODULE_IMPLS, dtype=x.dtype)
        n, k = x.shape[0], self.kernel_size
        if n == 0:  # through the MLP on no positions: backward gives zero gradients, as for any batch
            none = self.pos2weight(x.new_zeros(0, 4, dtype=self.pos2weight.meta_block[0].weight.dtype))
            return x.new_zeros(0, self.out_channels, spec.out_h, spec.out_w) + (x.sum() + none.sum().to(x.dtype))
        rows = axis_projection(x.shape[2], spec.out_h, spec.r_v, x.device)
        cols = axis_projection(x.shape[3], spec.out_w, spec.r_h, x.device)
        if self.periodic_w:  # every implementation reads x only through rows/cols, so this covers them all
            x, cols = pad_projection_w(x, cols, k // 2)
        dtype = self.pos2weight.meta_block[0].weight.dtype  # the MLP runs in its own dtype
        if impl in ('im2col', 'gather'):
            with _float32_region(x):
                pos = position_encoding(rows, cols, spec.r_v, spec.r_h, per_pixel=True, dtype=dtype)
                weights = self.pos2weight(pos)
            x = x.to(_conv_dtype(x))
            table = weights.to(x.dtype).view(spec.out_h, spec.out_w, k, k, self.in_channels, self.out_channels)
            if impl == 'im2col':
                return meta_upscale_im2col(x, table, rows, cols, k)
            return phase_table_conv(x, table, per_pixel_projection(rows), per_pixel_projection(cols), mode='pixel')
        if impl == 'factorized':
            return self._factorized(x, rows, cols, spec)
        return self._phase_forward(x, rows, cols, spec, impl, dtype)

    def _factorized(self, x: torch.Tensor, rows: AxisProjection, cols: AxisProjection,
                    spec: ScaleSpec) -> torch.Tensor:
        """``factorized_meta_upscale``; under autocast in float32: its gather mixes the MLP's hidden
        activations into the sum, which must stay float32, and its custom backward needs one dtype."""
        if torch.is_autocast_enabled(x.device.type):
            with _float32_region(x):
                return self._factorized(x.float(), rows, cols, spec)
        return factorized_meta_upscale(x, self.pos2weight.meta_block, rows, cols, spec.r_v, spec.r_h,
                                       self.kernel_size, self.out_channels)

    def _phase_table(self, rows: AxisProjection, cols: AxisProjection, spec: ScaleSpec,
                     dtype: torch.dtype) -> torch.Tensor:
        """(Pv, Ph, k, k, C_in, C_out) weights of the distinct phase pairs."""
        k = self.kernel_size
        with _float32_region(rows.phases):
            pos = position_encoding(rows, cols, spec.r_v, spec.r_h, dtype=dtype)
            weights = self.pos2weight(pos)
        return weights.view(rows.phases.numel(), cols.phases.numel(), k, k, self.in_channels, self.out_channels)

    def _apply_table(self, x: torch.Tensor, table: torch.Tensor, rows: AxisProjection, cols: AxisProjection,
                     impl: str) -> torch.Tensor:
        # under autocast the table meets the features in the autocast dtype (as a conv's weight would)
        x = x.to(_conv_dtype(x))
        table = table.to(x.dtype)
        if impl == 'cuda':
            from metasr_arch.ops import native
            return native.table_conv(x, table, rows, cols)
        return phase_table_conv(x, table, rows, cols)

    def _phase_forward(self, x: torch.Tensor, rows: AxisProjection, cols: AxisProjection, spec: ScaleSpec,
                       impl: str, dtype: torch.dtype) -> torch.Tensor:
        elem = torch.finfo(dtype).bits // 8
        per_pair = elem * (self.pos2weight.meta_block[2].out_features + 2 * self.pos2weight.hidden_channels)
        ph = cols.phases.numel()
        if rows.phases.numel() * ph * per_pair <= TABLE_BUDGET_BYTES:
            return self._apply_table(x, self._phase_table(rows, cols, spec, dtype), rows, cols, impl)
        if impl == 'phase':
            return self._factorized(x, rows, cols, spec)
        # Each output row adds at most one row phase, so a block of this many rows stays in budget.
        step = max(1, TABLE_BUDGET_BYTES // (ph * per_pair))

        def block(inp: torch.Tensor, r0: int, r1: int) -> torch.Tensor:
            sub = _row_block(rows, r0, r1)
            return self._apply_table(inp, self._phase_table(sub, cols, spec, dtype), sub, cols, impl)

        # checkpoint: backward recomputes each block's table instead of keeping all of them alive
        outs = [checkpoint(block, x, r0, min(r0 + step, spec.out_h), use_reentrant=False)
                for r0 in range(0, spec.out_h, step)]
        return torch.cat(outs, dim=2)
