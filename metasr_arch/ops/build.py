"""Build the native meta-upscale extension ahead of time.

Usage:
    python -m metasr_arch.ops.build                 # CUDA + CPU kernels, for the visible GPUs (or 9.0)
    python -m metasr_arch.ops.build --arch "8.0;9.0"
    python -m metasr_arch.ops.build --cpu-only      # the CPU kernels only (no nvcc needed)

Works on a machine with nvcc and no GPU. Exit status 0 when built (the path of the built module is
printed), 1 with the reason otherwise. The build lands in the cache that ``metasr_arch.ops.native``
loads from ($METASR_EXT_DIR or ~/.cache/metasr_arch/torch_extensions), so later runs start at once.
"""
import argparse
import sys
import time
from typing import List, Optional

import metasr_arch  # noqa: F401  (plugin set-up before anything else)
from metasr_arch.ops import native


def main(argv: Optional[List[str]] = None) -> int:
    """Build and report; returns the process exit status."""
    parser = argparse.ArgumentParser(prog='python -m metasr_arch.ops.build', description=__doc__.splitlines()[0])
    parser.add_argument('--arch', default=None,
                        help='CUDA architectures, e.g. "9.0" or "8.0;9.0" (default: $TORCH_CUDA_ARCH_LIST, '
                             f'else the visible GPUs, else {native.DEFAULT_ARCH})')
    parser.add_argument('--cpu-only', action='store_true', help='build only the CPU kernels (no CUDA toolkit needed)')
    parser.add_argument('--verbose', action='store_true', help="show the compiler's commands and output")
    args = parser.parse_args(argv)
    if args.cpu_only and args.arch:
        parser.error('--arch has no meaning with --cpu-only')
    variant = 'cpu' if args.cpu_only else 'cuda'
    arch = args.arch or native.cuda_arch_list()
    where = native.build_dir(variant, arch)
    label = 'CPU kernels' if args.cpu_only else f'CUDA + CPU kernels for arch {arch}'
    print(f'building the metasr meta_upscale extension ({label}) in {where} ...', flush=True)
    start = time.time()
    try:
        module = native.load_extension(variant, arch_list=arch, verbose=args.verbose)
    except RuntimeError as exc:
        print(f'error: {exc}', file=sys.stderr)
        if not args.cpu_only:
            print('hint: `--cpu-only` builds the CPU kernels without a CUDA toolkit', file=sys.stderr)
        return 1
    print(f'built in {time.time() - start:.0f} s: {module.__file__}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
