"""The ``--compile onnxruntime`` fast path: the network frozen at one request and input size
(``deploy.frozen.freeze``), exported to ONNX by the export package's own writer (``deploy.export.write_export``)
into a temporary file, and run by an ONNX Runtime session. One session per (network, request, input size,
batch, device): the ONNX graph has static shapes, so the caller fixes the batch (``archive.Forward`` pads a
short last batch). The first batch is compared with the eager network (``runner.run_network``) on its first
item, so a graph that differs is refused before anything is written.
"""
import os
import tempfile
import warnings
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import torch

from metasr_arch.utils.naming import Request

FLAG = '--compile onnxruntime'
# the first batch must match the eager network within this share of its output range (issue 22's 1e-4)
VERIFY_RTOL = 1e-4
_CACHE: Dict = {}


class OnnxRuntimeMissingError(ImportError):
    """``--compile onnxruntime`` without the onnxruntime package (or without torch's ONNX exporter's ``onnx``)."""


def require_onnxruntime():
    """The ``onnxruntime`` module, or OnnxRuntimeMissingError saying how to install it."""
    missing = []
    for name in ('onnxruntime', 'onnx'):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise OnnxRuntimeMissingError(
            f'{FLAG} needs the {" and ".join(missing)} package(s): pip install -c constraints.txt -e ".[deploy]" '
            '(or use --compile torch)')
    import onnxruntime
    return onnxruntime


def session_options(threads: Optional[int] = None):
    """ONNX Runtime session options using ``threads`` intra-op threads (default: ``torch.get_num_threads()``,
    which a Dask worker of ``--dask local:N`` sets to its share of the cores), one inter-op thread."""
    ort = require_onnxruntime()
    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, int(threads or torch.get_num_threads()))
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return so


def providers_for(device) -> list:
    """ONNX Runtime execution providers for a torch ``device``: the CPU's, or CUDA's where onnxruntime-gpu
    has it (ValueError naming ``--device`` otherwise)."""
    ort = require_onnxruntime()
    device = torch.device(device)
    if device.type == 'cpu':
        return ['CPUExecutionProvider']
    if device.type == 'cuda' and 'CUDAExecutionProvider' in ort.get_available_providers():
        return [('CUDAExecutionProvider', {'device_id': device.index or 0}), 'CPUExecutionProvider']
    raise ValueError(f'{FLAG} --device {device}: this onnxruntime has no execution provider for it (available: '
                     f'{", ".join(ort.get_available_providers())}); install onnxruntime-gpu or use --compile torch')


def build_session(net, request: Request, in_hw: Tuple[int, int], batch: int, device='cpu',
                  threads: Optional[int] = None):
    """An ONNX Runtime session running ``net`` frozen at ``request`` on (batch, C, h, w) float32 inputs.

    The ONNX file lives in a temporary folder only while the session is created (the session keeps the
    graph in memory).

    Raises:
        OnnxRuntimeMissingError; ValueError naming ``--compile onnxruntime`` when ``freeze`` cannot take the
        network or the request (not a Meta-SR network, phases that repeat along neither axis of a large input).
    """
    ort = require_onnxruntime()
    from metasr_arch.deploy.export import write_export
    from metasr_arch.deploy.frozen import freeze
    from metasr_arch.inference.checkpoint import network_channels
    try:
        model = freeze(net, request, tuple(in_hw))
    except ValueError as err:
        raise ValueError(f'{FLAG}: {err}') from err
    example = torch.zeros((batch, network_channels(net)) + tuple(in_hw))
    with tempfile.TemporaryDirectory(prefix='metasr_onnx_') as tmp:
        path = os.path.join(tmp, 'frozen.onnx')
        with warnings.catch_warnings():  # the tracer's notes on constant folding are no news to a CLI user
            warnings.simplefilter('ignore', UserWarning)
            warnings.simplefilter('ignore', torch.jit.TracerWarning)
            write_export(model, path, 'onnx', example)
        return ort.InferenceSession(path, session_options(threads), providers=providers_for(device))


def onnx_frozen(net, request: Request, in_hw: Tuple[int, int], batch: int, device='cpu',
                threads: Optional[int] = None, verify: bool = True) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x (batch, C, h, w) float32 -> (batch, C_out, H, W) float32`` (on ``x``'s device) for ``net`` at
    ``request`` on (h, w) inputs, run by ONNX Runtime; built once per (network, request, size, batch, device).

    With ``verify``, the first call also runs the eager network on the first item and raises RuntimeError
    when they differ by more than ``VERIFY_RTOL`` of the eager output's range.

    Raises:
        OnnxRuntimeMissingError, ValueError (see ``build_session``).
    """
    key = (id(net), request, tuple(in_hw), int(batch), str(torch.device(device)), threads)
    if key in _CACHE and _CACHE[key][0] is net:
        return _CACHE[key][1]
    session = build_session(net, request, in_hw, batch, device, threads)
    name = session.get_inputs()[0].name
    state = {'verified': not verify}

    def run(x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[:1] + x.shape[2:]) != (batch,) + tuple(in_hw):
            raise ValueError(f'{FLAG}: the session takes ({batch}, C, {in_hw[0]}, {in_hw[1]}) inputs, got '
                             f'{tuple(x.shape)}')
        y = torch.from_numpy(session.run(None, {name: np.ascontiguousarray(x.detach().float().cpu().numpy())})[0])
        if not state['verified']:
            _verify(net, request, x[:1], y[:1])
            state['verified'] = True
        return y.to(x.device)

    _CACHE[key] = (net, run)
    return run


def _verify(net, request: Request, x: torch.Tensor, y: torch.Tensor) -> None:
    from metasr_arch.inference.runner import run_network
    kind, value = request
    ref = run_network(net, x, *((value, None) if kind == 'scale' else (None, value))).cpu()
    err = float((y - ref).abs().max())
    tol = VERIFY_RTOL * max(float(ref.max() - ref.min()), 1e-12)
    if not err <= tol:  # also refuses NaN
        raise RuntimeError(f'{FLAG}: the ONNX Runtime output differs from the eager network by {err:.3g} '
                           f'(> {VERIFY_RTOL:g} of the output range, {tol:.3g}); use --compile torch or no --compile')
