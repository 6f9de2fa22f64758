"""The demo's photographs: images that ship with scikit-image, written as PNG on first use.

scikit-image is a BasicSR dependency, so the demo needs no download. Two disjoint sets (no image, and
no view of the same scene, in both):

* train: astronaut, chelsea, coffee, rocket, motorcycle (left view), brick, grass, colorwheel, clock, text
* val:   camera, immunohistochemistry, hubble_deep_field, gravel, coins (central crops of at most
  ``VAL_MAX`` pixels per side, so validation at five scales stays quick on a CPU)

Greyscale images are stored as 3-channel PNGs (R = G = B). A dataset with
``materialize: skimage_demo_train`` (or ``_val``) calls :func:`materialize` when its folder is missing
or incomplete; files are written atomically and a ``.complete`` marker is written last, so
concurrent ranks and interrupted runs are harmless.
"""
import os
from typing import Callable, Dict

import cv2
import numpy as np

from metasr_arch.utils.atomic import atomic_write_bytes

TRAIN = ('astronaut', 'chelsea', 'coffee', 'rocket', 'motorcycle_left', 'brick', 'grass', 'colorwheel', 'clock',
         'text')
VAL = ('camera', 'immunohistochemistry', 'hubble_deep_field', 'gravel', 'coins')
VAL_MAX = 256
SOURCES = {'skimage_demo_train': TRAIN, 'skimage_demo_val': VAL}
_MARKER = '.complete'


def _load(name: str) -> np.ndarray:
    from skimage import data
    if name == 'motorcycle_left':
        img = data.stereo_motorcycle()[0]
    else:
        img = getattr(data, name)()
    img = np.asarray(img)
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img[..., :3].astype(np.uint8))  # RGB, alpha dropped


def _center_crop(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape[:2]
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return img[top:top + size, left:left + size]


def _write_png(img_rgb: np.ndarray, path: str) -> None:
    ok, buf = cv2.imencode('.png', cv2.cvtColor(img_rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f'could not encode {path}')
    atomic_write_bytes(path, buf.tobytes())


def is_complete(folder: str) -> bool:
    """True when ``folder`` holds a finished materialisation."""
    return os.path.isfile(os.path.join(folder, _MARKER))


def materialize(source: str, folder: str) -> str:
    """Write the images of ``source`` ('skimage_demo_train' | 'skimage_demo_val') into ``folder`` (idempotent).

    Returns:
        ``folder``.
    """
    if source not in SOURCES:
        raise ValueError(f'materialize must be one of {sorted(SOURCES)}, got {source!r}')
    if is_complete(folder):
        return folder
    os.makedirs(folder, exist_ok=True)
    crop: Callable[[np.ndarray], np.ndarray] = (lambda x: _center_crop(x, VAL_MAX)) if source.endswith('val') \
        else (lambda x: x)
    for name in SOURCES[source]:
        path = os.path.join(folder, f'{name}.png')
        if not os.path.exists(path):
            _write_png(crop(_load(name)), path)
    with open(os.path.join(folder, _MARKER), 'w') as f:
        f.write('\n'.join(SOURCES[source]) + '\n')
    return folder


def materialize_all(root: str = 'datasets/demo') -> Dict[str, str]:
    """Both demo sets under ``root`` (``train/`` and ``val/``); returns {'train': path, 'val': path}."""
    return {split: materialize(f'skimage_demo_{split}', os.path.join(root, split)) for split in ('train', 'val')}
