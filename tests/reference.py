"""Independent naive references for tests (loops over kernel taps, float formulas re-derived)."""
import math

import torch
import torch.nn.functional as F


def naive_projection(in_len: int, out_len: int, r: float):
    """(lr_index list, frac list) straight from the written definition, in Python floats."""
    lr, frac = [], []
    for i in range(out_len):
        t = i / r
        p = math.floor(t + 1e-9)
        lr.append(min(p, in_len - 1))
        frac.append(min(max(t - p, 0.0), 1.0))
    return lr, frac


def naive_meta_upscale(x: torch.Tensor, weight: torch.Tensor, r_v: float, r_h: float, out_h: int, out_w: int,
                       k: int) -> torch.Tensor:
    """out[n, co, i, j] = sum_{k1,k2,ci} x_pad[n, ci, ip+k1, jp+k2] * W[i, j, k1, k2, ci, co].

    Loops over the k*k taps; each tap is a gather and an einsum over (ci). weight: (H, W, k, k, C_in, C_out).
    """
    pad = (k - 1) // 2
    xp = F.pad(x, (pad, pad, pad, pad))
    ip, _ = naive_projection(x.shape[2], out_h, r_v)
    jp, _ = naive_projection(x.shape[3], out_w, r_h)
    ip, jp = torch.tensor(ip), torch.tensor(jp)
    out = x.new_zeros(x.shape[0], weight.shape[-1], out_h, out_w)
    for k1 in range(k):
        for k2 in range(k):
            patch = xp[:, :, ip + k1][:, :, :, jp + k2]  # (N, C_in, H, W)
            out = out + torch.einsum('nchw,hwcd->ndhw', patch, weight[:, :, k1, k2])
    return out


def naive_positions(h: int, w: int, out_h: int, out_w: int, r_v: float, r_h: float, dtype=torch.float64):
    """(H*W, 4) per-pixel Pos2Weight inputs (fv, fh, 1/r_v, 1/r_h), row i*W + j."""
    _, fv = naive_projection(h, out_h, r_v)
    _, fh = naive_projection(w, out_w, r_h)
    rows = [[a, b, 1 / r_v, 1 / r_h] for a in fv for b in fh]
    return torch.tensor(rows, dtype=dtype)
