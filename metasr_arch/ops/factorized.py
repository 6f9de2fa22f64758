"""The Meta-SR operator factorised through the weight MLP's last linear layer.

With ``Pos2Weight = Linear(4, D) -> ReLU -> Linear(D, k*k*C_in*C_out)`` (weights ``W2``, bias ``b2``), the
per-pixel kernel is ``Wt(i, j) = W2 @ hid(i, j) + b2``, so the operator's sum can be reordered:

    out[n, co, i, j] = sum_d hid_d(i, j) * Z[n, d, co, i_p, j_p] + Z[n, D, co, i_p, j_p]

where ``Z = conv2d(x, W2 reshaped as (D + 1) * C_out kernels, with b2 as the last C_out)`` runs once at
low resolution. The cost no longer depends on how many distinct phases there are, which is what
the phase table needs: this is the path for scales whose phases never repeat (for example
``out_size=(721, 1439)`` from ``96 x 144``), where a phase table would be as large as per-pixel weights.

The first layer is separable: ``pre(i, j) = fv(i) * W1[:, 0] + fh(j) * W1[:, 1] + (W1[:, 2] / r_v +
W1[:, 3] / r_h + b1)``, so only (H, D) and (W, D) factors are formed; ``hid = relu(pre)`` is built per
row chunk inside a custom autograd Function that saves ``Z`` and the factors, never per-pixel tensors.
"""
from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from .geometry import AxisProjection
from .meta_upscale import CHUNK_BYTES


def _chunks(out_h: int, per_row_bytes: int) -> List[Tuple[int, int]]:
    step = max(1, int(CHUNK_BYTES // max(1, per_row_bytes)))
    return [(r0, min(out_h, r0 + step)) for r0 in range(0, out_h, step)]


class _FactorizedGather(torch.autograd.Function):
    """out[n, c, i, j] = sum_d relu_ext(A[i] + B[j])_d * Z[n, d, c, row_lr[i], col_lr[j]].

    ``relu_ext`` appends a constant 1 (the bias term) to the D hidden activations.
    Shapes: Z (N, D + 1, C_out, h, w), A (H, D), B (W, D) -> out (N, C_out, H, W).
    """

    @staticmethod
    def forward(ctx, z, a, b, row_lr, col_lr):
        n, d1, c_out, _, _ = z.shape
        out_h, out_w = row_lr.numel(), col_lr.numel()
        out = z.new_empty(n, c_out, out_h, out_w)
        per_row = z.element_size() * out_w * (n * d1 * c_out + 2 * d1)
        for r0, r1 in _chunks(out_h, per_row):
            zg = z.index_select(3, row_lr[r0:r1]).index_select(4, col_lr)  # (N, D+1, C, R, W)
            hid = _hidden(a[r0:r1], b)
            out[:, :, r0:r1] = torch.einsum('ndcrw,rwd->ncrw', zg, hid)
        ctx.save_for_backward(z, a, b, row_lr, col_lr)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        z, a, b, row_lr, col_lr = ctx.saved_tensors
        n, d1, c_out, h, w = z.shape
        out_h, out_w = row_lr.numel(), col_lr.numel()
        grad_z = torch.zeros_like(z) if ctx.needs_input_grad[0] else None
        grad_a = torch.zeros_like(a)
        grad_b = torch.zeros_like(b)
        per_row = z.element_size() * out_w * (3 * n * d1 * c_out + 3 * d1)
        for r0, r1 in _chunks(out_h, per_row):
            rows = r1 - r0
            g = grad_out[:, :, r0:r1]
            zg = z.index_select(3, row_lr[r0:r1]).index_select(4, col_lr)
            pre = a[r0:r1, None, :] + b[None, :, :]  # (R, W, D)
            hid = _extend(pre.clamp(min=0))
            g_hid = torch.einsum('ndcrw,ncrw->rwd', zg, g)[..., :-1] * (pre > 0)
            grad_a[r0:r1] += g_hid.sum(1)
            grad_b += g_hid.sum(0)
            if grad_z is not None:
                gzg = torch.einsum('rwd,ncrw->ndcrw', hid, g)  # (N, D+1, C, R, W)
                rows_grad = gzg.new_zeros(n, d1, c_out, rows, w).index_add_(4, col_lr, gzg)
                grad_z.index_add_(3, row_lr[r0:r1], rows_grad)
        return grad_z, grad_a, grad_b, None, None


def _extend(hid: torch.Tensor) -> torch.Tensor:
    return torch.cat([hid, hid.new_ones(*hid.shape[:-1], 1)], dim=-1)


def _hidden(a_rows: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return _extend((a_rows[:, None, :] + b[None, :, :]).clamp(min=0))


def factorized_meta_upscale(x: torch.Tensor, mlp: nn.Sequential, rows: AxisProjection, cols: AxisProjection,
                            r_v: float, r_h: float, kernel_size: int, out_channels: int) -> torch.Tensor:
    """Evaluate ``MetaUpsample`` through the factorisation above.

    Args:
        x: (N, C_in, h, w).
        mlp: Pos2Weight's ``meta_block`` (Linear(4, D), ReLU, Linear(D, k*k*C_in*C_out)).
        rows, cols: axis projections of the H output rows and W output columns.

    Returns:
        (N, C_out, H, W), equal to the per-pixel definition.
    """
    first, last = mlp[0], mlp[2]
    n, c_in = x.shape[:2]
    k, d = kernel_size, first.out_features
    dtype = x.dtype
    w1, b1 = first.weight.to(dtype), first.bias.to(dtype)
    const = w1[:, 2] / r_v + w1[:, 3] / r_h + b1
    a = rows.frac.to(dtype)[:, None] * w1[:, 0] + const  # (H, D)
    b = cols.frac.to(dtype)[:, None] * w1[:, 1]  # (W, D)
    # W2 rows are ordered (k1, k2, ci, co); conv kernels are (out_ch, ci, k1, k2) with out_ch = (d, co)
    w2 = torch.cat([last.weight, last.bias[:, None]], dim=1).to(dtype)  # (k*k*C_in*C_out, D + 1)
    kernels = w2.view(k, k, c_in, out_channels, d + 1).permute(4, 3, 2, 0, 1)
    kernels = kernels.reshape((d + 1) * out_channels, c_in, k, k)
    z = F.conv2d(x, kernels, padding=k // 2).view(n, d + 1, out_channels, x.shape[2], x.shape[3])
    return _FactorizedGather.apply(z, a, b, rows.lr_index, cols.lr_index)
