"""Meta-SR operator: geometry, implementations and the native-op glue."""
from .geometry import (AxisProjection, ScaleSpec, axis_projection, output_length, parse_scale,  # noqa: F401
                       position_encoding, resolve_scale)
from .meta_upscale import (available_impls, choose_table_mode, meta_upscale, meta_upscale_im2col,  # noqa: F401
                           phase_table_conv)
from . import native  # noqa: F401,E402  (registers impl 'cuda'; importing it never compiles)
