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


def main(path: str = 'experiments/demo_MetaRDN/metrics.jsonl') -> int:
    last, final = final_records(path)
    if not final:
        return 1
    worse = [r['scale'] for r in final if not r['psnr'] > r['psnr_bicubic']]
    for r in final:
        print(f"iter {last} {r['dataset']} x{r['scale'][0]:g} x {r['scale'][1]:g}: model {r['psnr']:.2f} dB, "
              f"bicubic {r['psnr_bicubic']:.2f} dB ({r['psnr'] - r['psnr_bicubic']:+.2f})")
    if worse:
        print(f'the demo model does not beat bicubic at {worse}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main(*sys.argv[1:]))
