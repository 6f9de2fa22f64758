"""A grid of crops comparing LR (nearest), bicubic, the model and the ground truth at several scales.

Usage::

    python scripts/visual_compare.py --gt datasets/demo/val/HR/coffee.png \\
        --ckpt experiments/demo_MetaRDN/models/net_g_latest.pth --scales 2 3 2x3.5 --out grid.png

For each scale the LR image is synthesised from the GT exactly as ``generate_multiscale_lr.py`` does
(LR size floor(H / r), GT cropped to resolve_scale(LR size, r), MATLAB bicubic); the bicubic column
upsamples that LR with the same kernel; the LR column repeats each LR pixel over the output pixels
that project onto it (the operator's projection ``floor(i / r)``), so it shows the information the
network really had. Every column shows the same HR window (``--crop Y X H W``, default a centred
square), enlarged by ``--zoom`` with nearest neighbours. Each row gets a label strip with the scale and
PSNR (Y channel, ``ceil(r)`` border, whole image) of bicubic and of the model.

Grid size, exactly: width ``4 * W * zoom + 5 * pad``, height ``label + n_scales * (label + H * zoom)
+ (n_scales + 1) * pad`` where ``label`` is 16 pixels (0 with ``--no-labels``): a header strip with the
column names, then per row a label strip and the cells.
"""
import argparse
import math
import os
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import metasr_arch  # noqa: F401  (functional_tensor alias before basicsr)

import cv2
import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data'))
from generate_multiscale_lr import make_lr  # noqa: E402  (the data convention, in one place)

from metasr_arch.inference.checkpoint import load_network  # noqa: E402
from metasr_arch.inference.runner import run_network  # noqa: E402
from metasr_arch.utils.naming import parse_scale_text, scale_tag  # noqa: E402
from metasr_arch.utils.sample_io import read_sample  # noqa: E402
from metasr_arch.ops.geometry import axis_projection, resolve_scale  # noqa: E402
from metasr_arch.utils.resize import imresize_to  # noqa: E402

COLUMNS = ('LR (nearest)', 'bicubic', 'model', 'GT')
LABEL_H = 16


def grid_size(n_scales: int, crop_hw: Tuple[int, int], zoom: int = 1, pad: int = 4,
              labels: bool = True) -> Tuple[int, int]:
    """(height, width) of the grid image (see the module docstring)."""
    ch, cw = crop_hw
    label = LABEL_H if labels else 0
    # one header strip with the column names, then per row a label strip and the cells
    return label + n_scales * (label + ch * zoom) + (n_scales + 1) * pad, \
        len(COLUMNS) * cw * zoom + (len(COLUMNS) + 1) * pad


def nearest_upsample(lr: torch.Tensor, out_h: int, out_w: int, r_v: float, r_h: float) -> torch.Tensor:
    """(C, h, w) -> (C, out_h, out_w): output pixel (i, j) shows LR pixel (floor(i / r_v), floor(j / r_h))."""
    rows = axis_projection(lr.shape[-2], out_h, r_v).lr_index
    cols = axis_projection(lr.shape[-1], out_w, r_h).lr_index
    return lr[:, rows][:, :, cols]


def panels_for_scale(net, gt: torch.Tensor, scale: Tuple[float, float], device: torch.device,
                     tile: Optional[int] = None) -> List[torch.Tensor]:
    """The four full-size panels (C, H', W') in [0, 1] for one scale: LR nearest, bicubic, model, GT."""
    lr = make_lr(gt, scale)
    spec = resolve_scale(lr.shape[-2], lr.shape[-1], scale)
    size = (spec.out_h, spec.out_w)
    model = run_network(net, lr[None].to(device), scale=scale, tile=tile)[0].cpu()
    return [nearest_upsample(lr, *size, spec.r_v, spec.r_h), imresize_to(lr, size), model,
            gt[:, :spec.out_h, :spec.out_w]]


def to_bgr8(t: torch.Tensor) -> np.ndarray:
    """(C, H, W) RGB or grey float in [0, 1] -> (H, W, 3) uint8 BGR."""
    arr = np.rint(t.clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    return cv2.cvtColor(arr, cv2.COLOR_GRAY2BGR) if arr.shape[2] == 1 else cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)


def psnr_y(img: np.ndarray, gt: np.ndarray, border: int) -> float:
    """BasicSR's PSNR on the Y channel with ``border`` pixels removed (uint8 BGR images)."""
    from basicsr.metrics.psnr_ssim import calculate_psnr
    return float(calculate_psnr(img, gt, crop_border=border, input_order='HWC', test_y_channel=True))


def compose_grid(rows: Sequence[Tuple[str, List[np.ndarray]]], crop: Tuple[int, int, int, int], zoom: int = 1,
                 pad: int = 4, labels: bool = True) -> np.ndarray:
    """Cut ``crop`` (y, x, h, w) out of every panel and lay the rows out on a white canvas.

    Args:
        rows: (label text, [four (H', W', 3) uint8 BGR panels]) per scale.
    Returns:
        (grid_h, grid_w, 3) uint8 BGR, of exactly ``grid_size`` pixels.
    """
    y, x, ch, cw = crop
    gh, gw = grid_size(len(rows), (ch, cw), zoom, pad, labels)
    canvas = np.full((gh, gw, 3), 255, np.uint8)
    top = pad
    if labels:
        for col, name in enumerate(COLUMNS):
            cv2.putText(canvas, name, (pad + col * (cw * zoom + pad), top + LABEL_H - 4), cv2.FONT_HERSHEY_SIMPLEX,
                        0.4, (0, 0, 0), 1, cv2.LINE_AA)
        top += LABEL_H
    for text, panels in rows:
        if labels:
            cv2.putText(canvas, text, (pad, top + LABEL_H - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1,
                        cv2.LINE_AA)
            top += LABEL_H
        for col, panel in enumerate(panels):
            cell = panel[y:y + ch, x:x + cw]
            cell = cv2.resize(cell, (cw * zoom, ch * zoom), interpolation=cv2.INTER_NEAREST)
            left = pad + col * (cw * zoom + pad)
            canvas[top:top + ch * zoom, left:left + cw * zoom] = cell
        top += ch * zoom + pad
    return canvas


def build_parser() -> argparse.ArgumentParser:
    """Command line of this script."""
    p = argparse.ArgumentParser(description='Grid of crops: LR nearest, bicubic, model, GT at several scales.')
    p.add_argument('--gt', required=True, help='ground-truth image (8- or 16-bit, grey or RGB)')
    p.add_argument('--ckpt', required=True, help='checkpoint (params / params_ema)')
    p.add_argument('--opt', default=None, help='options YAML, unless the checkpoint records network_opt')
    p.add_argument('--param-key', default=None)
    p.add_argument('--allow-arch', action='append', default=[], metavar='NAME',
                   help='trust network type NAME recorded in the checkpoint (repeatable; docs/reliability.md)')
    p.add_argument('--scales', nargs='+', required=True, metavar='S', help="e.g. 2 3 2x3.5 (r_v x r_h)")
    p.add_argument('--crop', nargs=4, type=int, metavar=('Y', 'X', 'H', 'W'), default=None,
                   help='HR window (default: centred square of up to 96 pixels)')
    p.add_argument('--zoom', type=int, default=1, help='integer nearest-neighbour enlargement of each crop')
    p.add_argument('--pad', type=int, default=4, help='white space between cells, pixels')
    p.add_argument('--no-labels', action='store_true', help='no label strips')
    p.add_argument('--device', default='cpu')
    p.add_argument('--tile', type=int, default=None, help='tile size for large images (input pixels)')
    p.add_argument('--out', required=True, help='output PNG')
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the script; returns 0 on success, 2 on bad input."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        scales = [parse_scale_text(s, '--scales') for s in args.scales]
    except ValueError as err:
        parser.error(str(err))
    if args.zoom < 1 or args.pad < 0:
        parser.error('--zoom must be >= 1 and --pad >= 0')
    try:
        device = torch.device(args.device)
        net = load_network(args.opt, args.ckpt, args.param_key, device, args.allow_arch)
        sample = read_sample(args.gt)
        if sample.kind != 'image':
            raise ValueError(f'--gt {args.gt}: expected an image')
        gt = sample.data
        # the window must lie inside the cropped GT of every scale (floor(floor(H / r) * r) <= H)
        limit_h, limit_w = gt.shape[-2:]
        for s in scales:
            lh, lw = math.floor(gt.shape[-2] / s[0] + 1e-9), math.floor(gt.shape[-1] / s[1] + 1e-9)
            spec = resolve_scale(max(lh, 1), max(lw, 1), s)
            limit_h, limit_w = min(limit_h, spec.out_h), min(limit_w, spec.out_w)
        if args.crop is None:
            side = min(96, limit_h, limit_w)
            crop = ((limit_h - side) // 2, (limit_w - side) // 2, side, side)
        else:
            crop = tuple(args.crop)
        y, x, ch, cw = crop
        if y < 0 or x < 0 or ch < 1 or cw < 1 or y + ch > limit_h or x + cw > limit_w:
            raise ValueError(f'--crop {list(crop)} must lie inside {limit_h}x{limit_w} '
                             '(the GT region every requested scale keeps)')
        rows = []
        for s in scales:
            panels = [to_bgr8(p) for p in panels_for_scale(net, gt, s, device, args.tile)]
            border = math.ceil(max(s))
            text = (f'{scale_tag(*s)}   bicubic {psnr_y(panels[1], panels[3], border):.2f} dB   '
                    f'model {psnr_y(panels[2], panels[3], border):.2f} dB')
            rows.append((text, panels))
    except ValueError as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    grid = compose_grid(rows, crop, args.zoom, args.pad, not args.no_labels)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(args.out, grid, [cv2.IMWRITE_PNG_COMPRESSION, 9])  # README pictures stay small
    print(f'wrote {args.out} ({grid.shape[1]}x{grid.shape[0]}); columns: {", ".join(COLUMNS)}', file=sys.stderr)
    return 0


if __name__ == '__main__':
    sys.exit(main())
