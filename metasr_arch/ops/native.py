"""Glue to the native (C++/CUDA) meta-upscale kernels in ``ops/meta_upscale``.

The kernels are built by a later issue; until then this module reports them as unavailable and
every caller falls back to the PyTorch implementations.
"""
import torch

from .geometry import AxisProjection


def unavailable_reason(device: torch.device) -> str:
    """Why the native op cannot run on ``device`` (human-readable)."""
    return 'the native meta_upscale extension is not part of this build'


def table_conv(x: torch.Tensor, table: torch.Tensor, rows: AxisProjection, cols: AxisProjection) -> torch.Tensor:
    """Native evaluation of ``phase_table_conv`` (same arguments and result)."""
    raise RuntimeError(unavailable_reason(x.device))
