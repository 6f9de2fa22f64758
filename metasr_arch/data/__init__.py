"""Importing this package registers every ``*_dataset.py`` module's classes in BasicSR's registries."""
from metasr_arch.utils.imports import import_submodules

import_submodules(__name__, __path__, '_dataset')
