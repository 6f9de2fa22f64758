"""A Meta-SR network frozen at one request (scale or output size) and one input size.

At a fixed request the Meta head's weights are constants: ``MetaUpsample._phase_table`` runs once (float32)
and the head becomes a plain module of convolutions, matrix products and index gathers, which every runtime
(ONNX Runtime, TorchScript, ``torch.export``) supports. Pos2Weight is not part of the frozen network.

How the head evaluates the table (``FrozenMetaHead``). Along each axis output index ``i`` reads LR index
``lr(i)`` with phase ``p(i)``; each axis has one of two *plans*:

* ``phase``: every LR index computes all P phases of the axis (weights shared by all LR indices);
  output ``i`` picks slot ``p(i)`` of LR index ``lr(i)``. Cheap when phases repeat (P about r).
* ``slot``: LR index ``a`` computes only the S <= ceil(r) + 1 output indices that project onto it,
  with weights stored per LR index; output ``i`` picks slot ``i - first(lr(i))``. For phases that do
  not repeat (96 -> 721 rows: 721 phases, S = 8), at the price of weights stored per LR index.

The four combinations (vertical plan, horizontal plan) are the modes: ``conv`` (phase, phase: one
convolution with Pv*Ph*C_out kernels, a sub-pixel convolution at integer scales), ``rows`` (slot, phase),
``cols`` (phase, slot) and ``pixels`` (slot, slot). The last three unfold the k x k neighbourhoods with
pad + slices and run one batched matrix product per LR row, column or pixel. Every mode ends with two
gathers (rows, then columns) of a (N, C_out, h*S_v, w*S_h) map. ``choose_mode`` picks the mode with the
least work (multiply-adds plus weight reads) whose constants and intermediates fit the byte budgets
(``conv`` when it is within 2x of the least: one large convolution is the fastest primitive of every runtime).
"""
import copy
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from metasr_arch.archs.meta_upsample_arch import MetaUpsample
from metasr_arch.archs.periodic import pad_projection_w
from metasr_arch.ops.geometry import AxisProjection, ScaleSpec, axis_projection, resolve_scale
from metasr_arch.utils.naming import Request
from metasr_arch.utils.resize import resize_matrix

MODES = ('conv', 'rows', 'cols', 'pixels')
_PLANS = {'conv': ('phase', 'phase'), 'rows': ('slot', 'phase'), 'cols': ('phase', 'slot'),
          'pixels': ('slot', 'slot')}
# Largest frozen weight constant and largest per-image intermediate (bytes, float32) a mode may use.
CONST_BUDGET_BYTES = 1 << 30
INTERMEDIATE_BUDGET_BYTES = 1 << 30
_CONV_PREFERENCE = 2.0  # 'conv' is chosen when its work is within this factor of the least


def axis_slots(p: AxisProjection, in_len: int, plan: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """Slot layout of one axis under ``plan``.

    Returns:
        select: (L,) int64, output index -> position ``lr * S + slot`` in the (in_len * S) slotted axis.
        phase_of: (in_len, S) int64, phase index each (LR index, slot) computes, -1 for an unused slot
            (``plan='phase'``: row ``a`` is simply 0..P-1 for every a).
    """
    lr, ph = p.lr_index.cpu(), p.phase_index.cpu()
    if plan == 'phase':
        num = p.phases.numel()
        return lr * num + ph, torch.arange(num).expand(in_len, num).clone()
    counts = torch.bincount(lr, minlength=in_len)
    first = torch.cumsum(counts, 0) - counts  # lr is non-decreasing: output indices of LR a are contiguous
    slot = torch.arange(lr.numel()) - first[lr]
    num = max(1, int(counts.max()))
    phase_of = torch.full((in_len, num), -1, dtype=torch.int64)
    phase_of[lr, slot] = ph
    return lr * num + slot, phase_of


def mode_costs(rows: AxisProjection, cols: AxisProjection, in_h: int, in_w: int, kk: int,
               c_out: int) -> Dict[str, Tuple[int, int, int]]:
    """(multiply-adds, constant bytes, intermediate bytes) per image of each mode (float32).

    ``kk`` = k*k*C_in, the length of one unfolded neighbourhood.
    """
    slots = {}
    for name, p, n in (('v', rows, in_h), ('h', cols, in_w)):
        slots[name, 'phase'] = p.phases.numel()
        slots[name, 'slot'] = int(torch.bincount(p.lr_index.cpu(), minlength=n).max())
    out = {}
    for mode, (pv, ph) in _PLANS.items():
        s_v, s_h = slots['v', pv], slots['h', ph]
        positions = in_h * in_w * s_v * s_h  # slotted outputs computed per image and output channel
        weights = s_v * s_h * (in_h if pv == 'slot' else 1) * (in_w if ph == 'slot' else 1)
        unfolded = 0 if mode == 'conv' else kk * in_h * in_w
        out[mode] = (positions * kk * c_out, 4 * weights * kk * c_out, 4 * (positions * c_out + unfolded))
    return out


def choose_mode(rows: AxisProjection, cols: AxisProjection, in_h: int, in_w: int, kk: int, c_out: int) -> str:
    """The mode ``FrozenMetaHead`` uses for this geometry (see the module docstring).

    Raises:
        ValueError when no mode fits ``CONST_BUDGET_BYTES`` / ``INTERMEDIATE_BUDGET_BYTES``: phases
        repeat along neither axis and the image is large, so the frozen weights are per-pixel weights.
    """
    costs = mode_costs(rows, cols, in_h, in_w, kk, c_out)
    fits = {m: c for m, c in costs.items() if c[1] <= CONST_BUDGET_BYTES and c[2] <= INTERMEDIATE_BUDGET_BYTES}
    if not fits:
        least = min(costs.values(), key=lambda c: max(c[1], c[2]))
        raise ValueError(
            f'cannot freeze the Meta head at this request: phases repeat along neither axis '
            f'({rows.phases.numel()} x {cols.phases.numel()} distinct phases for a {in_h}x{in_w} input), so the '
            f'frozen weights or intermediates need at least {max(least[1], least[2]) / 2**30:.1f} GiB (budget '
            f'{CONST_BUDGET_BYTES / 2**30:.0f} GiB); use a smaller input size or a scale whose phases repeat')
    # work per image: the multiply-adds plus one read of every frozen weight (in 'pixels' each weight
    # serves one output pixel, so its weights cost as much as its products)
    work = {m: c[0] + c[1] // 4 for m, c in fits.items()}
    if 'conv' in work and work['conv'] <= _CONV_PREFERENCE * min(work.values()):
        return 'conv'
    return min(work, key=work.get)


def _unfold(x: torch.Tensor, k: int) -> torch.Tensor:
    """(N, C, h, w) -> (N, k*k*C, h, w), channel order (k1, k2, c), zero padding (k - 1) / 2.

    Pad + slices rather than ``F.unfold``: plain ONNX ops, and exact (no arithmetic).
    """
    h, w = x.shape[-2:]
    pad = k // 2
    xp = F.pad(x, (pad, pad, pad, pad))
    return torch.cat([xp[:, :, a:a + h, b:b + w] for a in range(k) for b in range(k)], dim=1)


class FrozenMetaHead(nn.Module):
    """The Meta head at one fixed geometry, from its phase table (no weight prediction).

    Args:
        table: (Pv, Ph, k, k, C_in, C_out) float weights of the distinct phase pairs
            (``MetaUpsample._phase_table``).
        rows, cols: projections of the H output rows and W output columns.
        in_size: (h, w) of the features.
        mode: one of ``MODES`` or None (``choose_mode``).

    Shapes:
        forward(x (N, C_in, h, w)) -> (N, C_out, H, W). N may vary; h, w may not.
    """

    def __init__(self, table: torch.Tensor, rows: AxisProjection, cols: AxisProjection, in_size: Tuple[int, int],
                 mode: Optional[str] = None):
        super().__init__()
        pv, ph, k, _, c_in, c_out = table.shape
        h, w = in_size
        kk = k * k * c_in
        mode = mode or choose_mode(rows, cols, h, w, kk, c_out)
        if mode not in MODES:
            raise ValueError(f'mode must be one of {MODES}, got {mode!r}')
        plan_v, plan_h = _PLANS[mode]
        row_sel, phase_v = axis_slots(rows, h, plan_v)
        col_sel, phase_h = axis_slots(cols, w, plan_h)
        self.mode, self.kernel_size, self.c_out = mode, k, c_out
        self.in_size, self.out_size = (h, w), (rows.lr_index.numel(), cols.lr_index.numel())
        self.slots = (phase_v.shape[1], phase_h.shape[1])
        self.register_buffer('row_sel', row_sel)
        self.register_buffer('col_sel', col_sel)
        table = table.detach().float().cpu()
        if mode == 'conv':
            # out channel order (Pv, Ph, C_out); conv kernels are (out, C_in, k1, k2)
            weight = table.permute(0, 1, 5, 4, 2, 3).reshape(pv * ph * c_out, c_in, k, k)
        else:
            weight = self._slotted_weight(table.reshape(pv, ph, kk, c_out), phase_v, phase_h, mode)
        self.register_buffer('weight', weight.contiguous())

    @staticmethod
    def _slotted_weight(mat: torch.Tensor, phase_v: torch.Tensor, phase_h: torch.Tensor, mode: str) -> torch.Tensor:
        """Weights (G, kk, S_v*S_h*C_out) of the batched product, one group G per LR row/column/pixel."""
        kk, c_out = mat.shape[2:]
        if mode == 'rows':  # (h, S_v) x all Ph phases
            phase_v, phase_h = phase_v, phase_h[:1]
        elif mode == 'cols':  # all Pv phases x (w, S_h)
            phase_v = phase_v[:1]
        # (Gv, S_v, Gh, S_h, kk, C_out) with zeros in unused slots
        w = mat[phase_v.clamp(min=0)[:, :, None, None], phase_h.clamp(min=0)[None, None]]
        used = (phase_v >= 0)[:, :, None, None] & (phase_h >= 0)[None, None]
        w = w * used[..., None, None].to(w.dtype)
        g_v, s_v, g_h, s_h = w.shape[:4]
        return w.permute(0, 2, 4, 1, 3, 5).reshape(g_v * g_h, kk, s_v * s_h * c_out)

    def extra_repr(self) -> str:
        return f'mode={self.mode!r}, in_size={self.in_size}, out_size={self.out_size}, slots={self.slots}'

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.in_size
        s_v, s_h = self.slots
        c = self.c_out
        k = self.kernel_size
        if self.mode == 'conv':
            y = F.conv2d(x, self.weight, padding=k // 2).reshape(-1, s_v, s_h, c, h, w)
            y = y.permute(0, 3, 4, 1, 5, 2)  # (N, C, h, S_v, w, S_h)
        else:
            u = _unfold(x, k)  # (N, kk, h, w)
            kk = u.shape[1]
            if self.mode == 'rows':
                y = torch.matmul(u.permute(2, 0, 3, 1).reshape(h, -1, kk), self.weight)
                y = y.reshape(h, -1, w, s_v, s_h, c).permute(1, 5, 0, 3, 2, 4)
            elif self.mode == 'cols':
                y = torch.matmul(u.permute(3, 0, 2, 1).reshape(w, -1, kk), self.weight)
                y = y.reshape(w, -1, h, s_v, s_h, c).permute(1, 5, 2, 3, 0, 4)
            else:
                y = torch.matmul(u.permute(2, 3, 0, 1).reshape(h * w, -1, kk), self.weight)
                y = y.reshape(h, w, -1, s_v, s_h, c).permute(2, 5, 0, 3, 1, 4)
        y = y.reshape(-1, c, h * s_v, w * s_h)
        return y.index_select(2, self.row_sel).index_select(3, self.col_sel)


def freeze_head(head: MetaUpsample, spec: ScaleSpec, in_size: Tuple[int, int],
                mode: Optional[str] = None) -> FrozenMetaHead:
    """``head`` at the resolved request ``spec`` for (h, w) features, as a ``FrozenMetaHead``."""
    h, w = in_size
    rows = axis_projection(h, spec.out_h, spec.r_v)
    cols = axis_projection(w, spec.out_w, spec.r_h)
    with torch.no_grad():
        # float32 whatever the head's dtype: the table is the one constant every runtime reads
        head32 = copy.deepcopy(head).float().cpu()
        table = head32._phase_table(rows, cols, spec, torch.float32)
    if head.periodic_w:
        # as MetaUpsample does: the features arrive wrapped by k // 2 columns (FixedRequestSR pads
        # them), and the column projection points into the wrapped map; phases are unchanged
        pad = head.kernel_size // 2
        _, cols = pad_projection_w(torch.empty(0, 0, 0, w), cols, pad)
        in_size = (h, w + 2 * pad)
    return FrozenMetaHead(table, rows, cols, in_size, mode)


def periodic_resize_matrix(in_len: int, out_len: int) -> torch.Tensor:
    """(out_len, in_len) bicubic matrix of an axis that wraps around, as ``imresize_periodic_w`` resizes
    along W: the matrix of the input tiled three times, middle third, its three copies folded."""
    tiled = resize_matrix(3 * in_len, 3 * out_len, scale=out_len / in_len)[out_len:2 * out_len]
    return tiled.reshape(out_len, 3, in_len).sum(dim=1)


class FixedRequestSR(nn.Module):
    """A Meta-SR network (``MetaSRNet``) frozen at one request and input size, ready for export.

    The trunk is the network's own (``forward_trunk``: mean subtraction, ``img_range``, SwinIR's
    padding to the window size); the head is a ``FrozenMetaHead``; the output adds the mean back, and
    with ``bicubic_skip`` the MATLAB bicubic of the input, as two fixed interpolation matrices.
    Outputs are raw float values (no clamping).

    Shapes:
        forward(x (N, C_in, h, w)) -> (N, C_out, H, W), with (h, w) and (H, W) fixed.
    """

    def __init__(self, net: nn.Module, head: FrozenMetaHead, bicubic_skip: bool):
        super().__init__()
        periodic = bool(getattr(net.upsample, 'periodic_w', False))
        # a periodic head was frozen for features wrapped by this many columns (freeze_head)
        self.head_pad = net.upsample.kernel_size // 2 if periodic else 0
        trunk = copy.deepcopy(net).float().cpu().eval()
        trunk.upsample = head  # Pos2Weight leaves the module: nothing of it is exported
        for name in ('mean_in', 'mean_out'):  # float64 buffers, cast at run time in the network
            setattr(trunk, name, getattr(trunk, name).float())
        self.net = trunk
        self.img_range = float(net.img_range)
        self.in_size = (head.in_size[0], head.in_size[1] - 2 * self.head_pad)
        self.out_size = head.out_size
        self.bicubic_skip = bool(bicubic_skip)
        if self.bicubic_skip:
            (h, w), (out_h, out_w) = self.in_size, head.out_size
            self.register_buffer('resize_v', resize_matrix(h, out_h).clone())
            # the network's bicubic skip wraps along W when it is periodic (archs.periodic.bicubic_for)
            resize_h = periodic_resize_matrix(w, out_w) if periodic else resize_matrix(w, out_w)
            self.register_buffer('resize_h_t', resize_h.t().contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.net.forward_trunk(x)
        if self.head_pad:
            feat = F.pad(feat, (self.head_pad, self.head_pad, 0, 0), mode='circular')
        y = self.net.upsample(feat) / self.img_range + self.net.mean_out
        if self.bicubic_skip:
            y = y + torch.matmul(torch.matmul(self.resize_v, x), self.resize_h_t)
        return y


def request_spec(request: Request, in_size: Tuple[int, int]) -> ScaleSpec:
    """Resolve ('scale', (r_v, r_h)) or ('size', (H, W)) for an (h, w) input."""
    kind, value = request
    return resolve_scale(in_size[0], in_size[1], scale=value) if kind == 'scale' \
        else resolve_scale(in_size[0], in_size[1], out_size=value)


def freeze(net: nn.Module, request: Request, in_size: Tuple[int, int], mode: Optional[str] = None) -> FixedRequestSR:
    """``net`` (a loaded ``MetaSRNet``; ``net.metasr_bicubic_skip`` as ``load_network`` sets it) frozen at
    ``request`` for (h, w) inputs. The network itself is not modified."""
    upsample = getattr(net, 'upsample', None)
    if not isinstance(upsample, MetaUpsample) or not hasattr(net, 'forward_trunk'):
        raise ValueError(f'{type(net).__name__} is not a Meta-SR network (MetaSRNet with a MetaUpsample head)')
    h, w = in_size
    if min(h, w) < 1:
        raise ValueError(f'--input-size must be positive, got {h}x{w}')
    spec = request_spec(request, in_size)
    head = freeze_head(upsample, spec, in_size, mode)
    return FixedRequestSR(net, head, getattr(net, 'metasr_bicubic_skip', False)).eval()
