"""Old home of ``metasr_arch.inference.runner`` (running a loaded network); the names resolve there."""
from metasr_arch.utils.moved import moved_names

__getattr__ = moved_names(__name__, {name: 'metasr_arch.inference.runner' for name in (
    'run_network', 'check_network_request', 'upscale_sample', 'check_max_pixels')})
