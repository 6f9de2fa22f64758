"""``python -m metasr_arch.infer``: upscale images or gridded arrays with a trained Meta-SR network.

Examples (see ``docs/tools.md`` for every option)::

    python -m metasr_arch.infer photo.png --ckpt net_g.pth --scale 2.5 2x3.5 -o out/
    python -m metasr_arch.infer folder/ --opt options/test/test.yml --ckpt net.pth --size 721x1440

Inputs are image files (PNG/JPEG/TIFF/BMP/WebP, 8- or 16-bit, grey/RGB/RGBA) and ``.npy`` arrays,
given as files or folders. Each input is written once per requested scale or size to
``<output>/<stem>_<tag>.<ext>`` where ``tag`` is ``X2.50`` (symmetric), ``X2.00_X3.50``
(``r_v x r_h``) or ``721x1440`` (an exact size), the same spelling as the benchmark folders.
All output paths are planned first: an output that is an input is refused (inputs are never
overwritten), an existing output needs ``--overwrite``, and in input folders files named like an
output of another file there (``<stem>_<tag>`` with any scale or size tag) are skipped, so a second
run into the input folder never upscales the first run's outputs (see ``plan_outputs`` and
``collect_inputs``). Image and ``.npy`` inputs or outputs with NaN/inf are refused per file unless
``--nan-policy propagate`` (``metasr_arch.utils.finite``; docs/reliability.md).
Requests whose output cannot fit in memory are refused before running (``metasr_arch.utils.memory``).

Data conventions (why they are so):

* Images are read as BGR(A) by OpenCV, converted to RGB and scaled to [0, 1] by their bit depth
  (255 or 65535), which is how BasicSR feeds its networks; outputs are clipped, rounded and written
  as PNG at the input's bit depth (PNG keeps 16-bit; JPEG inputs become 8-bit PNG).
* The alpha channel of RGBA images is not given to the network (it was trained on colour, and a
  mask upscaled by a texture model grows texture): it is upscaled separately with the MATLAB bicubic
  resize (``imresize_to``) to the same output size, then clipped.
* A grey image fed to an RGB network is replicated to three channels and the output averaged back;
  an RGB image fed to a single-channel network runs each channel as its own batch item.
* ``.npy`` arrays are (H, W) or channels-first (C, H, W), taken as float32 values without any
  scaling or clipping (gridded fields are normalised by the user as in training), written as
  float32 ``.npy`` with the input's layout.
* NetCDF files and Zarr stores (``.nc``, ``.zarr``; the ``geo`` extra): ``--var`` variables (default:
  the checkpoint's) at ``--time`` steps (default: all), normalised with the checkpoint's statistics,
  written in physical units with the output grid's coordinates as a Zarr store ``<stem>_<tag>.zarr``
  (or ``-o PATH.zarr`` / ``-o PATH.nc`` for one input and request), streamed chunk by chunk along time
  and resumable, in batches of ``--batch`` steps, optionally ``--compile``d (torch.compile, or ONNX
  Runtime with ``--compile onnxruntime``) or on Dask workers (``--dask``): ``metasr_arch.inference.archive``,
  docs/gridded.md.
"""
import argparse
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set, Tuple

import metasr_arch  # noqa: F401  (registers the archs and aliases functional_tensor before basicsr)

import torch

from metasr_arch.archs.meta_upsample_arch import MODULE_IMPLS
from metasr_arch.utils.amp import autocast_supported
from metasr_arch.inference.checkpoint import load_network, network_channels, set_impl
from metasr_arch.inference.archive import (AUTO_COMPILE_MIN_STEPS, COMPILE_BACKENDS, ArchiveJob, NetworkSpec,
                                          upscale_archive)
from metasr_arch.utils import fork_imports
from metasr_arch.inference.gridded import upscale_gridded
from metasr_arch.utils.gridded_io import is_gridded_path, parse_time_arg
from metasr_arch.inference.runner import LookAhead, check_max_pixels, upscale_sample
from metasr_arch.utils.finite import NAN_POLICIES, NonFiniteError, check_finite, nonfinite_summary
from metasr_arch.utils.naming import Request, parse_scale_text, parse_size_text, request_tag, tagged_bases
from metasr_arch.utils.sample_io import ARRAY_EXTS, IMAGE_EXTS, output_suffix, read_sample, write_sample


# --------------------------------------------------------------------------- command line
Job = Tuple[Request, str, Path]  # (request, tag, output path)


def _earlier_output(path: Path, stems: Set[str]) -> bool:
    """``<stem>_<tag>.<ext>`` where ``<stem>`` is another file of the folder and ``<tag>`` any request tag."""
    return any(base in stems for base in tagged_bases(path.stem))


def collect_inputs(paths: Sequence[str]) -> Tuple[List[Path], List[Tuple[str, str]], List[Path]]:
    """Expand files and folders (non-recursive) into input files; missing paths become failures.

    In folders, a file named ``<stem>_<tag>.<ext>`` beside a file ``<stem>.*``, with ``<tag>`` any tag
    this command writes (``X2.50``, ``X2.00_X3.50``, ``721x1440``; whatever this run's scales), is what an
    earlier run wrote there: it is skipped, not upscaled again. Files named explicitly are always taken.

    Returns:
        (inputs, failures (path, reason), skipped earlier outputs).
    """
    files, failures, skipped = [], [], []
    for p in paths:
        path = Path(p)
        if path.is_dir() and not is_gridded_path(p):  # a .zarr store is a folder but one input
            found = sorted(f for f in path.iterdir() if is_gridded_path(str(f))
                           or f.is_file() and f.suffix.lower() in IMAGE_EXTS + ARRAY_EXTS)
            if not found:
                failures.append((str(path), 'folder has no image or .npy files'))
            stems = {f.stem for f in found}
            for f in found:
                (skipped if _earlier_output(f, stems) else files).append(f)
        elif path.is_file() or is_gridded_path(p) and path.is_dir():
            files.append(path)
        else:
            failures.append((str(path), 'no such file or folder'))
    return files, failures, skipped


def plan_outputs(files: Sequence[Path], requests: Sequence[Request], out_dir: Path,
                 overwrite: bool = False) -> Tuple[Dict[Path, List[Job]], List[Tuple[str, str]]]:
    """Every output path, decided before anything is read or written.

    An output is refused (a failure, the rest still runs) when it is one of the inputs (never
    overwritten, even with ``overwrite``), when an earlier input of this run already writes it
    (``a.png`` and ``a.jpg``), or when it exists and ``overwrite`` is false.

    Returns:
        ({input: [(request, tag, output path), ...]}, failures (path [tag], reason)).
    """
    inputs = {f.resolve(): f for f in files}
    planned: Dict[Path, str] = {}
    jobs: Dict[Path, List[Job]] = {}
    failures = []
    for path in files:
        for request in requests:
            tag = request_tag(request)
            suffix = '.zarr' if is_gridded_path(str(path)) else output_suffix(path)
            out = out_dir / f'{path.stem}_{tag}{suffix}'
            if is_gridded_path(str(out_dir)):  # -o PATH.zarr / PATH.nc: the one output itself
                out = out_dir
            key, where = out.resolve(), f'{path} [{tag}]'
            if key in inputs:
                failures.append((where, f'output {out} is an input of this run; it is never overwritten '
                                        '(write to another folder with -o)'))
            elif key in planned:
                failures.append((where, f'output {out} is already written by {planned[key]} in this run'))
            elif out.exists() and not overwrite and out.suffix != '.zarr':  # a store is resumed (archive)
                failures.append((where, f'output {out} exists; pass --overwrite to replace it'))
            else:
                planned[key] = where
                jobs.setdefault(path, []).append((request, tag, out))
    return jobs, failures


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of ``python -m metasr_arch.infer``."""
    p = argparse.ArgumentParser(
        prog='python -m metasr_arch.infer',
        description='Upscale images or .npy arrays with a Meta-SR network to any scale or exact size.')
    p.add_argument('inputs', nargs='+', help='image files, .npy files, or folders of them')
    p.add_argument('-o', '--output', default='results/infer',
                   help='output folder (default: results/infer), or for one NetCDF/Zarr input and one request '
                        'the output itself: PATH.zarr (streamed, resumable) or PATH.nc')
    p.add_argument('--scale', nargs='+', action='extend', default=[], metavar='S',
                   help="scales: '2.5' (both axes) or '2x3.5' (vertical x horizontal); several allowed")
    p.add_argument('--size', nargs='+', action='extend', default=[], metavar='HxW',
                   help="exact output sizes, e.g. '721x1440'; several allowed")
    p.add_argument('--opt', help='options YAML (its network_g); optional if the checkpoint records network_opt')
    p.add_argument('--ckpt', required=True, help='checkpoint with params / params_ema')
    p.add_argument('--allow-arch', action='append', default=[], metavar='NAME',
                   help='trust network type NAME recorded in the checkpoint besides the plugin\'s networks '
                        '(repeatable; docs/reliability.md)')
    p.add_argument('--nan-policy', default='error', choices=NAN_POLICIES,
                   help='image/.npy inputs or outputs with NaN/inf: error (default: refuse the file) or '
                        'propagate (run and write them, with a warning per file)')
    p.add_argument('--param-key', default=None, help='params or params_ema (default: params_ema if present)')
    p.add_argument(fork_imports.FLAG, dest='imports', action='append', default=[], metavar='MODULE',
                   help=fork_imports.HELP)
    p.add_argument('--tile', type=int, default=None, help='tile size in input pixels (default: whole image)')
    p.add_argument('--tile-overlap', type=int, default=8, help='tile overlap in input pixels (default: 8)')
    p.add_argument('--fp16', action='store_true', help='float16 autocast (CUDA, or a CPU where torch supports it)')
    p.add_argument('--bf16', action='store_true', help='bfloat16 autocast (CUDA with bf16 support, or the CPU)')
    p.add_argument('--device', default='auto', help="'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1', ...")
    p.add_argument('--impl', default=None, choices=MODULE_IMPLS,
                   help="operator implementation of every MetaUpsample (default: the checkpoint's, e.g. 'auto')")
    p.add_argument('--overwrite', action='store_true',
                   help='replace existing output files (inputs are never overwritten)')
    p.add_argument('--max-pixels', type=int, default=None, metavar='N',
                   help='refuse outputs of more than N pixels (H*W) per image; independently, requests that '
                        'cannot fit in memory are refused (limit: METASR_MEMORY_LIMIT, default physical memory)')
    p.add_argument('--quiet', action='store_true', help='no progress bar')
    p.add_argument('--var', nargs='+', default=None, help='NetCDF/Zarr inputs: variables (default: the checkpoint\'s)')
    p.add_argument('--time', nargs='+', default=None, metavar='T',
                   help='NetCDF/Zarr inputs: a time label (1970-11) or position, or START STOP (default: all)')
    p.add_argument('--batch', type=int, default=None, metavar='N',
                   help='NetCDF/Zarr inputs: time steps per forward (default: from the memory estimate, on the CPU '
                        'under 64 MiB a forward, at most 16); images and arrays: up to N same-size files per '
                        'forward (default 1); outputs equal those of one at a time to float32 rounding')
    p.add_argument('--compile', nargs='?', const=COMPILE_BACKENDS[0], default=None,
                   choices=COMPILE_BACKENDS + ('off',), metavar='{torch,onnxruntime,off}',
                   help='NetCDF/Zarr inputs to Zarr: freeze the network at the request and input size and run it '
                        'fast, built once per run: torch (bare --compile: torch.compile, channels-last) or onnxruntime '
                        '(exported to ONNX in a temporary file, one ONNX Runtime session); off: eager. Default: '
                        f'onnxruntime for runs of {AUTO_COMPILE_MIN_STEPS} or more steps on the CPU in float32 when '
                        'ONNX Runtime is installed (the fastest measured), eager otherwise')
    p.add_argument('--dask', default=None, metavar='local:N|ADDRESS',
                   help="NetCDF/Zarr inputs to Zarr: run blocks of time steps on Dask, on a LocalCluster of N "
                        "worker processes ('local:2') or an existing scheduler ('tcp://host:8786')")
    return p


def _bare_compile(argv: Sequence[str]) -> List[str]:
    """A bare ``--compile`` spelled ``--compile=torch``, so that argparse never takes the next input path
    for its value (``--compile in.nc ...`` keeps working). It is bare when it ends the line or is followed
    by an option or by a path (an existing one, or one with a dot or slash); any other word is left to
    argparse as its value, so a misspelt backend (``--compile onnx``) is refused by name."""
    argv = list(argv)
    for i, arg in enumerate(argv):
        if arg == '--':
            break
        if arg != '--compile':
            continue
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        if nxt is None or nxt.startswith('-') or nxt not in COMPILE_BACKENDS + ('off',) and (
                Path(nxt).exists() or any(ch in nxt for ch in './' + os.sep)):
            argv[i] = f'--compile={COMPILE_BACKENDS[0]}'
    return argv


def parse_args(argv: Optional[Sequence[str]] = None) -> Tuple[argparse.Namespace, List[Request], torch.device]:
    """Parse and validate the command line (argparse exits with status 2 on bad arguments)."""
    parser = build_parser()
    args = parser.parse_args(_bare_compile(sys.argv[1:] if argv is None else argv))
    if args.compile == 'off':  # eager, also for long runs (the default picks a fast path there)
        args.compile = False
    requests: List[Request] = []
    try:
        requests += [('scale', parse_scale_text(s)) for s in args.scale]
        requests += [('size', parse_size_text(s)) for s in args.size]
    except ValueError as err:
        parser.error(str(err))
    if not requests:
        parser.error('give at least one --scale or --size')
    if args.tile is not None and args.tile < 1:
        parser.error(f'--tile must be a positive number of input pixels, got {args.tile}')
    if args.tile_overlap < 0:
        parser.error(f'--tile-overlap must be >= 0, got {args.tile_overlap}')
    if args.max_pixels is not None and args.max_pixels < 1:
        parser.error(f'--max-pixels must be a positive number of pixels, got {args.max_pixels}')
    if Path(args.output).exists() and not Path(args.output).is_dir() and not is_gridded_path(args.output):
        parser.error(f'-o/--output {args.output}: exists and is not a folder')
    if args.batch is not None and args.batch < 1:
        parser.error(f'--batch must be a positive number of time steps, got {args.batch}')
    if args.compile and (args.tile or args.fp16 or args.bf16):
        parser.error('--compile runs the whole field in float32: give it without --tile, --fp16 and --bf16')
    if args.compile == 'onnxruntime':
        from metasr_arch.inference.onnx_backend import OnnxRuntimeMissingError, require_onnxruntime
        try:
            require_onnxruntime()
        except OnnxRuntimeMissingError as err:
            parser.error(str(err))
    if is_gridded_path(args.output):
        if len(requests) != 1 or len(args.inputs) != 1 or not is_gridded_path(args.inputs[0]):
            parser.error(f'-o {args.output} names one output: give one NetCDF/Zarr input and one --scale or '
                         '--size (or an output folder)')
    if args.dask is not None:
        from metasr_arch.inference.dask_runner import parse_dask_arg
        try:
            parse_dask_arg(args.dask)
        except ValueError as err:
            parser.error(str(err))
    if args.output.rstrip('/').lower().endswith(('.nc', '.nc4', '.netcdf')):
        given = [f for f, on in (('--dask', args.dask), ('--batch', args.batch), ('--compile', args.compile)) if on]
        if given:
            parser.error(f'{", ".join(given)}: for Zarr outputs (streamed); give -o PATH.zarr or an output folder')
    try:
        device = torch.device(('cuda' if torch.cuda.is_available() else 'cpu') if args.device == 'auto'
                              else args.device)
    except RuntimeError:
        parser.error(f'--device {args.device!r} is not a device name (cpu, cuda, cuda:1, ...)')
    if device.type == 'cuda' and not torch.cuda.is_available() and args.dask is None:  # --dask: the workers' device
        parser.error(f'--device {args.device}: CUDA is not available on this machine')
    if args.fp16 and args.bf16:
        parser.error('give at most one of --fp16 and --bf16')
    for flag, dtype in (('fp16', torch.float16), ('bf16', torch.bfloat16)):
        if getattr(args, flag) and not autocast_supported(device, dtype):
            parser.error(f'--{flag}: torch {torch.__version__} has no {flag} autocast on {device.type}')
    return args, requests, device


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the CLI. Returns 0 when every output was written, 1 if any input failed, 2 on a setup error."""
    from tqdm import tqdm
    args, requests, device = parse_args(argv)
    try:
        # with --dask the client only plans the store: it may have no GPU when the workers do
        here = torch.device('cpu') if args.dask and device.type == 'cuda' and not torch.cuda.is_available() else device
        allowed = (*args.allow_arch, *fork_imports.import_arch_modules(args.imports))
        net = load_network(args.opt, args.ckpt, args.param_key, here, allow_types=allowed)
        if args.impl is not None and not set_impl(net, args.impl):
            raise ValueError(f'--impl {args.impl}: the network has no MetaUpsample head')
        channels = network_channels(net)
    except ValueError as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    files, failures, skipped = collect_inputs(args.inputs)
    out_dir = Path(args.output)
    try:
        (out_dir.parent if is_gridded_path(args.output) else out_dir).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        print(f'error: -o/--output {out_dir}: cannot create the folder ({err.strerror})', file=sys.stderr)
        return 2
    jobs, refused = plan_outputs(files, requests, out_dir, args.overwrite)
    failures += refused
    if skipped:
        print(f'skipped {len(skipped)} file(s) named like outputs of an earlier run (<input stem>_<scale tag>) '
              f'(name them explicitly to upscale them): {", ".join(str(p) for p in skipped)}', file=sys.stderr)
    written = 0
    images = sum(len(j) for p, j in jobs.items() if not is_gridded_path(str(p)))
    if args.compile and images:
        print(f'warning: --compile {args.compile} applies to NetCDF/Zarr inputs; the {images} image/.npy '
              'output(s) of this run are computed eagerly', file=sys.stderr)
    bar = tqdm(total=images, unit='img', disable=args.quiet or not images, desc='upscaling')
    spec = NetworkSpec(args.ckpt, args.opt, args.param_key, args.impl, str(device), tuple(args.allow_arch),
                       tuple(args.imports))
    ahead = None
    if args.batch and args.batch > 1 and images:  # same-size images of the run, N per forward
        ahead = LookAhead(net, channels, device, args.batch,
                          {p: [r for r, _, _ in j] for p, j in jobs.items() if not is_gridded_path(str(p))},
                          read_sample, args.tile, args.tile_overlap, args.fp16, args.bf16, args.max_pixels)
    for path, path_jobs in jobs.items():
        if is_gridded_path(str(path)):
            for request, tag, out in path_jobs:
                try:
                    time_slice = parse_time_arg(args.time)
                    if out.suffix == '.zarr':  # streamed, batched, resumable (inference.archive)
                        job = ArchiveJob(str(path), str(out), request, tuple(args.var) if args.var else None,
                                         tuple(time_slice) if time_slice else None, args.tile, args.tile_overlap,
                                         args.fp16, args.bf16, 'auto' if args.compile is None else args.compile,
                                         args.batch, None, args.max_pixels)
                        if args.dask:
                            from metasr_arch.inference.dask_runner import upscale_on_dask
                            upscale_on_dask(net, job, spec, args.dask, args.overwrite, args.quiet, here)
                        else:
                            upscale_archive(net, job, spec, args.overwrite, args.quiet, here)
                    else:
                        upscale_gridded(net, str(path), request, device, str(out), args.var, time_slice,
                                        args.tile, args.tile_overlap, args.fp16, args.bf16, args.max_pixels)
                    written += 1
                except (ValueError, RuntimeError, KeyError, OSError, ImportError) as err:
                    failures.append((f'{path} [{tag}]', f'{type(err).__name__}: {err}'))
            continue
        try:
            sample = read_sample(path)
            if args.nan_policy == 'error':
                check_finite(sample.data, f'input {path}')
        except ValueError as err:
            failures.append((str(path), str(err)))
            bar.update(len(path_jobs))
            continue
        for request, tag, out in path_jobs:
            bar.set_postfix_str(f'{path.name} {tag}', refresh=False)
            try:
                check_max_pixels(sample.data.shape, request, args.max_pixels)
                if ahead is not None:
                    data, alpha = ahead.upscale(path, sample, request)
                else:
                    data, alpha = upscale_sample(net, sample, request, channels, device, args.tile,
                                                 args.tile_overlap, args.fp16, args.bf16)
                summary = nonfinite_summary(data)
                if summary and args.nan_policy == 'error':
                    raise NonFiniteError(f'output has {summary}; not written (--nan-policy propagate writes it)')
                if summary:
                    print(f'warning: {out}: output has {summary} (--nan-policy propagate)', file=sys.stderr)
                write_sample(sample, data, alpha, out.with_suffix(''))
                written += 1
            except (ValueError, RuntimeError, TypeError, OSError) as err:
                failures.append((f'{path} [{tag}]', f'{type(err).__name__}: {err}'))
            bar.update(1)
    bar.close()
    print(f'{written} output(s) written to {out_dir}', file=sys.stderr)
    if failures:
        print(f'{len(failures)} failure(s):', file=sys.stderr)
        for where, why in failures:
            print(f'  {where}: {why}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
