"""CI check of the demo run (`make demo`): its final validation beats bicubic at every scale.

Reads experiments/demo_MetaRDN/metrics.jsonl (one JSON record per dataset and scale per validation)
and fails, naming the scales, if the model's PSNR at the last validated iteration is not above the
bicubic baseline's everywhere.
"""
import json
import sys
from pathlib import Path


def final_records(path: str):
    """(last validated iteration, its records) of a metrics.jsonl; (None, []) when it has none."""
    records = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    if not records:
        print(f'{path}: no validation records', file=sys.stderr)
        return None, []
    last = max(r['iter'] for r in records)
    return last, [r for r in records if r['iter'] == last]


def beats_bicubic(path: str, metric: str = 'psnr', higher_is_better: bool = True, unit: str = 'dB',
                  what: str = 'the demo model') -> int:
    """0 when ``metric`` of the last validation beats its ``<metric>_bicubic`` at every scale, else 1
    (naming the scales); prints one line per record."""
    last, final = final_records(path)
    if not final:
        return 1
    for r in final:
        model, bicubic = r[metric], r[metric + '_bicubic']
        print(f"iter {last} {r['dataset']} x{r['scale'][0]:.4g} x {r['scale'][1]:.4g}: {metric} model "
              f"{model:.4f} {unit}, bicubic {bicubic:.4f} {unit} ({model - bicubic:+.4f})")
    worse = [r['scale'] for r in final
             if not (r[metric] > r[metric + '_bicubic'] if higher_is_better else r[metric] < r[metric + '_bicubic'])]
    if worse:
        print(f'{what} does not beat bicubic in {metric} at {worse}', file=sys.stderr)
        return 1
    return 0


def main(path: str = 'experiments/demo_MetaRDN/metrics.jsonl') -> int:
    return beats_bicubic(path)


if __name__ == '__main__':
    sys.exit(main(*sys.argv[1:]))
