"""End-to-end tests of ``python -m metasr_arch.infer`` on temporary folders, with a tiny registered network.

References are computed independently of the CLI: images are decoded with plain OpenCV calls, the
network is called directly in-process, and the alpha channel is compared with BasicSR's own
``imresize`` (a different implementation of the MATLAB bicubic kernel than ``imresize_to``).
"""
import subprocess
import sys

import metasr_arch  # noqa: F401  (before basicsr: functional_tensor alias)

import cv2
import numpy as np
import pytest
import torch
from basicsr.utils.matlab_functions import imresize as basicsr_imresize
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

from metasr_arch.archs import MetaUpsample
from metasr_arch.infer import main
from metasr_arch.utils.naming import parse_scale_text, parse_size_text, scale_tag
from metasr_arch.ops.geometry import axis_projection, resolve_scale
from metasr_arch.utils.registry import register


@register(ARCH_REGISTRY)
class InferTinyNet(nn.Module):
    """A tiny Meta-SR network: conv -> MetaUpsample, plus a nearest-neighbour skip so outputs stay in range.

    Shapes: (N, num_in_ch, h, w) -> (N, num_in_ch, H, W).
    """

    def __init__(self, num_in_ch: int = 3, num_feat: int = 4, hidden_channels: int = 8):
        super().__init__()
        self.num_in_ch = num_in_ch
        self.conv = nn.Conv2d(num_in_ch, num_feat, 3, padding=1)
        self.upsample = MetaUpsample(num_feat, num_in_ch, hidden_channels=hidden_channels)

    def forward(self, x, scale=None, out_size=None):
        spec = resolve_scale(x.shape[2], x.shape[3], scale, out_size)
        # nearest skip through the operator's own projection floor(i / r), so tiles see the same skip
        rows = axis_projection(x.shape[2], spec.out_h, spec.r_v, x.device).lr_index
        cols = axis_projection(x.shape[3], spec.out_w, spec.r_h, x.device).lr_index
        skip = x[:, :, rows][:, :, :, cols]
        return skip + 0.1 * self.upsample(self.conv(x), scale=(spec.r_v, spec.r_h))


NET_OPT = {'type': 'InferTinyNet', 'num_in_ch': 3, 'num_feat': 4, 'hidden_channels': 8}


def make_net(seed: int = 0, **overrides) -> InferTinyNet:
    torch.manual_seed(seed)
    opt = dict(NET_OPT, **overrides)
    opt.pop('type')
    return InferTinyNet(**opt).eval()


@pytest.fixture()
def ckpt(tmp_path):
    """A checkpoint with different params / params_ema and the network options recorded."""
    path = tmp_path / 'net.pth'
    torch.save({'params': make_net(0).state_dict(), 'params_ema': make_net(1).state_dict(),
                'network_opt': dict(NET_OPT)}, path)
    return path


def rgb_image(h: int, w: int, depth=np.uint8, seed: int = 0) -> np.ndarray:
    """A smooth BGR test image with distinct channels (so a BGR/RGB swap would be caught)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    chans = [0.2 + 0.6 * yy, 0.5 + 0.3 * np.sin(6 * xx), 0.3 + 0.2 * xx * yy]
    img = np.stack(chans, axis=2) + 0.02 * rng.standard_normal((h, w, 3))
    top = np.iinfo(depth).max
    return np.rint(np.clip(img, 0, 1) * top).astype(depth)


def expected(net: nn.Module, bgr: np.ndarray, scale=None, out_size=None) -> np.ndarray:
    """Independent reference: decode by hand, call the network, quantise like the input."""
    top = np.iinfo(bgr.dtype).max
    rgb = bgr[..., ::-1].astype(np.float64) / top
    x = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float()
    with torch.no_grad():
        y = net(x, scale=scale, out_size=out_size)[0].clamp(0, 1).permute(1, 2, 0).numpy()
    return np.rint(y[..., ::-1] * top).astype(bgr.dtype)


def run_cli(*args) -> int:
    # InferTinyNet is this file's own arch: a checkpoint recording it is trusted only by name
    return main([str(a) for a in args] + ['--quiet', '--device', 'cpu', '--allow-arch', 'InferTinyNet'])


def test_parse_scale_and_size_texts():
    assert parse_scale_text('2.5') == (2.5, 2.5)
    assert parse_scale_text('2x3.5') == (2.0, 3.5)
    assert parse_size_text('721x1440') == (721, 1440)
    assert scale_tag(2.5, 2.5) == 'X2.50' and scale_tag(2, 3.5) == 'X2.00_X3.50'
    assert scale_tag(2.125, 2.125) == 'X2.125'  # more decimals only when needed: tags never collide
    for bad in ('0.5', '2x', 'abc', '1x2x3', 'nan', '-2'):
        with pytest.raises(ValueError, match='--scale'):
            parse_scale_text(bad)
    for bad in ('721', '0x5', '7.5x3', 'axb'):
        with pytest.raises(ValueError, match='--size'):
            parse_size_text(bad)


@pytest.mark.parametrize('depth', [np.uint8, np.uint16])
def test_rgb_image_several_scales_keeps_bit_depth(tmp_path, ckpt, depth):
    img = rgb_image(13, 17, depth)
    cv2.imwrite(str(tmp_path / 'img.png'), img)
    out = tmp_path / 'out'
    assert run_cli(tmp_path / 'img.png', '--ckpt', ckpt, '--scale', '2.5', '2x3.5', '-o', out) == 0
    net = make_net(1)  # params_ema is the default
    for tag, scale in (('X2.50', 2.5), ('X2.00_X3.50', (2.0, 3.5))):
        got = cv2.imread(str(out / f'img_{tag}.png'), cv2.IMREAD_UNCHANGED)
        assert got.dtype == depth
        ref = expected(net, img, scale=scale)
        assert got.shape == ref.shape
        # float32 noise may flip a rounding: at most one level on a tiny fraction of pixels
        diff = np.abs(got.astype(np.int64) - ref.astype(np.int64))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01


def test_size_is_exact_and_param_key_selects_weights(tmp_path, ckpt):
    img = rgb_image(13, 17)
    cv2.imwrite(str(tmp_path / 'a.png'), img)
    out = tmp_path / 'out'
    assert run_cli(tmp_path / 'a.png', '--ckpt', ckpt, '--size', '30x41', '--param-key', 'params', '-o', out) == 0
    got = cv2.imread(str(out / 'a_30x41.png'), cv2.IMREAD_UNCHANGED)
    assert got.shape == (30, 41, 3)
    assert np.abs(got.astype(int) - expected(make_net(0), img, out_size=(30, 41)).astype(int)).max() <= 1
    # the other weights give a different image: the key really selected params
    assert np.abs(got.astype(int) - expected(make_net(1), img, out_size=(30, 41)).astype(int)).max() > 1


def test_opt_yaml_with_bare_params_checkpoint(tmp_path):
    import yaml
    (tmp_path / 'opt.yml').write_text(yaml.safe_dump({'name': 'x', 'network_g': dict(NET_OPT)}))
    torch.save({'params': make_net(3).state_dict()}, tmp_path / 'w.pth')
    img = rgb_image(9, 11)
    cv2.imwrite(str(tmp_path / 'a.png'), img)
    assert run_cli(tmp_path / 'a.png', '--opt', tmp_path / 'opt.yml', '--ckpt', tmp_path / 'w.pth',
                   '--scale', '3', '-o', tmp_path) == 0
    got = cv2.imread(str(tmp_path / 'a_X3.00.png'), cv2.IMREAD_UNCHANGED)
    assert np.abs(got.astype(int) - expected(make_net(3), img, scale=3).astype(int)).max() <= 1


def test_grey_and_rgba(tmp_path, ckpt):
    bgr = rgb_image(12, 10, np.uint16)
    grey = bgr[..., 1]
    alpha = np.rint(np.linspace(0, 65535, 120)).astype(np.uint16).reshape(12, 10)
    cv2.imwrite(str(tmp_path / 'g.png'), grey)
    cv2.imwrite(str(tmp_path / 'rgba.png'), np.dstack([bgr, alpha]))
    out = tmp_path / 'out'
    assert run_cli(tmp_path, '--ckpt', ckpt, '--scale', '2', '-o', out) == 0
    net = make_net(1)

    g = cv2.imread(str(out / 'g_X2.00.png'), cv2.IMREAD_UNCHANGED)
    assert g.shape == (24, 20) and g.dtype == np.uint16
    # grey through an RGB network: replicated to 3 channels, output averaged back
    x = torch.from_numpy(grey.astype(np.float32) / 65535).expand(1, 3, 12, 10)
    with torch.no_grad():
        ref = net(x, scale=2)[0].mean(0).clamp(0, 1).numpy()
    assert np.abs(g.astype(int) - np.rint(ref * 65535).astype(int)).max() <= 2

    rgba = cv2.imread(str(out / 'rgba_X2.00.png'), cv2.IMREAD_UNCHANGED)
    assert rgba.shape == (24, 20, 4) and rgba.dtype == np.uint16
    assert np.abs(rgba[..., :3].astype(int) - expected(net, bgr, scale=2).astype(int)).max() <= 2
    # alpha: MATLAB bicubic, checked against BasicSR's own imresize (x2 gives exactly 24x20)
    ref_alpha = basicsr_imresize(alpha.astype(np.float64) / 65535, 2)
    ref_alpha = np.rint(np.clip(ref_alpha, 0, 1) * 65535)
    assert np.abs(rgba[..., 3].astype(int) - ref_alpha.astype(int)).max() <= 2


def test_npy_arrays_single_channel_network(tmp_path):
    torch.manual_seed(0)
    net = make_net(5, num_in_ch=1)
    path = tmp_path / 'n.pth'
    torch.save({'params': net.state_dict(), 'network_opt': dict(NET_OPT, num_in_ch=1)}, path)
    field = np.random.default_rng(0).standard_normal((2, 7, 9)).astype(np.float32) * 3  # not in [0, 1]
    np.save(tmp_path / 'f3.npy', field)
    np.save(tmp_path / 'f2.npy', field[0])
    out = tmp_path / 'out'
    assert run_cli(tmp_path / 'f3.npy', tmp_path / 'f2.npy', '--ckpt', path, '--size', '15x20', '-o', out) == 0
    got3, got2 = np.load(out / 'f3_15x20.npy'), np.load(out / 'f2_15x20.npy')
    assert got3.shape == (2, 15, 20) and got2.shape == (15, 20) and got3.dtype == np.float32
    with torch.no_grad():
        ref = net(torch.from_numpy(field)[:, None], out_size=(15, 20))[:, 0].numpy()
    np.testing.assert_allclose(got3, ref, rtol=1e-5, atol=1e-5)  # no clipping or scaling of data
    np.testing.assert_allclose(got2, ref[0], rtol=1e-5, atol=1e-5)
    assert got3.min() < 0 and got3.max() > 1


def test_folder_with_failures_continues_and_summarises(tmp_path, ckpt, capsys):
    src = tmp_path / 'in'
    src.mkdir()
    cv2.imwrite(str(src / 'good.png'), rgb_image(8, 8))
    cv2.imwrite(str(src / 'large.png'), rgb_image(40, 40))
    (src / 'broken.png').write_bytes(b'not a png at all')
    (src / 'notes.txt').write_text('ignored: not an image extension')
    out = tmp_path / 'out'
    code = run_cli(src, tmp_path / 'missing.png', '--ckpt', ckpt, '--size', '20x30', '--scale', '2', '-o', out)
    assert code == 1
    err = capsys.readouterr().err
    assert 'broken.png' in err and 'cannot read image' in err
    assert 'missing.png' in err and 'no such file' in err
    assert 'large.png [20x30]' in err and 'smaller than the input' in err
    written = sorted(p.name for p in out.iterdir())
    assert written == ['good_20x30.png', 'good_X2.00.png', 'large_X2.00.png']
    assert '4 failure(s)' not in err and '3 failure(s)' in err


@pytest.mark.parametrize('args, message', [
    (['--scale', '0.8'], '--scale'),
    (['--scale', '2x'], 'malformed'),
    (['--size', '10'], '--size'),
    ([], 'at least one --scale or --size'),
    (['--scale', '2', '--fp16', '--bf16'], 'at most one of --fp16 and --bf16'),
])
def test_bad_arguments_exit_2_naming_them(tmp_path, ckpt, capsys, args, message):
    with pytest.raises(SystemExit) as info:
        run_cli(tmp_path, '--ckpt', ckpt, *args)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_checkpoint_errors(tmp_path, ckpt, capsys):
    cv2.imwrite(str(tmp_path / 'a.png'), rgb_image(8, 8))
    wrong = tmp_path / 'wrong.pth'
    torch.save({'params': make_net(0, hidden_channels=16).state_dict(), 'network_opt': dict(NET_OPT)}, wrong)
    assert run_cli(tmp_path / 'a.png', '--ckpt', wrong, '--scale', '2') == 2
    err = capsys.readouterr().err
    assert 'does not match the network InferTinyNet' in err and 'pos2weight' in err and 'wrong.pth' in err

    bare = tmp_path / 'bare.pth'
    torch.save({'params': make_net(0).state_dict()}, bare)
    assert run_cli(tmp_path / 'a.png', '--ckpt', bare, '--scale', '2') == 2
    assert 'records no network_opt' in capsys.readouterr().err

    assert run_cli(tmp_path / 'a.png', '--ckpt', ckpt, '--param-key', 'ema', '--scale', '2') == 2
    assert "--param-key 'ema'" in capsys.readouterr().err

    (tmp_path / 'junk.pth').write_bytes(b'junk')
    assert run_cli(tmp_path / 'a.png', '--ckpt', tmp_path / 'junk.pth', '--scale', '2') == 2
    assert 'not a readable PyTorch checkpoint' in capsys.readouterr().err


def test_impl_option_gives_the_same_image(tmp_path, ckpt):
    img = rgb_image(11, 13)
    cv2.imwrite(str(tmp_path / 'a.png'), img)
    outs = {}
    for impl in ('im2col', 'phase'):
        assert run_cli(tmp_path / 'a.png', '--ckpt', ckpt, '--scale', '2.5', '--impl', impl, '-o', tmp_path / impl) == 0
        outs[impl] = cv2.imread(str(tmp_path / impl / 'a_X2.50.png')).astype(int)
    assert np.abs(outs['im2col'] - outs['phase']).max() <= 1
    assert np.abs(outs['phase'] - expected(make_net(1), img, scale=2.5).astype(int)).max() <= 1


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason='--fp16 needs a CUDA device')
def test_fp16_on_cuda_close_to_float32(tmp_path, ckpt):
    img = rgb_image(32, 30)
    cv2.imwrite(str(tmp_path / 'a.png'), img)
    for flag, out in (([], 'f32'), (['--fp16'], 'f16')):
        assert main([str(tmp_path / 'a.png'), '--ckpt', str(ckpt), '--scale', '3', '--device', 'cuda', '--quiet',
                     '-o', str(tmp_path / out)] + flag) == 0
    f32 = cv2.imread(str(tmp_path / 'f32' / 'a_X3.00.png')).astype(int)
    f16 = cv2.imread(str(tmp_path / 'f16' / 'a_X3.00.png')).astype(int)
    assert np.abs(f32 - expected(make_net(1), img, scale=3).astype(int)).max() <= 1
    assert np.abs(f32 - f16).max() <= 3


def test_tile_options_reach_tiled_forward(tmp_path, ckpt, monkeypatch):
    """The CLI hands --tile/--tile-overlap and the request to tiled_forward (stand-in module)."""
    import types
    calls = []

    def fake_tiled_forward(net, x, scale=None, out_size=None, tile=None, overlap=0):
        calls.append((tuple(x.shape), scale, out_size, tile, overlap))
        return net(x, scale=scale, out_size=out_size)

    monkeypatch.setitem(sys.modules, 'metasr_arch.inference.tiling',
                        types.SimpleNamespace(tiled_forward=fake_tiled_forward))
    cv2.imwrite(str(tmp_path / 'a.png'), rgb_image(9, 10))
    assert run_cli(tmp_path / 'a.png', '--ckpt', ckpt, '--scale', '2x3', '--size', '20x21', '--tile', '6',
                   '--tile-overlap', '2', '-o', tmp_path) == 0
    assert calls == [((1, 3, 9, 10), (2.0, 3.0), None, 6, 2), ((1, 3, 9, 10), None, (20, 21), 6, 2)]
    assert run_cli(tmp_path / 'a.png', '--ckpt', ckpt, '--scale', '2', '-o', tmp_path) == 0
    assert len(calls) == 2  # no --tile: the whole image in one call


def test_tiled_inference_matches_whole_image(tmp_path, ckpt):
    pytest.importorskip('metasr_arch.inference.tiling', reason='tiled_forward not merged yet')
    img = rgb_image(24, 20)
    cv2.imwrite(str(tmp_path / 'a.png'), img)
    assert run_cli(tmp_path / 'a.png', '--ckpt', ckpt, '--scale', '2.5', '-o', tmp_path / 'whole') == 0
    assert run_cli(tmp_path / 'a.png', '--ckpt', ckpt, '--scale', '2.5', '--tile', '10', '--tile-overlap', '4',
                   '-o', tmp_path / 'tiled') == 0
    whole = cv2.imread(str(tmp_path / 'whole' / 'a_X2.50.png'), cv2.IMREAD_UNCHANGED).astype(int)
    tiled = cv2.imread(str(tmp_path / 'tiled' / 'a_X2.50.png'), cv2.IMREAD_UNCHANGED).astype(int)
    assert whole.shape == tiled.shape == (60, 50, 3)
    assert np.abs(whole - tiled).max() <= 1


def test_module_and_script_entry_points(tmp_path, ckpt):
    """``python -m metasr_arch.infer`` and ``scripts/inference_metasr.py`` run as processes.

    The tiny test network is registered by this module, so the subprocess imports it first.
    """
    import os
    cv2.imwrite(str(tmp_path / 'a.png'), rgb_image(8, 8))
    here = os.path.dirname(__file__)
    root = os.path.dirname(here)
    for entry in (['-m', 'metasr_arch.infer'], [os.path.join(root, 'scripts', 'inference_metasr.py')]):
        code = ('import sys, runpy; sys.path.insert(0, %r); import test_infer; sys.argv = %r; '
                'runpy.run_%s(%r, run_name="__main__")') % (
            here, ['infer', str(tmp_path / 'a.png'), '--ckpt', str(ckpt), '--scale', '2', '--quiet',
                   '-o', str(tmp_path / 'o'), '--allow-arch', 'InferTinyNet'],
            'module' if entry[0] == '-m' else 'path', entry[-1])
        proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=root)
        assert proc.returncode == 0, proc.stderr
        assert (tmp_path / 'o' / 'a_X2.00.png').is_file()
        (tmp_path / 'o' / 'a_X2.00.png').unlink()


def test_bicubic_skip_checkpoint_adds_bicubic(tmp_path):
    """A checkpoint saved with bicubic_skip (MetaSRModel option) gets the same skip at inference."""
    import torch
    from metasr_arch.inference.checkpoint import load_network
    from metasr_arch.inference.runner import run_network
    from metasr_arch.utils.resize import imresize_to
    net_opt = {'type': 'MetaRDN', 'num_feat': 8, 'num_block': 1, 'num_layer': 1, 'num_grow_ch': 4,
               'hidden_channels': 8}
    import basicsr.archs
    net = basicsr.archs.build_network(dict(net_opt))
    state = net.state_dict()
    for skip in (False, True):
        path = tmp_path / f'ckpt_{skip}.pth'
        torch.save({'params': state, 'network_opt': net_opt, 'bicubic_skip': skip}, path)
        loaded = load_network(None, str(path))
        x = torch.rand(1, 3, 7, 9)
        y = run_network(loaded, x, scale=2.5)
        with torch.no_grad():
            ref = net(x, scale=2.5) + (imresize_to(x, (17, 22)) if skip else 0)
        torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
