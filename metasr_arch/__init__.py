"""metasr_arch: Meta-SR (magnification-arbitrary, asymmetric-scale super-resolution) for BasicSR.

``import metasr_arch`` registers the plugin's archs, models, datasets and losses into BasicSR's
registries. It is safe to import more than once and from spawned workers.
"""
from . import _compat  # noqa: F401  (must precede the first basicsr import)
from . import archs, data, losses, metrics, models, ops  # noqa: F401,E402
from .archs import MetaUpsample, Pos2Weight  # noqa: F401,E402
from .ops import available_impls, meta_upscale  # noqa: F401,E402

__version__ = '0.1.0'
