"""GAN training pieces: R1 penalty, local-weights perceptual loss, MetaSRGANModel, GAN option files."""
import copy
import math
import os

import pytest
import torch
import yaml
from torch import nn
from torch.nn import functional as F
from torchvision.models import vgg as tv_vgg

from basicsr.losses import build_loss
from basicsr.utils.registry import ARCH_REGISTRY, LOSS_REGISTRY, MODEL_REGISTRY
from metasr_arch.archs.meta_upsample_arch import MetaUpsample
from metasr_arch.utils.registry import register

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ------------------------------------------------------------------------------------------------ R1


def _tiny_disc(dtype=torch.float64):
    torch.manual_seed(0)
    return ARCH_REGISTRY.get('StyleGAN2ResnetDiscriminator')(
        num_in_ch=2, num_downsampling=2, scale_capacity=0.25, max_nc=8).to(dtype)


def test_r1_matches_finite_difference_gradient():
    disc = _tiny_disc()
    x = torch.randn(2, 2, 9, 8, dtype=torch.float64, requires_grad=True)
    r1 = build_loss({'type': 'R1Loss', 'loss_weight': 3.0, 'interval': 4})
    value = r1(disc(x), x)

    # central differences: sum_n D(x_n) depends on element i of x_n through D(x_n) only, so all
    # perturbed copies of every sample go through D as one batch
    eps = 1e-6
    n, k = x.shape[0], x[0].numel()
    with torch.no_grad():
        flat = x.detach().reshape(n, 1, k)
        step = eps * torch.eye(k, dtype=x.dtype).unsqueeze(0)
        plus = disc((flat + step).reshape(n * k, *x.shape[1:])).view(n, k)
        minus = disc((flat - step).reshape(n * k, *x.shape[1:])).view(n, k)
    grad = (plus - minus) / (2 * eps)
    expected = 3.0 / 2 * (grad**2).sum(1).mean() * 4
    torch.testing.assert_close(value.detach(), expected, rtol=1e-6, atol=1e-9)


def test_r1_backpropagates_into_discriminator_parameters():
    """create_graph=True: the penalty's gradient wrt a parameter matches finite differences (gradcheck)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Softplus(), nn.Conv2d(3, 1, 3)).double()
    x = torch.randn(2, 1, 7, 6, dtype=torch.float64)
    r1 = build_loss({'type': 'R1Loss', 'loss_weight': 10.0, 'interval': 1})
    weight = net[0].weight.detach().clone()

    def penalty(w):
        real = x.clone().requires_grad_(True)
        h = F.softplus(F.conv2d(real, w, net[0].bias))
        return r1(net[2](h), real)

    assert torch.autograd.gradcheck(penalty, (weight.requires_grad_(True), ), eps=1e-6, atol=1e-5)


def test_r1_lazy_schedule_and_errors():
    r1 = LOSS_REGISTRY.get('R1Loss')(loss_weight=1.0, interval=4)
    assert [i for i in range(1, 13) if r1.is_active(i)] == [4, 8, 12]
    disc = _tiny_disc()
    x = torch.randn(1, 2, 8, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match='real_img must require grad'):
        r1(disc(x), x)
    with pytest.raises(ValueError, match='interval'):
        LOSS_REGISTRY.get('R1Loss')(interval=0)
    # interval scaling: the lazy penalty is interval x the per-iteration one
    xr = x.clone().requires_grad_(True)
    pred = disc(xr)
    one = LOSS_REGISTRY.get('R1Loss')(loss_weight=1.0, interval=1)(pred, xr)
    torch.testing.assert_close(r1(pred, xr), 4 * one)


# ------------------------------------------------------------------------------------------------ perceptual


def _save_vgg_prefix(path, num_layers=4, seed=0):
    """A torchvision-format vgg19 state dict holding only features[:num_layers] (conv1_1, relu, conv1_2, relu)."""
    torch.manual_seed(seed)
    feats = tv_vgg.make_layers(tv_vgg.cfgs['E'])[:num_layers]
    torch.save({f'features.{k}': v for k, v in feats.state_dict().items()}, path)
    return {k: v.clone() for k, v in feats.state_dict().items()}


def _reference_features(x, sd):
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = (x - mean) / std
    c11 = F.conv2d(x, sd['0.weight'], sd['0.bias'], padding=1)
    r11 = F.relu(c11)
    c12 = F.conv2d(r11, sd['2.weight'], sd['2.bias'], padding=1)
    return {'relu1_1': r11, 'conv1_2': c12}


@pytest.mark.parametrize('criterion', ['l1', 'l2'])
def test_local_perceptual_loss_matches_direct_features(tmp_path, criterion):
    path = str(tmp_path / 'vgg_prefix.pth')
    sd = _save_vgg_prefix(path)
    loss = build_loss({
        'type': 'LocalPerceptualLoss',
        'layer_weights': {'relu1_1': 0.5, 'conv1_2': 2.0},
        'vgg_weights_path': path,
        'perceptual_weight': 0.7,
        'style_weight': 0.3,
        'criterion': criterion
    })
    torch.manual_seed(1)
    x = torch.rand(2, 3, 10, 12, requires_grad=True)
    gt = torch.rand(2, 3, 10, 12)
    percep, style = loss(x, gt)
    fx, fg = _reference_features(x.detach(), sd), _reference_features(gt, sd)
    crit = F.l1_loss if criterion == 'l1' else F.mse_loss

    def gram(f):
        n, c, h, w = f.shape
        f = f.view(n, c, h * w)
        return f @ f.transpose(1, 2) / (c * h * w)

    ref_p = 0.7 * (0.5 * crit(fx['relu1_1'], fg['relu1_1']) + 2.0 * crit(fx['conv1_2'], fg['conv1_2']))
    ref_s = 0.3 * (0.5 * crit(gram(fx['relu1_1']), gram(fg['relu1_1'])) +
                   2.0 * crit(gram(fx['conv1_2']), gram(fg['conv1_2'])))
    torch.testing.assert_close(percep.detach(), ref_p, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(style.detach(), ref_s, rtol=1e-5, atol=1e-9)
    percep.backward()
    assert x.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in loss.parameters())


def test_local_perceptual_loss_clear_errors(tmp_path):
    opt = {'type': 'LocalPerceptualLoss', 'layer_weights': {'conv1_2': 1.0}}
    with pytest.raises(FileNotFoundError, match='vgg_weights_path'):
        build_loss(copy.deepcopy(opt))
    with pytest.raises(FileNotFoundError, match='vgg_weights_path'):
        build_loss(dict(opt, vgg_weights_path=str(tmp_path / 'absent.pth')))
    path = str(tmp_path / 'vgg_prefix.pth')
    _save_vgg_prefix(path)
    with pytest.raises(ValueError, match=r'vgg_weights_path.*features\.5\.weight'):
        build_loss({'type': 'LocalPerceptualLoss', 'layer_weights': {'conv2_1': 1.0}, 'vgg_weights_path': path})
    with pytest.raises(ValueError, match='unknown'):
        build_loss({'type': 'LocalPerceptualLoss', 'layer_weights': {'conv9_9': 1.0}, 'vgg_weights_path': path})
    with pytest.raises(ValueError, match='criterion'):
        build_loss(dict(opt, vgg_weights_path=path, criterion='l3'))


# ------------------------------------------------------------------------------------------------ model


@register(ARCH_REGISTRY)
class TinyMetaNetForGANTest(nn.Module):
    """(N, 3, h, w) -> (N, 3, H, W): one conv and a small Meta-SR head."""

    def __init__(self, num_feat: int = 6):
        super().__init__()
        self.conv = nn.Conv2d(3, num_feat, 3, 1, 1)
        self.up = MetaUpsample(num_feat, 3, hidden_channels=8)

    def forward(self, x, scale=None, out_size=None):
        return self.up(F.relu(self.conv(x)), scale=scale, out_size=out_size)


def _gan_opt(tmp_path, vgg_path, **train_overrides):
    dirs = {k: str(tmp_path / k) for k in ('models', 'training_states', 'visualization')}
    for d in dirs.values():
        os.makedirs(d, exist_ok=True)
    train = {
        'ema_decay': 0.5,
        'optim_g': {'type': 'Adam', 'lr': 1e-2},
        'optim_d': {'type': 'Adam', 'lr': 1e-2, 'betas': [0.0, 0.99]},
        'scheduler': {'type': 'MultiStepLR', 'milestones': [100], 'gamma': 0.5},
        'total_iter': 2,
        'warmup_iter': -1,
        'lr_patch_size': 12,
        'scale_sampler': {'type': 'uniform', 'v': [2.0, 3.0], 'h': [2.5, 3.5], 'step': 0.5},
        'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0},
        'perceptual_opt': {'type': 'LocalPerceptualLoss', 'layer_weights': {'conv1_2': 1.0},
                           'vgg_weights_path': vgg_path},
        'gan_opt': {'type': 'GANLoss', 'gan_type': 'wgan_softplus', 'loss_weight': 0.1},
        'r1_opt': {'type': 'R1Loss', 'loss_weight': 1.0, 'interval': 2},
    }
    train.update(train_overrides)
    return {
        'name': 'gan_test', 'model_type': 'MetaSRGANModel', 'num_gpu': 0, 'is_train': True, 'dist': False,
        'rank': 0, 'world_size': 1, 'manual_seed': 0,
        'network_g': {'type': 'TinyMetaNetForGANTest'},
        'network_d': {'type': 'StyleGAN2ResnetDiscriminator', 'num_downsampling': 2, 'scale_capacity': 0.25,
                      'max_nc': 16},
        'path': dict(dirs, pretrain_network_g=None, strict_load_g=True, resume_state=None,
                     experiments_root=str(tmp_path)),
        'datasets': {},
        'train': train,
    }


def _params(net):
    return [p.detach().clone() for p in net.parameters()]


def _changed(before, net):
    return any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))


@pytest.mark.filterwarnings(r'ignore:Detected call of `lr_scheduler.step\(\)`')  # BasicSR's update order
def test_metasr_gan_model_two_iterations(tmp_path):
    torch.manual_seed(0)
    vgg_path = str(tmp_path / 'vgg.pth')
    _save_vgg_prefix(vgg_path)
    model = MODEL_REGISTRY.get('MetaSRGANModel')(_gan_opt(tmp_path, vgg_path))
    gt = torch.rand(2, 3, 48, 48)
    for it in (1, 2):
        d_before, g_before = _params(model.net_d), _params(model.net_g)
        model.update_learning_rate(it)
        model.feed_data({'gt': gt})
        model.optimize_parameters(it)
        log = model.get_current_log()
        expected = {'l_g_pix', 'l_g_percep', 'l_g_gan', 'l_d_real', 'l_d_fake'} | ({'l_d_r1'} if it == 2 else set())
        assert expected <= set(log), (it, sorted(log))
        assert ('l_d_r1' in log) == (it == 2)  # lazy R1: interval 2
        for k in expected:
            assert math.isfinite(log[k]), (k, log[k])
        assert log['l_d_r1' if it == 2 else 'l_d_real'] >= 0
        assert model.output.shape == model.gt.shape
        # the batch's scale sets the GT crop: resolve_scale of the 12x12 LR at (r_v, r_h)
        r_v, r_h = model.current_scale()
        assert (log['scale_v'], log['scale_h']) == (r_v, r_h)
        assert model.gt.shape[-2:] == (round(12 * r_v), round(12 * r_h))
        assert _changed(d_before, model.net_d), f'discriminator not updated at iteration {it}'
        assert _changed(g_before, model.net_g), f'generator not updated at iteration {it}'
    # EMA (decay 0.5) lies strictly between its initial copy and the trained generator for some weight
    ema = dict(model.net_g_ema.named_parameters())
    assert any(not torch.equal(ema[k], p) for k, p in model.net_g.named_parameters())
    # checkpoints: net_d saved with its options beside net_g / net_g_ema
    model.save(0, 2)
    ckpt = torch.load(os.path.join(tmp_path, 'models', 'net_d_2.pth'), weights_only=True)
    assert ckpt['network_opt']['type'] == 'StyleGAN2ResnetDiscriminator'
    assert set(ckpt['params']) == set(model.net_d.state_dict())
    assert {'params', 'params_ema'} <= set(torch.load(os.path.join(tmp_path, 'models', 'net_g_2.pth'),
                                                      weights_only=True))


@pytest.mark.filterwarnings(r'ignore:Detected call of `lr_scheduler.step\(\)`')  # BasicSR's update order
def test_metasr_gan_model_d_init_iters_and_crop(tmp_path):
    """During net_d_init_iters only D trains; d_crop_multiple crops D inputs (UNetDiscriminatorSN sizes)."""
    torch.manual_seed(0)
    vgg_path = str(tmp_path / 'vgg.pth')
    _save_vgg_prefix(vgg_path)
    opt = _gan_opt(tmp_path, vgg_path, net_d_init_iters=1, d_crop_multiple=8, r1_opt=None, perceptual_opt=None)
    opt['network_d'] = {'type': 'UNetDiscriminatorSN', 'num_in_ch': 3, 'num_feat': 4}
    model = MODEL_REGISTRY.get('MetaSRGANModel')(opt)
    assert model.cri_r1 is None and model.cri_perceptual is None
    gt = torch.rand(1, 3, 48, 48)
    d_before, g_before = _params(model.net_d), _params(model.net_g)
    model.update_learning_rate(1)
    model.feed_data({'gt': gt})
    model.optimize_parameters(1)
    assert 'l_g_gan' not in model.get_current_log()
    assert not _changed(g_before, model.net_g) and _changed(d_before, model.net_d)
    out_hw = model.output.shape[-2:]
    assert model.d_input(model.output).shape[-2:] == (out_hw[0] // 8 * 8, out_hw[1] // 8 * 8)
    model.update_learning_rate(2)
    model.feed_data({'gt': gt})
    model.optimize_parameters(2)
    log = model.get_current_log()
    assert all(math.isfinite(log[k]) for k in ('l_g_pix', 'l_g_gan', 'l_d_real', 'l_d_fake'))
    assert _changed(g_before, model.net_g)


def test_metasr_gan_model_option_errors(tmp_path):
    vgg_path = str(tmp_path / 'vgg.pth')
    _save_vgg_prefix(vgg_path)
    for key in ('gan_opt', 'optim_d'):
        opt = _gan_opt(tmp_path, vgg_path)
        del opt['train'][key]
        with pytest.raises(ValueError, match=f'train.{key}'):
            MODEL_REGISTRY.get('MetaSRGANModel')(opt)
    opt = _gan_opt(tmp_path, vgg_path)
    del opt['network_d']
    with pytest.raises(ValueError, match='network_d'):
        MODEL_REGISTRY.get('MetaSRGANModel')(opt)
    with pytest.raises(ValueError, match='d_crop_multiple'):
        MODEL_REGISTRY.get('MetaSRGANModel')(_gan_opt(tmp_path, vgg_path, d_crop_multiple=0))


# ------------------------------------------------------------------------------------------------ option files


@pytest.mark.parametrize('name', ['train_SwinIRMetaGAN_x1-4.yml', 'train_MetaRDNGAN_x1-4.yml'])
def test_gan_option_files(name):
    from metasr_arch.models.metasr_model import check_metasr_options
    with open(os.path.join(ROOT, 'options', 'train', name)) as f:
        opt = yaml.safe_load(f)
    assert opt['model_type'] == 'MetaSRGANModel' and MODEL_REGISTRY.get(opt['model_type'])
    for net in ('network_g', 'network_d'):
        assert ARCH_REGISTRY.get(opt[net]['type'])
    train = opt['train']
    for key in ('pixel_opt', 'perceptual_opt', 'gan_opt', 'r1_opt'):
        assert LOSS_REGISTRY.get(train[key]['type'])
    assert train['perceptual_opt']['vgg_weights_path']
    opt['is_train'] = True
    check_metasr_options(opt)
    # the discriminator accepts the smallest training output (LR patch at the smallest scale)
    disc = ARCH_REGISTRY.get(opt['network_d']['type'])(**{k: v for k, v in opt['network_d'].items() if k != 'type'})
    sampler = train['scale_sampler']
    smallest = train['lr_patch_size'] * min(sampler['v'][0], sampler.get('h', sampler['v'])[0])
    assert smallest >= disc.min_size
