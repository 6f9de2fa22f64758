"""Reading and writing the inference inputs and outputs: 8/16-bit images (grey, RGB, RGBA) and
``.npy`` arrays, written atomically (see ``metasr_arch.infer`` for the data conventions)."""
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import cv2
import numpy as np
import torch

from metasr_arch.utils.atomic import atomic_write_bytes  # noqa: F401  (re-exported: the data tools use it)

IMAGE_EXTS = ('.png', '.jpg', '.jpeg', '.tif', '.tiff', '.bmp', '.webp')
ARRAY_EXTS = ('.npy',)
_DEPTH_MAX = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


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


def output_suffix(path: Union[str, Path]) -> str:
    """The extension ``write_sample`` gives the output of input ``path``: ``.npy`` for arrays, else ``.png``."""
    return '.npy' if Path(path).suffix.lower() in ARRAY_EXTS else '.png'


def write_sample(sample: Sample, data: torch.Tensor, alpha: Optional[torch.Tensor], path: Path) -> Path:
    """Write an output (C, H, W) (and alpha (1, H, W)) like its input; returns the path written.

    Args:
        path: output path without extension (``.png`` or ``.npy`` is appended).
    """
    data = data.detach().float().cpu()
    if sample.kind == 'array':
        out = data.numpy().astype(np.float32)
        path = path.with_name(path.name + '.npy')  # not with_suffix: 'X2.50' has a dot
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
