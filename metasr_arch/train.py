"""``python -m metasr_arch.train -opt X.yml [--launcher pytorch|slurm] [--auto_resume] [--debug] [--force_yml ...]
[--import MODULE ...]``

BasicSR's training pipeline with the plugin registered; every BasicSR flag works. Outputs go to
``experiments/`` and ``tb_logger/`` under $METASR_ROOT (default: the working directory).
"""
from typing import Optional, Sequence

from metasr_arch.utils.launch import run_pipeline


def main(argv: Optional[Sequence[str]] = None) -> None:
    from basicsr.train import train_pipeline
    run_pipeline(train_pipeline, argv)


if __name__ == '__main__':
    main()
