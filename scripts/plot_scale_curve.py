"""Plot PSNR/SSIM against the scale from one or several ``metrics.jsonl`` files.

Usage::

    python scripts/plot_scale_curve.py experiments/demo_MetaRDN/metrics.jsonl --out scale_curve.png
    python scripts/plot_scale_curve.py runA/metrics.jsonl runB/metrics.jsonl --labels A B --out cmp.png
    python scripts/plot_scale_curve.py experiments/demo_MetaRDN/metrics.jsonl --heatmap --out heat.png

Each line of a ``metrics.jsonl`` is one evaluation: ``{"iter", "dataset", "scale": [r_v, r_h],
"psnr", "ssim", "psnr_bicubic", "ssim_bicubic"}``. For every (dataset, scale) the record of the
latest iteration is used, or that of ``--iter N``.

* Curve mode (default): one panel per metric; per dataset one line per run over the symmetric
  scales (r_v == r_h), plus one dashed bicubic line per dataset (bicubic does not depend on the run).
  Asymmetric evaluations are left to the heat map.
* ``--heatmap``: one panel per (run, dataset) over the grid of evaluated (r_v, r_h), symmetric and
  asymmetric, showing the metric (``--heat-value model``) or its gain over bicubic (``gain``).
"""
import argparse
import json
import math
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import matplotlib

matplotlib.use('Agg')  # files only: works on machines without a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

Key = Tuple[str, Tuple[float, float]]  # (dataset, (r_v, r_h))
Run = Tuple[str, Dict[Key, dict]]  # (label, selected records)
METRIC_NAMES = {'psnr': 'PSNR (dB)', 'ssim': 'SSIM'}


def load_metrics(path: str) -> List[dict]:
    """Records of a ``metrics.jsonl``; ValueError naming the file and line for a bad line."""
    records = []
    try:
        lines = Path(path).read_text(encoding='utf-8').splitlines()
    except OSError as err:
        raise ValueError(f'cannot read metrics file {path}: {err.strerror}') from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            scale = rec['scale']
            rec['scale'] = (float(scale), float(scale)) if not isinstance(scale, list) else \
                (float(scale[0]), float(scale[1]))
            rec['iter'] = int(rec.get('iter', 0))
            rec['dataset'] = str(rec['dataset'])
        except (ValueError, KeyError, TypeError, IndexError) as err:
            raise ValueError(f'{path}:{number}: not a metrics record ({type(err).__name__}: {err})') from None
        records.append(rec)
    return records


def select_records(records: Sequence[dict], iteration: Optional[int] = None) -> Dict[Key, dict]:
    """One record per (dataset, scale): the latest iteration, or exactly ``iteration`` when given.

    Later lines win among equal iterations (a resumed run re-validating the same iteration).
    """
    chosen: Dict[Key, dict] = {}
    for rec in records:
        if iteration is not None and rec['iter'] != iteration:
            continue
        key = (rec['dataset'], rec['scale'])
        if key not in chosen or rec['iter'] >= chosen[key]['iter']:
            chosen[key] = rec
    return chosen


def _value(rec: dict, name: str) -> float:
    value = rec.get(name)
    return float('nan') if value is None else float(value)


def curve_figure(runs: Sequence[Run], metrics: Sequence[str] = ('psnr', 'ssim'), bicubic: bool = True,
                 datasets: Optional[Sequence[str]] = None) -> plt.Figure:
    """Metric against scale for symmetric evaluations.

    Returns:
        a Figure with one axes per metric, each with ``len(runs) * D`` model lines plus ``D`` bicubic
        lines (D datasets having symmetric records; bicubic only where recorded).
    """
    all_datasets = sorted({d for _, sel in runs for (d, _) in sel})
    datasets = [d for d in all_datasets if datasets is None or d in datasets]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 3.8), squeeze=False)
    styles = ['-', '--', '-.', ':']
    for ax, metric in zip(axes[0], metrics):
        for d_index, dataset in enumerate(datasets):
            bicubic_drawn = False
            for r_index, (label, sel) in enumerate(runs):
                points = sorted((s[0], rec) for (d, s), rec in sel.items() if d == dataset and s[0] == s[1])
                if not points:
                    continue
                xs = [p[0] for p in points]
                name = label if len(datasets) == 1 else f'{label} ({dataset})'
                ax.plot(xs, [_value(p[1], metric) for p in points], marker='o', markersize=3,
                        color=f'C{r_index}', linestyle=styles[d_index % len(styles)], label=name)
                bic = [_value(p[1], f'{metric}_bicubic') for p in points]
                if bicubic and not bicubic_drawn and not all(math.isnan(b) for b in bic):
                    name = 'bicubic' if len(datasets) == 1 else f'bicubic ({dataset})'
                    ax.plot(xs, bic, marker='s', markersize=3, color='0.45',
                            linestyle=styles[d_index % len(styles)], label=name, alpha=0.8)
                    bicubic_drawn = True
        ax.set_xlabel('scale r')
        ax.set_ylabel(METRIC_NAMES.get(metric, metric))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def heatmap_grid(sel: Dict[Key, dict], dataset: str, metric: str = 'psnr',
                 value: str = 'model') -> Tuple[List[float], List[float], np.ndarray]:
    """(r_v values, r_h values, grid (len(r_v), len(r_h))) for one dataset; NaN where not evaluated."""
    keys = [s for (d, s) in sel if d == dataset]
    rows, cols = sorted({s[0] for s in keys}), sorted({s[1] for s in keys})
    grid = np.full((len(rows), len(cols)), np.nan)
    for s in keys:
        rec = sel[(dataset, s)]
        v = _value(rec, metric)
        if value == 'gain':
            v -= _value(rec, f'{metric}_bicubic')
        grid[rows.index(s[0]), cols.index(s[1])] = v
    return rows, cols, grid


def heatmap_figure(runs: Sequence[Run], metric: str = 'psnr', value: str = 'model',
                   datasets: Optional[Sequence[str]] = None) -> plt.Figure:
    """One annotated heat map per (run, dataset) over the evaluated (r_v, r_h) grid."""
    panels = [(label, sel, d) for label, sel in runs for d in sorted({d for (d, _) in sel})
              if datasets is None or d in datasets]
    if not panels:
        raise ValueError('no records to plot (check --dataset and --iter)')
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.0), squeeze=False)
    for ax, (label, sel, dataset) in zip(axes[0], panels):
        rows, cols, grid = heatmap_grid(sel, dataset, metric, value)
        im = ax.imshow(grid, cmap='viridis', origin='lower', aspect='auto')
        ax.set_xticks(range(len(cols)), [f'{c:g}' for c in cols])
        ax.set_yticks(range(len(rows)), [f'{r:g}' for r in rows])
        ax.set_xlabel('r_h (horizontal)')
        ax.set_ylabel('r_v (vertical)')
        what = METRIC_NAMES.get(metric, metric) + (' gain over bicubic' if value == 'gain' else '')
        ax.set_title(f'{label} / {dataset}\n{what}', fontsize=9)
        for (i, j), v in np.ndenumerate(grid):
            if not math.isnan(v):
                ax.text(j, i, f'{v:.2f}' if metric == 'psnr' else f'{v:.3f}', ha='center', va='center',
                        fontsize=7, color='w')
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    return fig


def build_parser() -> argparse.ArgumentParser:
    """Command line of this script."""
    p = argparse.ArgumentParser(description='PSNR/SSIM against scale from metrics.jsonl files.')
    p.add_argument('metrics', nargs='+', help='metrics.jsonl files (one per run)')
    p.add_argument('--out', required=True, help='output PNG')
    p.add_argument('--labels', nargs='+', help='run names (default: the folder of each file)')
    p.add_argument('--iter', type=int, default=None, help='use this iteration (default: latest per scale)')
    p.add_argument('--dataset', nargs='+', default=None, help='only these datasets')
    p.add_argument('--metrics', nargs='+', default=['psnr', 'ssim'], choices=['psnr', 'ssim'],
                   dest='metric_names', help='curve panels (default: psnr ssim)')
    p.add_argument('--no-bicubic', action='store_true', help='leave out the bicubic curves')
    p.add_argument('--heatmap', action='store_true', help='heat map over (r_v, r_h) instead of curves')
    p.add_argument('--heat-value', choices=['model', 'gain'], default='model',
                   help='heat map of the metric or of its gain over bicubic')
    p.add_argument('--dpi', type=int, default=100)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the script; returns 0 on success, 2 on unreadable input."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.labels and len(args.labels) != len(args.metrics):
        parser.error(f'--labels has {len(args.labels)} names for {len(args.metrics)} metrics files')
    labels = args.labels or [Path(m).resolve().parent.name for m in args.metrics]
    try:
        runs = [(label, select_records(load_metrics(m), args.iter)) for label, m in zip(labels, args.metrics)]
        if not any(sel for _, sel in runs):
            raise ValueError('no records to plot' + (f' at --iter {args.iter}' if args.iter is not None else ''))
        if args.heatmap:
            fig = heatmap_figure(runs, args.metric_names[0], args.heat_value, args.dataset)
        else:
            fig = curve_figure(runs, args.metric_names, not args.no_bicubic, args.dataset)
    except ValueError as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=args.dpi)
    plt.close(fig)
    print(f'wrote {args.out}', file=sys.stderr)
    return 0


if __name__ == '__main__':
    sys.exit(main())
