"""Bad input to the operator gets a ValueError/TypeError that names the argument."""
import math

import pytest
import torch

from metasr_arch.archs import MetaUpsample, Pos2Weight
from metasr_arch.ops import meta_upscale, output_length, resolve_scale


@pytest.mark.parametrize('scale,word', [(0, 'scale'), (-2, 'scale'), (0.5, '>= 1'), (math.nan, 'finite'),
                                        (math.inf, 'finite'), ((2, 0.9), 'r_h'), ((2, 3, 4), 'pair'),
                                        ('2', 'real number'), (True, 'real number')])
def test_bad_scale(scale, word):
    with pytest.raises((ValueError, TypeError), match=word):
        MetaUpsample(2, 1)(torch.zeros(1, 2, 4, 4), scale=scale)


def test_both_or_neither_of_scale_and_out_size():
    m = MetaUpsample(2, 1)
    with pytest.raises(ValueError, match='exactly one of scale'):
        m(torch.zeros(1, 2, 4, 4))
    with pytest.raises(ValueError, match='exactly one of scale'):
        m(torch.zeros(1, 2, 4, 4), scale=2, out_size=(8, 8))


@pytest.mark.parametrize('out_size,word', [((3, 8), r'out_size\[0\]'), ((8, 0), r'out_size\[1\]'),
                                           ((8,), 'pair'), ((8.5, 9), 'integer')])
def test_bad_out_size(out_size, word):
    with pytest.raises((ValueError, TypeError), match=word):
        MetaUpsample(2, 1)(torch.zeros(1, 2, 4, 4), out_size=out_size)


def test_bad_weight_shape_dtype_device():
    x = torch.zeros(1, 2, 4, 4)
    good = torch.zeros(8 * 8, 9 * 2 * 1)
    assert meta_upscale(x, good, scale=2).shape == (1, 1, 8, 8)
    with pytest.raises(ValueError, match='weight'):
        meta_upscale(x, torch.zeros(8 * 8 - 1, 18), scale=2)
    with pytest.raises(ValueError, match='weight'):
        meta_upscale(x, torch.zeros(8, 8, 3, 3, 3, 1), scale=2)
    with pytest.raises(TypeError, match='weight dtype'):
        meta_upscale(x, good.double(), scale=2)
    with pytest.raises(ValueError, match='weight is on'):
        meta_upscale(x, good.to('meta'), scale=2)


def test_bad_x_and_kernel():
    with pytest.raises(ValueError, match='4-D'):
        meta_upscale(torch.zeros(2, 4, 4), torch.zeros(64, 18), scale=2)
    with pytest.raises(ValueError, match='kernel_size'):
        meta_upscale(torch.zeros(1, 2, 4, 4), torch.zeros(64, 32), scale=2, kernel_size=4)
    with pytest.raises(ValueError, match='kernel_size'):
        Pos2Weight(2, 1, kernel_size=2)
    with pytest.raises(ValueError, match='impl'):
        MetaUpsample(2, 1, impl='fast')
    with pytest.raises(ValueError, match='in_channels=2'):
        MetaUpsample(2, 1)(torch.zeros(1, 3, 4, 4), scale=2)
    with pytest.raises(ValueError, match='impl'):
        meta_upscale(torch.zeros(1, 2, 4, 4), torch.zeros(64, 18), scale=2, impl='phase')


def test_unavailable_native_impl_explains():
    if 'cuda' in __import__('metasr_arch').available_impls('cpu'):
        pytest.skip('a native implementation is usable on this CPU')
    m = MetaUpsample(2, 1, impl='cuda')
    with pytest.raises(RuntimeError, match="impl 'cuda' is not usable"):
        m(torch.zeros(1, 2, 4, 4), scale=2)


def test_output_size_rule():
    # floor(h * r + 1e-9) in float64: 25 x 4.6 is 114.99999999999999 in floating point
    assert 25 * 4.6 < 115
    assert output_length(25, 4.6) == 115
    assert output_length(10, 2.3) == 23
    assert output_length(7, 1.1) == 7
    assert resolve_scale(96, 144, out_size=(721, 1440)) == (721 / 96, 10.0, 721, 1440)
    assert resolve_scale(5, 7, (2.5, 3.7))[2:] == (12, 25)
    assert resolve_scale(5, 7, 3)[2:] == (15, 21)
