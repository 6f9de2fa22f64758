"""The Meta-SR upscaling operator: one definition, several implementations that agree.

Definition (also in ``docs/operator.md``). For low-resolution features ``x`` of shape
(N, C_in, h, w), an output size (H, W) and scales (r_v, r_h) resolved by ``geometry.resolve_scale``,
and per-pixel weights ``Wt`` of shape (H, W, k, k, C_in, C_out) (layout (k1, k2, ci, co)):

    out[n, co, i, j] = sum_{k1, k2, ci} x_pad[n, ci, i_p + k1, j_p + k2] * Wt[i, j, k1, k2, ci, co]

with ``i_p = floor(i / r_v + 1e-9)``, ``j_p = floor(j / r_h + 1e-9)`` and zero padding (k - 1) / 2 at
low resolution (k odd). This is the loop kernel of the seed and the paper's operator: each output
pixel convolves the k x k *low-resolution* neighbourhood of its projection. (The seed's "im2col"
version unfolds the nearest-upsampled high-resolution map instead; that is another operator and is
deliberately not reproduced.)

Implementations:

* ``im2col``: the readable reference of the paper: unfold at low resolution, gather the rows and
  columns of every output pixel, one batched matmul with per-pixel weights. Memory-hungry.
* ``gather``: the same sum on per-pixel weights through a custom autograd Function that works in
  row chunks and saves only ``x`` and the weights for backward.
* ``phase`` (used through ``MetaUpsample``): the weights depend on a pixel only through its phase
  pair (fv(i), fh(j)), so they are given as a small table over distinct phases, shape
  (Pv, Ph, k, k, C_in, C_out), with index maps. ``phase_table_conv`` evaluates the operator from the
  table without expanding it per pixel: for scales whose denominators are small (integers, x1.5,
  x2.5) as one convolution with Pv*Ph*C_out output channels followed by a gather (for integer scales
  exactly a sub-pixel convolution), otherwise by a row-chunked gather-matmul.
* ``cuda``: the native kernels of ``ops/meta_upscale`` (a later issue), when built.
"""
from typing import Callable, Dict, List, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .geometry import AxisProjection, ScaleArg, SizeArg, axis_projection, resolve_scale

# Names each API accepts: the functional ``meta_upscale`` takes per-pixel weights, so it has no
# 'phase'/'factorized' (those need the weight-predicting MLP of ``MetaUpsample``).
FUNCTIONAL_IMPLS = ('auto', 'im2col', 'gather', 'cuda')
MODULE_IMPLS = ('auto', 'im2col', 'gather', 'phase', 'factorized', 'cuda')
APIS = {'functional': FUNCTIONAL_IMPLS, 'module': MODULE_IMPLS}
# Bytes of transient buffers one chunk of the gather implementations may use.
CHUNK_BYTES = 64 * 2**20
# Relative cost per needed multiply-add of each strategy of ``phase_table_conv``: 'conv' runs in one
# large convolution (cost = its waste, the ratio of products computed to products needed), 'row' in
# per-row batched GEMMs (about 5x the conv's cost per product), 'pixel' in one tiny product per
# output pixel (about 200x). Measured on an idle 2-core CPU with scripts/calibrate_table_modes.py
# (BENCHMARKS.md): any row factor from 2 to 8 gives the same choices there; 5 is the median.
ROW_MODE_FACTOR = 5.0
PIXEL_MODE_COST = 200.0
# The conv strategy's transient output grows with its waste; above this it is not used.
CONV_MAX_BYTES = 1 << 30
class NativeBackend(NamedTuple):
    """What a native implementation (the CUDA op of ``ops.native``) tells this module when it registers.

    ``native`` imports this module, never the other way round: the operator asks the registered
    callables instead, so the PyTorch paths have no dependency on the native build.
    """
    is_available: Callable[[torch.device], bool]  # may it run on this device?
    trusted: Optional[Callable[[torch.device, torch.dtype], bool]]  # its self-check before 'auto' uses it
    unavailable_reason: Callable[[torch.device], str]  # why not ('' when it can)
    table_conv: Callable[..., torch.Tensor]  # phase_table_conv(x, table, rows, cols) natively


# Optional native implementations register here: name -> NativeBackend.
_NATIVE: Dict[str, NativeBackend] = {}


def register_native_impl(name: str, is_available: Callable[[torch.device], bool],
                         trusted: Optional[Callable[[torch.device, torch.dtype], bool]] = None,
                         unavailable_reason: Optional[Callable[[torch.device], str]] = None,
                         table_conv: Optional[Callable[..., torch.Tensor]] = None) -> None:
    """Let a native backend (the CUDA op) announce itself to ``available_impls`` and ``auto``.

    ``trusted(device, dtype)``, when given, is asked by ``resolve_impl`` (with a dtype) before 'auto'
    resolves to ``name``; it may warn and return False, and 'auto' then picks a PyTorch implementation.
    ``unavailable_reason(device)`` explains a refusal; ``table_conv`` evaluates ``phase_table_conv``.
    """
    def not_given(*args, **kwargs):
        raise RuntimeError(f'native implementation {name!r} registered no table_conv')

    _NATIVE[name] = NativeBackend(is_available, trusted,
                                  unavailable_reason or (lambda device: f'{name} is not available on {device}'),
                                  table_conv or not_given)


def native_backend(name: str) -> NativeBackend:
    """The registered native backend ``name`` (KeyError naming the registered ones)."""
    if name not in _NATIVE:
        raise KeyError(f'no native implementation {name!r} is registered (registered: {sorted(_NATIVE)})')
    return _NATIVE[name]


def available_impls(device=None, api: str = 'functional') -> List[str]:
    """Implementation names usable on ``device`` (default CPU) through one API.

    Args:
        device: where the tensors live.
        api: 'functional' (``meta_upscale``, per-pixel weights given) or 'module' (``MetaUpsample``
            and the networks' ``impl`` option, which also have 'phase' and 'factorized').

    Returns:
        The names that API accepts and that run on ``device`` (without 'auto'); always includes
        ``'im2col'`` and ``'gather'``.
    """
    if api not in APIS:
        raise ValueError(f'api must be one of {tuple(APIS)}, got {api!r}')
    device = torch.device('cpu') if device is None else torch.device(device)
    names = [name for name in APIS[api] if name != 'auto' and name not in _NATIVE]
    for name, backend in _NATIVE.items():
        if name not in APIS[api]:
            continue
        try:
            if backend.is_available(device):
                names.append(name)
        except Exception:  # a broken native build must never break the PyTorch paths
            pass
    return names


# ----------------------------------------------------------------------------------------------
# input checks


def check_input(x: torch.Tensor, kernel_size: int) -> None:
    """Validate the feature map ``x`` (N, C_in, h, w) and the kernel size (odd, >= 1)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f'x must be a torch.Tensor, got {type(x).__name__}')
    if x.dim() != 4:
        raise ValueError(f'x must be 4-D (N, C_in, h, w), got shape {tuple(x.shape)}')
    if not x.is_floating_point():
        raise TypeError(f'x must be a floating-point tensor, got {x.dtype}')
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f'kernel_size must be a positive odd integer, got {kernel_size!r}')


def _check_weight_like(x: torch.Tensor, weight: torch.Tensor, name: str) -> None:
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f'{name} must be a torch.Tensor, got {type(weight).__name__}')
    if weight.dtype != x.dtype:
        raise TypeError(f'{name} dtype {weight.dtype} does not match x dtype {x.dtype}')
    if weight.device != x.device:
        raise ValueError(f'{name} is on {weight.device} but x is on {x.device}')


def canonical_weight(weight: torch.Tensor, x: torch.Tensor, out_h: int, out_w: int, kernel_size: int,
                     ) -> torch.Tensor:
    """Return per-pixel ``weight`` viewed as (H, W, k, k, C_in, C_out), validating its shape.

    Accepted: (H*W, k*k*C_in*C_out) as Pos2Weight returns it, or (H, W, k, k, C_in, C_out).
    """
    _check_weight_like(x, weight, 'weight')
    c_in, k = x.shape[1], kernel_size
    per_pixel = k * k * c_in
    if weight.dim() == 6:
        if tuple(weight.shape[:5]) != (out_h, out_w, k, k, c_in):
            raise ValueError(f'weight of shape {tuple(weight.shape)} does not match (H, W, k, k, C_in, C_out) = '
                             f'({out_h}, {out_w}, {k}, {k}, {c_in}, C_out)')
        return weight
    if weight.dim() == 2 and weight.shape[0] == out_h * out_w and weight.shape[1] % per_pixel == 0 \
            and weight.shape[1] > 0:
        return weight.view(out_h, out_w, k, k, c_in, weight.shape[1] // per_pixel)
    raise ValueError(f'weight must have shape (H*W, k*k*C_in*C_out) = ({out_h * out_w}, {per_pixel}*C_out) or '
                     f'(H, W, k, k, C_in, C_out); got {tuple(weight.shape)}')


# ----------------------------------------------------------------------------------------------
# im2col: the readable reference


def meta_upscale_im2col(x: torch.Tensor, weight: torch.Tensor, rows: AxisProjection, cols: AxisProjection,
                        kernel_size: int) -> torch.Tensor:
    """Paper-faithful reference: unfold at LR, gather every output pixel's window, batched matmul.

    Args:
        x: (N, C_in, h, w).
        weight: (H, W, k, k, C_in, C_out) per-pixel weights.
        rows, cols: projections of the H output rows and W output columns.

    Returns:
        (N, C_out, H, W).
    """
    n, c_in, h, w = x.shape
    out_h, out_w, k, _, _, c_out = weight.shape
    unfolded = F.unfold(x, k, padding=k // 2).view(n, c_in * k * k, h, w)  # rows ordered (ci, k1, k2)
    gathered = unfolded[:, :, rows.lr_index][:, :, :, cols.lr_index]  # (N, C_in*k*k, H, W)
    gathered = gathered.permute(2, 3, 0, 1).reshape(out_h * out_w, n, c_in * k * k)
    w_mat = weight.permute(0, 1, 4, 2, 3, 5).reshape(out_h * out_w, c_in * k * k, c_out)
    out = torch.bmm(gathered, w_mat)  # (H*W, N, C_out)
    return out.permute(1, 2, 0).reshape(n, c_out, out_h, out_w)


# ----------------------------------------------------------------------------------------------
# gather: row-chunked evaluation from a weight table, custom backward


def _rows_per_chunk(bytes_per_row: int) -> int:
    return max(1, int(CHUNK_BYTES // max(1, bytes_per_row)))


def _table_to_mat(table: torch.Tensor) -> torch.Tensor:
    """(Pv, Ph, k, k, C_in, C_out) -> (Pv, Ph, C_in*k*k, C_out), rows ordered like F.unfold."""
    pv, ph, k, _, c_in, c_out = table.shape
    return table.permute(0, 1, 4, 2, 3, 5).reshape(pv, ph, c_in * k * k, c_out)


def _mat_to_table(mat: torch.Tensor, k: int) -> torch.Tensor:
    pv, ph, kk, c_out = mat.shape
    c_in = kk // (k * k)
    return mat.view(pv, ph, c_in, k, k, c_out).permute(0, 1, 3, 4, 2, 5)


class _GatherTableConv(torch.autograd.Function):
    """out from a weight table and index maps, evaluated in chunks of output rows.

    ``mode='row'``: every output row ``i`` multiplies its LR row of the unfold, (N*w, C_in*k*k), by the
    weights of all horizontal phases of its vertical phase, (C_in*k*k, Ph*C_out), then picks column
    ``(j_p, ph(j))`` for each output column: cheap when Ph*w is close to W.
    ``mode='pixel'``: every output pixel gathers its own unfold column and weight; the general case
    (per-pixel weights, or phases that do not repeat).

    Only ``x``, the table and the index maps are saved; chunk temporaries are recomputed in backward.
    """

    @staticmethod
    def forward(ctx, x, mat, row_lr, row_phase, col_lr, col_phase, kernel_size, mode):
        n, c_in, h, w = x.shape
        pv, ph, kk, c_out = mat.shape
        out_h, out_w = row_lr.numel(), col_lr.numel()
        k = kernel_size
        unfolded = F.unfold(x, k, padding=k // 2).view(n, kk, h, w)
        out = x.new_empty(n, c_out, out_h, out_w)
        col_sel = col_lr * ph + col_phase
        for r0, r1 in _GatherTableConv._chunks(mode, n, w, out_w, kk, ph, c_out, out_h, x.element_size()):
            out[:, :, r0:r1] = _GatherTableConv._forward_chunk(
                mode, unfolded, mat, row_lr[r0:r1], row_phase[r0:r1], col_lr, col_phase, col_sel)
        ctx.save_for_backward(x, mat, row_lr, row_phase, col_lr, col_phase)
        ctx.kernel_size, ctx.mode = k, mode
        return out

    @staticmethod
    def _chunks(mode, n, w, out_w, kk, ph, c_out, out_h, elem):
        if mode == 'row':
            per_row = (n * w * kk * 2 + n * w * ph * c_out * 2 + kk * ph * c_out) * elem
        else:
            per_row = (n * out_w * kk * 2 + out_w * kk * c_out * 2 + n * out_w * c_out) * elem
        step = _rows_per_chunk(per_row)
        return [(r0, min(out_h, r0 + step)) for r0 in range(0, out_h, step)]

    @staticmethod
    def _forward_chunk(mode, unfolded, mat, row_lr, row_phase, col_lr, col_phase, col_sel):
        n, kk, _, w = unfolded.shape
        _, ph, _, c_out = mat.shape
        rows = row_lr.numel()
        if mode == 'row':
            a = unfolded.index_select(2, row_lr).permute(2, 0, 3, 1).reshape(rows, n * w, kk)
            b = mat.index_select(0, row_phase).permute(0, 2, 1, 3).reshape(rows, kk, ph * c_out)
            y = torch.bmm(a, b).view(rows, n, w * ph, c_out).index_select(2, col_sel)  # (R, N, W, C_out)
            return y.permute(1, 3, 0, 2)
        a = unfolded.index_select(2, row_lr).index_select(3, col_lr)  # (N, kk, R, W)
        a = a.permute(2, 3, 0, 1).reshape(rows * col_lr.numel(), n, kk)
        b = mat.index_select(0, row_phase)[:, col_phase].reshape(rows * col_lr.numel(), kk, c_out)
        y = torch.bmm(a, b).view(rows, col_lr.numel(), n, c_out)
        return y.permute(2, 3, 0, 1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, mat, row_lr, row_phase, col_lr, col_phase = ctx.saved_tensors
        k, mode = ctx.kernel_size, ctx.mode
        n, c_in, h, w = x.shape
        pv, ph, kk, c_out = mat.shape
        out_h, out_w = row_lr.numel(), col_lr.numel()
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_out = grad_out.contiguous()
        unfolded = F.unfold(x, k, padding=k // 2).view(n, kk, h, w)
        grad_unf = torch.zeros_like(unfolded) if need_x else None
        grad_mat = torch.zeros_like(mat) if need_w else None
        col_sel = col_lr * ph + col_phase
        for r0, r1 in _GatherTableConv._chunks(mode, n, w, out_w, kk, ph, c_out, out_h, x.element_size()):
            rl, rp = row_lr[r0:r1], row_phase[r0:r1]
            rows = r1 - r0
            g = grad_out[:, :, r0:r1]  # (N, C_out, R, W)
            if mode == 'row':
                gy = g.new_zeros(rows, n, w * ph, c_out)
                gy.index_copy_(2, col_sel, g.permute(2, 0, 3, 1))
                gy = gy.view(rows, n * w, ph * c_out)
                b = mat.index_select(0, rp).permute(0, 2, 1, 3).reshape(rows, kk, ph * c_out)
                if need_x:
                    ga = torch.bmm(gy, b.transpose(1, 2)).view(rows, n, w, kk).permute(1, 3, 0, 2)
                    grad_unf.index_add_(2, rl, ga)
                if need_w:
                    a = unfolded.index_select(2, rl).permute(2, 0, 3, 1).reshape(rows, n * w, kk)
                    gb = torch.bmm(a.transpose(1, 2), gy).view(rows, kk, ph, c_out).permute(0, 2, 1, 3)
                    grad_mat.index_add_(0, rp, gb)
                continue
            gy = g.permute(2, 3, 0, 1).reshape(rows * out_w, n, c_out)
            if need_x:
                b = mat.index_select(0, rp)[:, col_phase].reshape(rows * out_w, kk, c_out)
                ga = torch.bmm(gy, b.transpose(1, 2)).view(rows, out_w, n, kk).permute(2, 3, 0, 1)
                # accumulate over output columns first (index_add along W), then rows
                grad_rows = g.new_zeros(n, kk, rows, w).index_add_(3, col_lr, ga)
                grad_unf.index_add_(2, rl, grad_rows)
            if need_w:
                a = unfolded.index_select(2, rl).index_select(3, col_lr)
                a = a.permute(2, 3, 0, 1).reshape(rows * out_w, n, kk)
                gb = torch.bmm(a.transpose(1, 2), gy).view(rows, out_w, kk, c_out)
                # (R, W) -> (Pv, Ph): flatten the phase pair into one index
                flat = (rp[:, None] * ph + col_phase[None, :]).reshape(-1)
                grad_mat.view(pv * ph, kk, c_out).index_add_(0, flat, gb.view(rows * out_w, kk, c_out))
        grad_x = None
        if need_x:
            grad_x = F.fold(grad_unf.view(n, kk, h * w), (h, w), k, padding=k // 2)
        return grad_x, grad_mat, None, None, None, None, None, None


def _conv_table(x: torch.Tensor, table: torch.Tensor, rows: AxisProjection, cols: AxisProjection) -> torch.Tensor:
    """Convolution form: all Pv*Ph phase kernels at every LR pixel, then pick each output pixel.

    For integer scales this is exactly a sub-pixel convolution. Autograd keeps only ``x`` and the
    kernels (index_select saves indices, not its input), so no custom Function is needed.
    """
    n, _, h, w = x.shape
    pv, ph, k, _, c_in, c_out = table.shape
    kernels = table.permute(0, 1, 5, 4, 2, 3).reshape(pv * ph * c_out, c_in, k, k)
    y = F.conv2d(x, kernels, padding=k // 2).view(n, pv, ph, c_out, h, w)
    y = y.permute(0, 3, 1, 4, 2, 5).reshape(n, c_out, pv * h, ph * w)
    row_sel = rows.phase_index * h + rows.lr_index
    col_sel = cols.phase_index * w + cols.lr_index
    return y.index_select(2, row_sel).index_select(3, col_sel)


def table_mode_costs(in_h: int, in_w: int, rows: AxisProjection, cols: AxisProjection, n: int = 1,
                     c_out: int = 1, elem: int = 4, row_factor: Optional[float] = None,
                     pixel_cost: Optional[float] = None) -> Dict[str, float]:
    """Estimated cost of each usable ``phase_table_conv`` strategy, in convolution multiply-adds per
    needed multiply-add.

    Waste is the ratio of multiply-adds computed to those needed (H*W per channel pair): conv computes
    Pv*Ph*h*w, row H*Ph*w, the transposed row form W*Pv*h, pixel exactly H*W. Each is weighted by the
    strategy's measured cost per product (``row_factor``, ``pixel_cost``; default ``ROW_MODE_FACTOR``,
    ``PIXEL_MODE_COST``), so ``row_factor = pixel_cost = 1`` gives the waste itself. 'conv' is left
    out when its output (n, Pv*Ph*C_out, h, w) of ``elem``-byte values would exceed ``CONV_MAX_BYTES``.
    """
    row_factor = ROW_MODE_FACTOR if row_factor is None else row_factor
    pixel_cost = PIXEL_MODE_COST if pixel_cost is None else pixel_cost
    out_h, out_w = rows.lr_index.numel(), cols.lr_index.numel()
    needed = max(1, out_h * out_w)
    pv, ph = rows.phases.numel(), cols.phases.numel()
    costs = {
        'conv': pv * ph * in_h * in_w / needed,
        'row': row_factor * out_h * ph * in_w / needed,
        'row_t': row_factor * out_w * pv * in_h / needed,
        'pixel': float(pixel_cost),
    }
    if n * pv * ph * c_out * in_h * in_w * elem > CONV_MAX_BYTES:
        del costs['conv']
    return costs


def choose_table_mode(in_h: int, in_w: int, rows: AxisProjection, cols: AxisProjection, n: int = 1,
                      c_out: int = 1, elem: int = 4, row_factor: Optional[float] = None,
                      pixel_cost: Optional[float] = None) -> str:
    """Pick how ``phase_table_conv`` evaluates a table: 'conv', 'row', 'row_t' (transposed) or 'pixel',
    the cheapest by ``table_mode_costs`` (same arguments)."""
    costs = table_mode_costs(in_h, in_w, rows, cols, n, c_out, elem, row_factor, pixel_cost)
    return min(costs, key=costs.get)


def phase_table_conv(x: torch.Tensor, table: torch.Tensor, rows: AxisProjection, cols: AxisProjection,
                     mode: Optional[str] = None) -> torch.Tensor:
    """Evaluate the operator from a phase weight table without expanding it per pixel.

    Args:
        x: (N, C_in, h, w).
        table: (Pv, Ph, k, k, C_in, C_out); output pixel (i, j) uses
            ``table[rows.phase_index[i], cols.phase_index[j]]``.
        rows, cols: the axis projections (``geometry.axis_projection``).
        mode: force 'conv', 'row', 'row_t' or 'pixel' (default: ``choose_table_mode``).

    Returns:
        (N, C_out, H, W).
    """
    k = table.shape[2]
    mode = mode or choose_table_mode(x.shape[2], x.shape[3], rows, cols, x.shape[0], table.shape[-1],
                                     x.element_size())
    if mode == 'conv':
        return _conv_table(x, table, rows, cols)
    if mode == 'row_t':
        out_t = _GatherTableConv.apply(x.transpose(2, 3).contiguous(), _table_to_mat(table.transpose(0, 1)
                                       .transpose(2, 3)).contiguous(), cols.lr_index, cols.phase_index,
                                       rows.lr_index, rows.phase_index, k, 'row')
        return out_t.transpose(2, 3)
    if mode not in ('row', 'pixel'):
        raise ValueError(f"mode must be one of 'conv', 'row', 'row_t', 'pixel', got {mode!r}")
    return _GatherTableConv.apply(x.contiguous(), _table_to_mat(table).contiguous(), rows.lr_index,
                                  rows.phase_index, cols.lr_index, cols.phase_index, k, mode)


def per_pixel_projection(p: AxisProjection) -> AxisProjection:
    """The same projection with one 'phase' per output index (per-pixel weights as a table)."""
    idx = torch.arange(p.lr_index.numel(), device=p.lr_index.device)
    return AxisProjection(p.lr_index, idx, p.frac, p.frac)


# ----------------------------------------------------------------------------------------------
# public functional API


def resolve_impl(impl: str, device: torch.device, allowed=FUNCTIONAL_IMPLS,
                 dtype: Optional[torch.dtype] = None) -> str:
    """Validate ``impl`` and turn 'auto' into a concrete name for ``device``.

    Args:
        impl: a name of ``allowed`` (``FUNCTIONAL_IMPLS`` or ``MODULE_IMPLS``).
        device: where the tensors live.
        allowed: the names of the calling API.
        dtype: the dtype the operator will run in. Given, 'auto' hands the native op a (device, dtype)
            only after its run-time self-check passed there (``native.self_check``); otherwise it
            picks the PyTorch path. An explicit ``impl='cuda'`` is never second-guessed.
    """
    if impl not in allowed:
        raise ValueError(f'impl must be one of {allowed}, got {impl!r}')
    usable = available_impls(device, 'module')  # a superset: ``impl`` is already known to be allowed
    if impl == 'auto':
        fallback = 'phase' if 'phase' in allowed else 'gather'
        if 'cuda' not in usable:
            return fallback
        trusted = _NATIVE['cuda'].trusted
        if dtype is not None and trusted is not None and not trusted(torch.device(device), dtype):
            return fallback
        return 'cuda'
    if impl not in usable:
        reason = _NATIVE[impl].unavailable_reason(device) if impl in _NATIVE else 'not registered'
        raise RuntimeError(f"impl '{impl}' is not usable on {device}: {reason}")
    return impl


def meta_upscale(x: torch.Tensor, weight: torch.Tensor, scale: ScaleArg = None, out_size: SizeArg = None,
                 kernel_size: int = 3, impl: str = 'auto') -> torch.Tensor:
    """Meta-SR upscaling with per-pixel weights (the definition in this module's docstring).

    Args:
        x: (N, C_in, h, w) low-resolution features.
        weight: (H*W, k*k*C_in*C_out) (as Pos2Weight returns it, row ``i*W + j``, columns ordered
            (k1, k2, ci, co)) or (H, W, k, k, C_in, C_out).
        scale: float or (r_v, r_h), each >= 1; or give ``out_size=(H, W)`` instead.
        kernel_size: odd k.
        impl: 'auto', 'im2col', 'gather' or 'cuda' (``available_impls(device)`` lists what runs here;
            'phase' and 'factorized' belong to ``MetaUpsample``).

    Returns:
        (N, C_out, H, W).
    """
    check_input(x, kernel_size)
    spec = resolve_scale(x.shape[2], x.shape[3], scale, out_size)
    weight = canonical_weight(weight, x, spec.out_h, spec.out_w, kernel_size)
    impl = resolve_impl(impl, x.device, dtype=x.dtype)
    n, c_out = x.shape[0], weight.shape[-1]
    if n == 0:  # zeros that depend on x and weight, so backward gives (zero) gradients like any batch
        return x.new_zeros(0, c_out, spec.out_h, spec.out_w) + (x.sum() + weight.reshape(-1)[:0].sum().to(x.dtype))
    rows = axis_projection(x.shape[2], spec.out_h, spec.r_v, x.device)
    cols = axis_projection(x.shape[3], spec.out_w, spec.r_h, x.device)
    if impl == 'im2col':
        return meta_upscale_im2col(x, weight, rows, cols, kernel_size)
    rows_px, cols_px = per_pixel_projection(rows), per_pixel_projection(cols)
    if impl == 'cuda':
        return _NATIVE['cuda'].table_conv(x, weight, rows_px, cols_px)
    return phase_table_conv(x, weight, rows_px, cols_px, mode='pixel')


def flops(n: int, c_in: int, c_out: int, out_h: int, out_w: int, kernel_size: int) -> int:
    """Multiply-adds x 2 of the operator itself (excluding weight prediction)."""
    return 2 * n * c_out * out_h * out_w * kernel_size * kernel_size * c_in


__all__ = ['meta_upscale', 'meta_upscale_im2col', 'phase_table_conv', 'choose_table_mode', 'available_impls',
           'register_native_impl', 'native_backend', 'NativeBackend', 'per_pixel_projection', 'check_input', 'canonical_weight', 'resolve_impl', 'flops',
           'FUNCTIONAL_IMPLS', 'MODULE_IMPLS']
