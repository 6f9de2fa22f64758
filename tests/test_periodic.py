"""periodic_w: longitude wraps around in MetaUpsample, MetaRDN and SwinIRMeta.

The reference for "no seam" is the zero-padded twin network (same weights) on the input tiled three
times along W: its middle copy sees the true neighbours across both edges, so the periodic network
must reproduce it exactly while its receptive field stays inside the tile.
"""
import metasr_arch  # noqa: F401  (before basicsr)

import pytest
import torch

from metasr_arch.archs.meta_upsample_arch import MetaUpsample
from metasr_arch.archs.metardn_arch import MetaRDN
from metasr_arch.archs.periodic import PeriodicWConv2d
from metasr_arch.archs.swinir_meta_arch import SwinIRMeta

RDN_OPT = dict(num_in_ch=2, num_out_ch=2, num_feat=8, num_block=2, num_layer=2, num_grow_ch=4, hidden_channels=16,
               mean=0.0)
SWIN_OPT = dict(in_chans=2, img_size=8, embed_dim=8, depths=[2, 1], num_heads=[2, 2], window_size=4, mlp_ratio=2,
                num_feat=8, hidden_channels=16, mean=0.0)


def twins(kind: str):
    """(periodic, zero-padded) networks with the same weights, float64, eval mode."""
    cls, opt = (MetaRDN, RDN_OPT) if kind == 'rdn' else (SwinIRMeta, SWIN_OPT)
    torch.manual_seed(0)
    periodic = cls(**opt, periodic_w=True).double().eval()
    plain = cls(**opt).double().eval()
    plain.load_state_dict(periodic.state_dict())
    return periodic, plain


def field(h: int, w: int, seed: int = 3, channels: int = 2) -> torch.Tensor:
    return torch.rand(1, channels, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize('impl', ['im2col', 'gather', 'phase', 'factorized'])
@pytest.mark.parametrize('r_h', [2.5, 3.0, 1.7])
def test_meta_upsample_periodic_equals_middle_of_tiled_input(impl, r_h):
    torch.manual_seed(0)
    head = MetaUpsample(4, 2, kernel_size=3, hidden_channels=8, impl=impl, periodic_w=True).double()
    plain = MetaUpsample(4, 2, kernel_size=3, hidden_channels=8, impl=impl).double()
    plain.load_state_dict(head.state_dict())
    x = field(5, 10, channels=4)
    out_w = int(10 * r_h + 1e-9)
    with torch.no_grad():
        out = head(x, out_size=(9, out_w))
        tiled = plain(x.repeat(1, 1, 1, 3), out_size=(9, 3 * out_w))
        edge_free = plain(x, out_size=(9, out_w))
    torch.testing.assert_close(out, tiled[..., out_w:2 * out_w], rtol=0, atol=1e-12)
    # the interior columns do not depend on the edges, the first and last ones do (the test can fail)
    torch.testing.assert_close(out[..., 3:-3], edge_free[..., 3:-3], rtol=0, atol=1e-12)
    assert (out[..., 0] - edge_free[..., 0]).abs().max() > 1e-6
    assert (out[..., -1] - edge_free[..., -1]).abs().max() > 1e-6


@pytest.mark.parametrize('kind,w', [('rdn', 16), ('swin', 32)])
def test_network_has_no_seam(kind, w):
    periodic, plain = twins(kind)
    x = field(8, w)
    with torch.no_grad():
        out = periodic(x, scale=(1.5, 2.5))
        tiled = plain(x.repeat(1, 1, 1, 3), scale=(1.5, 2.5))
        zero_padded = plain(x, scale=(1.5, 2.5))
    out_w = out.shape[-1]
    assert out_w == int(w * 2.5)
    torch.testing.assert_close(out, tiled[..., out_w:2 * out_w], rtol=0, atol=1e-10)
    assert (out[..., 0] - zero_padded[..., 0]).abs().max() > 1e-4  # the zero-padded twin has the seam


# k LR columns with k * r_h an integer; SwinIR's windows are only shift-equivariant by whole windows
@pytest.mark.parametrize('kind,w,shifts', [('rdn', 8, {10.0: 3, 2.5: 2}), ('swin', 16, {10.0: 4, 2.5: 4})])
def test_rolling_the_input_rolls_the_output(kind, w, shifts):
    periodic, plain = twins(kind)
    x = field(7, w)
    for r_h, k in shifts.items():
        with torch.no_grad():
            out = periodic(x, scale=(1.5, r_h))
            rolled = periodic(torch.roll(x, k, dims=3), scale=(1.5, r_h))
            plain_out = plain(x, scale=(1.5, r_h))
            plain_rolled = plain(torch.roll(x, k, dims=3), scale=(1.5, r_h))
        shift = int(round(k * r_h))
        torch.testing.assert_close(rolled, torch.roll(out, shift, dims=3), rtol=0, atol=1e-10)
        assert (plain_rolled - torch.roll(plain_out, shift, dims=3)).abs().max() > 1e-4


def test_periodic_keeps_checkpoint_keys_and_converts_only_padded_convs():
    periodic, plain = twins('rdn')
    assert list(periodic.state_dict()) == list(plain.state_dict())
    convs = [m for m in periodic.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(isinstance(m, PeriodicWConv2d) == (m.kernel_size[1] > 1) for m in convs)
    assert any(isinstance(m, PeriodicWConv2d) for m in convs)


def test_swin_periodic_needs_width_multiple_of_window():
    periodic, _ = twins('swin')
    with pytest.raises(ValueError, match='multiple of window_size=4'):
        periodic(field(8, 10), scale=2)


def test_periodic_w_must_be_bool():
    with pytest.raises(ValueError, match='periodic_w'):
        MetaUpsample(4, 2, periodic_w='yes')


def test_tiled_periodic_network_tiles_rows_only():
    from metasr_arch.inference.tiling import tiled_forward
    periodic, _ = twins('rdn')
    x = field(16, 12)
    with torch.no_grad():
        whole = periodic(x, scale=(2.5, 2.5))
        tiled = tiled_forward(periodic, x, scale=(2.5, 2.5), tile=(6, 4), overlap=8)
    torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-10)


@pytest.mark.parametrize('size', [(9, 20), (3, 4), (7, 25)])  # up (r_h 2.5), down (antialiased), mixed
def test_periodic_bicubic_wraps_columns(size):
    from metasr_arch.archs.periodic import imresize_periodic_w
    from metasr_arch.utils.resize import imresize_to
    x = field(6, 8)
    out = imresize_periodic_w(x, size)
    assert out.shape[-2:] == size
    # the tiled input's middle copy is the reference: it has the true neighbours across both edges
    # (BasicSR computes the kernel positions in float32: 1e-5 covers their rounding at other offsets)
    big = imresize_to(torch.cat([x] * 5, dim=-1), (size[0], 5 * size[1]))
    torch.testing.assert_close(out, big[..., 2 * size[1]:3 * size[1]], rtol=0, atol=1e-5)
    if size == (9, 20):  # rolling by 2 LR columns rolls the output by 5
        torch.testing.assert_close(imresize_periodic_w(torch.roll(x, 2, dims=3), size), torch.roll(out, 5, dims=3),
                                   rtol=0, atol=1e-5)
    assert (out[..., 0] - imresize_to(x, size)[..., 0]).abs().max() > 1e-4  # MATLAB's mirrors the edge


def test_bicubic_skip_is_periodic_in_inference():
    from metasr_arch.inference.runner import run_network
    periodic, _ = twins('rdn')
    periodic.metasr_bicubic_skip = True
    x = field(6, 8)
    out = run_network(periodic.float(), x.float(), scale=(2, 2.5))
    rolled = run_network(periodic, torch.roll(x, 2, dims=3).float(), scale=(2, 2.5))
    torch.testing.assert_close(rolled, torch.roll(out, 5, dims=3), rtol=0, atol=1e-5)
