"""Upscaling NetCDF/Zarr inputs with a loaded network: normalise with the checkpoint's statistics, run
every selected time step, denormalise, write NetCDF with the output grid's coordinates. Reading and
writing the files is ``metasr_arch.utils.gridded_io`` (conventions in its docstring and docs/gridded.md).
"""
from typing import Optional, Sequence

import numpy as np
import torch

from metasr_arch.inference.runner import check_max_pixels, run_network
from metasr_arch.utils.gridded_io import GriddedSource, normalization_affine, output_coords, write_netcdf


def upscale_gridded(net, path: str, request, device, out_path: str, variables: Optional[Sequence[str]] = None,
                    time_slice=None, tile: Optional[int] = None, tile_overlap: int = 0, fp16: bool = False,
                    bf16: bool = False, max_pixels: Optional[int] = None) -> str:
    """Upscale the chosen variables and time steps of one NetCDF/Zarr input and write them as NetCDF.

    Inputs are normalised with the checkpoint's ``normalization`` (``net.metasr_normalization``, recorded by
    MetaSRModel) and outputs denormalised, so both are in physical units. The network sees rows north
    up; output rows keep the input's order. Coordinates follow the module docstring; the variables' and
    coordinates' attributes and the global attributes are copied.

    Args:
        request: ('scale', (r_v, r_h)) or ('size', (H, W)) as ``naming.parse_*_text`` give.
        variables: channels in the network's order (default: the checkpoint's normalisation variables).
        max_pixels: refuse (ValueError) an output of more H*W pixels (the CLI's ``--max-pixels``).
    Returns:
        ``out_path``.
    """
    norm = getattr(net, 'metasr_normalization', None) or {}
    variables = list(variables or norm.get('variables') or [])
    if not variables:
        raise ValueError('--var is required: the checkpoint records no variables (it was not trained on '
                         'MetaSRXarrayDataset)')
    if norm.get('variables') and list(norm['variables']) != variables:
        raise ValueError(f'--var {variables} differs from the variables the network was trained on, '
                         f'{norm["variables"]} (same names, same order)')
    src = GriddedSource(path, variables, time_slice, option='input')
    offset, scale = normalization_affine(norm) if norm else (np.zeros(len(variables)), np.ones(len(variables)))
    kind, value = request
    outs = []
    for i in range(len(src)):
        x = (src.field(i) - offset[:, None, None]) / scale[:, None, None]
        if i == 0:  # every time step has the same grid
            check_max_pixels(x.shape, request, max_pixels)
        x = torch.from_numpy(x.astype(np.float32))[None].to(device)
        y = run_network(net, x, value if kind == 'scale' else None, value if kind == 'size' else None, tile,
                        tile_overlap, fp16, bf16)[0].cpu().numpy().astype(np.float64)
        y = y * scale[:, None, None] + offset[:, None, None]
        outs.append((y[:, ::-1] if src.flip else y).astype(np.float32))
    fields = np.stack(outs)
    out_lat, out_lon = output_coords(src.lat, src.lon, fields.shape[-2], fields.shape[-1])
    ds = src.datasets[0]
    times = [src.time_value(i) for i in range(len(src))]
    write_netcdf(out_path, fields, variables, out_lat[::-1] if src.flip else out_lat, out_lon, src.lat_name,
                 src.lon_name, None if times[0] is None else np.asarray(times), attrs=ds.attrs,
                 var_attrs={v: ds[v].attrs for v in variables},
                 coord_attrs={c: ds[c].attrs for c in (src.lat_name, src.lon_name) if c in ds.coords})
    return out_path
