"""``python -m metasr_arch.infer``: upscale images or gridded arrays with a trained Meta-SR network.

Examples (see ``docs/tools.md`` for every option)::

    python -m metasr_arch.infer photo.png --ckpt net_g.pth --scale 2.5 2x3.5 -o out/
    python -m metasr_arch.infer folder/ --opt options/test/test.yml --ckpt net.pth --size 721x1440

Inputs are image files (PNG/JPEG/TIFF/BMP/WebP, 8- or 16-bit, grey/RGB/RGBA) and ``.npy`` arrays,
given as files or folders. Each input is written once per requested scale or size to
``<output>/<stem>_<tag>.<ext>`` where ``tag`` is ``X2.50`` (symmetric), ``X2.00_X3.50``
(``r_v x r_h``) or ``721x1440`` (an exact size), the same spelling as the benchmark folders.

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
"""
import argparse
import os
import re
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import metasr_arch  # noqa: F401  (registers the archs and aliases functional_tensor before basicsr)

import cv2
import numpy as np
import torch
from torch import nn

from metasr_arch.archs.meta_upsample_arch import MODULE_IMPLS, MetaUpsample
from metasr_arch.ops.geometry import parse_scale, resolve_scale
from metasr_arch.utils.resize import imresize_to

IMAGE_EXTS = ('.png', '.jpg', '.jpeg', '.tif', '.tiff', '.bmp', '.webp')
ARRAY_EXTS = ('.npy',)
_DEPTH_MAX = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}

Request = Tuple[str, Tuple[float, float]]  # ('scale', (r_v, r_h)) or ('size', (H, W))


# --------------------------------------------------------------------------- scales and names
def parse_scale_text(text: str, name: str = '--scale') -> Tuple[float, float]:
    """``'2.5'`` -> (2.5, 2.5); ``'2x3.5'`` -> (2.0, 3.5) (vertical x horizontal), each >= 1.

    Raises:
        ValueError naming ``name`` for malformed text or a scale below 1.
    """
    parts = re.split(r'[xX,]', str(text).strip())
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise ValueError(f'{name} {text!r} is malformed: use a number (2.5) or r_v x r_h (2x3.5)') from None
    if len(values) not in (1, 2):
        raise ValueError(f'{name} {text!r} is malformed: use a number (2.5) or r_v x r_h (2x3.5)')
    try:
        return parse_scale(values[0] if len(values) == 1 else tuple(values))
    except (TypeError, ValueError) as err:
        raise ValueError(f'{name} {text!r}: {err}') from None


def parse_size_text(text: str, name: str = '--size') -> Tuple[int, int]:
    """``'721x1440'`` -> (721, 1440) (height x width), both positive integers."""
    match = re.fullmatch(r'\s*(\d+)\s*[xX,]\s*(\d+)\s*', str(text))
    if not match or int(match.group(1)) < 1 or int(match.group(2)) < 1:
        raise ValueError(f'{name} {text!r} is malformed: use HEIGHTxWIDTH with positive integers, e.g. 721x1440')
    return int(match.group(1)), int(match.group(2))


def _fmt(r: float) -> str:
    # Two decimals is the benchmark convention; scales that need more keep them, so names never collide.
    text = f'{r:.2f}'
    return text if abs(float(text) - r) < 1e-9 else f'{r:.6f}'.rstrip('0')


def scale_tag(r_v: float, r_h: float) -> str:
    """Folder/file tag of a scale: ``X2.50`` when symmetric, ``X2.00_X3.50`` for (r_v, r_h)."""
    return f'X{_fmt(r_v)}' if abs(r_v - r_h) < 1e-12 else f'X{_fmt(r_v)}_X{_fmt(r_h)}'


def request_tag(request: Request) -> str:
    """Tag of a request: ``scale_tag`` for scales, ``HxW`` for exact sizes."""
    kind, (a, b) = request
    return scale_tag(a, b) if kind == 'scale' else f'{int(a)}x{int(b)}'


# --------------------------------------------------------------------------- network loading
def _load_yaml(path: str) -> dict:
    import yaml
    try:
        with open(path, encoding='utf-8') as f:
            opt = yaml.safe_load(f)
    except OSError as err:
        raise ValueError(f'--opt {path}: cannot read the options file ({err.strerror})') from None
    except yaml.YAMLError as err:
        raise ValueError(f'--opt {path}: not valid YAML ({err})') from None
    if isinstance(opt, dict) and isinstance(opt.get('network_g'), dict):
        return dict(opt['network_g'])
    if isinstance(opt, dict) and 'type' in opt:
        return dict(opt)
    raise ValueError(f'--opt {path}: expected a BasicSR options file with a network_g section '
                     '(or a network options dict with a type)')


def load_checkpoint(path: str) -> dict:
    """Read a checkpoint on the CPU without executing pickled code (``weights_only=True``)."""
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
    except FileNotFoundError:
        raise ValueError(f'--ckpt {path}: no such file') from None
    except Exception as err:  # noqa: BLE001 (torch raises many types for corrupt files)
        raise ValueError(f'--ckpt {path}: not a readable PyTorch checkpoint ({type(err).__name__}: {err})') from None
    if not isinstance(ckpt, dict):
        raise ValueError(f'--ckpt {path}: expected a dict, got {type(ckpt).__name__}')
    return ckpt


def select_params(ckpt: dict, param_key: Optional[str], path: str = '') -> Tuple[Dict[str, torch.Tensor], str]:
    """The state dict of ``ckpt`` under ``param_key``; default ``params_ema``, else ``params``.

    A bare state dict (all values tensors) is accepted when no key is requested.
    """
    if param_key is not None:
        if param_key not in ckpt:
            keys = sorted(k for k in ckpt if isinstance(ckpt[k], dict))
            raise ValueError(f'--param-key {param_key!r} is not in checkpoint {path}; it has {keys}')
        return ckpt[param_key], param_key
    for key in ('params_ema', 'params'):
        if isinstance(ckpt.get(key), dict):
            return ckpt[key], key
    if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        return ckpt, '(state dict)'
    raise ValueError(f'--ckpt {path}: has neither params_ema nor params (keys: {sorted(ckpt)})')


def build_and_load(network_opt: dict, state: Dict[str, torch.Tensor], source: str = 'checkpoint') -> nn.Module:
    """Build ``network_opt`` through BasicSR's registry and load ``state`` strictly.

    Raises:
        ValueError naming the network type and the mismatching keys/shapes.
    """
    from basicsr.archs import build_network
    from basicsr.utils.registry import ARCH_REGISTRY
    net_type = network_opt.get('type')
    if net_type not in ARCH_REGISTRY:
        raise ValueError(f'network type {net_type!r} is not registered in ARCH_REGISTRY '
                         '(is the module defining it imported?)')
    net = build_network(network_opt)
    # Checkpoints saved from DistributedDataParallel wrappers prefix every key with 'module.'.
    state = {(k[7:] if k.startswith('module.') else k): v for k, v in state.items()}
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f'{k}: checkpoint {tuple(state[k].shape)} vs network {tuple(own[k].shape)}'
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        def few(items):
            return ', '.join(items[:5]) + (f' (+{len(items) - 5} more)' if len(items) > 5 else '')
        details = [f'missing keys: {few(missing)}' if missing else '',
                   f'unexpected keys: {few(unexpected)}' if unexpected else '',
                   f'shape mismatches: {few(shapes)}' if shapes else '']
        raise ValueError(f'{source} does not match the network {net_type} built from its options; '
                         + '; '.join(d for d in details if d))
    net.load_state_dict(state, strict=True)
    return net.eval()


def load_network(opt: Optional[str] = None, ckpt: Optional[str] = None, param_key: Optional[str] = None,
                 device: Union[str, torch.device] = 'cpu') -> nn.Module:
    """A network ready for inference, from an options YAML plus checkpoint, or a checkpoint alone.

    Args:
        opt: BasicSR options file (its ``network_g`` is used) or a YAML of network options; optional
            when the checkpoint records ``network_opt`` (MetaSRModel's checkpoints do).
        ckpt: checkpoint path (BasicSR format ``{'params': ..., 'params_ema': ...}``).
        param_key: which weights to use; default ``params_ema`` when present, else ``params``.
        device: where the network goes.
    """
    if ckpt is None:
        raise ValueError('--ckpt is required (a checkpoint with params or params_ema)')
    checkpoint = load_checkpoint(ckpt)
    if opt is not None:
        network_opt = _load_yaml(opt)
    elif isinstance(checkpoint.get('network_opt'), dict):
        network_opt = dict(checkpoint['network_opt'])
    else:
        raise ValueError(f'--ckpt {ckpt} records no network_opt; pass the training options with --opt')
    state, key = select_params(checkpoint, param_key, ckpt)
    net = build_and_load(network_opt, state, source=f'--ckpt {ckpt} [{key}]')
    # MetaSRModel's bicubic_skip: the network predicts the residual over bicubic, recorded in the checkpoint
    # (or set at the top level of the training options file)
    net.metasr_bicubic_skip = bool(checkpoint.get('bicubic_skip', False) or _yaml_bicubic_skip(opt))
    return net.to(device)


def _yaml_bicubic_skip(path: Optional[str]) -> bool:
    if path is None:
        return False
    import yaml
    with open(path, encoding='utf-8') as f:
        opt = yaml.safe_load(f)
    return bool(isinstance(opt, dict) and opt.get('bicubic_skip', False))


def set_impl(net: nn.Module, impl: str) -> int:
    """Set ``impl`` on every MetaUpsample of ``net`` (a GPU-trained 'cuda' model run on a CPU, say).

    Returns:
        the number of heads changed.
    """
    heads = [m for m in net.modules() if isinstance(m, MetaUpsample)]
    for head in heads:
        head.impl = impl
    return len(heads)


def network_channels(net: nn.Module) -> int:
    """Input channels of ``net``: its ``num_in_ch``/``in_chans`` attribute or its first convolution."""
    for attr in ('num_in_ch', 'in_chans', 'in_channels'):
        value = getattr(net, attr, None)
        if isinstance(value, int):
            return value
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    raise ValueError(f'cannot tell the input channels of {type(net).__name__}; give it a num_in_ch attribute')


# --------------------------------------------------------------------------- reading and writing
@dataclass
class Sample:
    """One input: colour/data channels (C, h, w) float32 in the network's range, plus how to write it.

    Attributes:
        data: (C, h, w) float32 tensor; RGB order for colour images.
        alpha: (1, h, w) float32 in [0, 1] for RGBA images, else None.
        kind: 'image' or 'array'.
        depth: np.uint8 / np.uint16 for images (the written bit depth), None for arrays.
        squeeze: arrays given as (H, W) are written back as (H, W).
    """
    data: torch.Tensor
    alpha: Optional[torch.Tensor]
    kind: str
    depth: Optional[np.dtype] = None
    squeeze: bool = False


def read_sample(path: Union[str, Path]) -> Sample:
    """Read an image (8/16-bit grey, RGB, RGBA) or a ``.npy`` array; ValueError naming the file otherwise."""
    path = Path(path)
    if path.suffix.lower() in ARRAY_EXTS:
        try:
            arr = np.load(path, allow_pickle=False)
        except Exception as err:  # noqa: BLE001
            raise ValueError(f'cannot read array {path}: {type(err).__name__}: {err}') from None
        if arr.ndim not in (2, 3) or not (np.issubdtype(arr.dtype, np.number) and not np.iscomplexobj(arr)):
            raise ValueError(f'array {path} must be real (H, W) or (C, H, W), got shape {arr.shape} {arr.dtype}')
        data = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
        return Sample(data[None] if arr.ndim == 2 else data, None, 'array', None, arr.ndim == 2)
    try:
        raw = np.fromfile(str(path), dtype=np.uint8)  # imdecode also handles non-ASCII paths
    except OSError as err:
        raise ValueError(f'cannot read image {path}: {err.strerror}') from None
    img = cv2.imdecode(raw, cv2.IMREAD_UNCHANGED) if raw.size else None
    if img is None:
        raise ValueError(f'cannot read image {path}: not a decodable image file')
    if img.dtype not in _DEPTH_MAX:
        raise ValueError(f'image {path} has {img.dtype} pixels; only 8- and 16-bit images are supported '
                         '(save float data as .npy)')
    depth = img.dtype
    img = img.astype(np.float32) / _DEPTH_MAX[depth]
    alpha = None
    if img.ndim == 2:
        colour = img[:, :, None]
    elif img.shape[2] == 4:
        colour, alpha = cv2.cvtColor(img[:, :, :3], cv2.COLOR_BGR2RGB), img[:, :, 3]
    elif img.shape[2] == 3:
        colour = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    elif img.shape[2] == 1:
        colour = img
    else:
        raise ValueError(f'image {path} has {img.shape[2]} channels; expected 1, 3 or 4')
    data = torch.from_numpy(np.ascontiguousarray(colour.transpose(2, 0, 1)))
    return Sample(data, None if alpha is None else torch.from_numpy(alpha)[None], 'image', depth)


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write ``payload`` to a hidden temporary file beside ``path``, then rename it into place.

    A run killed mid-write never leaves a truncated file under the final name, which is what lets
    reruns of the data tools treat an existing file as finished.
    """
    tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
    with open(tmp, 'wb') as f:
        f.write(payload)
    os.replace(tmp, path)


def write_sample(sample: Sample, data: torch.Tensor, alpha: Optional[torch.Tensor], path: Path) -> Path:
    """Write an output (C, H, W) (and alpha (1, H, W)) like its input; returns the path written.

    Args:
        path: output path without extension (``.png`` or ``.npy`` is appended).
    """
    data = data.detach().float().cpu()
    if sample.kind == 'array':
        out = data.numpy().astype(np.float32)
        path = path.with_name(path.name + '.npy')  # not with_suffix: 'X2.50' has a dot
        import io
        buf = io.BytesIO()
        np.save(buf, out[0] if sample.squeeze else out)
        atomic_write_bytes(path, buf.getvalue())
        return path
    top = _DEPTH_MAX[sample.depth]
    img = data.clamp(0, 1).permute(1, 2, 0).numpy()
    if img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    if alpha is not None:
        img = np.concatenate([img, alpha.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy()], axis=2)
    img = np.rint(img * top).astype(sample.depth)
    if img.shape[2] == 1:
        img = img[:, :, 0]
    path = path.with_name(path.name + '.png')
    ok, encoded = cv2.imencode('.png', img)
    if not ok:
        raise ValueError(f'cannot encode {path} as PNG')
    atomic_write_bytes(path, encoded.tobytes())
    return path


# --------------------------------------------------------------------------- running the network
def run_network(net: nn.Module, x: torch.Tensor, scale=None, out_size=None, tile: Optional[int] = None,
                tile_overlap: int = 0, fp16: bool = False) -> torch.Tensor:
    """``net(x, scale | out_size)``, tiled when ``tile`` is given, under fp16 autocast when asked.

    Args:
        x: (N, C, h, w) on the network's device.
    Returns:
        (N, C_out, H, W) float32, exactly the size ``resolve_scale`` gives.
    """
    spec = resolve_scale(x.shape[-2], x.shape[-1], scale, out_size)
    autocast = torch.autocast('cuda', dtype=torch.float16) if fp16 else nullcontext()
    # no_grad rather than inference_mode: the operator caches index tensors (geometry.axis_projection)
    # across calls, and a tensor created under inference_mode would break later training in the process.
    with torch.no_grad(), autocast:
        if tile:
            from metasr_arch.utils.tiling import tiled_forward
            y = tiled_forward(net, x, scale=scale, out_size=out_size, tile=tile, overlap=tile_overlap)
        else:
            y = net(x, scale=scale, out_size=out_size)
        if getattr(net, 'metasr_bicubic_skip', False):
            from metasr_arch.utils.resize import imresize_to
            y = y + imresize_to(x, tuple(y.shape[-2:])).to(y.dtype)
    if tuple(y.shape[-2:]) != (spec.out_h, spec.out_w):
        raise RuntimeError(f'{type(net).__name__} returned {tuple(y.shape[-2:])}, expected exactly '
                           f'{(spec.out_h, spec.out_w)} for r = ({spec.r_v:g}, {spec.r_h:g})')
    return y.float()


def upscale_sample(net: nn.Module, sample: Sample, request: Request, net_channels: int, device: torch.device,
                   tile: Optional[int] = None, tile_overlap: int = 0,
                   fp16: bool = False) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Upscale one sample for one request; returns (data (C, H, W), alpha (1, H, W) or None) on the CPU."""
    kind, value = request
    scale, out_size = (value, None) if kind == 'scale' else (None, value)
    data = sample.data.to(device)
    c = data.shape[0]
    if c == net_channels:
        batch = data[None]
    elif c == 1:  # grey image, colour network: replicate, average back below
        batch = data.expand(net_channels, -1, -1)[None]
    elif net_channels == 1:  # colour image, single-channel network: one batch item per channel
        batch = data[:, None]
    else:
        raise ValueError(f'input has {c} channels but the network takes {net_channels}')
    y = run_network(net, batch, scale, out_size, tile, tile_overlap, fp16)
    if c == net_channels:
        out = y[0]
    elif c == 1:
        out = y[0].mean(dim=0, keepdim=True)
    else:
        out = y[:, 0]
    alpha = None
    if sample.alpha is not None:
        alpha = imresize_to(sample.alpha, tuple(out.shape[-2:])).clamp_(0, 1)
    return out.cpu(), alpha


# --------------------------------------------------------------------------- command line
def collect_inputs(paths: Sequence[str]) -> Tuple[List[Path], List[Tuple[str, str]]]:
    """Expand files and folders (non-recursive) into input files; missing paths become failures."""
    files, failures = [], []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            found = sorted(f for f in path.iterdir()
                           if f.is_file() and f.suffix.lower() in IMAGE_EXTS + ARRAY_EXTS)
            if not found:
                failures.append((str(path), 'folder has no image or .npy files'))
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            failures.append((str(path), 'no such file or folder'))
    return files, failures


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of ``python -m metasr_arch.infer``."""
    p = argparse.ArgumentParser(
        prog='python -m metasr_arch.infer',
        description='Upscale images or .npy arrays with a Meta-SR network to any scale or exact size.')
    p.add_argument('inputs', nargs='+', help='image files, .npy files, or folders of them')
    p.add_argument('-o', '--output', default='results/infer', help='output folder (default: results/infer)')
    p.add_argument('--scale', nargs='+', action='extend', default=[], metavar='S',
                   help="scales: '2.5' (both axes) or '2x3.5' (vertical x horizontal); several allowed")
    p.add_argument('--size', nargs='+', action='extend', default=[], metavar='HxW',
                   help="exact output sizes, e.g. '721x1440'; several allowed")
    p.add_argument('--opt', help='options YAML (its network_g); optional if the checkpoint records network_opt')
    p.add_argument('--ckpt', required=True, help='checkpoint with params / params_ema')
    p.add_argument('--param-key', default=None, help='params or params_ema (default: params_ema if present)')
    p.add_argument('--tile', type=int, default=None, help='tile size in input pixels (default: whole image)')
    p.add_argument('--tile-overlap', type=int, default=8, help='tile overlap in input pixels (default: 8)')
    p.add_argument('--fp16', action='store_true', help='half-precision autocast (CUDA only)')
    p.add_argument('--device', default='auto', help="'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1', ...")
    p.add_argument('--impl', default=None, choices=MODULE_IMPLS,
                   help="operator implementation of every MetaUpsample (default: the checkpoint's, e.g. 'auto')")
    p.add_argument('--quiet', action='store_true', help='no progress bar')
    return p


def parse_args(argv: Optional[Sequence[str]] = None) -> Tuple[argparse.Namespace, List[Request], torch.device]:
    """Parse and validate the command line (argparse exits with status 2 on bad arguments)."""
    parser = build_parser()
    args = parser.parse_args(argv)
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
    try:
        device = torch.device(('cuda' if torch.cuda.is_available() else 'cpu') if args.device == 'auto'
                              else args.device)
    except RuntimeError:
        parser.error(f'--device {args.device!r} is not a device name (cpu, cuda, cuda:1, ...)')
    if device.type == 'cuda' and not torch.cuda.is_available():
        parser.error(f'--device {args.device}: CUDA is not available on this machine')
    if args.fp16 and device.type != 'cuda':
        parser.error('--fp16 needs a CUDA device (half precision is slow and inaccurate on the CPU)')
    return args, requests, device


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the CLI. Returns 0 when every output was written, 1 if any input failed, 2 on a setup error."""
    from tqdm import tqdm
    args, requests, device = parse_args(argv)
    try:
        net = load_network(args.opt, args.ckpt, args.param_key, device)
        if args.impl is not None and not set_impl(net, args.impl):
            raise ValueError(f'--impl {args.impl}: the network has no MetaUpsample head')
        channels = network_channels(net)
    except ValueError as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    files, failures = collect_inputs(args.inputs)
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = 0
    bar = tqdm(total=len(files) * len(requests), unit='img', disable=args.quiet, desc='upscaling')
    for path in files:
        try:
            sample = read_sample(path)
        except ValueError as err:
            failures.append((str(path), str(err)))
            bar.update(len(requests))
            continue
        for request in requests:
            tag = request_tag(request)
            bar.set_postfix_str(f'{path.name} {tag}', refresh=False)
            try:
                data, alpha = upscale_sample(net, sample, request, channels, device, args.tile,
                                             args.tile_overlap, args.fp16)
                write_sample(sample, data, alpha, out_dir / f'{path.stem}_{tag}')
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
