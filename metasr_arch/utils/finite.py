"""Finite-value checks: inputs, outputs and weights with NaN or inf are refused by name, never run silently.

One NaN in an input spreads through the trunk's convolutions to the whole output, and a NaN weight
makes every output NaN (an all-black PNG once clipped and rounded); both used to be written with exit
status 0. Gridded NetCDF/Zarr fields are not checked here: their masked cells are missing values by
design (``metasr_arch.inference.gridded``).
"""
from typing import Mapping

import numpy as np
import torch

NAN_POLICIES = ('error', 'propagate')


class NonFiniteError(ValueError):
    """An input, output or weight tensor holds NaN or inf values."""


def nonfinite_summary(t: torch.Tensor) -> str:
    """'' for an all-finite (or non-float) tensor, else e.g. '3 NaN and 1 inf of 4096 values, first at (0, 5, 7)'."""
    if not (t.is_floating_point() or t.is_complex()):
        return ''
    bad = ~torch.isfinite(t)
    count = int(bad.sum())
    if not count:
        return ''
    nan = int(torch.isnan(t).sum())
    # argmax of the mask is the first bad value (nonzero() would list all of them)
    index = int(bad.flatten().to(torch.uint8).argmax())
    first = tuple(int(i) for i in np.unravel_index(index, tuple(t.shape))) if t.dim() else ()
    return f'{nan} NaN and {count - nan} inf of {t.numel()} values, first at {first}'


def check_finite(t: torch.Tensor, what: str) -> torch.Tensor:
    """Return ``t`` when every value is finite, else raise ``NonFiniteError`` naming ``what``.

    Args:
        t: any shape.
        what: e.g. ``input a.npy`` or ``output of a.npy [X2.00]``.
    """
    summary = nonfinite_summary(t)
    if summary:
        raise NonFiniteError(f'{what} has {summary}')
    return t


def check_finite_state(state: Mapping[str, torch.Tensor], source: str) -> None:
    """Refuse a state dict with a non-finite tensor, naming the first such tensor (``NonFiniteError``).

    Args:
        state: name -> tensor.
        source: e.g. ``--ckpt net.pth [params_ema]``.
    """
    for name, t in state.items():
        summary = nonfinite_summary(t) if isinstance(t, torch.Tensor) else ''
        if summary:
            raise NonFiniteError(f'{source}: weight {name!r} has {summary}; refused (a diverged training '
                                 'or a damaged file)')
