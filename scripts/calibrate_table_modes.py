"""Measure the cost constants of ``choose_table_mode`` (metasr_arch/ops/meta_upscale.py) on this machine.

``phase_table_conv`` evaluates the operator from a phase weight table in one of four ways ('conv',
'row', 'row_t', 'pixel'); ``choose_table_mode`` picks one from a cost model with two measured
constants: ``ROW_MODE_FACTOR`` (cost per multiply-add of the row GEMMs relative to the convolution's)
and ``PIXEL_MODE_COST`` (cost per *needed* multiply-add of the per-pixel products relative to the
convolution's). This script times every mode forward+backward on a set of shapes, side by side in one
run, and prints:

* per shape: the time of each mode, the fastest one and the one ``choose_table_mode`` picks;
* the constants implied by the measurements (medians over the shapes), to compare with the ones in
  the code, and the pair of constants that would minimise the mean slowdown of the chosen mode
  against the fastest one on these shapes.

Usage:
    python scripts/calibrate_table_modes.py                       # default shapes, 2 repeats
    python scripts/calibrate_table_modes.py --repeats 3 --markdown modes.md
"""
import argparse
import functools
import importlib
import os
import statistics
import sys
from typing import Callable, Dict, List, Optional, Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from metasr_arch.ops.geometry import axis_projection, resolve_scale  # noqa: E402
from metasr_arch.utils.bench import report, sync, time_it  # noqa: E402

# the module, not the function of the same name that metasr_arch.ops exports
mu = importlib.import_module('metasr_arch.ops.meta_upscale')

MODES = ('conv', 'row', 'row_t', 'pixel')
# (name, n, c_in, h, w, (r_v, r_h) or None, out_size or None): the training shapes of
# BENCHMARKS.md plus scales whose phases repeat rarely (where the choice matters most).
SHAPES: List[Tuple[str, int, int, int, int, Optional[Tuple[float, float]], Optional[Tuple[int, int]]]] = [
    ('x4', 16, 64, 48, 48, (4.0, 4.0), None),
    ('x2.5', 16, 64, 48, 48, (2.5, 2.5), None),
    ('x2.5x3.7', 16, 64, 48, 48, (2.5, 3.7), None),
    ('x3.7x2.5', 16, 64, 48, 48, (3.7, 2.5), None),
    ('x1.3x1.7', 16, 64, 48, 48, (1.3, 1.7), None),
    ('x1.1x1.1', 16, 64, 48, 48, (1.1, 1.1), None),
    ('13x17_to_20x50', 1, 16, 13, 17, None, (20, 50)),
    ('96x144_to_721x1440', 1, 156, 96, 144, None, (721, 1440)),
]


def best_constants(results: List[Dict[str, object]]) -> Tuple[float, float, float]:
    """(ROW_MODE_FACTOR, PIXEL_MODE_COST, mean slowdown) minimising the mean slowdown of the chosen
    mode against the fastest one over the measured shapes, on a grid of candidate values."""
    best = None
    for row_factor in (1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40):
        for pixel_cost in (25, 50, 100, 150, 200, 300, 400):
            slow = statistics.mean(r['times'][r['choose'](row_factor, pixel_cost)] / r['times'][r['fastest']]
                                   for r in results)
            if best is None or slow < best[2] - 1e-9:
                best = (row_factor, pixel_cost, slow)
    return best


def measure(shape, repeats: int, device: torch.device, timer: Callable = time_it) -> Dict[str, object]:
    """Time every usable strategy on one shape; ``timer(fn, device, repeats)`` is ``time_it`` (tests
    pass a fake one; ``fn.args[0]`` is the mode)."""
    name, n, c_in, h, w, scale, out_size = shape
    spec = resolve_scale(h, w, scale, out_size)
    rows, cols = axis_projection(h, spec.out_h, spec.r_v), axis_projection(w, spec.out_w, spec.r_h)
    pv, ph = rows.phases.numel(), cols.phases.numel()
    k, c_out = 3, 3 if c_in != 156 else 1
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, c_in, h, w, generator=gen).to(device).requires_grad_()
    table = torch.randn(pv, ph, k, k, c_in, c_out, generator=gen).to(device).requires_grad_()

    def step(mode: str) -> None:
        x.grad = table.grad = None
        mu.phase_table_conv(x, table, rows, cols, mode=mode).sum().backward()

    def choose(row_factor: float, pixel_cost: float) -> str:
        return mu.choose_table_mode(h, w, rows, cols, n, c_out, 4, row_factor, pixel_cost)

    # with unit weights the model's costs are the waste: products computed per product needed
    waste = mu.table_mode_costs(h, w, rows, cols, n, c_out, 4, row_factor=1, pixel_cost=1)
    times = {mode: timer(functools.partial(step, mode), device, repeats) for mode in MODES if mode in waste}
    sync(device)
    return {'name': name, 'times': times, 'per_product': {m: t / waste[m] for m, t in times.items()},
            'fastest': min(times, key=times.get), 'chosen': choose(mu.ROW_MODE_FACTOR, mu.PIXEL_MODE_COST),
            'choose': choose}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--repeats', type=int, default=2)
    parser.add_argument('--threads', type=int, default=None, help='torch.set_num_threads on the CPU')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--markdown', default=None, help='also write the table to this file')
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f'--repeats must be >= 1, got {args.repeats}')
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    lines = ['| shape | ' + ' | '.join(f'{m} fwd+bwd (s)' for m in MODES) + ' | fastest | chosen |',
             '|---|' + '---:|' * len(MODES) + '---|---|']
    row_factors, pixel_costs, results = [], [], []
    for shape in SHAPES:
        r = measure(shape, args.repeats, device)
        results.append(r)
        cells = [f"{r['times'][m]:.4f}" if m in r['times'] else '-' for m in MODES]
        lines.append(f"| {r['name']} | " + ' | '.join(cells) + f" | {r['fastest']} | {r['chosen']} |")
        print(lines[-1], flush=True)
        pp = r['per_product']
        if 'conv' in pp:
            row_factors.append(min(pp['row'], pp['row_t']) / pp['conv'])
            pixel_costs.append(pp['pixel'] / pp['conv'])
    lines.append('')
    if row_factors:
        lines.append(f'Implied ROW_MODE_FACTOR: median {statistics.median(row_factors):.1f} '
                     f'(range {min(row_factors):.1f}-{max(row_factors):.1f}); in the code: {mu.ROW_MODE_FACTOR:g}')
        lines.append(f'Implied PIXEL_MODE_COST: median {statistics.median(pixel_costs):.1f} '
                     f'(range {min(pixel_costs):.1f}-{max(pixel_costs):.1f}); in the code: {mu.PIXEL_MODE_COST:g}')
    now = statistics.mean(r['times'][r['chosen']] / r['times'][r['fastest']] for r in results)
    row_factor, pixel_cost, slow = best_constants(results)
    lines.append(f'Mean slowdown of the chosen mode against the fastest: {now:.2f}x with the constants in the '
                 f'code; {slow:.2f}x with ROW_MODE_FACTOR = {row_factor:g}, PIXEL_MODE_COST = {pixel_cost:g} '
                 '(the best on a grid of candidates)')
    text = '\n'.join(lines)
    report(text, args.markdown)
    return 0


if __name__ == '__main__':
    sys.exit(main())
