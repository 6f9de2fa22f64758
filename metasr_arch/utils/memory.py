"""Refusing requests that cannot fit in memory before anything is allocated.

Any scale or exact size is valid for the operator, so ``--size 100000x100000`` or ``--scale 1e6`` is
well-formed, but it would run for minutes and fill the machine's memory before the allocator fails.
``check_request`` compares a lower bound of what a forward at that output size needs with a limit:

* ``METASR_MEMORY_LIMIT`` (bytes, or with a unit: ``512M``, ``8G``, ``1.5GiB``; ``0`` or ``off``
  disables the check) when set;
* else, on CUDA, the device's free memory plus what torch's allocator holds but does not use;
* else (CPU) the machine's physical memory (``os.sysconf``), a bound a request can never exceed
  without swapping; on platforms without it the check is skipped.
"""
import os
import re
from typing import Optional, Tuple, Union

import torch

ENV_LIMIT = 'METASR_MEMORY_LIMIT'
# Estimates below this are accepted without asking the machine: the check runs on every forward (each
# training iteration), and on CUDA asking means driver calls; a request this small is not the kind
# the check exists for. An explicit METASR_MEMORY_LIMIT is always applied.
QUERY_FLOOR_BYTES = 256 * 2**20
_UNITS = {'': 1, 'b': 1, 'k': 10**3, 'kb': 10**3, 'kib': 2**10, 'm': 10**6, 'mb': 10**6, 'mib': 2**20,
          'g': 10**9, 'gb': 10**9, 'gib': 2**30, 't': 10**12, 'tb': 10**12, 'tib': 2**40}


class RequestTooLargeError(ValueError):
    """A forward whose estimated memory exceeds the limit; the message gives estimate, limit and remedies."""


def parse_bytes(text: str, name: str = ENV_LIMIT) -> int:
    """``'8G'`` -> 8e9, ``'1.5GiB'`` -> 1.5 * 2**30, ``'123'`` -> 123 (ValueError naming ``name`` otherwise)."""
    match = re.fullmatch(r'\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([a-zA-Z]*)\s*', str(text))
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f'{name}={text!r} is not a byte count (e.g. 8000000000, 512M, 8G, 1.5GiB)')
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def format_bytes(n: float) -> str:
    """``2.5e9`` -> ``'2.33 GiB'``."""
    for unit, size in (('TiB', 2**40), ('GiB', 2**30), ('MiB', 2**20), ('KiB', 2**10)):
        if n >= size:
            return f'{n / size:.3g} {unit}'
    return f'{int(n)} B'


def memory_limit(device: Union[str, torch.device] = 'cpu') -> Tuple[Optional[int], str]:
    """(limit in bytes or None for no check, where the limit comes from) for ``device``."""
    env = os.environ.get(ENV_LIMIT, '').strip()
    if env:
        if env.lower() in ('0', 'off', 'none'):
            return None, f'{ENV_LIMIT}={env}'
        return parse_bytes(env), f'{ENV_LIMIT}={env}'
    device = torch.device(device)
    if device.type == 'cuda':
        free, _ = torch.cuda.mem_get_info(device)
        spare = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return free + spare, f'free memory of {device}'
    try:
        return os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE'), 'physical memory'
    except (AttributeError, ValueError, OSError):
        return None, 'unknown (no check)'


def head_bytes(n: int, c_in: int, c_out: int, in_h: int, in_w: int, out_h: int, out_w: int, kernel_size: int,
               element_size: int = 4, output_copies: int = 2) -> int:
    """Lower bound of the memory a Meta-SR forward needs at one output size.

    In a network the head's output (N, C_out, H, W) exists twice (the head's result and the network's
    mean-shifted copy; ``output_copies=1`` for the head alone), and every implementation reads the
    unfolded features (N, C_in*k*k, h, w). Python ints, so absurd sizes do not overflow.
    """
    return element_size * (output_copies * n * c_out * out_h * out_w
                           + n * c_in * kernel_size * kernel_size * in_h * in_w)


def check_request(n: int, c_in: int, c_out: int, in_h: int, in_w: int, out_h: int, out_w: int,
                  kernel_size: int = 3, element_size: int = 4, device: Union[str, torch.device] = 'cpu',
                  limit: Optional[int] = None, what: str = 'request', output_copies: int = 2) -> int:
    """Raise ``RequestTooLargeError`` when ``head_bytes(...)`` exceeds the memory limit of ``device``.

    Args:
        limit: bytes; default ``memory_limit(device)``.
        what: names the request in the message (e.g. ``'scale (2, 2) on 3x64x64'``).
    Returns:
        the estimate in bytes.
    """
    estimate = head_bytes(n, c_in, c_out, in_h, in_w, out_h, out_w, kernel_size, element_size, output_copies)
    source = 'argument'
    if limit is None:
        if estimate < QUERY_FLOOR_BYTES and not os.environ.get(ENV_LIMIT, '').strip():
            return estimate
        limit, source = memory_limit(device)
    if limit is not None and estimate > limit:
        pixels = out_h * out_w
        raise RequestTooLargeError(
            f'{what}: an output of {out_h}x{out_w} ({pixels:.3g} pixels, batch {n}, {c_out} channels) needs at '
            f'least {format_bytes(estimate)}, more than the limit of {format_bytes(limit)} ({source}). Ask for '
            f'a smaller scale or size, or split the input into parts; tiling (--tile) bounds the trunk, not '
            f'the output. If you know it fits, raise the limit with {ENV_LIMIT}=<bytes> (e.g. 64G).')
    return estimate

