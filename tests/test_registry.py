"""Registration into BasicSR's registries: idempotent, collision-free, works in spawned workers."""
import importlib
import multiprocessing as mp

import pytest

import metasr_arch  # first: spawned workers re-import this module, and basicsr needs the alias
from basicsr.utils.registry import ARCH_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY, MODEL_REGISTRY  # noqa: E402
from metasr_arch.utils.registry import register  # noqa: E402

REGISTRIES = (ARCH_REGISTRY, MODEL_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY)


def _plugin_entries():
    return {(reg._name, name): obj for reg in REGISTRIES for name, obj in reg
            if obj.__module__.startswith('metasr_arch')}


def test_reimport_and_reload_do_not_raise():
    before = set(_plugin_entries())
    importlib.reload(importlib.import_module('metasr_arch.archs.meta_upsample_arch'))
    for sub in ('archs', 'models', 'data', 'losses'):
        for name in list(importlib.import_module(f'metasr_arch.{sub}').__dict__):
            mod = importlib.import_module(f'metasr_arch.{sub}')
            if name.endswith(('_arch', '_model', '_dataset', '_loss')) and hasattr(mod, name):
                importlib.reload(getattr(mod, name))
    importlib.reload(metasr_arch)
    assert set(_plugin_entries()) == before


def test_a_real_name_collision_is_refused():
    class SRModel:  # same name as BasicSR's model, different class
        pass

    with pytest.raises(KeyError, match="'SRModel' is already registered"):
        register(MODEL_REGISTRY)(SRModel)
    assert MODEL_REGISTRY.get('SRModel').__module__.startswith('basicsr')


def test_plugin_names_do_not_shadow_basicsr():
    for (reg_name, name), obj in _plugin_entries().items():
        assert obj.__module__.startswith('metasr_arch'), (reg_name, name)
        assert not name.startswith('basicsr'), name


def _child_lookup(queue):
    import metasr_arch  # noqa: F401  (the spawned process imports the plugin afresh)
    from basicsr.utils.registry import ARCH_REGISTRY as reg
    queue.put(sorted(name for name, obj in reg if obj.__module__.startswith('metasr_arch')))


def test_spawned_worker_registers_the_same_names():
    ctx = mp.get_context('spawn')
    queue = ctx.Queue()
    proc = ctx.Process(target=_child_lookup, args=(queue,))
    proc.start()
    names = queue.get(timeout=300)
    proc.join(timeout=60)
    assert proc.exitcode == 0
    assert names == sorted(n for (r, n) in _plugin_entries() if r == 'arch')
