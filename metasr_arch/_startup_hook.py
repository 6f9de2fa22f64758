"""Startup hook that registers metasr_arch whenever BasicSR is imported (opt-in, see ``metasr_arch.hook``).

``python -m metasr_arch.hook install`` copies this file into the environment's site-packages as
``_metasr_arch_hook.py`` and adds ``metasr_arch_hook.pth``, whose one line imports it at interpreter
start. It must stay cheap: it imports only ``sys`` and puts a finder at the front of
``sys.meta_path``; torch, torchvision, basicsr and metasr_arch are imported only when the program
itself imports ``basicsr``. Then, for that one import:

1. before BasicSR's ``__init__`` runs, ``metasr_arch/_compat.py`` is executed from its file (without
   importing the ``metasr_arch`` package, which imports basicsr), so that
   ``torchvision.transforms.functional_tensor`` exists for ``basicsr.data.degradations``;
2. BasicSR imports as usual (its own loader does the work);
3. ``metasr_arch`` is imported, which registers its archs, models, datasets and losses, and
   BasicSR's ``init_dist`` is made CPU-aware (``patch_init_dist``).

A missing or broken ``metasr_arch`` never breaks BasicSR: the hook prints one line and gets out of
the way.
"""
import sys


def _run_compat() -> None:
    import importlib.util
    import os
    spec = importlib.util.find_spec('metasr_arch')  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return
    path = os.path.join(list(spec.submodule_search_locations)[0], '_compat.py')
    compat = importlib.util.spec_from_file_location('_metasr_arch_compat', path)
    compat.loader.exec_module(importlib.util.module_from_spec(compat))  # aliases when executed


def _register() -> None:
    import metasr_arch  # noqa: F401  (registers the plugin into the now complete basicsr)
    from metasr_arch.utils.launch import patch_init_dist
    patch_init_dist()


def _guarded(step, what: str) -> None:
    try:
        step()
    except Exception as err:  # noqa: BLE001  (the hook must never break the program's own imports)
        print(f'metasr_arch startup hook: {what} failed ({type(err).__name__}: {err}); '
              '`python -m metasr_arch.hook uninstall` removes the hook', file=sys.stderr)


class _BasicsrLoader:
    """Wraps BasicSR's own loader: compat shim before, plugin registration after its ``__init__``."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        _guarded(_run_compat, 'the torchvision alias')
        self._loader.exec_module(module)
        _guarded(_register, 'registering metasr_arch')

    def __getattr__(self, name):  # get_source, get_resource_reader, ... of the real loader
        return getattr(self._loader, name)


class MetasrFinder:
    """Meta-path finder that answers only for the first import of ``basicsr``, then removes itself."""

    def find_spec(self, name, path=None, target=None):
        if name != 'basicsr':
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, 'find_spec'):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, 'exec_module'):
            spec.loader = _BasicsrLoader(spec.loader)
        if self in sys.meta_path:  # the import system stops iterating once a spec is returned
            sys.meta_path.remove(self)
        return spec


if not any(type(f).__name__ == 'MetasrFinder' for f in sys.meta_path):
    sys.meta_path.insert(0, MetasrFinder())
