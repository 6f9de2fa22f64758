"""Upscaling NetCDF/Zarr inputs with a loaded network: normalise with the checkpoint's statistics, run
every selected time step, denormalise, write NetCDF with the output grid's coordinates and the input's
CF metadata. Reading and writing the files is ``metasr_arch.utils.gridded_io`` (conventions in its
docstring and docs/gridded.md); missing values are ``metasr_arch.utils.gridded_mask``.

One time step is ``prepare_step`` (read, normalise, fill the missing points), the network, then
``finish_step`` (missing points of the output set to NaN, rows back in the file's order); other
drivers (batched or streamed inference) call the same two functions.
"""
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from metasr_arch.archs.periodic import is_periodic_w
from metasr_arch.inference.runner import check_max_pixels, run_network
from metasr_arch.ops.geometry import resolve_scale
from metasr_arch.utils.gridded_io import GriddedSource, normalization_affine, output_grid, write_netcdf
from metasr_arch.utils.finite import NonFiniteError, nonfinite_summary
from metasr_arch.utils.gridded_mask import apply_mask, fill_missing, output_valid
from metasr_arch.utils.memory import format_bytes
from metasr_arch.utils.options import OptionError

# A NetCDF output is assembled in memory and written once (atomically); larger outputs go to Zarr, which
# is streamed chunk by chunk (metasr_arch.inference.archive, docs/gridded.md).
NETCDF_MAX_BYTES = 2 * 2**30

# how messages of the inference CLI name what the user typed
CLI_NAMES = {'time_slice': '--time', 'variables': '--var', 'lat_name': 'latitude coordinate',
             'lon_name': 'longitude coordinate'}


def check_periodic_request(net, src: GriddedSource, what: str = 'the network') -> None:
    """OptionError when a ``periodic_w`` network would wrap a grid whose longitudes do not close the circle."""
    if is_periodic_w(net) and not src.lon_periodic:
        raise OptionError(f'{what} was trained with periodic_w (longitude wraps around the globe) but '
                          f'{src.paths[0]} is a regional grid: its longitudes {src.lon[0]:g} .. {src.lon[-1]:g} '
                          f'({src.lon.size} columns) do not close the circle. Use a model trained without '
                          'periodic_w for regional grids.')


def prepare_step(src: GriddedSource, i: int, offset: np.ndarray, scale: np.ndarray,
                 fill: str = 'nearest') -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """The network's input for sample ``i`` of ``src``.

    Args:
        offset, scale: (C,) normalisation (``normalization_affine``): x_norm = (x - offset) / scale.
        fill: how missing points are filled (``gridded_mask.fill_missing``).

    Returns:
        x (C, h, w) float32, normalised, missing points filled, rows in the network's order;
        valid_in (C, h, w) bool (True = valid), or None when no point is missing.
    """
    field = src.field(i)
    valid = np.isfinite(field)
    x = (field.astype(np.float64) - offset[:, None, None]) / scale[:, None, None]
    if valid.all():
        return x.astype(np.float32), None
    return fill_missing(x, valid, fill), valid


def finish_step(y: np.ndarray, valid_in: Optional[np.ndarray], src: GriddedSource) -> np.ndarray:
    """The output of one step as written: missing where the nearest input point is missing.

    Args:
        y: (C, H, W) in physical units, rows in the network's order.
        valid_in: ``prepare_step``'s mask (None: nothing missing).

    Returns:
        (C, H, W) float32 with NaN at missing points (``gridded_mask.output_valid``), rows in the
        file's order.
    """
    valid = None if valid_in is None else output_valid(valid_in, y.shape[-2], y.shape[-1], src.lon_periodic)
    out = apply_mask(y, valid)
    return np.ascontiguousarray(out[:, ::-1]) if src.flip else out


def open_for_network(net, path: str, variables: Optional[Sequence[str]] = None, time_slice=None,
                     fill: str = 'nearest'):
    """The input as ``net`` reads it: (src, variables, offset (C,), scale (C,), fill).

    ``variables`` default to the checkpoint's (and must match them); ``fill`` is the checkpoint's when it
    records one; a periodic network on a regional grid is refused (``check_periodic_request``).
    """
    norm = getattr(net, 'metasr_normalization', None) or {}
    variables = list(variables or norm.get('variables') or [])
    if not variables:
        raise OptionError('--var is required: the checkpoint records no variables (it was not trained on '
                          'MetaSRXarrayDataset)')
    if norm.get('variables') and list(norm['variables']) != variables:
        raise OptionError(f'--var {" ".join(variables)} differs from the variables the network was trained on, '
                          f'{" ".join(norm["variables"])} (same names, same order)')
    fill = norm.get('fill', fill)  # as in training (a checkpoint records a fill other than nearest)
    src = GriddedSource(path, variables, time_slice, option='input', names=CLI_NAMES)
    check_periodic_request(net, src)
    offset, scale = normalization_affine(norm) if norm else (np.zeros(len(variables)), np.ones(len(variables)))
    return src, variables, offset, scale, fill


def upscale_gridded(net, path: str, request, device, out_path: str, variables: Optional[Sequence[str]] = None,
                    time_slice=None, tile: Optional[int] = None, tile_overlap: int = 0, fp16: bool = False,
                    bf16: bool = False, max_pixels: Optional[int] = None, fill: str = 'nearest') -> str:
    """Upscale the chosen variables and time steps of one NetCDF/Zarr input and write them as NetCDF.

    Inputs are normalised with the checkpoint's ``normalization`` (``net.metasr_normalization``, recorded by
    MetaSRModel) and outputs denormalised, so both are in physical units. The network sees rows north
    up; output rows keep the input's order. Coordinates and metadata follow ``gridded_io``; missing
    input points are filled for the network and the output is missing where the nearest input point is.
    Outputs above ``NETCDF_MAX_BYTES`` are refused (ValueError): write Zarr (``inference.archive``),
    which is streamed.

    Args:
        request: ('scale', (r_v, r_h)) or ('size', (H, W)) as ``naming.parse_*_text`` give.
        variables: channels in the network's order (default: the checkpoint's normalisation variables).
        time_slice: as ``gridded_io.parse_time_arg`` makes from ``--time``.
        max_pixels: refuse (ValueError) an output of more H*W pixels (the CLI's ``--max-pixels``).
        fill: how missing input points are filled, unless the checkpoint's normalisation records ``fill``.
    Returns:
        ``out_path``.
    """
    src, variables, offset, scale, fill = open_for_network(net, path, variables, time_slice, fill)
    kind, value = request
    spec = resolve_scale(len(src.lat), len(src.lon), value if kind == 'scale' else None,
                         value if kind == 'size' else None)
    size = 4 * len(src) * len(variables) * spec.out_h * spec.out_w
    if size > NETCDF_MAX_BYTES:
        raise ValueError(f'a NetCDF output of {len(src)} step(s) at {spec.out_h}x{spec.out_w} is '
                         f'{format_bytes(size)}, more than the {format_bytes(NETCDF_MAX_BYTES)} written in one '
                         'piece: write a Zarr store instead (-o OUT.zarr, or an output folder), which is streamed')
    outs = []
    for i in range(len(src)):
        x, valid_in = prepare_step(src, i, offset, scale, fill)
        if i == 0:  # every time step has the same grid
            check_max_pixels(x.shape, request, max_pixels)
        x = torch.from_numpy(x)[None].to(device)
        y = run_network(net, x, value if kind == 'scale' else None, value if kind == 'size' else None, tile,
                        tile_overlap, fp16, bf16)[0]
        summary = nonfinite_summary(y)  # the Zarr path refuses the same (archive.compute_chunk)
        if summary:
            raise NonFiniteError(f'the network gave {summary} for time step {i}; {out_path} is not written')
        y = y.cpu().numpy().astype(np.float64)
        outs.append(finish_step(y * scale[:, None, None] + offset[:, None, None], valid_in, src))
    fields = np.stack(outs)
    out_lat, out_lon = output_grid(src, fields.shape[-2], fields.shape[-1])
    has_time = src.time_value(0) is not None
    write_netcdf(out_path, src, variables, fields if has_time else fields[0], out_lat, out_lon)
    return out_path
