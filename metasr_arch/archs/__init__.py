"""Importing this package registers every ``*_arch.py`` module's classes in BasicSR's registries."""
from metasr_arch.utils.imports import import_submodules

from .meta_upsample_arch import MetaUpsample, Pos2Weight  # noqa: F401,E402
import_submodules(__name__, __path__, '_arch')
