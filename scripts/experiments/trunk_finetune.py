"""A fixed x4 EDSR made arbitrary-scale (trunk kept, new Meta head, fine-tuned) against the same MetaSR
trained from scratch for the same total iterations, and against the fixed model at x4 (docs/results.md).

Usage::

    python scripts/experiments/trunk_finetune.py --out experiments/trunk_finetune --fixed-iters 600 --finetune-iters 300

Writes ``DIR/results.md``, ``DIR/results.json`` and ``DIR/psnr_vs_scale.png``; rerunning the same command
continues an interrupted run. The models: ``metasr_arch/experiments/trunk_finetune.py``.
"""
import argparse
import shlex
import sys
from typing import Optional, Sequence

import metasr_arch  # noqa: F401  (registers the plugin before BasicSR is imported)
from metasr_arch.experiments.trunk_finetune import run


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the comparison; returns 0 on success, 2 on bad arguments or a failed step."""
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--out', required=True, help='output folder (options, experiments, results, report)')
    p.add_argument('--fixed-iters', type=int, default=600, help='iterations of the fixed x4 model (default 600)')
    p.add_argument('--finetune-iters', type=int, default=300, help='iterations of the fine-tuning (default 300)')
    args = p.parse_args(argv)
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        run(args.out, args.fixed_iters, args.finetune_iters,
            command='python scripts/experiments/trunk_finetune.py ' + shlex.join(argv),
            log=lambda msg: print(msg, flush=True))
    except (ValueError, RuntimeError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
