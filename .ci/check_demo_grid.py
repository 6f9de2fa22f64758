"""CI check of the gridded demo (`make demo-grid`): its final validation beats bicubic in weighted RMSE.

Reads experiments/demo_grid/metrics.jsonl and fails if the model's latitude-weighted RMSE (m/s) at
the last validated iteration is not below the bicubic baseline's at every scale.
"""
import sys

from check_demo import beats_bicubic  # .ci/ is the script's folder, first on sys.path


def main(path: str = 'experiments/demo_grid/metrics.jsonl', metric: str = 'wrmse') -> int:
    return beats_bicubic(path, metric, higher_is_better=False, unit='m/s', what='the gridded demo model')


if __name__ == '__main__':
    sys.exit(main(*sys.argv[1:]))
