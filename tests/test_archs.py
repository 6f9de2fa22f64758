"""MetaRDN and SwinIRMeta: sizes, values against independent references, gradients, options, compile."""
import math
import warnings

import metasr_arch  # noqa: F401  (before basicsr)

import pytest
import torch
import torch.nn.functional as F
from basicsr.archs import build_network
from basicsr.archs.swinir_arch import SwinIR
from basicsr.utils.registry import ARCH_REGISTRY

from metasr_arch.archs.metardn_arch import MetaRDN
from metasr_arch.archs.swinir_meta_arch import SwinIRMeta
from reference import naive_meta_upscale, naive_positions

RGB_MEAN = (0.4488, 0.4371, 0.4040)
RDN_OPT = dict(num_feat=8, num_block=2, num_layer=2, num_grow_ch=4, hidden_channels=16)
SWIN_OPT = dict(img_size=8, embed_dim=8, depths=[2, 1], num_heads=[2, 2], window_size=4, mlp_ratio=2, num_feat=8,
                hidden_channels=16)


def make(kind: str, channels: int = 3, seed: int = 0, **extra):
    torch.manual_seed(seed)
    if kind == 'rdn':
        return MetaRDN(num_in_ch=channels, num_out_ch=channels, **{**RDN_OPT, **extra}).eval()
    return SwinIRMeta(in_chans=channels, **{**SWIN_OPT, **extra}).eval()  # eval: no random DropPath


def image(channels: int = 3, h: int = 13, w: int = 17, n: int = 2, seed: int = 1, dtype=torch.float32):
    return torch.rand(n, channels, h, w, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def expected_size(h, w, scale=None, out_size=None):
    if out_size is not None:
        return tuple(out_size)
    r_v, r_h = (scale, scale) if isinstance(scale, (int, float)) else scale
    return math.floor(h * r_v + 1e-9), math.floor(w * r_h + 1e-9)


REQUESTS = [dict(scale=2), dict(scale=2.5), dict(scale=(1.5, 3.2)), dict(scale=(4, 1)), dict(out_size=(20, 50)),
            dict(out_size=(13, 17))]


@pytest.mark.parametrize('kind', ['rdn', 'swin'])
@pytest.mark.parametrize('channels', [3, 1])
def test_output_sizes_on_odd_inputs(kind, channels):
    net = make(kind, channels)
    x = image(channels)
    with torch.no_grad():
        for request in REQUESTS:
            out = net(x, **request)
            assert out.shape == (2, channels, *expected_size(13, 17, **request)), request
            assert torch.isfinite(out).all()


def test_swin_input_smaller_than_window():
    net = make('swin')
    with torch.no_grad():
        assert net(image(h=3, w=2, n=1), scale=(2, 3.5)).shape == (1, 3, 6, 7)


@pytest.mark.parametrize('kind', ['rdn', 'swin'])
@pytest.mark.parametrize('channels', [3, 1])
def test_output_is_head_on_trunk_features(kind, channels):
    """out = naive Meta-SR upscale of the trunk features with the MLP's per-pixel weights, / img_range + mean."""
    net = make(kind, channels).double()
    x = image(channels, h=7, w=9, dtype=torch.float64)
    r_v, r_h = 1.7, 2.5
    with torch.no_grad():
        out = net(x, scale=(r_v, r_h))
        feat = net.forward_trunk(x)
        out_h, out_w = expected_size(7, 9, (r_v, r_h))
        weight = net.upsample.pos2weight(naive_positions(7, 9, out_h, out_w, r_v, r_h))
        weight = weight.view(out_h, out_w, 3, 3, feat.shape[1], channels)
        mean = torch.tensor(RGB_MEAN if channels == 3 else [0.5], dtype=torch.float64).view(1, channels, 1, 1)
        expected = naive_meta_upscale(feat, weight, r_v, r_h, out_h, out_w, 3) / net.img_range + mean
    assert feat.shape == (2, 8, 7, 9)
    assert torch.allclose(out, expected, atol=1e-10, rtol=0)


@pytest.mark.parametrize('kind', ['rdn', 'swin'])
def test_head_implementations_agree(kind):
    net = make(kind)
    x = image()
    outs = {}
    with torch.no_grad():
        for impl in ('im2col', 'gather', 'phase', 'factorized'):
            net.impl = impl
            assert net.upsample.impl == impl
            outs[impl] = net(x, scale=(2.3, 1.6))
    for impl, out in outs.items():
        assert torch.allclose(out, outs['im2col'], atol=1e-5, rtol=0), impl


def test_metardn_trunk_matches_functional_rdn():
    """The RDN trunk against a loop written from the paper (dense layers, LFF + local residual, GFF + global)."""
    net = make('rdn').double()
    x = image(dtype=torch.float64)
    sd = net.state_dict()

    def conv(t, name, pad):
        return F.conv2d(t, sd[f'{name}.weight'], sd[f'{name}.bias'], padding=pad)

    t = (x - torch.tensor(RGB_MEAN, dtype=torch.float64).view(1, 3, 1, 1)) * 255.
    f1 = conv(t, 'sfe1', 1)
    h, outs = conv(f1, 'sfe2', 1), []
    for i in range(RDN_OPT['num_block']):
        dense = [h]
        for c in range(RDN_OPT['num_layer']):
            dense.append(torch.relu(conv(torch.cat(dense, 1), f'rdbs.{i}.convs.{c}', 1)))
        h = conv(torch.cat(dense, 1), f'rdbs.{i}.lff', 0) + h
        outs.append(h)
    expected = conv(conv(torch.cat(outs, 1), 'gff.0', 0), 'gff.1', 1) + f1
    with torch.no_grad():
        assert torch.allclose(net.forward_trunk(x), expected, atol=1e-9, rtol=0)


def test_swin_trunk_matches_basicsr_swinir():
    """Trunk = BasicSR's SwinIR up to conv_before_upsample (same parameter names), padding reflect + crop."""
    net = make('swin', num_feat=64).double()  # SwinIR's conv_before_upsample has 64 channels
    torch.manual_seed(3)
    ref = SwinIR(upscale=2, upsampler='pixelshuffle', in_chans=3, img_range=1., drop_path_rate=0.,
                 **{k: v for k, v in SWIN_OPT.items() if k not in ('num_feat', 'hidden_channels')}).double().eval()
    missing, unexpected = ref.load_state_dict(net.state_dict(), strict=False)
    assert sorted(missing) == ['conv_last.bias', 'conv_last.weight', 'upsample.0.bias', 'upsample.0.weight']
    assert all(k.startswith('upsample.pos2weight') for k in unexpected)

    def swinir_trunk(t):
        t = (t - torch.tensor(RGB_MEAN, dtype=torch.float64).view(1, 3, 1, 1)) * 1.
        t = ref.conv_first(t)
        return ref.conv_before_upsample(ref.conv_after_body(ref.forward_features(t)) + t)

    with torch.no_grad():
        x = image(h=8, w=8, dtype=torch.float64)  # the training size: cached masks, no padding
        assert torch.allclose(net.forward_trunk(x), swinir_trunk(x), atol=1e-10, rtol=0)
        x = image(h=13, w=10, dtype=torch.float64)  # padded to 16 x 12 by reflection, features cropped
        padded = F.pad((x - torch.tensor(RGB_MEAN, dtype=torch.float64).view(1, 3, 1, 1)), (0, 2, 0, 3),
                       mode='reflect') + torch.tensor(RGB_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
        assert torch.allclose(net.forward_trunk(x), swinir_trunk(padded)[:, :, :13, :10], atol=1e-10, rtol=0)


@pytest.mark.parametrize('kind', ['rdn', 'swin'])
def test_gradients_reach_every_parameter(kind):
    net = make(kind).train()
    out = net(image(), scale=(1.5, 2.5))
    out.square().mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize('kind', ['rdn', 'swin'])
def test_state_dict_round_trip(kind, tmp_path):
    net = make(kind, seed=0)
    other = make(kind, seed=1)
    x = image()
    with torch.no_grad():
        assert not torch.equal(net(x, scale=2.5), other(x, scale=2.5))
        torch.save(net.state_dict(), tmp_path / 'net.pth')
        other.load_state_dict(torch.load(tmp_path / 'net.pth', weights_only=True), strict=True)
        assert torch.equal(net(x, scale=2.5), other(x, scale=2.5))
        assert torch.equal(net(x, out_size=(30, 20)), other(x, out_size=(30, 20)))
    assert not any('mean' in k for k in net.state_dict())  # mean is an option, not a weight


def test_built_from_option_dicts():
    rdn = build_network({'type': 'MetaRDN', 'num_in_ch': 1, 'num_out_ch': 1, 'mean': [0.25], **RDN_OPT})
    swin = build_network({'type': 'SwinIRMeta', 'in_chans': 1, 'mean': 0.25, **SWIN_OPT})
    assert ARCH_REGISTRY.get('MetaRDN') is MetaRDN and ARCH_REGISTRY.get('SwinIRMeta') is SwinIRMeta
    for net in (rdn, swin):
        assert net.mean_in.flatten().tolist() == [0.25] and net.mean_out.flatten().tolist() == [0.25]


def test_defaults_are_the_paper_configuration():
    """MetaRDN() = G0 64, D 16, C 8, G 64, 3x3 head, MLP 4 -> 256 -> 3*3*64*3; parameter count from the formula."""
    net = MetaRDN()
    g0, d, c, g = 64, 16, 8, 64
    conv = lambda cin, cout, k: cin * cout * k * k + cout  # noqa: E731
    rdb = sum(conv(g0 + i * g, g, 3) for i in range(c)) + conv(g0 + c * g, g0, 1)
    head = (4 * 256 + 256) + (256 * 9 * g0 * 3 + 9 * g0 * 3)
    expected = conv(3, g0, 3) + conv(g0, g0, 3) + d * rdb + conv(d * g0, g0, 1) + conv(g0, g0, 3) + head
    assert sum(p.numel() for p in net.parameters()) == expected
    assert net.img_range == 255. and net.mean_in.flatten().tolist() == pytest.approx(RGB_MEAN)


BAD_RDN = [(dict(num_block=-1), 'num_block'), (dict(num_block=0), 'num_block'), (dict(num_layer=0), 'num_layer'),
           (dict(num_grow_ch=2.5), 'num_grow_ch'), (dict(impl='fast'), 'impl'), (dict(kernel_size=2), 'kernel_size'),
           (dict(img_range=0), 'img_range'), (dict(scale_range=[4, 1]), 'scale_range'),
           (dict(scale_range=[[1, 4]]), 'scale_range'), (dict(channels=1, mean=[0.1, 0.2]), 'mean'),
           (dict(rgb_mean=(0.5, 0.5)), 'rgb_mean')]
BAD_SWIN = [(dict(window_size=0), 'window_size'), (dict(window_size=16), 'window_size'),
            (dict(img_size=12, window_size=8), 'img_size'), (dict(impl='nope'), 'impl'),
            (dict(kernel_size=4), 'kernel_size'), (dict(depths=[2], num_heads=[2, 2]), 'num_heads'),
            (dict(depths=[0], num_heads=[2]), 'depths'), (dict(num_heads=[3, 3]), 'num_heads'),
            (dict(resi_connection='2conv'), 'resi_connection'), (dict(patch_size=2), 'patch_size'),
            (dict(ape=True), 'ape'), (dict(use_checkpoint=True), 'use_checkpoint'), (dict(num_feat=0), 'num_feat')]


@pytest.mark.parametrize('kind,bad,option', [('rdn', *b) for b in BAD_RDN] + [('swin', *b) for b in BAD_SWIN])
def test_bad_options_name_the_option(kind, bad, option):
    with pytest.raises(ValueError, match=option):
        make(kind, **bad)


@pytest.mark.parametrize('kind', ['rdn', 'swin'])
def test_bad_calls(kind):
    net = make(kind)
    x = image()
    with pytest.raises(ValueError, match='exactly one'):
        net(x)
    with pytest.raises(ValueError, match='exactly one'):
        net(x, scale=2, out_size=(26, 34))
    with pytest.raises(ValueError, match='channels'):
        net(image(channels=1), scale=2)
    with pytest.raises(ValueError, match='scale'):
        net(x, scale=0.5)
    with pytest.raises(ValueError, match='impl'):
        net.impl = 'fast'


@pytest.mark.parametrize('kind', ['rdn', 'swin'])
def test_warns_once_outside_scale_range(kind):
    net = make(kind, scale_range=[[1, 4], [1, 2]])
    x = image(n=1, h=5, w=6)
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter('always')
        for request in (dict(scale=1), dict(scale=(4, 2)), dict(out_size=(20, 12)), dict(scale=(2, 1.5))):
            net(x, **request)  # inside, edges included
        assert not [w for w in caught if 'training range' in str(w.message)]
        out = net(x, scale=(3, 2.5))  # outside: still the requested size, one warning
        net(x, scale=8)
        net(x, out_size=(50, 60))
    msgs = [w for w in caught if 'training range' in str(w.message)]
    assert out.shape == (1, 3, 15, 15)
    assert len(msgs) == 1 and issubclass(msgs[0].category, UserWarning) and '2.5' in str(msgs[0].message)


@pytest.mark.parametrize('kind', ['rdn', 'swin'])
def test_compile_graph_breaks_only_in_operator_geometry(kind):
    """Documented: torch.compile breaks the graph only where the head computes its geometry
    (``geometry.axis_projection``, excluded from compilation as a whole because torch.unique and
    .item() give data-dependent sizes): one break per axis, none in the nets."""
    import torch._dynamo
    net = make(kind)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(net)(image(n=1, h=9, w=11), scale=(2.0, 1.5))
    torch._dynamo.reset()
    reasons = [(r.reason, [f.filename for f in r.user_stack]) for r in explained.break_reasons]
    assert reasons, 'expected the geometry to stay out of the graph'
    assert len(reasons) <= 2, reasons
    for reason, frames in reasons:
        assert 'axis_projection' in reason and 'disable' in reason, (reason, frames)
        assert frames and frames[-1].endswith('metasr_arch/archs/meta_upsample_arch.py'), (reason, frames)


@pytest.mark.slow
@pytest.mark.parametrize('kind', ['rdn', 'swin'])
def test_torch_compile_runs_and_matches_eager(kind):
    import torch._dynamo
    net = make(kind)
    x = image(n=1, h=9, w=11)
    torch._dynamo.reset()
    compiled = torch.compile(net)
    with torch.no_grad():  # one request: each new output size recompiles (~1 min on 2 cores)
        assert torch.allclose(compiled(x, scale=(2.0, 1.5)), net(x, scale=(2.0, 1.5)), atol=1e-5, rtol=0)
    torch._dynamo.reset()
