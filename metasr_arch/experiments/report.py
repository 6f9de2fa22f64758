"""Results of the Meta-vs-fixed comparison: ``results.json``, ``results.md`` and ``psnr_vs_scale.png``.

Input: the ``metrics.jsonl`` each evaluation run wrote (one line per (dataset, scale) with ``psnr``,
``ssim``, ``psnr_bicubic``, ``ssim_bicubic``). The models are duck-typed (``name``, ``kind`` 'meta' or
'fixed', ``description``), so this module does not depend on how they were built.

Records (``results.json``): one per (model, scale) with ``model``, ``kind`` ('meta', 'fixed' or
'bicubic'), ``dataset``, ``scale`` [r_v, r_h], ``psnr``, ``ssim``; the bicubic baseline is the
model-independent ``*_bicubic`` value (every model sees the same LR), one record per evaluated scale.
"""
import io
import json
import os
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from metasr_arch.utils.atomic import atomic_write_bytes

Scale = Tuple[float, float]
BICUBIC = 'bicubic'


def _read_jsonl(path: str) -> List[dict]:
    records = []
    with open(path, encoding='utf-8') as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f'{path}:{number}: not a JSON line ({err})') from None
    return records


def collect_records(metrics_files: Mapping[str, str], kinds: Mapping[str, str]) -> List[dict]:
    """Records of every model (last line per (dataset, scale) wins) and of the bicubic baseline.

    Args:
        metrics_files: {model: path of its evaluation ``metrics.jsonl``}.
        kinds: {model: 'meta' | 'fixed'}.

    Returns:
        the model records in the order of ``metrics_files``, then one bicubic record per (dataset, scale)
        seen, sorted by scale (symmetric first).
    """
    out: List[dict] = []
    bicubic: Dict[Tuple[str, Scale], dict] = {}
    for model, path in metrics_files.items():
        if not os.path.exists(path):
            raise ValueError(f'{model}: no evaluation results at {path} (was it trained and evaluated?)')
        latest: Dict[Tuple[str, Scale], dict] = {}
        for rec in _read_jsonl(path):
            latest[(str(rec['dataset']), (float(rec['scale'][0]), float(rec['scale'][1])))] = rec
        for (dataset, scale), rec in sorted(latest.items(), key=lambda kv: sort_key(kv[0][1])):
            out.append({'model': model, 'kind': kinds[model], 'dataset': dataset, 'scale': list(scale),
                        'psnr': float(rec['psnr']), 'ssim': float(rec['ssim'])})
            bicubic.setdefault((dataset, scale), {'model': BICUBIC, 'kind': BICUBIC, 'dataset': dataset,
                                                  'scale': list(scale), 'psnr': float(rec['psnr_bicubic']),
                                                  'ssim': float(rec['ssim_bicubic'])})
    out.extend(rec for _, rec in sorted(bicubic.items(), key=lambda kv: sort_key(kv[0][1])))
    return out


def sort_key(scale: Sequence[float]) -> Tuple[int, float, float]:
    """Symmetric scales first (by r), then asymmetric ones by (r_v, r_h)."""
    return (0 if scale[0] == scale[1] else 1, float(scale[0]), float(scale[1]))


def _label(scale: Sequence[float]) -> str:
    return f'x{scale[0]:g}' if scale[0] == scale[1] else f'{scale[0]:g} x {scale[1]:g}'


def _index(records: Iterable[dict], metric: str) -> Dict[Tuple[str, Scale], float]:
    return {(r['model'], (r['scale'][0], r['scale'][1])): r[metric] for r in records}


def metric_table(records: Sequence[dict], models: Sequence[str], metric: str = 'psnr') -> str:
    """Markdown table: one row per evaluated scale, one column per model and bicubic; '-' where not served.

    The best model value of each row is bold (bicubic excluded).
    """
    values = _index(records, metric)
    scales = sorted({(r['scale'][0], r['scale'][1]) for r in records}, key=sort_key)
    fmt = '{:.2f}' if metric == 'psnr' else '{:.4f}'
    rows = ['| scale (r_v x r_h) | ' + ' | '.join(list(models) + [BICUBIC]) + ' |',
            '|---|' + '---:|' * (len(models) + 1)]
    for s in scales:
        present = [values[(m, s)] for m in models if (m, s) in values]
        best = max(present) if present else None
        cells = []
        for m in list(models) + [BICUBIC]:
            v = values.get((m, s))
            text = '-' if v is None else fmt.format(v)
            cells.append(f'**{text}**' if v is not None and m != BICUBIC and v == best and len(present) > 1 else text)
        rows.append(f'| {_label(s)} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(rows) + '\n'


def comparison_table(records: Sequence[dict], pairs: Sequence[Tuple[str, str]], metric: str = 'psnr') -> str:
    """Markdown table of ``a - b`` per shared scale for each (a, b) in ``pairs`` (e.g. meta vs fixed_x2)."""
    values = _index(records, metric)
    rows = [f'| model | against | scale | {metric} model | {metric} against | difference |',
            '|---|---|---|---:|---:|---:|']
    for a, b in pairs:
        shared = sorted({s for (m, s) in values if m == a} & {s for (m, s) in values if m == b}, key=sort_key)
        for s in shared:
            va, vb = values[(a, s)], values[(b, s)]
            rows.append(f'| {a} | {b} | {_label(s)} | {va:.2f} | {vb:.2f} | {va - vb:+.2f} |')
    return '\n'.join(rows) + '\n'


def default_pairs(models: Sequence[str], kinds: Mapping[str, str]) -> List[Tuple[str, str]]:
    """Every Meta model against every fixed one (the table keeps the scales both were evaluated at)."""
    metas = [m for m in models if kinds[m] == 'meta']
    fixed = [m for m in models if kinds[m] == 'fixed']
    return [(a, b) for a in metas for b in fixed]


def psnr_figure(records: Sequence[dict], models: Sequence[str], kinds: Mapping[str, str], title: str = ''):
    """PSNR and gain over bicubic against the symmetric scale: a line per Meta model and for bicubic, a
    marker per fixed model.

    Returns:
        a matplotlib Figure with two axes (PSNR in dB; PSNR minus bicubic in dB).
    """
    import matplotlib
    matplotlib.use('Agg')  # files only: works without a display
    import matplotlib.pyplot as plt

    psnr = _index(records, 'psnr')
    sym = sorted({s[0] for (_, s) in psnr if s[0] == s[1]})
    bic = {r: psnr[(BICUBIC, (r, r))] for r in sym if (BICUBIC, (r, r)) in psnr}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    markers = ['o', 's', '^', 'D', 'v', 'P']
    for ax, gain in zip(axes, (False, True)):
        for i, m in enumerate(models):
            xs = [r for r in sym if (m, (r, r)) in psnr and r in bic]
            ys = [psnr[(m, (r, r))] - (bic[r] if gain else 0.0) for r in xs]
            if not xs:
                continue
            if kinds[m] == 'meta':
                ax.plot(xs, ys, marker='o', markersize=3, color=f'C{i}', label=m)
            else:
                ax.plot(xs, ys, linestyle='none', marker=markers[i % len(markers)], markersize=9, color=f'C{i}',
                        markeredgecolor='k', label=m)
        if not gain:
            ax.plot(list(bic), list(bic.values()), linestyle='--', color='0.4', label=BICUBIC)
        else:
            ax.axhline(0.0, linestyle='--', color='0.4', label=BICUBIC)
        ax.set_xlabel('scale r (symmetric)')
        ax.set_ylabel('PSNR gain over bicubic (dB)' if gain else 'PSNR, Y (dB)')
        ax.grid(alpha=0.3)
    # one legend for both axes, below them: inside an axis it hid the fixed models' markers
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc='lower center', ncol=len(labels), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


def _atomic_write(path: str, text: str) -> None:
    atomic_write_bytes(Path(path), text.encode('utf-8'))


def write_report(out_dir: str, specs: Sequence, metrics_files: Mapping[str, str], settings: Mapping,
                 status: Optional[Mapping] = None) -> Dict[str, str]:
    """Write ``results.json``, ``results.md`` and ``psnr_vs_scale.png`` into ``out_dir``.

    Args:
        specs: the models (``name``, ``kind``, ``description``), in table order.
        metrics_files: {model: its evaluation ``metrics.jsonl``}.
        settings: the run's settings (preset, iterations, command ...), copied into both files.
        status: {model: {'train_seconds': s, ...}} for the timing column.

    Returns:
        {'json': path, 'markdown': path, 'figure': path}.
    """
    models = [s.name for s in specs]
    kinds = {s.name: s.kind for s in specs}
    records = collect_records({m: metrics_files[m] for m in models}, kinds)
    status = status or {}
    paths = {k: os.path.join(out_dir, v) for k, v in
             (('json', 'results.json'), ('markdown', 'results.md'), ('figure', 'psnr_vs_scale.png'))}
    _atomic_write(paths['json'], json.dumps({'settings': dict(settings),
                                             'models': [{'name': s.name, 'kind': s.kind, 'description': s.description,
                                                         **{k: v for k, v in status.get(s.name, {}).items()}}
                                                        for s in specs],
                                             'records': records}, indent=1) + '\n')
    lines = ['# Meta-SR against fixed-scale models', '',
             ', '.join(f'{k}: {v}' for k, v in settings.items() if k != 'title'), '',
             '| model | trained on | training time (s) |', '|---|---|---:|']
    for s in specs:
        t = status.get(s.name, {}).get('train_seconds')
        lines.append(f'| {s.name} | {s.description} | {"-" if t is None else f"{t:.0f}"} |')
    lines += ['', '## PSNR (dB, Y channel, border ceil(r))', '', metric_table(records, models, 'psnr'),
              '## SSIM (Y channel, border ceil(r))', '', metric_table(records, models, 'ssim'),
              '## Meta models against the fixed-scale ones (PSNR)', '',
              comparison_table(records, default_pairs(models, kinds), 'psnr')]
    _atomic_write(paths['markdown'], '\n'.join(lines))
    fig = psnr_figure(records, models, kinds, title=str(settings.get('title', '')))
    png = io.BytesIO()
    fig.savefig(png, format='png', dpi=110)
    atomic_write_bytes(Path(paths['figure']), png.getvalue())
    import matplotlib.pyplot as plt
    plt.close(fig)
    return paths
