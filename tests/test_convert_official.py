"""The official Meta-RDN checkpoint converter, against an independent re-implementation of the official forward."""
import importlib.util
import math
from pathlib import Path

import metasr_arch  # noqa: F401  (before basicsr)

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from metasr_arch.archs.metardn_arch import MetaRDN
from metasr_arch.inference.checkpoint import load_network

SCRIPT = Path(__file__).resolve().parents[1] / 'scripts' / 'convert_official_metardn.py'
RGB_MEAN = (0.4488, 0.4371, 0.4040)
G0, D, C, G = 6, 2, 3, 4  # small official-style configuration


def load_script():
    spec = importlib.util.spec_from_file_location('convert_official_metardn', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


conv = load_script()


def official_state_dict(seed: int = 0, rgb_range: float = 255., std=(1.0, 1.0, 1.0)) -> dict:
    """Random weights under the official key names and shapes (model/metardn.py of Meta-SR-Pytorch)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.1):
        return (torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1) * scale

    sd = {}
    std_t = torch.tensor(std, dtype=torch.float64)
    mean_t = torch.tensor(RGB_MEAN, dtype=torch.float64)
    for name, sign in (('sub_mean', -1), ('add_mean', 1)):
        sd[f'{name}.weight'] = torch.eye(3, dtype=torch.float64).view(3, 3, 1, 1) / std_t.view(3, 1, 1, 1)
        sd[f'{name}.bias'] = sign * rgb_range * mean_t / std_t
    sd['SFENet1.weight'], sd['SFENet1.bias'] = rand(G0, 3, 3, 3), rand(G0)
    sd['SFENet2.weight'], sd['SFENet2.bias'] = rand(G0, G0, 3, 3), rand(G0)
    for i in range(D):
        for c in range(C):
            sd[f'RDBs.{i}.convs.{c}.conv.0.weight'] = rand(G, G0 + c * G, 3, 3)
            sd[f'RDBs.{i}.convs.{c}.conv.0.bias'] = rand(G)
        sd[f'RDBs.{i}.LFF.weight'], sd[f'RDBs.{i}.LFF.bias'] = rand(G0, G0 + C * G, 1, 1), rand(G0)
    sd['GFF.0.weight'], sd['GFF.0.bias'] = rand(G0, D * G0, 1, 1), rand(G0)
    sd['GFF.1.weight'], sd['GFF.1.bias'] = rand(G0, G0, 3, 3), rand(G0)
    sd['P2W.meta_block.0.weight'], sd['P2W.meta_block.0.bias'] = rand(256, 3, scale=1.0), rand(256)
    sd['P2W.meta_block.2.weight'], sd['P2W.meta_block.2.bias'] = rand(9 * G0 * 3, 256), rand(9 * G0 * 3)
    return sd


def official_forward(sd: dict, x: torch.Tensor, scale: int) -> torch.Tensor:
    """The official MetaRDN.forward at an integer scale, rewritten from its description: mean shift,
    RDN trunk, then repeat the features scale x scale times, unfold 3x3, matmul with the weights the
    MLP predicts for the (1/r, fv, fh) position matrix, and interleave. Input/output in [0, rgb_range]."""
    x = F.conv2d(x, sd['sub_mean.weight'], sd['sub_mean.bias'])
    f1 = F.conv2d(x, sd['SFENet1.weight'], sd['SFENet1.bias'], padding=1)
    h = F.conv2d(f1, sd['SFENet2.weight'], sd['SFENet2.bias'], padding=1)
    outs = []
    for i in range(D):
        inp = h
        for c in range(C):
            y = F.relu(F.conv2d(h, sd[f'RDBs.{i}.convs.{c}.conv.0.weight'], sd[f'RDBs.{i}.convs.{c}.conv.0.bias'],
                                padding=1))
            h = torch.cat((h, y), 1)
        h = F.conv2d(h, sd[f'RDBs.{i}.LFF.weight'], sd[f'RDBs.{i}.LFF.bias']) + inp
        outs.append(h)
    feat = F.conv2d(torch.cat(outs, 1), sd['GFF.0.weight'], sd['GFF.0.bias'])
    feat = F.conv2d(feat, sd['GFF.1.weight'], sd['GFF.1.bias'], padding=1) + f1

    n, c_in, in_h, in_w = feat.shape
    s = scale
    out_h, out_w = s * in_h, s * in_w
    # position matrix as the official input_matrix_wpn builds it: row i*outW + j = (1/r, fv(i), fh(j))
    t_h = torch.arange(out_h, dtype=torch.float64) * (1.0 / s)
    t_w = torch.arange(out_w, dtype=torch.float64) * (1.0 / s)
    fv, fh = t_h - torch.floor(t_h), t_w - torch.floor(t_w)
    gv, gh = torch.meshgrid(fv, fh, indexing='ij')
    pos = torch.stack([torch.full_like(gv, 1.0 / s), gv, gh], -1).view(-1, 3)
    hidden = F.relu(F.linear(pos, sd['P2W.meta_block.0.weight'], sd['P2W.meta_block.0.bias']))
    local_weight = F.linear(hidden, sd['P2W.meta_block.2.weight'], sd['P2W.meta_block.2.bias'])
    # repeat_weight: views the (outH*outW, D) weights as (k, k, D) with k = sqrt(outH*outW) (square maps)
    k = int(math.sqrt(local_weight.shape[0]))
    local_weight = local_weight.view(k, k, -1)[:out_h, :out_w]
    # repeat_x: (N, C, h, w) -> (N*s*s, C, h, w), every copy the same features
    up = feat.view(n, c_in, in_h, 1, in_w, 1).expand(n, c_in, in_h, s, in_w, s).permute(0, 3, 5, 1, 2, 4)
    up = up.reshape(n * s * s, c_in, in_h, in_w)
    cols = F.unfold(up, 3, padding=1)  # (N*s*s, C*9, h*w)
    cols = cols.view(n, s * s, c_in * 9, in_h * in_w, 1).permute(0, 1, 3, 4, 2)  # (N, s*s, h*w, 1, C*9)
    w = local_weight.reshape(in_h, s, in_w, s, c_in * 9, 3).permute(1, 3, 0, 2, 4, 5).reshape(s * s, in_h * in_w,
                                                                                            c_in * 9, 3)
    out = torch.matmul(cols, w).permute(0, 1, 4, 2, 3)  # (N, s*s, 3, h*w, 1)
    out = out.reshape(n, s, s, 3, in_h, in_w).permute(0, 3, 4, 1, 5, 2).reshape(n, 3, out_h, out_w)
    return F.conv2d(out, sd['add_mean.weight'], sd['add_mean.bias'])


def converted_net(sd: dict, impl: str = 'phase') -> MetaRDN:
    net = MetaRDN(**conv.official_config(sd), impl=impl).double()
    net.load_state_dict(conv.convert_official_state_dict(sd), strict=True)
    return net.eval()


def test_config_read_from_shapes():
    cfg = conv.official_config(official_state_dict())
    mean = cfg.pop('rgb_mean')
    assert cfg == dict(num_in_ch=3, num_out_ch=3, num_feat=G0, num_block=D, num_layer=C, num_grow_ch=G,
                       kernel_size=3, hidden_channels=256, img_range=255.)
    assert mean == pytest.approx(RGB_MEAN, rel=1e-15)


def test_means_are_the_checkpoints_float32_biases():
    sd = {k: v.float() for k, v in official_state_dict().items()}
    mean = conv.official_config(sd)['rgb_mean']
    assert mean == tuple((-sd['sub_mean.bias'].double() / 255).tolist())  # not the nominal 0.4488, ...
    assert mean != RGB_MEAN


def official_trained(steps: int = 3, seed: int = 4, std=(1.0, 1.0, 1.0)) -> dict:
    """An official-style state dict after ``steps`` Adam steps of an L1 loss at x2, as the official code
    trains it: MeanShift's ``requires_grad = False`` is set on the module and freezes nothing, so
    sub_mean/add_mean move with every other weight."""
    sd = {k: v.clone().requires_grad_(True) for k, v in official_state_dict(seed=seed, std=std).items()}
    opt = torch.optim.Adam(sd.values(), lr=1e-4)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.rand(2, 3, 5, 5, generator=g, dtype=torch.float64) * 255
        target = torch.rand(2, 3, 10, 10, generator=g, dtype=torch.float64) * 255
        loss = (official_forward(sd, x, 2) - target).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach() for k, v in sd.items()}


@pytest.mark.parametrize('std', [(1.0, 1.0, 1.0), (0.5, 0.8, 1.2)])
@pytest.mark.parametrize('scale', [2, 3])
def test_trained_mean_shifts_are_folded_exactly(scale, std):
    sd = official_trained(std=std)
    eye = torch.eye(3, dtype=torch.float64)
    assert (sd['sub_mean.weight'].flatten(1) - torch.diag(1 / torch.tensor(std, dtype=torch.float64))
            ).abs().max() > 5e-5  # training moved the "frozen" shift
    assert not torch.equal(sd['add_mean.weight'].flatten(1), eye)
    cfg = conv.official_config(sd)
    assert 'out_mean' in cfg  # add_mean no longer undoes sub_mean
    x255 = torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(9), dtype=torch.float64) * 255  # square: official
    expected = official_forward(sd, x255, scale)
    with torch.no_grad():
        ours = converted_net(sd)(x255 / 255, scale=scale) * 255
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize('impl', ['phase', 'im2col'])
@pytest.mark.parametrize('scale', [2, 3])
def test_converted_matches_official_forward(scale, impl):
    sd = official_state_dict(seed=scale)
    x255 = torch.rand(2, 3, 5, 5, generator=torch.Generator().manual_seed(7), dtype=torch.float64) * 255
    expected = official_forward(sd, x255, scale)
    with torch.no_grad():
        ours = converted_net(sd, impl)(x255 / 255, scale=scale) * 255
    assert ours.shape == expected.shape == (2, 3, 5 * scale, 5 * scale)
    assert torch.allclose(ours, expected, atol=1e-6, rtol=0), (ours - expected).abs().max()


def test_head_layout_permutation_matters():
    """Loading the official last layer without the (ci, k1, k2, co) -> (k1, k2, ci, co) permutation is wrong."""
    sd = official_state_dict(seed=5)
    net = converted_net(sd)
    state = net.state_dict()
    state['upsample.pos2weight.meta_block.2.weight'] = sd['P2W.meta_block.2.weight']
    state['upsample.pos2weight.meta_block.2.bias'] = sd['P2W.meta_block.2.bias']
    net.load_state_dict(state)
    x255 = torch.rand(1, 3, 5, 5, dtype=torch.float64) * 255
    with torch.no_grad():
        wrong = net(x255 / 255, scale=2) * 255
    assert (wrong - official_forward(sd, x255, 2)).abs().max() > 1e-3


def test_first_layer_mapping_and_zero_rh_column():
    sd = official_state_dict()
    out = conv.convert_official_state_dict(sd)
    w_old, w_new = sd['P2W.meta_block.0.weight'], out['upsample.pos2weight.meta_block.0.weight']
    assert w_new.shape == (256, 4)
    assert torch.equal(w_new[:, 0], w_old[:, 1]) and torch.equal(w_new[:, 1], w_old[:, 2])
    assert torch.equal(w_new[:, 2], w_old[:, 0]) and not w_new[:, 3].any()
    # asymmetric requests run; r_h only enters through the zero column, so 1/r_h changes nothing
    net = converted_net(sd)
    x = torch.rand(1, 3, 4, 6, dtype=torch.float64)
    a = net(x, scale=(2.0, 3.0))
    b = net.upsample.pos2weight(torch.tensor([[0.5, 0.5, 0.5, 0.1]], dtype=torch.float64))
    c = net.upsample.pos2weight(torch.tensor([[0.5, 0.5, 0.5, 0.9]], dtype=torch.float64))
    assert a.shape == (1, 3, 8, 18) and torch.equal(b, c)


def test_prefixes_and_wrappers_are_accepted():
    sd = official_state_dict()
    plain = conv.convert_official_state_dict(sd)
    for wrapped in ({f'module.{k}': v for k, v in sd.items()}, {'state_dict': sd}):
        other = conv.convert_official_state_dict(wrapped)
        assert other.keys() == plain.keys() and all(torch.equal(other[k], plain[k]) for k in plain)


def test_bad_checkpoints_raise():
    sd = official_state_dict()
    with pytest.raises(ValueError, match='unexpected key'):
        conv.convert_official_state_dict({**sd, 'tail.weight': torch.zeros(1)})
    with pytest.raises(KeyError, match='SFENet1.weight'):
        conv.convert_official_state_dict({k: v for k, v in sd.items() if not k.startswith('SFENet1')})
    singular = official_state_dict()
    singular['sub_mean.weight'] = torch.zeros(3, 3, 1, 1, dtype=torch.float64)
    with pytest.raises(ValueError, match='sub_mean.weight is .*singular'):
        conv.official_config(singular)


def test_cli_writes_loadable_checkpoint(tmp_path, capsys):
    sd = {k: v.float() for k, v in official_state_dict().items()}
    src, dst = tmp_path / 'official.pt', tmp_path / 'out' / 'metardn.pth'
    torch.save(sd, src)
    assert conv.main(['--input', str(src), '--output', str(dst)]) == 0
    assert 'type: MetaRDN' in capsys.readouterr().out
    assert [p.name for p in dst.parent.iterdir()] == ['metardn.pth']  # no temporary file left behind
    # the checkpoint records its network options: load_network (infer, export) needs no --opt
    net = load_network(ckpt=str(dst))
    assert isinstance(net, MetaRDN)
    x255 = torch.rand(1, 3, 5, 5) * 255
    expected = official_forward({k: v.double() for k, v in sd.items()}, x255.double(), 2)
    with torch.no_grad():
        assert torch.allclose(net(x255 / 255, scale=2).double() * 255, expected, atol=1e-3)


def test_cli_trained_float32_checkpoint_alone_in_infer(tmp_path):
    """A float32 checkpoint after official training steps: converted, then run by the infer CLI without --opt."""
    sd = {k: v.float() for k, v in official_trained().items()}
    src, dst = tmp_path / 'official.pt', tmp_path / 'metardn.pth'
    torch.save(sd, src)
    assert conv.main(['--input', str(src), '--output', str(dst)]) == 0
    x = torch.rand(1, 3, 6, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    np.save(tmp_path / 'x.npy', x[0].numpy().astype(np.float32))  # (C, h, w)
    from metasr_arch.infer import main as infer
    assert infer([str(tmp_path / 'x.npy'), '--ckpt', str(dst), '--scale', '2', '-o', str(tmp_path / 'out'),
                  '--quiet', '--device', 'cpu']) == 0
    got = np.load(next((tmp_path / 'out').glob('*.npy')))
    expected = official_forward({k: v.double() for k, v in sd.items()}, x.float().double() * 255, 2)[0] / 255
    assert got.shape == (3, 12, 12)
    np.testing.assert_allclose(got, expected.numpy(), rtol=0, atol=1e-4)
