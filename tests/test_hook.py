"""The opt-in startup hook (``python -m metasr_arch.hook``) and the fork installer script."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from metasr_arch import hook

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'scripts'))
import install_into_basicsr_fork as installer  # noqa: E402


def python(code: str, cwd=None, timeout: int = 300) -> subprocess.CompletedProcess:
    """A fresh interpreter that imports this checkout's metasr_arch (PYTHONPATH does not process .pth files)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, '-c', code], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


PROBE = '''
import site, sys
{activate}
heavy = sorted(m for m in ('torch', 'torchvision', 'basicsr', 'metasr_arch') if m in sys.modules)
print('at start-up:', heavy)
import basicsr
from basicsr.utils.registry import ARCH_REGISTRY, MODEL_REGISTRY
print('registered:', 'MetaRDN' in ARCH_REGISTRY and 'MetaSRModel' in MODEL_REGISTRY)
'''


def test_hook_registers_the_plugin_when_basicsr_is_imported(tmp_path):
    assert hook.install(tmp_path) is True
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ['_metasr_arch_hook.py',
                                                                         'metasr_arch_hook.pth']
    assert (tmp_path / 'metasr_arch_hook.pth').read_text() == 'import _metasr_arch_hook\n'
    run = python(PROBE.format(activate=f'site.addsitedir({str(tmp_path)!r})'))
    assert run.returncode == 0, run.stderr[-3000:]
    # nothing heavy at interpreter start; basicsr imports (the torchvision alias came first) and sees the plugin
    assert 'at start-up: []' in run.stdout and 'registered: True' in run.stdout
    # (without the hook, `import basicsr` 1.4.2 fails on torchvision's removed functional_tensor)


def test_hook_install_and_uninstall_are_idempotent(tmp_path, capsys):
    assert hook.status(tmp_path) == 'not installed'
    assert hook.main(['install', '--target', str(tmp_path)]) == 0
    assert hook.main(['install', '--target', str(tmp_path)]) == 0
    assert 'already installed' in capsys.readouterr().out
    assert hook.status(tmp_path) == 'installed'
    (tmp_path / '_metasr_arch_hook.py').write_text('# an older version\n')
    assert hook.status(tmp_path) == 'outdated'
    assert hook.install(tmp_path) is True and hook.status(tmp_path) == 'installed'
    assert hook.uninstall(tmp_path) is True
    assert hook.uninstall(tmp_path) is False
    assert not [p for p in tmp_path.rglob('*') if p.is_file()]
    assert hook.main(['install', '--target', str(tmp_path / 'missing')]) == 2


@pytest.mark.slow
def test_basicsr_own_train_script_runs_plugin_options_through_the_hook(tmp_path):
    """BasicSR's unmodified ``train.py``, run as a script, trains a MetaRDN with MetaSRModel.

    The script is copied under ``tmp_path/pkg`` because it writes experiments/ beside its own folder.
    """
    import shutil

    import basicsr
    from test_training import tiny_demo_opt
    (tmp_path / 'site').mkdir()
    hook.install(tmp_path / 'site')
    (tmp_path / 'pkg').mkdir()
    script = shutil.copy(os.path.join(os.path.dirname(basicsr.__file__), 'train.py'), tmp_path / 'pkg')
    opt = tiny_demo_opt(tmp_path, 'hooked', n_train=2)
    opt['train'].update(lr_patch_size=8, total_iter=1)
    opt.pop('val', None)
    opt['datasets'].pop('val', None)
    opt['logger'].update(print_freq=1, save_checkpoint_freq=1)
    (tmp_path / 'o.yml').write_text(yaml.safe_dump(opt))
    code = (f'import runpy, site, sys; site.addsitedir({str(tmp_path / "site")!r}); '
            f'sys.argv = ["train.py", "-opt", {str(tmp_path / "o.yml")!r}]; '
            f'runpy.run_path({str(script)!r}, run_name="__main__")')
    run = python(code, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / 'experiments' / 'hooked' / 'models' / 'net_g_1.pth').is_file()


# --------------------------------------------------------------------------- the fork installer
def fork_package(tmp_path, name: str, files=('train.py', 'test.py')) -> Path:
    pkg = tmp_path / name
    pkg.mkdir()
    for f in files:
        (pkg / f).write_text(f'"""The fork\'s {f}."""\nfrom __future__ import annotations\nimport os\n')
    return pkg


def test_installer_patches_what_exists_and_says_what_it_did_not_find(tmp_path, capsys):
    pkg = fork_package(tmp_path, 'realesrgan', files=('train.py',))  # Real-ESRGAN has no test.py
    before = (pkg / 'train.py').read_text()
    assert installer.main([str(pkg)]) == 0
    out = capsys.readouterr().out
    assert f'patched {pkg / "train.py"}' in out and f'not found (not patched): {pkg / "test.py"}' in out
    lines = (pkg / 'train.py').read_text().splitlines()
    # after the docstring and the __future__ import (which must stay first), before the rest
    assert lines[2].startswith('import metasr_arch;') and lines[3] == 'import os'
    assert installer.main([str(pkg)]) == 0 and 'already done' in capsys.readouterr().out
    assert installer.main([str(pkg), '--undo']) == 0
    assert (pkg / 'train.py').read_text() == before
    assert installer.main([str(tmp_path / 'empty_dir')]) == 2
    assert 'nothing was changed' in capsys.readouterr().err


def test_installer_is_all_or_nothing(tmp_path, monkeypatch):
    pkg = fork_package(tmp_path, 'hat')
    before = {f: (pkg / f).read_text() for f in ('train.py', 'test.py')}
    real = installer.atomic_write_bytes
    calls = []

    def flaky(path, payload, fsync=False):
        calls.append(path)
        if len(calls) == 2:
            raise OSError('disk full')
        real(path, payload, fsync)

    monkeypatch.setattr(installer, 'atomic_write_bytes', flaky)
    with pytest.raises(OSError, match='disk full'):
        installer.install(str(pkg))
    assert {f: (pkg / f).read_text() for f in ('train.py', 'test.py')} == before
