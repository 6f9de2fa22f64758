"""Hardening, round 2 (issue 19), inference side: checkpoints build only trusted networks and follow no
file, every load is weights-only under TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1, non-finite inputs, outputs and
weights are refused by name, networks refuse integer tensors, bicubic_skip models start exactly at bicubic,
infer never re-upscales its own earlier outputs, and export's file errors are one named line."""
import errno
import json
import logging
import os
import sys
from pathlib import Path

import metasr_arch  # noqa: F401  (before basicsr: functional_tensor alias)

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from metasr_arch.archs.fixed_rdn_arch import FixedScaleRDN
from metasr_arch.archs.swinir_meta_arch import SwinIRMeta
from metasr_arch.export import main as export_main
from metasr_arch.infer import main as infer_main
from metasr_arch.inference.checkpoint import build_and_load, load_network
from metasr_arch.inference.runner import run_network
from metasr_arch.utils.finite import NonFiniteError
from metasr_arch.utils.trust import UntrustedNetworkError, check_recorded_network

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_hardening import NET, Payload, image, tiny_net  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def ckpt(tmp_path):
    path = tmp_path / 'net.pth'
    torch.save({'params': tiny_net().state_dict(), 'network_opt': dict(NET)}, path)
    return path


@pytest.fixture()
def unsafe_env(monkeypatch):
    """torch's default loader unpickles everything in this environment."""
    monkeypatch.setenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')


def infer(*args) -> int:
    return infer_main([str(a) for a in args] + ['--quiet', '--device', 'cpu'])


def export(*args) -> int:
    return export_main([str(a) for a in args] + ['--input-size', '8x8', '--scale', '2'])


def io_args(tmp_path: Path, command) -> list:
    """Input and output arguments of ``command`` (infer: one image at x2; export: one ONNX file)."""
    if command is infer:
        return [tmp_path / 'in.png', '--scale', '2', '-o', tmp_path / 'out']
    return ['-o', tmp_path / 'x.onnx']


def evil_pickle(tmp_path: Path) -> Path:
    """A file that creates ``tmp_path/marker`` when fully unpickled."""
    path = tmp_path / 'flow.pth'
    torch.save({'params': Payload(tmp_path / 'marker')}, path)
    return path


def crafted_safetensors(tmp_path: Path, network_opt: dict) -> Path:
    """The issue's file: real weights, metadata naming another network and a file to load."""
    path = tmp_path / 'crafted.safetensors'
    meta = {'format': 'metasr_arch', 'param_keys': json.dumps(['params']), 'network_opt': json.dumps(network_opt)}
    save_file({k: v.contiguous() for k, v in tiny_net().state_dict().items()}, str(path), metadata=meta)
    return path


# --------------------------------------------------------------------------- 1. trusted checkpoints
@pytest.mark.parametrize('command', [infer, export])
@pytest.mark.parametrize('case', ['other_arch', 'nested_trunk', 'path_option'])
def test_crafted_safetensors_refused_by_name_nothing_unpickled(tmp_path, capsys, unsafe_env, command, case):
    evil = str(evil_pickle(tmp_path))
    network_opt = {'other_arch': {'type': 'SpyNet', 'load_path': evil},
                   'nested_trunk': {'type': 'MetaSR', 'trunk': {'type': 'SpyNet', 'load_path': evil}},
                   'path_option': dict(NET, load_path=evil)}[case]
    path = crafted_safetensors(tmp_path, network_opt)
    image(tmp_path / 'in.png')
    assert command(*io_args(tmp_path, command), '--ckpt', path) == 2
    err = capsys.readouterr().err
    expected = {'other_arch': "network type 'SpyNet' is not one of the plugin's networks",
                'nested_trunk': "network_opt.trunk.type 'SpyNet' is not a trusted network",
                'path_option': 'network_opt.load_path is a path option'}[case]
    assert expected in err and 'Traceback' not in err
    assert not (tmp_path / 'marker').exists()
    assert not (tmp_path / 'out').exists() or not list((tmp_path / 'out').iterdir())


def test_allow_arch_trusts_the_type_never_its_files(tmp_path, capsys, unsafe_env):
    evil = str(evil_pickle(tmp_path))
    path = crafted_safetensors(tmp_path, {'type': 'SpyNet', 'load_path': evil})
    image(tmp_path / 'in.png')
    assert infer(tmp_path / 'in.png', '--ckpt', path, '--scale', '2', '-o', tmp_path / 'out',
                 '--allow-arch', 'SpyNet') == 2
    assert 'network_opt.load_path is a path option' in capsys.readouterr().err
    assert not (tmp_path / 'marker').exists()


def test_user_options_may_name_files_but_they_are_read_weights_only(tmp_path, capsys, unsafe_env, ckpt):
    evil = evil_pickle(tmp_path)
    opt = tmp_path / 'spy.yml'
    opt.write_text(f'network_g: {{type: SpyNet, load_path: {evil}}}\n')
    image(tmp_path / 'in.png')
    assert infer(tmp_path / 'in.png', '--opt', opt, '--ckpt', ckpt, '--scale', '2', '-o', tmp_path / 'out') == 2
    err = capsys.readouterr().err
    assert f'--opt {opt} network_g: building SpyNet loads a file' in err and 'weights_only=True' in err
    assert not (tmp_path / 'marker').exists()


def test_convert_checkpoint_is_weights_only_under_the_environment(tmp_path, unsafe_env):
    sys.path.insert(0, str(REPO / 'scripts'))
    try:
        import convert_checkpoint
    finally:
        sys.path.pop(0)
    with pytest.raises(ValueError, match='refused'):
        convert_checkpoint.convert(str(evil_pickle(tmp_path)), str(tmp_path / 'out.safetensors'))
    assert not (tmp_path / 'marker').exists()


def test_recorded_network_rules(caplog):
    source = 'network_opt recorded in --ckpt c.pth'
    ok = dict(NET, rgb_mean=[0.4, 0.4, 0.4], impl='auto', load_path=None, pretrained=False)
    assert check_recorded_network(ok, source) == ok
    # a path-looking string under an innocent key, inside a list
    with pytest.raises(UntrustedNetworkError, match=r'network_opt\.extra\[1\] = .* looks like a file path'):
        check_recorded_network(dict(NET, extra=[1, '../weights.bin']), source)
    with pytest.raises(UntrustedNetworkError, match=r'network_opt\.trunk\.pretrained is a path option'):
        check_recorded_network({'type': 'MetaSR', 'trunk': {'type': 'EDSR', 'pretrained': True}}, source)
    with pytest.raises(UntrustedNetworkError, match=r"network_opt\.head\.type 'Evil'"):
        check_recorded_network({'type': 'MetaSR', 'head': {'type': 'Evil'}}, source)
    assert check_recorded_network({'type': 'Mine', 'trunk': {'type': 'Evil'}}, source, allow=('Mine', 'Evil'))
    with pytest.raises(UntrustedNetworkError, match="type None"):
        check_recorded_network({'num_feat': 8}, source)
    # trunk_pretrained is dropped, not followed, with one info line; the input is not modified
    recorded = {'type': 'MetaSR', 'trunk': {'type': 'EDSR', 'num_feat': 8},
                'trunk_pretrained': {'path': '/x/edsr.pth', 'param_key': 'params'}}
    with caplog.at_level(logging.INFO, logger='metasr_arch.utils.trust'):
        safe = check_recorded_network(recorded, source)
    assert safe == {'type': 'MetaSR', 'trunk': {'type': 'EDSR', 'num_feat': 8}}
    assert 'trunk_pretrained' in recorded
    assert [r.getMessage() for r in caplog.records] == [
        f'{source}: network_opt.trunk_pretrained dropped: the checkpoint already holds every weight']


# --------------------------------------------------------------------------- 3. non-finite data and weights
def test_nonfinite_npy_input_refused_per_file_the_rest_written(tmp_path, capsys, ckpt):
    rng = np.random.default_rng(0)
    good, bad = rng.random((3, 8, 8), dtype=np.float32), rng.random((3, 8, 8), dtype=np.float32)
    bad[1, 2, 3], bad[0, 0, 0] = np.nan, np.inf
    np.save(tmp_path / 'good.npy', good)
    np.save(tmp_path / 'bad.npy', bad)
    out = tmp_path / 'out'
    assert infer(tmp_path / 'bad.npy', tmp_path / 'good.npy', '--ckpt', ckpt, '--scale', '2', '-o', out) == 1
    err = capsys.readouterr().err
    assert f'input {tmp_path / "bad.npy"} has 1 NaN and 1 inf of 192 values, first at (0, 0, 0)' in err
    assert sorted(p.name for p in out.iterdir()) == ['good_X2.00.npy']
    with torch.no_grad():
        ref = tiny_net()(torch.from_numpy(good)[None], scale=2)[0].numpy()
    np.testing.assert_allclose(np.load(out / 'good_X2.00.npy'), ref, rtol=1e-4, atol=1e-5)
    # the documented escape hatch: run it anyway, written with a warning naming the file
    assert infer(tmp_path / 'bad.npy', '--ckpt', ckpt, '--scale', '2', '-o', out, '--nan-policy', 'propagate') == 0
    err = capsys.readouterr().err
    assert f'warning: {out / "bad_X2.00.npy"}: output has' in err
    assert not np.isfinite(np.load(out / 'bad_X2.00.npy')).all()


def test_nonfinite_output_is_never_written(tmp_path, capsys, ckpt):
    """Finite input, overflowing network (x * img_range beyond float32): refused, nothing written."""
    np.save(tmp_path / 'huge.npy', np.full((3, 8, 8), 3e38, dtype=np.float32))
    assert infer(tmp_path / 'huge.npy', '--ckpt', ckpt, '--scale', '2', '-o', tmp_path / 'out') == 1
    err = capsys.readouterr().err
    assert 'NonFiniteError: output has' in err and 'not written' in err
    assert not list((tmp_path / 'out').iterdir())


@pytest.mark.parametrize('command', [infer, export])
def test_nonfinite_weight_refused_at_load_with_its_name(tmp_path, capsys, command):
    state = tiny_net().state_dict()
    state['upsample.pos2weight.meta_block.2.weight'][3, 1] = float('nan')
    path = tmp_path / 'nan.pth'
    torch.save({'params': state, 'network_opt': dict(NET)}, path)
    image(tmp_path / 'in.png')
    assert command(*io_args(tmp_path, command), '--ckpt', path) == 2
    err = capsys.readouterr().err
    assert f"--ckpt {path} [params]: weight 'upsample.pos2weight.meta_block.2.weight' has 1 NaN" in err
    with pytest.raises(NonFiniteError, match='meta_block.2.weight'):
        build_and_load(dict(NET), state)


# --------------------------------------------------------------------------- 6. integer tensors, bicubic start
def tiny_swinir() -> SwinIRMeta:
    return SwinIRMeta(img_size=8, embed_dim=12, depths=[1], num_heads=[2], window_size=4, mlp_ratio=1.,
                      num_feat=8, hidden_channels=8).eval()


@pytest.mark.parametrize('make', [tiny_net, tiny_swinir, lambda: FixedScaleRDN(2, num_feat=8, num_block=1,
                                                                                 num_layer=1, num_grow_ch=4)])
def test_networks_refuse_integer_tensors_by_name(make):
    net = make()
    x = torch.randint(0, 256, (1, 3, 8, 8), dtype=torch.uint8)
    with pytest.raises(TypeError, match='x must be a floating-point tensor .* got torch.uint8'):
        net(x, scale=2)
    with pytest.raises(TypeError, match='got torch.int64'):
        net(x.long(), scale=2)


def _reference_bicubic(x: torch.Tensor, scale: int) -> np.ndarray:
    """BasicSR's MATLAB imresize (an implementation independent of the plugin's) at an integer scale."""
    from basicsr.utils.matlab_functions import imresize
    return np.stack([imresize(img.permute(1, 2, 0).double().numpy(), scale).transpose(2, 0, 1) for img in x])


@pytest.mark.parametrize('network', ['MetaRDN', 'FixedScaleRDN'])
def test_bicubic_skip_model_starts_exactly_at_bicubic(tmp_path, network):
    from test_training import make_opt

    from metasr_arch.models.metasr_model import MetaSRModel
    opt = make_opt(tmp_path, ema_decay=0.9)
    opt['bicubic_skip'] = True
    if network == 'FixedScaleRDN':
        opt['network_g'] = {'type': 'FixedScaleRDN', 'scale': 2, 'num_feat': 8, 'num_block': 1, 'num_layer': 1,
                            'num_grow_ch': 4}
    model = MetaSRModel(opt)
    x = torch.rand(2, 3, 10, 12, generator=torch.Generator().manual_seed(0))
    ref = _reference_bicubic(x, 2)
    model.scale, model.out_size = (2.0, 2.0), None
    for net in (model.net_g, model.net_g_ema):
        with torch.no_grad():
            out = model.net_forward(net, x)
        np.testing.assert_allclose(out.double().numpy(), ref, rtol=1e-4, atol=1e-5)
    # what it saves loads for inference as the same residual network: bicubic again
    model.save_network(model.net_g, 'net_g', 0)
    net = load_network(None, str(tmp_path / 'exp' / 'models' / 'net_g_0.pth'))
    assert net.metasr_bicubic_skip and net.predicts_residual
    np.testing.assert_allclose(run_network(net, x, scale=2).double().numpy(), ref, rtol=1e-4, atol=1e-5)
    # and it learns: one step moves it off bicubic
    model.lq, model.gt = x, torch.rand(2, 3, 20, 24)
    model.optimize_parameters(1)
    with torch.no_grad():
        assert not np.allclose(model.net_forward(model.net_g, x).numpy(), ref, atol=1e-5)


def test_weights_without_the_residual_flag_keep_adding_the_mean():
    """Checkpoints trained before the flag keep their meaning: the mean is added back."""
    net = tiny_net()
    head = net.upsample.pos2weight.meta_block[-1]
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    loaded = build_and_load(dict(NET), net.state_dict())
    assert not loaded.predicts_residual
    with torch.no_grad():
        out = loaded(torch.rand(1, 3, 8, 8), scale=2)
    np.testing.assert_allclose(out[0, :, 0, 0].numpy(), [0.4488, 0.4371, 0.4040], rtol=1e-6)


# --------------------------------------------------------------------------- 7. earlier outputs never re-upscaled
def test_rerun_into_input_folder_at_other_requests_skips_earlier_outputs(tmp_path, capsys, ckpt):
    image(tmp_path / 'a.png')
    assert infer(tmp_path, '--ckpt', ckpt, '--scale', '2', '-o', tmp_path) == 0
    assert infer(tmp_path, '--ckpt', ckpt, '--scale', '3', '1.5x2', '-o', tmp_path) == 0
    assert infer(tmp_path, '--ckpt', ckpt, '--size', '20x20', '-o', tmp_path) == 0
    err = capsys.readouterr().err
    assert 'skipped 3 file(s) named like outputs of an earlier run' in err
    assert sorted(p.name for p in tmp_path.glob('*.png')) == [
        'a.png', 'a_20x20.png', 'a_X1.50_X2.00.png', 'a_X2.00.png', 'a_X3.00.png']
    # named explicitly, an earlier output is an input like any other
    assert infer(tmp_path / 'a_X2.00.png', '--ckpt', ckpt, '--scale', '2', '-o', tmp_path) == 0
    assert (tmp_path / 'a_X2.00_X2.00.png').is_file()


# --------------------------------------------------------------------------- 5. export's file errors
def _one_named_line(capsys, text: str) -> None:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith('error:')]
    assert len(lines) == 1 and text in lines[0], err
    assert 'Traceback' not in err


def test_export_refuses_existing_file_without_overwrite(tmp_path, capsys, ckpt):
    out = tmp_path / 'm.onnx'
    out.write_bytes(b'keep')
    assert export('--ckpt', ckpt, '-o', out) == 2
    _one_named_line(capsys, f'-o {out}: exists; pass --overwrite to replace it')
    assert out.read_bytes() == b'keep'
    assert export('--ckpt', ckpt, '-o', out, '--overwrite') == 0
    assert out.read_bytes()[:4] != b'keep'


def test_export_refuses_a_folder_an_unwritable_folder_and_a_bad_opset(tmp_path, capsys, ckpt):
    (tmp_path / 'd.onnx').mkdir()
    assert export('--ckpt', ckpt, '-o', tmp_path / 'd.onnx') == 2
    _one_named_line(capsys, f'-o {tmp_path / "d.onnx"}: is a folder')
    for opset in ('6', '99'):
        assert export('--ckpt', ckpt, '-o', tmp_path / 'm.onnx', '--opset', opset) == 2
        _one_named_line(capsys, f'--opset {opset}: torch {torch.__version__} exports ONNX opsets 7 to')
    if Path('/sys').is_dir() and not os.access('/sys', os.W_OK):  # read-only even for root
        assert export('--ckpt', ckpt, '-o', '/sys/m.onnx') == 2
        _one_named_line(capsys, '-o /sys/m.onnx: cannot write in /sys')


@pytest.mark.parametrize('fmt', ['onnx', 'torchscript'])
def test_export_full_disk_is_one_line_and_leaves_nothing(tmp_path, capsys, ckpt, monkeypatch, fmt):
    import metasr_arch.deploy.export as deploy_export
    real = deploy_export.write_export

    def full_disk(model, path, *args, **kwargs):
        real(model, path, *args, **kwargs)  # the exporter ran; the disk filled up while writing
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(deploy_export, 'write_export', full_disk)
    assert export('--ckpt', ckpt, '-o', tmp_path / 'm', '--format', fmt) == 2
    _one_named_line(capsys, f'-o {tmp_path / "m"}.{"onnx" if fmt == "onnx" else "pt"}: cannot write (No space left')
    assert list(tmp_path.iterdir()) == [ckpt]


def test_real_photo_through_a_trained_checkpoint(tmp_path, capsys, ckpt):
    """A user's run: skimage photo in, network output checked against the network itself."""
    from skimage import data
    cv2.imwrite(str(tmp_path / 'cam.png'), data.camera()[::16, ::16])
    assert infer(tmp_path / 'cam.png', '--ckpt', ckpt, '--scale', '2.5', '-o', tmp_path / 'o') == 0
    out = cv2.imread(str(tmp_path / 'o' / 'cam_X2.50.png'), cv2.IMREAD_UNCHANGED)
    x = torch.from_numpy(data.camera()[::16, ::16].astype(np.float32) / 255)[None].expand(3, -1, -1)[None]
    with torch.no_grad():
        ref = tiny_net()(x, scale=2.5)[0].mean(0).clamp(0, 1).numpy()
    assert out.shape == (80, 80) and np.abs(out.astype(np.float64) - np.rint(ref * 255)).max() <= 1
