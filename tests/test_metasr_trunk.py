"""MetaSR on BasicSR trunks: features against the plain fixed-scale network (forward hooks), trunk_pretrained,
sizes, a fork-style SwinIR-layout class, nested option checks, two training iterations per family."""
import argparse
import contextlib
import logging
import math

import metasr_arch  # noqa: F401  (before basicsr)

import pytest
import torch
import torch.nn.functional as F
from basicsr.archs import build_network
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

from metasr_arch.archs.metasr_trunk_arch import MetaSR
from metasr_arch.archs.swinir_meta_arch import pad_to_multiple
from metasr_arch.utils.options import OptionError, check_network_options
from metasr_arch.utils.registry import register

SWIN = dict(type='SwinIR', img_size=8, in_chans=3, embed_dim=8, depths=[2], num_heads=[2], window_size=4,
            mlp_ratio=2, num_feat=8, upscale=2, upsampler='pixelshuffle')
# tiny trunks, one per family, at the fixed scales x2, x3 and x4; the module whose input is the feature map
FAMILIES = {
    'EDSR': (dict(type='EDSR', num_in_ch=3, num_out_ch=3, num_feat=8, num_block=2, upscale=2,
                  img_range=255.), 'upsample'),
    'RCAN': (dict(type='RCAN', num_in_ch=3, num_out_ch=3, num_feat=8, num_group=1, num_block=1, squeeze_factor=4,
                  upscale=3), 'upsample'),
    'MSRResNet': (dict(type='MSRResNet', num_in_ch=3, num_out_ch=3, num_feat=8, num_block=1, upscale=4), 'upconv1'),
    'RRDBNet': (dict(type='RRDBNet', num_in_ch=3, num_out_ch=3, num_feat=8, num_block=1, num_grow_ch=4, scale=4),
                'conv_up1'),
    'RRDBNet_x2': (dict(type='RRDBNet', num_in_ch=3, num_out_ch=3, num_feat=8, num_block=1, num_grow_ch=4, scale=2),
                   'conv_up1'),
    'RRDBNet_x1': (dict(type='RRDBNet', num_in_ch=3, num_out_ch=3, num_feat=8, num_block=1, num_grow_ch=4, scale=1),
                   'conv_up1'),
    'SRVGGNetCompact': (dict(type='SRVGGNetCompact', num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=4),
                        'body.6'),
    'SwinIR': (SWIN, 'upsample'),
    'SwinIR_direct': (dict(SWIN, upsampler='pixelshuffledirect'), 'upsample'),
}
HEAD = dict(hidden_channels=16)


def plain(trunk_opt: dict, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = build_network(dict(trunk_opt)).eval()
    with torch.no_grad():  # non-trivial biases everywhere (BasicSR zeroes some at init)
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


def save_params(net: nn.Module, path) -> str:
    torch.save({'params': net.state_dict()}, str(path))
    return str(path)


def fed_to(net: nn.Module, module: str, x: torch.Tensor) -> torch.Tensor:
    """The input of ``net.<module>`` during ``net(x)``, captured by a forward pre-hook."""
    seen = []
    handle = net.get_submodule(module).register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    with torch.no_grad():
        net(x)
    handle.remove()
    return seen[0]


@contextlib.contextmanager
def log_records():
    """Records of BasicSR's logger (it does not propagate to the root logger pytest captures)."""
    records = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append
    logger = logging.getLogger('basicsr')
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def image(h: int = 16, w: int = 24, seed: int = 1) -> torch.Tensor:
    return torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize('family', list(FAMILIES))
def test_features_equal_what_the_fixed_scale_network_feeds_its_upsampler(family, tmp_path):
    trunk_opt, feed = FAMILIES[family]
    ref = plain(trunk_opt)
    ckpt = save_params(ref, tmp_path / 'fixed.pth')
    with log_records() as records:
        net = MetaSR(trunk=trunk_opt, head=HEAD, trunk_pretrained={'path': ckpt, 'param_key': 'params'}).eval()
    dropped = sorted(k for k in ref.state_dict() if k.split('.')[0] in ('upsample', 'conv_last', 'conv_up1',
                                                                         'conv_up2', 'conv_hr', 'upconv1',
                                                                         'upconv2', 'upsampler')
                     or (family == 'SRVGGNetCompact' and k.startswith('body.6.')))
    assert dropped and net.trunk_dropped_keys == dropped
    assert any(', '.join(dropped) in r.getMessage() for r in records)  # logged by name
    assert not any(k.startswith(tuple(f'trunk.{d}' for d in net.dropped_modules)) for k in net.state_dict())
    x = image()
    want = fed_to(ref, feed, x)
    with torch.no_grad():
        got = net.forward_trunk(x)
    if feed == 'conv_up1':  # RRDBNet interpolates its features (nearest, x2) into conv_up1
        with torch.no_grad():
            raw = net.trunk_features(x)
        torch.testing.assert_close(F.interpolate(raw, scale_factor=2, mode='nearest'), want, rtol=1e-5, atol=1e-6)
        s = net.feature_stride
        assert s == {'RRDBNet': 1, 'RRDBNet_x2': 2, 'RRDBNet_x1': 4}[family]
        torch.testing.assert_close(got, raw.repeat_interleave(s, 2).repeat_interleave(s, 3))
        if s == 2:  # the x2 net's conv_up1 reads exactly the input-resolution map the head reads
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    else:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_normalisation_is_the_trunks_own(tmp_path):
    """EDSR's img_range and rgb_mean are applied before its features and undone after the head."""
    trunk_opt = dict(FAMILIES['EDSR'][0], rgb_mean=[0.1, 0.2, 0.3], img_range=7.)
    net = MetaSR(trunk=trunk_opt, head=HEAD)
    assert net.img_range == 7.
    torch.testing.assert_close(net.mean_in.flatten().float(), torch.tensor([0.1, 0.2, 0.3]))
    torch.testing.assert_close(net.mean_out.flatten().float(), torch.tensor([0.1, 0.2, 0.3]))
    x = image()
    with torch.no_grad():
        feat = net.forward_trunk(x)
        ref = net.upsample(feat, scale=2) / 7. + torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)
        torch.testing.assert_close(net(x, scale=2), ref)


@pytest.mark.parametrize('family', ['SwinIR', 'RRDBNet_x2'])
def test_padding_for_windows_and_strides(family):
    """Any input size: padded (reflect) to the window / unshuffle multiple, features cropped back."""
    net = MetaSR(trunk=FAMILIES[family][0], head=HEAD).eval()
    x = image(13, 19)
    with torch.no_grad():
        multiple = max(net.window_size, net.feature_stride)
        assert multiple in (2, 4)
        want = net.trunk_features(pad_to_multiple(x, multiple))
        s = net.feature_stride
        want = want.repeat_interleave(s, 2).repeat_interleave(s, 3)[:, :, :13, :19]
        torch.testing.assert_close(net.forward_trunk(x), want)


@pytest.mark.parametrize('family', ['EDSR', 'RCAN', 'MSRResNet', 'RRDBNet_x2', 'SRVGGNetCompact', 'SwinIR'])
def test_exact_output_sizes(family):
    net = MetaSR(trunk=FAMILIES[family][0], head=HEAD).eval()
    x = image(13, 17)
    with torch.no_grad():
        assert net(x, scale=(2.5, 3.7)).shape == (2, 3, math.floor(13 * 2.5), math.floor(17 * 3.7 + 1e-9))
        out = net(x, out_size=(61, 90))
    assert out.shape == (2, 3, 61, 90) and torch.isfinite(out).all()


def test_pretrained_refuses_mismatched_shapes_by_name(tmp_path):
    other = plain(dict(FAMILIES['EDSR'][0], num_feat=16))
    ckpt = save_params(other, tmp_path / 'wide.pth')
    with pytest.raises(OptionError, match=r'trunk_pretrained.*shapes differ: conv_first\.weight'):
        MetaSR(trunk=FAMILIES['EDSR'][0], head=HEAD, trunk_pretrained={'path': ckpt})
    with pytest.raises(OptionError, match='trunk_pretrained.path.*no such file'):
        MetaSR(trunk=FAMILIES['EDSR'][0], head=HEAD, trunk_pretrained={'path': str(tmp_path / 'none.pth')})


def test_pretrained_refuses_pickled_code(tmp_path):
    path = tmp_path / 'evil.pth'
    torch.save({'params': {}, 'obj': argparse.Namespace(a=1)}, str(path))
    with pytest.raises(ValueError, match='weights_only'):
        MetaSR(trunk=FAMILIES['EDSR'][0], head=HEAD, trunk_pretrained={'path': str(path)})


# --- a fork's arch: the SwinIR/HAT layout, registered by this test -----------------------------------

class StandInHAT(nn.Module):
    """A HAT-like layout (mean/img_range, conv_first, forward_features on windows, conv_after_body,
    conv_before_upsample, upsample, conv_last); its body only runs on window multiples."""

    def __init__(self, in_chans: int = 3, embed_dim: int = 8, num_feat: int = 8, window_size: int = 4,
                 upscale: int = 2, img_range: float = 1.):
        super().__init__()
        self.window_size, self.img_range = window_size, img_range
        self.mean = torch.Tensor((0.4488, 0.4371, 0.4040)).view(1, 3, 1, 1)
        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        self.mix = nn.Linear(window_size * window_size, window_size * window_size)
        self.conv_after_body = nn.Conv2d(embed_dim, embed_dim, 3, 1, 1)
        self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, num_feat, 3, 1, 1), nn.LeakyReLU(inplace=True))
        self.upsample = nn.Sequential(nn.Conv2d(num_feat, 4 * num_feat, 3, 1, 1), nn.PixelShuffle(2))
        self.conv_last = nn.Conv2d(num_feat, in_chans, 3, 1, 1)

    def forward_features(self, x):
        n, c, h, w = x.shape
        ws = self.window_size
        win = x.view(n, c, h // ws, ws, w // ws, ws).permute(0, 1, 2, 4, 3, 5).reshape(n, c, -1, ws * ws)
        win = self.mix(win).view(n, c, h // ws, w // ws, ws, ws).permute(0, 1, 2, 4, 3, 5)
        return win.reshape(n, c, h, w)

    def forward(self, x):
        x = (x - self.mean.type_as(x)) * self.img_range
        x = self.conv_first(x)
        x = self.conv_after_body(self.forward_features(x)) + x
        x = self.conv_last(self.upsample(self.conv_before_upsample(x)))
        return x / self.img_range + self.mean.type_as(x)


register(ARCH_REGISTRY)(StandInHAT)


def test_fork_registered_swin_layout(tmp_path):
    ref = plain(dict(type='StandInHAT', img_range=255.))
    ckpt = save_params(ref, tmp_path / 'hat.pth')
    net = build_network(dict(type='MetaSR', trunk={'type': 'StandInHAT', 'img_range': 255.}, head=HEAD,
                             trunk_pretrained={'path': ckpt}, scale_range=[1, 4])).eval()
    assert net.family.name == 'SwinIR' and net.window_size == 4 and net.img_range == 255.
    assert net.trunk_dropped_keys == ['conv_last.bias', 'conv_last.weight', 'upsample.0.bias', 'upsample.0.weight']
    x = image(16, 24)
    with torch.no_grad():
        torch.testing.assert_close(net.forward_trunk(x), fed_to(ref, 'upsample', x), rtol=1e-5, atol=1e-6)
        x_odd = image(13, 19)  # the stand-in's body fails off window multiples: forward_trunk pads
        padded = fed_to(ref, 'upsample', pad_to_multiple(x_odd, 4))[:, :, :13, :19]
        torch.testing.assert_close(net.forward_trunk(x_odd), padded, rtol=1e-5, atol=1e-6)
        assert net(x_odd, out_size=(61, 90)).shape == (2, 3, 61, 90)


def test_feature_module_for_other_archs():
    """Any registered arch: the named submodule's input is the feature map; drop_modules removes the rest."""
    trunk_opt = FAMILIES['EDSR'][0]
    ref = plain(trunk_opt)
    net = MetaSR(trunk=trunk_opt, head=HEAD, feature_module='upsample', drop_modules=['conv_last']).eval()
    net.trunk.load_state_dict({k: v for k, v in ref.state_dict().items()
                               if not k.startswith(('upsample.', 'conv_last.'))})
    assert net.family is None and not any('conv_last' in k or 'trunk.upsample' in k for k in net.state_dict())
    x = image()
    with torch.no_grad():
        torch.testing.assert_close(net.forward_trunk(x), fed_to(ref, 'upsample', x))
        assert net(x, scale=(2.5, 3.7)).shape == (2, 3, 40, 88)
    with pytest.raises(OptionError, match=r"feature_module: EDSR has no submodule 'upsampel'.*'upsample'"):
        MetaSR(trunk=trunk_opt, feature_module='upsampel')


def test_unknown_layout_and_type_fail_at_build_naming_the_option():
    with pytest.raises(OptionError, match=r"no known feature layout for type 'VGGStyleDiscriminator'.*feature_module"):
        MetaSR(trunk={'type': 'VGGStyleDiscriminator', 'num_in_ch': 3, 'num_feat': 8})
    with pytest.raises(OptionError, match=r"trunk.type: 'EDSRR' is not a registered.*'EDSR'.*--import"):
        MetaSR(trunk={'type': 'EDSRR'})


@pytest.mark.parametrize('change, match', [
    ({'trunk': {'type': 'EDSR', 'num_feats': 8}}, r"network_g\.trunk: unknown option 'num_feats'.*'num_feat'"),
    ({'head': {'kernal_size': 3}}, r"network_g\.head: unknown option 'kernal_size'.*'kernel_size'"),
    ({'trunk_pretrained': {'pth': 'x.pth'}}, r"network_g\.trunk_pretrained: unknown option 'pth'.*'path'"),
    ({'trunk': {'type': 'MetaRDN'}}, r'network_g\.trunk\.type.*already a Meta-SR network'),
])
def test_check_network_options_names_nested_typos(change, match):
    opt = {'type': 'MetaSR', 'trunk': dict(FAMILIES['EDSR'][0]), 'head': dict(HEAD), **change}
    with pytest.raises(OptionError, match=match):
        check_network_options(opt, 'network_g')


def test_periodic_w_wraps_the_trunk():
    net = MetaSR(trunk=FAMILIES['EDSR'][0], head=HEAD, periodic_w=True).eval()
    x = image(12, 16)
    with torch.no_grad():
        rolled = net(torch.roll(x, 5, dims=3), scale=2)
        torch.testing.assert_close(rolled, torch.roll(net(x, scale=2), 10, dims=3), rtol=1e-4, atol=1e-5)


TRAIN_FAMILIES = ['EDSR', 'RCAN', 'MSRResNet', 'RRDBNet_x2', 'SRVGGNetCompact', 'SwinIR']


@pytest.mark.slow
@pytest.mark.parametrize('family', TRAIN_FAMILIES)
def test_every_family_trains_through_the_cli(family, tmp_path):
    """Two iterations of ``python -m metasr_arch.train`` from YAML options, a checkpoint that reloads."""
    from test_training import run_train_cli, tiny_demo_opt
    opt = tiny_demo_opt(tmp_path, f'trunk_{family}', n_train=2)
    opt['network_g'] = {'type': 'MetaSR', 'trunk': dict(FAMILIES[family][0]), 'head': dict(HEAD),
                        'scale_range': [1.5, 3]}
    opt['train'].update(lr_patch_size=8, total_iter=2)
    opt['val'].update(val_freq=1000, scales=[[2.5, 1.5]])
    opt['logger'].update(print_freq=1, save_checkpoint_freq=1000)
    run_train_cli(tmp_path, opt)
    exp = tmp_path / 'experiments' / f'trunk_{family}'
    ckpt = torch.load(str(exp / 'models' / 'net_g_latest.pth'), weights_only=True)
    assert ckpt['network_opt']['type'] == 'MetaSR'
    net = build_network(dict(ckpt['network_opt']))
    net.load_state_dict(ckpt['params'], strict=True)  # trunk.* and upsample.* only: no upsampler of the trunk
    assert any(k.startswith('trunk.') for k in ckpt['params'])


@pytest.mark.parametrize('family, fmt', [('RRDBNet_x2', 'onnx'), ('SwinIR', 'torchscript'), ('EDSR', 'exported'),
                                         ('feature_module', 'onnx')])
def test_export_checked_against_pytorch(family, fmt, tmp_path):
    from metasr_arch.deploy.export import export_checked
    from metasr_arch.deploy.frozen import freeze
    extra = {'feature_module': 'upsample', 'drop_modules': ['conv_last']} if family == 'feature_module' else {}
    torch.manual_seed(0)
    net = MetaSR(trunk=FAMILIES['EDSR' if extra else family][0], head=HEAD, **extra).eval()
    request = ('scale', (2.5, 1.5))
    results = export_checked(net, freeze(net, request, (10, 14)), tmp_path / f'm.{fmt}', fmt, request, batch=1)
    assert results and all(r.passed for r in results)


@pytest.mark.parametrize('family', ['EDSR', 'SwinIR'])
def test_feature_tiling_is_exact(family):
    from metasr_arch.inference.tiling import tiled_forward
    net = MetaSR(trunk=FAMILIES[family][0], head=HEAD).eval()
    x = image(24, 28)
    with torch.no_grad():
        whole = net(x, scale=(2.5, 1.5))
        tiled = tiled_forward(net, x, scale=(2.5, 1.5), tile=12, overlap=8)
    torch.testing.assert_close(tiled, whole, rtol=1e-4, atol=1e-5)


def test_bf16_autocast_and_channels_last_close_to_float32():
    net = MetaSR(trunk=FAMILIES['RCAN'][0], head=HEAD).eval()
    x = image()
    with torch.no_grad():
        ref = net(x, scale=2.5)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            low = net(x, scale=2.5).float()
        net = net.to(memory_format=torch.channels_last)
        cl = net(x.to(memory_format=torch.channels_last), scale=2.5)
    assert (low - ref).abs().max() < 0.05 * ref.abs().max()
    torch.testing.assert_close(cl, ref, rtol=1e-4, atol=1e-5)


def test_one_channel_periodic_trunk():
    """Gridded data: one channel, columns wrapping around (RRDBNet x2 unshuffles: width a multiple of 2)."""
    trunk = dict(FAMILIES['RRDBNet_x2'][0], num_in_ch=1, num_out_ch=1)
    net = MetaSR(trunk=trunk, head=HEAD, periodic_w=True).eval()
    x = torch.rand(1, 1, 10, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = net(x, out_size=(25, 32))
        shifted = net(torch.roll(x, 4, dims=3), out_size=(25, 32))
    torch.testing.assert_close(shifted, torch.roll(out, 8, dims=3), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match='multiple of 2'):
        net(torch.rand(1, 1, 10, 15), scale=2)


def test_benchmark_script_measures_the_new_trunks(capsys):
    """scripts/benchmark_models.py --trunks EDSR, tiny: the fixed x4 head is EDSR's own upsampler and last conv."""
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / 'scripts' / 'benchmark_models.py'
    spec = importlib.util.spec_from_file_location('benchmark_models', path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(['--device', 'cpu', '--trunks', 'EDSR', '--batch', '1', '--patch', '8', '--repeats', '1'])
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith('| EDSR |'))
    cells = [c.strip() for c in row.split('|')[1:-1]]
    # x4 upsampler: two 3x3 convs 64 -> 256 (+bias), conv_last 64 -> 3; head: Linear(4, 256) + Linear(256, 9*64*3)
    assert cells[3] == f'{(2 * (64 * 256 * 9 + 256) + 64 * 3 * 9 + 3) / 1e6:.3f}M'
    assert cells[2] == f'{(4 * 256 + 256 + 256 * 1728 + 1728) / 1e6:.3f}M'
    assert float(cells[4]) > 0 and float(cells[6]) > 0


@pytest.mark.slow  # full-size trunks (RRDBNet: 16.7M parameters) built twice
@pytest.mark.parametrize('name', ['train_MetaSR_EDSR-baseline_x1-4.yml', 'train_MetaSR_RRDBNet_x1-4_finetune.yml'])
def test_option_files_build(name, tmp_path):
    """The shipped options pass the whole-file check and build (the pretrained file replaced by a fixed
    x4 checkpoint of the same plain arch written here)."""
    import copy
    import os
    import yaml
    from metasr_arch.models.metasr_model import check_metasr_options
    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'options', 'train',
                           name)) as f:
        opt = yaml.safe_load(f)
    opt['is_train'] = True
    check_metasr_options(opt)
    check_network_options(opt['network_g'], 'network_g')
    net_opt = copy.deepcopy(opt['network_g'])
    if 'trunk_pretrained' in net_opt:
        ckpt = tmp_path / 'fixed.pth'
        torch.save({net_opt['trunk_pretrained']['param_key']: build_network(dict(net_opt['trunk'])).state_dict()},
                   str(ckpt))
        net_opt['trunk_pretrained']['path'] = str(ckpt)
    net = build_network(net_opt)
    assert isinstance(net, MetaSR) and net.family.name == net_opt['trunk']['type']


def test_fixed_scale_net_and_its_plain_checkpoint(tmp_path):
    from metasr_arch.archs.fixed_scale_arch import FixedScaleNet, plain_state_dict
    trunk_opt = FAMILIES['EDSR'][0]  # x2
    fixed = FixedScaleNet(net=dict(trunk_opt), scale=2).eval()
    ref = build_network(dict(trunk_opt)).eval()
    ref.load_state_dict(plain_state_dict(fixed.state_dict()))
    x = image(9, 11)
    with torch.no_grad():
        torch.testing.assert_close(fixed(x, scale=2), ref(x))
        torch.testing.assert_close(fixed(x, out_size=(18, 22)), ref(x))
        with pytest.raises(ValueError, match='serves only x2'):
            fixed(x, scale=2.5)
    path = save_params(ref, tmp_path / 'plain.pth')
    net = MetaSR(trunk=trunk_opt, head=HEAD, trunk_pretrained={'path': path}).eval()
    with torch.no_grad():
        torch.testing.assert_close(net.forward_trunk(x), fed_to(fixed.net, 'upsample', x))


def test_trunk_finetune_driver_options(tmp_path):
    from metasr_arch.experiments import trunk_finetune as tf
    specs = tf.model_specs(40, 20)
    assert {n: it for n, (_, it) in specs.items()} == {'fixed_x4': 40, 'converted': 20, 'scratch': 60}
    paths = tf.write_options(str(tmp_path), specs)
    import yaml
    opts = {n: yaml.safe_load(open(p[0])) for n, p in paths.items()}
    assert opts['converted']['network_g']['trunk'] == opts['scratch']['network_g']['trunk'] == \
        opts['fixed_x4']['network_g']['net']
    assert opts['converted']['network_g']['trunk_pretrained']['path'] == str(tmp_path / tf.PLAIN_CKPT)
    assert opts['converted']['train']['freeze_trunk_iters'] == 4 and 'trunk_lr_scale' not in opts['scratch']['train']
    assert opts['fixed_x4']['train']['scale_sampler'] == {'type': 'choice', 'scales': [4]}
    for name, opt in opts.items():
        check_network_options(opt['network_g'], f'{name} network_g')
    test_scales = yaml.safe_load(open(paths['converted'][1]))['val']['scales']
    assert test_scales == [2.0, 3.0, 4.0, 2.5, [2.0, 3.5]]


@pytest.mark.slow
def test_train_compile_scope_trunk():
    """train.compile (scope trunk) on MetaSR: the compiled forward_trunk gives the eager output and gradients."""
    from metasr_arch.utils.amp import compile_for_training
    torch.manual_seed(0)
    net = MetaSR(trunk=FAMILIES['RRDBNet_x2'][0], head=HEAD).train()
    x = image(12, 16)
    ref = net(x, scale=2.5)
    compile_for_training(net, {'scope': 'trunk', 'backend': 'aot_eager'})
    out = net(x, scale=2.5)
    out.mean().backward()
    torch.testing.assert_close(out, ref)
    assert net.trunk.conv_first.weight.grad is not None and net.upsample.pos2weight.meta_block[0].weight.grad is not None
