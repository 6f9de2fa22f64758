"""Upscaling NetCDF/Zarr inputs with a loaded network: normalise with the checkpoint's statistics, run
every selected time step, denormalise, write NetCDF with the output grid's coordinates. Reading and
writing the files is ``metasr_arch.utils.gridded_io`` (conventions in its docstring and docs/gridded.md).
The per-step work (``prepare_step``, ``finish_step``) is shared with the streamed Zarr writer
(``metasr_arch.inference.archive``).
"""
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from metasr_arch.inference.runner import check_max_pixels, run_network
from metasr_arch.utils.gridded_io import GriddedSource, normalization_affine, output_coords, save_netcdf, output_dataset
from metasr_arch.utils.memory import format_bytes

# A NetCDF output is assembled in memory and written once (atomically); larger outputs go to Zarr,
# which is streamed chunk by chunk (docs/gridded.md).
NETCDF_MAX_BYTES = 2 * 2**30


def network_variables(net, variables: Optional[Sequence[str]]) -> list:
    """The channels to read: ``variables`` or the checkpoint's, checked against the trained order."""
    norm = getattr(net, 'metasr_normalization', None) or {}
    variables = list(variables or norm.get('variables') or [])
    if not variables:
        raise ValueError('--var is required: the checkpoint records no variables (it was not trained on '
                         'MetaSRXarrayDataset)')
    if norm.get('variables') and list(norm['variables']) != variables:
        raise ValueError(f'--var {variables} differs from the variables the network was trained on, '
                         f'{norm["variables"]} (same names, same order)')
    return variables


def affine_for(net, n_vars: int) -> Tuple[np.ndarray, np.ndarray]:
    """(offset, scale) (C,) float64 of the checkpoint's normalisation (identity without one)."""
    norm = getattr(net, 'metasr_normalization', None) or {}
    return normalization_affine(norm) if norm else (np.zeros(n_vars), np.ones(n_vars))


def prepare_step(src: GriddedSource, i: int, offset: np.ndarray, scale: np.ndarray) -> Tuple[np.ndarray, None]:
    """Step ``i`` of ``src`` as the network takes it: (x (C, h, w) float32 normalised, valid mask or None)."""
    x = (src.field(i) - offset[:, None, None]) / scale[:, None, None]
    return x.astype(np.float32), None


def finish_step(y: np.ndarray, valid_in, flip: bool) -> np.ndarray:
    """(C, H, W) output in physical units -> float32 in the input's row order (``valid_in``: no mask yet)."""
    return np.ascontiguousarray((y[:, ::-1] if flip else y), dtype=np.float32)


def denormalise(y: torch.Tensor, offset: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """(N, C, H, W) network output -> float64 numpy in physical units."""
    y = y.cpu().numpy().astype(np.float64)
    return y * scale[:, None, None] + offset[:, None, None]


def upscale_gridded(net, path: str, request, device, out_path: str, variables: Optional[Sequence[str]] = None,
                    time_slice=None, tile: Optional[int] = None, tile_overlap: int = 0, fp16: bool = False,
                    bf16: bool = False, max_pixels: Optional[int] = None) -> str:
    """Upscale the chosen variables and time steps of one NetCDF/Zarr input and write them as NetCDF.

    Inputs are normalised with the checkpoint's ``normalization`` (``net.metasr_normalization``, recorded by
    MetaSRModel) and outputs denormalised, so both are in physical units. The network sees rows north
    up; output rows keep the input's order. Coordinates follow the module docstring; the variables' and
    coordinates' attributes and the global attributes are copied. Outputs above ``NETCDF_MAX_BYTES``
    are refused (ValueError): write Zarr (``metasr_arch.inference.archive``), which is streamed.

    Args:
        request: ('scale', (r_v, r_h)) or ('size', (H, W)) as ``naming.parse_*_text`` give.
        variables: channels in the network's order (default: the checkpoint's normalisation variables).
        max_pixels: refuse (ValueError) an output of more H*W pixels (the CLI's ``--max-pixels``).
    Returns:
        ``out_path``.
    """
    from metasr_arch.ops.geometry import resolve_scale
    variables = network_variables(net, variables)
    src = GriddedSource(path, variables, time_slice, option='input')
    offset, scale = affine_for(net, len(variables))
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
        x, valid = prepare_step(src, i, offset, scale)
        if i == 0:  # every time step has the same grid
            check_max_pixels(x.shape, request, max_pixels)
        y = run_network(net, torch.from_numpy(x)[None].to(device), value if kind == 'scale' else None,
                        value if kind == 'size' else None, tile, tile_overlap, fp16, bf16)
        outs.append(finish_step(denormalise(y, offset, scale)[0], valid, src.flip))
    fields = np.stack(outs)
    out_lat, out_lon = output_coords(src.lat, src.lon, fields.shape[-2], fields.shape[-1])
    times = [src.time_value(i) for i in range(len(src))]
    save_netcdf(output_dataset(src, variables, fields, out_lat, out_lon, None if times[0] is None else times),
                out_path)
    return out_path
