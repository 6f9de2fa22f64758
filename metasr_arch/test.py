"""``python -m metasr_arch.test -opt X.yml [--import MODULE ...]``: BasicSR's test pipeline with the plugin registered.

Results go to ``results/<name>/`` under $METASR_ROOT (default: the working directory).
"""
from typing import Optional, Sequence

from metasr_arch.utils.launch import run_pipeline


def main(argv: Optional[Sequence[str]] = None) -> None:
    from basicsr.test import test_pipeline
    run_pipeline(test_pipeline, argv)


if __name__ == '__main__':
    main()
