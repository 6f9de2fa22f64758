"""Make bicubic low-resolution copies of an HR folder at symmetric and asymmetric scales.

Usage::

    python scripts/data/generate_multiscale_lr.py --hr datasets/Set5/HR \\
        --scales 2 3 4 2.5 2x3.5 4x2 --workers 2

writes the benchmark layout that the paired dataset and ``metasr_arch.test`` read::

    datasets/Set5/HR/baby.png
    datasets/Set5/LR_bicubic/X2.50/baby.png          symmetric r = 2.5
    datasets/Set5/LR_bicubic/X2.00_X3.50/baby.png    r_v = 2 (rows) x r_h = 3.5 (columns)

Size convention (per axis, ``r_v`` for rows, ``r_h`` for columns):

* LR size ``h = floor(H / r_v)``, ``w = floor(W / r_h)``;
* the matching ground truth is the top-left ``H' x W'`` crop of the HR image with
  ``(H', W') = resolve_scale(h, w, (r_v, r_h))``, i.e. ``H' = floor(h * r_v)``; evaluation crops the
  GT the same way, and the network asked for scale r on the LR returns exactly ``H' x W'``;
* ``LR = imresize_to(HR[:H', :W'], (h, w))``: MATLAB-compatible antialiased bicubic, the very
  operation training applies to its GT patches, quantised to the HR's bit depth (8/16-bit PNG) or
  kept as float32 for ``.npy`` arrays.

Files are processed in parallel (``--workers`` processes), each output is written atomically
(temporary file + rename), and an output that already exists is skipped, so an interrupted run is
finished by running the same command again.
"""
import argparse
import io
import math
import multiprocessing
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import metasr_arch  # noqa: F401  (functional_tensor alias before basicsr)

import cv2
import numpy as np
import torch

from metasr_arch.utils.naming import parse_scale_text, scale_tag
from metasr_arch.utils.sample_io import ARRAY_EXTS, IMAGE_EXTS, atomic_write_bytes
from metasr_arch.ops.geometry import resolve_scale
from metasr_arch.utils.resize import imresize_to

Scale = Tuple[float, float]


def lr_size(hr_h: int, hr_w: int, scale: Scale) -> Tuple[int, int]:
    """``(floor(H / r_v), floor(W / r_h))`` (float64, 1e-9 tolerance like the operator's geometry)."""
    h, w = (int(math.floor(n / r + 1e-9)) for n, r in ((hr_h, scale[0]), (hr_w, scale[1])))
    if h < 1 or w < 1:
        raise ValueError(f'HR size {hr_h}x{hr_w} is too small for scale {scale_tag(*scale)}')
    return h, w


def make_lr(hr: torch.Tensor, scale: Scale) -> torch.Tensor:
    """LR of an HR tensor (C, H, W) float: ``imresize_to(HR[:H', :W'], (h, w))`` (module docstring).

    Returns:
        (C, h, w) float tensor, not quantised.
    """
    h, w = lr_size(hr.shape[-2], hr.shape[-1], scale)
    spec = resolve_scale(h, w, scale)
    return imresize_to(hr[..., :spec.out_h, :spec.out_w], (h, w))


def _read(path: Path) -> Tuple[torch.Tensor, Optional[np.dtype]]:
    if path.suffix.lower() in ARRAY_EXTS:
        arr = np.load(path, allow_pickle=False)
        if arr.ndim not in (2, 3):
            raise ValueError(f'array {path} must be (H, W) or (C, H, W), got shape {arr.shape}')
        return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)), None
    img = cv2.imdecode(np.fromfile(str(path), dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f'cannot read image {path}')
    if img.dtype not in (np.uint8, np.uint16):
        raise ValueError(f'image {path} has {img.dtype} pixels; only 8- and 16-bit images are supported')
    top = np.iinfo(img.dtype).max
    x = torch.from_numpy(img.astype(np.float32) / top)
    # Channel order does not matter for a per-channel resize, so BGR(A) stays as read.
    return (x if img.ndim == 2 else x.permute(2, 0, 1)), img.dtype


def _encode(lr: torch.Tensor, depth: Optional[np.dtype], suffix: str, was_2d: bool) -> bytes:
    if depth is None:
        buf = io.BytesIO()
        np.save(buf, lr.numpy().astype(np.float32))
        return buf.getvalue()
    top = np.iinfo(depth).max
    arr = lr.numpy()
    arr = arr if was_2d else arr.transpose(1, 2, 0)
    ok, data = cv2.imencode(suffix, np.rint(np.clip(arr, 0, 1) * top).astype(depth))
    if not ok:
        raise ValueError(f'cannot encode a {depth} image as {suffix}')
    return data.tobytes()


def process_file(task: Tuple[str, str, Sequence[Scale]]) -> List[Tuple[str, str, str]]:
    """Write every missing LR of one HR file. Returns (output, status, message) with status in
    ``written``, ``skipped`` (already there) or ``failed``."""
    hr_path, out_root, scales = Path(task[0]), Path(task[1]), task[2]
    # Images are written in a lossless format: JPEG HR images get PNG LR copies.
    suffix = hr_path.suffix.lower() if hr_path.suffix.lower() in ARRAY_EXTS + ('.png', '.tif', '.tiff', '.bmp') \
        else '.png'
    todo = [(s, out_root / scale_tag(*s) / (hr_path.stem + suffix)) for s in scales]
    results = [(str(p), 'skipped', '') for _, p in todo if p.exists()]
    todo = [(s, p) for s, p in todo if not p.exists()]
    if not todo:
        return results
    try:
        hr, depth = _read(hr_path)
    except (ValueError, OSError) as err:
        return results + [(str(p), 'failed', str(err)) for _, p in todo]
    was_2d = hr.dim() == 2
    for scale, path in todo:
        try:
            lr = make_lr(hr[None] if was_2d else hr, scale)
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, _encode(lr[0] if was_2d else lr, depth, suffix, was_2d))
            results.append((str(path), 'written', ''))
        except (ValueError, OSError) as err:
            results.append((str(path), 'failed', f'{hr_path.name}: {err}'))
    return results


def _init_worker() -> None:
    torch.set_num_threads(1)  # one process per core does the parallelism


def build_parser() -> argparse.ArgumentParser:
    """Command line of this script."""
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--hr', required=True, help='folder of HR images (png/jpg/tif/bmp/webp) or .npy arrays')
    p.add_argument('--out', default=None, help='LR root (default: LR_bicubic beside the HR folder)')
    p.add_argument('--scales', nargs='+', required=True, metavar='S',
                   help="scales: '2.5' (both axes) or '2x3.5' (r_v x r_h)")
    p.add_argument('--workers', type=int, default=max(1, min(8, multiprocessing.cpu_count())),
                   help='parallel processes (default: CPU count, at most 8)')
    p.add_argument('--quiet', action='store_true', help='no progress bar')
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the script; returns 0 when every output exists afterwards, 1 otherwise."""
    from tqdm import tqdm
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        scales = list(dict.fromkeys(parse_scale_text(s, '--scales') for s in args.scales))
    except ValueError as err:
        parser.error(str(err))
    if args.workers < 1:
        parser.error(f'--workers must be >= 1, got {args.workers}')
    hr_dir = Path(args.hr)
    if not hr_dir.is_dir():
        parser.error(f'--hr {hr_dir}: not a folder')
    out_root = Path(args.out) if args.out else hr_dir.parent / 'LR_bicubic'
    files = sorted(f for f in hr_dir.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTS + ARRAY_EXTS)
    if not files:
        parser.error(f'--hr {hr_dir}: no image or .npy files')
    tasks = [(str(f), str(out_root), scales) for f in files]
    counts = {'written': 0, 'skipped': 0, 'failed': 0}
    failures = []
    bar = tqdm(total=len(tasks), unit='file', disable=args.quiet, desc='LR')
    if args.workers == 1:
        _init_worker()
        results = map(process_file, tasks)
        pool = None
    else:
        # spawn: a forked child of a process whose torch thread pool already started can deadlock.
        pool = multiprocessing.get_context('spawn').Pool(args.workers, initializer=_init_worker)
        results = pool.imap_unordered(process_file, tasks)
    try:
        for file_results in results:
            for path, status, message in file_results:
                counts[status] += 1
                if status == 'failed':
                    failures.append(f'{path}: {message}')
            bar.update(1)
    finally:
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()
    print(f"{counts['written']} written, {counts['skipped']} already there, {counts['failed']} failed "
          f'under {out_root}', file=sys.stderr)
    for line in failures:
        print(f'  failed: {line}', file=sys.stderr)
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
