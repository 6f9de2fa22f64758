"""Compatibility shims that must run before BasicSR is first imported.

basicsr 1.4.2 (``basicsr/data/degradations.py``) imports ``torchvision.transforms.functional_tensor``,
a module that torchvision removed in 0.17. Its one used function (``rgb_to_grayscale``) lives on in
``torchvision.transforms.functional``, so that module is aliased under the old name. This is the only
place in the project that does it; ``metasr_arch/__init__.py`` imports this module first.
"""
import importlib
import sys


def alias_functional_tensor() -> None:
    """Register ``torchvision.transforms.functional`` as ``...functional_tensor`` if it is missing."""
    name = 'torchvision.transforms.functional_tensor'
    if name in sys.modules:
        return
    try:
        importlib.import_module(name)
    except ImportError:
        sys.modules[name] = importlib.import_module('torchvision.transforms.functional')


alias_functional_tensor()
