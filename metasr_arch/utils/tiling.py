"""Old home of ``metasr_arch.inference.tiling`` (seam-free tiled inference); the names resolve there."""
from metasr_arch.utils.moved import moved_names

__getattr__ = moved_names(__name__, {name: 'metasr_arch.inference.tiling' for name in (
    'tiled_forward', 'supports_feature_tiling')})
