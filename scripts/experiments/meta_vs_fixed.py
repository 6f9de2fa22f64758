"""One Meta-SR network against per-scale networks, trained and evaluated alike (docs/results.md).

Usage::

    python scripts/experiments/meta_vs_fixed.py --iters 3000 --out experiments/meta_vs_fixed
    python scripts/experiments/meta_vs_fixed.py --preset div2k --out experiments/meta_vs_fixed_div2k
    python scripts/experiments/meta_vs_fixed.py --preset div2k --out DIR --dry-run   # option files only

Trains ``meta``, ``meta_asym``, ``meta_x2``, ``fixed_x2``, ``fixed_x3``, ``fixed_x4`` (``--models``
picks some) with ``python -m metasr_arch.train``, evaluates each with ``python -m metasr_arch.test``
and writes ``DIR/results.md``, ``DIR/results.json`` and ``DIR/psnr_vs_scale.png``. Rerunning the same
command continues an interrupted run. The models and presets: ``metasr_arch/experiments/meta_vs_fixed.py``.
"""
import argparse
import shlex
import sys
from typing import Optional, Sequence

import metasr_arch  # noqa: F401  (registers the plugin before BasicSR is imported)
from metasr_arch.experiments.meta_vs_fixed import MODEL_NAMES, PRESETS, run
from metasr_arch.utils.naming import parse_scale_text


def build_parser() -> argparse.ArgumentParser:
    """Command line of this script."""
    p = argparse.ArgumentParser(description='Meta-SR against fixed-scale models: train, evaluate, report.')
    p.add_argument('--out', required=True, help='output folder (options, experiments, results, report)')
    p.add_argument('--preset', choices=sorted(PRESETS), default='demo',
                   help='demo: small trunk on the scikit-image photos (CPU); div2k: the paper configuration')
    p.add_argument('--iters', type=int, default=None, help="iterations per model (default: the preset's)")
    p.add_argument('--models', nargs='+', choices=MODEL_NAMES, default=None, help='train only these models')
    p.add_argument('--scales', nargs='+', default=None,
                   help="evaluation scales of the Meta models, e.g. 2 2.5 2x3.5 (default: the preset's grid)")
    p.add_argument('--train-dir', default=None, help="GT training images (default: the preset's)")
    p.add_argument('--val-dir', default=None, help="held-out GT images (default: the preset's)")
    p.add_argument('--dry-run', action='store_true', help='write the option files and print the commands only')
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the comparison; returns 0 on success, 2 on bad arguments or a failed step."""
    args = build_parser().parse_args(argv)
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        scales = None if args.scales is None else [parse_scale_text(s, '--scales') for s in args.scales]
        run(args.out, args.preset, args.iters, args.models, scales, args.train_dir, args.val_dir, args.dry_run,
            command='python scripts/experiments/meta_vs_fixed.py ' + shlex.join(argv),
            log=lambda msg: print(msg, flush=True))
    except (ValueError, RuntimeError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
