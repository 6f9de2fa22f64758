"""StyleGAN2 layers, the Swapping-Autoencoder encoder and the ResNet discriminator, against direct definitions."""
import math
import sys

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from basicsr.utils.registry import ARCH_REGISTRY
from metasr_arch.archs import stylegan2_layers as L


def _upfirdn_reference(x: np.ndarray, k: np.ndarray, up: int, down: int, pad4) -> np.ndarray:
    """Definition: insert up-1 zeros after every sample, pad (negative = crop), convolve (flipped kernel),
    keep every down-th sample. x (N, C, H, W), k (kh, kw), pad4 = (x0, x1, y0, y1)."""
    n, c, h, w = x.shape
    z = np.zeros((n, c, h * up, w * up), x.dtype)
    z[:, :, ::up, ::up] = x
    x0, x1, y0, y1 = pad4
    z = np.pad(z, ((0, 0), (0, 0), (max(y0, 0), max(y1, 0)), (max(x0, 0), max(x1, 0))))
    z = z[:, :, max(-y0, 0):z.shape[2] - max(-y1, 0), max(-x0, 0):z.shape[3] - max(-x1, 0)]
    kh, kw = k.shape
    out_h, out_w = z.shape[2] - kh + 1, z.shape[3] - kw + 1
    full = np.zeros((n, c, out_h, out_w), np.float64)
    for i in range(out_h):
        for j in range(out_w):
            # true convolution: out[i, j] = sum_ab z[i + a, j + b] * k[kh - 1 - a, kw - 1 - b]
            full[:, :, i, j] = np.einsum('ncab,ab->nc', z[:, :, i:i + kh, j:j + kw], k[::-1, ::-1])
    return full[:, :, ::down, ::down]


@pytest.mark.parametrize('up,down,pad4,kshape', [
    (1, 1, (1, 1, 1, 1), (3, 3)),
    (2, 1, (2, 1, 2, 1), (4, 4)),
    (1, 2, (1, 0, 2, 1), (3, 3)),
    (3, 2, (0, 2, 1, 0), (2, 3)),
    (1, 1, (-1, 2, 0, -2), (2, 2)),
])
def test_upfirdn2d_matches_definition(up, down, pad4, kshape):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 7, 6))
    k = rng.standard_normal(kshape)
    out = L.upfirdn2d(torch.from_numpy(x), torch.from_numpy(k), up=up, down=down, pad=pad4)
    ref = _upfirdn_reference(x, k, up, down, pad4)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-10, atol=1e-10)


def test_upfirdn2d_two_tuple_pad_is_symmetric_and_kernel_follows_input_dtype():
    x = torch.randn(1, 2, 5, 8, dtype=torch.float64)
    k = L.make_kernel([1, 3, 3, 1])  # float32 buffer-like kernel
    a = L.upfirdn2d(x, k, down=2, pad=(2, 1))
    b = L.upfirdn2d(x, k.double(), down=2, pad=(2, 1, 2, 1))
    assert a.dtype == torch.float64
    torch.testing.assert_close(a, b)


def test_upfirdn2d_bad_input():
    with pytest.raises(ValueError, match='pad'):
        L.upfirdn2d(torch.zeros(1, 1, 4, 4), torch.ones(1, 1), pad=(1, 1, 1))
    with pytest.raises(ValueError, match='input'):
        L.upfirdn2d(torch.zeros(4, 4), torch.ones(1, 1))
    with pytest.raises(ValueError, match='kernel'):
        L.upfirdn2d(torch.zeros(1, 1, 4, 4), torch.ones(3))


def test_missing_extension_falls_back_without_name_error(monkeypatch):
    """A failed (JIT) import of BasicSR's op modules, or a module without its compiled extension,
    means 'not available'; the layers then run the native path instead of raising later."""
    import basicsr.ops.fused_act.fused_act as fused_mod
    import basicsr.ops.upfirdn2d.upfirdn2d as upfirdn_mod
    L._basicsr_op_module.cache_clear()
    assert L.cuda_ops_available('upfirdn2d') == hasattr(upfirdn_mod, 'upfirdn2d_ext')
    assert L.cuda_ops_available('fused_act') == hasattr(fused_mod, 'fused_act_ext')
    try:
        monkeypatch.setitem(sys.modules, 'basicsr.ops.upfirdn2d.upfirdn2d', None)  # import -> ImportError
        monkeypatch.setitem(sys.modules, 'basicsr.ops.fused_act.fused_act', None)
        L._basicsr_op_module.cache_clear()
        assert L.cuda_ops_available('upfirdn2d') is False
        assert L.cuda_ops_available('fused_act') is False
    finally:
        monkeypatch.undo()
        L._basicsr_op_module.cache_clear()
    # BasicSR's module as it is here when the extension was never built: no upfirdn2d_ext attribute
    monkeypatch.delattr(upfirdn_mod, 'upfirdn2d_ext', raising=False)
    monkeypatch.delattr(fused_mod, 'fused_act_ext', raising=False)
    L._basicsr_op_module.cache_clear()
    try:
        assert not L.cuda_ops_available('upfirdn2d') and not L.cuda_ops_available('fused_act')
        x = torch.randn(1, 2, 6, 6)
        layer = L.ConvLayer(2, 3, 3, downsample=True)
        assert torch.isfinite(layer(x)).all()
    finally:
        monkeypatch.undo()
        L._basicsr_op_module.cache_clear()
    with pytest.raises(ValueError, match='name'):
        L.cuda_ops_available('deform_conv')


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_cuda_tensors_match_cpu():
    x = torch.randn(2, 4, 9, 10)
    k = L.make_kernel([1, 3, 3, 1])
    bias = torch.randn(4)
    torch.testing.assert_close(L.upfirdn2d(x.cuda(), k.cuda(), down=2, pad=(2, 1)).cpu(),
                               L.upfirdn2d(x, k, down=2, pad=(2, 1)), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(L.fused_leaky_relu(x.cuda(), bias.cuda()).cpu(), L.fused_leaky_relu(x, bias))


@pytest.mark.parametrize('shape', [(3, 5), (2, 4, 6), (2, 3, 4, 5)])
def test_fused_leaky_relu_formula_and_gradient(shape):
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    b = torch.randn(shape[1], dtype=torch.float64, requires_grad=True)
    slope, scale = 0.2, math.sqrt(2)
    out = L.fused_leaky_relu(x, b, slope, scale)
    z = (x + b.view(1, -1, *([1] * (len(shape) - 2)))).detach()
    ref = torch.where(z >= 0, z, slope * z) * scale
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    out.backward(g)
    dz = torch.where(z > 0, torch.ones_like(z), torch.full_like(z, slope)) * scale * g
    torch.testing.assert_close(x.grad, dz)
    torch.testing.assert_close(b.grad, dz.sum(dim=[d for d in range(len(shape)) if d != 1]))


def test_fused_leaky_relu_module_and_no_bias():
    x = torch.randn(2, 3, 4, 4)
    m = L.FusedLeakyReLU(3, negative_slope=0.1, scale=2.0)
    with torch.no_grad():
        m.bias.copy_(torch.tensor([0.5, -1.0, 0.0]))
    z = x + m.bias.detach().view(1, 3, 1, 1)
    torch.testing.assert_close(m(x), torch.where(z >= 0, z, 0.1 * z) * 2.0)
    torch.testing.assert_close(L.fused_leaky_relu(x, None), torch.where(x >= 0, x, 0.2 * x) * math.sqrt(2))
    with pytest.raises(ValueError, match='bias'):
        L.fused_leaky_relu(x, torch.zeros(4))


def test_scaled_leaky_relu():
    x = torch.randn(50)
    torch.testing.assert_close(L.ScaledLeakyReLU(0.2)(x), torch.where(x >= 0, x, 0.2 * x) * math.sqrt(2))


@pytest.mark.parametrize('lr_mul', [1.0, 0.01])
def test_equal_conv2d_scaling(lr_mul):
    torch.manual_seed(0)
    conv = L.EqualConv2d(3, 5, 3, stride=2, padding=1, lr_mul=lr_mul)
    with torch.no_grad():
        conv.bias.normal_()
    x = torch.randn(2, 3, 9, 8)
    w = conv.weight.detach() * lr_mul / math.sqrt(3 * 3 * 3)
    ref = F.conv2d(x, w, conv.bias.detach(), stride=2, padding=1)
    torch.testing.assert_close(conv(x), ref)


def test_equal_conv2d_lr_mul_scales_weight_gradient():
    """Two layers with the same effective weight: the stored weight's gradient scales with lr_mul."""
    torch.manual_seed(0)
    a = L.EqualConv2d(4, 6, 3, padding=1, lr_mul=1.0)
    b = L.EqualConv2d(4, 6, 3, padding=1, lr_mul=0.1)
    with torch.no_grad():
        b.weight.copy_(a.weight / 0.1)
    x = torch.randn(2, 4, 5, 5)
    ya, yb = a(x), b(x)
    torch.testing.assert_close(ya, yb)
    g = torch.randn_like(ya)
    ya.backward(g)
    yb.backward(g)
    torch.testing.assert_close(b.weight.grad, 0.1 * a.weight.grad)
    with pytest.raises(ValueError, match='lr_mul'):
        L.EqualConv2d(1, 1, 1, lr_mul=0)


def test_equal_linear_2d_and_4d_and_activation():
    torch.manual_seed(0)
    lin = L.EqualLinear(6, 4, bias_init_val=0.3, lr_mul=0.5)
    w = lin.weight.detach() * 0.5 / math.sqrt(6)
    b = torch.full((4, ), 0.3 * 0.5)
    x = torch.randn(3, 6)
    torch.testing.assert_close(lin(x), F.linear(x, w, b))
    # (N, C, H, W): the same linear map applied at every pixel
    x4 = torch.randn(2, 6, 3, 5)
    per_pixel = F.linear(x4.permute(0, 2, 3, 1), w, b).permute(0, 3, 1, 2)
    torch.testing.assert_close(lin(x4), per_pixel)
    # activation: leaky_relu(x W^T + b * lr_mul) * sqrt(2), with the Swapping Autoencoder's `True` spelling
    act = L.EqualLinear(6, 4, bias_init_val=0.3, lr_mul=0.5, activation=True)
    with torch.no_grad():
        act.weight.copy_(lin.weight)
    z = F.linear(x4.permute(0, 2, 3, 1), w, b).permute(0, 3, 1, 2)
    torch.testing.assert_close(act(x4), torch.where(z >= 0, z, 0.2 * z) * math.sqrt(2))
    nobias = L.EqualLinear(6, 4, bias=False, activation='fused_lrelu')
    assert torch.isfinite(nobias(x)).all()
    with pytest.raises(ValueError, match='channels'):
        lin(torch.randn(2, 5))


def test_make_kernel_and_blur():
    k = L.make_kernel([1, 2, 1])
    torch.testing.assert_close(k, torch.tensor([[1., 2, 1], [2, 4, 2], [1, 2, 1]]) / 16)
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64)
    blur = L.Blur([1, 2, 1], pad=(1, 1)).double()
    assert 'kernel' in dict(blur.named_buffers())
    ref = _upfirdn_reference(x.numpy(), k.double().numpy(), 1, 1, (1, 1, 1, 1))
    np.testing.assert_allclose(blur(x).numpy(), ref, atol=1e-12)
    # upsample_factor only restores the gain lost to zero insertion
    up_blur = L.Blur([1, 3, 3, 1], pad=(2, 1), upsample_factor=2)
    torch.testing.assert_close(up_blur.kernel, 4 * L.make_kernel([1, 3, 3, 1]))
    # reflection padding: pad by reflection, then filter without zero padding
    rblur = L.Blur([1, 3, 3, 1], pad=(2, 1), reflection_pad=True).double()
    xr = np.pad(x.numpy(), ((0, 0), (0, 0), (2, 1), (2, 1)), mode='reflect')
    ref = _upfirdn_reference(xr, L.make_kernel([1, 3, 3, 1]).double().numpy(), 1, 1, (0, 0, 0, 0))
    np.testing.assert_allclose(rblur(x).numpy(), ref, atol=1e-12)
    with pytest.raises(ValueError, match='k'):
        L.make_kernel([])


def test_conv_layer_children_and_composition():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 11, 10)
    down = L.ConvLayer(3, 4, 3, downsample=True, blur_kernel=[1, 2, 1], reflection_pad=True)
    assert list(dict(down.named_children())) == ['Blur', 'Conv', 'Act']
    assert down.Blur.reflection and down.Conv.stride == 2 and down.Conv.bias is None
    with torch.no_grad():
        down.Act.bias.normal_()
    # default pad = (3 - 2) + (3 - 1) = 3 -> (2, 1), reflection
    xr = np.pad(x.numpy(), ((0, 0), (0, 0), (2, 1), (2, 1)), mode='reflect')
    blurred = torch.from_numpy(_upfirdn_reference(xr, L.make_kernel([1, 2, 1]).numpy(), 1, 1, (0, 0, 0, 0))).float()
    z = F.conv2d(blurred, down.Conv.weight.detach() / math.sqrt(27), stride=2) + down.Act.bias.detach().view(1, -1, 1, 1)
    torch.testing.assert_close(down(x), torch.where(z >= 0, z, 0.2 * z) * math.sqrt(2), rtol=1e-5, atol=1e-5)
    assert down(x).shape[-2:] == ((11 - 2) // 2 + 1, (10 - 2) // 2 + 1)

    same = L.ConvLayer(3, 4, 3, reflection_pad=True, bias=False)
    assert list(dict(same.named_children())) == ['RefPad', 'Conv', 'Act']
    assert isinstance(same.Act, L.ScaledLeakyReLU)
    z = F.conv2d(F.pad(x, (1, 1, 1, 1), mode='reflect'), same.Conv.weight.detach() / math.sqrt(27))
    torch.testing.assert_close(same(x), torch.where(z >= 0, z, 0.2 * z) * math.sqrt(2), rtol=1e-5, atol=1e-5)

    linear = L.ConvLayer(3, 4, 1, activate=False, bias=True)
    assert list(dict(linear.named_children())) == ['Conv'] and linear.Conv.bias is not None
    custom = L.ConvLayer(3, 4, 3, pad=0)
    assert custom(x).shape[-2:] == (9, 8)


@pytest.mark.parametrize('size', [(16, 16), (33, 47)])
def test_res_block(size):
    torch.manual_seed(0)
    block = L.ResBlock(3, 5, blur_kernel=[1, 3, 3, 1], reflection_pad=True)
    x = torch.randn(2, 3, *size)
    out = block(x)
    ref = (block.conv2(block.conv1(x)) + block.skip(x)) / math.sqrt(2)
    torch.testing.assert_close(out, ref)
    assert out.shape == (2, 5, (size[0] - 2) // 2 + 1, (size[1] - 2) // 2 + 1)
    assert 'RefPad' in dict(block.conv1.named_children()) and block.conv2.Blur.reflection
    assert not block.skip.Blur.reflection  # the seed's skip branch is zero-padded
    assert L.ResBlock(3, 5, downsample=False)(x).shape == (2, 5, *size)


def test_normalize():
    v = torch.randn(3, 7, 2, 2)
    torch.testing.assert_close(L.normalize(v), v / torch.sqrt((v**2).sum(1, keepdim=True) + 1e-8))
    a, b = L.normalize([torch.randn(2, 4), torch.randn(2, 5)])
    torch.testing.assert_close(a.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(b.norm(dim=1), torch.ones(2))


# ------------------------------------------------------------------------------------------------
# Encoder and discriminator
# ------------------------------------------------------------------------------------------------


def test_encoder_defaults_256():
    torch.manual_seed(0)
    enc = ARCH_REGISTRY.get('StyleGAN2ResnetEncoder')()
    assert [enc.nc(i) for i in range(7)] == [32, 64, 128, 256, 512, 1024, 2048]
    names = set(dict(enc.named_modules()))
    for name in ('FromRGB.Conv', 'DownToSpatialCode.ResBlockDownBy8.conv1.RefPad', 'ToSpatialCode.1.Conv',
                 'DownToGlobalCode.ConvLayerDownBy16.Blur', 'DownToGlobalCode.ConvLayerDownBy32.Conv', 'ToGlobalCode.0'):
        assert name in names, name
    # antialiasing blur [1, 2, 1] in the ResBlocks, none ([1]) in the global branch, as the seed
    torch.testing.assert_close(enc.DownToSpatialCode.ResBlockDownBy1.conv2.Blur.kernel, L.make_kernel([1, 2, 1]))
    torch.testing.assert_close(enc.DownToGlobalCode.ConvLayerDownBy16.Blur.kernel, torch.ones(1, 1))
    with torch.no_grad():
        sp, gl = enc(torch.randn(1, 3, 256, 256))
    assert sp.shape == (1, 8, 16, 16) and gl.shape == (1, 2048)
    torch.testing.assert_close(sp.norm(dim=1), torch.ones(1, 16, 16))
    torch.testing.assert_close(gl.norm(dim=1), torch.ones(1))


def test_encoder_small_capacity_shapes_norms_and_errors():
    torch.manual_seed(0)
    enc = ARCH_REGISTRY.get('StyleGAN2ResnetEncoder')(
        netE_scale_capacity=0.125, netE_num_downsampling_sp=3, spatial_code_ch=4, global_code_ch=16)
    assert [enc.nc(i) for i in range(6)] == [4, 8, 16, 32, 64, 128]
    x = torch.randn(2, 3, 64, 72)
    sp, gl = enc(x)
    assert sp.shape == (2, 4, 8, 9) and gl.shape == (2, 16)
    torch.testing.assert_close(sp.norm(dim=1), torch.ones(2, 8, 9))
    torch.testing.assert_close(gl.norm(dim=1), torch.ones(2))
    # samples are encoded independently
    sp1, gl1 = enc(x[1:])
    torch.testing.assert_close(sp1, sp[1:], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gl1, gl[1:], rtol=1e-5, atol=1e-6)
    (sp.sum() + gl.sum()).backward()
    assert enc.FromRGB.Conv.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match='multiples of 8'):
        enc(torch.randn(1, 3, 60, 64))
    with pytest.raises(ValueError, match='too small'):
        enc(torch.randn(1, 3, 48, 64))
    with pytest.raises(ValueError, match='netE_num_downsampling_sp'):
        ARCH_REGISTRY.get('StyleGAN2ResnetEncoder')(netE_num_downsampling_sp=-1)


@pytest.mark.parametrize('size', [(32, 32), (33, 47), (61, 90)])
def test_discriminator_any_size(size):
    torch.manual_seed(0)
    disc = ARCH_REGISTRY.get('StyleGAN2ResnetDiscriminator')(num_in_ch=3, scale_capacity=0.25, max_nc=32)
    x = torch.randn(2, 3, *size, requires_grad=True)
    out = disc(x)
    assert out.shape == (2, 1) and torch.isfinite(out).all()
    torch.testing.assert_close(disc(x[1:]), out[1:], rtol=1e-5, atol=1e-6)  # no batch mixing
    out.sum().backward()
    assert x.grad.abs().sum() > 0


def test_discriminator_options_and_errors():
    disc = ARCH_REGISTRY.get('StyleGAN2ResnetDiscriminator')(num_in_ch=1, num_downsampling=2, scale_capacity=0.5,
                                                             max_nc=40)
    assert [disc.nc(i) for i in range(4)] == [16, 32, 40, 40]
    assert disc.min_size == 8
    assert disc(torch.randn(1, 1, 9, 8)).shape == (1, 1)
    with pytest.raises(ValueError, match='at least 8x8'):
        disc(torch.randn(1, 1, 7, 30))
    with pytest.raises(ValueError, match=r'\(N, 1, H, W\)'):
        disc(torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match='num_in_ch'):
        ARCH_REGISTRY.get('StyleGAN2ResnetDiscriminator')(num_in_ch=0)
