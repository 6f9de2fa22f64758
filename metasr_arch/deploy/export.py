"""Writing a frozen Meta-SR network (``frozen.FixedRequestSR``) as an ONNX model, a TorchScript module or a
``torch.export`` program, and checking the written file against the PyTorch network.

Shapes are static: the batch size, the input size (h, w) and hence the output size are fixed at export
time. (BasicSR's SwinIR blocks compute the batch size with Python ``int()`` from tensor shapes, which
tracing freezes, so a dynamic batch axis would silently mix images; a static one is always right.)
"""
import errno
import io
import os
import tempfile
from pathlib import Path
from typing import Callable, List, NamedTuple, Optional, Tuple

import numpy as np
import torch
from torch import nn

from metasr_arch.inference.checkpoint import network_channels
from metasr_arch.inference.runner import run_network
from metasr_arch.utils.naming import Request
from metasr_arch.utils.resize import imresize_np

FORMATS = ('onnx', 'torchscript', 'exported')
SUFFIXES = {'onnx': '.onnx', 'torchscript': '.pt', 'exported': '.pt2'}
ONNX_EXPORTERS = ('torchscript', 'dynamo')
DEFAULT_OPSET = 18
# --check passes when max |exported - PyTorch| <= CHECK_RTOL * max(1, max |PyTorch|)
CHECK_RTOL = 1e-4
INPUT_NAME, OUTPUT_NAME = 'lr', 'sr'


def opset_range() -> Tuple[int, int]:
    """(lowest, highest) ONNX opset this torch exports; below 7 ONNX Runtime cannot run the graph."""
    try:
        from torch.onnx import _constants
        return max(7, _constants.ONNX_MIN_OPSET), _constants.ONNX_MAX_OPSET
    except (ImportError, AttributeError):  # private module: the values of torch 2.14
        return 7, 23


def check_opset(opset) -> int:
    """Return ``opset`` when torch exports it (``opset_range``), else raise ValueError naming ``--opset``."""
    lo, hi = opset_range()
    if isinstance(opset, bool) or not isinstance(opset, int) or not lo <= opset <= hi:
        raise ValueError(f'--opset {opset!r}: torch {torch.__version__} exports ONNX opsets {lo} to {hi}')
    return opset


class OutputFileError(ValueError):
    """An export output that cannot or may not be written: a folder, an existing file, a read-only
    folder, a full disk. The message names the path."""


def check_output_path(path: Path, overwrite: bool = False) -> None:
    """Refuse, before any work, an output that is a folder, exists without ``overwrite``, or whose folder
    cannot be created or written (a probe file is created and removed there).

    Raises:
        OutputFileError naming ``path``.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputFileError(f'-o {path}: is a folder; give a file name (e.g. {path / "model"}{path.suffix})')
    if path.exists() and not overwrite:
        raise OutputFileError(f'-o {path}: exists; pass --overwrite to replace it')
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as err:
        raise OutputFileError(f'-o {path}: cannot write in {path.parent} ({err.strerror or err})') from None


def _io_failure(err: BaseException) -> Optional[str]:
    """The reason of an exporter's failure to write its file, or None for any other failure.

    ``torch.jit.save``/``torch.export.save`` report file errors as RuntimeError from C++ with the
    system's message (``open file failed with strerror: ...``, ``file write failed``)."""
    if isinstance(err, OSError):
        return err.strerror or str(err)
    text = str(err)
    for marker in ('strerror:', 'file write failed', 'No space left on device', 'Read-only file system',
                   'Permission denied'):
        if marker in text:
            tail = text.split(marker, 1)[1].strip().splitlines()[0] if marker == 'strerror:' else marker
            return tail.strip(' .') or marker
    return None


def _tmp_path(path: Path) -> Path:
    # the suffix is kept: the exporters and loaders look at it
    return path.with_name(f'.{path.stem}.{os.getpid()}.tmp{path.suffix}')


def write_export(model: nn.Module, path: Path, fmt: str, example: torch.Tensor, onnx_exporter: str = 'torchscript',
                 opset: int = DEFAULT_OPSET) -> None:
    """Write ``model`` (called on ``example`` (N, C, h, w)) to ``path`` in ``fmt`` (one of ``FORMATS``).

    ``onnx_exporter``: 'torchscript' (``torch.onnx.export(dynamo=False)``, no extra dependency) or
    'dynamo' (``dynamo=True``, needs onnxscript). Both give the same graph numerically (tested).
    """
    if fmt not in FORMATS:
        raise ValueError(f'--format must be one of {FORMATS}, got {fmt!r}')
    model = model.eval()
    with torch.no_grad():
        if fmt == 'onnx':
            if onnx_exporter not in ONNX_EXPORTERS:
                raise ValueError(f'--onnx-exporter must be one of {ONNX_EXPORTERS}, got {onnx_exporter!r}')
            import warnings
            with warnings.catch_warnings():  # the legacy exporter announces its deprecation on every call
                warnings.simplefilter('ignore', DeprecationWarning)
                torch.onnx.export(model, (example,), str(path), dynamo=onnx_exporter == 'dynamo',
                                  input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=opset,
                                  **({'verbose': False} if onnx_exporter == 'dynamo' else {}))
        elif fmt == 'torchscript':
            import warnings
            with warnings.catch_warnings():
                warnings.simplefilter('ignore', FutureWarning)  # torch.jit.trace is deprecated but still shipped
                traced = torch.jit.trace(model, (example,), check_trace=False)
            # saved in memory, then written: torch's C++ writer aborts the process on a full disk
            buf = io.BytesIO()
            torch.jit.save(traced, buf)
            Path(path).write_bytes(buf.getvalue())
        else:
            buf = io.BytesIO()
            torch.export.save(torch.export.export(model, (example,)), buf)
            Path(path).write_bytes(buf.getvalue())


def load_runner(path: Path, fmt: str) -> Callable[[np.ndarray], np.ndarray]:
    """A function running the exported file on a float32 array (N, C, h, w): ONNX Runtime on the CPU for
    ONNX, ``torch.jit.load`` / ``torch.export.load`` for the others."""
    if fmt == 'onnx':
        import onnxruntime as ort
        session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
        return lambda x: session.run(None, {INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)})[0]
    if fmt == 'torchscript':
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', FutureWarning)  # deprecated, still shipped
            module = torch.jit.load(str(path), map_location='cpu')
    else:
        module = torch.export.load(str(path)).module()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()
    return run


def check_inputs(shape: Tuple[int, int, int, int], seed: int = 0) -> List[Tuple[str, np.ndarray]]:
    """Named float32 inputs of ``shape`` (N, C, h, w): uniform noise in [0, 1) and a photograph.

    The photograph is scikit-image's ``astronaut`` (RGB) or ``camera`` (grey, repeated over C != 3
    channels), resized with MATLAB bicubic to (h, w): real image statistics, smooth areas and edges.
    """
    from skimage import data
    n, c, h, w = shape
    rng = np.random.default_rng(seed)
    photo = data.astronaut() if c == 3 else data.camera()
    img = imresize_np(photo.astype(np.float32) / 255., (h, w))
    img = img.transpose(2, 0, 1) if img.ndim == 3 else np.repeat(img[None], c, axis=0)
    return [('random', rng.random(shape, dtype=np.float32)),
            ('photo', np.repeat(img[None], n, axis=0).astype(np.float32))]


class CheckResult(NamedTuple):
    """One comparison: input name, max |exported - PyTorch|, the allowed error and whether it passed."""
    name: str
    max_error: float
    tolerance: float
    passed: bool


def reference_output(net: nn.Module, x: np.ndarray, request: Request) -> np.ndarray:
    """The PyTorch network's own output (weights predicted by Pos2Weight, bicubic skip as ``load_network`` set it)."""
    kind, value = request
    scale, out_size = (value, None) if kind == 'scale' else (None, value)
    return run_network(net, torch.from_numpy(x), scale, out_size).numpy()


def check_export(net: nn.Module, runner: Callable[[np.ndarray], np.ndarray], request: Request,
                 shape: Tuple[int, int, int, int]) -> List[CheckResult]:
    """Compare ``runner`` with ``net`` at ``request`` on ``check_inputs(shape)`` (tolerance ``CHECK_RTOL``)."""
    results = []
    for name, x in check_inputs(shape):
        ref = reference_output(net, x, request)
        out = runner(x)
        if out.shape != ref.shape:
            results.append(CheckResult(name, float('inf'), 0.0, False))
            continue
        err = float(np.abs(out.astype(np.float64) - ref).max())
        tol = CHECK_RTOL * max(1.0, float(np.abs(ref).max()))
        results.append(CheckResult(name, err, tol, err <= tol))
    return results


def export_checked(net: nn.Module, model: nn.Module, path: Path, fmt: str, request: Request, batch: int,
                   check: bool = True, onnx_exporter: str = 'torchscript',
                   opset: int = DEFAULT_OPSET) -> Optional[List[CheckResult]]:
    """Export ``model`` (``net`` frozen at ``request``) to ``path``; with ``check``, compare first.

    The file is written under a temporary name and renamed into place only when the check passes (or
    is off), so a failing export never sits under the requested name.

    Returns:
        the check results (None without ``check``).
    Raises:
        RuntimeError naming the failed comparisons; OutputFileError naming ``path`` when it cannot be
        written (full disk, read-only folder); ValueError for an opset outside ``opset_range``.
    """
    path = Path(path)
    if fmt == 'onnx':
        check_opset(opset)
    h, w = model.in_size
    shape = (batch, network_channels(model.net), h, w)
    tmp = _tmp_path(path)
    try:
        try:
            write_export(model, tmp, fmt, torch.zeros(shape), onnx_exporter, opset)
        except (OSError, RuntimeError) as err:
            reason = _io_failure(err)
            if reason is None:
                raise
            raise OutputFileError(f'-o {path}: cannot write ({reason})') from None
        results = None
        if check:
            results = check_export(net, load_runner(tmp, fmt), request, shape)
            failed = [r for r in results if not r.passed]
            if failed:
                raise RuntimeError(f'{path}: the exported model differs from the PyTorch network: ' + '; '.join(
                    f'{r.name} input: max error {r.max_error:.3g} > {r.tolerance:.3g}' for r in failed))
        try:
            os.replace(tmp, path)
        except OSError as err:
            raise OutputFileError(f'-o {path}: cannot write ({err.strerror or err})') from None
        return results
    finally:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        except OSError as err:  # a read-only folder: nothing was written there anyway
            if err.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise

