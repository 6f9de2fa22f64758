"""Tiled inference equals whole-image inference when the overlap covers the trunk's receptive field."""
import pytest
import torch
from torch import nn

from metasr_arch.archs.meta_upsample_arch import MetaUpsample
from metasr_arch.inference.tiling import supports_feature_tiling, tiled_forward


class ConvTrunkNet(nn.Module):
    """Two 3x3 convs (receptive radius 2) and a Meta head; forward_features/forward_head interface."""

    def __init__(self, with_interface: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1)
        self.conv2 = nn.Conv2d(8, 8, 3, 1, 1)
        self.head = MetaUpsample(8, 3, 3, 16)
        if not with_interface:
            self.forward_head = None  # hide the interface: output-space fallback

    def forward_features(self, x):
        return self.conv2(torch.relu(self.conv1(x)))

    def forward_head(self, feat, x, scale=None, out_size=None):  # noqa: F811 (may be hidden above)
        return self.head(feat, scale=scale, out_size=out_size) + x.mean()

    def forward(self, x, scale=None, out_size=None):
        return self.head(self.forward_features(x), scale=scale, out_size=out_size) + x.mean()


@pytest.fixture(scope='module')
def net():
    torch.manual_seed(0)
    return ConvTrunkNet().eval()


@pytest.mark.parametrize('request_', [dict(scale=2.5), dict(scale=(1.5, 3.7)), dict(scale=(4, 1)),
                                      dict(out_size=(61, 50))])
def test_feature_tiling_is_exact(net, request_):
    x = torch.rand(2, 3, 23, 19)
    with torch.no_grad():
        whole = net(x, **request_)
        tiled = tiled_forward(net, x, tile=(7, 6), overlap=2, **request_)
    assert supports_feature_tiling(net)
    assert tiled.shape == whole.shape
    assert (tiled - whole).abs().max() < 1e-5


def test_too_small_overlap_differs(net):
    """The check above can fail: without overlap the tile borders see zero padding."""
    x = torch.rand(1, 3, 23, 19)
    with torch.no_grad():
        diff = (tiled_forward(net, x, scale=2.5, tile=7, overlap=0) - net(x, scale=2.5)).abs().max()
    assert diff > 1e-3


def test_metardn_style_network_is_tiled_exactly():
    from metasr_arch.archs.metardn_arch import MetaRDN
    torch.manual_seed(0)
    rdn = MetaRDN(num_feat=8, num_block=1, num_layer=2, num_grow_ch=8, hidden_channels=16).eval()
    x = torch.rand(1, 3, 20, 17)
    with torch.no_grad():  # trunk radius: sfe1 + sfe2 + 2 layers + gff 3x3 = 5
        diff = (tiled_forward(rdn, x, scale=(2.5, 1.7), tile=6, overlap=5) - rdn(x, scale=(2.5, 1.7))).abs().max()
    assert diff < 1e-5


def test_fallback_output_tiling_exact_at_integer_scale():
    torch.manual_seed(0)
    plain = ConvTrunkNet(with_interface=False).eval()
    assert not supports_feature_tiling(plain)
    x = torch.rand(1, 3, 16, 14)
    with torch.no_grad():
        # x.mean() differs per tile in this toy net, so compare a net without the global term
        plain.forward = lambda inp, scale=None, out_size=None: plain.head(plain.forward_features(inp), scale=scale,
                                                                          out_size=out_size)
        diff = (tiled_forward(plain, x, scale=2, tile=6, overlap=3) - plain(x, scale=2)).abs().max()
    assert diff < 1e-5


def test_untiled_when_tile_covers_input(net):
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(tiled_forward(net, x, scale=2, tile=8), net(x, scale=2))
    with pytest.raises(ValueError, match='overlap'):
        tiled_forward(net, x, scale=2, tile=4, overlap=-1)
