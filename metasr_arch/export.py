"""``python -m metasr_arch.export``: a trained Meta-SR network frozen at a fixed scale or output size, written
as ONNX, TorchScript or a ``torch.export`` program (see ``docs/deploy.md``).

Examples::

    python -m metasr_arch.export --ckpt net_g.pth --scale 2.5 --input-size 256x256 --format onnx -o metardn.onnx
    python -m metasr_arch.export --ckpt grid.safetensors --size 721x1440 --input-size 96x144 -o grid.onnx

Each request (``--scale``/``--size``, several allowed) gives one file; with several, the request tag
(``X2.50``, ``X2.00_X3.50``, ``721x1440``) is appended to the file name. The batch size and the input size
are fixed in the file. ``--check`` (default) runs the written file (ONNX Runtime on the CPU for ONNX) and
the PyTorch network on noise and a photograph and refuses the file if they differ by more than
1e-4 x max(1, max |output|).
"""
import argparse
import sys
from pathlib import Path
from typing import List, Optional, Sequence

import metasr_arch  # noqa: F401  (registers the archs and aliases functional_tensor before basicsr)

from metasr_arch.deploy.export import (DEFAULT_OPSET, FORMATS, ONNX_EXPORTERS, SUFFIXES, OutputFileError,
                                       check_opset, check_output_path, export_checked)
from metasr_arch.deploy.frozen import MODES, freeze
from metasr_arch.inference.checkpoint import load_network
from metasr_arch.utils import fork_imports
from metasr_arch.utils.naming import Request, parse_scale_text, parse_size_text, request_tag


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of ``python -m metasr_arch.export``."""
    p = argparse.ArgumentParser(prog='python -m metasr_arch.export',
                                description='Export a Meta-SR network frozen at fixed requests (ONNX, TorchScript, '
                                            'torch.export).')
    p.add_argument('--ckpt', required=True, help='checkpoint (.pth or .safetensors) with params / params_ema')
    p.add_argument('--opt', help='options YAML (its network_g); optional if the checkpoint records network_opt')
    p.add_argument('--param-key', default=None, help='params or params_ema (default: params_ema if present)')
    p.add_argument('--allow-arch', action='append', default=[], metavar='NAME',
                   help='trust network type NAME recorded in the checkpoint besides the plugin\'s networks '
                        '(repeatable; docs/reliability.md)')
    p.add_argument(fork_imports.FLAG, dest='imports', action='append', default=[], metavar='MODULE',
                   help=fork_imports.HELP)
    p.add_argument('--scale', nargs='+', action='extend', default=[], metavar='S',
                   help="scales: '2.5' (both axes) or '2x3.5' (vertical x horizontal); several allowed")
    p.add_argument('--size', nargs='+', action='extend', default=[], metavar='HxW',
                   help="exact output sizes, e.g. '721x1440'; several allowed")
    p.add_argument('--input-size', required=True, metavar='hxw', help='the (fixed) input size, e.g. 96x144')
    p.add_argument('--batch', type=int, default=1, help='the (fixed) batch size (default: 1)')
    p.add_argument('--format', default='onnx', choices=FORMATS, help='onnx (default), torchscript or exported')
    p.add_argument('-o', '--output', required=True, help='output file (the request tag is appended when several)')
    p.add_argument('--overwrite', action='store_true', help='replace output files that exist (default: refused)')
    p.add_argument('--check', action=argparse.BooleanOptionalAction, default=True,
                   help='compare the written file with the PyTorch network (default: on)')
    p.add_argument('--onnx-exporter', default='torchscript', choices=ONNX_EXPORTERS,
                   help='torch.onnx.export(dynamo=False) (default) or dynamo=True (needs onnxscript)')
    p.add_argument('--opset', type=int, default=DEFAULT_OPSET, help=f'ONNX opset (default: {DEFAULT_OPSET})')
    p.add_argument('--mode', default=None, choices=MODES, help='how the frozen head runs (default: chosen by cost)')
    return p


def parse_requests(scales: Sequence[str], sizes: Sequence[str]) -> List[Request]:
    """--scale / --size texts -> requests, in the order given (scales first)."""
    requests = [('scale', parse_scale_text(s)) for s in scales] + [('size', parse_size_text(s)) for s in sizes]
    if not requests:
        raise ValueError('give at least one --scale or --size')
    return requests


def output_paths(output: str, fmt: str, requests: Sequence[Request]) -> List[Path]:
    """One path per request: ``output`` itself for one request, ``<stem>_<tag><suffix>`` for several."""
    path = Path(output)
    if path.suffix == '':
        path = path.with_suffix(SUFFIXES[fmt])
    if len(requests) == 1:
        return [path]
    return [path.with_name(f'{path.stem}_{request_tag(r)}{path.suffix}') for r in requests]


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        requests = parse_requests(args.scale, args.size)
        in_size = parse_size_text(args.input_size, '--input-size')
        if args.batch < 1:
            raise ValueError(f'--batch must be >= 1, got {args.batch}')
        if args.format == 'onnx':
            check_opset(args.opset)
        paths = output_paths(args.output, args.format, requests)
        if any(p.resolve() == Path(args.ckpt).resolve() for p in paths):
            raise ValueError(f'-o {args.output} would overwrite the checkpoint --ckpt {args.ckpt}')
        for path in paths:  # before loading anything: a bad output fails in a second, not after the export
            check_output_path(path, args.overwrite)
        allowed = (*args.allow_arch, *fork_imports.import_arch_modules(args.imports))
        net = load_network(args.opt, args.ckpt, args.param_key, allow_types=allowed)
    except ValueError as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    failures = 0
    for request, path in zip(requests, paths):
        tag = request_tag(request)
        try:
            model = freeze(net, request, in_size, args.mode)
            results = export_checked(net, model, path, args.format, request, args.batch, args.check,
                                     args.onnx_exporter, args.opset)
        except OutputFileError as err:  # the disk or folder: the other requests would fail the same way
            print(f'error: {err}', file=sys.stderr)
            return 2
        except (ValueError, RuntimeError) as err:
            failures += 1
            print(f'{tag}: FAILED: {err}', file=sys.stderr)
            continue
        head = model.net.upsample
        checked = '; '.join(f'{r.name} max error {r.max_error:.2e} (<= {r.tolerance:.0e})' for r in results) \
            if results else 'not checked'
        print(f'{tag}: {in_size[0]}x{in_size[1]} -> {model.out_size[0]}x{model.out_size[1]}, head mode '
              f'{head.mode}, {path} ({path.stat().st_size / 2**20:.1f} MiB); {checked}')
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
