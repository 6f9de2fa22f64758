"""The official Meta-RDN checkpoint converter, against an independent re-implementation of the official forward."""
import importlib.util
import math
from pathlib import Path

import metasr_arch  # noqa: F401  (before basicsr)

import pytest
import torch
import torch.nn.functional as F

from metasr_arch.archs.metardn_arch import MetaRDN

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
    assert cfg == dict(num_in_ch=3, num_out_ch=3, num_feat=G0, num_block=D, num_layer=C, num_grow_ch=G,
                       kernel_size=3, hidden_channels=256, img_range=255., rgb_mean=RGB_MEAN)


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
    with pytest.raises(ValueError, match='rgb_std'):
        conv.official_config(official_state_dict(std=(0.5, 1.0, 1.0)))


def test_cli_writes_loadable_checkpoint(tmp_path, capsys):
    sd = {k: v.float() for k, v in official_state_dict().items()}
    src, dst = tmp_path / 'official.pt', tmp_path / 'out' / 'metardn.pth'
    torch.save(sd, src)
    assert conv.main(['--input', str(src), '--output', str(dst)]) == 0
    assert 'type: MetaRDN' in capsys.readouterr().out
    assert [p.name for p in dst.parent.iterdir()] == ['metardn.pth']  # no temporary file left behind
    params = torch.load(dst, weights_only=True)['params']
    net = MetaRDN(**conv.official_config(sd))
    net.load_state_dict(params, strict=True)
    x255 = torch.rand(1, 3, 5, 5) * 255
    expected = official_forward({k: v.double() for k, v in sd.items()}, x255.double(), 2)
    with torch.no_grad():
        assert torch.allclose(net(x255 / 255, scale=2).double() * 255, expected, atol=1e-3)
