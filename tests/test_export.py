"""Export of a Meta-SR network frozen at a fixed request: the frozen head, ONNX Runtime / TorchScript /
torch.export outputs against the PyTorch network, the gridded 96x144 -> 721x1440 request, the CLI and the
ONNX Runtime example of docs/deploy.md."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from metasr_arch.archs.meta_upsample_arch import MetaUpsample
from metasr_arch.archs.metardn_arch import MetaRDN
from metasr_arch.archs.swinir_meta_arch import SwinIRMeta
from metasr_arch.deploy import frozen
from metasr_arch.deploy.export import check_inputs, export_checked, load_runner, write_export
from metasr_arch.deploy.frozen import MODES, choose_mode, freeze, freeze_head
from metasr_arch.ops.geometry import axis_projection, resolve_scale
from metasr_arch.utils.resize import imresize_to
from metasr_arch.utils.safetensors_ckpt import save_safetensors_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
TINY = {'num_feat': 8, 'num_block': 1, 'num_layer': 2, 'num_grow_ch': 8, 'hidden_channels': 16}
# (request, input size): integer, non-integer, asymmetric, exact size with non-repeating phases
REQUESTS = [(('scale', (2.0, 2.0)), (12, 10)), (('scale', (2.5, 2.5)), (11, 13)), (('scale', (2.0, 3.5)), (9, 11)),
            (('size', (53, 71)), (7, 9))]


def tiny_net(seed=0, channels=3, bicubic_skip=True, **kw):
    torch.manual_seed(seed)
    net = MetaRDN(num_in_ch=channels, num_out_ch=channels, **dict(TINY, **kw)).eval()
    net.metasr_bicubic_skip = bicubic_skip
    return net


def expected(net, x, request):
    """The network's own output: Pos2Weight at run time, mean and bicubic skip added here."""
    kind, value = request
    with torch.no_grad():
        y = net(x, scale=value) if kind == 'scale' else net(x, out_size=value)
    return y + imresize_to(x, tuple(y.shape[-2:])) if net.metasr_bicubic_skip else y


def rel_err(a, b):
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float((a - b).abs().max() / max(1.0, float(b.abs().max())))


@pytest.mark.parametrize('mode', MODES)
@pytest.mark.parametrize('request_, size', REQUESTS)
def test_frozen_head_modes_equal_meta_upsample(mode, request_, size):
    torch.manual_seed(1)
    head = MetaUpsample(6, 2, kernel_size=3, hidden_channels=12)
    x = torch.randn(2, 6, *size)
    kind, value = request_
    spec = resolve_scale(*size, **({'scale': value} if kind == 'scale' else {'out_size': value}))
    with torch.no_grad():
        head.impl = 'im2col'  # the paper-faithful reference, per-pixel weights
        ref = head.double()(x.double(), **({'scale': value} if kind == 'scale' else {'out_size': value}))
        out = freeze_head(head.float(), spec, size, mode)(x)
    assert out.shape == ref.shape and rel_err(out, ref) < 1e-5


def test_choose_mode():
    def mode(h, w, out_h, out_w, kk=72, c_out=3):
        spec = resolve_scale(h, w, out_size=(out_h, out_w))
        return choose_mode(axis_projection(h, out_h, spec.r_v), axis_projection(w, out_w, spec.r_h), h, w, kk, c_out)
    assert mode(64, 64, 128, 128) == 'conv'  # x2: a sub-pixel convolution
    assert mode(256, 256, 640, 640) == 'conv'  # x2.5: 5 phases per axis
    assert mode(96, 144, 721, 1440, kk=1404, c_out=1) == 'rows'  # 721 row phases, 10 column phases
    assert mode(144, 96, 1440, 721, kk=1404, c_out=1) == 'cols'


def test_no_mode_fits_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(frozen, 'CONST_BUDGET_BYTES', 1 << 16)
    with pytest.raises(ValueError, match='phases repeat along neither axis'):
        freeze(tiny_net(), ('size', (721, 1439)), (96, 144))


@pytest.mark.parametrize('request_, size', REQUESTS[:3])
def test_onnx_runtime_equals_pytorch(tmp_path, request_, size):
    """ONNX Runtime (CPU) on noise and a photograph equals the PyTorch network within 1e-4 (relative to max)."""
    import onnxruntime as ort
    net = tiny_net()
    path = tmp_path / 'm.onnx'
    results = export_checked(net, freeze(net, request_, size), path, 'onnx', request_, batch=2)
    assert [r.name for r in results] == ['random', 'photo'] and all(r.passed for r in results)
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    assert session.get_inputs()[0].shape == [2, 3, *size]
    for _, x in check_inputs((2, 3, *size)):
        y = session.run(None, {'lr': x})[0]
        assert rel_err(y, expected(net, torch.from_numpy(x), request_)) < 1e-4
    # the same request on the other image of the batch: the images do not mix
    x = check_inputs((2, 3, *size))[1][1]
    x[0] = 0.5
    y = session.run(None, {'lr': x})[0]
    assert rel_err(y[1], expected(net, torch.from_numpy(x[1:]), request_)[0]) < 1e-4


def test_gridded_request_96x144_to_721x1440(tmp_path):
    """The daily gridded mapping with a small single-channel network (rows mode: 721 row phases)."""
    import onnxruntime as ort
    net = tiny_net(channels=1, bicubic_skip=True, mean=0.25)
    request = ('size', (721, 1440))
    model = freeze(net, request, (96, 144))
    assert model.net.upsample.mode == 'rows'
    results = export_checked(net, model, tmp_path / 'grid.onnx', 'onnx', request, batch=1)
    assert all(r.passed for r in results)
    session = ort.InferenceSession(str(tmp_path / 'grid.onnx'), providers=['CPUExecutionProvider'])
    x = check_inputs((1, 1, 96, 144))[1][1]
    y = session.run(None, {'lr': x})[0]
    assert y.shape == (1, 1, 721, 1440)
    assert rel_err(y, expected(net, torch.from_numpy(x), request)) < 1e-4


def test_periodic_network_exports_with_its_wrap(tmp_path):
    """A periodic_w network (the gridded case) exports with its wrapped head and periodic bicubic skip:
    ONNX Runtime equals the network plus the periodic bicubic, at a non-integer and an exact request."""
    import onnxruntime as ort
    from metasr_arch.archs.periodic import imresize_periodic_w
    net = tiny_net(channels=1, bicubic_skip=True, mean=0.25, periodic_w=True)
    for i, request in enumerate([('scale', (2.5, 3.5)), ('size', (37, 50))]):
        path = tmp_path / f'p{i}.onnx'
        results = export_checked(net, freeze(net, request, (9, 12)), path, 'onnx', request, batch=1)
        assert all(r.passed for r in results)
        x = check_inputs((1, 1, 9, 12))[0][1]
        y = ort.InferenceSession(str(path), providers=['CPUExecutionProvider']).run(None, {'lr': x})[0]
        xt = torch.from_numpy(x)
        with torch.no_grad():
            kind, value = request
            ref = net(xt, scale=value) if kind == 'scale' else net(xt, out_size=value)
        ref = ref + imresize_periodic_w(xt, tuple(ref.shape[-2:]))
        assert rel_err(y, ref) < 1e-4
        # and not the zero-padded / mirrored one: the wrap matters at the edges
        assert rel_err(y, expected(net, xt, request)) > 1e-3


@pytest.mark.parametrize('fmt', ['torchscript', 'exported'])
def test_torchscript_and_torch_export_equal_pytorch(tmp_path, fmt):
    net = tiny_net(seed=3)
    request, size = REQUESTS[2]
    path = tmp_path / f'm.{fmt}'
    assert all(r.passed for r in export_checked(net, freeze(net, request, size), path, fmt, request, batch=1))
    x = torch.rand(1, 3, *size)
    assert rel_err(load_runner(path, fmt)(x.numpy()), expected(net, x, request)) < 1e-4


def test_swinir_and_dynamo_exporter(tmp_path):
    """SwinIRMeta (window padding inside the trunk) through torch's dynamo ONNX exporter."""
    torch.manual_seed(0)
    net = SwinIRMeta(img_size=8, window_size=4, embed_dim=12, depths=[1], num_heads=[2], num_feat=8,
                     hidden_channels=16, in_chans=1, mean=0.3).eval()
    request = ('scale', (2.5, 1.5))
    results = export_checked(net, freeze(net, request, (10, 13)), tmp_path / 's.onnx', 'onnx', request, batch=1,
                             onnx_exporter='dynamo')
    assert all(r.passed for r in results)


def test_failed_check_leaves_no_file(tmp_path):
    net = tiny_net()
    request, size = REQUESTS[1]
    model = freeze(net, request, size)
    with torch.no_grad():
        model.net.upsample.weight.mul_(1.01)
    with pytest.raises(RuntimeError, match='differs from the PyTorch network'):
        export_checked(net, model, tmp_path / 'bad.onnx', 'onnx', request, batch=1)
    assert os.listdir(tmp_path) == []


def write_tiny_checkpoint(path, seed=0):
    opt = dict(TINY, type='MetaRDN')
    net = tiny_net(seed)
    save_safetensors_checkpoint({'params': net.state_dict(), 'network_opt': opt, 'bicubic_skip': True}, path)
    return net


def test_cli_several_requests(tmp_path, capsys):
    net = write_tiny_checkpoint(tmp_path / 'w.safetensors')
    run = subprocess.run([sys.executable, '-m', 'metasr_arch.export', '--ckpt', str(tmp_path / 'w.safetensors'),
                          '--scale', '2', '2x3.5', '--size', '30x41', '--input-size', '12x10', '-o',
                          str(tmp_path / 'out' / 'tiny.onnx')], env=ENV, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert sorted(os.listdir(tmp_path / 'out')) == ['tiny_30x41.onnx', 'tiny_X2.00.onnx', 'tiny_X2.00_X3.50.onnx']
    assert run.stdout.count('photo max error') == 3
    x = torch.rand(1, 3, 12, 10)
    y = load_runner(tmp_path / 'out' / 'tiny_30x41.onnx', 'onnx')(x.numpy())
    assert rel_err(y, expected(net, x, ('size', (30, 41)))) < 1e-4
    from metasr_arch.export import main
    assert main(['--ckpt', str(tmp_path / 'w.safetensors'), '--scale', '0.5', '--input-size', '12x10',
                 '-o', str(tmp_path / 'x.onnx')]) == 2
    assert '--scale' in capsys.readouterr().err
    assert main(['--ckpt', str(tmp_path / 'w.safetensors'), '--scale', '2', '--input-size', '12x10',
                 '-o', str(tmp_path / 'w.safetensors')]) == 2
    assert 'would overwrite the checkpoint' in capsys.readouterr().err


def doc_python_block():
    text = open(os.path.join(REPO, 'docs', 'deploy.md'), encoding='utf-8').read()
    blocks = re.findall(r'^```python\n(.*?)^```', text, flags=re.S | re.M)
    assert blocks, 'docs/deploy.md has no python block'
    return blocks[0]


def test_deploy_doc_onnx_runtime_example_runs(tmp_path):
    """The ten-line ONNX Runtime example of docs/deploy.md runs and writes the network's output."""
    import cv2
    code = doc_python_block()
    assert len(code.strip().splitlines()) <= 10
    net = tiny_net()
    model = freeze(net, ('scale', (2.5, 2.5)), (64, 64))
    write_export(model, tmp_path / 'metardn_X2.50.onnx', 'onnx', torch.zeros(1, 3, 64, 64))
    rgb = (check_inputs((1, 3, 64, 64))[1][1][0].transpose(1, 2, 0) * 255).round().astype(np.uint8)
    cv2.imwrite(str(tmp_path / 'lr.png'), rgb[..., ::-1])
    run = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    out = cv2.imread(str(tmp_path / 'sr.png'))[..., ::-1]
    x = torch.from_numpy(rgb.transpose(2, 0, 1)[None].astype(np.float32) / 255)
    ref = (expected(net, x, ('scale', (2.5, 2.5)))[0].clamp(0, 1) * 255).round().numpy().transpose(1, 2, 0)
    assert out.shape == (160, 160, 3) and np.abs(out.astype(np.float64) - ref).max() <= 1
