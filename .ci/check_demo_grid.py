"""CI check of the gridded demo (`make demo-grid`): its final validation beats bicubic in weighted RMSE.

Reads experiments/demo_grid/metrics.jsonl and fails if the model's latitude-weighted RMSE (m/s) at
the last validated iteration is not below the bicubic baseline's at every scale.
"""
import sys

from check_demo import final_records  # .ci/ is the script's folder, first on sys.path


def main(path: str = 'experiments/demo_grid/metrics.jsonl', metric: str = 'wrmse') -> int:
    last, final = final_records(path)
    if not final:
        return 1
    for r in final:
        print(f"iter {last} {r['dataset']} x{r['scale'][0]:.4g} x {r['scale'][1]:.4g}: {metric} model "
              f"{r[metric]:.4f}, bicubic {r[metric + '_bicubic']:.4f}")
    worse = [r['scale'] for r in final if not r[metric] < r[metric + '_bicubic']]
    if worse:
        print(f'the gridded demo model does not beat bicubic in {metric} at {worse}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main(*sys.argv[1:]))
