"""Train, validate and upscale real NetCDF fields from eofs' example data (docs/gridded.md, "Real fields").

Usage::

    python scripts/experiments/real_fields.py --out experiments/real_fields            # both fields
    python scripts/experiments/real_fields.py --out DIR --iters 100 --fields sst       # a quick look

Writes ``DIR/real_fields.md`` and ``DIR/real_fields.json`` and exits 1 when a field's model does not
beat bicubic (latitude-weighted RMSE at valid points) or an output check fails. What is trained and checked:
``metasr_arch/experiments/real_fields.py``.
"""
import argparse
import shlex
import sys
from typing import Optional, Sequence

import metasr_arch  # noqa: F401  (registers the plugin before BasicSR is imported)
from metasr_arch.experiments.real_fields import FIELDS, main_run


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run it; 0 when every check passes, 1 when one fails, 2 on a failed step."""
    p = argparse.ArgumentParser(description='Meta-SR on real NetCDF fields (eofs example data).')
    p.add_argument('--out', required=True, help='output folder')
    p.add_argument('--iters', type=int, default=300, help='training iterations per field (default 300)')
    p.add_argument('--fields', nargs='+', choices=sorted(FIELDS), default=sorted(FIELDS), help='which fields')
    args = p.parse_args(argv)
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        return main_run(args.out, args.iters, args.fields,
                        'python scripts/experiments/real_fields.py ' + shlex.join(argv),
                        log=lambda msg: print(msg, flush=True))
    except (FileNotFoundError, RuntimeError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
