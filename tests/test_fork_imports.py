"""``--import MODULE``: a MetaSR checkpoint whose trunk a fork registers loads in infer, export and test."""
import os
import subprocess
import sys
import textwrap

import metasr_arch  # noqa: F401  (before basicsr)

import cv2
import numpy as np
import pytest
import torch
import yaml
from basicsr.archs import build_network
from basicsr.utils.registry import ARCH_REGISTRY

from metasr_arch.utils.fork_imports import import_arch_modules, pop_import_args
from metasr_arch.utils.options import OptionError

# a fork's package: a HAT-like arch registered in BasicSR's registry when forkpkg_i20.archs is imported
FORK_SOURCE = textwrap.dedent('''
    import torch
    from torch import nn
    from basicsr.utils.registry import ARCH_REGISTRY


    @ARCH_REGISTRY.register()
    class ForkHAT(nn.Module):
        def __init__(self, in_chans=3, embed_dim=8, num_feat=8, window_size=4, img_range=1.):
            super().__init__()
            self.window_size, self.img_range = window_size, img_range
            self.mean = torch.Tensor((0.4488, 0.4371, 0.4040)).view(1, 3, 1, 1)
            self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
            self.body = nn.Conv2d(embed_dim, embed_dim, 3, 1, 1)
            self.conv_after_body = nn.Conv2d(embed_dim, embed_dim, 3, 1, 1)
            self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, num_feat, 3, 1, 1), nn.LeakyReLU())
            self.upsample = nn.Sequential(nn.Conv2d(num_feat, 4 * num_feat, 3, 1, 1), nn.PixelShuffle(2))
            self.conv_last = nn.Conv2d(num_feat, in_chans, 3, 1, 1)

        def forward_features(self, x):
            assert x.shape[2] % self.window_size == 0 and x.shape[3] % self.window_size == 0
            return self.body(x)

        def forward(self, x):
            x = (x - self.mean.type_as(x)) * self.img_range
            x = self.conv_first(x)
            x = self.conv_after_body(self.forward_features(x)) + x
            x = self.conv_last(self.upsample(self.conv_before_upsample(x)))
            return x / self.img_range + self.mean.type_as(x)
''')
NET_OPT = {'type': 'MetaSR', 'trunk': {'type': 'ForkHAT'}, 'head': {'hidden_channels': 16}, 'scale_range': [1, 4]}


@pytest.fixture
def fork(tmp_path, monkeypatch):
    """A checkpoint of MetaSR on the fork's ForkHAT, with the fork's arch unregistered again afterwards."""
    pkg = tmp_path / 'forkpkg_i20'
    pkg.mkdir()
    (pkg / '__init__.py').write_text('')
    (pkg / 'archs.py').write_text(FORK_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    try:
        assert import_arch_modules(['forkpkg_i20.archs']) == ('ForkHAT',)
        torch.manual_seed(0)
        net = build_network(dict(NET_OPT))
        ckpt = tmp_path / 'net_g.pth'
        torch.save({'params': net.state_dict(), 'network_opt': NET_OPT}, str(ckpt))
        img = (np.random.default_rng(0).random((13, 18, 3)) * 255).astype(np.uint8)
        cv2.imwrite(str(tmp_path / 'a.png'), img)
    finally:  # as in a fresh process: the fork's arch is unknown until --import names it
        ARCH_REGISTRY._obj_map.pop('ForkHAT', None)
        for name in ('forkpkg_i20.archs', 'forkpkg_i20'):
            sys.modules.pop(name, None)
    yield tmp_path, ckpt, net
    ARCH_REGISTRY._obj_map.pop('ForkHAT', None)
    for name in ('forkpkg_i20.archs', 'forkpkg_i20'):
        sys.modules.pop(name, None)


def test_infer_needs_the_import_and_then_matches_the_network(fork, capsys):
    from metasr_arch.infer import main
    tmp_path, ckpt, net = fork
    args = [str(tmp_path / 'a.png'), '--ckpt', str(ckpt), '--size', '30x41', '-o', str(tmp_path / 'out'), '--quiet',
            '--device', 'cpu']
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "'ForkHAT' is not a registered architecture" in err and '--import' in err
    assert main(args + ['--import', 'forkpkg_i20.archs']) == 0
    out = list((tmp_path / 'out').iterdir())
    assert len(out) == 1
    got = cv2.imread(str(out[0]))
    x = torch.from_numpy(cv2.imread(str(tmp_path / 'a.png'))[:, :, ::-1].copy()).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        want = net.eval()(x, out_size=(30, 41)).clamp(0, 1)
    want = (want[0].permute(1, 2, 0).numpy()[:, :, ::-1] * 255).round()
    assert got.shape == (30, 41, 3) and np.abs(got.astype(float) - want).max() <= 1


def test_export_with_import(fork):
    from metasr_arch.export import main
    tmp_path, ckpt, _ = fork
    assert main(['--ckpt', str(ckpt), '--scale', '2.5', '--input-size', '12x16', '--format', 'torchscript',
                 '-o', str(tmp_path / 'fork.pt'), '--import', 'forkpkg_i20.archs']) == 0
    assert any(p.name.startswith('fork') and p.suffix == '.pt' for p in tmp_path.iterdir())


@pytest.mark.slow
def test_test_pipeline_with_import(fork):
    tmp_path, ckpt, _ = fork
    os.makedirs(tmp_path / 'val')
    cv2.imwrite(str(tmp_path / 'val' / 'b.png'), cv2.imread(str(tmp_path / 'a.png')))
    opt = {'name': 'fork_test', 'model_type': 'MetaSRModel', 'num_gpu': 0, 'manual_seed': 0, 'network_g': NET_OPT,
           'datasets': {'test_1': {'name': 'tiny', 'type': 'MetaSRGTDataset', 'dataroot_gt': str(tmp_path / 'val')}},
           'path': {'pretrain_network_g': str(ckpt), 'strict_load_g': True},
           'val': {'save_img': False, 'suffix': None, 'scales': [2.5]}}
    (tmp_path / 'test.yml').write_text(yaml.safe_dump(opt))
    env = dict(os.environ, METASR_ROOT=str(tmp_path), PYTHONPATH=os.pathsep.join([str(tmp_path), *sys.path]))
    cmd = [sys.executable, '-m', 'metasr_arch.test', '-opt', str(tmp_path / 'test.yml')]
    run = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and 'ForkHAT' in run.stderr and '--import' in run.stderr
    run = subprocess.run(cmd + ['--import', 'forkpkg_i20.archs'], env=env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / 'results' / 'fork_test' / 'metrics.jsonl').is_file()


def test_pop_import_args_and_errors():
    assert pop_import_args(['-opt', 'x.yml', '--import', 'a.b', '--import=c', '--auto_resume']) == \
        (['-opt', 'x.yml', '--auto_resume'], ['a.b', 'c'])
    with pytest.raises(OptionError, match='--import needs a module name'):
        pop_import_args(['--import'])
    with pytest.raises(OptionError, match=r"--import 'a;b': not a module name"):
        import_arch_modules(['a;b'])
    with pytest.raises(OptionError, match='--import no_such_module_i20: cannot import it'):
        import_arch_modules(['no_such_module_i20'])
    # a module imported earlier still names its archs
    assert 'MetaSR' in import_arch_modules(['metasr_arch.archs.metasr_trunk_arch'])
