"""Registration into BasicSR's registries: idempotent, collision-free, works in spawned workers."""
import json
import multiprocessing as mp
import subprocess
import sys

import pytest

import metasr_arch  # first: spawned workers re-import this module, and basicsr needs the alias
from basicsr.utils.registry import ARCH_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY, MODEL_REGISTRY  # noqa: E402
from metasr_arch.utils.registry import register  # noqa: E402

REGISTRIES = (ARCH_REGISTRY, MODEL_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY)


def _plugin_entries():
    return {(reg._name, name): obj for reg in REGISTRIES for name, obj in reg
            if obj.__module__.startswith('metasr_arch')}


def test_reimport_and_reload_do_not_raise():
    """Reloading every plugin module keeps the same registry entries. In a fresh interpreter: a reload makes
    new classes, and modules that imported the old ones (``isinstance`` checks) would see a mixture."""
    code = '''
import importlib, sys
import metasr_arch
from basicsr.utils.registry import ARCH_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY, MODEL_REGISTRY
regs = (ARCH_REGISTRY, MODEL_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY)
def entries():
    return {(r._name, n) for r in regs for n, obj in r if obj.__module__.startswith('metasr_arch')}
before = entries()
mods = [m for n, m in list(sys.modules.items())
        if n.startswith('metasr_arch.') and n.endswith(('_arch', '_model', '_dataset', '_loss'))]
assert mods
for m in mods:
    importlib.reload(m)
importlib.reload(metasr_arch)
assert entries() == before, sorted(before ^ entries())
print('ok', len(mods))
'''
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith('ok')


def test_a_real_name_collision_is_refused():
    class SRModel:  # same name as BasicSR's model, different class
        pass

    with pytest.raises(KeyError, match="'SRModel' is already registered"):
        register(MODEL_REGISTRY)(SRModel)
    assert MODEL_REGISTRY.get('SRModel').__module__.startswith('basicsr')


def test_plugin_names_do_not_shadow_basicsr():
    """The names BasicSR registers on its own (fresh process, no plugin) and ours are disjoint."""
    code = ('import sys, json, torchvision.transforms.functional as F; '
            'sys.modules["torchvision.transforms.functional_tensor"] = F; '
            'import basicsr.archs, basicsr.models, basicsr.data, basicsr.losses; '
            'from basicsr.utils import registry as r; '
            'print(json.dumps([[g._name, n] for g in (r.ARCH_REGISTRY, r.MODEL_REGISTRY, r.DATASET_REGISTRY, '
            'r.LOSS_REGISTRY) for n, _ in g]))')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True, timeout=300)
    basicsr_names = {tuple(x) for x in json.loads(out.stdout.strip().splitlines()[-1])}
    assert ('arch', 'SwinIR') in basicsr_names  # the probe really saw BasicSR's registries
    ours = set(_plugin_entries())
    assert ours and not (ours & basicsr_names)


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
