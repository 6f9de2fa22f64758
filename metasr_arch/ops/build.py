"""Build the native meta-upscale extension ahead of time.

Usage:
    python -m metasr_arch.ops.build                 # CUDA + CPU kernels, for the visible GPUs (or 9.0)
    python -m metasr_arch.ops.build --arch "8.0;9.0"
    python -m metasr_arch.ops.build --cpu-only      # the CPU kernels only (no nvcc needed)
    python -m metasr_arch.ops.build --variant auto  # CUDA + CPU where a CUDA toolkit exists, else CPU
    python -m metasr_arch.ops.build --self-check cuda   # then run the run-time self-check, every dtype

Works on a machine with nvcc and no GPU. Exit status 0 when built (the path of the built module is
printed) and, with ``--self-check DEVICE``, every dtype's self-check passed on DEVICE (one line per
dtype with its time); 1 with the reason otherwise. The build lands in the cache that ``metasr_arch.ops.native``
loads from ($METASR_EXT_DIR or ~/.cache/metasr_arch/torch_extensions), so later runs start at once.
"""
import argparse
import sys
import time
from typing import List, Optional

import torch

from metasr_arch.ops import native


def main(argv: Optional[List[str]] = None) -> int:
    """Build and report; returns the process exit status."""
    parser = argparse.ArgumentParser(prog='python -m metasr_arch.ops.build', description=__doc__.splitlines()[0])
    parser.add_argument('--arch', default=None,
                        help='CUDA architectures, e.g. "9.0" or "8.0;9.0" (default: $TORCH_CUDA_ARCH_LIST, '
                             f'else the visible GPUs, else {native.DEFAULT_ARCH})')
    parser.add_argument('--cpu-only', action='store_true', help='build only the CPU kernels (no CUDA toolkit needed)')
    parser.add_argument('--variant', choices=('cuda', 'cpu', 'auto'), default=None,
                        help="'cuda' (default; CUDA + CPU kernels), 'cpu' (= --cpu-only) or 'auto': 'cuda' where "
                             "a CUDA toolkit and a CUDA torch exist, else 'cpu' (what the tests build)")
    parser.add_argument('--verbose', action='store_true', help="show the compiler's commands and output")
    parser.add_argument('--self-check', metavar='DEVICE', default=None,
                        help='after building, run native.self_check on DEVICE (cpu, cuda, cuda:1) for every dtype')
    args = parser.parse_args(argv)
    if args.cpu_only and args.variant not in (None, 'cpu'):
        parser.error(f'--cpu-only contradicts --variant {args.variant}')
    variant = 'cpu' if args.cpu_only else (args.variant or 'cuda')
    if variant == 'auto':
        variant = 'cuda' if native._build_obstacle('cuda') is None else 'cpu'
    if variant == 'cpu' and args.arch:
        parser.error('--arch has no meaning for the CPU build')
    if args.self_check is not None:
        try:
            check_device = torch.device(args.self_check)
        except RuntimeError:
            parser.error(f'--self-check must be a device such as cpu or cuda:0, got {args.self_check!r}')
        if check_device.type not in ('cpu', 'cuda') or (variant == 'cpu' and check_device.type == 'cuda'):
            parser.error(f'--self-check {args.self_check}: the {variant} build runs on '
                         f'{"cpu" if variant == "cpu" else "cpu and cuda"} only')
    arch = args.arch or native.cuda_arch_list()
    where = native.build_dir(variant, arch)
    label = 'CPU kernels' if variant == 'cpu' else f'CUDA + CPU kernels for arch {arch}'
    print(f'building the metasr meta_upscale extension ({label}) in {where} ...', flush=True)
    start = time.time()
    try:
        module = native.load_extension(variant, arch_list=arch, verbose=args.verbose)
    except RuntimeError as exc:
        print(f'error: {exc}', file=sys.stderr)
        if variant == 'cuda':
            print('hint: `--cpu-only` builds the CPU kernels without a CUDA toolkit', file=sys.stderr)
        return 1
    print(f'built in {time.time() - start:.0f} s: {module.__file__}', flush=True)
    if args.self_check is None:
        return 0
    return run_self_checks(torch.device(args.self_check))


def run_self_checks(device: torch.device) -> int:
    """Print ``native.self_check`` for every supported dtype on ``device``; 0 when all pass, else 1."""
    failed = 0
    for dtype in native.SELF_CHECK_TOL:
        result = native.self_check(device, dtype)
        failed += not result.ok
        name = str(dtype).replace('torch.', '')
        print(f"self-check {result.device} {name}: {'ok' if result.ok else 'FAILED'} in {1e3 * result.seconds:.0f} ms: "
              f'{result.detail}', flush=True)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
