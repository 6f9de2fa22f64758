"""Glue to the native (C++/CUDA) meta-upscale kernels in ``ops/meta_upscale``.

* ``table_conv(x, table, rows, cols)`` evaluates ``phase_table_conv`` natively through the torch
  custom op ``torch.ops.metasr.table_conv`` (fake kernel, autograd and autocast handled here, so
  ``torch.library.opcheck`` passes and ``torch.compile`` keeps the op in one graph).
* The extension is JIT-built with ``torch.utils.cpp_extension.load`` (ninja) on first use and cached
  per torch / CUDA version / GPU architecture under ``$METASR_EXT_DIR`` or
  ``~/.cache/metasr_arch/torch_extensions``. Importing this module never compiles anything.
  ``python -m metasr_arch.ops.build`` builds it ahead of time.
* Two variants: ``cuda`` (CPU and CUDA kernels; needs nvcc and a CUDA build of torch) and ``cpu``
  (the CPU kernels only; needs a C++ compiler). CPU tensors use whichever is loaded, preferring
  ``cuda`` so that one build serves both.
* ``METASR_CUDA_EXT``: unset -> use the CUDA op on CUDA devices when it builds, else fall back to
  PyTorch with one warning; ``0`` -> never use it; ``1`` -> always use it on CUDA devices, and fail
  loudly if the build or the self-check fails.
* ``self_check(device, dtype)``: before ``impl='auto'`` first hands the op a (device, dtype), it is
  compared with the PyTorch phase path on a few small cases (forward and backward); a failure warns
  once and ``auto`` uses PyTorch on that device for the rest of the process.
  ``METASR_NATIVE_SELF_CHECK=0`` skips the check.

See ``docs/native_op.md``.
"""
import hashlib
import os
import re
import shutil
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

from .geometry import AxisProjection, axis_projection, resolve_scale
from .meta_upscale import phase_table_conv, register_native_impl

ENV_SWITCH = 'METASR_CUDA_EXT'
ENV_SELF_CHECK = 'METASR_NATIVE_SELF_CHECK'
ENV_BUILD_DIR = 'METASR_EXT_DIR'
# Architecture compiled for when no GPU is visible (CI, build hosts) and TORCH_CUDA_ARCH_LIST is unset.
DEFAULT_ARCH = '9.0'
SOURCE_FILES = ('meta_upscale.cpp', 'meta_upscale_cpu.cpp', 'meta_upscale_cuda.cu')
HEADER_FILES = ('meta_upscale_common.h', 'meta_upscale_launch.h')
VARIANTS = ('cuda', 'cpu')
# Device types on which ``auto`` may pick the op. The CPU kernels are slower than the PyTorch paths
# there (BENCHMARKS.md), so only CUDA; tests add 'cpu' to drive the dispatch through the CPU build.
AUTO_DEVICE_TYPES = ('cuda',)

_lock = threading.RLock()
_modules: Dict[str, ModuleType] = {}
_errors: Dict[str, str] = {}
_warned = False
# self_check results per (device, dtype), and the devices on which a check failed ('auto' avoids them)
_self_checks: Dict[Tuple[str, torch.dtype], 'SelfCheckResult'] = {}
_distrusted: Dict[str, str] = {}


# ----------------------------------------------------------------------------------------------
# locating the sources and the build directory


def source_dir() -> Optional[Path]:
    """Folder holding the kernel sources: ``metasr_arch/_csrc`` in a wheel, ``<repo>/ops/meta_upscale``
    in a checkout or an editable install; None when neither has them."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / '_csrc', package / 'csrc', package.parent / 'ops' / 'meta_upscale'):
        if all((candidate / name).is_file() for name in SOURCE_FILES + HEADER_FILES):
            return candidate
    return None


def _sources_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for name in SOURCE_FILES + HEADER_FILES:
        digest.update((folder / name).read_bytes())
    return digest.hexdigest()[:10]


def cuda_arch_list() -> str:
    """Architectures for nvcc: $TORCH_CUDA_ARCH_LIST, else the visible GPUs', else DEFAULT_ARCH."""
    env = os.environ.get('TORCH_CUDA_ARCH_LIST', '').strip()
    if env:
        return env
    if torch.cuda.is_available():
        caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
        return ';'.join(f'{major}.{minor}' for major, minor in caps)
    return DEFAULT_ARCH


def build_dir(variant: str, arch_list: Optional[str] = None) -> Path:
    """Cache folder of one build: per torch version, CUDA version, architectures and Python version."""
    root = os.environ.get(ENV_BUILD_DIR) or os.path.join(os.path.expanduser('~'), '.cache', 'metasr_arch',
                                                         'torch_extensions')
    arch = (arch_list or cuda_arch_list()) if variant == 'cuda' else 'cpu'
    tag = f'{variant}-torch{torch.__version__}-cuda{torch.version.cuda}-arch{arch}-py{sys.version_info[0]}' \
          f'{sys.version_info[1]}'
    return Path(root) / re.sub(r'[^A-Za-z0-9._-]+', '_', tag)


# ----------------------------------------------------------------------------------------------
# building / loading


def _build_obstacle(variant: str) -> Optional[str]:
    """Why ``variant`` cannot be built here (cheap checks, nothing compiled), or None."""
    if source_dir() is None:
        return 'the kernel sources (ops/meta_upscale) are not installed with this package'
    if shutil.which(os.environ.get('CXX', 'c++')) is None:
        return 'no C++ compiler found (install g++ or set CXX)'
    if shutil.which('ninja') is None and not (Path(sys.executable).parent / 'ninja').exists():
        return 'ninja is not installed (pip install ninja)'
    if variant == 'cuda':
        if torch.version.cuda is None:
            return f'this torch ({torch.__version__}) is a CPU-only build'
        if cuda_home() is None:
            return 'no CUDA toolkit found (nvcc and include/cuda_runtime.h); set CUDA_HOME to the toolkit root'
    return None


def _is_toolkit(root: Optional[str]) -> bool:
    return bool(root) and (Path(root) / 'bin' / 'nvcc').exists() and (Path(root) / 'include' / 'cuda_runtime.h').exists()


def cuda_home() -> Optional[str]:
    """Root of the CUDA toolkit used for the build, or None.

    torch guesses the root from ``which nvcc``; when nvcc is a wrapper script (e.g. /usr/local/bin/nvcc)
    that guess (/usr/local) has no headers. Then, unless CUDA_HOME/CUDA_PATH is set explicitly, the
    usual roots are tried.
    """
    from torch.utils import cpp_extension
    if _is_toolkit(cpp_extension.CUDA_HOME):
        return cpp_extension.CUDA_HOME
    if os.environ.get('CUDA_HOME') or os.environ.get('CUDA_PATH'):
        return None  # the user's explicit choice is incomplete: do not second-guess it
    for root in ['/usr/local/cuda'] + sorted(str(p) for p in Path('/usr/local').glob('cuda-*')):
        if _is_toolkit(root):
            return root
    return None


def load_extension(variant: str = 'cuda', arch_list: Optional[str] = None, verbose: bool = False) -> ModuleType:
    """Build (first time) and import the extension ``variant`` ('cuda' or 'cpu').

    Raises:
        RuntimeError: with the reason (missing toolkit/compiler, or the compiler's error) when it cannot
            be built. A failure is remembered for the process; ``reset()`` forgets it.
    """
    if variant not in VARIANTS:
        raise ValueError(f'variant must be one of {VARIANTS}, got {variant!r}')
    with _lock:
        if variant in _modules:
            return _modules[variant]
        if variant in _errors:
            raise RuntimeError(_errors[variant])
        obstacle = _build_obstacle(variant)
        if obstacle is not None:
            _errors[variant] = f'the native meta_upscale extension ({variant}) cannot be built: {obstacle}'
            raise RuntimeError(_errors[variant])
        try:
            module = _compile(variant, arch_list, verbose)
        except Exception as exc:  # compiler errors arrive as RuntimeError/CalledProcessError/OSError
            detail = str(exc).strip().splitlines()
            _errors[variant] = (f'building the native meta_upscale extension ({variant}) failed: '
                                + '\n'.join(detail[-25:]))
            raise RuntimeError(_errors[variant]) from exc
        _modules[variant] = module
        return module


def _compile(variant: str, arch_list: Optional[str], verbose: bool) -> ModuleType:
    from torch.utils import cpp_extension
    folder = source_dir()
    arch = arch_list or cuda_arch_list()
    target = build_dir(variant, arch)
    target.mkdir(parents=True, exist_ok=True)
    sources = [str(folder / 'meta_upscale.cpp'), str(folder / 'meta_upscale_cpu.cpp')]
    cflags = ['-O3', '-fopenmp']  # torch adds its own -std (C++20 for torch >= 2.10)
    cuda_cflags: List[str] = []
    if variant == 'cuda':
        sources.append(str(folder / 'meta_upscale_cuda.cu'))
        cflags.append('-DMETASR_WITH_CUDA')
        cuda_cflags = ['-O3', '-DMETASR_WITH_CUDA']
    # The module name carries the sources' digest: an edited source gets a fresh name, so a process
    # that already imported an older build never mixes the two.
    name = f'metasr_meta_upscale_{variant}_{_sources_digest(folder)}'
    saved_arch = os.environ.get('TORCH_CUDA_ARCH_LIST')
    if variant == 'cuda':
        os.environ['TORCH_CUDA_ARCH_LIST'] = arch
        # cpp_extension reads its module-level CUDA_HOME when it writes the build file
        cpp_extension.CUDA_HOME = cuda_home()
    try:
        return cpp_extension.load(name=name, sources=sources, extra_cflags=cflags, extra_cuda_cflags=cuda_cflags,
                                  extra_ldflags=['-fopenmp'], extra_include_paths=[str(folder)],
                                  build_directory=str(target), with_cuda=variant == 'cuda', verbose=verbose)
    finally:
        if variant == 'cuda':
            if saved_arch is None:
                os.environ.pop('TORCH_CUDA_ARCH_LIST', None)
            else:
                os.environ['TORCH_CUDA_ARCH_LIST'] = saved_arch


def reset() -> None:
    """Forget remembered build failures, self-check results and the fallback warning (tests, or after
    fixing the toolkit)."""
    global _warned
    with _lock:
        _errors.clear()
        _self_checks.clear()
        _distrusted.clear()
        _warned = False


def _switch() -> Optional[bool]:
    value = os.environ.get(ENV_SWITCH, '').strip().lower()
    if value in ('', 'auto'):
        return None
    if value in ('0', 'false', 'no', 'off'):
        return False
    if value in ('1', 'true', 'yes', 'on'):
        return True
    raise ValueError(f'{ENV_SWITCH} must be 0, 1 or unset, got {os.environ[ENV_SWITCH]!r}')


def _extension_for(device: torch.device) -> ModuleType:
    """The loaded extension that runs on ``device`` (CPU tensors prefer an already built CUDA variant)."""
    if device.type == 'cuda':
        return load_extension('cuda')
    if device.type != 'cpu':
        raise RuntimeError(f'the native meta_upscale op runs on CPU and CUDA tensors, got {device}')
    with _lock:
        if 'cuda' in _modules:
            return _modules['cuda']
    return load_extension('cpu')


# ----------------------------------------------------------------------------------------------
# availability (what meta_upscale.available_impls / resolve_impl ask)


def unavailable_reason(device: torch.device) -> str:
    """Why the native CUDA op cannot run on ``device`` (human-readable); '' when it can."""
    device = torch.device(device)
    if device.type not in AUTO_DEVICE_TYPES:
        return f'the native op (impl "cuda") runs on CUDA devices only, got {device}'
    switch = _switch()
    if switch is False:
        return f'disabled by {ENV_SWITCH}=0'
    try:
        _extension_for(device)
    except RuntimeError as exc:
        return str(exc)
    return ''


def is_available(device: torch.device) -> bool:
    """Whether impl 'cuda' can run on ``device``. Builds the extension on the first CUDA query.

    With ``METASR_CUDA_EXT=1`` CUDA devices always report True, so that a broken build raises at the
    call instead of silently falling back. Without the variable, a failed build warns once.
    """
    global _warned
    device = torch.device(device)
    if device.type not in AUTO_DEVICE_TYPES:
        return False
    switch = _switch()
    if switch is not None:
        return switch
    reason = unavailable_reason(device)
    if reason and not _warned:
        _warned = True
        warnings.warn(f'metasr_arch: falling back to the PyTorch meta-upscale implementations on {device}: {reason}',
                      RuntimeWarning, stacklevel=3)
    return not reason


# table_conv is defined below; the lambdas look it up at call time
register_native_impl('cuda', is_available, lambda device, dtype: trusted(device, dtype),
                     unavailable_reason=lambda device: unavailable_reason(device),
                     table_conv=lambda *args: table_conv(*args))


# ----------------------------------------------------------------------------------------------
# torch custom ops


def _table_conv_impl(x: Tensor, table: Tensor, row_lr: Tensor, row_phase: Tensor, col_lr: Tensor,
                     col_phase: Tensor) -> Tensor:
    return _extension_for(x.device).forward(x, table, row_lr, row_phase, col_lr, col_phase)


def _table_conv_fake(x, table, row_lr, row_phase, col_lr, col_phase):
    torch._check(table.shape[4] == x.shape[1], lambda: 'table C_in does not match x')
    torch._check(row_phase.shape[0] == row_lr.shape[0], lambda: 'row maps differ in length')
    torch._check(col_phase.shape[0] == col_lr.shape[0], lambda: 'col maps differ in length')
    return x.new_empty(x.shape[0], table.shape[5], row_lr.shape[0], col_lr.shape[0])


def _table_conv_backward_impl(grad_out: Tensor, x: Tensor, table: Tensor, row_lr: Tensor, row_phase: Tensor,
                              col_lr: Tensor, col_phase: Tensor, need_x: bool,
                              need_table: bool) -> Tuple[Tensor, Tensor]:
    grad_x, grad_table = _extension_for(x.device).backward(grad_out, x, table, row_lr, row_phase, col_lr,
                                                           col_phase, need_x, need_table)
    return grad_x, grad_table


def _table_conv_backward_fake(grad_out, x, table, row_lr, row_phase, col_lr, col_phase, need_x, need_table):
    grad_x = x.new_empty(x.shape) if need_x else x.new_empty(0)
    grad_table = table.new_empty(table.shape) if need_table else x.new_empty(0)
    return grad_x, grad_table


def _setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad_out: Tensor):
    x, table, row_lr, row_phase, col_lr, col_phase = ctx.saved_tensors
    need_x, need_table = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    grad_x, grad_table = torch.ops.metasr.table_conv_backward(grad_out.contiguous(), x, table, row_lr, row_phase,
                                                              col_lr, col_phase, need_x, need_table)
    return grad_x if need_x else None, grad_table if need_table else None, None, None, None, None


def _op_defined(name: str) -> bool:
    try:
        getattr(torch.ops.metasr, name)
    except (AttributeError, RuntimeError):
        return False
    return True


def _define_ops() -> None:
    """Define metasr::table_conv (differentiable) and metasr::table_conv_backward (not differentiable).

    Skipped when already defined (a reloaded module): importlib.reload keeps the module's namespace,
    so the existing definitions already call this module's current functions.
    """
    if _op_defined('table_conv'):
        return
    backward_op = torch.library.custom_op('metasr::table_conv_backward', _table_conv_backward_impl,
                                          mutates_args=())
    backward_op.register_fake(_table_conv_backward_fake)
    op = torch.library.custom_op('metasr::table_conv', _table_conv_impl, mutates_args=())
    op.register_fake(_table_conv_fake)
    op.register_autograd(_backward, setup_context=_setup_context)


_define_ops()


# ----------------------------------------------------------------------------------------------
# public entry point


def _common_dtype(x: Tensor, table: Tensor) -> torch.dtype:
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        # like conv/matmul under autocast: run in the autocast dtype
        return torch.get_autocast_dtype(device_type)
    return torch.promote_types(x.dtype, table.dtype)


def table_conv(x: Tensor, table: Tensor, rows: AxisProjection, cols: AxisProjection) -> Tensor:
    """Native evaluation of ``phase_table_conv`` (same arguments and result).

    Args:
        x: (N, C_in, h, w), float32 / float64 / float16 / bfloat16, CPU or CUDA.
        table: (Pv, Ph, k, k, C_in, C_out), k odd; per-pixel weights are (H, W, k, k, C_in, C_out)
            with ``per_pixel_projection`` maps. A different dtype is promoted to a common one (the
            autocast dtype inside an autocast region).
        rows, cols: axis projections; ``lr_index`` must be non-decreasing (as ``axis_projection`` makes it).

    Returns:
        (N, C_out, H, W) with H = len(rows.lr_index), W = len(cols.lr_index).
    """
    for name, value in (('x', x), ('table', table)):
        if not isinstance(value, Tensor):
            raise TypeError(f'{name} must be a torch.Tensor, got {type(value).__name__}')
    for name, value in (('rows', rows), ('cols', cols)):
        if not isinstance(value, AxisProjection):
            raise TypeError(f'{name} must be an AxisProjection (geometry.axis_projection), got {type(value).__name__}')
    if x.dim() != 4:
        raise ValueError(f'x must be 4-D (N, C_in, h, w), got shape {tuple(x.shape)}')
    if table.dim() != 6:
        raise ValueError(f'table must be 6-D (Pv, Ph, k, k, C_in, C_out), got shape {tuple(table.shape)}')
    dtype = _common_dtype(x, table)
    x = x.to(dtype).contiguous()
    table = table.to(dtype).contiguous()
    return torch.ops.metasr.table_conv(x, table, rows.lr_index.contiguous(), rows.phase_index.contiguous(),
                                       cols.lr_index.contiguous(), cols.phase_index.contiguous())


# ----------------------------------------------------------------------------------------------
# run-time self-check (what 'auto' asks before it first hands the op a device and dtype)

# max |native - reference| <= tol * max |reference| for the output and both gradients, the reference
# being the PyTorch phase path in float64 on the CPU with the same (rounded) inputs. Same values as
# the tests' tolerances (docs/native_op.md, "Tolerances").
SELF_CHECK_TOL = {torch.float64: 1e-6, torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
# (name, n, c_in, c_out, h, w, scale, out_size, k): an integer scale, a non-integer asymmetric one,
# and an output size whose phases never repeat (a phase table as large as per-pixel weights).
SELF_CHECK_CASES = (
    ('x4', 2, 5, 3, 6, 7, (4.0, 4.0), None, 3),
    ('x2.5 by x3.7', 2, 4, 3, 5, 6, (2.5, 3.7), None, 3),
    ('5x7 -> 17x23 (non-repeating phases, k 5)', 1, 3, 2, 5, 7, None, (17, 23), 5),
)


@dataclass(frozen=True)
class SelfCheckResult:
    """Outcome of ``self_check``.

    Attributes:
        ok: every case matched the PyTorch phase path within ``SELF_CHECK_TOL``.
        detail: on success the largest relative error seen; on failure the case, dtype, quantity
            (forward, grad_x, grad_table) and the error or exception.
        device, dtype: what was checked (``dtype`` and float32 were both run).
        seconds: wall time of the check.
    """
    ok: bool
    detail: str
    device: str
    dtype: torch.dtype
    seconds: float


def _device_key(device: torch.device) -> str:
    device = torch.device(device)
    if device.type == 'cuda' and device.index is None and torch.cuda.is_available():
        device = torch.device('cuda', torch.cuda.current_device())
    return str(device)


def _self_check_enabled() -> bool:
    value = os.environ.get(ENV_SELF_CHECK, '').strip().lower()
    if value in ('', '1', 'true', 'yes', 'on'):
        return True
    if value in ('0', 'false', 'no', 'off'):
        return False
    raise ValueError(f'{ENV_SELF_CHECK} must be 0, 1 or unset, got {os.environ[ENV_SELF_CHECK]!r}')


def _check_case(case: tuple, device: torch.device, dtype: torch.dtype) -> List[Tuple[str, float]]:
    """(quantity, max error / max |reference|) of forward, grad_x and grad_table for one case."""
    _, n, c_in, c_out, h, w, scale, out_size, k = case
    spec = resolve_scale(h, w, scale, out_size)
    rows = axis_projection(h, spec.out_h, spec.r_v, 'cpu')
    cols = axis_projection(w, spec.out_w, spec.r_h, 'cpu')
    gen = torch.Generator().manual_seed(20260)  # a private generator: the caller's RNG stream is untouched
    f64 = torch.float64
    x = torch.randn(n, c_in, h, w, generator=gen, dtype=f64).to(dtype)
    table = (torch.randn(rows.phases.numel(), cols.phases.numel(), k, k, c_in, c_out, generator=gen, dtype=f64)
             / (k * c_in ** 0.5)).to(dtype)
    grad = torch.randn(n, c_out, spec.out_h, spec.out_w, generator=gen, dtype=f64).to(dtype)
    x_ref, table_ref = x.to(f64).requires_grad_(True), table.to(f64).requires_grad_(True)
    ref = phase_table_conv(x_ref, table_ref, rows, cols)
    refs = (ref,) + torch.autograd.grad(ref, (x_ref, table_ref), grad.to(f64))
    x_dev, table_dev = x.to(device).requires_grad_(True), table.to(device).requires_grad_(True)
    rows_dev = AxisProjection(*(t.to(device) for t in rows))
    cols_dev = AxisProjection(*(t.to(device) for t in cols))
    out = table_conv(x_dev, table_dev, rows_dev, cols_dev)
    gots = (out,) + torch.autograd.grad(out, (x_dev, table_dev), grad.to(device))
    errors = []
    for quantity, got, want in zip(('forward', 'grad_x', 'grad_table'), gots, refs):
        got = got.detach().to('cpu', f64)
        if got.shape != want.shape:
            raise RuntimeError(f'{quantity} has shape {tuple(got.shape)}, expected {tuple(want.shape)}')
        scale_ref = want.detach().abs().max().clamp_min(torch.finfo(f64).tiny)
        err = ((got - want.detach()).abs().max() / scale_ref).item()
        errors.append((quantity, err if err == err else float('inf')))  # NaN counts as a failure
    return errors


class _Mismatch(Exception):
    """A self-check result outside the tolerance (not a crash)."""


@torch.compiler.disable
def self_check(device: torch.device, dtype: torch.dtype = torch.float32) -> SelfCheckResult:
    """Compare the native op on ``device`` with the PyTorch phase path (forward and backward).

    Runs ``SELF_CHECK_CASES`` in ``dtype`` and in float32, on random inputs from a private generator,
    against ``phase_table_conv`` in float64 on the CPU, and requires every output and gradient within
    ``SELF_CHECK_TOL`` of the dtype. An exception (build failure, kernel error) is a failure too.
    The result is cached per (device, dtype) for the process; ``reset()`` forgets it. It takes a few
    tens of milliseconds once the extension is loaded (docs/native_op.md).

    Args:
        device: a CPU or CUDA device (the CPU runs the CPU build of the same kernels).
        dtype: float32, float64, float16 or bfloat16.

    Returns:
        SelfCheckResult with ``ok`` and ``detail``.
    """
    if dtype not in SELF_CHECK_TOL:
        raise ValueError(f'dtype must be one of {tuple(SELF_CHECK_TOL)}, got {dtype}')
    device = torch.device(device)
    key = (_device_key(device), dtype)
    with _lock:
        if key in _self_checks:
            return _self_checks[key]
        start = time.perf_counter()
        worst, failure, where = (0.0, ''), None, ''
        try:
            # the check itself must not inherit the caller's no_grad/inference/autocast state
            with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
                for dt in dict.fromkeys((dtype, torch.float32)):
                    for case in SELF_CHECK_CASES:
                        where = f'case {case[0]!r} in {str(dt).replace("torch.", "")}'
                        for quantity, err in _check_case(case, device, dt):
                            if not err <= SELF_CHECK_TOL[dt]:
                                raise _Mismatch(f'{quantity} differs from the PyTorch phase path by {err:.3g} x '
                                                f'max|reference| (tolerance {SELF_CHECK_TOL[dt]:g})')
                            if err > worst[0]:
                                worst = (err, f'{quantity}, {where}')
        except Exception as exc:  # any error means: do not trust the op here
            failure = str(exc) if isinstance(exc, _Mismatch) else f'{type(exc).__name__}: {exc}'
        seconds = time.perf_counter() - start
        if failure is None:
            detail = (f'{len(SELF_CHECK_CASES)} cases, forward and backward within tolerance; largest relative '
                      f'error {worst[0]:.2g} ({worst[1] or "-"})')
        else:
            detail = f'{where}: {failure.strip()}' if where else failure.strip()
        result = SelfCheckResult(failure is None, detail, key[0], dtype, seconds)
        _self_checks[key] = result
        return result


def trusted(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether ``impl='auto'`` may hand the native op ``dtype`` tensors on ``device``.

    The first time per (device, dtype) this runs ``self_check``. On a failure it warns once per device
    (the case, the error and the fallback) and returns False for that device from then on, so 'auto'
    uses the PyTorch path there for the rest of the process; with ``METASR_CUDA_EXT=1`` it raises
    instead. ``METASR_NATIVE_SELF_CHECK=0`` skips the check (always True).
    """
    device = torch.device(device)
    if torch.is_autocast_enabled(device.type):  # the op then runs in the autocast dtype (_common_dtype)
        dtype = torch.get_autocast_dtype(device.type)
    if not _self_check_enabled():
        return True
    if dtype not in SELF_CHECK_TOL:
        return False  # not a dtype the kernels support
    key = _device_key(device)
    with _lock:
        if key in _distrusted:
            return False
    result = self_check(device, dtype)
    if result.ok:
        return True
    if _switch() is True:
        raise RuntimeError(f'the native meta-upscale op failed its self-check on {key} ({ENV_SWITCH}=1 forbids '
                           f'the fallback): {result.detail}')
    with _lock:
        first = key not in _distrusted
        _distrusted[key] = result.detail
    if first:
        warnings.warn(f"metasr_arch: the native meta-upscale op failed its self-check on {key}: {result.detail}. "
                      f"Falling back: impl='auto' uses the PyTorch implementations on {key} for the rest of this "
                      f'process ({ENV_SWITCH}=1 makes this an error, {ENV_SELF_CHECK}=0 skips the check).',
                      RuntimeWarning, stacklevel=4)
    return False


def seed_loop(variant_module: Optional[ModuleType] = None) -> Tuple[object, object]:
    """(forward, backward) of the seed-style CUDA baseline kernel (benchmark only; float32, per-pixel
    weights (H, W, k, k, C_in, C_out), index maps ``row_lr``/``col_lr``)."""
    module = variant_module or load_extension('cuda')
    return module.seed_loop_forward, module.seed_loop_backward
